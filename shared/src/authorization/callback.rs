//! `GET /oauth/callback`: Keap's redirect after the operator's consent (docs/design.md, "OAuth
//! authorization"). In this order: consume the state (single use); read the connection
//! (consistent, projected: what the pair write is conditioned on); check the time (the Keap
//! timeout plus the commit budget must be left, after every wait); exchange the code with the
//! exact registered redirect URI; store the pair (retried until the deadline minus 0.5 s); only
//! then delete the spent state. Keap has issued a pair once the exchange answers: nothing slow
//! may stand between that and the store.
//!
//! Every outcome is a page (never a Lambda error: a browser mistake is not a function failure)
//! and one log line with a `reason`. No page or log line ever carries the code, a token, the
//! state or anything else from the query string.

use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::http::Method;
use secrecy::SecretString;
use tracing::{error, info, warn};

use super::AuthorizationService;
use super::nonce;
use super::pages::{self, Page};
use super::query::{self, QueryError};
use super::start::STATE_TTL_SECS;
use crate::clock::{now_epoch_millis, now_epoch_secs};
use crate::connection_id::ConnectionId;
use crate::deadline::Deadline;
use crate::keap::TokenError;
use crate::refresh::COMMIT_BUDGET;
use crate::token_store::{
    AuthorizationBasis, AuthorizeOutcome, PairWrite, PendingAuthorization, StateOutcome,
    StoreError, new_write_id,
};

/// The route the SAM template gives the callback.
pub const CALLBACK_PATH: &str = "/oauth/callback";

/// Writing a pair Keap just issued is retried like the refresh commit, until the deadline minus
/// this: losing it means the operator has to start over (and, on a re-authorization, Keap has
/// already retired the previous grant).
const DEADLINE_SAFETY: Duration = Duration::from_millis(500);
const STORE_BACKOFF_START: Duration = Duration::from_millis(50);
const STORE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One callback with the function's configured timeout as its deadline (tests, tools; the
/// function itself uses [`handle_callback_until`] with Lambda's deadline).
pub async fn handle_callback(
    service: &AuthorizationService,
    request: &ApiGatewayV2httpRequest,
) -> ApiGatewayV2httpResponse {
    let deadline = Deadline::after(service.config.function_timeout);
    handle_callback_until(service, request, deadline).await
}

pub async fn handle_callback_until(
    service: &AuthorizationService,
    request: &ApiGatewayV2httpRequest,
    deadline: Deadline,
) -> ApiGatewayV2httpResponse {
    let outcome = finish(service, request, deadline).await;
    let page = outcome.page();
    outcome.log(page.status);
    page.into_response()
}

/// Why a callback did not authorize anything; `reason()` is the log's reason code.
#[derive(Debug)]
enum Failure {
    NotFound,
    MethodNotAllowed,
    OversizedQuery,
    MalformedQuery,
    AccessDenied,
    KeapError {
        code: Option<String>,
    },
    MissingState,
    UnknownState,
    ExpiredState,
    MissingCode,
    CodeRejected(TokenError),
    KeapUnavailable(TokenError),
    ClientRejected(TokenError),
    Configuration(String),
    StoreUnavailable(StoreError),
    AccountMismatch {
        existing_app: String,
        offered_app: String,
    },
    /// Too little invocation time left to exchange the code and store the pair.
    NoTimeLeft,
    /// A later authorization of the connection landed first; it stays.
    Superseded,
    /// The connection was removed at or after this link was started.
    Removed,
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::OversizedQuery => "oversized_query",
            Self::MalformedQuery => "malformed_query",
            Self::AccessDenied => "access_denied",
            Self::KeapError { .. } => "keap_error",
            Self::MissingState => "missing_state",
            Self::UnknownState => "unknown_state",
            Self::ExpiredState => "expired_state",
            Self::MissingCode => "missing_code",
            Self::CodeRejected(_) => "code_rejected",
            Self::KeapUnavailable(_) => "keap_unavailable",
            Self::ClientRejected(_) => "client_rejected",
            Self::Configuration(_) => "configuration",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::AccountMismatch { .. } => "account_mismatch",
            Self::NoTimeLeft => "no_time_left",
            Self::Superseded => "superseded",
            Self::Removed => "removed",
        }
    }

    /// The operator must act (configuration) or a pair may be lost: ERROR; the rest is a
    /// browser or Keap mistake: WARN.
    fn needs_operator(&self) -> bool {
        matches!(
            self,
            Self::ClientRejected(_)
                | Self::Configuration(_)
                | Self::StoreUnavailable(_)
                | Self::NoTimeLeft
        )
    }

    /// Safe diagnosis for the log: error types' `Display` never include a token or secret.
    fn detail(&self) -> Option<String> {
        match self {
            Self::KeapError { code } => code.clone(),
            Self::CodeRejected(e) | Self::KeapUnavailable(e) | Self::ClientRejected(e) => {
                Some(e.to_string())
            }
            Self::Configuration(detail) => Some(detail.clone()),
            Self::StoreUnavailable(e) => Some(e.to_string()),
            _ => None,
        }
    }

    fn page(&self, connection_id: Option<&ConnectionId>) -> Page {
        match self {
            Self::NotFound => pages::not_found(),
            Self::MethodNotAllowed => pages::method_not_allowed(),
            Self::OversizedQuery | Self::MalformedQuery => pages::bad_request(),
            Self::AccessDenied => pages::access_denied(connection_id),
            Self::KeapError { .. } => pages::keap_error(connection_id),
            Self::MissingState => pages::missing_state(),
            Self::UnknownState => pages::unknown_state(),
            Self::ExpiredState => pages::expired_state(),
            Self::MissingCode => pages::missing_code(),
            Self::CodeRejected(_) => pages::code_rejected(connection_id),
            Self::KeapUnavailable(_) => pages::keap_unavailable(connection_id),
            Self::ClientRejected(_) | Self::Configuration(_) => pages::configuration(connection_id),
            Self::StoreUnavailable(_) => pages::temporarily_unavailable(connection_id),
            Self::AccountMismatch {
                existing_app,
                offered_app,
            } => pages::account_mismatch(connection_id, existing_app, offered_app),
            Self::NoTimeLeft => pages::no_time_left(connection_id),
            Self::Superseded => pages::superseded(connection_id),
            Self::Removed => pages::removed(connection_id),
        }
    }
}

enum Outcome {
    Authorized {
        connection_id: ConnectionId,
        keap_app: Option<String>,
        generation: u64,
    },
    Failed {
        failure: Failure,
        /// Known once a state was consumed (it comes from our table, not from the query).
        connection_id: Option<ConnectionId>,
    },
}

impl Outcome {
    fn page(&self) -> Page {
        match self {
            Self::Authorized {
                connection_id,
                keap_app,
                ..
            } => pages::authorized(connection_id, keap_app.as_deref()),
            Self::Failed {
                failure,
                connection_id,
            } => failure.page(connection_id.as_ref()),
        }
    }

    fn log(&self, status: u16) {
        match self {
            Self::Authorized {
                connection_id,
                keap_app,
                generation,
            } => info!(
                reason = "authorized",
                status,
                connection_id = %connection_id,
                keap_app = keap_app.as_deref(),
                generation,
                "authorization completed"
            ),
            Self::Failed {
                failure,
                connection_id,
            } => {
                let reason = failure.reason();
                let connection_id = connection_id.as_ref().map(ConnectionId::as_str);
                let detail = failure.detail();
                let (existing_app, offered_app) = match failure {
                    Failure::AccountMismatch {
                        existing_app,
                        offered_app,
                    } => (Some(existing_app.as_str()), Some(offered_app.as_str())),
                    _ => (None, None),
                };
                if failure.needs_operator() {
                    error!(
                        reason,
                        status, connection_id, detail, "authorization failed"
                    );
                } else {
                    warn!(
                        reason,
                        status,
                        connection_id,
                        detail,
                        existing_app,
                        offered_app,
                        "authorization refused"
                    );
                }
            }
        }
    }
}

fn refused(failure: Failure) -> Outcome {
    Outcome::Failed {
        failure,
        connection_id: None,
    }
}

async fn finish(
    service: &AuthorizationService,
    request: &ApiGatewayV2httpRequest,
    deadline: Deadline,
) -> Outcome {
    let http = &request.request_context.http;
    let path = request
        .raw_path
        .as_deref()
        .or(http.path.as_deref())
        .unwrap_or_default();
    let configured_path = service.config.redirect_uri.as_ref().map(|uri| uri.path());
    if path != CALLBACK_PATH && Some(path) != configured_path {
        return refused(Failure::NotFound);
    }
    if http.method != Method::GET {
        return refused(Failure::MethodNotAllowed);
    }
    let query = match query::parse(request.raw_query_string.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(QueryError::Oversized) => return refused(Failure::OversizedQuery),
        Err(QueryError::Malformed) => return refused(Failure::MalformedQuery),
    };

    if let Some(keap_error) = query.error {
        // The flow is over either way: the state is spent so its link cannot be replayed.
        let connection_id = match query.state.as_deref() {
            Some(state) => consume_quietly(service, state, deadline).await,
            None => None,
        };
        let failure = if keap_error == "access_denied" {
            Failure::AccessDenied
        } else {
            Failure::KeapError {
                code: oauth_error_code(&keap_error),
            }
        };
        return Outcome::Failed {
            failure,
            connection_id,
        };
    }
    let Some(state) = query.state else {
        return refused(Failure::MissingState);
    };
    let Some(code) = query.code else {
        return refused(Failure::MissingCode);
    };
    if !nonce::is_well_formed(&state) {
        return refused(Failure::UnknownState);
    }
    let pending = match service.store.consume_state(&state, now_epoch_secs()).await {
        Ok(StateOutcome::Consumed(pending)) => pending,
        Ok(StateOutcome::Expired) => return refused(Failure::ExpiredState),
        Ok(StateOutcome::Unknown) => return refused(Failure::UnknownState),
        Err(e) => return refused(store_failure(e)),
    };

    let outcome = authorize(service, &pending, code, deadline).await;
    // Only now, with the pair stored (or the attempt over): the spent state is unusable
    // anyway, so its clean-up may wait.
    retire_within(service, &state, deadline).await;
    outcome
}

/// Everything after the consume: read, time check, exchange, store.
async fn authorize(
    service: &AuthorizationService,
    pending: &PendingAuthorization,
    code: SecretString,
    deadline: Deadline,
) -> Outcome {
    let connection_id = pending.connection_id.clone();
    let failed = |failure| Outcome::Failed {
        failure,
        connection_id: Some(connection_id.clone()),
    };
    let redirect_uri = match service.config.redirect_uri() {
        Ok(uri) => uri,
        Err(e) => return failed(Failure::Configuration(e.to_string())),
    };
    // What the pair write is conditioned on: read before the exchange, so a retry of this
    // write can never land over an authorization that came after it.
    let basis = match service.store.read_authorization(&connection_id).await {
        Ok(view) => AuthorizationBasis::of(view.as_ref()),
        Err(e) => return failed(store_failure(e)),
    };
    let secret_id = service.config.client_secret_id.as_str();
    let credentials = match service.secrets.client_credentials(secret_id).await {
        Ok(credentials) => credentials,
        Err(e) => return failed(Failure::Configuration(e.to_string())),
    };
    service.keap_limiter.acquire().await;
    // After every wait, immediately before the code is presented: once Keap answers there must
    // be time for the answer (the Keap timeout) and for the store (the commit budget).
    if deadline.remaining() < service.config.keap_timeout + COMMIT_BUDGET {
        return failed(Failure::NoTimeLeft);
    }
    let exchanged_at_ms = now_epoch_millis();
    let issued = match service
        .oauth
        .exchange_code(&credentials, &code, redirect_uri)
        .await
    {
        Ok(issued) => issued,
        Err(e @ (TokenError::CodeRejected { .. } | TokenError::Refused { .. })) => {
            return failed(Failure::CodeRejected(e));
        }
        Err(e @ TokenError::ClientRejected { .. }) => {
            // The secret may have been rotated since it was cached: read it afresh next time.
            service.secrets.invalidate(secret_id);
            return failed(Failure::ClientRejected(e));
        }
        Err(e) => return failed(Failure::KeapUnavailable(e)),
    };

    let write_id = new_write_id();
    let write = PairWrite {
        issued: &issued,
        replace_account: pending.replace_account,
        basis: &basis,
        write_id: &write_id,
        exchanged_at_ms,
        // A state lives STATE_TTL_SECS from its start.
        link_started_at: Some(pending.expires_at - STATE_TTL_SECS),
        now: now_epoch_secs(),
    };
    match store_pair(service, &connection_id, write, deadline).await {
        Ok(AuthorizeOutcome::Authorized { generation }) => Outcome::Authorized {
            keap_app: issued.keap_app.clone(),
            connection_id,
            generation,
        },
        Ok(AuthorizeOutcome::AccountMismatch { existing_app }) => {
            failed(Failure::AccountMismatch {
                existing_app,
                offered_app: issued
                    .keap_app
                    .clone()
                    .unwrap_or_else(|| "<unknown>".to_owned()),
            })
        }
        Ok(AuthorizeOutcome::Superseded) => failed(Failure::Superseded),
        Ok(AuthorizeOutcome::Removed) => failed(Failure::Removed),
        Err(e) => failed(store_failure(e)),
    }
}

/// Stores the pair, retrying a retryable failure with backoff until the deadline minus
/// [`DEADLINE_SAFETY`] (the refresh commit's rule). One write id for every attempt: a retry
/// whose earlier attempt landed recognises it.
async fn store_pair(
    service: &AuthorizationService,
    connection_id: &ConnectionId,
    mut write: PairWrite<'_>,
    deadline: Deadline,
) -> Result<AuthorizeOutcome, StoreError> {
    let mut backoff = STORE_BACKOFF_START;
    let mut attempt = 1u32;
    loop {
        write.now = now_epoch_secs();
        match service
            .store
            .store_authorized_pair(connection_id, &write)
            .await
        {
            Err(e) if e.is_retryable() && deadline.remaining() > backoff + DEADLINE_SAFETY => {
                warn!(connection_id = %connection_id, attempt, error = %e, "storing the pair failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(STORE_BACKOFF_MAX);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Deletes a spent state, given up at the deadline minus [`DEADLINE_SAFETY`] so the page still
/// goes out; a state left behind is unusable and expires by TTL.
async fn retire_within(service: &AuthorizationService, state: &str, deadline: Deadline) {
    let budget = deadline.remaining().saturating_sub(DEADLINE_SAFETY);
    if tokio::time::timeout(budget, service.store.retire_state(state))
        .await
        .is_err()
    {
        warn!("a consumed authorization state was left for TTL to remove (no time left)");
    }
}

/// Consumes a state on an error redirect, only to retire it; its outcome changes no page.
async fn consume_quietly(
    service: &AuthorizationService,
    state: &str,
    deadline: Deadline,
) -> Option<ConnectionId> {
    if !nonce::is_well_formed(state) {
        return None;
    }
    match service.store.consume_state(state, now_epoch_secs()).await {
        Ok(StateOutcome::Consumed(pending)) => {
            retire_within(service, state, deadline).await;
            Some(pending.connection_id)
        }
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, "could not retire the state of an error redirect");
            None
        }
    }
}

fn store_failure(error: StoreError) -> Failure {
    if error.is_retryable() {
        Failure::StoreUnavailable(error)
    } else {
        Failure::Configuration(error.to_string())
    }
}

/// OAuth error codes are a short lowercase vocabulary; anything else is not worth logging.
fn oauth_error_code(raw: &str) -> Option<String> {
    let plausible = !raw.is_empty()
        && raw.len() <= 40
        && raw.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    plausible.then(|| raw.to_owned())
}
