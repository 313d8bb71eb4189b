//! The `keap-hooks` function: `POST /keap/hooks/{token}` on the HTTP API (payload 2.0).
//!
//! Keap marks a subscription Inactive after four failed deliveries, or at once on a 410, and
//! then drops changes silently (`../shared/DESIGN.md`, "Events out"). So the answers are
//! chosen with care: 410 only when the subscription is definitely gone (a token that was never
//! issued, or a consistent read that found no item); 503 when the store or EventBridge failed
//! (Keap retries); 200 only once `PutEvents` accepted every entry. The token in the path is
//! the only proof a request comes from Keap: it is looked up by its hash, compared in constant
//! time and never logged.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::header::{CONTENT_TYPE, HeaderValue};
use aws_lambda_events::http::{HeaderMap, Method};
use base64::Engine;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use tracing::{info, warn};

use super::delivery::{Delivery, HookEvent, events_of, requests_of};
use crate::error_type::ErrorType;
use crate::events::{EventBus, PublishError};
use crate::telemetry::{MetricSink, Metrics, Unit};
use crate::token_store::{DynamoDbTokenStore, HookToken};

/// Keap's handshake header: echoed with a 200 to verify a subscription.
pub const HOOK_SECRET_HEADER: &str = "x-hook-secret";
/// The route's path before the token.
pub const HOOKS_PATH_PREFIX: &str = "/keap/hooks/";
/// A delivery of 1,000 objects is well under this; anything larger is not Keap's.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A delivery to a well-formed token answered 400 or 5xx: Keap counts it as a failed attempt,
/// and four make the subscription Inactive. keap-hooks answers normally (no Lambda error), so
/// this metric, not the function's `Errors`, is what an alarm watches.
pub const METRIC_DELIVERIES_FAILED: &str = "HookDeliveriesFailed";

/// What keap-hooks uses, built once per container.
pub struct HooksReceiver {
    store: DynamoDbTokenStore,
    bus: EventBus,
    metrics: MetricSink,
    /// Metric dimension.
    stage: String,
}

impl HooksReceiver {
    pub fn new(store: DynamoDbTokenStore, bus: EventBus, stage: impl Into<String>) -> Self {
        Self {
            store,
            bus,
            metrics: MetricSink::stdout(),
            stage: stage.into(),
        }
    }

    /// One invocation: an API Gateway HTTP API request (payload 2.0), or an error naming the
    /// route for anything else (a wiring mistake).
    pub async fn handle_event(&self, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
        let request: ApiGatewayV2httpRequest = serde_json::from_value(event.payload)
            .ok()
            .filter(|request: &ApiGatewayV2httpRequest| {
                request.request_context.http.method != Method::default()
                    || request.raw_path.is_some()
            })
            .ok_or_else(|| {
                ErrorType::Validation.diagnostic(format!(
                    "keap-hooks answers only POST {HOOKS_PATH_PREFIX}{{token}} from the HTTP API"
                ))
            })?;
        let answer = self.answer(&request).await;
        serde_json::to_value(&answer).map_err(|e| {
            ErrorType::Internal.diagnostic(format!("could not encode the answer: {e}"))
        })
    }

    /// One request: always an HTTP answer (the status tells Keap whether to retry).
    pub async fn answer(&self, request: &ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        let Some(token) = token_of(request) else {
            // Never issued: no subscription can be behind it.
            return refused(410, "unknown_token");
        };
        let answer = self.answer_for(request, &token).await;
        if answer.status_code == 400 || answer.status_code >= 500 {
            let mut metrics = Metrics::new();
            metrics.put(METRIC_DELIVERIES_FAILED, 1.0, Unit::Count);
            self.metrics.emit(&metrics, &self.stage);
        }
        answer
    }

    async fn answer_for(
        &self,
        request: &ApiGatewayV2httpRequest,
        token: &HookToken,
    ) -> ApiGatewayV2httpResponse {
        if request.request_context.http.method != Method::POST {
            return refused(405, "method");
        }
        let body = match body_of(request) {
            Ok(body) => body,
            Err(reason) => return refused(400, reason),
        };
        let hook = match self.store.hook(&token.hash()).await {
            Ok(Some(hook)) => hook,
            Ok(None) => return refused(410, "unknown_token"),
            Err(e) => {
                warn!(status = 503, error = %e, "hook delivery not taken: the subscription could not be read; Keap retries");
                return plain(503);
            }
        };
        let hook_ref = hook.token_hash.masked();
        if let Some(secret) = request.headers.get(HOOK_SECRET_HEADER) {
            if !is_plausible_secret(secret) {
                return refused(400, "hook_secret");
            }
            info!(hook = %hook_ref, connection = %hook.connection_id, event_key = %hook.event_key, status = 200, "subscription verified");
            let mut answer = plain(200);
            answer.headers.insert(HOOK_SECRET_HEADER, secret.clone());
            return answer;
        }
        let delivery = match Delivery::parse(&body) {
            Ok(delivery) => delivery,
            Err(e) => {
                warn!(hook = %hook_ref, status = 400, reason = %e, "hook delivery refused");
                return plain(400);
            }
        };
        if delivery.event_key != hook.event_key {
            warn!(hook = %hook_ref, status = 400, subscribed = %hook.event_key, "hook delivery refused: its event_key is not the subscription's");
            return plain(400);
        }
        let events = events_of(&hook.connection_id, &delivery);
        match self.publish(&events).await {
            Ok(()) => {
                info!(hook = %hook_ref, connection = %hook.connection_id, event_key = %delivery.event_key,
                    objects = delivery.object_keys.len(), events = events.len(), status = 200, "hook delivery published");
                plain(200)
            }
            Err(e) => {
                warn!(hook = %hook_ref, status = 503, error = %e, "hook delivery not published; Keap retries");
                plain(503)
            }
        }
    }
}

impl HooksReceiver {
    /// Every event, request by request; a failure after some were accepted still fails (Keap
    /// retries the delivery, and consumers dedupe on `delivery_id` and `part`).
    async fn publish(&self, events: &[HookEvent]) -> Result<(), PublishError> {
        for request in requests_of(events) {
            let entries: Vec<(&str, &str)> = request
                .iter()
                .map(|event| (event.detail_type.as_str(), event.detail.as_str()))
                .collect();
            self.bus.put_every(&entries).await?;
        }
        Ok(())
    }
}

fn token_of(request: &ApiGatewayV2httpRequest) -> Option<HookToken> {
    let segment = request
        .path_parameters
        .get("token")
        .map(String::as_str)
        .or_else(|| {
            request
                .raw_path
                .as_deref()
                .and_then(|path| path.strip_prefix(HOOKS_PATH_PREFIX))
        })?;
    HookToken::from_path_segment(segment)
}

fn body_of(request: &ApiGatewayV2httpRequest) -> Result<Vec<u8>, &'static str> {
    let raw = request.body.as_deref().unwrap_or_default();
    // Base64 is 4/3 of the bytes: a body past the limit is refused before it is decoded.
    if raw.len() > MAX_BODY_BYTES * 4 / 3 + 4 {
        return Err("too_large");
    }
    let body = if request.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|_| "malformed_body")?
    } else {
        raw.as_bytes().to_vec()
    };
    if body.len() > MAX_BODY_BYTES {
        return Err("too_large");
    }
    Ok(body)
}

/// Keap's secret is a short token; an echo of anything else would be a reflection service.
fn is_plausible_secret(secret: &HeaderValue) -> bool {
    let bytes = secret.as_bytes();
    !bytes.is_empty() && bytes.len() <= 256 && bytes.iter().all(|b| b.is_ascii_graphic())
}

fn refused(status: i64, reason: &'static str) -> ApiGatewayV2httpResponse {
    warn!(status, reason, "hook request refused");
    plain(status)
}

fn plain(status: i64) -> ApiGatewayV2httpResponse {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = status;
    response.headers = headers;
    response.body = Some(Body::Empty);
    response
}
