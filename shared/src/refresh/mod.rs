//! The refresh protocol: lease → refresh → commit (docs/design.md, "Refresh protocol").
//!
//! Keap's refresh tokens are single-use: presenting one twice, or from two racing instances,
//! kills the integration. This module is the only code that presents a refresh token.
//!
//! Invariants (docs/design.md, "Refresh protocol"), and the tests in
//! `tests/tests/it/refresh_*.rs` that try to break them:
//! - **I1** a refresh token is presented at most once, except one retry by the lease holder
//!   when a request got no answer ([`protocol`], "lost response").
//!   `refresh_race_never_presents_token_twice`, `refresh_race_across_processes`,
//!   `lost_response_retries_once_then_marks`.
//! - **I2** a pair Keap issued is never lost: it is committed with retries before anything
//!   else, conditional on the generation only (a lapsed lease does not stop it).
//!   `commit_retries_through_throttling`, `commit_after_lease_expiry_lands`.
//! - **I3** the pair is written atomically in one item (one `UpdateItem`).
//! - **I4** losers of a race never call Keap: the lease is a conditional write.
//!   `refresh_race_never_presents_token_twice`, `crashed_holder_blocks_only_until_lease_expiry`.
//! - **I5** a rejected refresh token with no newer generation marks the connection
//!   `needs_reauthorization`, once, and nothing keeps calling Keap for it.
//!   `dead_grant_marked_after_one_call`, `circuit_breaker_stops_mass_marking`.
//! - **I6** a live grant is never marked dead: marks are conditional on generation and lease.
//!   `mark_racing_commit_leaves_connection_active`, `reauthorization_during_refresh_orphans_pair`.

mod invocation;
mod on_demand;
mod protocol;
mod recheck_clock;
mod rejection_breaker;
mod scheduled;
mod write_brownout;

pub use invocation::{RefresherError, RefresherEvent, RefresherFunction};
pub use on_demand::{
    Grant, Kinds, OnDemandError, OnDemandRefresher, UNAUTHORIZED_ROTATION_INTERVAL_SECS,
};
pub use protocol::{
    COMMIT_BUDGET, EXPIRY_ROTATION_INTERVAL_SECS, LEASE_CLOCK_SKEW_SECS, PendingMark,
    REASON_LOST_RESPONSE, REASON_REFRESH_TOKEN_REJECTED, RefreshOutcome, Refresher,
    RefresherSettings, RunGuard,
};
pub use rejection_breaker::RejectionBreaker;
pub use scheduled::{RefreshRun, RefreshSummary, RunError, ScheduledRequest};
