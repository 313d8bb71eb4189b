//! Call any Keap REST endpoint through keapalive's keap-proxy from Rust (`aws-sdk-lambda`).
//!
//! Cargo.toml: aws-config = "1", aws-sdk-lambda = "1", serde_json = "1",
//! tokio = { version = "1", features = ["macros", "rt-multi-thread", "time"] }
//!
//! Run: KEAP_PROXY_FUNCTION=keapalive-dev-keap-proxy cargo run -- \
//!        '{"method": "GET", "path": "/v1/contacts", "query": {"email": "ada@example.com"}}'
//! The argument is the proxy request (docs/keap-proxy.md); the function is the stage's
//! keap-proxy (keapalive-<stage>-keap-proxy). AWS credentials, region and endpoint come from the
//! standard environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL_LAMBDA for a local endpoint).
//!
//! Exit codes: 0 Keap answered (any status: a 404 is data), 2 fix the request, 3 re-authorize
//! the connection, 4 retry later, 5 Keap may have applied a POST or PATCH: check before sending
//! it again.

use std::process::ExitCode;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_lambda::primitives::Blob;
use serde_json::Value;

const NOT_REPEATABLE: [&str; 2] = ["POST", "PATCH"]; // a second POST creates a second record
const MAX_WAIT_SECS: u64 = 10; // longer throttles: give up and let the caller come back later

/// What went wrong and what to do: the exit code, and for a throttle the wait Keap asked for.
#[derive(Debug)]
struct ProxyError {
    message: String,
    exit_code: u8,
    retry_after_secs: Option<u64>,
}

/// The function's errorType (and, for Unavailable, its message) says what to do next.
fn classify(error_type: &str, message: &str, method: &str) -> ProxyError {
    let error = |advice: String, exit_code, retry_after_secs| ProxyError {
        message: format!("{error_type}: {message} ({advice})"),
        exit_code,
        retry_after_secs,
    };
    match error_type {
        // No Keap request was made.
        "ValidationError" => error("fix the request; do not retry it".into(), 2, None),
        // Keap did it; the answer does not fit in Lambda's.
        "ResponseTooLarge" => error("ask for less: limit/offset".into(), 2, None),
        "NotAuthorized" => error("re-authorize the connection, then retry".into(), 3, None),
        // Nothing was applied; the message ends with retry_after_secs=<N>.
        "RateLimited" => {
            let secs = message
                .rsplit_once("retry_after_secs=")
                .and_then(|(_, n)| n.parse().ok())
                .unwrap_or(60);
            error(format!("retry in {secs} s"), 4, Some(secs))
        }
        _ if NOT_REPEATABLE.contains(&method) && !message.contains("nothing was applied") => error(
            "Keap may have applied it: check before sending it again".into(),
            5,
            None,
        ),
        _ => error("retry later".into(), 4, None),
    }
}

/// Keap's answer `{"status", "headers", "body", "body_encoding"}`.
async fn call_keap(
    lambda: &aws_sdk_lambda::Client,
    function_name: &str,
    request: &Value,
) -> Result<Value, ProxyError> {
    let method = request["method"].as_str().unwrap_or_default();
    let output = lambda
        .invoke()
        .function_name(function_name)
        .payload(Blob::new(request.to_string()))
        .send()
        .await
        // No answer from Lambda: the function may have run.
        .map_err(|e| {
            let reason = aws_sdk_lambda::error::DisplayErrorContext(&e).to_string();
            classify(
                "Invoke",
                &format!("the invocation failed: {reason}"),
                method,
            )
        })?;
    let payload: Value = output
        .payload()
        .and_then(|blob| serde_json::from_slice(blob.as_ref()).ok())
        .unwrap_or(Value::Null);
    if output.function_error().is_none() {
        return Ok(payload);
    }
    let field = |name: &str| payload[name].as_str().unwrap_or_default().to_owned();
    Err(classify(
        &field("errorType"),
        &field("errorMessage"),
        method,
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    let function_name = std::env::var("KEAP_PROXY_FUNCTION")
        .unwrap_or_else(|_| "keapalive-dev-keap-proxy".to_owned());
    let mut request: Value = match std::env::args().nth(1).map(|a| serde_json::from_str(&a)) {
        Some(Ok(request)) => request,
        _ => {
            eprintln!("usage: invoke_proxy '<proxy request JSON>'");
            return ExitCode::from(2);
        }
    };
    if request.get("connection_id").is_none() {
        request["connection_id"] = "default".into();
    }

    // The SDK's own retries off and its read timeout above the function's Timeout (30 s): an
    // SDK that re-invokes after a timeout or a 5xx from Lambda would send a POST twice. This
    // caller retries by itself, only where repeating is safe.
    let config = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(40))
                .build(),
        )
        .load()
        .await;
    let lambda = aws_sdk_lambda::Client::new(&config);

    for attempt in 1..=3u32 {
        match call_keap(&lambda, &function_name, &request).await {
            Ok(answer) => {
                println!("answer: {answer}");
                return ExitCode::SUCCESS;
            }
            Err(error) => {
                let wait = error.retry_after_secs.unwrap_or(2u64.pow(attempt));
                if error.exit_code != 4 || wait > MAX_WAIT_SECS || attempt == 3 {
                    eprintln!("{}", error.message);
                    return ExitCode::from(error.exit_code);
                }
                eprintln!("{} (retrying in {wait} s)", error.message);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        }
    }
    ExitCode::from(4)
}
