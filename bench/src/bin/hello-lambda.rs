//! The baseline for cold-start and round-trip ratios: the smallest useful `lambda_runtime`
//! function (cargo-lambda's template: default tracing subscriber, echo the event), built with
//! the same release profile as the real functions.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn echo(event: LambdaEvent<Value>) -> Result<Value, Error> {
    Ok(json!({ "echo": event.payload }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    lambda_runtime::run(service_fn(echo)).await
}
