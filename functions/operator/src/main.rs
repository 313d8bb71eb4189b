//! operator: the operator commands (`start_authorization`, `register_service_account_key`,
//! `remove_connection`) by direct invocation only — no public route reaches it, and IAM's
//! `lambda:InvokeFunction` on it is what makes someone an operator. The logic lives in
//! `keapalive::authorization`, shared with oauth-callback, which finishes what this starts.

use lambda_runtime::service_fn;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let authorization = keapalive::wiring::operator().await;
    lambda_runtime::run(service_fn(|event| authorization.handle_operator(event))).await
}
