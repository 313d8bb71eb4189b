//! The logic of two functions (docs/design.md, "OAuth authorization" and "Containment"):
//!
//! - oauth-callback, behind the public route, answers only an API Gateway HTTP API (payload
//!   2.0) request, `GET /oauth/callback`: Keap's redirect, answered with an HTML page
//!   ([`callback`], [`pages`]) — [`answer_public`]. It refuses every operator command: its role
//!   can read no token attribute and no key secret, and its code has no path to one.
//! - operator, never public (only `lambda:InvokeFunction` reaches it), answers the operator
//!   commands: `start_authorization` ([`start`]), `register_service_account_key` and
//!   `remove_connection` ([`service_account_key`]), with JSON or a Lambda error whose
//!   `errorType` is one of [`CommandError`]'s kinds — [`answer_operator`].
//!
//! Only an operator can start an authorization; the public route only finishes one, with a
//! random single-use state that expires after ten minutes.

mod callback;
mod commands;
mod error;
mod nonce;
mod pages;
mod query;
mod service_account_key;
mod start;

use std::sync::Arc;

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use tracing::warn;

pub use callback::{CALLBACK_PATH, handle_callback, handle_callback_until};
use commands::Command;
pub use commands::StartAuthorization;
pub use error::CommandError;
pub use query::MAX_QUERY_BYTES;
use service_account_key::{register_service_account_key, remove_connection};
use start::start_authorization_until;
pub use start::{AuthorizationStarted, start_authorization};

use crate::config::Config;
use crate::deadline::{Deadline, DeadlinePolicy};
use crate::error_type::ErrorType;
use crate::hooks::{HookSubscriptions, HooksCommandError};
use crate::keap::rate_limit::RateLimiter;
use crate::keap::{OAuthClient, RestClient};
use crate::secrets::SecretsSource;
use crate::telemetry::MetricSink;
use crate::token_store::DynamoDbTokenStore;

/// What oauth-callback and operator use, built once per container.
pub struct AuthorizationService {
    pub(crate) config: Arc<Config>,
    pub(crate) store: DynamoDbTokenStore,
    pub(crate) secrets: Arc<SecretsSource>,
    pub(crate) oauth: OAuthClient,
    pub(crate) rest: RestClient,
    /// Shared with every other Keap request of the container.
    pub(crate) keap_limiter: Arc<RateLimiter>,
    /// The callback's deadline, from Lambda's (or the configured timeout under an emulator).
    deadlines: DeadlinePolicy,
    /// operator's hook commands (`KEAPALIVE_HOOKS_BASE_URL`, `KEAPALIVE_PROXY_FUNCTION`).
    hooks: Option<HookSubscriptions>,
}

impl AuthorizationService {
    pub fn new(
        config: Arc<Config>,
        store: DynamoDbTokenStore,
        secrets: Arc<SecretsSource>,
        oauth: OAuthClient,
        rest: RestClient,
        keap_limiter: Arc<RateLimiter>,
    ) -> Self {
        Self {
            deadlines: DeadlinePolicy::from_config(&config),
            config,
            store,
            secrets,
            oauth,
            rest,
            keap_limiter,
            hooks: None,
        }
    }

    /// The same service with the operator's hook commands.
    pub fn with_hooks(mut self, hooks: HookSubscriptions) -> Self {
        self.hooks = Some(hooks);
        self
    }

    fn hooks(&self) -> Result<&HookSubscriptions, CommandError> {
        self.hooks.as_ref().ok_or_else(|| {
            CommandError::Configuration(
                "the hook commands need KEAPALIVE_HOOKS_BASE_URL and KEAPALIVE_PROXY_FUNCTION                  (the stack sets both on the operator function)"
                    .to_owned(),
            )
        })
    }

    // Both boxed: the callback's and the commands' futures nest deeply enough to overflow
    // rustc's layout depth limit in the binary's `main`; one allocation per invocation.

    /// One invocation of oauth-callback: see [`answer_public`].
    pub async fn handle_public(&self, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
        let deadline = self.deadlines.deadline(event.context.deadline);
        let answer = Box::pin(answer_public_until(self, event.payload, deadline)).await;
        self.flush_keap_usage("oauth-callback");
        answer
    }

    /// One invocation of operator: see [`answer_operator`].
    pub async fn handle_operator(&self, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
        let deadline = self.deadlines.deadline(event.context.deadline);
        let answer = Box::pin(answer_operator_until(self, event.payload, deadline)).await;
        self.flush_keap_usage("operator");
        answer
    }

    /// Emits the invocation's Keap requests (code exchanges, key probes) for `function`; the
    /// token and REST clients share one count.
    fn flush_keap_usage(&self, function: &'static str) {
        self.oauth
            .usage()
            .flush(&MetricSink::stdout(), &self.config.stage, function);
    }
}

/// One invocation of oauth-callback (the public function): only the callback route's events.
/// Anything else — an operator command included — is refused without touching AWS or Keap.
pub async fn answer_public(
    service: &AuthorizationService,
    event: Value,
) -> Result<Value, Diagnostic> {
    let deadline = Deadline::after(service.config.function_timeout);
    answer_public_until(service, event, deadline).await
}

/// [`answer_public`] working to `deadline` (the invocation's).
pub async fn answer_public_until(
    service: &AuthorizationService,
    event: Value,
    deadline: Deadline,
) -> Result<Value, Diagnostic> {
    if !is_http_event(&event) {
        return Err(CommandError::Validation(format!(
            "oauth-callback answers only GET {CALLBACK_PATH}; operator commands go to the \
             operator function (keapalive-<stage>-operator, stack output OperatorFunctionName)"
        ))
        .into());
    }
    let response = match serde_json::from_value::<ApiGatewayV2httpRequest>(event) {
        Ok(request) => handle_callback_until(service, &request, deadline).await,
        Err(_) => {
            // serde's message may quote the event (and its query): not logged.
            warn!(
                reason = "malformed_event",
                status = 400,
                "authorization refused"
            );
            pages::bad_request().into_response()
        }
    };
    to_json(&response)
}

/// One invocation of the operator function: only operator commands. An API Gateway event is
/// refused (the operator function has no public route; one that arrives is a wiring mistake).
pub async fn answer_operator(
    service: &AuthorizationService,
    event: Value,
) -> Result<Value, Diagnostic> {
    let deadline = Deadline::after(service.config.function_timeout);
    answer_operator_until(service, event, deadline).await
}

/// [`answer_operator`] working to `deadline` (the invocation's).
pub async fn answer_operator_until(
    service: &AuthorizationService,
    event: Value,
    deadline: Deadline,
) -> Result<Value, Diagnostic> {
    if is_http_event(&event) {
        return Err(CommandError::Validation(
            "the operator function takes operator commands only; GET /oauth/callback goes to \
             oauth-callback"
                .to_owned(),
        )
        .into());
    }
    // lambda_runtime logs the returned error (errorType and message) itself.
    let command = Command::parse(&event)?;
    Ok(run(service, command, deadline).await?)
}

async fn run(
    service: &AuthorizationService,
    command: Command,
    deadline: Deadline,
) -> Result<Value, CommandError> {
    let answer = match command {
        Command::StartAuthorization(request) => {
            serde_json::to_value(start_authorization_until(service, &request, deadline).await?)
        }
        Command::RegisterServiceAccountKey(request) => {
            serde_json::to_value(register_service_account_key(service, &request).await?)
        }
        Command::RemoveConnection(request) => {
            serde_json::to_value(remove_connection(service, &request, deadline).await?)
        }
        Command::SubscribeHooks(request) => serde_json::to_value(
            service
                .hooks()?
                .subscribe(&request.connection_id, &request.event_keys, deadline)
                .await
                .map_err(from_hooks)?,
        ),
        Command::ListHooks(id) => {
            serde_json::to_value(service.hooks()?.list(&id).await.map_err(from_hooks)?)
        }
        Command::UnsubscribeHooks(request) => serde_json::to_value(
            service
                .hooks()?
                .unsubscribe(&request.connection_id, &request.event_keys)
                .await
                .map_err(from_hooks)?,
        ),
    };
    answer.map_err(|e| CommandError::Configuration(format!("could not encode the answer: {e}")))
}

fn from_hooks(error: HooksCommandError) -> CommandError {
    match error {
        HooksCommandError::Validation(m) => CommandError::Validation(m),
        HooksCommandError::Unavailable(m) => CommandError::Unavailable(m),
        HooksCommandError::KeapRejected(m) => CommandError::KeapRejected(m),
        HooksCommandError::Configuration(m) => CommandError::Configuration(m),
    }
}

/// API Gateway's payload 2.0 always has `requestContext.http`; operator commands never do.
fn is_http_event(event: &Value) -> bool {
    event.pointer("/requestContext/http").is_some()
}

fn to_json(
    response: &aws_lambda_events::apigw::ApiGatewayV2httpResponse,
) -> Result<Value, Diagnostic> {
    serde_json::to_value(response)
        .map_err(|e| ErrorType::Internal.diagnostic(format!("could not encode the page: {e}")))
}
