//! Connection records and authorization states in DynamoDB (docs/design.md, "Data model").
//!
//! Every write that decides something is conditional, carries a per-attempt write id that stays
//! in the item, and asks DynamoDB for the old item when its condition fails
//! (`ReturnValuesOnConditionCheckFailure = ALL_OLD`). So a write whose answer was lost and whose
//! SDK retry then failed its condition is recognised as "mine, already applied", and a failed
//! condition comes back as a typed outcome ([`LeaseOutcome::Held`],
//! [`CommitOutcome::Superseded`], ...) that callers branch on instead of matching strings
//! (docs/design.md, "The fault model").

mod dynamodb;
mod error;
mod grants;
mod hooks;
mod model;
mod outbox;
mod write_id;

pub use dynamodb::{
    AuthorizationView, CALLBACK_READABLE_ATTRIBUTES, DynamoDbTokenStore, OrphanKept, OrphanOwner,
};
pub use error::StoreError;
pub use grants::{
    AuthorizationBasis, PairWrite, RegisterOutcome, TOMBSTONE_MIN_TTL_SECS, tombstone_expires_at,
};
pub use hooks::{HOOK_INDEX, HookSubscription, HookToken, HookTokenHash};
pub use model::{
    Connection, ConnectionKind, ConnectionStatus, Lease, PENDING_INDEX, PendingAuthorization,
    RotationCause, STATUS_INDEX, StateOutcome,
};
pub use model::{PENDING_EVENTS, TOMBSTONE_PENDING_STATUS};
pub use outbox::{LeftoverSummary, PendingTombstone};
pub use write_id::new_write_id;

/// What a decision about a connection was taken on: every condition names both, so a decision
/// about a removed and re-created connection never applies to the new one (no ABA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub generation: u64,
    /// `None` for items written before incarnations existed.
    pub incarnation: Option<String>,
}

impl Connection {
    pub fn version(&self) -> Version {
        Version {
            generation: self.generation,
            incarnation: self.incarnation.clone(),
        }
    }
}

/// Every connection item of the table, and the keys of the items that could not be read.
#[derive(Debug, Default)]
pub struct ConnectionScan {
    pub connections: Vec<Connection>,
    /// `pk`s of malformed connection items, with why: skipped, counted and named, never fatal.
    pub malformed: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// The pair is stored as this generation, status `active`.
    Authorized { generation: u64 },
    /// The connection belongs to another Keap account and the start request did not say
    /// `replace_account`.
    AccountMismatch { existing_app: String },
    /// Another authorization of the connection landed after the read this one was decided on,
    /// from a later exchange: it stays, this pair was not stored (Keap retired its grant).
    Superseded,
    /// The connection was removed at or after the link was started (its tombstone), or while
    /// the pair was being stored: nothing is stored under it.
    Removed,
}

#[derive(Debug, Clone)]
pub enum LeaseOutcome {
    /// The lease is ours; `connection` is the item as the lease write left it (`ALL_NEW`): its
    /// refresh token is the one to present, not a scan's copy.
    Acquired {
        until: i64,
        connection: Box<Connection>,
    },
    /// Another refresher holds a live lease (docs/design.md, "Refresh protocol", I4: losers never call Keap).
    Held,
    /// The generation moved since it was read: someone else refreshed or re-authorized.
    GenerationMoved,
    /// The connection is gone, not active, or not an OAuth connection.
    NotActive,
    /// An expiry-driven rotation was asked for, and the last one (`expiry_rotation_at`, epoch
    /// seconds) is too recent (docs/design.md, "The fault model": short token lifetimes).
    RotationLimited { rotated_at: i64 },
}

#[derive(Debug, Clone)]
pub enum CommitOutcome {
    /// Stored as `generation`; `recognised` when an earlier attempt of this commit had landed and
    /// its answer was lost (the retry's condition failed on our own write).
    Committed { generation: u64, recognised: bool },
    /// Someone else's write moved the connection: `current` is the item as DynamoDB returned it.
    Superseded { current: Box<Connection> },
    /// The connection item no longer exists.
    Removed,
    /// The condition failed and the item that made it fail could not be read: nobody can say
    /// whether the pair was stored. Alarmed, never reported as orphaned.
    Unknown { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkOutcome {
    Marked,
    /// The generation or the lease moved: the grant is someone else's decision now (I6).
    NotMarked,
}

/// Who may mark a connection dead: the lease holder of an OAuth refresh, or (for a key
/// connection, which has no lease) whoever saw the generation.
#[derive(Debug, Clone, Copy)]
pub enum MarkGuard<'a> {
    LeaseOwner(&'a str),
    GenerationOnly,
    /// A key connection whose rejection was recorded at this `key_rejected_since` and not
    /// answered by a success since (`key_accepted_at` absent or older).
    KeyRejectedSince(i64),
}

impl MarkGuard<'_> {
    /// The kind of connection the guard can hold: a lease is an OAuth refresh's, a recorded key
    /// rejection a key connection's; `None`: either.
    pub(crate) fn kind(&self) -> Option<ConnectionKind> {
        match self {
            Self::LeaseOwner(_) => Some(ConnectionKind::OAuth),
            Self::KeyRejectedSince(_) => Some(ConnectionKind::ServiceAccountKey),
            Self::GenerationOnly => None,
        }
    }
}
