//! oauth-callback: finishes Keap authorizations at `GET /oauth/callback` (API Gateway HTTP
//! API), the stack's only public route. It takes no operator command (those go to the
//! `operator` function), and its role can read no token attribute and no key secret. The logic
//! lives in `keapalive::authorization`.

use keapalive::authorization;
use keapalive::config::{Config, Requirements};
use keapalive::telemetry;
use keapalive::wiring;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init_logging();
    let config =
        Config::from_env(Requirements { redirect_uri: true }).unwrap_or_else(|e| exit_at_init(&e));
    let clients = wiring::init(config)
        .await
        .unwrap_or_else(|e| exit_at_init(&e));

    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        authorization::handle_public(&clients, event.payload)
    }))
    .await
}

/// One line naming the problem (the variable, usually), then exit: Lambda reports the failed
/// init and the line is in the function's log.
fn exit_at_init(error: &dyn std::fmt::Display) -> ! {
    eprintln!("{error}");
    std::process::exit(1)
}
