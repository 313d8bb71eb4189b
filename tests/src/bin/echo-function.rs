//! A minimal `lambda_runtime` function that proves the harness's Runtime API host speaks the
//! protocol the real crate expects. Echoes the event with what the runtime told it; answers an
//! event `{"fail": {"error_type": .., "error_message": ..}}` with that Lambda error.

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let (payload, context) = event.into_parts();
    if let Some(fail) = payload.get("fail") {
        let text = |key: &str| {
            fail.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        return Err(Diagnostic {
            error_type: text("error_type"),
            error_message: text("error_message"),
        });
    }
    Ok(json!({
        "echo": payload,
        "request_id": context.request_id,
        "deadline_ms": context.deadline,
        "invoked_function_arn": context.invoked_function_arn,
        "trace_id": context.xray_trace_id,
        "function_name": context.env_config.function_name,
        "memory_mb": context.env_config.memory,
    }))
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    lambda_runtime::run(service_fn(handle)).await
}
