//! keap-proxy against the Keap sandbox and the AWS emulator: every method verbatim through the
//! real binary, hostile paths that never reach Keap, the credential rules (expiry under
//! concurrency, 401), the replay rules (lost POST, GET timeout, `retry: false`) and throttling.
//!
//! The sandbox's `/_echo/` routes (sandbox-only, `tests/keap-sandbox/src/echo.rs`) answer what
//! arrived, so "verbatim" is checked on both sides.

use std::time::Duration;

use crate::support::*;
use keap_sandbox::{AuthKind, Endpoint, Fault, FaultKind, ProductLimits};
use keapalive::clock::now_epoch_secs;
use keapalive::deadline::Deadline;
use keapalive::proxy::{ProxyError, ProxyService};
use keapalive_tests::fixture::Fixture;
use keapalive_tests::logs::{assert_logs_never_contain, capture_logs};
use keapalive_tests::runtime_api::RuntimeApi;
use serde_json::{Value, json};

const APP: &str = "proxy01";
const ECHO: &str = "/crm/rest/v1/_echo/notes";

/// Hostile paths and requests: each must be a `ValidationError` with no Keap request.
const HOSTILE_PATHS: &[&str] = &[
    "/token",
    "http://other/",
    "https://other.example/crm/rest/v1/contacts",
    "//other.example/v1/contacts",
    "/v1/../token",
    "/%2e%2e/token",
    "/v1/%2e%2e/token",
    "/v1/%2E%2E/token",
    "/v1/.%2E/token",
    "/v1/a%2F..%2Ftoken",
    "/v1/a%2f..%2ftoken",
    "/v1/%252e%252e/",
    "/v1/%252e%252e/token",
    "/v1/./contacts",
    "/v1/contacts/..",
    "/v1/contacts?email=x",
    "/v1/contacts%3Femail=x",
    "/v1/contacts#x",
    "/v1/contacts%23x",
    "/v1/user@other.example/x",
    "/v1/a%40b",
    "/v1/a\\..\\token",
    "/v1/a%5C..%5Ctoken",
    "/v1//contacts",
    "/v1/contacts/",
    "/v1/contacts 12",
    "/v1/contacts%0A12",
    "/v1/contacts%00",
    "/v1/contacts%C3%A9",
    "/v1/contacté",
    "/v1/%41ccount/profile",
    "/V1/contacts",
    "/v3/contacts",
    "v1/contacts",
    "/v1",
    "",
];

/// Whole requests that must be refused (beyond the path).
fn hostile_requests() -> Vec<Value> {
    let mut requests: Vec<Value> = HOSTILE_PATHS
        .iter()
        .map(|path| json!({"method": "GET", "path": path}))
        .collect();
    requests.extend([
        json!({"method": "GET", "path": "/v1/contacts", "headers": {"Host": "other"}}),
        json!({"method": "GET", "path": "/v1/contacts", "url": "http://other/"}),
        json!({"method": "HEAD", "path": "/v1/contacts"}),
        json!({"method": "get", "path": "/v1/contacts"}),
        json!({"method": "GET", "path": "/v1/contacts", "query": {"email": 7}}),
        json!({"method": "GET", "path": "/v1/contacts", "query": {"a": {"b": "c"}}}),
        json!({"method": "GET", "path": "/v1/contacts", "query": {"q": "x".repeat(9_000)}}),
        json!({"method": "POST", "path": "/v1/notes", "body": "x".repeat(1_048_577)}),
        json!({"method": "GET", "path": "/v1/contacts", "connection_id": "../default"}),
    ]);
    requests
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(30))
}

fn proxy_service(fx: &Fixture, extra: &[(&str, &str)]) -> ProxyService {
    fx.clients(extra).proxy_service()
}

async fn call(service: &ProxyService, request: Value) -> Result<Value, ProxyError> {
    service
        .handle(request.to_string().as_bytes(), deadline())
        .await
}

fn requests_to(fx: &Fixture, path: &str) -> usize {
    api_requests(fx).iter().filter(|r| r.path == path).count()
}

/// The connection's access token is past its stored expiry: the first call refreshes.
async fn seed_expired(fx: &Fixture) {
    fx.seed_connection("default", APP, Some(now_epoch_secs() - 10))
        .await;
}

async fn proxy_binary(
    fx: &Fixture,
    extra: &[(&str, &str)],
) -> (RuntimeApi, keapalive_tests::runtime_api::FunctionProcess) {
    function_binary(fx, "keap-proxy", extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_sends_every_method_and_answers_verbatim() {
    capture_logs();
    let fx = Fixture::new().await;
    let issued = fx.seed_connection("default", APP, None).await;
    let (runtime, mut function) = proxy_binary(&fx, &[]).await;
    let limit = Duration::from_secs(20);
    let email = "ada.proxy@example.com";

    // PUT with a body: Keap's real upsert.
    let put = runtime
        .invoke(
            json!({"method": "PUT", "path": "/v1/contacts",
                   "body": {"given_name": "Ada", "duplicate_option": "Email",
                            "email_addresses": [{"email": email, "field": "EMAIL1"}]}}),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(put["status"], 201, "{put}");
    assert_eq!(put["body_encoding"], "json");
    let id = put["body"]["id"].as_i64().expect("the contact's id");
    assert_eq!(contact_with_email(&fx, APP, email).unwrap()["id"], id);

    // GET with a query, and the record itself.
    let found = runtime
        .invoke(
            json!({"method": "GET", "path": "/v1/contacts", "query": {"email": email}}),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(found["status"], 200);
    assert_eq!(found["body"]["count"], 1);
    assert_eq!(found["body"]["contacts"][0]["id"], id);
    let one = runtime
        .invoke(
            json!({"method": "GET", "path": format!("/v1/contacts/{id}")}),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(one["body"]["id"], id);
    assert!(
        one["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("application/json")
    );

    // A 404 is data.
    let missing = runtime
        .invoke(
            json!({"method": "GET", "path": "/v1/contacts/999999"}),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(missing["status"], 404);
    assert_eq!(
        missing["body"]["message"],
        "Contact with id 999999 not found"
    );

    // POST, PATCH, DELETE: what arrived comes back, with Keap's headers and no cookie.
    for (method, path, body) in [
        (
            "POST",
            "/v1/_echo/notes",
            json!({"body": "Called", "contact_id": id}),
        ),
        (
            "PATCH",
            "/v2/_echo/contacts/7",
            json!({"given_name": "Augusta"}),
        ),
        ("DELETE", "/v1/_echo/contacts/7/tags", Value::Null),
    ] {
        let answer = runtime
            .invoke(
                json!({"method": method, "path": path, "body": body,
                       "query": {"ids": ["1", "2"], "note": "a b&c"}}),
                limit,
            )
            .await
            .unwrap();
        assert_eq!(answer["status"], 200, "{answer}");
        let echoed = &answer["body"];
        assert_eq!(echoed["method"], method);
        assert_eq!(echoed["path"], format!("/crm/rest{path}"));
        assert_eq!(echoed["query"], "ids=1&ids=2&note=a+b%26c");
        assert_eq!(echoed["body"], body);
        assert_eq!(echoed["auth"], "bearer");
        assert_eq!(echoed["accept"], "application/json");
        let content_type = if body.is_null() {
            Value::Null
        } else {
            json!("application/json")
        };
        assert_eq!(echoed["content_type"], content_type);
        let headers = answer["headers"].as_object().unwrap();
        let mut names: Vec<&str> = headers.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "content-type",
                "x-keap-product-quota-available",
                "x-keap-product-quota-expiry-time",
                "x-keap-product-quota-interval",
                "x-keap-product-quota-limit",
                "x-keap-product-quota-time-unit",
                "x-keap-product-quota-used",
                "x-keap-product-throttle-available",
                "x-keap-product-throttle-interval",
                "x-keap-product-throttle-limit",
                "x-keap-product-throttle-time-unit",
                "x-keap-product-throttle-used",
                "x-keap-tenant-id"
            ]
        );
        assert_eq!(headers["x-keap-tenant-id"], "proxy01.infusionsoft.com");
    }
    let bearer = api_requests(&fx).iter().all(|r| r.auth == AuthKind::Bearer);
    assert!(bearer, "every request carried the bearer token");

    // A 3xx is data, not followed.
    let elsewhere = CaptureServer::start().await;
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Redirect {
            status: 307,
            location: format!("{}/steal", elsewhere.url),
        },
        times: 1,
    });
    let redirected = runtime
        .invoke(
            json!({"method": "POST", "path": "/v1/_echo/notes", "body": {"x": 1}}),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(redirected["status"], 307);
    assert_eq!(
        redirected["headers"]["location"],
        format!("{}/steal", elsewhere.url)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(elsewhere.received(), "", "the redirect was followed");

    // Hostile requests: refused, and Keap never hears of them.
    fx.sandbox.clear_requests();
    let hostile = hostile_requests();
    assert!(hostile.len() >= 40);
    for request in &hostile {
        let error = runtime.invoke(request.clone(), limit).await.unwrap_err();
        assert_eq!(error.error_type, "ValidationError", "{request}: {error}");
    }
    assert_eq!(
        fx.sandbox.requests().len(),
        0,
        "a hostile request reached Keap"
    );

    // Odd but legitimate paths pass.
    for path in ["/v2/_echo/contacts:applyTags", "/v1/_echo/My%20File"] {
        let answer = runtime
            .invoke(json!({"method": "POST", "path": path, "body": {}}), limit)
            .await
            .unwrap();
        assert_eq!(answer["body"]["path"], format!("/crm/rest{path}"));
    }

    function.kill().await;
    assert_logs_never_contain(&[
        &issued.access_token,
        &issued.refresh_token,
        email,
        "ada.proxy",
        "Augusta",
        "a+b%26c",
        "Called",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_connection_sends_the_key_header() {
    let fx = Fixture::new().await;
    seed_key_connection(&fx, "default", APP).await;
    let service = proxy_service(&fx, &[]);
    let answer = call(
        &service,
        json!({"method": "GET", "path": "/v1/_echo/account"}),
    )
    .await
    .unwrap();
    assert_eq!(answer["body"]["auth"], "api_key");
    assert!(all_used_api_key(&api_requests(&fx)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_calls_on_an_expired_connection_refresh_once() {
    let fx = Fixture::new().await;
    seed_expired(&fx).await;
    // Eight containers: the lease, not a lock in one process, makes the refresh single.
    let services: Vec<ProxyService> = (0..8).map(|_| proxy_service(&fx, &[])).collect();
    let calls = services.iter().map(|service| {
        call(
            service,
            json!({"method": "GET", "path": "/v1/_echo/contacts"}),
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    for answer in &answers {
        assert_eq!(answer.as_ref().unwrap()["status"], 200);
    }
    assert_eq!(refresh_requests(&fx), 1);
    let token_failures = fx
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token" && r.status != 200)
        .count();
    assert_eq!(token_failures, 0, "an invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_the_current_token_refreshes_once_and_sends_once_more() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = proxy_service(&fx, &[]);
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 401,
            retry_after_secs: None,
        },
        times: 1,
    });
    let answer = call(
        &service,
        json!({"method": "POST", "path": "/v1/_echo/notes", "body": {"n": 1}}),
    )
    .await
    .unwrap();
    assert_eq!(answer["status"], 200);
    assert_eq!(refresh_requests(&fx), 1);
    assert_eq!(requests_to(&fx, ECHO), 2);

    // A storm of 401s: the second rejection within 10 minutes rotates nothing.
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 401,
            retry_after_secs: None,
        },
        times: 20,
    });
    for _ in 0..3 {
        let other_container = proxy_service(&fx, &[]);
        let error = call(
            &other_container,
            json!({"method": "GET", "path": "/v1/_echo/notes"}),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                error,
                ProxyError::Unavailable(_) | ProxyError::NotAuthorized(_)
            ),
            "{error}"
        );
    }
    assert_eq!(
        refresh_requests(&fx),
        1,
        "a 401 storm rotated the grant again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_answer_is_lost_is_not_sent_again() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = proxy_service(&fx, &[]);
    for method in ["POST", "PATCH"] {
        fx.sandbox.clear_requests();
        fx.sandbox.inject(Fault {
            endpoint: Endpoint::Api,
            kind: FaultKind::DropAfterProcessing,
            times: 1,
        });
        let error = call(
            &service,
            json!({"method": method, "path": "/v1/_echo/notes", "body": {"n": 1}}),
        )
        .await
        .unwrap_err();
        let ProxyError::Unavailable(message) = &error else {
            panic!("{method}: {error:?}");
        };
        assert!(message.contains("may have applied"), "{message}");
        assert!(message.contains("not sent again"), "{message}");
        assert_eq!(requests_to(&fx, ECHO), 1, "{method} was sent again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_times_out_is_sent_again() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = proxy_service(&fx, &[("KEAPALIVE_KEAP_TIMEOUT_SECS", "1")]);
    let slow = || Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Delay(Duration::from_secs(3)),
        times: 1,
    };
    // The request the client abandons is cut off with its connection, so the sandbox's log
    // does not show it: the proof is the outcome with and without `retry`.
    fx.sandbox.inject(slow());
    let error = call(
        &service,
        json!({"method": "GET", "path": "/v1/_echo/notes", "retry": false}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, ProxyError::Unavailable(m) if m.contains("did not answer in time")),
        "{error:?}"
    );

    fx.sandbox.inject(slow());
    let started = std::time::Instant::now();
    let answer = call(
        &service,
        json!({"method": "GET", "path": "/v1/_echo/notes"}),
    )
    .await
    .unwrap();
    assert_eq!(answer["status"], 200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "answered before the first attempt's timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_false_sends_nothing_again_and_retry_true_repeats_a_put() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = proxy_service(&fx, &[]);
    let unavailable = |times| Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times,
    };

    fx.sandbox.inject(unavailable(1));
    let error = call(
        &service,
        json!({"method": "PUT", "path": "/v1/_echo/notes", "body": {}, "retry": false}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, ProxyError::Unavailable(m) if m.contains("may have applied") && m.contains("retry: false")),
        "{error:?}"
    );
    assert_eq!(requests_to(&fx, ECHO), 1);

    fx.sandbox.clear_requests();
    fx.sandbox.inject(unavailable(1));
    let answer = call(
        &service,
        json!({"method": "PUT", "path": "/v1/_echo/notes", "body": {}}),
    )
    .await
    .unwrap();
    assert_eq!(answer["status"], 200);
    assert_eq!(requests_to(&fx, ECHO), 2);

    fx.sandbox.clear_requests();
    fx.sandbox.inject(unavailable(1));
    let error = call(
        &service,
        json!({"method": "POST", "path": "/v1/_echo/notes", "body": {}}),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ProxyError::Unavailable(_)));
    assert_eq!(
        requests_to(&fx, ECHO),
        1,
        "a POST after a 5xx was sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_within_five_seconds_is_absorbed_and_longer_is_rate_limited() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = proxy_service(&fx, &[]);
    let throttle = |secs| Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 429,
            retry_after_secs: Some(secs),
        },
        times: 1,
    };

    fx.sandbox.inject(throttle(1));
    let answer = call(
        &service,
        json!({"method": "POST", "path": "/v1/_echo/notes", "body": {}}),
    )
    .await
    .unwrap();
    assert_eq!(answer["status"], 200);
    assert_eq!(requests_to(&fx, ECHO), 2);

    fx.sandbox.clear_requests();
    fx.sandbox.inject(throttle(30));
    let error = call(
        &service,
        json!({"method": "GET", "path": "/v1/_echo/notes"}),
    )
    .await
    .unwrap_err();
    let ProxyError::RateLimited(message) = &error else {
        panic!("{error:?}");
    };
    assert!(message.ends_with("retry_after_secs=30"), "{message}");
    assert_eq!(requests_to(&fx, ECHO), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_connections_are_served() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = proxy_service(&fx, &[("KEAPALIVE_PROXY_CONNECTIONS", "sales")]);
    let error = call(
        &service,
        json!({"method": "GET", "path": "/v1/_echo/notes"}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, ProxyError::Validation(m) if m.contains("KEAPALIVE_PROXY_CONNECTIONS")),
        "{error:?}"
    );
    assert_eq!(fx.sandbox.requests().len(), 0);
    let served = proxy_service(&fx, &[("KEAPALIVE_PROXY_CONNECTIONS", "sales,default")]);
    call(&served, json!({"method": "GET", "path": "/v1/_echo/notes"}))
        .await
        .unwrap();
}

/// Keap's answer says the OAuth app's per-minute throttle is spent
/// (`x-keap-product-throttle-available: 0`): no further request with it inside the interval —
/// not even one Keap would refuse — while a key, with its own quota, still goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_throttle_holds_the_credential_without_asking_keap() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    seed_key_connection(&fx, "sales", APP).await;
    fx.sandbox.set_product_limits(ProductLimits {
        throttle_per_minute: Some(2),
        quota_per_day: None,
    });
    let service = proxy_service(&fx, &[]);
    let get = json!({"method": "GET", "path": "/v1/_echo/notes"});
    let first = call(&service, get.clone()).await.unwrap();
    assert_eq!(first["headers"]["x-keap-product-throttle-available"], "1");
    let second = call(&service, get.clone()).await.unwrap();
    assert_eq!(second["headers"]["x-keap-product-throttle-available"], "0");

    let error = call(&service, get.clone()).await.unwrap_err();
    let ProxyError::RateLimited(message) = &error else {
        panic!("{error:?}");
    };
    let secs: u64 = message
        .rsplit("retry_after_secs=")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!(
        (50..=60).contains(&secs),
        "held for one interval: {message}"
    );
    assert_eq!(requests_to(&fx, ECHO), 2, "the held request reached Keap");
    assert!(
        api_requests(&fx).iter().all(|r| r.status != 429),
        "Keap had to refuse a request"
    );

    let by_key = call(
        &service,
        json!({"connection_id": "sales", "method": "GET", "path": "/v1/_echo/notes"}),
    )
    .await
    .unwrap();
    assert_eq!(by_key["body"]["auth"], "api_key", "a key has its own quota");
}

/// A spent daily quota (`x-keap-product-quota-available: 0`) holds the credential until
/// `x-keap-product-quota-expiry-time` (epoch milliseconds: the next 00:00 UTC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_quota_holds_the_credential_until_its_expiry() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    fx.sandbox.set_product_limits(ProductLimits {
        throttle_per_minute: None,
        quota_per_day: Some(1),
    });
    let service = proxy_service(&fx, &[]);
    let get = json!({"method": "GET", "path": "/v1/_echo/notes"});
    let spent = call(&service, get.clone()).await.unwrap();
    let expiry_ms: i64 = spent["headers"]["x-keap-product-quota-expiry-time"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("the quota's expiry");
    let error = call(&service, get).await.unwrap_err();
    let ProxyError::RateLimited(message) = &error else {
        panic!("{error:?}");
    };
    let secs: i64 = message
        .rsplit("retry_after_secs=")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    let until_expiry = expiry_ms / 1000 - now_epoch_secs();
    assert!(
        (secs - until_expiry).abs() <= 2,
        "held until the expiry ({until_expiry} s), said {secs} s"
    );
    assert_eq!(requests_to(&fx, ECHO), 1, "the held request reached Keap");
}

/// The real binary at TRACE, through either log variable: a refresh, a query, a body and a
/// key connection, and none of the token pairs, the key, the query value or the body in its
/// output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_at_trace_logs_no_token_key_query_value_or_body() {
    for variable in ["AWS_LAMBDA_LOG_LEVEL", "RUST_LOG"] {
        let fx = Fixture::new().await;
        let issued = fx
            .seed_connection("default", APP, Some(now_epoch_secs() - 10))
            .await;
        let (key, _) = seed_key_connection(&fx, "sales", APP).await;
        let (runtime, mut function) = proxy_binary(&fx, &[(variable, "trace")]).await;
        let limit = Duration::from_secs(30);
        let email = "grace.tracelog@example.com";
        let body_text = "a-note-body-that-must-not-be-logged";
        runtime
            .invoke(
                json!({"method": "GET", "path": "/v1/contacts", "query": {"email": email}}),
                limit,
            )
            .await
            .unwrap();
        runtime
            .invoke(
                json!({"method": "POST", "path": "/v1/_echo/notes", "body": {"body": body_text}}),
                limit,
            )
            .await
            .unwrap();
        runtime
            .invoke(
                json!({"connection_id": "sales", "method": "GET", "path": "/v1/_echo/notes"}),
                limit,
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        function.kill().await;
        let item = keapalive_tests::aws::get_item(&fx.sdk, &fx.table, "conn#default")
            .await
            .expect("the connection item");
        assert_eq!(
            item.get("generation"),
            Some(&aws_sdk_dynamodb::types::AttributeValue::N("2".into())),
            "the expired token was refreshed first"
        );
        let mut secrets = vec![
            issued.access_token.clone(),
            issued.refresh_token.clone(),
            key.clone(),
            email.to_owned(),
            "grace.tracelog".to_owned(),
            body_text.to_owned(),
            keapalive_tests::fixture::CLIENT_SECRET.to_owned(),
        ];
        for attribute in ["access_token", "refresh_token"] {
            if let Some(aws_sdk_dynamodb::types::AttributeValue::S(token)) = item.get(attribute) {
                secrets.push(token.clone());
            }
        }
        let output = function.output();
        assert!(
            output
                .lines()
                .any(|l| l.contains("\"TRACE\"") || l.contains("\"DEBUG\"")),
            "{variable}=trace: the binary logged below INFO"
        );
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "{variable}=trace: a secret, query value or body reached the output:\n{output}"
            );
        }
        // One EMF line per invocation: Keap requests (and 429s, waits) by function.
        let usage: Vec<Value> = output
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["Function"] == "keap-proxy")
            .collect();
        assert_eq!(usage.len(), 3, "{variable}: one usage line per invocation");
        // The expired connection's refresh counts too: the client id's quota pays for it.
        let counted: Vec<f64> = usage
            .iter()
            .map(|line| line["KeapRequests"].as_f64().unwrap_or(0.0))
            .collect();
        assert_eq!(
            counted,
            [2.0, 1.0, 1.0],
            "{variable}: refresh + GET, then one each"
        );
        assert_eq!(
            usage[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0],
            json!(["Stage", "Function"])
        );
    }
}
