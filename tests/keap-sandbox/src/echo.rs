//! Sandbox-only routes (not Keap's): `ANY /crm/rest/v1/_echo/{*rest}` and
//! `ANY /crm/rest/v2/_echo/{*rest}` authenticate like every Keap route (401 with the gateway's
//! body otherwise), then answer `200` with what arrived, so keap-proxy's tests can check that a
//! caller's method, path, query and body reach Keap unchanged and come back verbatim:
//!
//! `{"method", "path", "query", "body" (the JSON sent, or null), "content_type", "accept",
//!  "auth": "bearer"|"api_key", "app"}`
//!
//! The answer carries two headers Keap sends on every REST answer (developer.infusionsoft.com,
//! "API Token Quota and Usage Measurements"; lower-case since 2022-10-31),
//! `x-keap-product-throttle-available` and `x-keap-tenant-id`, plus a `set-cookie` the proxy
//! must not pass on. Everything else under `/crm/rest` that no route serves is the usual `404`.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::json;

use crate::api::Tenant;
use crate::credentials::{self, Authorization};
use crate::respond::json_response;

pub(crate) async fn echo_v1(
    tenant: Tenant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    echo("v1", tenant, method, uri, headers, body)
}

pub(crate) async fn echo_v2(
    tenant: Tenant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    echo("v2", tenant, method, uri, headers, body)
}

fn echo(
    version: &str,
    tenant: Tenant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A nested router sees the path without its prefix.
    let path = if uri.path().starts_with("/crm/rest/") {
        uri.path().to_owned()
    } else {
        format!("/crm/rest/{version}{}", uri.path())
    };
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let auth = match credentials::authorization(&headers) {
        Authorization::Bearer(_) => "bearer",
        _ => "api_key",
    };
    let sent: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| json!({"not_json_bytes": body.len()}))
    };
    let mut response = json_response(
        StatusCode::OK,
        json!({
            "method": method.as_str(),
            "path": path,
            "query": uri.query(),
            "body": sent,
            "content_type": text(header::CONTENT_TYPE),
            "accept": text(header::ACCEPT),
            "auth": auth,
            "app": tenant.app,
        }),
    );
    let out = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("{}.infusionsoft.com", tenant.app)) {
        out.insert("x-keap-tenant-id", value);
    }
    out.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sandbox_session=abc; HttpOnly"),
    );
    response
}
