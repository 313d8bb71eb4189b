//! A local AWS Lambda **Invoke** API (`POST /2015-03-31/functions/{name}/invocations`) in front
//! of the real function binaries, so the AWS CLI (`--endpoint-url`), boto3 (`endpoint_url=`),
//! the JavaScript SDK v3 (`endpoint:`) and `aws-sdk-lambda` can call them exactly as they call
//! Lambda, with dummy credentials (signatures are not checked).
//! <https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html>

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::functions::LocalFunction;
use crate::emulator::REGION;
use crate::runtime_api::ACCOUNT_ID;

pub struct InvokeApi {
    address: SocketAddr,
    server: JoinHandle<()>,
    lost_answers: Arc<AtomicU32>,
}

impl Drop for InvokeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Served {
    functions: Arc<HashMap<String, LocalFunction>>,
    /// How many of the next RequestResponse invocations lose their answer.
    lost_answers: Arc<AtomicU32>,
}

impl InvokeApi {
    /// Serves `functions` under the names given (e.g. `keapalive-local-contact-upsert`) on a
    /// free port of 127.0.0.1.
    pub async fn start(functions: Vec<(String, LocalFunction)>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let lost_answers = Arc::new(AtomicU32::new(0));
        let served = Served {
            functions: Arc::new(functions.into_iter().collect()),
            lost_answers: lost_answers.clone(),
        };
        let app = Router::new()
            .route("/2015-03-31/functions/{function}/invocations", post(invoke))
            .with_state(served);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            address,
            server,
            lost_answers,
        })
    }

    /// The next `n` RequestResponse invocations run the function to the end, then answer
    /// `502 Bad Gateway` instead of its result: the function's answer is lost on its way to
    /// the caller (a proxy or a dropped connection in between). The SDKs treat a 502 as they
    /// treat a read timeout — transient, retried unless retries are off — so a caller that
    /// retries invokes the function a second time.
    pub fn lose_answers(&self, n: u32) {
        self.lost_answers.store(n, Ordering::SeqCst);
    }

    /// How many answers [`lose_answers`](Self::lose_answers) still has to lose (0: the fault
    /// fired as often as asked).
    pub fn answers_left_to_lose(&self) -> u32 {
        self.lost_answers.load(Ordering::SeqCst)
    }

    /// For `AWS_ENDPOINT_URL_LAMBDA`, `--endpoint-url`, `endpoint_url=`, `endpoint:`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.address)
    }
}

async fn invoke(
    State(served): State<Served>,
    Path(function): Path<String>,
    headers: HeaderMap,
    payload: Bytes,
) -> Response {
    let name = function_name(&function);
    let Some(target) = served.functions.get(name) else {
        return aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"),
        );
    };
    let event: Value = if payload.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&payload) {
            Ok(event) => event,
            Err(_) => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    "Could not parse request body into json",
                );
            }
        }
    };
    let invocation_type = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match invocation_type {
        "Event" => {
            let target = target.clone();
            tokio::spawn(async move {
                let _ = target.invoke(event).await;
            });
            return respond(StatusCode::ACCEPTED, None, Vec::new());
        }
        "DryRun" => return respond(StatusCode::NO_CONTENT, None, Vec::new()),
        _ => {}
    }
    let answer = target.invoke(event).await;
    let lose = served
        .lost_answers
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if lose {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .header("content-type", "text/plain")
            .body(Body::from("the function's answer was lost"))
            .unwrap_or_else(|_| Response::new(Body::empty()));
    }
    match answer {
        Ok(answer) => respond(StatusCode::OK, None, answer.to_string().into_bytes()),
        // Lambda reports a function's error with status 200 and this header; the body is the
        // error object the runtime posted.
        Err(error) => respond(
            StatusCode::OK,
            Some("Unhandled"),
            json!({"errorType": error.error_type, "errorMessage": error.error_message})
                .to_string()
                .into_bytes(),
        ),
    }
}

/// A name, `name:qualifier`, a partial ARN or a full ARN → the name.
fn function_name(function: &str) -> &str {
    let after_function = function
        .rsplit_once(":function:")
        .map(|(_, rest)| rest)
        .unwrap_or(function);
    after_function
        .split_once(':')
        .map(|(name, _qualifier)| name)
        .unwrap_or(after_function)
}

fn respond(status: StatusCode, function_error: Option<&str>, body: Vec<u8>) -> Response {
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amz-executed-version", "$LATEST")
        .header("x-amzn-requestid", request_id());
    if let Some(kind) = function_error {
        response = response.header("x-amz-function-error", kind);
    }
    response
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// A service error the SDKs recognise by `x-amzn-ErrorType` (and `Type`/`message` in the body).
fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-errortype", error_type)
        .header("x-amzn-requestid", request_id())
        .body(Body::from(
            json!({"Type": "User", "message": message}).to_string(),
        ))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "00000000-0000-4000-8000-{:012x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::function_name;

    #[test]
    fn accepts_every_form_lambda_accepts() {
        assert_eq!(function_name("upsert"), "upsert");
        assert_eq!(function_name("upsert:$LATEST"), "upsert");
        assert_eq!(function_name("123456789012:function:upsert"), "upsert");
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:123456789012:function:upsert:prod"),
            "upsert"
        );
    }
}
