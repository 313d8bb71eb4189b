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
mod model;
mod write_id;

use std::future::Future;

pub use dynamodb::{CALLBACK_READABLE_ATTRIBUTES, DynamoDbTokenStore};
pub use error::StoreError;
pub use model::{
    Connection, ConnectionKind, ConnectionStatus, Lease, PENDING_INDEX, PendingAuthorization,
    RotationCause, STATUS_INDEX, StateOutcome,
};
pub use write_id::new_write_id;

use crate::connection_id::ConnectionId;
use crate::keap::{IssuedTokens, TokenPair};

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
}

pub trait TokenStore: Send + Sync {
    /// Consistent read of one connection.
    fn get(
        &self,
        id: &ConnectionId,
    ) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send;

    /// Every connection item whose status is `active` or `needs_reauthorization`, from the
    /// sparse status index ([`STATUS_INDEX`]; eventually consistent: the list is only
    /// candidates, every decision re-reads or conditions on the item). A malformed item is
    /// listed in [`ConnectionScan::malformed`], never an error of the listing.
    fn list_connections(&self) -> impl Future<Output = Result<ConnectionScan, StoreError>> + Send;

    /// Stores a freshly authorized pair as a new generation, `active`, clearing lease, orphan
    /// pair and last error, in one atomic update. `write_id` is the same for every retry of this
    /// authorization: a retry neither applies twice nor overwrites a newer pair.
    fn authorize(
        &self,
        id: &ConnectionId,
        issued: &IssuedTokens,
        replace_account: bool,
        write_id: &str,
        now: i64,
    ) -> impl Future<Output = Result<AuthorizeOutcome, StoreError>> + Send;

    /// `owner` is this attempt's write id; `until` must outlive the holder's invocation.
    fn take_lease(
        &self,
        id: &ConnectionId,
        version: &Version,
        owner: &str,
        now: i64,
        until: i64,
    ) -> impl Future<Output = Result<LeaseOutcome, StoreError>> + Send;

    /// Writes the refreshed pair as `generation + 1`, conditional on generation and
    /// incarnation only (a lapsed lease does not stop it). `write_id` is the same for every
    /// retry of this commit. A rotation for a 401 records `unauthorized_rotation_at`.
    fn commit_refresh(
        &self,
        id: &ConnectionId,
        version: &Version,
        write_id: &str,
        issued: &IssuedTokens,
        cause: RotationCause,
        now: i64,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// Frees the lease if `owner` still holds it at `version`; otherwise does nothing (a retry
    /// of a release that landed finds nothing left to release).
    fn release_lease(
        &self,
        id: &ConnectionId,
        version: &Version,
        owner: &str,
        last_error: Option<&str>,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn mark_needs_reauthorization(
        &self,
        id: &ConnectionId,
        version: &Version,
        guard: MarkGuard<'_>,
        reason: &str,
        now: i64,
    ) -> impl Future<Output = Result<MarkOutcome, StoreError>> + Send;

    /// Counts a refresh whose answer was lost, while `owner` holds the lease at `version`.
    /// Returns how many this generation has had (idempotent per `write_id`), or `None` when the
    /// lease is no longer ours.
    fn record_lost_response(
        &self,
        id: &ConnectionId,
        version: &Version,
        owner: &str,
        write_id: &str,
        now: i64,
    ) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send;

    /// Keeps a pair whose commit lost to a re-authorization, for diagnosis only.
    fn store_orphan_pair(
        &self,
        id: &ConnectionId,
        orphan_generation: u64,
        pair: &TokenPair,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn put_state(
        &self,
        nonce: &str,
        pending: &PendingAuthorization,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks the state consumed (`consumed_by`) if it exists, has not expired and was not
    /// consumed; works once, and a retry of a consume that landed is recognised.
    fn consume_state(
        &self,
        nonce: &str,
        now: i64,
    ) -> impl Future<Output = Result<StateOutcome, StoreError>> + Send;

    /// Creates or replaces a service-account-key connection (a new generation, `active`); a
    /// retry of a registration that landed is recognised, not applied twice.
    fn register_service_account_key(
        &self,
        id: &ConnectionId,
        key_secret_id: &str,
        keap_app: Option<&str>,
        now: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Removes a connection item; `true` when one existed.
    fn delete_connection(
        &self,
        id: &ConnectionId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes every pending authorization (state item) that points at `id`, consumed or not;
    /// returns how many. After it, no authorize link started for `id` can finish.
    fn retire_pending_authorizations(
        &self,
        id: &ConnectionId,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
}
