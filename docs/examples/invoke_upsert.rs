//! Upsert a Keap contact through keapalive from Rust (`aws-sdk-lambda`).
//!
//! Cargo.toml: aws-config = "1", aws-sdk-lambda = "1", serde_json = "1",
//! tokio = { version = "1", features = ["macros", "rt-multi-thread", "time"] }
//!
//! Run: CONTACT_UPSERT_FUNCTION=keapalive-dev-contact-upsert cargo run -- ada@example.com
//! The function name is the stack output `ContactUpsertFunctionName`. AWS credentials, region
//! and endpoint come from the standard environment (AWS_PROFILE, AWS_REGION,
//! AWS_ENDPOINT_URL_LAMBDA for a local endpoint, ...).

use std::process::ExitCode;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_lambda::primitives::Blob;
use serde_json::{Value, json};

/// What went wrong, by the function's `errorType`.
#[derive(Debug)]
enum UpsertError {
    /// ValidationError, KeapRejected: the request must change; never retry it as is.
    Permanent { error_type: String, message: String },
    /// NotAuthorized: a human must re-authorize the connection; retry after that.
    NotAuthorized(String),
    /// RateLimited, Unavailable (or Lambda itself failed): safe to retry later.
    Transient { error_type: String, message: String },
}

async fn upsert_contact(
    lambda: &aws_sdk_lambda::Client,
    function_name: &str,
    request: &Value,
) -> Result<Value, UpsertError> {
    let transient = |message: String| UpsertError::Transient {
        error_type: "Invoke".to_owned(),
        message,
    };
    let output = lambda
        .invoke()
        .function_name(function_name)
        .payload(Blob::new(request.to_string()))
        .send()
        .await
        .map_err(|e| transient(aws_sdk_lambda::error::DisplayErrorContext(&e).to_string()))?;
    let payload: Value = output
        .payload()
        .map(|blob| serde_json::from_slice(blob.as_ref()))
        .transpose()
        .map_err(|e| transient(format!("unreadable answer: {e}")))?
        .unwrap_or(Value::Null);
    if output.function_error().is_none() {
        return Ok(payload);
    }
    let field = |name: &str| payload[name].as_str().unwrap_or_default().to_owned();
    let (error_type, message) = (field("errorType"), field("errorMessage"));
    Err(match error_type.as_str() {
        "ValidationError" | "KeapRejected" => UpsertError::Permanent {
            error_type,
            message,
        },
        "NotAuthorized" => UpsertError::NotAuthorized(message),
        _ => UpsertError::Transient {
            error_type,
            message,
        },
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let function_name = std::env::var("CONTACT_UPSERT_FUNCTION")
        .unwrap_or_else(|_| "keapalive-dev-contact-upsert".to_owned());
    let email = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ada@example.com".to_owned());
    let request = json!({
        "connection_id": "default",
        "contact": {
            "email": email,
            "given_name": "Ada",
            "family_name": "Lovelace",
            "custom_fields": { "Favorite Color": "blue" },
            "tags": ["buttonpushed"]
        },
        "match_on": "email"
    });

    let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let lambda = aws_sdk_lambda::Client::new(&config);

    let mut delay = Duration::from_secs(1);
    for attempt in 1..=3 {
        match upsert_contact(&lambda, &function_name, &request).await {
            Ok(answer) => {
                println!("upserted: {answer}");
                return ExitCode::SUCCESS;
            }
            Err(UpsertError::Permanent {
                error_type,
                message,
            }) => {
                eprintln!("{error_type}: {message} (fix the request; do not retry it)");
                return ExitCode::from(2);
            }
            Err(UpsertError::NotAuthorized(message)) => {
                eprintln!("NotAuthorized: {message} (re-authorize the connection, then retry)");
                return ExitCode::from(3);
            }
            Err(UpsertError::Transient {
                error_type,
                message,
            }) if attempt < 3 => {
                eprintln!("{error_type}: {message} (retrying in {delay:?})");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(UpsertError::Transient {
                error_type,
                message,
            }) => {
                eprintln!("{error_type}: {message} (giving up for now; retry later)");
                return ExitCode::from(4);
            }
        }
    }
    ExitCode::from(4)
}
