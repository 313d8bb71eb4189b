//! keap-hooks: Keap's REST Hook deliveries (`POST /keap/hooks/{token}`) as events on the
//! `keapalive-<stage>` EventBridge bus; the logic lives in `keapalive::hooks` (docs/events.md).

use lambda_runtime::service_fn;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let receiver = keapalive::wiring::keap_hooks().await;
    lambda_runtime::run(service_fn(|event| receiver.handle_event(event))).await
}
