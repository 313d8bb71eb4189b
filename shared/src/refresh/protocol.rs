//! One connection's refresh: lease → refresh → commit, with every failure classified.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::clock::now_epoch_secs;
use crate::config::Config;
use crate::connection_id::ConnectionId;
use crate::deadline::Deadline;
use crate::keap::rate_limit::RateLimiter;
use crate::keap::{IssuedTokens, OAuthClient, SHORT_EXPIRES_IN_SECS, TokenError, TokenPair};
use crate::secrets::SecretsSource;
use crate::token_store::{
    CommitOutcome, Connection, ConnectionKind, ConnectionStatus, DynamoDbTokenStore, LeaseOutcome,
    MarkGuard, MarkOutcome, OrphanKept, OrphanOwner, RotationCause, StoreError, Version,
    new_write_id,
};

/// The commit budget (docs/design.md, "The fault model"): a refresh token (or an authorization
/// code) is presented only when the invocation has room for one token request
/// (`KEAPALIVE_KEAP_TIMEOUT_SECS`) plus this much commit time, checked immediately before the
/// presentation; once Keap answered, the commit retries until the deadline minus
/// [`DEADLINE_SAFETY`]. A function that presents a token or a code needs a timeout of at least
/// the Keap timeout plus this.
pub const COMMIT_BUDGET: Duration = Duration::from_secs(10);
/// The commit stops retrying this long before the deadline, to leave time to report.
const DEADLINE_SAFETY: Duration = Duration::from_millis(500);
/// A lease ends no earlier than its holder's invocation deadline plus this, so a holder whose
/// clock runs behind DynamoDB's view of time still never loses a live lease.
pub const LEASE_CLOCK_SKEW_SECS: i64 = 30;
/// After this many presentations of one refresh token whose answers were lost (their write ids
/// left in `lost_responses`) the grant is given up (`lost_response`): never presented again.
const MAX_LOST_RESPONSES: usize = 2;
/// At most one expiry-driven rotation of a connection per this many seconds, across every
/// container (`expiry_rotation_at`, checked in the lease's condition).
pub const EXPIRY_ROTATION_INTERVAL_SECS: i64 = 60;
const COMMIT_BACKOFF_START: Duration = Duration::from_millis(50);
const COMMIT_BACKOFF_MAX: Duration = Duration::from_secs(2);

pub const REASON_REFRESH_TOKEN_REJECTED: &str = "refresh_token_rejected";
pub const REASON_LOST_RESPONSE: &str = "lost_response";

#[derive(Debug, Clone)]
pub struct RefresherSettings {
    pub client_secret_id: String,
    /// Refresh when the access token expires sooner than this.
    pub refresh_window: Duration,
    pub lease: Duration,
    /// The token request's timeout (the HTTP client's).
    pub keap_timeout: Duration,
}

impl RefresherSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            client_secret_id: config.client_secret_id.clone(),
            refresh_window: config.refresh_window,
            lease: config.lease,
            keap_timeout: config.keap_timeout,
        }
    }

    /// Least invocation time left for a refresh to start: one token request and the commit.
    pub fn minimum_time_to_start(&self) -> Duration {
        self.keap_timeout + COMMIT_BUDGET
    }
}

/// What happened to one connection.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// The access token is valid beyond the refresh window.
    NotDue,
    /// A service-account-key connection: nothing to refresh.
    Static,
    /// Already `needs_reauthorization`: Keap is not called for it again.
    AlreadyNeedsReauthorization,
    /// The connection no longer exists.
    Gone,
    /// Too little invocation time left to finish (checked before the lease and again
    /// immediately before the token is presented); the next run or caller will.
    NotStartedDeadline,
    /// An expiry-driven rotation of this connection committed less than
    /// [`EXPIRY_ROTATION_INTERVAL_SECS`] ago (`expiry_rotation_at`, epoch seconds): not
    /// rotated again yet; the current pair is Keap's newest.
    RotationLimited {
        rotated_at: i64,
    },
    /// Another refresher holds the lease (I4: this one did not call Keap).
    SkippedLocked,
    /// The generation moved since it was read: someone else refreshed or re-authorized.
    AlreadyRefreshed,
    Refreshed {
        generation: u64,
        pair: TokenPair,
        /// Keap stated a lifetime under [`SHORT_EXPIRES_IN_SECS`] for the new access token
        /// (stored as stated, counted as `ShortTokenLifetime`).
        short_lifetime: bool,
    },
    /// A re-authorization (or a removal) replaced the connection between Keap's answer and the
    /// commit: the pair was kept in `orphan_pair` for diagnosis and not promoted.
    Orphaned,
    /// The commit's condition failed and nothing tells whose write made it fail: the pair may
    /// or may not be stored. Alarmed (`CommitOutcomeUnknown`), never reported as orphaned.
    CommitUnknown {
        reason: String,
    },
    /// Not started: a commit in this run failed or is still retrying (write brownout), so no
    /// new token is presented whose pair could not be stored either.
    NotStartedBrownout,
    /// Keap answered 429/5xx, or could not be reached: nothing consumed, lease released.
    FailedTransient {
        reason: String,
    },
    /// Keap rejected the client credentials: configuration, not the grant (never marked).
    ClientRejected,
    /// The client secret could not be read or parsed: configuration.
    ConfigurationError {
        reason: String,
    },
    /// Keap rejected the refresh token and no newer generation exists. The lease is still held:
    /// the caller decides (circuit breaker) whether to [`Refresher::mark`] or
    /// [`Refresher::release`].
    Rejected(PendingMark),
    MarkedNeedsReauthorization {
        reason: &'static str,
    },
    /// Keap issued a pair but it could not be committed before the deadline. Logged at ERROR.
    CommitFailed {
        reason: String,
    },
}

/// A rejected refresh awaiting the decision to mark the grant dead.
#[derive(Debug, Clone)]
pub struct PendingMark {
    pub id: ConnectionId,
    pub version: Version,
    pub owner: String,
    pub reason: &'static str,
    /// The write id of the presentation Keap rejected: a release (breaker open) takes it back
    /// out of `lost_responses`, since a rejection consumed nothing.
    pub presentation: Option<String>,
}

pub struct Refresher {
    store: DynamoDbTokenStore,
    oauth: OAuthClient,
    secrets: Arc<SecretsSource>,
    limiter: Arc<RateLimiter>,
    settings: RefresherSettings,
}

impl Refresher {
    pub fn new(
        store: DynamoDbTokenStore,
        oauth: OAuthClient,
        secrets: Arc<SecretsSource>,
        limiter: Arc<RateLimiter>,
        settings: RefresherSettings,
    ) -> Self {
        Self {
            store,
            oauth,
            secrets,
            limiter,
            settings,
        }
    }

    pub fn store(&self) -> &DynamoDbTokenStore {
        &self.store
    }

    /// The token requests this container sent, and the 429s they met.
    pub fn keap_usage(&self) -> &crate::keap::KeapUsage {
        self.oauth.usage()
    }

    /// Whether the connection's access token expires within the refresh window.
    pub fn is_due(&self, connection: &Connection, now: i64) -> bool {
        let window = i64::try_from(self.settings.refresh_window.as_secs()).unwrap_or(i64::MAX);
        match &connection.tokens {
            Some(pair) => pair.access_expires_at <= now.saturating_add(window),
            None => true,
        }
    }

    /// Runs the protocol for a connection read by the caller (a scan's copy is fine: the
    /// lease write returns the item, and its refresh token is the one presented).
    ///
    /// `force` refreshes even when not due (operator tool, on-demand after a 401). `run` is
    /// shared by every refresh of one invocation (brownout).
    pub async fn refresh(
        &self,
        connection: &Connection,
        deadline: Deadline,
        force: bool,
        run: &RunGuard,
    ) -> Result<RefreshOutcome, StoreError> {
        self.refresh_for(connection, deadline, force, run, RotationCause::Expiry)
            .await
    }

    /// [`Refresher::refresh`], saying why: a rotation because Keap answered 401 to the current
    /// access token is recorded by its commit (`unauthorized_rotation_at`), which bounds how
    /// often 401s can rotate a grant across every container (docs/design.md, "Containment").
    pub async fn refresh_for(
        &self,
        connection: &Connection,
        deadline: Deadline,
        force: bool,
        run: &RunGuard,
        cause: RotationCause,
    ) -> Result<RefreshOutcome, StoreError> {
        let id = &connection.id;
        if connection.kind == ConnectionKind::ServiceAccountKey {
            return Ok(RefreshOutcome::Static);
        }
        if connection.status == ConnectionStatus::NeedsReauthorization
            || connection.tokens.is_none()
        {
            return Ok(RefreshOutcome::AlreadyNeedsReauthorization);
        }
        if !force && !self.is_due(connection, now_epoch_secs()) {
            return Ok(RefreshOutcome::NotDue);
        }
        if run.is_browned_out() {
            warn!(connection = %id, "not starting a refresh: a commit in this run failed or is still retrying");
            return Ok(RefreshOutcome::NotStartedBrownout);
        }
        if deadline.remaining() < self.settings.minimum_time_to_start() {
            info!(connection = %id, "not starting a refresh: too little invocation time left");
            return Ok(RefreshOutcome::NotStartedDeadline);
        }

        let owner = new_write_id();
        let now = now_epoch_secs();
        let until = self.lease_until(now, deadline);
        let expiry_rotated_before =
            (cause == RotationCause::Expiry).then(|| now - EXPIRY_ROTATION_INTERVAL_SECS);
        let lease_requested = tokio::time::Instant::now();
        let leased = match self
            .store
            .take_lease_for(
                id,
                &connection.version(),
                &owner,
                now,
                until,
                expiry_rotated_before,
            )
            .await?
        {
            LeaseOutcome::Acquired { connection, .. } => connection,
            LeaseOutcome::Held => return Ok(RefreshOutcome::SkippedLocked),
            LeaseOutcome::GenerationMoved => return Ok(RefreshOutcome::AlreadyRefreshed),
            LeaseOutcome::NotActive => return Ok(RefreshOutcome::AlreadyNeedsReauthorization),
            LeaseOutcome::RotationLimited { rotated_at } => {
                info!(connection = %id, rotated_secs_ago = now - rotated_at, "not rotating: an expiry-driven rotation committed less than a minute ago");
                return Ok(RefreshOutcome::RotationLimited { rotated_at });
            }
        };
        // Measured from before the lease write: however long that write took, the lease is
        // never assumed to last longer than it does.
        let lease = LeaseClock {
            requested: lease_requested,
            length: Duration::from_secs(u64::try_from(until - now).unwrap_or(0)),
        };
        let held = Held {
            id,
            version: leased.version(),
            authorized_by: leased.authorized_by.clone(),
            keap_app: leased.keap_app.clone(),
            owner: &owner,
            cause,
        };
        let Some(pair) = leased.tokens.as_ref() else {
            self.release_held(&held, "no_token_pair", None, deadline)
                .await?;
            return Ok(RefreshOutcome::AlreadyNeedsReauthorization);
        };
        if leased.lost_responses >= MAX_LOST_RESPONSES {
            // Its token may be spent twice over already: never presented again.
            return Ok(self.pending_mark(&held, REASON_LOST_RESPONSE, None));
        }

        let credentials = match self
            .secrets
            .client_credentials(&self.settings.client_secret_id)
            .await
        {
            Ok(credentials) => credentials,
            Err(e) => {
                let reason = e.to_string();
                error!(connection = %id, error = %reason, "client credentials unavailable");
                self.release_held(&held, "client_credentials_unavailable", None, deadline)
                    .await?;
                return Ok(RefreshOutcome::ConfigurationError { reason });
            }
        };

        loop {
            self.limiter.acquire().await;
            // Counted before it is made (docs/design.md, "Refresh protocol"): if the process
            // dies or the answer is lost from here on, the id stays and the presentation counts.
            let presentation = new_write_id();
            let counted = self
                .store
                .count_presentation(id, &held.version, &owner, &presentation, now_epoch_secs())
                .await;
            let left = match counted {
                Ok(Some(left)) => left,
                // Our lease is gone: someone else decides now. Nothing was presented.
                Ok(None) => return Ok(RefreshOutcome::AlreadyRefreshed),
                Err(e) => {
                    // The ADD may have landed with its answer lost: take it back, then report.
                    if let Err(release) = self
                        .release_held(&held, "store_unavailable", Some(&presentation), deadline)
                        .await
                    {
                        warn!(connection = %id, error = %release, "the lease could not be released after a failed write; it expires on its own");
                    }
                    return Err(e);
                }
            };
            // Ids left by earlier presentations of this token whose answers were lost.
            let lost_before = left.saturating_sub(1);
            if left > MAX_LOST_RESPONSES {
                warn!(connection = %id, generation = held.version.generation, left, "this refresh token was presented too often without an answer; never presenting it again");
                return Ok(self.pending_mark(&held, REASON_LOST_RESPONSE, None));
            }
            // After every wait (lease write, secret read, limiter, the count above): is there
            // still room for the token request and the commit?
            if !self.time_to_present(&lease, deadline) {
                info!(connection = %id, lost_before, "not presenting the refresh token: too little invocation or lease time left after the waits; the lease is released");
                self.release_held(&held, "not_enough_time", Some(&presentation), deadline)
                    .await?;
                return Ok(RefreshOutcome::NotStartedDeadline);
            }

            let presented_at = now_epoch_secs();
            let answer = self.oauth.refresh(&credentials, &pair.refresh_token).await;
            match answer {
                Ok(issued) => {
                    let short_lifetime =
                        issued.pair.access_expires_at - presented_at < SHORT_EXPIRES_IN_SECS;
                    return self
                        .commit(&held, &issued, deadline, run, short_lifetime)
                        .await;
                }
                Err(e) if is_lost_answer(&e) => {
                    if left >= MAX_LOST_RESPONSES {
                        warn!(connection = %id, generation = held.version.generation, left, error = %e, "Keap's answer to this refresh token was lost again; giving the grant up rather than present it once more");
                        return Ok(self.pending_mark(&held, REASON_LOST_RESPONSE, None));
                    }
                    // Keap may have spent the token without us seeing the new pair. Presenting
                    // the same token once more is the only way to find out: either it was not
                    // spent (new pair) or it was (rejected, and then no one can recover it).
                    // The next turn counts it first and checks the time again.
                    warn!(connection = %id, generation = held.version.generation, error = %e, "no usable answer from Keap's token endpoint; presenting the same refresh token once more if time allows");
                }
                Err(TokenError::RefreshTokenRejected { .. }) => {
                    let reason = if lost_before > 0 {
                        REASON_LOST_RESPONSE
                    } else {
                        REASON_REFRESH_TOKEN_REJECTED
                    };
                    return self.rejected(&held, reason, presentation).await;
                }
                Err(TokenError::ClientRejected { status, .. }) => {
                    error!(connection = %id, status, "Keap rejected the client credentials: the client secret is wrong or was rotated; the grant is not marked");
                    self.secrets.invalidate(&self.settings.client_secret_id);
                    self.release_held(
                        &held,
                        "client_credentials_rejected",
                        Some(&presentation),
                        deadline,
                    )
                    .await?;
                    return Ok(RefreshOutcome::ClientRejected);
                }
                Err(other) => {
                    // A status that says nothing was consumed (429, 503, other refusals), a
                    // redirect, or a request that was never sent: not counted.
                    let reason = other.to_string();
                    warn!(connection = %id, error = %reason, "refresh failed; the lease is released and the next run retries");
                    self.release_held(&held, "keap_unavailable", Some(&presentation), deadline)
                        .await?;
                    return Ok(RefreshOutcome::FailedTransient { reason });
                }
            }
        }
    }

    /// Whether a presentation may start now: the invocation and the lease both leave room
    /// for one token request and the commit budget.
    fn time_to_present(&self, lease: &LeaseClock, deadline: Deadline) -> bool {
        let needed = self.settings.minimum_time_to_start();
        let lease_left = lease.length.saturating_sub(lease.requested.elapsed());
        deadline.remaining() >= needed && lease_left >= needed
    }

    /// The lease ends no earlier than this invocation's deadline plus a clock-skew margin, so
    /// a live holder never loses it (docs/design.md, "The fault model").
    fn lease_until(&self, now: i64, deadline: Deadline) -> i64 {
        let lease_secs = i64::try_from(self.settings.lease.as_secs()).unwrap_or(300);
        (now + lease_secs).max(deadline.epoch_secs() + LEASE_CLOCK_SKEW_SECS)
    }

    fn pending_mark(
        &self,
        held: &Held<'_>,
        reason: &'static str,
        presentation: Option<String>,
    ) -> RefreshOutcome {
        RefreshOutcome::Rejected(PendingMark {
            id: held.id.clone(),
            version: held.version.clone(),
            owner: held.owner.to_owned(),
            reason,
            presentation,
        })
    }

    /// Marks the rejected grant dead, conditional on generation and lease (I5, I6).
    pub async fn mark(&self, pending: &PendingMark) -> Result<RefreshOutcome, StoreError> {
        let outcome = self
            .store
            .mark_needs_reauthorization(
                &pending.id,
                &pending.version,
                MarkGuard::LeaseOwner(&pending.owner),
                pending.reason,
                now_epoch_secs(),
            )
            .await?;
        Ok(match outcome {
            MarkOutcome::Marked => {
                error!(connection = %pending.id, generation = pending.version.generation, reason = pending.reason,
                    "connection needs re-authorization: invoke the operator function with start_authorization");
                RefreshOutcome::MarkedNeedsReauthorization {
                    reason: pending.reason,
                }
            }
            MarkOutcome::NotMarked => RefreshOutcome::AlreadyRefreshed,
        })
    }

    /// Gives the lease of a rejected refresh back without marking (circuit breaker open),
    /// taking the rejected presentation out of `lost_responses` (a rejection consumed nothing).
    pub async fn release(&self, pending: &PendingMark, note: &str) -> Result<(), StoreError> {
        self.store
            .release_lease(
                &pending.id,
                &pending.version,
                &pending.owner,
                Some(note),
                pending.presentation.as_deref(),
                now_epoch_secs(),
            )
            .await
    }

    async fn rejected(
        &self,
        held: &Held<'_>,
        reason: &'static str,
        presentation: String,
    ) -> Result<RefreshOutcome, StoreError> {
        // A newer generation means someone else refreshed (or re-authorized): fine.
        match self.store.get(held.id).await? {
            Some(current) if current.version() != held.version => {
                Ok(RefreshOutcome::AlreadyRefreshed)
            }
            None => Ok(RefreshOutcome::Gone),
            // The rejected presentation consumed nothing: if the mark is not made (breaker
            // open), the release takes it back out of `lost_responses`.
            Some(_) => Ok(self.pending_mark(held, reason, Some(presentation))),
        }
    }

    async fn commit(
        &self,
        held: &Held<'_>,
        issued: &IssuedTokens,
        deadline: Deadline,
        run: &RunGuard,
        short_lifetime: bool,
    ) -> Result<RefreshOutcome, StoreError> {
        // One write id for every attempt: a retry whose earlier attempt landed recognises it.
        let write_id = new_write_id();
        let mut backoff = COMMIT_BACKOFF_START;
        let mut attempt = 1u32;
        loop {
            let commit = self.store.commit_refresh(
                held.id,
                &held.version,
                &write_id,
                issued,
                held.cause,
                now_epoch_secs(),
            );
            let outcome = deadline
                .cut(DEADLINE_SAFETY, commit)
                .await
                .unwrap_or_else(|| Err(cut_at_deadline()));
            match outcome {
                Ok(CommitOutcome::Committed {
                    generation,
                    recognised,
                }) => {
                    info!(connection = %held.id, generation, attempts = attempt, recognised, "refreshed");
                    return Ok(RefreshOutcome::Refreshed {
                        generation,
                        pair: issued.pair.clone(),
                        short_lifetime,
                    });
                }
                Ok(CommitOutcome::Superseded { current }) if self.replaced(held, &current) => {
                    return self.orphan(held, issued).await;
                }
                Ok(CommitOutcome::Removed) => {
                    error!(connection = %held.id, "the connection was removed while it was being refreshed; the pair Keap just issued is dropped");
                    return Ok(RefreshOutcome::Orphaned);
                }
                Ok(CommitOutcome::Superseded { .. }) => {
                    return Ok(self.commit_unknown(
                        held,
                        "the generation moved, but not by a re-authorization".to_owned(),
                    ));
                }
                Ok(CommitOutcome::Unknown { reason }) => {
                    return Ok(self.commit_unknown(held, reason));
                }
                Err(e) if e.is_retryable() && deadline.remaining() > backoff + DEADLINE_SAFETY => {
                    run.brown_out();
                    warn!(connection = %held.id, attempt, error = %e, "commit of a refreshed pair failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(COMMIT_BACKOFF_MAX);
                    attempt += 1;
                }
                Err(e) => {
                    run.brown_out();
                    error!(connection = %held.id, attempts = attempt, error = %e,
                        "Keap issued a new pair but it could not be stored before the deadline; the connection will need re-authorization if it was lost");
                    return Ok(RefreshOutcome::CommitFailed {
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// Whether the connection the commit lost to is a new grant (re-authorized, re-registered
    /// or re-created), rather than an unexplained move of the one we leased.
    fn replaced(&self, held: &Held<'_>, current: &Connection) -> bool {
        current.incarnation != held.version.incarnation
            || current.authorized_by != held.authorized_by
            || current.kind != ConnectionKind::OAuth
    }

    async fn orphan(
        &self,
        held: &Held<'_>,
        issued: &IssuedTokens,
    ) -> Result<RefreshOutcome, StoreError> {
        let owner = OrphanOwner {
            generation: held.version.generation + 1,
            incarnation: held.version.incarnation.as_deref(),
            keap_app: held.keap_app.as_deref(),
        };
        let kept = self
            .store
            .store_orphan_pair(held.id, &owner, &issued.pair, now_epoch_secs())
            .await?;
        match kept {
            OrphanKept::Pair => error!(connection = %held.id, generation = owner.generation,
                "a re-authorization replaced this connection while it was being refreshed; the pair Keap just issued belongs to the old grant and is kept in orphan_pair, not promoted"),
            OrphanKept::DiagnosisOnly => {
                error!(connection = %held.id, generation = owner.generation,
                "the connection was removed and re-created, or re-authorized for another Keap account, while it was being refreshed; the pair Keap just issued belongs to the old grant: only its fingerprints are kept in orphan_pair")
            }
            OrphanKept::Nothing => error!(connection = %held.id, generation = owner.generation,
                "the connection was removed while it was being refreshed; the pair Keap just issued is dropped"),
        }
        Ok(RefreshOutcome::Orphaned)
    }

    fn commit_unknown(&self, held: &Held<'_>, reason: String) -> RefreshOutcome {
        error!(connection = %held.id, generation = held.version.generation, reason = %reason,
            "the commit of a refreshed pair failed its condition and nothing tells whose write did it: check the connection with keapalive-admin status");
        RefreshOutcome::CommitUnknown { reason }
    }

    /// Frees the lease, taking `uncount` (a presentation that consumed nothing) back out of
    /// `lost_responses` in the same write; retried like the commit, until the deadline minus
    /// [`DEADLINE_SAFETY`]. If it never lands, the presentation stays counted: the safe side.
    async fn release_held(
        &self,
        held: &Held<'_>,
        note: &str,
        uncount: Option<&str>,
        deadline: Deadline,
    ) -> Result<(), StoreError> {
        let mut backoff = COMMIT_BACKOFF_START;
        loop {
            let release = self.store.release_lease(
                held.id,
                &held.version,
                held.owner,
                Some(note),
                uncount,
                now_epoch_secs(),
            );
            let released = deadline
                .cut(DEADLINE_SAFETY, release)
                .await
                .unwrap_or_else(|| Err(cut_at_deadline()));
            match released {
                Err(e) if e.is_retryable() && deadline.remaining() > backoff + DEADLINE_SAFETY => {
                    warn!(connection = %held.id, error = %e, "releasing the lease failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(COMMIT_BACKOFF_MAX);
                }
                other => return other,
            }
        }
    }
}

/// A store call still running [`DEADLINE_SAFETY`] before the deadline: abandoned (it may
/// still land), so the invocation ends in time and reports it.
fn cut_at_deadline() -> StoreError {
    StoreError::Unavailable {
        reason: "no answer before the invocation's deadline".to_owned(),
    }
}

/// How long the lease lasts, on this process's monotonic clock.
struct LeaseClock {
    /// When the lease write was sent (not when it answered).
    requested: tokio::time::Instant,
    length: Duration,
}

struct Held<'a> {
    id: &'a ConnectionId,
    /// The version the lease write returned: every later write is conditional on it.
    version: Version,
    /// Which authorization the leased grant came from: tells a re-authorization apart.
    authorized_by: Option<String>,
    /// The Keap account of the leased grant: an orphaned pair is kept only on it.
    keap_app: Option<String>,
    owner: &'a str,
    cause: RotationCause,
}

/// What the refreshes of one invocation share: once a commit has failed or is retrying, the
/// run starts no new refresh (a write brownout would strand every pair it obtained).
#[derive(Debug, Default)]
pub struct RunGuard {
    browned_out: AtomicBool,
    /// When the first commit failed or started retrying (contact-upsert's container-wide guard
    /// ends 30 s later).
    browned_out_at: std::sync::OnceLock<tokio::time::Instant>,
}

impl RunGuard {
    pub fn new() -> Self {
        Self::default()
    }

    fn brown_out(&self) {
        let _ = self.browned_out_at.set(tokio::time::Instant::now());
        self.browned_out.store(true, Ordering::Relaxed);
    }

    /// When this guard's brownout began, if it has.
    pub fn browned_out_since(&self) -> Option<tokio::time::Instant> {
        self.browned_out_at.get().copied()
    }

    pub fn is_browned_out(&self) -> bool {
        self.browned_out.load(Ordering::Relaxed)
    }
}

/// No answer, a success status whose body was not a token response, or a gateway error that
/// may hide a processed request (500, 502, 504): Keap may have spent the token.
fn is_lost_answer(error: &TokenError) -> bool {
    match error {
        TokenError::NoAnswer { .. } | TokenError::MaybeProcessed { .. } => true,
        TokenError::UnexpectedResponse { status, .. } => (200..300).contains(status),
        _ => false,
    }
}
