//! Keap REST v1 under `/crm/rest/v1`: authentication, account profile, contacts (tags and REST
//! Hooks have modules of their own).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

use crate::contacts::{self, Rejection, SHAPE_ERROR_MESSAGE};
use crate::credentials::{self, Authorization};
use crate::respond::{gateway_fault, json_response, message};
use crate::state::{AccessCheck, RouteClass, Shared};
use crate::tags;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/account/profile", get(profile))
        .route("/contacts", get(list_contacts).put(upsert_contact))
        .route("/contacts/model", get(contact_model))
        .route("/contacts/{id}", get(get_contact))
        .route("/contacts/{id}/tags", post(tags::apply))
        .route("/tags", get(tags::list).post(tags::create))
        .route("/tags/{id}", get(tags::get))
        .route("/_echo/{*rest}", any(crate::echo::echo_v1))
        .merge(crate::hooks::router())
}

/// REST v2: only the sandbox's echo route (see `echo`); anything else is the usual 404.
pub(crate) fn v2_router() -> Router<Arc<Shared>> {
    Router::new().route("/_echo/{*rest}", any(crate::echo::echo_v2))
}

/// The Keap app (tenant) the request's credential belongs to. Extracting it is the gateway's
/// auth check: a missing, unknown, expired or revoked credential ends the request with 401.
pub(crate) struct Tenant {
    pub app: String,
}

pub(crate) enum AuthFailure {
    InvalidToken,
    ExpiredToken,
    InvalidKey,
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        match self {
            AuthFailure::InvalidToken => gateway_fault(
                StatusCode::UNAUTHORIZED,
                "Invalid Access Token",
                "keymanagement.service.invalid_access_token",
            ),
            AuthFailure::ExpiredToken => gateway_fault(
                StatusCode::UNAUTHORIZED,
                "Access Token expired",
                "keymanagement.service.access_token_expired",
            ),
            AuthFailure::InvalidKey => gateway_fault(
                StatusCode::UNAUTHORIZED,
                "Invalid ApiKey",
                "oauth.v2.InvalidApiKey",
            ),
        }
    }
}

impl FromRequestParts<Arc<Shared>> for Tenant {
    type Rejection = AuthFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(&parts.headers, shared)
    }
}

fn authenticate(headers: &HeaderMap, shared: &Shared) -> Result<Tenant, AuthFailure> {
    if let Authorization::Bearer(token) = credentials::authorization(headers) {
        return match shared.lock().check_access_token(&token) {
            AccessCheck::Valid { app } => Ok(Tenant { app }),
            AccessCheck::Expired => Err(AuthFailure::ExpiredToken),
            AccessCheck::Invalid => Err(AuthFailure::InvalidToken),
        };
    }
    if let Some(key) = credentials::api_key(headers) {
        return match shared.lock().check_service_account_key(&key) {
            Some(app) => Ok(Tenant { app }),
            None => Err(AuthFailure::InvalidKey),
        };
    }
    Err(AuthFailure::InvalidToken)
}

/// Unknown paths: the gateway authenticates first, then the backend has no such resource.
pub(crate) async fn fallback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if RouteClass::of(uri.path()) == RouteClass::Api
        && let Err(unauthorized) = authenticate(&headers, &shared)
    {
        return unauthorized.into_response();
    }
    message(StatusCode::NOT_FOUND, "Resource not found")
}

async fn profile(tenant: Tenant) -> Response {
    let app = tenant.app;
    json_response(
        StatusCode::OK,
        json!({
            "id": 1,
            "name": format!("Sandbox {app}"),
            "email": format!("owner@{app}.example"),
            "website": format!("https://{app}.example"),
            "time_zone": "UTC",
            "currency_code": "USD",
            "language_tag": "en-US",
            "business_type": "Other",
            "phone": null,
            "address": null,
        }),
    )
}

const OPTIONAL_PROPERTIES: &[&str] = &[
    "custom_fields",
    "fax_numbers",
    "job_title",
    "lead_source_id",
    "middle_name",
    "notes",
    "opt_in_reason",
    "preferred_locale",
    "preferred_name",
    "relationships",
    "source_type",
    "time_zone",
    "website",
];

async fn contact_model(tenant: Tenant, State(shared): State<Arc<Shared>>) -> Response {
    let custom_fields: Vec<serde_json::Value> = shared
        .lock()
        .app(&tenant.app)
        .map(|data| {
            data.custom_fields
                .iter()
                .map(|f| {
                    json!({
                        "id": f.id,
                        "label": f.label,
                        "field_type": f.field_type,
                        "options": [],
                        "record_type": "CONTACT",
                        "field_name": f.label.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json_response(
        StatusCode::OK,
        json!({"custom_fields": custom_fields, "optional_properties": OPTIONAL_PROPERTIES}),
    )
}

async fn upsert_contact(
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
    let outcome = contacts::parse_upsert(&body)
        .and_then(|request| contacts::upsert(&mut shared.lock(), &tenant.app, request));
    match outcome {
        Ok((true, contact)) => json_response(StatusCode::CREATED, contact),
        Ok((false, contact)) => json_response(StatusCode::OK, contact),
        Err(Rejection::Shape) => message(StatusCode::BAD_REQUEST, SHAPE_ERROR_MESSAGE),
        Err(Rejection::Semantic(text)) => message(StatusCode::BAD_REQUEST, &text),
    }
}

pub(crate) fn invalid_contact_id() -> Response {
    message(StatusCode::BAD_REQUEST, "Invalid contact id")
}

pub(crate) fn contact_not_found(id: i64) -> Response {
    message(
        StatusCode::NOT_FOUND,
        &format!("Contact with id {id} not found"),
    )
}

async fn get_contact(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(id) = raw_id.parse::<i64>() else {
        return invalid_contact_id();
    };
    let params = credentials::parse_form(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let with_custom_fields = params
        .get("optional_properties")
        .is_some_and(|list| list.split(',').any(|p| p.trim() == "custom_fields"));
    let sandbox = shared.lock();
    match sandbox
        .app(&tenant.app)
        .and_then(|data| data.contacts.get(&id))
    {
        Some(contact) => json_response(StatusCode::OK, contact.to_json(with_custom_fields)),
        None => contact_not_found(id),
    }
}

/// `GET /contacts?email=&limit=&offset=`: a lookup clients may use before deciding to create.
async fn list_contacts(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(params) = credentials::parse_form(query.unwrap_or_default().as_bytes()) else {
        return message(StatusCode::BAD_REQUEST, "A parameter is repeated");
    };
    let (limit, offset) = match tags::paging(&params) {
        Ok(paging) => paging,
        Err(text) => return message(StatusCode::BAD_REQUEST, &text),
    };
    let email = params.get("email").map(|e| e.to_ascii_lowercase());
    let sandbox = shared.lock();
    let matching: Vec<serde_json::Value> = sandbox
        .app(&tenant.app)
        .map(|data| {
            data.contacts
                .values()
                .map(|c| c.to_json(false))
                .filter(|c| match &email {
                    None => true,
                    Some(wanted) => c["email_addresses"].as_array().is_some_and(|list| {
                        list.iter().any(|e| {
                            e["email"]
                                .as_str()
                                .is_some_and(|x| x.eq_ignore_ascii_case(wanted))
                        })
                    }),
                })
                .collect()
        })
        .unwrap_or_default();
    let count = matching.len();
    let page: Vec<serde_json::Value> = matching.into_iter().skip(offset).take(limit).collect();
    json_response(StatusCode::OK, json!({"contacts": page, "count": count}))
}
