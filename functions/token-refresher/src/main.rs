//! token-refresher: refreshes every due Keap connection on an EventBridge schedule, or one
//! connection on an operator's request. The protocol lives in `keapalive::refresh`.

use lambda_runtime::service_fn;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let refresher = keapalive::wiring::token_refresher().await;
    lambda_runtime::run(service_fn(|event| refresher.handle(event))).await
}
