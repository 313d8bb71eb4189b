//! The real `oauth-callback` and `operator` binaries, driven through the harness's Lambda Runtime
//! API exactly as Lambda drives them: an operator's start command (to `operator`), Keap's
//! redirect as an API Gateway payload 2.0 event (to `oauth-callback`), a replay, an unknown
//! command, a command sent to the public function (refused), and a configuration error at init.

use std::time::Duration;

use aws_lambda_events::apigw::{
    ApiGatewayV2httpRequest, ApiGatewayV2httpRequestContext,
    ApiGatewayV2httpRequestContextHttpDescription,
};
use aws_lambda_events::http::Method;
use aws_sdk_dynamodb::types::AttributeValue;
use keapalive_tests::aws::get_item;
use keapalive_tests::emulator::Emulator;
use keapalive_tests::fixture::{CLIENT_SECRET, Fixture, REDIRECT_URI};
use keapalive_tests::logs::{self, assert_logs_never_contain};
use keapalive_tests::runtime_api::{RuntimeApi, binary_path, spawn_function};
use serde_json::{Value, json};

/// oauth-callback's Timeout in the template: the callback needs the Keap timeout plus the commit
/// budget (20 s by default) left before it presents a code.
const DEADLINE: Duration = Duration::from_secs(28);
const INIT_TIMEOUT: Duration = Duration::from_secs(120);

fn callback_event(raw_query: &str) -> Value {
    let mut http = ApiGatewayV2httpRequestContextHttpDescription::default();
    http.method = Method::GET;
    http.path = Some("/oauth/callback".to_owned());
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.http = http;
    context.route_key = Some("GET /oauth/callback".to_owned());
    let mut request = ApiGatewayV2httpRequest::default();
    request.version = Some("2.0".to_owned());
    request.route_key = Some("GET /oauth/callback".to_owned());
    request.raw_path = Some("/oauth/callback".to_owned());
    request.raw_query_string = Some(raw_query.to_owned());
    request.request_context = context;
    serde_json::to_value(request).unwrap()
}

fn function_env(fixture: &Fixture, without: Option<&str>) -> Vec<(String, String)> {
    let mut env = Emulator::shared().process_env();
    env.extend(fixture.env(&[]));
    // DEBUG: more than a deployed function logs, so a leak at DEBUG fails this test too.
    // TRACE: the most verbose an operator can ask for; telemetry caps the runtime, which
    // would otherwise log whole events (the authorization code).
    env.push(("AWS_LAMBDA_LOG_LEVEL".to_owned(), "trace".to_owned()));
    env.retain(|(name, _)| Some(name.as_str()) != without);
    env
}

#[tokio::test]
async fn the_binary_authorizes_through_the_runtime_api() {
    logs::capture_logs();
    let fixture = Fixture::new().await;
    let runtime = RuntimeApi::start_named("oauth-callback").await;
    let operator = RuntimeApi::start_named("operator").await;
    let env = function_env(&fixture, None);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut function = spawn_function(&binary_path("oauth-callback"), &env, &runtime);
    let mut operator_function = spawn_function(&binary_path("operator"), &env, &operator);
    runtime
        .wait_until_ready(INIT_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("init failed: {}", function.output()));
    operator
        .wait_until_ready(INIT_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("operator init failed: {}", operator_function.output()));

    // The public function takes no operator command.
    let refused = runtime
        .invoke(
            json!({"start_authorization": {"connection_id": "default"}}),
            DEADLINE,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.error_type, "ValidationError");
    assert!(
        refused.error_message.contains("operator"),
        "{}",
        refused.error_message
    );

    let started = operator
        .invoke(
            json!({"start_authorization": {"connection_id": "default"}}),
            DEADLINE,
        )
        .await
        .unwrap();
    assert_eq!(started["connection_id"], "default");
    let authorize_url = started["authorize_url"].as_str().unwrap();

    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let consent = browser.get(authorize_url).send().await.unwrap();
    let location = consent.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(REDIRECT_URI));
    let query = url::Url::parse(&location)
        .unwrap()
        .query()
        .unwrap()
        .to_owned();
    let code: String = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();

    let page = runtime
        .invoke(callback_event(&query), DEADLINE)
        .await
        .unwrap();
    assert_eq!(page["statusCode"], 200, "{page}");
    assert_eq!(page["headers"]["content-type"], "text/html; charset=utf-8");
    assert_eq!(page["headers"]["cache-control"], "no-store");
    assert_eq!(page["headers"]["referrer-policy"], "no-referrer");
    assert!(
        page["body"]
            .as_str()
            .unwrap()
            .contains("<code>default</code>")
    );

    let item = get_item(&fixture.sdk, &fixture.table, "conn#default")
        .await
        .expect("connection stored");
    assert_eq!(item["generation"], AttributeValue::N("1".to_owned()));
    assert_eq!(item["status"], AttributeValue::S("active".to_owned()));
    let token = |name: &str| match &item[name] {
        AttributeValue::S(value) => value.clone(),
        other => panic!("{name}: {other:?}"),
    };
    let (access, refresh) = (token("access_token"), token("refresh_token"));

    let replay = runtime
        .invoke(callback_event(&query), DEADLINE)
        .await
        .unwrap();
    assert_eq!(replay["statusCode"], 400);

    let unknown = operator
        .invoke(json!({"authorize": true}), DEADLINE)
        .await
        .unwrap_err();
    assert_eq!(unknown.error_type, "ValidationError");
    assert!(unknown.error_message.contains("start_authorization"));

    function.kill().await;
    operator_function.kill().await;
    let output = function.output();
    assert!(
        operator_function.output().contains("authorization started"),
        "{}",
        operator_function.output()
    );
    assert!(output.contains("\"reason\":\"authorized\""), "{output}");
    assert!(output.contains("\"reason\":\"unknown_state\""), "{output}");
    // Its Keap requests (the code exchange, any account read) are counted under its name, once
    // per invocation that made any: the client id's quota is the one every function spends.
    let sent = fixture
        .sandbox
        .requests()
        .iter()
        .filter(|r| !r.path.ends_with("/authorize"))
        .count();
    let usage: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["Function"] == "oauth-callback")
        .collect();
    assert_eq!(usage.len(), 1, "{output}");
    assert_eq!(usage[0]["KeapRequests"], json!(sent as f64), "{output}");
    // The function's output is part of the capture, with every other test's logs.
    assert_logs_never_contain(&[&access, &refresh, &code, CLIENT_SECRET]);
}

#[tokio::test]
async fn the_binary_names_a_missing_redirect_uri_and_exits() {
    logs::capture_logs();
    let fixture = Fixture::new().await;
    let runtime = RuntimeApi::start().await;
    let env = function_env(&fixture, Some("KEAPALIVE_REDIRECT_URI"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut function = spawn_function(&binary_path("oauth-callback"), &env, &runtime);
    let status = tokio::time::timeout(INIT_TIMEOUT, function.child.wait())
        .await
        .expect("the function exits")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    // Give the output copier a moment to drain the pipes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let output = function.output();
    assert!(output.contains("KEAPALIVE_REDIRECT_URI"), "{output}");
    assert_eq!(output.trim().lines().count(), 1, "one line: {output}");
    assert_eq!(runtime.next_requests(), 0, "it never asked for an event");
}
