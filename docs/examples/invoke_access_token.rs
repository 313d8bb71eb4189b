//! Call Keap with your own HTTP client and a token from keapalive's access-token (Rust).
//!
//! Cargo.toml: aws-config = "1", aws-sdk-lambda = "1", reqwest = "0.12", serde_json = "1",
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//!
//! Run: ACCESS_TOKEN_FUNCTION=keapalive-dev-access-token cargo run -- \
//!        '/v1/contacts?limit=1' '/v1/account/profile'
//! Each argument is a Keap REST path (with its query) sent as a GET. The token is asked for once
//! and cached until 5 minutes before it expires; a 401 from Keap is reported with the token's
//! `generation` (keapalive checks it and, if Keap really refuses it, rotates once) and the
//! request is sent once more. Never refresh the token yourself: keapalive holds the only refresh
//! token.
//!
//! Exit codes: 0 Keap answered every request (any status but a second 401), 2 fix the request,
//! 3 re-authorize the connection, 4 retry later.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_sdk_lambda::primitives::Blob;
use serde_json::{Value, json};

const MARGIN_SECS: i64 = 300; // ask again this long before the token expires

/// A function error: its errorType and message, and the exit code that says what to do.
#[derive(Debug)]
struct TokenError {
    message: String,
    exit_code: u8,
}

/// The connection's token, cached until `expires_at` minus a margin.
struct KeapToken {
    lambda: aws_sdk_lambda::Client,
    function_name: String,
    connection_id: String,
    current: Option<Value>,
}

impl KeapToken {
    async fn invoke(&self, request: Value) -> Result<Value, TokenError> {
        let output = self
            .lambda
            .invoke()
            .function_name(&self.function_name)
            .payload(Blob::new(request.to_string()))
            .send()
            .await
            .map_err(|e| TokenError {
                message: format!(
                    "the invocation failed: {}",
                    aws_sdk_lambda::error::DisplayErrorContext(&e)
                ),
                exit_code: 4,
            })?;
        let payload: Value = output
            .payload()
            .and_then(|blob| serde_json::from_slice(blob.as_ref()).ok())
            .unwrap_or(Value::Null);
        if output.function_error().is_none() {
            return Ok(payload);
        }
        let error_type = payload["errorType"].as_str().unwrap_or("Unknown");
        Err(TokenError {
            message: format!("{error_type}: {}", payload["errorMessage"]),
            exit_code: match error_type {
                "ValidationError" => 2,
                "NotAuthorized" => 3,
                _ => 4,
            },
        })
    }

    async fn get(&mut self) -> Result<Value, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let fresh = self
            .current
            .as_ref()
            .is_some_and(|t| now < t["expires_at"].as_i64().unwrap_or(0) - MARGIN_SECS);
        if !fresh {
            let request =
                json!({"connection_id": self.connection_id, "min_valid_secs": MARGIN_SECS + 60});
            self.current = Some(self.invoke(request).await?);
        }
        Ok(self.current.clone().unwrap_or(Value::Null))
    }

    /// Keap answered 401: report the generation we were given, take what comes back.
    async fn rejected(&mut self) -> Result<Value, TokenError> {
        let generation = self
            .current
            .as_ref()
            .map_or(Value::Null, |t| t["generation"].clone());
        let request =
            json!({"connection_id": self.connection_id, "rejected_generation": generation});
        let token = self.invoke(request).await?;
        self.current = Some(token.clone());
        Ok(token)
    }
}

async fn keap_get(
    http: &reqwest::Client,
    token: &mut KeapToken,
    path: &str,
) -> Result<u16, TokenError> {
    let mut current = token.get().await?;
    for attempt in 1..=2 {
        let url = format!(
            "{}{path}",
            current["api_base_url"].as_str().unwrap_or_default()
        );
        let status = http
            .get(url)
            .bearer_auth(current["access_token"].as_str().unwrap_or_default())
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| TokenError {
                message: format!("Keap did not answer: {e}"),
                exit_code: 4,
            })?
            .status()
            .as_u16();
        if status != 401 || attempt == 2 {
            return Ok(status);
        }
        current = token.rejected().await?;
    }
    Ok(401)
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let mut token = KeapToken {
        lambda: aws_sdk_lambda::Client::new(&config),
        function_name: std::env::var("ACCESS_TOKEN_FUNCTION")
            .unwrap_or_else(|_| "keapalive-dev-access-token".to_owned()),
        connection_id: std::env::var("KEAP_CONNECTION_ID").unwrap_or_else(|_| "default".to_owned()),
        current: None,
    };
    let http = reqwest::Client::new();
    for path in std::env::args().skip(1) {
        match keap_get(&http, &mut token, &path).await {
            Ok(401) => {
                eprintln!("Keap still refuses the token: retry later");
                return ExitCode::from(4);
            }
            Ok(status) => {
                println!(
                    "GET {}: status {status}",
                    path.split('?').next().unwrap_or_default()
                );
            }
            Err(error) => {
                eprintln!("{}", error.message);
                return ExitCode::from(error.exit_code);
            }
        }
    }
    ExitCode::SUCCESS
}
