//! Reading credentials from request headers and form bodies.

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use base64::Engine;

use crate::types::AuthKind;

pub(crate) const API_KEY_HEADER: &str = "x-keap-api-key";

pub(crate) enum Authorization {
    Basic {
        client_id: String,
        client_secret: String,
    },
    MalformedBasic,
    Bearer(String),
    Other,
    Missing,
}

pub(crate) fn authorization(headers: &HeaderMap) -> Authorization {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Authorization::Missing;
    };
    let Ok(value) = value.to_str() else {
        return Authorization::Other;
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((id, secret)) => Authorization::Basic {
                client_id: id.to_owned(),
                client_secret: secret.to_owned(),
            },
            None => Authorization::MalformedBasic,
        }
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
        Authorization::Bearer(rest.trim().to_owned())
    } else {
        Authorization::Other
    }
}

pub(crate) fn api_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

pub(crate) fn auth_kind(headers: &HeaderMap) -> AuthKind {
    match authorization(headers) {
        Authorization::Basic { client_id, .. } => AuthKind::Basic { client_id },
        Authorization::Bearer(_) => AuthKind::Bearer,
        _ if api_key(headers).is_some() => AuthKind::ApiKey,
        _ => AuthKind::None,
    }
}

/// Parses `application/x-www-form-urlencoded` text; `None` when a name occurs twice
/// (RFC 6749 §3.1: parameters must not be repeated).
pub(crate) fn parse_form(text: &[u8]) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(text) {
        if out.insert(name.into_owned(), value.into_owned()).is_some() {
            return None;
        }
    }
    Some(out)
}

pub(crate) fn is_form_content_type(headers: &HeaderMap) -> bool {
    content_type_is(headers, "application/x-www-form-urlencoded")
}

pub(crate) fn is_json_content_type(headers: &HeaderMap) -> bool {
    content_type_is(headers, "application/json")
}

fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(expected))
}
