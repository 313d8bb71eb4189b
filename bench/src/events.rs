//! The events each function receives, shaped as Lambda delivers them.

use serde_json::{Value, json};

pub fn hello() -> Value {
    json!({ "bench": "hello", "n": 1 })
}

/// EventBridge's scheduled event, as the hourly rule sends it.
pub fn scheduled() -> Value {
    json!({
        "version": "0",
        "id": "9b6c1d2e-0000-4000-8000-000000000000",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-23T12:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/keapalive-refresh"],
        "detail": {}
    })
}

/// A direct invocation of contact-upsert.
pub fn upsert(email: &str, tags: &[&str]) -> Value {
    let mut contact = json!({
        "email": email,
        "given_name": "Ada",
        "family_name": "Lovelace",
        "company": "Analytical Engines"
    });
    if !tags.is_empty() {
        contact["tags"] = json!(tags);
    }
    json!({ "connection_id": "default", "contact": contact, "match_on": "email" })
}

/// A direct invocation of keap-proxy: look a contact up by email.
pub fn proxy_get(email: &str) -> Value {
    json!({ "connection_id": "default", "method": "GET", "path": "/v1/contacts",
            "query": { "email": email } })
}

/// A direct invocation of access-token: the default connection's token, 5 minutes valid.
pub fn access_token() -> Value {
    json!({ "connection_id": "default", "min_valid_secs": 300 })
}

/// API Gateway HTTP API (payload 2.0): Keap's redirect to `GET /oauth/callback?code&state`.
pub fn callback(raw_query: &str) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "GET /oauth/callback",
        "rawPath": "/oauth/callback",
        "rawQueryString": raw_query,
        "headers": {
            "host": "keapalive.test",
            "user-agent": "Mozilla/5.0 (keapalive-bench)",
            "accept": "text/html"
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "keapalive.test",
            "domainPrefix": "keapalive",
            "http": {
                "method": "GET",
                "path": "/oauth/callback",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "Mozilla/5.0 (keapalive-bench)"
            },
            "requestId": "bench-request",
            "routeKey": "GET /oauth/callback",
            "stage": "$default",
            "time": "23/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1_795_435_200_000u64
        },
        "isBase64Encoded": false
    })
}

/// The objects in the bench's one Keap delivery: a `contact.add` of three new contacts.
pub const HOOK_DELIVERY_OBJECTS: [i64; 3] = [5_101, 5_102, 5_103];

/// API Gateway HTTP API (payload 2.0): Keap POSTs one REST Hook delivery to
/// `POST /keap/hooks/{token}`, the body as Keap sends it (an `apiUrl` per object, which
/// keap-hooks drops).
pub fn hook_delivery(token: &str) -> Value {
    let object_keys: Vec<Value> = HOOK_DELIVERY_OBJECTS
        .iter()
        .map(|id| {
            json!({
                "apiUrl": format!("https://api.infusionsoft.com/crm/rest/v1/contacts/{id}"),
                "id": id,
                "timestamp": "2026-11-23T12:00:00.000Z"
            })
        })
        .collect();
    let body = json!({
        "event_key": "contact.add",
        "object_type": "contact",
        "object_keys": object_keys
    });
    let path = format!("/keap/hooks/{token}");
    json!({
        "version": "2.0",
        "routeKey": "POST /keap/hooks/{token}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "host": "keapalive.test",
            "user-agent": "keapalive-bench (a Keap REST Hook delivery)",
            "content-type": "application/json"
        },
        "pathParameters": { "token": token },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "keapalive.test",
            "domainPrefix": "keapalive",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "keapalive-bench (a Keap REST Hook delivery)"
            },
            "requestId": "bench-request",
            "routeKey": "POST /keap/hooks/{token}",
            "stage": "$default",
            "time": "23/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1_795_435_200_000u64
        },
        "body": body.to_string(),
        "isBase64Encoded": false
    })
}
