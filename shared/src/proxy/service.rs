//! keap-proxy's handler: parse, check the connection is served, send with the replay rules,
//! shape Keap's answer.
//!
//! The credential comes from contact-upsert's Keap session (`contact::KeapSession`): the same
//! on-demand refresh through the lease protocol, 401 memory in the item, key confirmation and
//! rejection breaker. The proxy sends its own requests ([`RestClient::exchange`]) because every
//! answer but 401, 429 and 5xx is data to it, and because its replay rules depend on the method.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::LambdaEvent;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::{info, warn};

use super::answer::{MAX_RESPONSE_BYTES, ProxyAnswer};
use super::error::ProxyError;
use super::replay::{self, Lost, Throttle};
use super::request::ProxyRequest;
use crate::config::{Config, PROXY_CONNECTIONS_VARIABLE};
use crate::connection_id::ConnectionId;
use crate::contact::{DEADLINE_MARGIN, KeapAccess, KeapSession, UpsertError};
use crate::deadline::{Deadline, DeadlinePolicy};
use crate::keap::{AccessCredential, KeapAnswer, KeapCall, KeapError, RestClient};
use crate::refresh::OnDemandRefresher;
use crate::secrets::SecretsSource;

/// The `Function` dimension of keap-proxy's Keap usage metrics (its binary name).
const FUNCTION_NAME: &str = "keap-proxy";

#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `KEAPALIVE_PROXY_CONNECTIONS`; `None`: every connection.
    pub connections: Option<Vec<ConnectionId>>,
    /// One Keap request's timeout: a POST or PATCH is not started with less time left than
    /// this (and the margin), so it is never cut off mid-flight by the deadline.
    pub keap_timeout: Duration,
    pub function_timeout: Duration,
    /// Metric dimension.
    pub stage: String,
}

impl ProxySettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            connections: config.proxy_connections.clone(),
            keap_timeout: config.keap_timeout,
            function_timeout: config.function_timeout,
            stage: config.stage.clone(),
        }
    }
}

/// Built once per container; shared by every invocation.
pub struct ProxyService {
    keap: KeapAccess,
    settings: ProxySettings,
    deadlines: DeadlinePolicy,
}

impl ProxyService {
    pub fn new(
        rest: RestClient,
        grants: Arc<OnDemandRefresher>,
        secrets: Arc<SecretsSource>,
        settings: ProxySettings,
    ) -> Self {
        Self {
            keap: KeapAccess::new(rest, grants, secrets, settings.stage.clone()),
            deadlines: DeadlinePolicy::new(settings.function_timeout),
            settings,
        }
    }

    /// One invocation: its deadline (robust to local emulators), then [`handle`](Self::handle).
    pub async fn handle_event(
        &self,
        event: LambdaEvent<Box<RawValue>>,
    ) -> Result<Value, ProxyError> {
        let deadline = self.deadlines.deadline(event.context.deadline);
        // Boxed, as contact-upsert's: the handler's future is deeply nested.
        Box::pin(self.handle(event.payload.get().as_bytes(), deadline)).await
    }

    /// The raw payload in, the caller's answer out. One log line per request: method, masked
    /// path, status (or error type), duration, connection; never a query value or a body.
    pub async fn handle(&self, payload: &[u8], deadline: Deadline) -> Result<Value, ProxyError> {
        let request = ProxyRequest::parse(payload)?;
        self.check_served(&request.connection_id)?;
        let started = Instant::now();
        let call = &request.call;
        let outcome = self.call(&request, deadline).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match &outcome {
            Ok((answer, sends)) => {
                info!(connection = %request.connection_id, method = %call.method, path = %call.path, status = answer.status, duration_ms, sends, "keap-proxy answered");
            }
            Err(error) => {
                warn!(connection = %request.connection_id, method = %call.method, path = %call.path, error_type = %error.kind(), duration_ms, "keap-proxy failed");
            }
        }
        // Once per invocation: Keap requests, 429s (and held requests), throttle waits.
        self.keap.flush_usage(FUNCTION_NAME);
        let (answer, _) = outcome?;
        serde_json::to_value(answer)
            .map_err(|_| ProxyError::Unavailable("could not encode Keap's answer".to_owned()))
    }

    fn check_served(&self, id: &ConnectionId) -> Result<(), ProxyError> {
        check_served(self.settings.connections.as_deref(), id, "keap-proxy")
            .map_err(ProxyError::Validation)
    }

    /// Sends until Keap answers with data or the rules give up; the answer and how many
    /// requests were sent.
    async fn call(
        &self,
        request: &ProxyRequest,
        deadline: Deadline,
    ) -> Result<(ProxyAnswer, u32), ProxyError> {
        let id = &request.connection_id;
        let call = &request.call;
        let mut session = KeapSession::open(&self.keap, id, deadline)
            .await
            .map_err(from_session)?;
        let (mut sends, mut lost_attempts, mut throttles) = (0u32, 0u32, 0u32);
        let mut throttled_for = Duration::ZERO;
        loop {
            if !replay::is_repeatable(&call.method)
                && deadline.remaining() < self.settings.keap_timeout + DEADLINE_MARGIN
            {
                return Err(ProxyError::Unavailable(format!(
                    "too little time left in this invocation to send {} {} on connection {id} \
                     and wait for Keap's answer; it was not sent, so nothing was applied; retry",
                    call.method, call.path
                )));
            }
            sends += 1;
            let error = match self.send_once(session.credential(), call, deadline).await {
                Ok(answer) => {
                    // Keap accepted the credential: a key rejection on record is answered.
                    session.answer_key_rejection().await;
                    return Ok((ProxyAnswer::shape(&call.path, answer)?, sends));
                }
                Err(error) => error,
            };
            match error {
                // Keap applied nothing: renew (the session's rules) and send once more.
                KeapError::Unauthorized { fault } => session
                    .renew_after_401(&fault)
                    .await
                    .map_err(from_session)?,
                KeapError::RateLimited { retry_after } => {
                    match replay::on_throttle(retry_after, throttled_for, throttles, |wait| {
                        has_time_for(deadline, wait)
                    }) {
                        Throttle::Wait(wait) => {
                            info!(connection = %id, wait_ms = wait.as_millis() as u64, "Keap throttled; waiting");
                            throttles += 1;
                            throttled_for += wait;
                            self.keap.rest.usage().waited(wait);
                            tokio::time::sleep(wait).await;
                        }
                        Throttle::GiveUp { retry_after_secs } => {
                            return Err(ProxyError::RateLimited(replay::rate_limited_message(
                                id,
                                retry_after_secs,
                            )));
                        }
                    }
                }
                other => {
                    let lost = Lost::from_error(&other);
                    lost_attempts += 1;
                    let pause = replay::backoff(lost_attempts + 1);
                    if replay::may_resend(&call.method, request.retry, lost)
                        && lost_attempts < replay::MAX_ATTEMPTS
                        && has_time_for(deadline, pause)
                    {
                        warn!(connection = %id, method = %call.method, path = %call.path, error = %other, "Keap request failed; sending it again");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    return Err(ProxyError::Unavailable(replay::unavailable_message(
                        id,
                        &call.method,
                        &call.path,
                        request.retry,
                        lost,
                        lost_attempts,
                    )));
                }
            }
        }
    }

    /// One request, cut off a margin before the deadline. Not started at all (and reported as
    /// not sent) when the margin is already reached.
    async fn send_once(
        &self,
        credential: &AccessCredential,
        call: &KeapCall,
        deadline: Deadline,
    ) -> Result<KeapAnswer, KeapError> {
        let Some(stop_at) = deadline.instant().checked_sub(DEADLINE_MARGIN) else {
            return Err(KeapError::NotSent);
        };
        if Instant::now() >= stop_at {
            return Err(KeapError::NotSent);
        }
        let sending = self
            .keap
            .rest
            .exchange(credential, call, MAX_RESPONSE_BYTES);
        tokio::time::timeout_at(stop_at, sending)
            .await
            .unwrap_or(Err(KeapError::NoAnswer { timed_out: true }))
    }
}

/// `KEAPALIVE_PROXY_CONNECTIONS` (`served`; `None`: every connection) as keap-proxy and
/// access-token apply it: IAM decides who may invoke the function, this which connections it
/// serves. The message names the variable.
pub(crate) fn check_served(
    served: Option<&[ConnectionId]>,
    id: &ConnectionId,
    function: &str,
) -> Result<(), String> {
    match served {
        Some(served) if !served.contains(id) => Err(format!(
            "connection {id} is not served by this deployment's {function} \
             ({PROXY_CONNECTIONS_VARIABLE} lists the connections it serves); use another \
             connection or ask the operator to add it"
        )),
        _ => Ok(()),
    }
}

fn has_time_for(deadline: Deadline, wait: Duration) -> bool {
    deadline.remaining() > wait + DEADLINE_MARGIN * 2
}

/// The session's outcomes as the proxy's (the session never refuses a request as such).
fn from_session(error: UpsertError) -> ProxyError {
    match error {
        UpsertError::Validation(m) => ProxyError::Validation(m),
        UpsertError::NotAuthorized(m) => ProxyError::NotAuthorized(m),
        UpsertError::RateLimited(m) => ProxyError::RateLimited(m),
        UpsertError::KeapRejected(m) | UpsertError::Unavailable(m) => ProxyError::Unavailable(m),
    }
}
