//! Keap v1 REST Hooks under `/crm/rest/v1/hooks`: event keys, create (verifying during the
//! call), list, get, delete, `verify` and `delayedVerify`. Deliveries are in `hook_delivery`.
//!
//! Sources: Keap's interactive v1 docs, section "REST Hooks" (as generated into
//! infusionsoft-nodejs `docs/RESTHooksApi.md`: `GET /hooks/event_keys`, `GET|POST /hooks`,
//! `GET|PUT|DELETE /hooks/{key}`, `POST /hooks/{key}/verify`, the `RestHook` model
//! `{key, eventKey, hookUrl, status}`); `POST /hooks/{key}/delayedVerify`, where the receiver
//! hands back the `X-Hook-Secret` it was sent ("Delayed Confirmation", Keap's AsyncAPI
//! description at asyncapi.apis.io/asyncapis/keap/keap-resthooks-asyncapi); a malformed create
//! body answers Keap's usual `{"message":"Input could not be converted to a valid request"}`
//! (infusionsoft-php issue 93). Hooks are per app, so `GET /hooks` shows every integration's
//! hooks of the account.
//!
//! Not documented by Keap, chosen here: an unknown `eventKey` or a `hookUrl` that is not an
//! absolute http(s) URL is `400 {"message": ...}`; an unknown key is `404`; `delayedVerify`
//! with a wrong or missing secret is `400`; create answers `200`. `PUT /hooks/{key}` is not
//! simulated (404).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use crate::api::Tenant;
use crate::contacts::SHAPE_ERROR_MESSAGE;
use crate::credentials;
use crate::hook_delivery::{self, SECRET_HEADER};
use crate::hook_store::{DelayedVerify, hook_json};
use crate::respond::{json_response, message};
use crate::state::Shared;

/// Keap's answer to `GET /hooks/event_keys` (noun.verb; the list Keap's API returns is the
/// authority, so clients must read it rather than hard-code this).
pub(crate) const EVENT_KEYS: &[&str] = &[
    "appointment.add",
    "appointment.delete",
    "appointment.edit",
    "company.add",
    "company.delete",
    "company.edit",
    "contact.add",
    "contact.delete",
    "contact.edit",
    "contact.redact",
    "contactGroup.add",
    "contactGroup.applied",
    "contactGroup.delete",
    "contactGroup.edit",
    "contactGroup.removed",
    "invoice.add",
    "invoice.delete",
    "invoice.edit",
    "invoice.payment.add",
    "invoice.payment.delete",
    "invoice.payment.edit",
    "leadsource.add",
    "leadsource.delete",
    "leadsource.edit",
    "note.add",
    "note.delete",
    "note.edit",
    "opportunity.add",
    "opportunity.delete",
    "opportunity.edit",
    "opportunity.stage_move",
    "order.add",
    "order.delete",
    "order.edit",
    "product.add",
    "product.delete",
    "product.edit",
    "subscription.add",
    "subscription.delete",
    "subscription.edit",
    "task.add",
    "task.delete",
    "task.edit",
    "user.activate",
    "user.add",
    "user.edit",
];

pub(crate) fn is_event_key(event_key: &str) -> bool {
    EVENT_KEYS.contains(&event_key)
}

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/hooks", get(list).post(create))
        .route("/hooks/event_keys", get(event_keys))
        .route("/hooks/{key}", get(get_one).delete(delete))
        .route("/hooks/{key}/verify", post(verify))
        .route("/hooks/{key}/delayedVerify", post(delayed_verify))
}

fn not_found(key: &str) -> Response {
    message(
        StatusCode::NOT_FOUND,
        &format!("Hook with key {key} not found"),
    )
}

fn hook_response(hook: &crate::types::Hook) -> Response {
    json_response(StatusCode::OK, hook_json(hook))
}

async fn event_keys(_tenant: Tenant) -> Response {
    json_response(StatusCode::OK, Value::from(EVENT_KEYS.to_vec()))
}

async fn list(tenant: Tenant, State(shared): State<Arc<Shared>>) -> Response {
    let hooks: Vec<Value> = shared
        .lock()
        .hooks
        .list(&tenant.app)
        .iter()
        .map(hook_json)
        .collect();
    json_response(StatusCode::OK, Value::Array(hooks))
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "eventKey")]
    event_key: String,
    #[serde(rename = "hookUrl")]
    hook_url: String,
}

fn is_hook_url(raw: &str) -> bool {
    url::Url::parse(raw)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
}

async fn create(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !credentials::is_json_content_type(&headers) {
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content type not supported",
        );
    }
    let Ok(request) = serde_json::from_slice::<CreateBody>(&body) else {
        return message(StatusCode::BAD_REQUEST, SHAPE_ERROR_MESSAGE);
    };
    if !is_event_key(&request.event_key) {
        return message(
            StatusCode::BAD_REQUEST,
            &format!("Invalid eventKey: {}", request.event_key),
        );
    }
    if !is_hook_url(&request.hook_url) {
        return message(StatusCode::BAD_REQUEST, "Invalid hookUrl");
    }
    let created = shared
        .lock()
        .hooks
        .create(&tenant.app, &request.event_key, &request.hook_url);
    // Keap verifies during the create call, so the answer already says whether it worked.
    match hook_delivery::handshake(&shared, &tenant.app, &created.key).await {
        Some(hook) => hook_response(&hook),
        // Deleted by a concurrent request while the receiver was being asked.
        None => hook_response(&created),
    }
}

async fn get_one(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Response {
    match shared.lock().hooks.get(&tenant.app, &key) {
        Some(hook) => hook_response(&hook),
        None => not_found(&key),
    }
}

async fn delete(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Response {
    if shared.lock().hooks.delete(&tenant.app, &key) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&key)
    }
}

/// Keap: "Verify a Hook Subscription" — a new handshake now; how a hook is re-activated.
async fn verify(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Response {
    match hook_delivery::handshake(&shared, &tenant.app, &key).await {
        Some(hook) => hook_response(&hook),
        None => not_found(&key),
    }
}

async fn delayed_verify(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let secret = headers
        .get(SECRET_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let outcome = shared
        .lock()
        .hooks
        .delayed_verify(&tenant.app, &key, secret);
    match outcome {
        DelayedVerify::Verified(hook) => hook_response(&hook),
        DelayedVerify::NotFound => not_found(&key),
        DelayedVerify::WrongSecret => message(StatusCode::BAD_REQUEST, "Invalid X-Hook-Secret"),
    }
}
