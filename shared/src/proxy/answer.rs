//! Keap's answer as the caller receives it:
//! `{"status": 200, "headers": {...}, "body": ..., "body_encoding": "json"}`.
//!
//! - Headers: exactly `content-type`, `location` and every `x-keap-*`, names lower-case, a
//!   repeated header's values joined with `", "`; nothing else (never `set-cookie`).
//! - Body: the parsed JSON (`json`), the UTF-8 text (`text`), base64 of bytes that are not
//!   UTF-8 (`base64`), or `null` (`empty`).
//! - In answers to REST Hooks paths (`/v1/hooks…`), the token segment of every URL under
//!   keapalive's `/keap/hooks/` route is replaced: a token keapalive issues (256 random bits) by
//!   `sha256-<its SHA-256>`, anything else by `***`. Those tokens are the hook receiver's only
//!   authentication, and the proxy's caller does not need them; the hash (what the
//!   subscription's item is keyed by) lets keapalive's operator and check tell their own hooks,
//!   and cannot be reversed — unlike the hash of another integration's guessable secret.
//! - Lambda refuses a response over 6 MB: an answer that would not fit is
//!   [`ProxyError::ResponseTooLarge`], never a truncated body.

use std::collections::BTreeMap;

use base64::Engine;
use reqwest::header::HeaderMap;
use serde::Serialize;
use serde_json::Value;

use super::error::ProxyError;
use crate::keap::{KeapAnswer, KeapPath};
use crate::token_store::HookToken;

/// What replaces a segment under the route that is not a token keapalive issued.
pub const MASKED_SEGMENT: &str = "***";
/// Lambda's limit on a synchronous invocation's response, in bytes ("6 MB", 6,291,456).
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
/// keapalive's REST Hooks receiver route; the segment after it is the hook's token.
pub const HOOK_ROUTE: &str = "/keap/hooks/";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyAnswer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    pub body_encoding: BodyEncoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    Json,
    Text,
    Base64,
    Empty,
}

impl ProxyAnswer {
    /// The caller's answer to `path`, or `ResponseTooLarge`.
    pub fn shape(path: &KeapPath, answer: KeapAnswer) -> Result<Self, ProxyError> {
        if answer.over_limit {
            return Err(too_large(
                answer
                    .declared_len
                    .map(|n| format!("{n} bytes"))
                    .unwrap_or_else(|| format!("more than {MAX_RESPONSE_BYTES} bytes")),
            ));
        }
        let headers = selected_headers(&answer.headers);
        let (mut body, body_encoding) = decode_body(headers.get("content-type"), answer.body);
        if path.is_rest_hooks() {
            mask_hook_tokens(&mut body);
        }
        let shaped = Self {
            status: answer.status,
            headers,
            body,
            body_encoding,
        };
        let size = serde_json::to_vec(&shaped)
            .map_err(|_| ProxyError::Unavailable("could not encode Keap's answer".to_owned()))?
            .len();
        if size > MAX_RESPONSE_BYTES {
            return Err(too_large(format!(
                "{size} bytes as the function's response"
            )));
        }
        Ok(shaped)
    }
}

fn too_large(size: String) -> ProxyError {
    ProxyError::ResponseTooLarge(format!(
        "Keap's answer is {size}, over Lambda's {MAX_RESPONSE_BYTES}-byte response limit; \
         nothing was truncated. Ask for less: a smaller `limit` (with `offset`) on v1, a smaller \
         `page_size` on v2, or fewer `optional_properties`/`fields`. The request itself was \
         carried out."
    ))
}

/// `content-type`, `location` and `x-keap-*`; `HeaderMap` names are already lower-case.
fn selected_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut selected: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if !(name == "content-type" || name == "location" || name.starts_with("x-keap-")) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        selected
            .entry(name.to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    selected
}

/// JSON when Keap says so (or says nothing) and it parses; else text if UTF-8; else base64.
fn decode_body(content_type: Option<&String>, body: Vec<u8>) -> (Value, BodyEncoding) {
    if body.is_empty() {
        return (Value::Null, BodyEncoding::Empty);
    }
    let says_json = content_type.is_none_or(|t| t.to_ascii_lowercase().contains("json"));
    if says_json && let Ok(value) = serde_json::from_slice::<Value>(&body) {
        return (value, BodyEncoding::Json);
    }
    match String::from_utf8(body) {
        Ok(text) => (Value::String(text), BodyEncoding::Text),
        Err(not_utf8) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(not_utf8.as_bytes())),
            BodyEncoding::Base64,
        ),
    }
}

/// Every string in the body (a `hookUrl`, or a text body) with the segment after
/// [`HOOK_ROUTE`] replaced (module docs).
fn mask_hook_tokens(value: &mut Value) {
    match value {
        Value::String(text) if text.contains(HOOK_ROUTE) => *text = masked(text),
        Value::Array(items) => items.iter_mut().for_each(mask_hook_tokens),
        Value::Object(fields) => fields.values_mut().for_each(mask_hook_tokens),
        _ => {}
    }
}

fn masked(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(HOOK_ROUTE) {
        let after = at + HOOK_ROUTE.len();
        out.push_str(&rest[..after]);
        let token_len = rest[after..]
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '&') || c.is_whitespace())
            .unwrap_or(rest.len() - after);
        if token_len > 0 {
            let segment = &rest[after..after + token_len];
            match HookToken::from_path_segment(segment) {
                Some(token) => out.push_str(&token.hash().in_url()),
                None => out.push_str(MASKED_SEGMENT),
            }
        }
        rest = &rest[after + token_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderName, HeaderValue};
    use serde_json::json;

    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> KeapAnswer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        KeapAnswer {
            status,
            headers: map,
            body: body.to_vec(),
            declared_len: Some(body.len() as u64),
            over_limit: false,
        }
    }

    fn path(raw: &str) -> KeapPath {
        KeapPath::parse(raw).unwrap()
    }

    #[test]
    fn headers_are_the_three_kinds_lower_cased_and_joined() {
        let shaped = ProxyAnswer::shape(
            &path("/v1/contacts"),
            answer(
                200,
                &[
                    ("Content-Type", "application/json;charset=UTF-8"),
                    ("X-Keap-Product-Quota-Available", "149000"),
                    ("x-keap-tenant-id", "ab123.infusionsoft.com"),
                    ("X-Keap-Warning", "one"),
                    ("x-keap-warning", "two"),
                    ("Set-Cookie", "session=secret"),
                    ("Server", "Apigee"),
                    ("X-Request-Id", "r-1"),
                    ("Strict-Transport-Security", "max-age=1"),
                ],
                br#"{"contacts":[],"count":0}"#,
            ),
        )
        .unwrap();
        assert_eq!(
            shaped.headers,
            BTreeMap::from([
                (
                    "content-type".to_owned(),
                    "application/json;charset=UTF-8".to_owned()
                ),
                (
                    "x-keap-product-quota-available".to_owned(),
                    "149000".to_owned()
                ),
                (
                    "x-keap-tenant-id".to_owned(),
                    "ab123.infusionsoft.com".to_owned()
                ),
                ("x-keap-warning".to_owned(), "one, two".to_owned()),
            ])
        );
        assert_eq!(shaped.body, json!({"contacts": [], "count": 0}));
        assert_eq!(shaped.body_encoding, BodyEncoding::Json);
        assert_eq!(
            serde_json::to_value(&shaped).unwrap()["body_encoding"],
            "json"
        );
    }

    #[test]
    fn bodies_are_json_text_base64_or_empty() {
        let p = path("/v1/files/1");
        let shaped = ProxyAnswer::shape(&p, answer(204, &[], b"")).unwrap();
        assert_eq!(
            (shaped.body, shaped.body_encoding),
            (Value::Null, BodyEncoding::Empty)
        );
        let shaped =
            ProxyAnswer::shape(&p, answer(200, &[("content-type", "text/plain")], b"12")).unwrap();
        assert_eq!(
            (shaped.body, shaped.body_encoding),
            (json!("12"), BodyEncoding::Text)
        );
        let shaped = ProxyAnswer::shape(
            &p,
            answer(500, &[("content-type", "application/json")], b"<html>oops"),
        )
        .unwrap();
        assert_eq!(
            (shaped.body, shaped.body_encoding),
            (json!("<html>oops"), BodyEncoding::Text)
        );
        let shaped = ProxyAnswer::shape(
            &p,
            answer(
                200,
                &[("content-type", "application/pdf")],
                &[0x25, 0xff, 0x00],
            ),
        )
        .unwrap();
        assert_eq!(
            (shaped.body, shaped.body_encoding),
            (json!("Jf8A"), BodyEncoding::Base64)
        );
        let shaped = ProxyAnswer::shape(&p, answer(404, &[], br#"{"message":"x"}"#)).unwrap();
        assert_eq!(shaped.status, 404);
        assert_eq!(shaped.body_encoding, BodyEncoding::Json);
    }

    #[test]
    fn a_redirect_is_data_with_its_location() {
        let shaped = ProxyAnswer::shape(
            &path("/v1/contacts"),
            answer(302, &[("Location", "https://elsewhere.example/x")], b""),
        )
        .unwrap();
        assert_eq!(shaped.status, 302);
        assert_eq!(shaped.headers["location"], "https://elsewhere.example/x");
    }

    #[test]
    fn hook_tokens_are_masked_in_hooks_answers_only() {
        let token = HookToken::generate().unwrap();
        let body = format!(
            r#"[{{"key":"7","eventKey":"contact.add","status":"Verified",
            "hookUrl":"https://abc.execute-api.us-east-1.amazonaws.com/keap/hooks/{}?x=1"}},
            {{"key":"8","hookUrl":"https://other.example/hooks/keep-me"}},
            {{"key":"9","hookUrl":"https://abc.example/prod/keap/hooks/an0ther/"}}]"#,
            token.expose_secret()
        );
        let shaped = ProxyAnswer::shape(
            &path("/v1/hooks"),
            answer(
                200,
                &[("content-type", "application/json")],
                body.as_bytes(),
            ),
        )
        .unwrap();
        let text = shaped.body.to_string();
        assert!(!text.contains(token.expose_secret()), "{text}");
        assert!(!text.contains("an0ther"), "{text}");
        // keapalive's token: its hash, which tells the subscription and delivers nothing.
        assert_eq!(
            shaped.body[0]["hookUrl"],
            format!(
                "https://abc.execute-api.us-east-1.amazonaws.com/keap/hooks/{}?x=1",
                token.hash().in_url()
            )
        );
        assert_eq!(
            shaped.body[1]["hookUrl"],
            "https://other.example/hooks/keep-me"
        );
        // Anything else there (perhaps a guessable secret): no hash to brute-force.
        assert_eq!(
            shaped.body[2]["hookUrl"],
            "https://abc.example/prod/keap/hooks/***/"
        );

        let single = br#"{"key":"7","hookUrl":"https://h.example/keap/hooks/T0K3N"}"#;
        let shaped =
            ProxyAnswer::shape(&path("/v1/hooks/7/verify"), answer(200, &[], single)).unwrap();
        assert_eq!(shaped.body["hookUrl"], "https://h.example/keap/hooks/***");

        let shaped = ProxyAnswer::shape(&path("/v1/contacts/7"), answer(200, &[], single)).unwrap();
        assert_eq!(shaped.body["hookUrl"], "https://h.example/keap/hooks/T0K3N");
    }

    #[test]
    fn an_answer_over_six_megabytes_is_refused_whole() {
        let p = path("/v1/contacts");
        let mut over = answer(200, &[], b"");
        over.over_limit = true;
        over.declared_len = Some(7_000_000);
        let error = ProxyAnswer::shape(&p, over).unwrap_err();
        assert!(
            matches!(&error, ProxyError::ResponseTooLarge(m) if m.contains("7000000 bytes") && m.contains("limit")),
            "{error}"
        );

        // Fits as bytes, not once escaped as a JSON string.
        let quotes = vec![b'"'; MAX_RESPONSE_BYTES / 2 + 10];
        let error = ProxyAnswer::shape(&p, answer(200, &[("content-type", "text/plain")], &quotes))
            .unwrap_err();
        assert!(matches!(error, ProxyError::ResponseTooLarge(_)));

        let fits = vec![b'a'; MAX_RESPONSE_BYTES - 1_000];
        let shaped =
            ProxyAnswer::shape(&p, answer(200, &[("content-type", "text/plain")], &fits)).unwrap();
        assert_eq!(shaped.body_encoding, BodyEncoding::Text);
    }
}
