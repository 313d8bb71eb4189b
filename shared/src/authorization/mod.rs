//! The logic of two functions (docs/design.md, "OAuth authorization" and "Containment"):
//!
//! - oauth-callback, behind the public route, answers only an API Gateway HTTP API (payload
//!   2.0) request, `GET /oauth/callback`: Keap's redirect, answered with an HTML page
//!   ([`callback`], [`pages`]) — [`handle_public`]. It refuses every operator command: its role
//!   can read no token attribute and no key secret, and its code has no path to one.
//! - operator, never public (only `lambda:InvokeFunction` reaches it), answers the operator
//!   commands: `start_authorization` ([`start`]), `register_service_account_key` and
//!   `remove_connection` ([`service_account_key`]), with JSON or a Lambda error whose
//!   `errorType` is one of [`CommandError`]'s kinds — [`handle_operator`].
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

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use lambda_runtime::Diagnostic;
use serde_json::Value;
use tracing::warn;

pub use callback::{CALLBACK_PATH, handle_callback};
use commands::Command;
pub use commands::StartAuthorization;
pub use error::CommandError;
pub use query::MAX_QUERY_BYTES;
use service_account_key::{register_service_account_key, remove_connection};
pub use start::{AuthorizationStarted, start_authorization};

use crate::error_type::ErrorType;
use crate::wiring::Clients;

/// One invocation of oauth-callback (the public function): only the callback route's events.
/// Anything else — an operator command included — is refused without touching AWS or Keap.
pub async fn handle_public(clients: &Clients, event: Value) -> Result<Value, Diagnostic> {
    if !is_http_event(&event) {
        return Err(CommandError::Validation(format!(
            "oauth-callback answers only GET {CALLBACK_PATH}; operator commands go to the \
             operator function (keapalive-<stage>-operator, stack output OperatorFunctionName)"
        ))
        .into());
    }
    let response = match serde_json::from_value::<ApiGatewayV2httpRequest>(event) {
        Ok(request) => handle_callback(clients, &request).await,
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
pub async fn handle_operator(clients: &Clients, event: Value) -> Result<Value, Diagnostic> {
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
    // Boxed: the commands' futures nest deeply enough to overflow the compiler's layout depth
    // in the binary's `main`; an operator command is rare, the allocation does not matter.
    Ok(Box::pin(run(clients, command)).await?)
}

async fn run(clients: &Clients, command: Command) -> Result<Value, CommandError> {
    let answer = match command {
        Command::StartAuthorization(request) => {
            serde_json::to_value(start_authorization(clients, &request).await?)
        }
        Command::RegisterServiceAccountKey(request) => {
            serde_json::to_value(register_service_account_key(clients, &request).await?)
        }
        Command::RemoveConnection(request) => {
            serde_json::to_value(remove_connection(clients, &request).await?)
        }
    };
    answer.map_err(|e| CommandError::Configuration(format!("could not encode the answer: {e}")))
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
