//! keap-proxy: any Keap REST request (`GET /v1/contacts`, `POST /v1/notes`, ...) sent with the
//! connection's credential, which keapalive keeps alive; Keap's answer comes back as data.
//!
//! Clients and the cached credential are built once per container; the logic lives in
//! `keapalive::proxy` (docs/keap-proxy.md).

use lambda_runtime::service_fn;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let service = keapalive::wiring::keap_proxy().await;
    lambda_runtime::run(service_fn(|event| service.handle_event(event))).await
}
