//! API Gateway HTTP API (payload format 2.0) events and responses, as the deployed stack's
//! `GET /oauth/callback` route delivers them to oauth-callback.
//! <https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html>

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};

use crate::runtime_api::ACCOUNT_ID;

/// The event for `method path?query` with `headers` (names lowercased, repeated ones joined
/// with commas, as API Gateway does).
pub fn http_event(
    method: &str,
    path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    source_ip: &str,
) -> Value {
    let mut header_map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        header_map
            .entry(name.to_ascii_lowercase())
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(raw_query.as_bytes()) {
        query
            .entry(name.into_owned())
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let user_agent = header_map.get("user-agent").cloned().unwrap_or_default();
    let route_key = format!("{method} {path}");
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": header_map,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "local",
            "domainName": header_map.get("host").cloned().unwrap_or_else(|| "localhost".to_owned()),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": user_agent,
            },
            "requestId": format!("local-{now}"),
            "routeKey": route_key,
            "stage": "$default",
            "time": "",
            "timeEpoch": now as u64,
        },
        "isBase64Encoded": false,
    });
    // API Gateway leaves the key out when there is no query string.
    if !query.is_empty() {
        event["queryStringParameters"] = json!(query);
    }
    event
}

/// What the function answered, as an HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads a payload-2.0 response (`statusCode`, `headers`, `body`, `isBase64Encoded`).
pub fn http_response(answer: &Value) -> Result<HttpResponse, String> {
    let status = answer
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .ok_or_else(|| format!("the function's answer has no statusCode: {answer}"))?;
    let headers = answer
        .get("headers")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let body = answer.get("body").and_then(Value::as_str).unwrap_or("");
    let body = if answer.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| format!("the function's body is not base64: {e}"))?
    } else {
        body.as_bytes().to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// `page` as the HTTP response API Gateway sends back.
pub fn into_axum_response(page: HttpResponse) -> axum::response::Response {
    let mut response = axum::response::Response::builder().status(page.status);
    for (name, value) in &page.headers {
        response = response.header(name, value);
    }
    response
        .body(axum::body::Body::from(page.body))
        .unwrap_or_else(|e| {
            plain_response(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        })
}

/// A text response with `status` (API Gateway's own answers: 404, a failed integration's 500).
pub fn plain_response(status: axum::http::StatusCode, text: String) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(text));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_carries_the_query_like_api_gateway() {
        let event = http_event(
            "GET",
            "/oauth/callback",
            "code=abc&state=s%2B1&x=1&x=2",
            &[("Host".into(), "127.0.0.1:8787".into())],
            "127.0.0.1",
        );
        assert_eq!(event["rawQueryString"], "code=abc&state=s%2B1&x=1&x=2");
        assert_eq!(event["queryStringParameters"]["state"], "s+1");
        assert_eq!(event["queryStringParameters"]["x"], "1,2");
        assert_eq!(event["requestContext"]["http"]["method"], "GET");
        assert_eq!(event["headers"]["host"], "127.0.0.1:8787");
        let without_query = http_event("GET", "/oauth/callback", "", &[], "127.0.0.1");
        assert!(without_query.get("queryStringParameters").is_none());
    }

    #[test]
    fn response_decodes_base64_bodies() {
        let plain = http_response(&json!({"statusCode": 200, "body": "<p>ok</p>",
            "headers": {"content-type": "text/html"}}))
        .unwrap();
        assert_eq!(
            (plain.status, plain.body.as_slice()),
            (200, &b"<p>ok</p>"[..])
        );
        let encoded =
            http_response(&json!({"statusCode": 400, "body": "aGk=", "isBase64Encoded": true}))
                .unwrap();
        assert_eq!(encoded.body, b"hi");
        assert!(http_response(&json!({"body": ""})).is_err());
    }
}
