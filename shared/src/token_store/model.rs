use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use secrecy::SecretString;

use super::StoreError;
use crate::connection_id::ConnectionId;
use crate::events::{Change, LifecycleEvent};
use crate::keap::TokenPair;

pub(crate) const CONNECTION_PREFIX: &str = "conn#";
pub(crate) const STATE_PREFIX: &str = "state#";
/// A removed connection's tombstone: `tomb#<connection_id>`, with `removed_at`, its pending
/// lifecycle events and, once they are published, the TTL `expires_at` (docs/design.md, "Data
/// model"). While events are pending its `status` is `removed` (in the status index, where the
/// refresher finds it); never a `connection_id`: never in the pending index.
pub(crate) const TOMBSTONE_PREFIX: &str = "tomb#";
/// Sparse global secondary index on `status` (hash key): connection items only, all
/// attributes. The refresher queries it instead of scanning, so it never reads a state item.
pub const STATUS_INDEX: &str = "connections-by-status";
/// Sparse global secondary index on `connection_id` (hash key): state items only (a connection
/// item has no such attribute), keys only. `remove` finds a connection's pending links here.
pub const PENDING_INDEX: &str = "pending-by-connection";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Active,
    NeedsReauthorization,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsReauthorization => "needs_reauthorization",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionKind {
    #[serde(rename = "oauth")]
    OAuth,
    ServiceAccountKey,
}

impl ConnectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OAuth => "oauth",
            Self::ServiceAccountKey => "service_account_key",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: i64,
}

/// One authorized Keap account. `Debug` is safe to log: tokens are [`SecretString`]s.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: ConnectionId,
    pub kind: ConnectionKind,
    /// The current pair (OAuth connections).
    pub tokens: Option<TokenPair>,
    /// Secrets Manager id of the key (service-account-key connections).
    pub key_secret_id: Option<String>,
    pub generation: u64,
    pub status: ConnectionStatus,
    pub lease: Option<Lease>,
    pub keap_scope: Option<String>,
    pub keap_app: Option<String>,
    pub authorized_at: Option<i64>,
    pub refreshed_at: Option<i64>,
    pub last_error: Option<String>,
    pub updated_at: Option<i64>,
    /// Generation of a pair whose commit lost to a re-authorization (the pair itself stays in
    /// the table for diagnosis and is never read back into memory).
    pub orphan_generation: Option<u64>,
    /// Random id set when the connection item is created and never reused after a removal:
    /// every condition names it beside the generation, so a decision taken on a removed and
    /// re-created connection cannot apply to the new one (no ABA). `None` only for items
    /// written before incarnations existed.
    pub incarnation: Option<String>,
    /// Write id of the authorization (OAuth pair or key registration) that created this grant.
    pub authorized_by: Option<String>,
    /// Write id of the last commit: how a retried commit recognises that it landed.
    pub(crate) committed_by: Option<String>,
    /// Refresh attempts of this generation whose answer was lost (nothing sent does not count).
    pub lost_responses: usize,
    /// When a refresh caused by Keap answering 401 to the current access token last committed
    /// (epoch seconds): the bound on 401-driven rotations holds across containers because it
    /// lives in the item. Cleared by a new authorization.
    pub unauthorized_rotation_at: Option<i64>,
    /// When a refresh last committed a pair Keap issued short-lived (under five minutes; epoch
    /// seconds; removed by a commit of a normal pair): the lease of an expiry-driven refresh
    /// requires it to be at least a minute old, so a Keap that issues very short-lived tokens
    /// cannot make every call rotate, in any number of containers.
    pub expiry_rotation_at: Option<i64>,
    /// Key connections: when Keap first confirmed (a profile probe answering 401) that it
    /// rejects the key, epoch seconds. The key is marked dead only by a later confirming 401
    /// inside the window that opens the recheck interval + 30 s after it (docs/design.md,
    /// "Connection kinds").
    pub key_rejected_since: Option<i64>,
    /// Key connections: when a request with the key last succeeded after a recorded rejection
    /// (epoch seconds): a key accepted since `key_rejected_since` is not marked.
    pub key_accepted_at: Option<i64>,
    /// Lifecycle events recorded by a change and not yet known to be published (the outbox,
    /// docs/design.md, "Lifecycle events"): what the scheduled run publishes.
    pub pending_events: Vec<LifecycleEvent>,
}

/// Why a pair is being rotated; a rotation for a 401 is remembered in the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationCause {
    /// The access token is expiring (scheduled run, or on demand before use).
    Expiry,
    /// Keap answered 401 to the access token the item still holds.
    Unauthorized,
}

impl Connection {
    /// The recorded key rejection (`key_rejected_since`) that no success has answered since:
    /// `key_accepted_at` absent or older.
    pub fn unanswered_key_rejection(&self) -> Option<i64> {
        let since = self.key_rejected_since?;
        match self.key_accepted_at {
            Some(accepted) if accepted >= since => None,
            _ => Some(since),
        }
    }

    /// Last time this grant was known good: its last refresh, or its authorization.
    pub fn last_success_at(&self) -> Option<i64> {
        self.refreshed_at.max(self.authorized_at)
    }
}

/// A started authorization, waiting for Keap's redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAuthorization {
    pub connection_id: ConnectionId,
    pub expires_at: i64,
    pub replace_account: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOutcome {
    Consumed(PendingAuthorization),
    /// The state exists but its ten minutes are over (DynamoDB's TTL deletion lags).
    Expired,
    /// Never issued, or already used.
    Unknown,
}

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn connection_key(id: &ConnectionId) -> AttributeValue {
    AttributeValue::S(format!("{CONNECTION_PREFIX}{id}"))
}

pub(crate) fn tombstone_key(id: &ConnectionId) -> AttributeValue {
    AttributeValue::S(format!("{TOMBSTONE_PREFIX}{id}"))
}

pub(crate) fn state_key(nonce: &str) -> AttributeValue {
    AttributeValue::S(format!("{STATE_PREFIX}{nonce}"))
}

pub(crate) fn number(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn unsigned(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn string(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

struct Reader<'a> {
    item: &'a Item,
    pk: &'a str,
}

impl Reader<'_> {
    fn malformed(&self, reason: String) -> StoreError {
        StoreError::Malformed {
            pk: self.pk.to_owned(),
            reason,
        }
    }

    fn opt_s(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.malformed(format!("{name} is not a string"))),
        }
    }

    fn opt_n(&self, name: &str) -> Result<Option<i64>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse()
                .map(Some)
                .map_err(|_| self.malformed(format!("{name} is not an integer"))),
            Some(_) => Err(self.malformed(format!("{name} is not a number"))),
        }
    }

    fn string_set_len(&self, name: &str) -> Result<usize, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(0),
            Some(AttributeValue::Ss(set)) => Ok(set.len()),
            Some(_) => Err(self.malformed(format!("{name} is not a string set"))),
        }
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.malformed(format!("{name} is not a boolean"))),
        }
    }
}

pub(crate) fn parse_connection(item: &Item) -> Result<Connection, StoreError> {
    let pk = match item.get("pk") {
        Some(AttributeValue::S(pk)) => pk.as_str(),
        _ => "<no pk>",
    };
    let r = Reader { item, pk };
    let raw_id = pk
        .strip_prefix(CONNECTION_PREFIX)
        .ok_or_else(|| r.malformed("not a connection key".to_owned()))?;
    let id = ConnectionId::parse(raw_id).map_err(|e| r.malformed(e.to_string()))?;
    let kind = match r.opt_s("kind")?.as_deref() {
        None | Some("oauth") => ConnectionKind::OAuth,
        Some("service_account_key") => ConnectionKind::ServiceAccountKey,
        Some(other) => return Err(r.malformed(format!("unknown kind {other:?}"))),
    };
    let status = match r.opt_s("status")?.as_deref() {
        Some("active") => ConnectionStatus::Active,
        Some("needs_reauthorization") => ConnectionStatus::NeedsReauthorization,
        other => return Err(r.malformed(format!("unknown status {other:?}"))),
    };
    let tokens = match (
        r.opt_s("access_token")?,
        r.opt_s("refresh_token")?,
        r.opt_n("access_expires_at")?,
    ) {
        (Some(access), Some(refresh), Some(expires)) => Some(TokenPair {
            access_token: SecretString::from(access),
            refresh_token: SecretString::from(refresh),
            access_expires_at: expires,
        }),
        (None, None, _) => None,
        _ => return Err(r.malformed("half a token pair".to_owned())),
    };
    let generation = r
        .opt_n("generation")?
        .and_then(|g| u64::try_from(g).ok())
        .ok_or_else(|| r.malformed("missing generation".to_owned()))?;
    let lease = match (r.opt_s("lease_owner")?, r.opt_n("lease_until")?) {
        (Some(owner), Some(until)) => Some(Lease { owner, until }),
        _ => None,
    };
    let orphan_generation = match item.get("orphan_pair") {
        Some(AttributeValue::M(m)) => match m.get("generation") {
            Some(AttributeValue::N(n)) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    };
    Ok(Connection {
        kind,
        tokens,
        key_secret_id: r.opt_s("key_secret_id")?,
        generation,
        status,
        lease,
        keap_scope: r.opt_s("keap_scope")?,
        keap_app: r.opt_s("keap_app")?,
        authorized_at: r.opt_n("authorized_at")?,
        refreshed_at: r.opt_n("refreshed_at")?,
        last_error: r.opt_s("last_error")?,
        updated_at: r.opt_n("updated_at")?,
        orphan_generation,
        incarnation: r.opt_s("incarnation")?,
        authorized_by: r.opt_s("authorized_by")?,
        committed_by: r.opt_s("committed_by")?,
        lost_responses: r.string_set_len("lost_responses")?,
        unauthorized_rotation_at: r.opt_n("unauthorized_rotation_at")?,
        expiry_rotation_at: r.opt_n("expiry_rotation_at")?,
        key_rejected_since: r.opt_n("key_rejected_since")?,
        key_accepted_at: r.opt_n("key_accepted_at")?,
        pending_events: parse_pending(item)
            .iter()
            .map(|recorded| recorded.event(&id, kind, generation))
            .collect(),
        id,
    })
}

/// Write id of the callback that consumed a state, if any.
pub(crate) fn state_consumed_by(item: &Item) -> Option<&str> {
    match item.get("consumed_by") {
        Some(AttributeValue::S(id)) => Some(id),
        _ => None,
    }
}

pub(crate) fn parse_state(item: &Item) -> Result<PendingAuthorization, StoreError> {
    let pk = match item.get("pk") {
        Some(AttributeValue::S(pk)) => pk.as_str(),
        _ => "<no pk>",
    };
    let r = Reader { item, pk };
    let raw_id = r
        .opt_s("connection_id")?
        .ok_or_else(|| r.malformed("missing connection_id".to_owned()))?;
    Ok(PendingAuthorization {
        connection_id: ConnectionId::parse(&raw_id).map_err(|e| r.malformed(e.to_string()))?,
        expires_at: r
            .opt_n("expires_at")?
            .ok_or_else(|| r.malformed("missing expires_at".to_owned()))?,
        replace_account: r.opt_bool("replace_account")?.unwrap_or(false),
    })
}

// ------------------------------------------------------------ the outbox's entries
// (written and cleared by `outbox.rs`; docs/design.md, "Lifecycle events")

/// The item attribute that holds the events not yet known to be published.
pub const PENDING_EVENTS: &str = "pending_events";
/// A tombstone's `status` while its events are not all published: it is in the status index,
/// where the refresher finds it. The last publish removes it and sets the TTL.
pub const TOMBSTONE_PENDING_STATUS: &str = "removed";

/// An event a write records, before it is known whose generation it will carry.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub change: Change,
    /// `None`: the item's kind when it is published (a grant write sets it in the same write).
    pub kind: Option<ConnectionKind>,
    /// `None`: the generation the write produced, read back when it is published (a grant
    /// write adds one to a generation it did not read).
    pub generation: Option<u64>,
    pub event_id: String,
    pub occurred_at: i64,
    pub reason: Option<String>,
}

impl Recorded {
    /// The one-element list `list_append` adds.
    pub(crate) fn as_list(&self) -> AttributeValue {
        AttributeValue::L(vec![self.as_value()])
    }

    pub(crate) fn as_value(&self) -> AttributeValue {
        let mut map = HashMap::from([
            ("event_id".to_owned(), string(&self.event_id)),
            ("change".to_owned(), string(self.change.as_str())),
            ("occurred_at".to_owned(), number(self.occurred_at)),
        ]);
        if let Some(kind) = self.kind {
            map.insert("kind".to_owned(), string(kind.as_str()));
        }
        if let Some(generation) = self.generation {
            map.insert("generation".to_owned(), unsigned(generation));
        }
        if let Some(reason) = &self.reason {
            map.insert("reason".to_owned(), string(reason));
        }
        AttributeValue::M(map)
    }

    /// The event as published: `kind` and `generation` from the item when the write left them open.
    pub(crate) fn event(
        &self,
        id: &ConnectionId,
        kind: ConnectionKind,
        generation: u64,
    ) -> LifecycleEvent {
        LifecycleEvent {
            change: self.change,
            connection_id: id.as_str().to_owned(),
            kind: self.kind.unwrap_or(kind).as_str().to_owned(),
            generation: self.generation.unwrap_or(generation),
            event_id: self.event_id.clone(),
            occurred_at: self.occurred_at,
            reason: self.reason.clone(),
        }
    }
}

/// An empty list: `if_not_exists(pending_events, :nil)`.
pub(crate) fn empty_list() -> AttributeValue {
    AttributeValue::L(Vec::new())
}

fn parse_kind(text: &str) -> Option<ConnectionKind> {
    match text {
        "oauth" => Some(ConnectionKind::OAuth),
        "service_account_key" => Some(ConnectionKind::ServiceAccountKey),
        _ => None,
    }
}

/// The recorded events of an item's `pending_events`; an element that cannot be read is
/// skipped with a warning (never fatal: the others are still published).
pub(crate) fn parse_pending(item: &Item) -> Vec<Recorded> {
    let Some(AttributeValue::L(list)) = item.get(PENDING_EVENTS) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|value| {
            let parsed = parse_one(value);
            if parsed.is_none() {
                tracing::warn!("skipping an unreadable pending lifecycle event");
            }
            parsed
        })
        .collect()
}

fn parse_one(value: &AttributeValue) -> Option<Recorded> {
    let AttributeValue::M(map) = value else {
        return None;
    };
    let text = |name: &str| match map.get(name) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    };
    let num = |name: &str| match map.get(name) {
        Some(AttributeValue::N(n)) => n.parse::<i64>().ok(),
        _ => None,
    };
    Some(Recorded {
        change: Change::parse(&text("change")?)?,
        kind: text("kind").as_deref().and_then(parse_kind),
        generation: num("generation").and_then(|g| u64::try_from(g).ok()),
        event_id: text("event_id")?,
        occurred_at: num("occurred_at")?,
        reason: text("reason"),
    })
}
