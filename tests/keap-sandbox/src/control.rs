//! The `/_sandbox` JSON control API, so a sandbox running as a separate process can be driven
//! the same way the Rust API drives an in-process one. Documented in the crate docs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::Shared;
use crate::types::{AuthKind, BodyBreak, Consent, Endpoint, Fault, FaultKind};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/clients", post(register_client))
        .route("/consent", put(set_consent))
        .route("/grants", post(issue_grant))
        .route("/revoke-grant", post(revoke_grant))
        .route("/expire-access-tokens", post(expire_access_tokens))
        .route("/access-token-lifetime", put(set_access_token_lifetime))
        .route("/refresh-token", get(current_refresh_token))
        .route("/service-account-keys", post(issue_service_account_key))
        .route(
            "/revoke-service-account-key",
            post(revoke_service_account_key),
        )
        .route("/custom-fields", post(add_custom_field))
        .route("/tags", post(add_tag).get(list_tags))
        .route("/contacts", get(list_contacts))
        .route("/faults", post(inject_fault))
        .route("/faults/fired", get(fault_fired))
        .route("/latency", put(set_latency))
        .route("/requests", get(list_requests).delete(clear_requests))
        .merge(crate::hook_control::router())
}

type Shd = State<Arc<Shared>>;

#[derive(Deserialize)]
struct ClientBody {
    client_id: String,
    client_secret: String,
}

async fn register_client(State(shared): Shd, Json(body): Json<ClientBody>) -> StatusCode {
    shared
        .lock()
        .register_client(&body.client_id, &body.client_secret);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
enum ConsentBody {
    Approve { app: String },
    Deny,
}

async fn set_consent(State(shared): Shd, Json(body): Json<ConsentBody>) -> StatusCode {
    shared.lock().consent = match body {
        ConsentBody::Approve { app } => Consent::Approve { app },
        ConsentBody::Deny => Consent::Deny,
    };
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct GrantBody {
    client_id: String,
    app: String,
}

async fn issue_grant(State(shared): Shd, Json(body): Json<GrantBody>) -> Json<Value> {
    let pair = shared.lock().new_grant(&body.client_id, &body.app);
    Json(json!({
        "access_token": pair.access_token,
        "refresh_token": pair.refresh_token,
        "expires_in": pair.expires_in,
        "scope": pair.scope,
    }))
}

#[derive(Deserialize)]
struct AppBody {
    app: String,
}

async fn revoke_grant(State(shared): Shd, Json(body): Json<AppBody>) -> StatusCode {
    shared.lock().revoke_grant(&body.app);
    StatusCode::NO_CONTENT
}

async fn expire_access_tokens(State(shared): Shd) -> StatusCode {
    shared.lock().expire_access_tokens();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct LifetimeBody {
    secs: u64,
}

async fn set_access_token_lifetime(
    State(shared): Shd,
    Json(body): Json<LifetimeBody>,
) -> StatusCode {
    shared.lock().access_token_lifetime_secs = body.secs;
    StatusCode::NO_CONTENT
}

async fn current_refresh_token(State(shared): Shd, Query(query): Query<AppBody>) -> Json<Value> {
    let token = shared.lock().current_refresh_token(&query.app);
    Json(json!({ "refresh_token": token }))
}

async fn issue_service_account_key(State(shared): Shd, Json(body): Json<AppBody>) -> Json<Value> {
    let key = shared.lock().issue_service_account_key(&body.app);
    Json(json!({ "key": key }))
}

#[derive(Deserialize)]
struct KeyBody {
    key: String,
}

async fn revoke_service_account_key(State(shared): Shd, Json(body): Json<KeyBody>) -> StatusCode {
    shared.lock().revoke_service_account_key(&body.key);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct CustomFieldBody {
    app: String,
    label: String,
    field_type: String,
}

async fn add_custom_field(State(shared): Shd, Json(body): Json<CustomFieldBody>) -> Json<Value> {
    let id = shared
        .lock()
        .add_custom_field(&body.app, &body.label, &body.field_type);
    Json(json!({ "id": id }))
}

#[derive(Deserialize)]
struct TagBody {
    app: String,
    name: String,
}

async fn add_tag(State(shared): Shd, Json(body): Json<TagBody>) -> Json<Value> {
    let id = shared.lock().add_tag(&body.app, &body.name);
    Json(json!({ "id": id }))
}

async fn list_tags(State(shared): Shd, Query(query): Query<AppBody>) -> Json<Value> {
    let tags: Vec<Value> = shared
        .lock()
        .tag_list(&query.app)
        .into_iter()
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    Json(Value::Array(tags))
}

async fn list_contacts(State(shared): Shd, Query(query): Query<AppBody>) -> Json<Value> {
    Json(Value::Array(shared.lock().contacts_json(&query.app)))
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FaultKindBody {
    Status {
        status: u16,
        retry_after_secs: Option<u64>,
    },
    Redirect {
        status: u16,
        location: String,
    },
    StatusThenBrokenBody {
        status: u16,
        break_body: BodyBreak,
    },
    DelayMs(u64),
    DropAfterProcessing,
    DropBeforeProcessing,
}

#[derive(Deserialize)]
struct FaultBody {
    endpoint: Endpoint,
    kind: FaultKindBody,
    #[serde(default = "one")]
    times: u32,
}

fn one() -> u32 {
    1
}

async fn inject_fault(State(shared): Shd, Json(body): Json<FaultBody>) -> Response {
    let kind = match body.kind {
        FaultKindBody::Status {
            status,
            retry_after_secs,
        } => {
            if StatusCode::from_u16(status).is_err() {
                return (StatusCode::BAD_REQUEST, "invalid status").into_response();
            }
            FaultKind::Status {
                status,
                retry_after_secs,
            }
        }
        FaultKindBody::Redirect { status, location } => {
            if !(300..400).contains(&status) {
                return (StatusCode::BAD_REQUEST, "a redirect status is 3xx").into_response();
            }
            FaultKind::Redirect { status, location }
        }
        FaultKindBody::StatusThenBrokenBody { status, break_body } => {
            if StatusCode::from_u16(status).is_err() {
                return (StatusCode::BAD_REQUEST, "invalid status").into_response();
            }
            FaultKind::StatusThenBrokenBody { status, break_body }
        }
        FaultKindBody::DelayMs(millis) => FaultKind::Delay(Duration::from_millis(millis)),
        FaultKindBody::DropAfterProcessing => FaultKind::DropAfterProcessing,
        FaultKindBody::DropBeforeProcessing => FaultKind::DropBeforeProcessing,
    };
    let id = shared.lock().inject(Fault {
        endpoint: body.endpoint,
        kind,
        times: body.times,
    });
    Json(json!({ "id": id })).into_response()
}

#[derive(Deserialize)]
struct FiredQuery {
    id: u64,
}

async fn fault_fired(State(shared): Shd, Query(query): Query<FiredQuery>) -> Response {
    match shared.lock().fired(query.id) {
        Some(fired) => Json(json!({ "fired": fired })).into_response(),
        None => (StatusCode::NOT_FOUND, "no such fault").into_response(),
    }
}

#[derive(Deserialize)]
struct LatencyBody {
    endpoint: Endpoint,
    millis: u64,
}

async fn set_latency(State(shared): Shd, Json(body): Json<LatencyBody>) -> StatusCode {
    shared
        .lock()
        .set_latency(body.endpoint, Duration::from_millis(body.millis));
    StatusCode::NO_CONTENT
}

async fn list_requests(State(shared): Shd) -> Json<Value> {
    let started = shared.started;
    let entries: Vec<Value> = shared
        .lock()
        .requests()
        .into_iter()
        .map(|r| {
            let (auth, basic_client_id) = match r.auth {
                AuthKind::Basic { client_id } => ("basic", Some(client_id)),
                AuthKind::Bearer => ("bearer", None),
                AuthKind::ApiKey => ("api_key", None),
                AuthKind::None => ("none", None),
            };
            json!({
                "method": r.method,
                "path": r.path,
                "query": r.query,
                "at_ms": r.at.saturating_duration_since(started).as_secs_f64() * 1000.0,
                "auth": auth,
                "basic_client_id": basic_client_id,
                "grant_type": r.grant_type,
                "form_client_id": r.form_client_id,
                "presentation": r.presentation,
                "status": r.status,
                "handling_ms": r.handling.as_secs_f64() * 1000.0,
                "app": r.app,
            })
        })
        .collect();
    Json(Value::Array(entries))
}

async fn clear_requests(State(shared): Shd) -> StatusCode {
    shared.lock().clear_requests();
    StatusCode::NO_CONTENT
}
