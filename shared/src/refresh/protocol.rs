//! One connection's refresh: lease → refresh → commit, with every failure classified.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::Deadline;
use crate::clock::now_epoch_secs;
use crate::config::Config;
use crate::connection_id::ConnectionId;
use crate::keap::rate_limit::RateLimiter;
use crate::keap::{IssuedTokens, OAuthClient, TokenError, TokenPair};
use crate::secrets::SecretsSource;
use crate::token_store::{
    CommitOutcome, Connection, ConnectionKind, ConnectionStatus, LeaseOutcome, MarkGuard,
    MarkOutcome, StoreError, TokenStore,
};

/// Time the commit may take after Keap answered (DESIGN.md step 1: 10 s).
const COMMIT_BUDGET: Duration = Duration::from_secs(10);
/// The commit stops retrying this long before the deadline, to leave time to report.
const DEADLINE_SAFETY: Duration = Duration::from_millis(500);
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
    /// Too little invocation time left to finish; the next run or caller will.
    NotStartedDeadline,
    /// Another refresher holds the lease (I4: this one did not call Keap).
    SkippedLocked,
    /// The generation moved since it was read: someone else refreshed or re-authorized.
    AlreadyRefreshed,
    Refreshed {
        generation: u64,
        pair: TokenPair,
    },
    /// A re-authorization moved the generation between Keap's answer and the commit: the pair
    /// was kept in `orphan_pair` for diagnosis and not promoted.
    Orphaned,
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
    pub generation: u64,
    pub owner: String,
    pub reason: &'static str,
}

pub struct Refresher<S> {
    store: S,
    oauth: OAuthClient,
    secrets: Arc<SecretsSource>,
    limiter: Arc<RateLimiter>,
    settings: RefresherSettings,
}

impl<S: TokenStore> Refresher<S> {
    pub fn new(
        store: S,
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

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn settings(&self) -> &RefresherSettings {
        &self.settings
    }

    /// Whether the connection's access token expires within the refresh window.
    pub fn is_due(&self, connection: &Connection, now: i64) -> bool {
        let window = i64::try_from(self.settings.refresh_window.as_secs()).unwrap_or(i64::MAX);
        match &connection.tokens {
            Some(pair) => pair.access_expires_at <= now.saturating_add(window),
            None => true,
        }
    }

    /// Runs the protocol for a connection read (consistently) by the caller.
    ///
    /// `force` refreshes even when not due (operator tool, on-demand after a 401).
    pub async fn refresh(
        &self,
        connection: &Connection,
        deadline: Deadline,
        force: bool,
    ) -> Result<RefreshOutcome, StoreError> {
        let id = &connection.id;
        if connection.kind == ConnectionKind::ServiceAccountKey {
            return Ok(RefreshOutcome::Static);
        }
        if connection.status == ConnectionStatus::NeedsReauthorization {
            return Ok(RefreshOutcome::AlreadyNeedsReauthorization);
        }
        let Some(pair) = &connection.tokens else {
            return Ok(RefreshOutcome::AlreadyNeedsReauthorization);
        };
        if !force && !self.is_due(connection, now_epoch_secs()) {
            return Ok(RefreshOutcome::NotDue);
        }
        if deadline.remaining() < self.settings.minimum_time_to_start() {
            info!(connection = %id, "not starting a refresh: too little invocation time left");
            return Ok(RefreshOutcome::NotStartedDeadline);
        }

        let generation = connection.generation;
        let owner = lease_owner();
        let now = now_epoch_secs();
        let lease_secs = i64::try_from(self.settings.lease.as_secs()).unwrap_or(300);
        match self
            .store
            .take_lease(id, generation, &owner, now, now + lease_secs)
            .await?
        {
            LeaseOutcome::Acquired { .. } => {}
            LeaseOutcome::Held => return Ok(RefreshOutcome::SkippedLocked),
            LeaseOutcome::GenerationMoved => return Ok(RefreshOutcome::AlreadyRefreshed),
            LeaseOutcome::NotActive => return Ok(RefreshOutcome::AlreadyNeedsReauthorization),
        }
        let lease_taken = tokio::time::Instant::now();
        let held = Held {
            id,
            generation,
            owner: &owner,
        };

        let credentials = match self
            .secrets
            .client_credentials(&self.settings.client_secret_id)
            .await
        {
            Ok(credentials) => credentials,
            Err(e) => {
                let reason = e.to_string();
                error!(connection = %id, error = %reason, "client credentials unavailable");
                self.release_held(&held, "client_credentials_unavailable")
                    .await?;
                return Ok(RefreshOutcome::ConfigurationError { reason });
            }
        };

        self.limiter.acquire().await;
        let mut answer = self.oauth.refresh(&credentials, &pair.refresh_token).await;
        if is_lost_response(&answer) && self.may_retry_lost_response(lease_taken, deadline) {
            // Keap may have spent the token without us seeing the new pair. Presenting the same
            // token once more is the only way to find out: either it was not spent (new pair) or
            // it was (rejected, and then no one can recover it).
            warn!(connection = %id, generation, "no answer from Keap's token endpoint; retrying the same refresh token once");
            self.limiter.acquire().await;
            answer = self.oauth.refresh(&credentials, &pair.refresh_token).await;
            if let Err(TokenError::RefreshTokenRejected { .. }) = answer {
                return self.rejected(connection, &held, REASON_LOST_RESPONSE).await;
            }
        }

        match answer {
            Ok(issued) => self.commit(&held, &issued, deadline).await,
            Err(TokenError::RefreshTokenRejected { .. }) => {
                self.rejected(connection, &held, REASON_REFRESH_TOKEN_REJECTED)
                    .await
            }
            Err(TokenError::ClientRejected { status, .. }) => {
                error!(connection = %id, status, "Keap rejected the client credentials: the client secret is wrong or was rotated; the grant is not marked");
                self.secrets.invalidate(&self.settings.client_secret_id);
                self.release_held(&held, "client_credentials_rejected")
                    .await?;
                Ok(RefreshOutcome::ClientRejected)
            }
            Err(other) => {
                let reason = other.to_string();
                warn!(connection = %id, error = %reason, "refresh failed; the lease is released and the next run retries");
                self.release_held(&held, "keap_unavailable").await?;
                Ok(RefreshOutcome::FailedTransient { reason })
            }
        }
    }

    /// Marks the rejected grant dead, conditional on generation and lease (I5, I6).
    pub async fn mark(&self, pending: &PendingMark) -> Result<RefreshOutcome, StoreError> {
        let outcome = self
            .store
            .mark_needs_reauthorization(
                &pending.id,
                pending.generation,
                MarkGuard::LeaseOwner(&pending.owner),
                pending.reason,
                now_epoch_secs(),
            )
            .await?;
        Ok(match outcome {
            MarkOutcome::Marked => {
                error!(connection = %pending.id, generation = pending.generation, reason = pending.reason,
                    "connection needs re-authorization: invoke oauth-callback with start_authorization");
                RefreshOutcome::MarkedNeedsReauthorization {
                    reason: pending.reason,
                }
            }
            MarkOutcome::NotMarked => RefreshOutcome::AlreadyRefreshed,
        })
    }

    /// Gives the lease of a rejected refresh back without marking (circuit breaker open).
    pub async fn release(&self, pending: &PendingMark, note: &str) -> Result<(), StoreError> {
        self.store
            .release_lease(
                &pending.id,
                pending.generation,
                &pending.owner,
                Some(note),
                now_epoch_secs(),
            )
            .await
    }

    async fn rejected(
        &self,
        connection: &Connection,
        held: &Held<'_>,
        reason: &'static str,
    ) -> Result<RefreshOutcome, StoreError> {
        // A newer generation means someone else refreshed (or re-authorized): fine.
        match self.store.get(&connection.id).await? {
            Some(current) if current.generation != held.generation => {
                Ok(RefreshOutcome::AlreadyRefreshed)
            }
            None => Ok(RefreshOutcome::Gone),
            Some(_) => Ok(RefreshOutcome::Rejected(PendingMark {
                id: held.id.clone(),
                generation: held.generation,
                owner: held.owner.to_owned(),
                reason,
            })),
        }
    }

    async fn commit(
        &self,
        held: &Held<'_>,
        issued: &IssuedTokens,
        deadline: Deadline,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut backoff = COMMIT_BACKOFF_START;
        let mut attempt = 1u32;
        loop {
            match self
                .store
                .commit_refresh(held.id, held.generation, issued, now_epoch_secs())
                .await
            {
                Ok(CommitOutcome::Committed { generation }) => {
                    info!(connection = %held.id, generation, attempts = attempt, "refreshed");
                    return Ok(RefreshOutcome::Refreshed {
                        generation,
                        pair: issued.pair.clone(),
                    });
                }
                Ok(CommitOutcome::GenerationMoved) => {
                    error!(connection = %held.id, generation = held.generation + 1,
                        "a re-authorization replaced this connection while it was being refreshed; the pair Keap just issued belongs to the old grant and is kept in orphan_pair, not promoted");
                    self.store
                        .store_orphan_pair(
                            held.id,
                            held.generation + 1,
                            &issued.pair,
                            now_epoch_secs(),
                        )
                        .await?;
                    return Ok(RefreshOutcome::Orphaned);
                }
                Err(e) if e.is_retryable() && deadline.remaining() > backoff + DEADLINE_SAFETY => {
                    warn!(connection = %held.id, attempt, error = %e, "commit of a refreshed pair failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(COMMIT_BACKOFF_MAX);
                    attempt += 1;
                }
                Err(e) => {
                    error!(connection = %held.id, attempts = attempt, error = %e,
                        "Keap issued a new pair but it could not be stored before the deadline; the connection will need re-authorization if it was lost");
                    return Ok(RefreshOutcome::CommitFailed {
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    async fn release_held(&self, held: &Held<'_>, note: &str) -> Result<(), StoreError> {
        self.store
            .release_lease(
                held.id,
                held.generation,
                held.owner,
                Some(note),
                now_epoch_secs(),
            )
            .await
    }

    /// The retry must finish inside the lease, or another refresher could present the token.
    fn may_retry_lost_response(
        &self,
        lease_taken: tokio::time::Instant,
        deadline: Deadline,
    ) -> bool {
        let lease_left = self.settings.lease.saturating_sub(lease_taken.elapsed());
        let needed = self.settings.minimum_time_to_start();
        lease_left > needed && deadline.remaining() > needed
    }
}

struct Held<'a> {
    id: &'a ConnectionId,
    generation: u64,
    owner: &'a str,
}

/// No answer, or a success status whose body was not a token response: Keap may have spent the
/// token either way.
fn is_lost_response(answer: &Result<IssuedTokens, TokenError>) -> bool {
    match answer {
        Err(TokenError::NoAnswer { .. }) => true,
        Err(TokenError::UnexpectedResponse { status, .. }) => (200..300).contains(status),
        _ => false,
    }
}

/// A lease owner id unique to this attempt.
fn lease_owner() -> String {
    let mut bytes = [0u8; 12];
    // If the OS random source fails, fall back to the process id and time: uniqueness per
    // attempt is what matters, not unpredictability.
    if getrandom::fill(&mut bytes).is_err() {
        return format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
