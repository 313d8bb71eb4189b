//! Authorizations that race each other, a removal, the clock or the table (docs/design.md,
//! "OAuth authorization" and "The fault model"), through the emulator's table and fault front and
//! the Keap sandbox: a retried pair write or key registration never overwrites a newer grant, a
//! removal kills a link started before it, the callback stores before it cleans up and never
//! exchanges a code it has no time to store, and the operator never asks for an item back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::{
    ApiGatewayV2httpRequest, ApiGatewayV2httpRequestContext,
    ApiGatewayV2httpRequestContextHttpDescription, ApiGatewayV2httpResponse,
};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::Method;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::types::AttributeValue;
use keap_sandbox::Endpoint;
use keapalive::authorization::{
    self, AuthorizationService, CALLBACK_PATH, StartAuthorization, handle_callback,
    start_authorization,
};
use keapalive::token_store::DynamoDbTokenStore;
use keapalive::wiring::Clients;
use keapalive_tests::aws::{scan_all, unique_name};
use keapalive_tests::emulator::{DynamoDbFault, Emulator, FaultMode, InjectedFault};
use keapalive_tests::fixture::{Fixture, REDIRECT_URI, connection_id};
use keapalive_tests::logs;
use keapalive_tests::runtime_api::{RuntimeApi, binary_path, spawn_function};
use serde_json::{Value, json};

type Item = HashMap<String, AttributeValue>;

const APP: &str = "sandbox01";

struct World {
    fixture: Fixture,
    clients: Clients,
    browser: reqwest::Client,
}

impl World {
    async fn with(extra: &[(&str, &str)]) -> Self {
        logs::capture_logs();
        let fixture = Fixture::new().await;
        let clients = fixture.clients(extra);
        Self {
            fixture,
            clients,
            browser: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    async fn new() -> Self {
        Self::with(&[]).await
    }

    /// start → Keap's consent: the raw query of the redirect back to the callback.
    async fn link(&self, id: &str) -> String {
        let started = start_authorization(
            &self.clients.authorization(),
            &StartAuthorization {
                connection_id: connection_id(id),
                replace_account: false,
            },
        )
        .await
        .expect("start_authorization");
        self.consent(&started.authorize_url).await
    }

    async fn consent(&self, authorize_url: &str) -> String {
        let response = self.browser.get(authorize_url).send().await.unwrap();
        assert_eq!(
            response.status(),
            302,
            "the sandbox redirects after consent"
        );
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(REDIRECT_URI), "{location}");
        url::Url::parse(&location)
            .unwrap()
            .query()
            .unwrap_or_default()
            .to_owned()
    }

    async fn callback(&self, raw_query: &str) -> ApiGatewayV2httpResponse {
        handle_callback(&self.clients.authorization(), &event(raw_query)).await
    }

    async fn operator(&self, command: Value) -> Result<Value, lambda_runtime::Diagnostic> {
        authorization::answer_operator(&self.clients.authorization(), command).await
    }

    async fn items(&self) -> Vec<Item> {
        scan_all(&self.fixture.sdk, &self.fixture.table).await
    }

    async fn item(&self, pk: &str) -> Option<Item> {
        self.items()
            .await
            .into_iter()
            .find(|item| s(item, "pk") == Some(pk))
    }

    fn token_requests(&self) -> usize {
        self.fixture
            .sandbox
            .requests()
            .iter()
            .filter(|r| r.path == "/token")
            .count()
    }

    fn live_refresh_token(&self) -> Option<String> {
        self.fixture.sandbox.current_refresh_token(APP)
    }

    /// A fault on this test's pair write, whichever operation carries it (an `UpdateItem`, or
    /// a `TransactWriteItems` with the removal's tombstone check): the needle is the pair's
    /// write-id attribute.
    async fn fault_on_pair_write(
        &self,
        fault: impl Fn(&str) -> DynamoDbFault,
    ) -> Vec<InjectedFault> {
        let mut injected = Vec::new();
        for operation in ["UpdateItem", "TransactWriteItems"] {
            injected.push(
                Emulator::shared()
                    .inject_dynamodb_fault(
                        fault(operation)
                            .body_contains(&self.fixture.table)
                            .body_contains("authorized_by")
                            .body_contains("access_token"),
                    )
                    .await,
            );
        }
        injected
    }
}

async fn total_fired(faults: &[InjectedFault]) -> u64 {
    let mut total = 0;
    for fault in faults {
        total += fault.fired().await;
    }
    total
}

fn event(raw_query: &str) -> ApiGatewayV2httpRequest {
    let mut http = ApiGatewayV2httpRequestContextHttpDescription::default();
    http.method = Method::GET;
    http.path = Some(CALLBACK_PATH.to_owned());
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.http = http;
    context.route_key = Some(format!("GET {CALLBACK_PATH}"));
    let mut request = ApiGatewayV2httpRequest::default();
    request.version = Some("2.0".to_owned());
    request.route_key = Some(format!("GET {CALLBACK_PATH}"));
    request.raw_path = Some(CALLBACK_PATH.to_owned());
    request.raw_query_string = Some(raw_query.to_owned());
    request.request_context = context;
    request
}

fn s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

fn n(item: &Item, name: &str) -> Option<i64> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().ok(),
        _ => None,
    }
}

fn body(response: &ApiGatewayV2httpResponse) -> &str {
    match &response.body {
        Some(Body::Text(text)) => text,
        other => panic!("expected an HTML body, got {other:?}"),
    }
}

/// Waits until `faults` fired at least once in total (the request they hold is in flight).
async fn until_fired(faults: &[InjectedFault]) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while total_fired(faults).await == 0 {
        assert!(Instant::now() < give_up, "the fault never fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- issue 22, point 1

/// Callback A's pair write lands and its answer is held past the SDK's attempt timeout; callback
/// B authorizes the same connection meanwhile (Keap retires A's grant); then A's retry must not
/// write A's dead pair over B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_pair_write_never_overwrites_a_newer_authorization() {
    let world = Arc::new(World::new().await);
    let query_a = world.link("default").await;
    let query_b = world.link("default").await;
    let held = world
        .fault_on_pair_write(|operation| {
            DynamoDbFault::new(operation, "InternalServerError")
                .status(500)
                .mode(FaultMode::ApplyThenHang)
                .hang(Duration::from_secs(6))
        })
        .await;

    let a = tokio::spawn({
        let world = world.clone();
        async move { world.callback(&query_a).await }
    });
    until_fired(&held).await;
    let page_b = world.callback(&query_b).await;
    let page_a = a.await.unwrap();

    assert_eq!(
        total_fired(&held).await,
        1,
        "A's write was held, B's was not"
    );
    assert_eq!(page_b.status_code, 200, "{}", body(&page_b));
    // A is told it lost (409), or — had its retry come before B's write — that it landed
    // (B's write then replaced it): never an error page.
    assert!(page_a.status_code < 500, "{}", body(&page_a));
    let item = world.item("conn#default").await.expect("connection stored");
    assert_eq!(
        s(&item, "refresh_token").map(str::to_owned),
        world.live_refresh_token(),
        "the stored refresh token is the one Keap has live (B's), not A's retired one"
    );
    assert!(
        n(&item, "exchanged_at").is_some(),
        "exchanged_at is stored with the pair"
    );
    assert_eq!(world.token_requests(), 2);
}

/// A key registration's write lands and its answer is held; an OAuth authorization of the same
/// connection lands meanwhile; the registration's retry must not REMOVE the newer OAuth pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_key_registration_never_removes_a_newer_oauth_pair() {
    let prefix = format!("{}/keys/", unique_name("keapalive-test"));
    let world = Arc::new(World::with(&[("KEAPALIVE_KEY_SECRET_PREFIX", &prefix)]).await);
    let key = world.fixture.sandbox.issue_service_account_key(APP);
    let secret = format!("{prefix}{}", unique_name("key"));
    aws_sdk_secretsmanager::Client::new(&world.fixture.sdk)
        .create_secret()
        .name(&secret)
        .secret_string(&key)
        .send()
        .await
        .unwrap();
    let query = world.link("default").await;
    let held = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("UpdateItem", "InternalServerError")
                .status(500)
                .mode(FaultMode::ApplyThenHang)
                .hang(Duration::from_secs(6))
                .body_contains(&world.fixture.table)
                .body_contains(&secret),
        )
        .await;

    let registration = tokio::spawn({
        let world = world.clone();
        let secret = secret.clone();
        async move {
            world
                .operator(json!({"register_service_account_key": {
                    "connection_id": "default", "secret_id": secret}}))
                .await
        }
    });
    until_fired(std::slice::from_ref(&held)).await;
    let page = world.callback(&query).await;
    let registered = registration.await.unwrap();

    held.assert_fired(1).await;
    assert_eq!(page.status_code, 200, "{}", body(&page));
    assert!(
        registered.is_err(),
        "the registration was superseded: {registered:?}"
    );
    let item = world.item("conn#default").await.expect("connection stored");
    assert_eq!(s(&item, "kind"), Some("oauth"), "{item:?}");
    assert_eq!(
        s(&item, "refresh_token").map(str::to_owned),
        world.live_refresh_token(),
        "the OAuth pair that came later is still there"
    );
}

// ---------------------------------------------------------------- issue 22, point 3

/// A link started a moment before a removal, which the eventually consistent pending index did
/// not show (its state item survives), must not bring the connection back; a link started after
/// the removal works.
#[tokio::test]
async fn a_link_started_before_a_removal_cannot_recreate_the_connection() {
    let world = World::new().await;
    world.fixture.seed_connection("default", APP, None).await;
    let early = world.link("default").await;
    let state_pk = world
        .items()
        .await
        .into_iter()
        .find(|item| s(item, "pk").is_some_and(|pk| pk.starts_with("state#")))
        .expect("the link's state");
    let removed = world
        .operator(json!({"remove_connection": {"connection_id": "default"}}))
        .await
        .expect("removed");
    assert_eq!(removed["removed"], true);
    // What a lagging index leaves behind: the state the removal did not find.
    aws_sdk_dynamodb::Client::new(&world.fixture.sdk)
        .put_item()
        .table_name(&world.fixture.table)
        .set_item(Some(state_pk))
        .send()
        .await
        .unwrap();

    let page = world.callback(&early).await;

    assert_ne!(page.status_code, 200, "{}", body(&page));
    assert!(
        world.item("conn#default").await.is_none(),
        "the removed connection came back"
    );
    let tomb = world
        .item("tomb#default")
        .await
        .expect("the removal left a tombstone");
    let removed_at = n(&tomb, "removed_at").expect("removed_at");
    assert!(n(&tomb, "expires_at").expect("TTL") >= removed_at + 660);
    assert!(
        !tomb.contains_key("status") && !tomb.contains_key("connection_id"),
        "the tombstone stays out of both sparse indexes: {tomb:?}"
    );

    // A link started after the removal (in a later second than `removed_at`) works.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = world.link("default").await;
    let page = world.callback(&later).await;
    assert_eq!(page.status_code, 200, "{}", body(&page));
    let item = world.item("conn#default").await.expect("re-created");
    assert_eq!(
        s(&item, "refresh_token").map(str::to_owned),
        world.live_refresh_token()
    );
}

// ---------------------------------------------------------------- issue 22, point 2

/// Every DynamoDB request body the operator's store sends.
#[derive(Debug, Default, Clone)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "operator-request-recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let body = context
            .request()
            .body()
            .bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        self.0.lock().unwrap().push(body);
        Ok(())
    }
}

/// The operator's role must not get tokens back: none of its requests asks DynamoDB for item
/// values (`ReturnValues`, `ReturnValuesOnConditionCheckFailure`), on any command, including a
/// re-registration over an OAuth pair and a retry whose condition fails on its own landed write.
#[tokio::test]
async fn no_operator_request_asks_for_values_back() {
    let prefix = format!("{}/keys/", unique_name("keapalive-test"));
    let world = World::with(&[("KEAPALIVE_KEY_SECRET_PREFIX", &prefix)]).await;
    world.fixture.seed_connection("default", APP, None).await;
    let key = world.fixture.sandbox.issue_service_account_key(APP);
    let secret = format!("{prefix}{}", unique_name("key"));
    aws_sdk_secretsmanager::Client::new(&world.fixture.sdk)
        .create_secret()
        .name(&secret)
        .secret_string(&key)
        .send()
        .await
        .unwrap();
    let recorder = Recorder::default();
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&world.fixture.sdk)
            .interceptor(recorder.clone())
            .build(),
    );
    let c = &world.clients;
    let operator = AuthorizationService::new(
        c.config.clone(),
        DynamoDbTokenStore::new(dynamodb, &world.fixture.table),
        c.secrets.clone(),
        c.oauth.clone(),
        c.rest.clone(),
        c.keap_limiter.clone(),
    );
    let lost = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::applied_then_lost("UpdateItem")
                .body_contains(&world.fixture.table)
                .body_contains(&secret),
        )
        .await;

    for command in [
        json!({"start_authorization": {"connection_id": "default"}}),
        json!({"register_service_account_key": {"connection_id": "default", "secret_id": secret}}),
        json!({"register_service_account_key": {"connection_id": "other", "secret_id": secret}}),
        json!({"remove_connection": {"connection_id": "default"}}),
        json!({"remove_connection": {"connection_id": "never-existed"}}),
    ] {
        authorization::answer_operator(&operator, command.clone())
            .await
            .unwrap_or_else(|e| panic!("{command}: {e:?}"));
    }

    lost.assert_fired(1).await;
    let bodies = recorder.0.lock().unwrap().clone();
    assert!(bodies.len() >= 5, "{bodies:?}");
    for body in &bodies {
        assert!(
            !body.contains("ReturnValues"),
            "an operator request asks DynamoDB for values back: {body}"
        );
    }
}

// ---------------------------------------------------------------- issue 21, point 2

/// Immediately before the code exchange the callback needs the Keap timeout plus the commit
/// budget (10 + 10 s by default) left; a consume slowed past one attempt timeout leaves less of
/// a 22 s invocation: no exchange, the state is spent, the page asks for a new link.
#[tokio::test]
async fn no_time_left_to_store_means_no_exchange() {
    let world = World::with(&[("KEAPALIVE_FUNCTION_TIMEOUT_SECS", "22")]).await;
    let query = world.link("default").await;
    let slow = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("UpdateItem", "InternalServerError")
                .status(500)
                .mode(FaultMode::Hang)
                .hang(Duration::from_secs(4))
                .body_contains(&world.fixture.table)
                .body_contains("consumed_by"),
        )
        .await;
    let started = Instant::now();

    let page = world.callback(&query).await;

    slow.assert_fired(1).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the consume was slowed"
    );
    assert_eq!(world.token_requests(), 0, "the code was never presented");
    assert!(page.status_code >= 500, "{}", body(&page));
    assert!(
        body(&page).contains("start_authorization"),
        "{}",
        body(&page)
    );
    assert!(world.item("conn#default").await.is_none());
    let replay = world.callback(&query).await;
    assert_eq!(
        replay.status_code,
        400,
        "the state is spent: {}",
        body(&replay)
    );
}

/// oauth-callback's `Timeout` as infra/template.yaml declares it.
fn callback_timeout_in_template() -> Duration {
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml"),
    )
    .expect("infra/template.yaml");
    let function = template
        .split("\n  OAuthCallbackFunction:\n")
        .nth(1)
        .expect("OAuthCallbackFunction in the template");
    let timeout = function
        .lines()
        .find_map(|line| line.trim().strip_prefix("Timeout: "))
        .expect("its Timeout");
    Duration::from_secs(timeout.trim().parse().expect("a number of seconds"))
}

/// The real binary with the template's Timeout: the state's clean-up hangs through every SDK
/// attempt and Keap takes 8 s to exchange the code. Lambda ends the invocation at its Timeout
/// (here: the process is killed), so the pair must be stored — and the page answered — by then.
#[tokio::test]
async fn a_slow_clean_up_and_a_slow_exchange_still_store_the_pair_inside_the_timeout() {
    logs::capture_logs();
    let world = World::new().await;
    let timeout = callback_timeout_in_template();
    let runtime = RuntimeApi::start_named("oauth-callback").await;
    let timeout_secs = timeout.as_secs().to_string();
    let mut env = Emulator::shared().process_env();
    env.extend(
        world
            .fixture
            .env(&[("KEAPALIVE_FUNCTION_TIMEOUT_SECS", &timeout_secs)]),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut function = spawn_function(&binary_path("oauth-callback"), &env, &runtime);
    runtime
        .wait_until_ready(Duration::from_secs(120))
        .await
        .unwrap_or_else(|| panic!("init failed: {}", function.output()));
    let query = world.link("default").await;
    let slow_clean_up = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("DeleteItem", "InternalServerError")
                .status(500)
                .mode(FaultMode::Hang)
                .hang(Duration::from_secs(4))
                .times(10)
                .body_contains(&world.fixture.table)
                .body_contains("state#"),
        )
        .await;
    world
        .fixture
        .sandbox
        .set_latency(Endpoint::Token, Duration::from_secs(8));

    let answer = tokio::time::timeout(
        timeout,
        runtime.invoke(serde_json::to_value(event(&query)).unwrap(), timeout),
    )
    .await;
    // Lambda ends the invocation here; nothing the function does later counts.
    function.kill().await;

    slow_clean_up.assert_fired(1).await;
    let page = answer
        .unwrap_or_else(|_| panic!("no page within the {timeout:?} Timeout"))
        .expect("a page, not an error");
    assert_eq!(page["statusCode"], 200, "{page}");
    let item = world
        .item("conn#default")
        .await
        .expect("the pair Keap issued is stored");
    assert_eq!(
        s(&item, "refresh_token").map(str::to_owned),
        world.live_refresh_token()
    );
    assert_eq!(n(&item, "generation"), Some(1));
}

/// init refuses a function timeout below the Keap timeout plus the commit budget, in every
/// function that presents a token or a code, in one line naming both variables.
#[tokio::test]
async fn a_timeout_below_the_keap_timeout_plus_the_commit_budget_fails_init() {
    logs::capture_logs();
    for function in [
        "oauth-callback",
        "token-refresher",
        "contact-upsert",
        "keap-proxy",
        "access-token",
    ] {
        let runtime = RuntimeApi::start_named(function).await;
        let env = [
            ("KEAPALIVE_TABLE", "keapalive-test"),
            ("KEAPALIVE_CLIENT_SECRET_ID", "keapalive/test/client"),
            (
                "KEAPALIVE_REDIRECT_URI",
                "https://example.test/oauth/callback",
            ),
            ("KEAPALIVE_STAGE", "test"),
            ("KEAPALIVE_FUNCTION_TIMEOUT_SECS", "15"),
            ("KEAPALIVE_KEAP_TIMEOUT_SECS", "10"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ];
        let mut process = spawn_function(&binary_path(function), &env, &runtime);
        let status = tokio::time::timeout(Duration::from_secs(60), process.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{function} started with a timeout it cannot work in"))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let output = process.output();
        assert_eq!(status.code(), Some(1), "{function}: {output}");
        let output = output.trim();
        assert_eq!(output.lines().count(), 1, "{function}: {output}");
        assert!(
            output.contains("KEAPALIVE_FUNCTION_TIMEOUT_SECS")
                && output.contains("KEAPALIVE_KEAP_TIMEOUT_SECS"),
            "{function}: {output}"
        );
        assert_eq!(runtime.next_requests(), 0);
    }
}
