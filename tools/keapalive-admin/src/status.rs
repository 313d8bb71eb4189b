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
            access_expires_at: connection.tokens.as_ref().map(|t| t.access_expires_at),
            refreshed_at: connection.refreshed_at,
            authorized_at: connection.authorized_at,
            last_error: connection.last_error.clone(),
            lease_until: connection.lease.as_ref().map(|l| l.until),
        }
    }

    pub fn needs_reauthorization(&self) -> bool {
        self.status == ConnectionStatus::NeedsReauthorization.as_str()
    }
}

/// Rows sorted by connection id, so the output is stable from run to run.
pub fn rows(connections: &[Connection]) -> Vec<StatusRow> {
    let mut rows: Vec<StatusRow> = connections.iter().map(StatusRow::from_connection).collect();
    rows.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
    rows
}
