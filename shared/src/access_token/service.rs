//! access-token's handler: a live token valid for at least `min_valid_secs`, from the same
//! on-demand path as every other caller; a reported rejection is probed before anything rotates.
//!
//! - No `rejected_generation`: [`OnDemandRefresher::grant_valid_for`] (a stored token expiring
//!   sooner is refreshed first through the lease protocol; Keap's newest token, if itself
//!   shorter, is returned as it is, with its real `expires_at`).
//! - `rejected_generation` older than the current generation: the current token, no Keap call.
//! - `rejected_generation` = the current generation: `GET /v1/account/profile` with the token.
//!   A 200 means the caller's 401 was not about the token: the same token comes back. A 401
//!   goes through contact-upsert's 401 rules (`KeapSession::renew_after_401`: one rotation per
//!   10 minutes per connection across containers, else `Unavailable`).
//! - Key connections are refused: a key never leaves keapalive (keap-proxy calls Keap with it).

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::LambdaEvent;
use secrecy::ExposeSecret;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{info, warn};

use super::error::AccessTokenError;
use super::request::AccessTokenRequest;
use crate::clock::now_epoch_secs;
use crate::config::Config;
use crate::connection_id::ConnectionId;
use crate::contact::{KeapAccess, KeapSession, UpsertError, grant_error};
use crate::deadline::{Deadline, DeadlinePolicy};
use crate::keap::{AccessCredential, KeapError, RestClient};
use crate::proxy::check_served;
use crate::refresh::{Grant, Kinds, OnDemandRefresher};
use crate::secrets::SecretsSource;

/// The `Function` dimension of access-token's Keap usage metrics (its binary name).
const FUNCTION_NAME: &str = "access-token";

#[derive(Debug, Clone)]
pub struct AccessTokenSettings {
    /// `KEAPALIVE_PROXY_CONNECTIONS`; `None`: every connection.
    pub connections: Option<Vec<ConnectionId>>,
    /// `KEAP_API_BASE_URL` without a trailing slash: where the caller sends its requests.
    pub api_base_url: String,
    pub function_timeout: Duration,
    /// Metric dimension.
    pub stage: String,
}

impl AccessTokenSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            connections: config.proxy_connections.clone(),
            api_base_url: config
                .keap
                .api_base_url
                .as_str()
                .trim_end_matches('/')
                .to_owned(),
            function_timeout: config.function_timeout,
            stage: config.stage.clone(),
        }
    }
}

/// A token handed out. `Debug` never shows the token (`SecretString`).
#[derive(Debug, Clone)]
pub struct VendedToken {
    pub connection_id: ConnectionId,
    pub access_token: secrecy::SecretString,
    pub expires_at: i64,
    pub generation: u64,
}

/// What was done to answer: for the log line and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Cached,
    ReportedOlder,
    ProbePassed,
    Renewed,
}

/// Built once per container; shared by every invocation.
pub struct AccessTokenService {
    keap: KeapAccess,
    settings: AccessTokenSettings,
    deadlines: DeadlinePolicy,
}

impl AccessTokenService {
    pub fn new(
        rest: RestClient,
        grants: Arc<OnDemandRefresher>,
        secrets: Arc<SecretsSource>,
        settings: AccessTokenSettings,
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
    ) -> Result<Value, AccessTokenError> {
        let deadline = self.deadlines.deadline(event.context.deadline);
        // Boxed, as contact-upsert's: the handler's future is deeply nested.
        Box::pin(self.handle(event.payload.get().as_bytes(), deadline)).await
    }

    /// The raw payload in, `{"connection_id", "access_token", "expires_at", "api_base_url",
    /// "generation"}` out. One log line per request, never the token.
    pub async fn handle(
        &self,
        payload: &[u8],
        deadline: Deadline,
    ) -> Result<Value, AccessTokenError> {
        let request = AccessTokenRequest::parse(payload)?;
        check_served(
            self.settings.connections.as_deref(),
            &request.connection_id,
            "access-token",
        )
        .map_err(AccessTokenError::Validation)?;
        let started = Instant::now();
        let outcome = self.vend(&request, deadline).await;
        self.keap.flush_usage(FUNCTION_NAME);
        let duration_ms = started.elapsed().as_millis() as u64;
        let id = &request.connection_id;
        match &outcome {
            Ok((token, how)) => {
                info!(connection = %id, generation = token.generation, expires_in_secs = token.expires_at - now_epoch_secs(), min_valid_secs = request.min_valid_secs, reported = request.rejected_generation.is_some(), outcome = ?how, duration_ms, "access token handed out");
            }
            Err(error) => {
                warn!(connection = %id, error_type = %error.kind(), duration_ms, "access token not handed out");
            }
        }
        let (token, _) = outcome?;
        Ok(json!({
            "connection_id": token.connection_id.as_str(),
            "access_token": token.access_token.expose_secret(),
            "expires_at": token.expires_at,
            "api_base_url": self.settings.api_base_url,
            "generation": token.generation,
        }))
    }

    async fn vend(
        &self,
        request: &AccessTokenRequest,
        deadline: Deadline,
    ) -> Result<(VendedToken, Outcome), AccessTokenError> {
        let id = &request.connection_id;
        let min_valid = i64::try_from(request.min_valid_secs).unwrap_or(i64::MAX);
        let grants = &self.keap.grants;
        let mut grant = grants
            .grant_valid_for(id, deadline, None, min_valid, Kinds::OAuthOnly)
            .await
            .map_err(|e| from_upsert(grant_error(id, e)))?;
        refuse_keys(id, &grant)?;
        let Some(reported) = request.rejected_generation else {
            return vended(id, &grant, Outcome::Cached);
        };
        if reported > grant.generation {
            // This container's copy is older than the caller's: read the item again.
            grants.forget(id);
            grant = grants
                .grant_valid_for(id, deadline, None, min_valid, Kinds::OAuthOnly)
                .await
                .map_err(|e| from_upsert(grant_error(id, e)))?;
            refuse_keys(id, &grant)?;
        }
        if reported < grant.generation {
            return vended(id, &grant, Outcome::ReportedOlder);
        }
        // The caller says Keap refused the current token: ask Keap before rotating anything.
        match self.keap.rest.account_profile(&grant.credential).await {
            Ok(_) => vended(id, &grant, Outcome::ProbePassed),
            Err(KeapError::Unauthorized { fault }) => {
                let mut session = KeapSession::open(&self.keap, id, deadline)
                    .await
                    .map_err(from_upsert)?;
                if session.grant().generation != grant.generation {
                    // Rotated meanwhile (another container): the caller gets the new token.
                    let current = session.grant().clone();
                    refuse_keys(id, &current)?;
                    return vended(id, &current, Outcome::ReportedOlder);
                }
                session.renew_after_401(&fault).await.map_err(from_upsert)?;
                let renewed = session.grant().clone();
                refuse_keys(id, &renewed)?;
                vended(id, &renewed, Outcome::Renewed)
            }
            Err(KeapError::RateLimited { retry_after }) => {
                let secs = retry_after.map_or(1, |d| d.as_secs().max(1));
                Err(AccessTokenError::RateLimited(format!(
                    "Keap is throttling requests for connection {id}, so the reported token could \
                     not be checked; retry after the wait: retry_after_secs={secs}"
                )))
            }
            Err(other) => Err(AccessTokenError::Unavailable(format!(
                "the reported token of connection {id} could not be checked with Keap ({other}); \
                 nothing was rotated; retry later"
            ))),
        }
    }
}

fn refuse_keys(id: &ConnectionId, grant: &Grant) -> Result<(), AccessTokenError> {
    match grant.credential {
        AccessCredential::Bearer(_) => Ok(()),
        AccessCredential::ApiKey(_) => Err(AccessTokenError::Validation(format!(
            "connection {id} uses a Service Account Key, which never leaves keapalive; call Keap \
             with it through keap-proxy instead"
        ))),
    }
}

fn vended(
    id: &ConnectionId,
    grant: &Grant,
    how: Outcome,
) -> Result<(VendedToken, Outcome), AccessTokenError> {
    let AccessCredential::Bearer(token) = &grant.credential else {
        return Err(AccessTokenError::Validation(format!(
            "connection {id} has no OAuth access token to hand out"
        )));
    };
    Ok((
        VendedToken {
            connection_id: id.clone(),
            access_token: token.clone(),
            expires_at: grant.expires_at.unwrap_or_default(),
            generation: grant.generation,
        },
        how,
    ))
}

/// The session's outcomes as access-token's.
fn from_upsert(error: UpsertError) -> AccessTokenError {
    match error {
        UpsertError::Validation(m) => AccessTokenError::Validation(m),
        UpsertError::NotAuthorized(m) => AccessTokenError::NotAuthorized(m),
        UpsertError::RateLimited(m) => AccessTokenError::RateLimited(m),
        UpsertError::KeapRejected(m) | UpsertError::Unavailable(m) => {
            AccessTokenError::Unavailable(m)
        }
    }
}
