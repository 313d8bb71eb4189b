//! Keap, reached through keap-proxy (`KEAPALIVE_PROXY_FUNCTION`): how the operator manages REST
//! Hook subscriptions without ever reading a token or a key (its role has none to read, only
//! `lambda:InvokeFunction` on the proxy).
//!
//! The Lambda client's retries are off and its read timeout is above the proxy's Timeout: a
//! client-side timeout followed by a re-invoke would send a `POST /v1/hooks` twice and create a
//! second subscription (docs/keap-proxy.md, "Callers").

use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::connection_id::ConnectionId;

/// keap-proxy's Timeout (the template's 30 s) + a cold start's init + a margin: the answer of a
/// proxy call that used its whole budget still arrives, so a create Keap carried out is never
/// taken for a failure (which would delete its item and orphan the hook at Keap).
pub const PROXY_READ_TIMEOUT: Duration = Duration::from_secs(40);

/// Keap's answer, as keap-proxy hands it back (its `status` and JSON `body`).
#[derive(Debug, Deserialize)]
pub struct KeapAnswer {
    pub status: u16,
    #[serde(default)]
    pub body: Value,
}

impl KeapAnswer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ViaProxyError {
    /// keap-proxy answered with an error (its `errorType` and message, which never hold a
    /// secret or a body).
    #[error("keap-proxy answered {error_type}: {message}")]
    Proxy { error_type: String, message: String },
    /// The invocation itself failed or timed out: nothing is known of Keap's side.
    #[error("keap-proxy could not be invoked: {0}")]
    Invoke(String),
}

/// Invokes keap-proxy for one Keap request at a time.
#[derive(Clone, Debug)]
pub struct KeapViaProxy {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl KeapViaProxy {
    pub fn new(client: aws_sdk_lambda::Client, function: impl Into<String>) -> Self {
        Self {
            client,
            function: function.into(),
        }
    }

    /// `method path` with `body` on `connection_id`'s credential; never re-sent (`retry`
    /// false), so a POST reaches Keap at most once.
    pub async fn request(
        &self,
        connection_id: &ConnectionId,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<KeapAnswer, ViaProxyError> {
        let mut request = json!({
            "connection_id": connection_id.as_str(),
            "method": method,
            "path": path,
            "retry": false,
        });
        if let Some(body) = body {
            request["body"] = body;
        }
        let output = self
            .client
            .invoke()
            .function_name(&self.function)
            .payload(Blob::new(request.to_string()))
            .send()
            .await
            .map_err(|e| {
                ViaProxyError::Invoke(
                    aws_sdk_lambda::error::DisplayErrorContext(&e)
                        .to_string()
                        .chars()
                        .take(300)
                        .collect(),
                )
            })?;
        let payload = output.payload.map(Blob::into_inner).unwrap_or_default();
        if output.function_error.is_some() {
            #[derive(Deserialize)]
            struct FunctionError {
                #[serde(rename = "errorType", default)]
                error_type: String,
                #[serde(rename = "errorMessage", default)]
                error_message: String,
            }
            let error: FunctionError = serde_json::from_slice(&payload).unwrap_or(FunctionError {
                error_type: "Unhandled".to_owned(),
                error_message: "keap-proxy failed without a message".to_owned(),
            });
            return Err(ViaProxyError::Proxy {
                error_type: error.error_type,
                message: error.error_message,
            });
        }
        serde_json::from_slice(&payload).map_err(|_| {
            ViaProxyError::Invoke("keap-proxy's answer is not its documented shape".into())
        })
    }
}
