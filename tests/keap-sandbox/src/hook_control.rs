//! The `/_sandbox` control endpoints for REST Hooks: make Keap deliver an event, see and set
//! hook statuses, scale Keap's delays, read what was sent. Documented in the crate docs.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::hook_store::hook_json;
use crate::state::Shared;
use crate::types::{HookAttempt, HookEvent, HookRequestKind, HookStatus, ObjectKey};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/hooks", get(list_hooks))
        .route("/hook-status", put(set_hook_status))
        .route("/hook-events", post(deliver_event))
        .route("/hook-delay-scale", put(set_scale))
        .route(
            "/hook-deliveries",
            get(list_attempts).delete(clear_attempts),
        )
        .route("/hook-deliveries/in-flight", get(in_flight))
}

type Shd = State<Arc<Shared>>;

#[derive(Deserialize)]
struct AppQuery {
    app: String,
}

async fn list_hooks(State(shared): Shd, Query(query): Query<AppQuery>) -> Json<Value> {
    let hooks = shared.lock().hooks.list(&query.app);
    Json(Value::Array(hooks.iter().map(hook_json).collect()))
}

#[derive(Deserialize)]
struct StatusBody {
    key: String,
    status: HookStatus,
}

async fn set_hook_status(State(shared): Shd, Json(body): Json<StatusBody>) -> StatusCode {
    if shared.lock().hooks.set_status(&body.key, body.status) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
struct EventBody {
    app: String,
    event_key: String,
    object_type: Option<String>,
    object_keys: Vec<ObjectKey>,
}

async fn deliver_event(State(shared): Shd, Json(body): Json<EventBody>) -> Response {
    let event = HookEvent {
        event_key: body.event_key,
        object_type: body.object_type,
        object_keys: body.object_keys,
    };
    match deliver(&shared, &body.app, event) {
        Ok(hooks) => Json(json!({ "hooks": hooks })).into_response(),
        Err(text) => (StatusCode::BAD_REQUEST, text).into_response(),
    }
}

/// Shared by the control endpoint and [`crate::Sandbox::deliver_hook_event`].
pub(crate) fn deliver(
    shared: &Arc<Shared>,
    app: &str,
    event: HookEvent,
) -> Result<Vec<String>, String> {
    if !crate::hooks::is_event_key(&event.event_key) {
        return Err(format!("unknown event key {}", event.event_key));
    }
    let object_type = event.object_type.unwrap_or_else(|| {
        event
            .event_key
            .rsplit_once('.')
            .map_or_else(|| event.event_key.clone(), |(noun, _)| noun.to_owned())
    });
    Ok(crate::hook_delivery::deliver(
        shared,
        app,
        &event.event_key,
        &object_type,
        &event.object_keys,
    ))
}

#[derive(Deserialize)]
struct ScaleBody {
    scale: f64,
    timeout_scale: Option<f64>,
}

/// Checks a scale for [`crate::Sandbox::set_hook_delay_scale`] and the control endpoint: a
/// timeout must stay positive, a delay may be zero.
pub(crate) fn valid_scale(scale: f64, may_be_zero: bool) -> bool {
    scale.is_finite() && (scale > 0.0 || (may_be_zero && scale == 0.0))
}

async fn set_scale(State(shared): Shd, Json(body): Json<ScaleBody>) -> Response {
    let timeout_scale = body.timeout_scale.unwrap_or(body.scale);
    if !valid_scale(body.scale, true) || !valid_scale(timeout_scale, false) {
        return (
            StatusCode::BAD_REQUEST,
            "scale: finite, >= 0; timeout_scale: finite, > 0",
        )
            .into_response();
    }
    let mut sandbox = shared.lock();
    sandbox.hooks.delay_scale = body.scale;
    sandbox.hooks.timeout_scale = timeout_scale;
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) fn attempt_json(attempt: &HookAttempt, started: std::time::Instant) -> Value {
    json!({
        "kind": match attempt.kind {
            HookRequestKind::Verification => "verification",
            HookRequestKind::Delivery => "delivery",
        },
        "hook_key": attempt.hook_key,
        "hook_url": attempt.hook_url,
        "app": attempt.app,
        "event_key": attempt.event_key,
        "delivery": attempt.delivery,
        "attempt": attempt.attempt,
        "status": attempt.status,
        "error": attempt.error,
        "succeeded": attempt.succeeded,
        "body": attempt.body,
        "at_ms": attempt.at.saturating_duration_since(started).as_secs_f64() * 1000.0,
    })
}

async fn list_attempts(State(shared): Shd) -> Json<Value> {
    let started = shared.started;
    let attempts = shared.lock().hooks.attempts();
    Json(Value::Array(
        attempts.iter().map(|a| attempt_json(a, started)).collect(),
    ))
}

async fn clear_attempts(State(shared): Shd) -> StatusCode {
    shared.lock().hooks.clear_attempts();
    StatusCode::NO_CONTENT
}

async fn in_flight(State(shared): Shd) -> Json<Value> {
    Json(json!({ "in_flight": shared.lock().hooks.in_flight() }))
}
