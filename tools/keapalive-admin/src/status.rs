//! What an operator needs to know about a connection, and nothing secret: a [`StatusRow`] has
//! no field that could hold a token, so no output built from it can leak one.

use keapalive::token_store::{Connection, ConnectionStatus};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    pub connection_id: String,
    /// `oauth` or `service_account_key`.
    pub kind: &'static str,
    /// `active` or `needs_reauthorization`.
    pub status: &'static str,
    /// The Keap app (tenant), e.g. `ab123.infusionsoft.com`, when known.
    pub keap_account: Option<String>,
    pub generation: u64,
    /// Set when the connection item was created, never reused after a removal: a changed
    /// incarnation means the connection was removed and authorized anew.
    pub incarnation: Option<String>,
    /// Epoch seconds; `None` for key connections (nothing expires).
    pub access_expires_at: Option<i64>,
    /// Last successful refresh (epoch seconds); `None` when never refreshed since authorized.
    pub refreshed_at: Option<i64>,
    pub authorized_at: Option<i64>,
    pub last_error: Option<String>,
    /// A refresh holds the lease until then (epoch seconds).
    pub lease_until: Option<i64>,
}

impl StatusRow {
    pub fn from_connection(connection: &Connection) -> Self {
        Self {
            connection_id: connection.id.as_str().to_owned(),
            kind: connection.kind.as_str(),
            status: connection.status.as_str(),
            keap_account: connection.keap_app.clone(),
            generation: connection.generation,
            incarnation: connection.incarnation.clone(),
            access_expires_at: connection.tokens.as_ref().map(|t| t.access_expires_at),
            refreshed_at: connection.refreshed_at,
            authorized_at: connection.authorized_at,
            last_error: connection.last_error.clone(),
            lease_until: connection.lease.as_ref().map(|l| l.until),
        }
    }

    /// A connection item that could not be read: listed, never a reason to fail the command.
    pub fn malformed(pk: &str, reason: &str) -> Self {
        Self {
            connection_id: pk.strip_prefix("conn#").unwrap_or(pk).to_owned(),
            kind: "unknown",
            status: MALFORMED,
            keap_account: None,
            generation: 0,
            incarnation: None,
            access_expires_at: None,
            refreshed_at: None,
            authorized_at: None,
            last_error: Some(format!("malformed item: {reason}")),
            lease_until: None,
        }
    }

    pub fn needs_reauthorization(&self) -> bool {
        self.status == ConnectionStatus::NeedsReauthorization.as_str()
    }
}

/// The status shown for an item the library could not read.
pub const MALFORMED: &str = "malformed";

/// Rows sorted by connection id, so the output is stable from run to run.
pub fn rows(connections: &[Connection], malformed: &[(String, String)]) -> Vec<StatusRow> {
    let mut rows: Vec<StatusRow> = connections
        .iter()
        .map(StatusRow::from_connection)
        .chain(
            malformed
                .iter()
                .map(|(pk, reason)| StatusRow::malformed(pk, reason)),
        )
        .collect();
    rows.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_item_is_a_row_not_a_failure() {
        let rows = rows(
            &[],
            &[(
                "conn#broken".to_owned(),
                "generation is not a number".to_owned(),
            )],
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].connection_id, "broken");
        assert_eq!(rows[0].status, MALFORMED);
        assert!(
            rows[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("generation"))
        );
    }
}
