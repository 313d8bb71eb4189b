//! Runs around every simulated-Keap request: records it, applies injected faults and latency.
//! The sandbox's own `/_sandbox` control API passes straight through.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::credentials::{self, Authorization};
use crate::quota::Bucket;
use crate::respond::{gateway_fault, message};
use crate::state::{RouteClass, Shared, State as SandboxState};
use futures_util::StreamExt;

use crate::types::{AuthKind, BodyBreak, Consent, FaultKind, RecordedRequest};

pub(crate) const CONTROL_PREFIX: &str = "/_sandbox";
/// Token requests are a few hundred bytes; anything near this is a client bug.
const MAX_TOKEN_BODY_BYTES: usize = 64 * 1024;

/// Marks a response that must not be sent: the connection is closed instead.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropConnection;

/// What is known about a request before it is handled; completed into a [`RecordedRequest`].
struct Arrival {
    seq: u64,
    method: String,
    path: String,
    query: Option<String>,
    at: Instant,
    auth: AuthKind,
    grant_type: Option<String>,
    form_client_id: Option<String>,
    presentation: Option<u32>,
    app: Option<String>,
}

impl Arrival {
    fn finish(self, shared: &Shared, status: u16) {
        tracing::debug!(method = %self.method, path = %self.path, status, "keap sandbox request");
        let seq = self.seq;
        let recorded = RecordedRequest {
            method: self.method,
            path: self.path,
            query: self.query,
            handling: self.at.elapsed(),
            at: self.at,
            auth: self.auth,
            grant_type: self.grant_type,
            form_client_id: self.form_client_id,
            presentation: self.presentation,
            status,
            app: self.app,
        };
        shared.lock().record(seq, recorded);
    }
}

pub(crate) async fn gate(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if path == CONTROL_PREFIX || path.starts_with("/_sandbox/") {
        return next.run(request).await;
    }
    let at = Instant::now();
    let class = RouteClass::of(&path);

    // The token form is read here (and handed on) so that even a faulted request is logged
    // with its grant_type.
    let (request, form) = if class == RouteClass::Token {
        let (parts, body) = request.into_parts();
        match to_bytes(body, MAX_TOKEN_BODY_BYTES).await {
            Ok(bytes) => {
                let form: Vec<(String, String)> = url::form_urlencoded::parse(&bytes)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                (Request::from_parts(parts, Body::from(bytes)), form)
            }
            Err(_) => {
                return message(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
            }
        }
    } else {
        (request, Vec::new())
    };
    let form_value = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };

    let (arrival, fault, latency, admission) = {
        let mut sandbox = shared.lock();
        let app = tenant_hint(&sandbox, class, &request, &form_value);
        let presentation = match (class, form_value("grant_type").as_deref()) {
            (RouteClass::Token, Some("refresh_token")) => {
                form_value("refresh_token").map(|token| sandbox.count_presentation(&token))
            }
            _ => None,
        };
        let arrival = Arrival {
            seq: sandbox.next_request_seq(),
            method: request.method().to_string(),
            path,
            query: request.uri().query().map(str::to_owned),
            at,
            auth: credentials::auth_kind(request.headers()),
            grant_type: form_value("grant_type"),
            form_client_id: form_value("client_id"),
            presentation,
            app,
        };
        let fault = sandbox.take_fault(class);
        // Faults answer from the gateway's front, before any quota is counted.
        let admission = match (&fault, quota_bucket(&sandbox, class, &request)) {
            (None, Some(bucket)) => Some(sandbox.product_quota.admit(
                bucket,
                Instant::now(),
                crate::clock::now_millis(),
            )),
            _ => None,
        };
        (arrival, fault, sandbox.latency_for(class), admission)
    };

    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match &fault {
        Some(FaultKind::Status {
            status,
            retry_after_secs,
        }) => {
            let response = injected_status(*status, *retry_after_secs);
            arrival.finish(&shared, response.status().as_u16());
            return response;
        }
        Some(FaultKind::StatusThenBrokenBody { status, break_body }) => {
            let response = broken_body(injected_status(*status, None), *break_body).await;
            arrival.finish(&shared, response.status().as_u16());
            return response;
        }
        Some(FaultKind::Redirect { status, location }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::TEMPORARY_REDIRECT);
            let mut response = status.into_response();
            if let Ok(location) = HeaderValue::from_str(location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            arrival.finish(&shared, status.as_u16());
            return response;
        }
        Some(FaultKind::DropBeforeProcessing) => {
            arrival.finish(&shared, 0);
            return dropped();
        }
        _ => {}
    }

    if let Some(refused) = admission.as_ref().filter(|a| a.refused) {
        let mut response = injected_status(429, None);
        with_quota_headers(&mut response, &refused.headers);
        arrival.finish(&shared, 429);
        return response;
    }

    let mut response = next.run(request).await;
    if let Some(admission) = &admission {
        with_quota_headers(&mut response, &admission.headers);
    }

    match fault {
        Some(FaultKind::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(FaultKind::DropAfterProcessing) => {
            arrival.finish(&shared, 0);
            return dropped();
        }
        _ => {}
    }
    arrival.finish(&shared, response.status().as_u16());
    response
}

/// The tenant a request concerns, looked up without validating or consuming anything.
fn tenant_hint(
    sandbox: &SandboxState,
    class: RouteClass,
    request: &Request,
    form_value: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    match class {
        RouteClass::Token => form_value("refresh_token")
            .and_then(|t| sandbox.refresh_token_app(&t))
            .or_else(|| form_value("code").and_then(|c| sandbox.code_app(&c))),
        RouteClass::Api => match credentials::authorization(request.headers()) {
            Authorization::Bearer(token) => sandbox.access_token_app(&token),
            _ => credentials::api_key(request.headers())
                .and_then(|key| sandbox.service_account_key_app(&key)),
        },
        RouteClass::Authorize => match &sandbox.consent {
            Consent::Approve { app } => Some(app.clone()),
            Consent::Deny => None,
        },
        RouteClass::Other => None,
    }
}

/// Whose product quota a REST request spends: only a credential the sandbox issued counts.
fn quota_bucket(sandbox: &SandboxState, class: RouteClass, request: &Request) -> Option<Bucket> {
    if class != RouteClass::Api {
        return None;
    }
    match credentials::authorization(request.headers()) {
        Authorization::Bearer(token) => sandbox.access_token_app(&token).map(|_| Bucket::OAuth),
        _ => credentials::api_key(request.headers())
            .filter(|key| sandbox.service_account_key_app(key).is_some())
            .map(Bucket::Key),
    }
}

fn with_quota_headers(response: &mut Response, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
}

/// Bodies as Keap's gateway sends them for throttling and outages.
fn injected_status(status: u16, retry_after_secs: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match status {
        StatusCode::TOO_MANY_REQUESTS => gateway_fault(
            status,
            "Rate limit quota violation. Quota limit exceeded.",
            "policies.ratelimit.QuotaViolation",
        ),
        StatusCode::SERVICE_UNAVAILABLE => gateway_fault(
            status,
            "The Service is temporarily unavailable",
            "messaging.adaptors.http.flow.ServiceUnavailable",
        ),
        _ => gateway_fault(status, "Injected fault", "sandbox.injected_fault"),
    };
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// `response` with its full `Content-Length` announced but only the first half of its body sent,
/// then the connection cut or silent.
async fn broken_body(response: Response, break_body: BodyBreak) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(half) });
    let body = match break_body {
        // An error from the body stream makes hyper abort the connection mid-body.
        // The pause lets hyper flush the status line and the first half before the cut (an
        // immediate error aborts the connection before anything was written).
        BodyBreak::Cut => Body::from_stream(first.chain(futures_util::stream::once(async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            Err(std::io::Error::other("injected: body cut off"))
        }))),
        BodyBreak::Stall => Body::from_stream(first.chain(futures_util::stream::pending())),
    };
    Response::from_parts(parts, body)
}

fn dropped() -> Response {
    let mut response = Response::new(Body::empty());
    response.extensions_mut().insert(DropConnection);
    response
}
