//! A usable credential for a caller (contact-upsert), refreshing on demand through the same
//! protocol when the access token is expired, about to expire, or was just rejected by Keap.
//!
//! Credentials are cached per warm container, so a warm call costs no DynamoDB read; the cache
//! is dropped for a connection whenever Keap rejects what it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::protocol::{EXPIRY_ROTATION_INTERVAL_SECS, RefreshOutcome, Refresher};
use super::recheck_clock::ClockReading;
use super::rejection_breaker::RejectionBreaker;
use super::write_brownout::WriteBrownout;
use crate::clock::now_epoch_secs;
use crate::connection_id::ConnectionId;
use crate::deadline::Deadline;
use crate::keap::AccessCredential;
use crate::secrets::SecretsSource;
use crate::token_store::{ConnectionKind, ConnectionStatus, RotationCause, StoreError, Version};

/// An access token this close to expiry is refreshed before use rather than risk a 401.
const MIN_VALIDITY_SECS: i64 = 120;
/// How often a caller that lost the lease race re-reads the connection.
const LOSER_POLL: Duration = Duration::from_millis(100);
/// How long a caller waits for another instance's refresh before giving up as `Unavailable`.
const MAX_WAIT_FOR_OTHER_REFRESH: Duration = Duration::from_secs(15);
/// At most one rotation per connection in this window is caused by Keap rejecting a token the
/// item still holds (recorded in the item, so the bound holds across containers).
pub const UNAUTHORIZED_ROTATION_INTERVAL_SECS: i64 = 600;
/// Service-account keys are re-read from Secrets Manager this often (rotation).
const KEY_CACHE_TTL_SECS: i64 = 300;

impl Grant {
    /// What ids derived through this credential (custom fields, tags) are cached under: the
    /// connection, its incarnation and its authorization. A removed and re-created connection,
    /// or one re-authorized for another account, never reuses the old account's ids.
    pub fn account_scope(&self, id: &ConnectionId) -> String {
        format!(
            "{id}\u{1f}{}\u{1f}{}",
            self.incarnation.as_deref().unwrap_or_default(),
            self.authorized_by.as_deref().unwrap_or_default()
        )
    }

    /// The connection version this credential was read from (conditions name it).
    pub fn version(&self) -> Version {
        Version {
            generation: self.generation,
            incarnation: self.incarnation.clone(),
        }
    }
}

/// Which kind of connection a credential belongs to.
fn kind_of(credential: &AccessCredential) -> ConnectionKind {
    match credential {
        AccessCredential::Bearer(_) => ConnectionKind::OAuth,
        AccessCredential::ApiKey(_) => ConnectionKind::ServiceAccountKey,
    }
}

/// A credential plus the generation of the connection it came from.
#[derive(Debug, Clone)]
pub struct Grant {
    pub credential: AccessCredential,
    pub generation: u64,
    pub incarnation: Option<String>,
    /// Write id of the authorization the credential descends from: a re-authorization (perhaps
    /// of another Keap account, `replace_account`) changes it, a refresh does not.
    pub authorized_by: Option<String>,
    /// Key connections: the rejection recorded on the item (`key_rejected_since`) that no
    /// success had answered when the item was last read (docs/design.md, "Connection kinds").
    /// A request with this key that succeeds answers it (`key_accepted_at`).
    pub key_rejected_since: Option<i64>,
    /// The access token's expiry as stored (epoch seconds); `None` for a key.
    pub expires_at: Option<i64>,
    /// Epoch seconds after which the credential must not be used without re-checking.
    valid_until: i64,
    /// When it was last checked against the connection item (generation, incarnation,
    /// status, kind), on both clocks: a warm container trusts it for at most the recheck
    /// interval after that, by either clock.
    checked_at: ClockReading,
}

#[derive(Debug, thiserror::Error)]
pub enum OnDemandError {
    #[error(
        "connection {id} does not exist: authorize it (invoke the operator function with start_authorization)"
    )]
    NotFound { id: ConnectionId },
    #[error(
        "connection {id} needs re-authorization ({reason}): invoke the operator function with start_authorization"
    )]
    NeedsReauthorization { id: ConnectionId, reason: String },
    #[error("connection {id} could not be refreshed now ({reason}); retry later")]
    Unavailable { id: ConnectionId, reason: String },
    /// Keap rejected the current access token, and a 401 already rotated this grant within
    /// [`UNAUTHORIZED_ROTATION_INTERVAL_SECS`]: the connection stays active, nothing rotates.
    #[error(
        "Keap rejected the current access token of connection {id}, which was already rotated for a 401 {rotated_secs_ago} s ago; not rotating again within 10 minutes; retry later"
    )]
    RotationSuppressed {
        id: ConnectionId,
        rotated_secs_ago: i64,
    },
    /// Keap rejected this connection's grant while this container has already marked others
    /// within the breaker's window: treated as a Keap incident, the connection stays active.
    #[error(
        "Keap rejected the credentials of several connections within 10 minutes; treating it as a Keap incident: connection {id} stays active and is not marked; retry later"
    )]
    Incident { id: ConnectionId },
    #[error("the token store is unavailable: {0}")]
    Store(#[from] StoreError),
    /// Asked for an OAuth token ([`Kinds::OAuthOnly`]) of a Service Account Key connection: the
    /// key is not read.
    #[error("connection {id} uses a Service Account Key, not an OAuth grant")]
    KeyConnection { id: ConnectionId },
}

/// Which connections a caller can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kinds {
    /// OAuth grants and Service Account Keys (contact-upsert, keap-proxy).
    Any,
    /// OAuth grants only (access-token): a key connection is refused before its secret is read.
    OAuthOnly,
}

pub struct OnDemandRefresher {
    refresher: Arc<Refresher>,
    secrets: Arc<SecretsSource>,
    cache: Mutex<HashMap<ConnectionId, Grant>>,
    recheck: Duration,
    breaker: RejectionBreaker,
    /// Container-wide: no refresh starts while commits are failing (docs/design.md, "The
    /// fault model").
    brownout: WriteBrownout,
}

impl OnDemandRefresher {
    /// `recheck`: how long a cached credential is used before it is checked against the
    /// connection item again (`KEAPALIVE_CONNECTION_RECHECK_SECS`).
    pub fn new(refresher: Arc<Refresher>, secrets: Arc<SecretsSource>, recheck: Duration) -> Self {
        Self {
            refresher,
            secrets,
            cache: Mutex::new(HashMap::new()),
            recheck,
            breaker: RejectionBreaker::default(),
            brownout: WriteBrownout::default(),
        }
    }

    /// How long a cached credential is used before it is checked against the item again.
    pub fn recheck_interval(&self) -> Duration {
        self.recheck
    }

    /// This container recorded (or found) a rejection of the key it caches for `id`.
    pub fn note_key_rejection(&self, id: &ConnectionId, since: Option<i64>) {
        if let Some(cached) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
        {
            cached.key_rejected_since = since;
        }
    }

    pub fn refresher(&self) -> &Refresher {
        &self.refresher
    }

    /// Shared by every mark this container's upserts make (OAuth grants and keys).
    pub fn breaker(&self) -> &RejectionBreaker {
        &self.breaker
    }

    /// A credential usable now. `rejected` is one Keap just answered 401 for: it is never
    /// handed out again, and an OAuth connection still holding it is refreshed.
    pub fn grant(
        &self,
        id: &ConnectionId,
        deadline: Deadline,
        rejected: Option<&Grant>,
    ) -> impl std::future::Future<Output = Result<Grant, OnDemandError>> + Send {
        // Not an `async fn` of its own: one more layer of future nesting overflows the
        // compiler's layout query depth in the functions' `main`.
        self.grant_valid_for(id, deadline, rejected, MIN_VALIDITY_SECS, Kinds::Any)
    }

    /// Like [`grant`](Self::grant), for an access token still valid for at least
    /// `min_validity_secs` (access-token's `min_valid_secs`): a stored token expiring sooner is
    /// refreshed first, through the same lease protocol and the same expiry-rotation limit; if
    /// Keap's fresh token is itself shorter, it is returned as it is (its `expires_at` tells).
    pub async fn grant_valid_for(
        &self,
        id: &ConnectionId,
        deadline: Deadline,
        rejected: Option<&Grant>,
        min_validity_secs: i64,
        kinds: Kinds,
    ) -> Result<Grant, OnDemandError> {
        let min_validity_secs = min_validity_secs.max(MIN_VALIDITY_SECS);
        let is_rejected =
            |g: &Grant| rejected.is_some_and(|r| r.credential.same_secret(&g.credential));
        // A cached credential that is still valid but due for its re-check is kept only if the
        // item still shows the same grant: a removed, replaced or re-keyed connection stops
        // being used within the recheck interval. If that read fails, the call fails
        // (`Unavailable`): sending a credential nobody can vouch for could put contacts into an
        // account the operator has just disconnected.
        let recheck_candidate = match self.cached(id) {
            Some(cached)
                if kinds == Kinds::OAuthOnly
                    && matches!(cached.credential, AccessCredential::ApiKey(_)) =>
            {
                return Err(OnDemandError::KeyConnection { id: id.clone() });
            }
            Some(cached)
                if !is_rejected(&cached)
                    && cached.valid_until > now_epoch_secs()
                    && cached
                        .expires_at
                        .is_none_or(|at| at - min_validity_secs > now_epoch_secs()) =>
            {
                if !cached
                    .checked_at
                    .has_passed(self.recheck, ClockReading::now())
                {
                    return Ok(cached);
                }
                Some(cached)
            }
            _ => None,
        };
        self.forget(id);

        let give_up_at = Instant::now() + MAX_WAIT_FOR_OTHER_REFRESH.min(deadline.remaining());
        loop {
            let connection = self
                .refresher
                .store()
                .get(id)
                .await?
                .ok_or_else(|| OnDemandError::NotFound { id: id.clone() })?;
            if connection.status == ConnectionStatus::NeedsReauthorization {
                return Err(OnDemandError::NeedsReauthorization {
                    id: id.clone(),
                    reason: connection
                        .last_error
                        .unwrap_or_else(|| "grant rejected".to_owned()),
                });
            }
            if let Some(cached) = &recheck_candidate
                && cached.version() == connection.version()
                && kind_of(&cached.credential) == connection.kind
            {
                let mut confirmed = cached.clone();
                confirmed.checked_at = ClockReading::now();
                confirmed.key_rejected_since = connection.unanswered_key_rejection();
                return Ok(self.remember(id, confirmed));
            }
            if connection.kind == ConnectionKind::ServiceAccountKey {
                if kinds == Kinds::OAuthOnly {
                    return Err(OnDemandError::KeyConnection { id: id.clone() });
                }
                return self.key_grant(id, &connection).await;
            }
            let now = now_epoch_secs();
            let mut cause = RotationCause::Expiry;
            if let Some(pair) = &connection.tokens {
                let grant = Grant {
                    credential: AccessCredential::Bearer(pair.access_token.clone()),
                    generation: connection.generation,
                    incarnation: connection.incarnation.clone(),
                    authorized_by: connection.authorized_by.clone(),
                    key_rejected_since: None,
                    expires_at: Some(pair.access_expires_at),
                    valid_until: pair.access_expires_at - MIN_VALIDITY_SECS,
                    checked_at: ClockReading::now(),
                };
                if grant.valid_until > now {
                    // Valid for what the caller asked, or Keap's newest pair (a refresh
                    // committed within the expiry-rotation interval) is simply shorter:
                    // rotating again would not help.
                    let long_enough = pair.access_expires_at - min_validity_secs > now
                        || connection
                            .refreshed_at
                            .is_some_and(|at| now - at < EXPIRY_ROTATION_INTERVAL_SECS);
                    if !is_rejected(&grant) && long_enough {
                        return Ok(self.remember(id, grant));
                    }
                }
                if grant.valid_until > now && is_rejected(&grant) {
                    // Keap refused the token the item still holds, before its expiry. One
                    // rotation may cure it (Keap lost track of the token); a second within the
                    // interval would only spend the client id's quota, so the caller is told to
                    // come back instead.
                    cause = RotationCause::Unauthorized;
                    if let Some(at) = connection.unauthorized_rotation_at
                        && now - at < UNAUTHORIZED_ROTATION_INTERVAL_SECS
                    {
                        warn!(connection = %id, generation = connection.generation, rotated_secs_ago = now - at, "Keap rejected a current access token again; not rotating twice within the interval");
                        return Err(OnDemandError::RotationSuppressed {
                            id: id.clone(),
                            rotated_secs_ago: (now - at).max(0),
                        });
                    }
                }
            }

            info!(connection = %id, generation = connection.generation, cause = ?cause, "refreshing on demand");
            let outcome = self
                .refresher
                .refresh_for(&connection, deadline, true, &self.brownout.guard(), cause)
                .await?;
            let outcome = match outcome {
                RefreshOutcome::Rejected(pending) if !self.breaker.admit(id) => {
                    self.refresher
                        .release(&pending, "unauthorized_incident")
                        .await?;
                    return Err(OnDemandError::Incident { id: id.clone() });
                }
                RefreshOutcome::Rejected(pending) => self.refresher.mark(&pending).await?,
                other => other,
            };
            match outcome {
                RefreshOutcome::RotationLimited { rotated_at } => {
                    // Keap issues short-lived tokens: the connection rotated for expiry less
                    // than a minute ago (in some container), so the current token is Keap's
                    // newest. Used while Keap still accepts it; after that, retry later.
                    let still_valid = connection.tokens.as_ref().and_then(|pair| {
                        let grant = Grant {
                            credential: AccessCredential::Bearer(pair.access_token.clone()),
                            generation: connection.generation,
                            incarnation: connection.incarnation.clone(),
                            authorized_by: connection.authorized_by.clone(),
                            valid_until: pair.access_expires_at - 1,
                            key_rejected_since: None,
                            expires_at: Some(pair.access_expires_at),
                            checked_at: ClockReading::now(),
                        };
                        (grant.valid_until > now_epoch_secs() && !is_rejected(&grant))
                            .then_some(grant)
                    });
                    return match still_valid {
                        Some(grant) => Ok(self.remember(id, grant)),
                        None => Err(OnDemandError::Unavailable {
                            id: id.clone(),
                            reason: format!(
                                "the access token expired and the connection was rotated {} s ago; it is rotated at most once a minute for expiry; retry later",
                                (now_epoch_secs() - rotated_at).max(0)
                            ),
                        }),
                    };
                }
                RefreshOutcome::Refreshed {
                    generation, pair, ..
                } => {
                    self.brownout.write_succeeded();
                    let grant = Grant {
                        credential: AccessCredential::Bearer(pair.access_token),
                        generation,
                        incarnation: connection.incarnation.clone(),
                        authorized_by: connection.authorized_by.clone(),
                        key_rejected_since: None,
                        expires_at: Some(pair.access_expires_at),
                        valid_until: pair.access_expires_at - MIN_VALIDITY_SECS,
                        checked_at: ClockReading::now(),
                    };
                    return Ok(self.remember(id, grant));
                }
                RefreshOutcome::MarkedNeedsReauthorization { reason } => {
                    return Err(OnDemandError::NeedsReauthorization {
                        id: id.clone(),
                        reason: reason.to_owned(),
                    });
                }
                RefreshOutcome::Gone => {
                    return Err(OnDemandError::NotFound { id: id.clone() });
                }
                RefreshOutcome::FailedTransient { reason }
                | RefreshOutcome::ConfigurationError { reason }
                | RefreshOutcome::CommitFailed { reason }
                | RefreshOutcome::CommitUnknown { reason } => {
                    return Err(OnDemandError::Unavailable {
                        id: id.clone(),
                        reason,
                    });
                }
                RefreshOutcome::ClientRejected => {
                    return Err(OnDemandError::Unavailable {
                        id: id.clone(),
                        reason: "Keap rejected the client credentials".to_owned(),
                    });
                }
                RefreshOutcome::NotStartedDeadline => {
                    return Err(OnDemandError::Unavailable {
                        id: id.clone(),
                        reason: "too little invocation time left to refresh".to_owned(),
                    });
                }
                RefreshOutcome::NotStartedBrownout => {
                    return Err(OnDemandError::Unavailable {
                        id: id.clone(),
                        reason: "the token store is failing writes (a commit of a refreshed \
                                 pair failed or is retrying), so no new token is requested \
                                 for up to 30 s"
                            .to_owned(),
                    });
                }
                // Someone else is refreshing, or just did: wait for their commit and re-read (I4).
                RefreshOutcome::SkippedLocked
                | RefreshOutcome::AlreadyRefreshed
                | RefreshOutcome::Orphaned
                | RefreshOutcome::NotDue
                | RefreshOutcome::Static
                | RefreshOutcome::AlreadyNeedsReauthorization
                | RefreshOutcome::Rejected(_) => {
                    if Instant::now() + LOSER_POLL >= give_up_at {
                        return Err(OnDemandError::Unavailable {
                            id: id.clone(),
                            reason: "another instance is refreshing the token".to_owned(),
                        });
                    }
                    tokio::time::sleep(LOSER_POLL).await;
                }
            }
        }
    }

    /// Drops the cached credential (Keap rejected it, or the key was revoked).
    pub fn forget(&self, id: &ConnectionId) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    async fn key_grant(
        &self,
        id: &ConnectionId,
        connection: &crate::token_store::Connection,
    ) -> Result<Grant, OnDemandError> {
        let secret_id = connection.key_secret_id.as_deref().ok_or_else(|| {
            OnDemandError::NeedsReauthorization {
                id: id.clone(),
                reason: "key connection without key_secret_id".to_owned(),
            }
        })?;
        let key = self.secrets.secret_string(secret_id).await.map_err(|e| {
            OnDemandError::Unavailable {
                id: id.clone(),
                reason: e.to_string(),
            }
        })?;
        let grant = Grant {
            credential: AccessCredential::ApiKey(key),
            generation: connection.generation,
            incarnation: connection.incarnation.clone(),
            authorized_by: connection.authorized_by.clone(),
            key_rejected_since: connection.unanswered_key_rejection(),
            expires_at: None,
            valid_until: now_epoch_secs() + KEY_CACHE_TTL_SECS,
            checked_at: ClockReading::now(),
        };
        Ok(self.remember(id, grant))
    }

    fn cached(&self, id: &ConnectionId) -> Option<Grant> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn remember(&self, id: &ConnectionId, grant: Grant) -> Grant {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), grant.clone());
        grant
    }
}
