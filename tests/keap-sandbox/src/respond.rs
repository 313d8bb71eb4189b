//! Response bodies in the shapes Keap's different layers use.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// The token endpoint's OAuth errors; token responses must never be cached.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = json_response(
        status,
        json!({"error": error, "error_description": description}),
    );
    no_store(&mut response);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"keap\""),
        );
    }
    response
}

pub(crate) fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Keap's REST layer: `{"message": "..."}`.
pub(crate) fn message(status: StatusCode, text: &str) -> Response {
    json_response(status, json!({"message": text}))
}

/// Keap's API gateway (Apigee) answers auth and quota failures itself, in this shape.
pub(crate) fn gateway_fault(status: StatusCode, faultstring: &str, errorcode: &str) -> Response {
    json_response(
        status,
        json!({"fault": {"faultstring": faultstring, "detail": {"errorcode": errorcode}}}),
    )
}

/// The browser-facing pages of the authorize endpoint (no redirect for untrusted input).
pub(crate) fn html_error(status: StatusCode, text: &str) -> Response {
    let body = format!("<!doctype html><title>Keap sandbox</title><p>{text}</p>");
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
