//! contact-upsert: creates or updates a Keap contact, from a direct invocation or an SQS batch.
//!
//! Clients, caches and the cached credential are built once per container, outside the
//! handler; a warm upsert costs one Keap request, plus one DynamoDB read per recheck interval.

use keapalive::config::Requirements;
use keapalive::contact::{UpsertError, UpsertService};
use keapalive::lambda_deadline::DeadlinePolicy;
use keapalive::wiring;
use keapalive::{Config, telemetry};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use serde_json::value::RawValue;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_logging();
    let config = Config::from_env(Requirements::default())?;
    let deadlines = DeadlinePolicy::from_config(&config);
    let clients = wiring::init(config).await?;
    let service = UpsertService::from_clients(&clients);
    let (service, deadlines) = (&service, &deadlines);

    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let deadline = deadlines.deadline(event.context.deadline);
            let answer: Result<Value, UpsertError> = service
                .handle(event.payload.get().as_bytes(), deadline)
                .await;
            answer
        },
    ))
    .await
}
