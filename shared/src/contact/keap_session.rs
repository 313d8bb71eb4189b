//! One invocation's conversation with Keap for one connection: the credential, and what to do
//! when a request does not succeed.
//!
//! - 401 on an OAuth connection: ask for a fresh grant, naming the rejected one (the store is
//!   re-read; if it still holds the rejected token, the refresh protocol runs), retry once.
//! - 401 on a key connection: re-read the key (it may have been rotated in Secrets Manager);
//!   a different key is retried once; the same key is probed (`GET /v1/account/profile`). A
//!   probe answering 401 is a confirming 401: the first records `key_rejected_since` on the
//!   item and answers `Unavailable`; the connection is marked `needs_reauthorization` (reason
//!   `key_rejected`, metric `NeedsReauthorization`) only by a confirming 401 between the recheck
//!   interval + 30 s and 10 minutes after it, and only if no request with the key succeeded in
//!   between (`key_accepted_at`, written by any container whose request with the key succeeds
//!   while the rejection is unanswered). A Keap blip of minutes never kills a key.
//! - 429: wait `Retry-After` (or 1 s, then 2 s) while the total wait stays within
//!   [`MAX_THROTTLE_WAIT`] and the deadline; otherwise `RateLimited`.
//! - 5xx, timeout, dropped connection: one retry (every request sent here is idempotent: the
//!   upsert matches by email, applying a tag twice is a no-op, creating an existing tag is
//!   refused and then found); otherwise `Unavailable`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::error::UpsertError;
use super::key_vouch::KeyVouches;
use crate::clock::now_epoch_secs;
use crate::connection_id::ConnectionId;
use crate::deadline::Deadline;
use crate::keap::AccessCredential;
use crate::keap::RestClient;
use crate::keap::rest::{KeapError, RestRequest, RestResponse};
use crate::refresh::{Grant, OnDemandError, OnDemandRefresher};
use crate::secrets::SecretsSource;
use crate::telemetry::{MetricSink, Metrics, Unit};
use crate::token_store::{MarkGuard, MarkOutcome};

/// Total time one invocation may spend waiting out Keap's throttling.
pub(crate) const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(5);
/// Backoff when a 429 carries no `Retry-After`.
const THROTTLE_BACKOFF: Duration = Duration::from_secs(1);
/// Pause before the single retry of a 5xx or lost answer.
const TRANSIENT_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// A request is not started, and a wait not begun, with less than this left before the
/// deadline: the invocation must still answer (and, in a batch, report its failures).
pub(crate) const DEADLINE_MARGIN: Duration = Duration::from_millis(1_500);
pub const REASON_KEY_REJECTED: &str = "key_rejected";
pub const METRIC_NEEDS_REAUTHORIZATION: &str = "NeedsReauthorization";
/// A 401 that did not mark anything: a current token rejected again within the rotation
/// interval, a fresh token rejected, or a key whose profile probe then succeeded.
pub const METRIC_SPURIOUS_UNAUTHORIZED: &str = "SpuriousUnauthorized";
/// A rejection not marked because this container marked others within the breaker's window.
pub const METRIC_UNAUTHORIZED_INCIDENT: &str = "UnauthorizedIncident";
/// A recorded key rejection can mark the connection once this long beyond the recheck
/// interval has passed: by then every warm container with traffic has re-read the item, seen the
/// rejection and, if its requests with the key succeed, answered it (`key_accepted_at`).
const KEY_REJECTION_CONFIRM_AFTER_SECS: i64 = 30;
/// A recorded key rejection older than this is stale: the next confirming 401 starts a new one.
const KEY_REJECTION_WINDOW_SECS: i64 = 600;

/// What a session needs of the upsert service: built once per container, shared by every
/// session.
pub(crate) struct KeapAccess {
    pub(crate) rest: RestClient,
    pub(crate) grants: Arc<OnDemandRefresher>,
    pub(crate) secrets: Arc<SecretsSource>,
    pub(crate) metrics: MetricSink,
    /// Metric dimension.
    pub(crate) stage: String,
    /// Container-wide bound on `key_accepted_at` writes.
    pub(crate) key_vouches: KeyVouches,
}

impl KeapAccess {
    /// Built once per container by each service that talks to Keap on a connection's behalf
    /// (contact-upsert, keap-proxy, access-token); metrics go to stdout (EMF).
    pub(crate) fn new(
        rest: RestClient,
        grants: Arc<OnDemandRefresher>,
        secrets: Arc<SecretsSource>,
        stage: String,
    ) -> Self {
        Self {
            rest,
            grants,
            secrets,
            metrics: MetricSink::stdout(),
            stage,
            key_vouches: KeyVouches::default(),
        }
    }

    /// Emits this invocation's Keap usage (requests, 429s, throttle waits) for `function`.
    pub(crate) fn flush_usage(&self, function: &'static str) {
        self.rest
            .usage()
            .flush(&self.metrics, &self.stage, function);
    }
}

pub(crate) struct KeapSession<'a> {
    access: &'a KeapAccess,
    id: &'a ConnectionId,
    grant: Grant,
    deadline: Deadline,
    /// The credential was replaced once after a 401; a second 401 is final.
    renewed: bool,
    /// A key Keap had rejected answered the profile probe: a second 401 is not a revocation.
    key_probe_passed: bool,
    throttled_for: Duration,
    throttles: u32,
}

impl<'a> KeapSession<'a> {
    pub(crate) async fn open(
        access: &'a KeapAccess,
        id: &'a ConnectionId,
        deadline: Deadline,
    ) -> Result<Self, UpsertError> {
        let grant = access
            .grants
            .grant(id, deadline, None)
            .await
            .map_err(|e| grant_error(id, e))?;
        Ok(Self {
            access,
            id,
            grant,
            deadline,
            renewed: false,
            key_probe_passed: false,
            throttled_for: Duration::ZERO,
            throttles: 0,
        })
    }

    pub(crate) fn connection(&self) -> &ConnectionId {
        self.id
    }

    /// The cache scope of ids learned through this session's credential
    /// ([`Grant::account_scope`]).
    pub(crate) fn account_scope(&self) -> String {
        self.grant.account_scope(self.id)
    }

    /// Sends `request` until it succeeds or the policy above gives up.
    pub(crate) async fn send(
        &mut self,
        request: &RestRequest,
    ) -> Result<RestResponse, UpsertError> {
        self.send_expecting(request, false)
            .await?
            .ok_or_else(|| UpsertError::Unavailable("Keap answered 404 unexpectedly".to_owned()))
    }

    /// Like [`KeapSession::send`] for a lookup: a 404 (no such resource) is `None`.
    pub(crate) async fn find(
        &mut self,
        request: &RestRequest,
    ) -> Result<Option<RestResponse>, UpsertError> {
        self.send_expecting(request, true).await
    }

    async fn send_expecting(
        &mut self,
        request: &RestRequest,
        absent_is_an_answer: bool,
    ) -> Result<Option<RestResponse>, UpsertError> {
        let mut transient_retried = false;
        loop {
            let error = match self.send_once(request).await {
                Ok(response) => {
                    self.answer_key_rejection().await;
                    return Ok(Some(response));
                }
                Err(error) => error,
            };
            match error {
                KeapError::Unauthorized { fault } => self.renew_after_401(&fault).await?,
                KeapError::RateLimited { retry_after } => {
                    let wait = retry_after
                        .unwrap_or_else(|| THROTTLE_BACKOFF * 2u32.pow(self.throttles.min(4)));
                    self.throttles += 1;
                    if self.throttled_for + wait > MAX_THROTTLE_WAIT || !self.has_time_for(wait) {
                        return Err(UpsertError::RateLimited(format!(
                            "Keap is throttling requests for connection {} (retry after {} s); \
                             retry later",
                            self.id,
                            retry_after.unwrap_or(THROTTLE_BACKOFF).as_secs().max(1)
                        )));
                    }
                    info!(connection = %self.id, wait_ms = wait.as_millis() as u64, "Keap throttled; waiting");
                    self.throttled_for += wait;
                    self.access.rest.usage().waited(wait);
                    tokio::time::sleep(wait).await;
                }
                // Asking again gets the same redirect, which is never followed.
                redirected @ KeapError::Redirected { .. } => {
                    return Err(unavailable(self.id, &redirected));
                }
                KeapError::Rejected { status: 404, .. } if absent_is_an_answer => {
                    return Ok(None);
                }
                KeapError::Rejected { status, message } => {
                    return Err(UpsertError::KeapRejected(format!(
                        "Keap refused {} {} (HTTP {status}): {message}",
                        request.method, request.path
                    )));
                }
                transient => {
                    if transient_retried || !self.has_time_for(TRANSIENT_RETRY_PAUSE) {
                        return Err(unavailable(self.id, &transient));
                    }
                    warn!(connection = %self.id, error = %transient, "Keap request failed; retrying once");
                    transient_retried = true;
                    tokio::time::sleep(TRANSIENT_RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn send_once(&self, request: &RestRequest) -> Result<RestResponse, KeapError> {
        self.send_with(&self.grant.credential, request).await
    }

    async fn send_with(
        &self,
        credential: &AccessCredential,
        request: &RestRequest,
    ) -> Result<RestResponse, KeapError> {
        let Some(stop_at) = self.deadline.instant().checked_sub(DEADLINE_MARGIN) else {
            return Err(KeapError::NoAnswer { timed_out: true });
        };
        if Instant::now() >= stop_at {
            return Err(KeapError::NoAnswer { timed_out: true });
        }
        let sending = self.access.rest.send(credential, request);
        tokio::time::timeout_at(stop_at, sending)
            .await
            .unwrap_or(Err(KeapError::NoAnswer { timed_out: true }))
    }

    fn has_time_for(&self, wait: Duration) -> bool {
        self.deadline.remaining() > wait + DEADLINE_MARGIN * 2
    }

    /// The grant requests are sent with now (access-token hands its token out).
    pub(crate) fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The credential requests are sent with now (keap-proxy sends its own requests).
    pub(crate) fn credential(&self) -> &AccessCredential {
        &self.grant.credential
    }

    /// Replaces the rejected credential, or fails with `NotAuthorized`.
    pub(crate) async fn renew_after_401(&mut self, fault: &str) -> Result<(), UpsertError> {
        let rejected = self.grant.clone();
        if self.renewed {
            return Err(self.final_rejection(&rejected, fault).await);
        }
        self.renewed = true;
        let fresh = match &rejected.credential {
            AccessCredential::Bearer(_) => {
                info!(connection = %self.id, "Keap rejected the access token; re-reading the connection");
                match self
                    .access
                    .grants
                    .grant(self.id, self.deadline, Some(&rejected))
                    .await
                {
                    Ok(fresh) => fresh,
                    Err(e @ OnDemandError::RotationSuppressed { .. }) => {
                        self.count(METRIC_SPURIOUS_UNAUTHORIZED);
                        return Err(grant_error(self.id, e));
                    }
                    Err(e @ OnDemandError::Incident { .. }) => {
                        self.count(METRIC_UNAUTHORIZED_INCIDENT);
                        return Err(grant_error(self.id, e));
                    }
                    Err(e) => return Err(grant_error(self.id, e)),
                }
            }
            AccessCredential::ApiKey(_) => self.reread_key().await?,
        };
        if fresh.credential.same_secret(&rejected.credential) {
            if let AccessCredential::ApiKey(_) = fresh.credential {
                // The same key, rejected once: confirm before believing it.
                self.confirm_key_rejection(&fresh, fault).await?;
                self.key_probe_passed = true;
                self.grant = fresh;
                return Ok(());
            }
            return Err(self.final_rejection(&rejected, fault).await);
        }
        self.grant = fresh;
        Ok(())
    }

    /// A key Keap answered 401 for is probed with the cheapest call there is
    /// (`GET /v1/account/profile`); a 401 there is a confirming 401, judged over time
    /// ([`KeapSession::key_confirmed_rejected`]). `Ok` means the probe succeeded: the caller
    /// retries its request once.
    async fn confirm_key_rejection(&mut self, key: &Grant, fault: &str) -> Result<(), UpsertError> {
        if !self.has_time_for(Duration::ZERO) {
            return Err(UpsertError::Unavailable(format!(
                "Keap rejected the service account key of connection {} ({fault}) and there is too little time left to confirm it; the connection stays active; retry later",
                self.id
            )));
        }
        match self
            .send_with(&key.credential, &RestRequest::get("account/profile"))
            .await
        {
            Ok(_) => {
                warn!(connection = %self.id, "Keap rejected the service account key once, then accepted it; not marking");
                self.count(METRIC_SPURIOUS_UNAUTHORIZED);
                self.grant = key.clone();
                self.answer_key_rejection().await;
                Ok(())
            }
            Err(KeapError::Unauthorized { .. }) => Err(self.key_confirmed_rejected(key).await),
            Err(other) => Err(UpsertError::Unavailable(format!(
                "Keap rejected the service account key of connection {} ({fault}) and the check that would confirm it failed ({other}); the connection stays active; retry later",
                self.id
            ))),
        }
    }

    fn count(&self, metric: &'static str) {
        let mut metrics = Metrics::new();
        metrics.put(metric, 1.0, Unit::Count);
        self.access.metrics.emit(&metrics, &self.access.stage);
    }

    /// The key may have been rotated in Secrets Manager since this container cached it.
    async fn reread_key(&self) -> Result<Grant, UpsertError> {
        let store = self.access.grants.refresher().store();
        let connection = store.get(self.id).await.map_err(|e| {
            UpsertError::Unavailable(format!("the token store is unavailable: {e}"))
        })?;
        if let Some(secret_id) = connection.and_then(|c| c.key_secret_id) {
            self.access.secrets.invalidate(&secret_id);
        }
        self.access.grants.forget(self.id);
        self.access
            .grants
            .grant(self.id, self.deadline, None)
            .await
            .map_err(|e| grant_error(self.id, e))
    }

    /// A second 401 in one request, on a credential just replaced or confirmed.
    async fn final_rejection(&mut self, rejected: &Grant, fault: &str) -> UpsertError {
        self.access.grants.forget(self.id);
        match rejected.credential {
            AccessCredential::ApiKey(_) if !self.key_probe_passed => {
                match self.confirm_key_rejection(rejected, fault).await {
                    Ok(()) => self.spurious_rejection(fault),
                    Err(error) => error,
                }
            }
            // The key answered the probe a moment ago; the token was just issued or re-read:
            // Keap's 401 is not the grant's death, and rotating again would only spend quota.
            AccessCredential::ApiKey(_) | AccessCredential::Bearer(_) => {
                self.count(METRIC_SPURIOUS_UNAUTHORIZED);
                self.spurious_rejection(fault)
            }
        }
    }

    fn spurious_rejection(&self, fault: &str) -> UpsertError {
        warn!(connection = %self.id, "Keap rejected a credential the connection item vouches for; the connection stays active");
        UpsertError::Unavailable(format!(
            "Keap rejected the current credential of connection {} ({fault}) although the \
             connection is active and the credential current; nothing was marked or rotated \
             again; retry later (if this persists for more than 10 minutes, re-authorize)",
            self.id
        ))
    }

    /// A request with a key succeeded while the item holds a rejection no success has answered:
    /// record `key_accepted_at` (at most once per recheck interval per container), so the key
    /// is not marked. A failed write only costs that proof; the request itself succeeded.
    pub(crate) async fn answer_key_rejection(&mut self) {
        let AccessCredential::ApiKey(_) = self.grant.credential else {
            return;
        };
        if self.grant.key_rejected_since.is_none() {
            return;
        }
        let interval = self.access.grants.recheck_interval();
        if !self.access.key_vouches.admit(self.id, interval) {
            return;
        }
        let store = self.access.grants.refresher().store();
        match store
            .record_key_accepted(self.id, &self.grant.version(), now_epoch_secs())
            .await
        {
            Ok(_) => {
                info!(connection = %self.id, "the service account key works again; recorded key_accepted_at");
                self.grant.key_rejected_since = None;
                self.access.grants.note_key_rejection(self.id, None);
            }
            Err(error) => {
                warn!(connection = %self.id, error = %error, "could not record that the service account key works");
            }
        }
    }

    /// The probe confirmed the rejection. Judged over time: the first confirming 401 records
    /// `key_rejected_since` and answers `Unavailable`; only a confirming 401 between the recheck
    /// interval + 30 s and 10 minutes after it marks the connection, conditional on no success
    /// having answered it (and unless this container has marked others within the breaker's
    /// window: a Keap incident).
    async fn key_confirmed_rejected(&mut self, rejected: &Grant) -> UpsertError {
        self.access.grants.forget(self.id);
        let now = now_epoch_secs();
        let opens = i64::try_from(self.access.grants.recheck_interval().as_secs())
            .unwrap_or(i64::MAX)
            .saturating_add(KEY_REJECTION_CONFIRM_AFTER_SECS);
        match rejected.key_rejected_since {
            Some(since) if (opens..=KEY_REJECTION_WINDOW_SECS).contains(&(now - since)) => {
                self.mark_confirmed_rejection(rejected, since).await
            }
            Some(since) if (0..opens).contains(&(now - since)) => {
                info!(connection = %self.id, rejected_secs_ago = now - since, "Keap still rejects the service account key; confirming over time");
                self.key_rejection_pending(now - since, opens)
            }
            _ => self.record_key_rejection(rejected, now, opens).await,
        }
    }

    async fn record_key_rejection(
        &mut self,
        rejected: &Grant,
        now: i64,
        opens: i64,
    ) -> UpsertError {
        let store = self.access.grants.refresher().store();
        match store
            .record_key_rejection(
                self.id,
                &rejected.version(),
                now,
                now - KEY_REJECTION_WINDOW_SECS,
            )
            .await
        {
            Ok(since) => {
                warn!(connection = %self.id, "Keap rejected the service account key; recorded key_rejected_since, the connection stays active until the rejection is confirmed over time");
                self.grant.key_rejected_since = since;
                self.access.grants.note_key_rejection(self.id, since);
                self.key_rejection_pending(since.map_or(0, |s| now - s), opens)
            }
            Err(error) => UpsertError::Unavailable(format!(
                "Keap rejected the service account key of connection {} and the rejection could \
                 not be recorded ({error}); the connection stays active; retry later",
                self.id
            )),
        }
    }

    fn key_rejection_pending(&self, rejected_secs_ago: i64, opens: i64) -> UpsertError {
        UpsertError::Unavailable(format!(
            "Keap rejected the service account key of connection {} ({rejected_secs_ago} s since \
             the first rejection); a key is marked revoked only if Keap still rejects it {opens} s \
             after that and no request with it succeeded meanwhile; the connection stays active; \
             retry later",
            self.id
        ))
    }

    async fn mark_confirmed_rejection(&self, rejected: &Grant, since: i64) -> UpsertError {
        if !self.access.grants.breaker().admit(self.id) {
            tracing::error!(connection = %self.id, "Keap rejected the service account keys of several connections within 10 minutes; treating it as a Keap incident and not marking");
            self.count(METRIC_UNAUTHORIZED_INCIDENT);
            return grant_error(
                self.id,
                OnDemandError::Incident {
                    id: self.id.clone(),
                },
            );
        }
        self.mark_key_rejected(rejected, since).await
    }

    async fn mark_key_rejected(&self, rejected: &Grant, since: i64) -> UpsertError {
        let store = self.access.grants.refresher().store();
        let outcome = store
            .mark_needs_reauthorization(
                self.id,
                &rejected.version(),
                MarkGuard::KeyRejectedSince(since),
                REASON_KEY_REJECTED,
                now_epoch_secs(),
            )
            .await;
        match outcome {
            Ok(MarkOutcome::Marked) => {
                warn!(
                    connection = %self.id,
                    generation = rejected.generation,
                    "Keap rejected the service account key; connection marked needs_reauthorization"
                );
                let mut metrics = Metrics::new();
                metrics.put(METRIC_NEEDS_REAUTHORIZATION, 1.0, Unit::Count);
                self.access.metrics.emit(&metrics, &self.access.stage);
            }
            Ok(MarkOutcome::NotMarked) => {
                info!(connection = %self.id, "the key connection changed, or a request with the key succeeded, since its rejection was recorded; not marking");
                return UpsertError::Unavailable(format!(
                    "Keap rejected the service account key of connection {}, but the connection \
                     changed or the key worked again since the rejection was recorded; not \
                     marked; retry",
                    self.id
                ));
            }
            Err(error) => {
                warn!(connection = %self.id, error = %error, "could not mark the key connection");
                return UpsertError::Unavailable(format!(
                    "Keap rejected the service account key of connection {} and the connection \
                     could not be marked ({error}); retry later",
                    self.id
                ));
            }
        }
        UpsertError::NotAuthorized(key_rejected_message(self.id))
    }
}

fn key_rejected_message(id: &ConnectionId) -> String {
    format!(
        "Keap rejected the service account key of connection {id} (key_rejected): create a new \
         key in Keap (Settings → API Settings → Service Account Keys), store it in its secret \
         and invoke the operator function with {{\"register_service_account_key\": \
         {{\"connection_id\": \"{id}\", \"secret_id\": \"...\"}}}}"
    )
}

fn unavailable(id: &ConnectionId, error: &KeapError) -> UpsertError {
    UpsertError::Unavailable(format!(
        "{error} for connection {id}; the request is safe to retry"
    ))
}

pub(crate) fn grant_error(id: &ConnectionId, error: OnDemandError) -> UpsertError {
    match error {
        OnDemandError::NotFound { .. } => UpsertError::NotAuthorized(format!(
            "connection {id} does not exist: authorize it (invoke the operator function with \
             {{\"start_authorization\": {{\"connection_id\": \"{id}\"}}}}) or register a \
             service account key for it"
        )),
        OnDemandError::NeedsReauthorization { reason, .. } if reason == REASON_KEY_REJECTED => {
            UpsertError::NotAuthorized(key_rejected_message(id))
        }
        OnDemandError::NeedsReauthorization { reason, .. } => UpsertError::NotAuthorized(format!(
            "connection {id} needs re-authorization ({reason}): invoke the operator function with \
                 {{\"start_authorization\": {{\"connection_id\": \"{id}\"}}}} and open the link"
        )),
        OnDemandError::Unavailable { reason, .. } => UpsertError::Unavailable(format!(
            "no usable credential for connection {id} right now ({reason}); retry later"
        )),
        e @ (OnDemandError::RotationSuppressed { .. } | OnDemandError::Incident { .. }) => {
            UpsertError::Unavailable(e.to_string())
        }
        OnDemandError::KeyConnection { .. } => UpsertError::Validation(format!(
            "connection {id} uses a Service Account Key, which never leaves keapalive; call Keap \
             with it through keap-proxy instead"
        )),
        OnDemandError::Store(error) => UpsertError::Unavailable(format!(
            "the token store is unavailable ({error}); retry later"
        )),
    }
}
