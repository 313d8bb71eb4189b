//! operator: the operator commands (`start_authorization`, `register_service_account_key`,
//! `remove_connection`) by direct invocation only — no public route reaches it, and IAM's
//! `lambda:InvokeFunction` on it is what makes someone an operator. The logic lives in
//! `keapalive::authorization`, shared with oauth-callback, which finishes what this starts.

use keapalive::authorization;
use keapalive::config::{Config, Requirements};
use keapalive::telemetry;
use keapalive::wiring;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init_logging();
    // start_authorization builds the authorize link, which names the callback's redirect URI.
    let config =
        Config::from_env(Requirements { redirect_uri: true }).unwrap_or_else(|e| exit_at_init(&e));
    let clients = wiring::init(config)
        .await
        .unwrap_or_else(|e| exit_at_init(&e));

    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        authorization::handle_operator(&clients, event.payload)
    }))
    .await
}

/// One line naming the problem (the variable, usually), then exit: Lambda reports the failed
/// init and the line is in the function's log.
fn exit_at_init(error: &dyn std::fmt::Display) -> ! {
    eprintln!("{error}");
    std::process::exit(1)
}
