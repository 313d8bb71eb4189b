//! contact-upsert: creates or updates a Keap contact, from a direct invocation or an SQS batch.
//!
//! Clients, caches and the cached credential are built once per container, outside the
//! handler; a warm upsert costs one Keap request, plus one DynamoDB read per recheck interval.
//! The logic lives in `keapalive::contact`.

use lambda_runtime::service_fn;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let service = keapalive::wiring::contact_upsert().await;
    lambda_runtime::run(service_fn(|event| service.handle_event(event))).await
}
