//! access-token: a short-lived Keap access token for a service that calls Keap with its own SDK
//! or HTTP client; keapalive stays the only one that refreshes the grant.
//!
//! Clients and the cached credential are built once per container; the logic lives in
//! `keapalive::access_token` (docs/access-token.md).

use lambda_runtime::service_fn;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let service = keapalive::wiring::access_token().await;
    lambda_runtime::run(service_fn(|event| service.handle_event(event))).await
}
