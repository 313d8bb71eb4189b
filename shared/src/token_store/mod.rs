//! Connection records and authorization states in DynamoDB (DESIGN.md, "Data model").
//!
//! Every write that decides something is conditional, and a failed condition comes back as a
//! typed outcome ([`LeaseOutcome::Held`], [`CommitOutcome::GenerationMoved`], ...) so callers
//! branch on what happened instead of matching strings.
//!
//! [`TokenStore`] is a trait because the refresh protocol is exercised against more than one
//! store: DynamoDB in production, and wrappers in tests that inject crashes between steps.

mod dynamodb;
mod error;
mod model;

use std::future::Future;

pub use dynamodb::DynamoDbTokenStore;
pub use error::StoreError;
pub use model::{
    Connection, ConnectionKind, ConnectionStatus, Lease, PendingAuthorization, StateOutcome,
};

use crate::connection_id::ConnectionId;
use crate::keap::{IssuedTokens, TokenPair};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// The pair is stored as this generation, status `active`.
    Authorized { generation: u64 },
    /// The connection belongs to another Keap account and the start request did not say
    /// `replace_account`.
    AccountMismatch { existing_app: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    Acquired {
        until: i64,
    },
    /// Another refresher holds a live lease (DESIGN.md I4: losers never call Keap).
    Held,
    /// The generation moved since it was read: someone else refreshed or re-authorized.
    GenerationMoved,
    /// The connection is gone, not active, or not an OAuth connection.
    NotActive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed {
        generation: u64,
    },
    /// A re-authorization moved the generation: the pair must not be promoted.
    GenerationMoved,
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

    /// Every connection item (consistent scan; a deployment has a handful to thousands).
    fn list_connections(&self) -> impl Future<Output = Result<Vec<Connection>, StoreError>> + Send;

    /// Stores a freshly authorized pair as a new generation, `active`, clearing lease, orphan
    /// pair and last error, in one atomic update.
    fn authorize(
        &self,
        id: &ConnectionId,
        issued: &IssuedTokens,
        replace_account: bool,
        now: i64,
    ) -> impl Future<Output = Result<AuthorizeOutcome, StoreError>> + Send;

    fn take_lease(
        &self,
        id: &ConnectionId,
        generation: u64,
        owner: &str,
        now: i64,
        until: i64,
    ) -> impl Future<Output = Result<LeaseOutcome, StoreError>> + Send;

    /// Writes the refreshed pair as `generation + 1`, conditional on the generation only.
    fn commit_refresh(
        &self,
        id: &ConnectionId,
        generation: u64,
        issued: &IssuedTokens,
        now: i64,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// Frees the lease if `owner` still holds it at `generation`; otherwise does nothing.
    fn release_lease(
        &self,
        id: &ConnectionId,
        generation: u64,
        owner: &str,
        last_error: Option<&str>,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn mark_needs_reauthorization(
        &self,
        id: &ConnectionId,
        generation: u64,
        guard: MarkGuard<'_>,
        reason: &str,
        now: i64,
    ) -> impl Future<Output = Result<MarkOutcome, StoreError>> + Send;

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

    /// Deletes the state if it exists and has not expired; works once.
    fn consume_state(
        &self,
        nonce: &str,
        now: i64,
    ) -> impl Future<Output = Result<StateOutcome, StoreError>> + Send;

    /// Creates or replaces a service-account-key connection (a new generation, `active`).
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
}
