//! oauth-callback: finishes Keap authorizations at `GET /oauth/callback` (API Gateway HTTP
//! API), the stack's only public route. It takes no operator command (those go to the
//! `operator` function), and its role can read no token attribute and no key secret. The logic
//! lives in `keapalive::authorization`.

use lambda_runtime::service_fn;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let authorization = keapalive::wiring::oauth_callback().await;
    lambda_runtime::run(service_fn(|event| authorization.handle_public(event))).await
}
