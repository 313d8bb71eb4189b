//! keap-hooks (docs/events.md, "Keap changes"): the real binary behind a stand-in for the HTTP
//! API route `POST /keap/hooks/{token}`, Keap's handshake and deliveries from the sandbox (with
//! Keap's retry policy, delays scaled down), events on moto's EventBridge with a rule to an SQS
//! queue. 410 only when the subscription is definitely gone, 5xx whenever Keap should retry,
//! 200 only once every event was accepted.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use keap_sandbox::{HookEvent, HookRequestKind, HookStatus, ObjectKey};
use keapalive::clock::now_epoch_secs;
use keapalive::token_store::HookToken;
use keapalive_tests::aws::{create_event_bus_with_rule, received_events, scan_all};
use keapalive_tests::emulator::{DynamoDbFault, Emulator};
use keapalive_tests::fixture::{Fixture, connection_id};
use keapalive_tests::http_front::HttpFront;
use keapalive_tests::local::functions::LocalFunction;
use keapalive_tests::local::invoke_api::InvokeApi;
use keapalive_tests::runtime_api::{FunctionProcess, RuntimeApi, binary_path, spawn_function};
use serde_json::{Value, json};

const APP: &str = "hooks02";
const INIT_TIMEOUT: Duration = Duration::from_secs(120);
const HOOKS_PATH: &str = "/keap/hooks/";
const PROXY_FUNCTION: &str = "keapalive-test-keap-proxy";

struct World {
    fx: Fixture,
    queue: String,
    front: HttpFront,
    function: FunctionProcess,
    access_token: String,
    http: reqwest::Client,
    /// The operator binary, reaching Keap through keap-proxy behind a local Lambda Invoke API.
    operator: Arc<RuntimeApi>,
    /// The operator's environment: what a function reaching keap-proxy needs.
    operator_env: Vec<(String, String)>,
    _processes: Vec<FunctionProcess>,
    _invoke_api: InvokeApi,
}

impl World {
    async fn new() -> Self {
        let fx = Fixture::new().await;
        let issued = fx.seed_connection("default", APP, None).await;
        let (bus, queue) = create_event_bus_with_rule(
            &fx.sdk,
            r#"{"source": ["keapalive"], "detail-type": [{"prefix": "keap."}, "keapalive.hooks.gap"]}"#,
        )
        .await;
        let mut env = Emulator::shared().process_env();
        env.extend(fx.env(&[("KEAPALIVE_EVENT_BUS", &bus)]));
        env.push(("AWS_LAMBDA_LOG_LEVEL".to_owned(), "debug".to_owned()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let runtime = Arc::new(RuntimeApi::start_named("keap-hooks").await);
        let function = spawn_function(&binary_path("keap-hooks"), &env, &runtime);
        assert!(
            runtime.wait_until_ready(INIT_TIMEOUT).await.is_some(),
            "keap-hooks init failed: {}",
            function.output()
        );
        let front = HttpFront::start(runtime, HOOKS_PATH, "token").await;

        // keap-proxy behind a Lambda Invoke API, and the operator invoking it there.
        let proxy_runtime = Arc::new(RuntimeApi::start_named("keap-proxy").await);
        let proxy = spawn_function(&binary_path("keap-proxy"), &env, &proxy_runtime);
        assert!(
            proxy_runtime.wait_until_ready(INIT_TIMEOUT).await.is_some(),
            "keap-proxy init failed: {}",
            proxy.output()
        );
        let invoke_api = InvokeApi::start(vec![(
            PROXY_FUNCTION.to_owned(),
            LocalFunction {
                name: "keap-proxy",
                runtime: proxy_runtime,
            },
        )])
        .await
        .unwrap();
        let base_url = front.url("/keap/hooks");
        let endpoint = invoke_api.endpoint_url();
        let mut operator_env = env.clone();
        operator_env.extend([
            ("KEAPALIVE_HOOKS_BASE_URL", base_url.as_str()),
            ("KEAPALIVE_PROXY_FUNCTION", PROXY_FUNCTION),
            ("AWS_ENDPOINT_URL_LAMBDA", endpoint.as_str()),
            (
                "KEAPALIVE_REDIRECT_URI",
                "https://example.test/oauth/callback",
            ),
        ]);
        let operator = Arc::new(RuntimeApi::start_named("operator").await);
        let operator_process = spawn_function(&binary_path("operator"), &operator_env, &operator);
        assert!(
            operator.wait_until_ready(INIT_TIMEOUT).await.is_some(),
            "operator init failed: {}",
            operator_process.output()
        );
        // Keap's 30-60 s between attempts become 30-60 ms; its 30 s answer timeout 3 s.
        fx.sandbox.set_hook_delay_scale(0.001);
        fx.sandbox.set_hook_timeout_scale(0.1);
        Self {
            fx,
            queue,
            front,
            function,
            access_token: issued.access_token,
            http: reqwest::Client::new(),
            operator,
            operator_env: operator_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            _processes: vec![proxy, operator_process],
            _invoke_api: invoke_api,
        }
    }

    /// token-refresher with the operator's environment (keap-proxy, the bus), for `check_hooks`.
    async fn start_refresher(&self) -> (RuntimeApi, FunctionProcess) {
        let refresher = RuntimeApi::start_named("token-refresher").await;
        let env: Vec<(&str, &str)> = self
            .operator_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let process = spawn_function(&binary_path("token-refresher"), &env, &refresher);
        assert!(
            refresher.wait_until_ready(INIT_TIMEOUT).await.is_some(),
            "token-refresher init failed: {}",
            process.output()
        );
        (refresher, process)
    }

    /// Sets (or, `None`, removes) the Keap hook key a subscription's item holds, as a lost
    /// answer or another account would leave it.
    async fn set_keap_hook_key(&self, token_hash: &str, key: Option<&str>) {
        let update = aws_sdk_dynamodb::Client::new(&self.fx.sdk)
            .update_item()
            .table_name(&self.fx.table)
            .key("pk", AttributeValue::S(format!("hook#{token_hash}")));
        let update = match key {
            Some(key) => update
                .update_expression("SET keap_hook_key = :key")
                .expression_attribute_values(":key", AttributeValue::S(key.to_owned())),
            None => update.update_expression("REMOVE keap_hook_key"),
        };
        update.send().await.unwrap();
    }

    /// The token in the URL of Keap's first hook (the sandbox lists tokens in full).
    fn first_token_at_keap(&self) -> String {
        let hooks = self.fx.sandbox.hooks(APP);
        hooks[0].hook_url.rsplit('/').next().unwrap().to_owned()
    }

    /// What keap-hooks answers a verification POST for `token` (410: forgotten).
    async fn handshake_status(&self, token: &str) -> u16 {
        self.post(
            &format!("{HOOKS_PATH}{token}"),
            b"[]".to_vec(),
            Some("s3cret"),
        )
        .await
        .status()
        .as_u16()
    }

    /// Another integration's hook on the same Keap account; returns Keap's key for it.
    async fn create_foreign_hook(&self, body: Value) -> String {
        let foreign: Value = self
            .http
            .post(format!("{}/v1/hooks", self.fx.sandbox.api_base_url()))
            .bearer_auth(&self.access_token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match &foreign["key"] {
            Value::String(key) => key.clone(),
            Value::Number(key) => key.to_string(),
            other => panic!("Keap's answer names no hook key: {foreign} ({other})"),
        }
    }

    /// keapalive's subscriptions of the `default` connection.
    async fn subscriptions(&self) -> Vec<keapalive::token_store::HookSubscription> {
        self.fx
            .store()
            .hooks_of(&connection_id("default"))
            .await
            .unwrap()
    }

    /// The operator's `subscribe_hooks` for `default`.
    async fn subscribe_through_the_operator(&self, event_keys: &[&str]) -> Value {
        self.command(
            json!({"subscribe_hooks": {"connection_id": "default", "event_keys": event_keys}}),
        )
        .await
        .unwrap()
    }

    /// An operator command; its answer or its error (errorType, message).
    async fn command(&self, command: Value) -> Result<Value, (String, String)> {
        self.operator
            .invoke(command, Duration::from_secs(90))
            .await
            .map_err(|e| (e.error_type, e.error_message))
    }

    /// What the operator's `subscribe_hooks` does: the item first, then Keap's create call
    /// (which verifies the URL through keap-hooks). Returns the token and Keap's hook.
    async fn subscribe(&self, event_key: &str) -> (HookToken, Value) {
        let token = HookToken::generate().unwrap();
        assert!(
            self.fx
                .store()
                .put_hook(
                    &token.hash(),
                    &connection_id("default"),
                    event_key,
                    now_epoch_secs()
                )
                .await
                .unwrap()
        );
        let hook: Value = self
            .http
            .post(format!("{}/v1/hooks", self.fx.sandbox.api_base_url()))
            .bearer_auth(&self.access_token)
            .json(&json!({
                "eventKey": event_key,
                "hookUrl": self.front.url(&format!("{HOOKS_PATH}{}", token.expose_secret())),
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (token, hook)
    }

    /// Keap delivers `ids` (one timestamp) to every verified `contact.add` hook; waits until
    /// every attempt, retries included, is done.
    async fn deliver(&self, ids: std::ops::Range<i64>, timestamp: &str) {
        let object_keys = ids
            .map(|id| ObjectKey {
                id,
                api_url: format!("https://api.infusionsoft.com/crm/rest/v1/contacts/{id}"),
                timestamp: timestamp.to_owned(),
            })
            .collect();
        self.fx
            .sandbox
            .deliver_hook_event(
                APP,
                HookEvent {
                    event_key: "contact.add".to_owned(),
                    object_type: None,
                    object_keys,
                },
            )
            .unwrap();
        assert!(
            self.fx
                .sandbox
                .wait_for_hook_deliveries(Duration::from_secs(60))
                .await,
            "Keap's deliveries did not finish"
        );
    }

    /// The events on the queue, waiting up to 10 s for `at_least`.
    async fn events(&self, at_least: usize) -> Vec<Value> {
        let mut events = Vec::new();
        for _ in 0..100 {
            events.extend(received_events(&self.fx.sdk, &self.queue).await);
            if events.len() >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        events
    }

    async fn post(&self, path: &str, body: Vec<u8>, secret: Option<&str>) -> reqwest::Response {
        let mut request = self.http.post(self.front.url(path)).body(body);
        if let Some(secret) = secret {
            request = request.header("X-Hook-Secret", secret);
        }
        request.send().await.unwrap()
    }

    fn delivery_statuses(&self) -> Vec<Option<u16>> {
        self.fx
            .sandbox
            .hook_attempts()
            .into_iter()
            .filter(|a| a.kind == HookRequestKind::Delivery)
            .map(|a| a.status)
            .collect()
    }
}

fn ids_of(event: &Value) -> Vec<i64> {
    event["detail"]["object_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keaps_handshake_and_deliveries_become_events_on_the_bus() {
    let world = World::new().await;
    let (token, hook) = world.subscribe("contact.add").await;
    assert_eq!(hook["status"], "Verified", "{hook}");
    let handshakes: Vec<_> = world
        .fx
        .sandbox
        .hook_attempts()
        .into_iter()
        .filter(|a| a.kind == HookRequestKind::Verification)
        .collect();
    assert_eq!(handshakes.len(), 1);
    assert_eq!(handshakes[0].status, Some(200));
    for item in scan_all(&world.fx.sdk, &world.fx.table).await {
        assert!(
            !format!("{item:?}").contains(token.expose_secret()),
            "an item holds the plain token"
        );
    }

    // Three objects: one event naming them.
    world.deliver(1..4, "2026-12-06T10:00:00Z").await;
    let events = world.events(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["source"], "keapalive");
    assert_eq!(event["detail-type"], "keap.contact.add");
    assert_eq!(ids_of(event), [1, 2, 3]);
    assert_eq!(event["detail"]["connection_id"], "default");
    assert_eq!(event["detail"]["object_type"], "contact");
    assert_eq!(
        (
            event["detail"]["part"].clone(),
            event["detail"]["parts"].clone()
        ),
        (json!(1), json!(1))
    );
    let delivery_id = event["detail"]["delivery_id"].clone();

    // Keap sends the same change again (its retry after a lost answer): the same delivery_id.
    world.deliver(1..4, "2026-12-06T10:00:00Z").await;
    let again = world.events(1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["detail"]["delivery_id"], delivery_id);

    // Keap's largest delivery: every id arrives, each attempt answered well within 30 s.
    world.deliver(1_000..2_000, "2026-12-06T10:00:01Z").await;
    let big = world.events(1).await;
    let mut ids: Vec<i64> = big.iter().flat_map(ids_of).collect();
    ids.sort();
    assert_eq!(ids, (1_000..2_000).collect::<Vec<_>>());
    assert!(world.delivery_statuses().iter().all(|s| *s == Some(200)));
    let output = world.function.output();
    assert!(
        !output.contains(token.expose_secret()),
        "the token reached the log:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_events_failing_answers_a_5xx_and_keaps_retry_lands() {
    let world = World::new().await;
    world.subscribe("contact.add").await;
    for fault in [
        // Every attempt of the SDK's (three) for one delivery.
        DynamoDbFault::put_events("InternalException").times(3),
        DynamoDbFault::put_events_entries_failed(),
    ] {
        world.fx.sandbox.clear_hook_attempts();
        let injected = Emulator::shared()
            .inject_dynamodb_fault(fault.body_contains("keap.contact.add"))
            .await;
        world
            .deliver(
                7..9,
                &format!("2026-12-06T10:00:0{}", now_epoch_secs() % 10),
            )
            .await;
        injected.assert_fired(1).await;
        let statuses = world.delivery_statuses();
        assert!(
            matches!(statuses.first(), Some(Some(status)) if *status >= 500),
            "{statuses:?}"
        );
        assert_eq!(statuses.last(), Some(&Some(200)), "{statuses:?}");
        let events = world.events(1).await;
        assert!(!events.is_empty());
        assert!(events.iter().all(|e| ids_of(e) == [7, 8]));
        assert_eq!(
            world.fx.sandbox.hooks(APP)[0].status,
            HookStatus::Verified,
            "one failed attempt leaves the hook active"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_unreadable_and_malformed_requests_get_the_answer_keap_needs() {
    let world = World::new().await;
    let (token, _) = world.subscribe("contact.add").await;
    let path = format!("{HOOKS_PATH}{}", token.expose_secret());
    let delivery = |event_key: &str| {
        json!({"event_key": event_key, "object_type": "contact",
               "object_keys": [{"id": 1, "apiUrl": "", "timestamp": "2026-12-06T10:00:00Z"}]})
        .to_string()
        .into_bytes()
    };

    // Never issued, or issued and forgotten: 410, and a handshake echoes nothing.
    let stranger = HookToken::generate().unwrap();
    let unknown = format!("{HOOKS_PATH}{}", stranger.expose_secret());
    assert_eq!(
        world
            .post(&unknown, delivery("contact.add"), None)
            .await
            .status(),
        410
    );
    let handshake = world.post(&unknown, b"[]".to_vec(), Some("s3cret")).await;
    assert_eq!(handshake.status(), 410);
    assert!(handshake.headers().get("x-hook-secret").is_none());
    assert_eq!(
        world
            .post(
                &format!("{HOOKS_PATH}not-a-token"),
                delivery("contact.add"),
                None
            )
            .await
            .status(),
        410
    );
    // The subscription's handshake is echoed.
    let verified = world.post(&path, b"[]".to_vec(), Some("s3cret")).await;
    assert_eq!(verified.status(), 200);
    assert_eq!(verified.headers()["x-hook-secret"], "s3cret");

    // Not Keap's shape, too large, another event key: 400.
    assert_eq!(
        world
            .post(&path, b"{\"event_key\":".to_vec(), None)
            .await
            .status(),
        400
    );
    assert_eq!(
        world
            .post(&path, vec![b' '; 1024 * 1024 + 1], None)
            .await
            .status(),
        400
    );
    assert_eq!(
        world
            .post(&path, delivery("contact.edit"), None)
            .await
            .status(),
        400
    );

    // The subscription cannot be read: 503 (a 410 would make Keap drop the hook at once).
    let unreadable = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("GetItem", "InternalServerError")
                .status(500)
                .body_contains(&world.fx.table)
                .body_contains(token.hash().as_str())
                .times(100),
        )
        .await;
    assert_eq!(
        world
            .post(&path, delivery("contact.add"), None)
            .await
            .status(),
        503
    );
    unreadable.assert_fired(1).await;
    Emulator::shared()
        .clear_faults_for(token.hash().as_str())
        .await;

    assert!(
        world.events(0).await.is_empty(),
        "no refused request published anything"
    );
    // Each 400 or 503 to a well-formed token is counted (what the alarm watches); 410s are not.
    // (A line is printed before its answer; its copy from the pipe may trail a little.)
    let mut failures = 0;
    for _ in 0..20 {
        failures = world
            .function
            .output()
            .lines()
            .filter(|line| line.contains("\"HookDeliveriesFailed\""))
            .count();
        if failures >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failures, 4, "{}", world.function.output());
    assert_eq!(
        world
            .post(&path, delivery("contact.add"), None)
            .await
            .status(),
        200
    );
    assert_eq!(world.events(1).await.len(), 1);
}

/// The operator's commands, through keap-proxy: a subscription is written, created at Keap and
/// verified through keap-hooks; a second subscribe returns it; unknown keys are refused before
/// anything is written; the listing shows only this stage's hooks; unsubscribing forgets the
/// token first (410 from then on) and deletes at Keap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_subscribes_lists_and_unsubscribes_through_keap_proxy() {
    let world = World::new().await;
    let subscribed = world
        .command(
            json!({"subscribe_hooks": {"connection_id": "default", "event_keys": ["contact.add"]}}),
        )
        .await
        .unwrap();
    let hook = &subscribed["hooks"][0];
    assert_eq!(hook["event_key"], "contact.add", "{subscribed}");
    assert_eq!(hook["status"], "Verified", "{subscribed}");
    assert_eq!(hook["created"], true, "{subscribed}");
    let keap_key = hook["keap_hook_key"].clone();
    let at_keap = world.fx.sandbox.hooks(APP);
    assert_eq!(at_keap.len(), 1);
    assert_eq!(at_keap[0].status, HookStatus::Verified);
    let items = scan_all(&world.fx.sdk, &world.fx.table).await;
    let token = at_keap[0].hook_url.rsplit('/').next().unwrap().to_owned();
    assert!(
        items
            .iter()
            .all(|item| !format!("{item:?}").contains(&token)),
        "an item holds the plain token"
    );

    // Idempotent: the same subscription, not a second one at Keap.
    let again = world
        .command(
            json!({"subscribe_hooks": {"connection_id": "default", "event_keys": ["contact.add"]}}),
        )
        .await
        .unwrap();
    assert_eq!(again["hooks"][0]["created"], false, "{again}");
    assert_eq!(again["hooks"][0]["keap_hook_key"], keap_key);
    assert_eq!(world.fx.sandbox.hooks(APP).len(), 1);

    // An event key Keap does not know: refused, nothing written.
    let (error_type, message) = world
        .command(json!({"subscribe_hooks": {"connection_id": "default", "event_keys": ["contact.teleported"]}}))
        .await
        .unwrap_err();
    assert_eq!(error_type, "ValidationError", "{message}");
    assert!(message.contains("contact.teleported"), "{message}");
    assert_eq!(world.subscriptions().await.len(), 1);

    // Another integration's hook on the same account: counted, never shown.
    world
        .create_foreign_hook(
            json!({"eventKey": "contact.edit", "hookUrl": "https://other.example/hook?secret=s3"}),
        )
        .await;
    let listed = world
        .command(json!({"list_hooks": {"connection_id": "default"}}))
        .await
        .unwrap();
    assert_eq!(listed["hooks"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["other_hooks_at_keap"], 1, "{listed}");
    assert!(!listed.to_string().contains("other.example"), "{listed}");
    assert!(!listed.to_string().contains(&token), "{listed}");

    // Unsubscribe: the token is forgotten (410), the hook deleted at Keap.
    let removed = world
        .command(json!({"unsubscribe_hooks": {"connection_id": "default", "event_keys": ["contact.add"]}}))
        .await
        .unwrap();
    assert_eq!(removed["removed"], json!(["contact.add"]), "{removed}");
    assert_eq!(removed["keap_delete_failed"], json!([]), "{removed}");
    assert!(world.subscriptions().await.is_empty());
    assert_eq!(
        world.fx.sandbox.hooks(APP).len(),
        1,
        "only the foreign hook is left"
    );
    assert_eq!(world.handshake_status(&token).await, 410);
}

/// The hooks schedule (`{"check_hooks": true}` to token-refresher): an Inactive subscription is
/// re-verified through keap-hooks and its gap event published; a gap event EventBridge refused
/// stays on the item and the next check publishes it, even though the hook is Verified by then.
/// The plain schedule never runs the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_hooks_reverifies_an_inactive_subscription_and_publishes_the_gap() {
    let world = World::new().await;
    world
        .command(
            json!({"subscribe_hooks": {"connection_id": "default", "event_keys": ["contact.add"]}}),
        )
        .await
        .unwrap();
    let key = world.fx.sandbox.hooks(APP)[0].key.clone();
    assert!(world.fx.sandbox.set_hook_status(&key, HookStatus::Inactive));

    let (refresher, process) = world.start_refresher().await;
    let run = |event: Value| {
        let refresher = &refresher;
        async move {
            refresher
                .invoke(event, Duration::from_secs(300))
                .await
                .unwrap()
        }
    };

    // The plain schedule refreshes; it does not touch hooks.
    let scheduled = run(json!({})).await;
    assert!(scheduled.get("due").is_some(), "{scheduled}");
    assert_eq!(world.fx.sandbox.hooks(APP)[0].status, HookStatus::Inactive);

    // The gap event's first publish is refused.
    let refused = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::put_events_entries_failed().body_contains("keapalive.hooks.gap"),
        )
        .await;
    let first = run(json!({"check_hooks": true})).await;
    refused.assert_fired(1).await;
    assert_eq!(first["reverified"], 1, "{first}");
    assert_eq!(first["still_inactive"], 0, "{first}");
    assert_eq!(first["gap_events_published"], 0, "{first}");
    assert_eq!(world.fx.sandbox.hooks(APP)[0].status, HookStatus::Verified);
    let hook = &world.subscriptions().await[0];
    let since = hook.inactive_since.expect("kept until published");
    assert!(world.events(0).await.is_empty());

    // The next check publishes it though the hook is Verified now, and clears it.
    let second = run(json!({"check_hooks": true})).await;
    assert_eq!(second["reverified"], 0, "{second}");
    assert_eq!(second["gap_events_published"], 1, "{second}");
    let events = world.events(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["detail-type"], "keapalive.hooks.gap");
    assert_eq!(
        events[0]["detail"],
        json!({"connection_id": "default", "event_key": "contact.add", "inactive_since": since})
    );
    let hook = &world.subscriptions().await[0];
    assert_eq!(hook.inactive_since, None);
    let output = process.output();
    assert!(
        output.contains("HooksReverified"),
        "the check emits its metrics"
    );
}

/// `remove_connection` forgets the connection's subscriptions first (deliveries get 410), and
/// deletes them at Keap through keap-proxy while the connection still exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_connection_clears_its_subscriptions_here_and_at_keap() {
    let world = World::new().await;
    world
        .subscribe_through_the_operator(&["contact.add", "contact.edit"])
        .await;
    assert_eq!(world.fx.sandbox.hooks(APP).len(), 2);
    let token = world.first_token_at_keap();

    let removed = world
        .command(json!({"remove_connection": {"connection_id": "default"}}))
        .await
        .unwrap();
    assert_eq!(removed["removed"], true, "{removed}");
    assert_eq!(removed["hooks_forgotten"], 2, "{removed}");
    assert!(
        removed.get("keap_hook_delete_failed").is_none(),
        "{removed}"
    );
    assert!(world.fx.sandbox.hooks(APP).is_empty(), "deleted at Keap");
    assert!(world.subscriptions().await.is_empty());
    assert_eq!(world.handshake_status(&token).await, 410);
}

/// A `replace_account` start moves the connection to another Keap account once followed: the old
/// account's subscriptions are removed before the link exists (here and at Keap; deliveries to
/// them get 410), and the answer says to subscribe again. A plain start leaves them alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_account_start_removes_the_old_accounts_subscriptions() {
    let world = World::new().await;
    world.subscribe_through_the_operator(&["contact.add"]).await;
    let token = world.first_token_at_keap();

    let plain = world
        .command(json!({"start_authorization": {"connection_id": "default"}}))
        .await
        .unwrap();
    assert!(plain.get("hooks").is_none(), "{plain}");
    assert_eq!(world.subscriptions().await.len(), 1);

    let started = world
        .command(
            json!({"start_authorization": {"connection_id": "default", "replace_account": true}}),
        )
        .await
        .unwrap();
    assert!(started["authorize_url"].is_string(), "{started}");
    assert_eq!(
        started["hooks"]["removed"],
        json!(["contact.add"]),
        "{started}"
    );
    let next_step = started["hooks"]["next_step"].as_str().unwrap();
    assert!(
        next_step.contains("subscribe_hooks") && next_step.contains("contact.add"),
        "{started}"
    );
    assert!(world.subscriptions().await.is_empty());
    assert!(world.fx.sandbox.hooks(APP).is_empty(), "deleted at Keap");
    assert_eq!(world.handshake_status(&token).await, 410);

    // Nothing left to remove: said so.
    let again = world
        .command(
            json!({"start_authorization": {"connection_id": "default", "replace_account": true}}),
        )
        .await
        .unwrap();
    assert_eq!(again["hooks"]["removed"], json!([]), "{again}");
}

/// An item whose Keap key was never noted (Keap's answer lost) is adopted when Keap lists a hook
/// at its URL — not subscribed a second time —, one Keap never created is replaced once no
/// create can still be running, and one whose hook Keap no longer lists is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_keap_key_was_never_noted_is_adopted_not_duplicated() {
    let world = World::new().await;
    world.subscribe_through_the_operator(&["contact.add"]).await;
    let original = world.subscriptions().await.remove(0);
    let keap_key = original.keap_hook_key.clone().unwrap();
    world
        .set_keap_hook_key(original.token_hash.as_str(), None)
        .await;

    let again = world.subscribe_through_the_operator(&["contact.add"]).await;
    assert_eq!(again["hooks"][0]["created"], false, "{again}");
    assert_eq!(world.fx.sandbox.hooks(APP).len(), 1, "one hook at Keap");
    let adopted = world.subscriptions().await;
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].keap_hook_key.as_deref(), Some(keap_key.as_str()));

    // Written ten minutes ago, never created at Keap: replaced by one that is.
    let never_created = HookToken::generate().unwrap().hash();
    assert!(
        world
            .fx
            .store()
            .put_hook(
                &never_created,
                &connection_id("default"),
                "contact.edit",
                now_epoch_secs() - 600
            )
            .await
            .unwrap()
    );
    world
        .subscribe_through_the_operator(&["contact.edit"])
        .await;
    let edits: Vec<_> = world
        .subscriptions()
        .await
        .into_iter()
        .filter(|hook| hook.event_key == "contact.edit")
        .collect();
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert!(edits[0].keap_hook_key.is_some());
    assert!(edits[0].token_hash != never_created);
    assert_eq!(world.fx.sandbox.hooks(APP).len(), 2);

    // A subscription with a key that Keap no longer lists (deleted at Keap, or at the account
    // the connection left): replaced, not answered as subscribed.
    let status = world
        .http
        .delete(format!(
            "{}/v1/hooks/{keap_key}",
            world.fx.sandbox.api_base_url()
        ))
        .bearer_auth(&world.access_token)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let replaced = world.subscribe_through_the_operator(&["contact.add"]).await;
    assert_eq!(replaced["hooks"][0]["created"], true, "{replaced}");
    assert_eq!(replaced["hooks"][0]["status"], "Verified", "{replaced}");
    let adds: Vec<_> = world
        .subscriptions()
        .await
        .into_iter()
        .filter(|hook| hook.event_key == "contact.add")
        .collect();
    assert_eq!(adds.len(), 1, "{adds:?}");
    assert_ne!(adds[0].keap_hook_key.as_deref(), Some(keap_key.as_str()));
    assert_eq!(world.fx.sandbox.hooks(APP).len(), 2);
}

/// With less time left than a create can take, `subscribe_hooks` starts none and says which
/// keys to send again, rather than being cut off by Lambda mid-create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_hooks_stops_before_the_invocation_deadline() {
    let world = World::new().await;
    let short = world
        .operator
        .invoke(
            json!({"subscribe_hooks": {"connection_id": "default", "event_keys": ["contact.add"]}}),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        short["not_started_for_lack_of_time"],
        json!(["contact.add"]),
        "{short}"
    );
    assert!(world.fx.sandbox.hooks(APP).is_empty());
    assert!(world.subscriptions().await.is_empty());
    let full = world.subscribe_through_the_operator(&["contact.add"]).await;
    assert!(full.get("not_started_for_lack_of_time").is_none(), "{full}");
    assert_eq!(world.fx.sandbox.hooks(APP).len(), 1);
}

/// `check_hooks` owns a Keap hook only when it is the item's key, for the item's event, at the
/// item's URL: a key that names another integration's hook (the connection moved to another
/// account) is never re-verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_hooks_leaves_alone_a_hook_at_another_url_that_holds_the_items_key() {
    let world = World::new().await;
    world.subscribe_through_the_operator(&["contact.add"]).await;
    let our_url = world.fx.sandbox.hooks(APP)[0].hook_url.clone();
    let ours = world.subscriptions().await.remove(0);
    let (refresher, _process) = world.start_refresher().await;
    // Another URL with the item's event; the item's URL with another event.
    for foreign in [
        json!({"eventKey": "contact.add", "hookUrl": "https://other.example/hook"}),
        json!({"eventKey": "contact.edit", "hookUrl": our_url}),
    ] {
        let foreign_key = world.create_foreign_hook(foreign.clone()).await;
        assert!(
            world
                .fx
                .sandbox
                .set_hook_status(&foreign_key, HookStatus::Inactive)
        );
        world
            .set_keap_hook_key(ours.token_hash.as_str(), Some(&foreign_key))
            .await;

        let summary = refresher
            .invoke(json!({"check_hooks": true}), Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(summary["connections_checked"], 1, "{foreign}: {summary}");
        assert_eq!(summary["hooks_owned"], 0, "{foreign}: {summary}");
        assert_eq!(summary["not_found_at_keap"], 1, "{foreign}: {summary}");
        assert_eq!(summary["reverified"], 0, "{foreign}: {summary}");
        let at_keap = world.fx.sandbox.hooks(APP);
        let foreign_hook = at_keap.iter().find(|h| h.key == foreign_key).unwrap();
        assert_eq!(foreign_hook.status, HookStatus::Inactive, "{foreign}");
    }
}

/// A subscription whose connection is gone (written a moment before the removal, missed by the
/// index) is forgotten by the next `check_hooks`, so its deliveries get 410; the live
/// connection's subscription stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_hooks_forgets_a_subscription_whose_connection_is_gone() {
    let world = World::new().await;
    world.subscribe_through_the_operator(&["contact.add"]).await;
    let orphan = HookToken::generate().unwrap();
    assert!(
        world
            .fx
            .store()
            .put_hook(
                &orphan.hash(),
                &connection_id("removed-meanwhile"),
                "contact.add",
                now_epoch_secs()
            )
            .await
            .unwrap()
    );

    let (refresher, _process) = world.start_refresher().await;
    let summary = refresher
        .invoke(json!({"check_hooks": true}), Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(summary["orphans_forgotten"], 1, "{summary}");
    assert!(
        world
            .fx
            .store()
            .hook(&orphan.hash())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(world.subscriptions().await.len(), 1, "the live one stays");
    assert_eq!(world.handshake_status(orphan.expose_secret()).await, 410);
}
