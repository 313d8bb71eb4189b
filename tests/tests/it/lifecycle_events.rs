//! Connection lifecycle events (docs/events.md): each change puts exactly its documented event on
//! the `KEAPALIVE_EVENT_BUS` bus, at least once even when its writer dies between the write and
//! the publish (the outbox on the item, docs/design.md "Lifecycle events"), never with a secret.
//!
//! The bus is moto's EventBridge with one rule → an SQS queue, the first example of
//! docs/events.md: what the queue receives is what a consumer would.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_lambda_events::apigw::{
    ApiGatewayV2httpRequest, ApiGatewayV2httpRequestContext,
    ApiGatewayV2httpRequestContextHttpDescription,
};
use aws_lambda_events::http::Method;
use aws_sdk_dynamodb::types::AttributeValue;
use keap_sandbox::DEFAULT_APP;
use keapalive::clock::now_epoch_secs;
use keapalive::token_store::{ConnectionStatus, MarkGuard, PENDING_EVENTS, new_write_id};
use keapalive_tests::aws::{create_event_bus_to_queue, get_item, received_events, unique_name};
use keapalive_tests::emulator::{DynamoDbFault, Emulator};
use keapalive_tests::fixture::{CLIENT_SECRET, Fixture, REDIRECT_URI, connection_id};
use keapalive_tests::runtime_api::{FunctionProcess, RuntimeApi, binary_path, spawn_function};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(28);
const INIT_TIMEOUT: Duration = Duration::from_secs(120);
/// The refresher's Timeout in the template.
const REFRESHER_DEADLINE: Duration = Duration::from_secs(300);

/// One test's bus, queue and key-secret prefix, and the functions' environment pointing at them.
struct World {
    fx: Fixture,
    bus: String,
    queue: String,
    prefix: String,
}

impl World {
    async fn new() -> Self {
        let fx = Fixture::new().await;
        let (bus, queue) = create_event_bus_to_queue(&fx.sdk).await;
        let prefix = format!("{}/keys/", unique_name("keapalive-test"));
        Self {
            fx,
            bus,
            queue,
            prefix,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = Emulator::shared().process_env();
        env.extend(self.fx.env(&[
            ("KEAPALIVE_EVENT_BUS", &self.bus),
            ("KEAPALIVE_KEY_SECRET_PREFIX", &self.prefix),
        ]));
        // DEBUG: more than a deployed function logs, so a secret logged at DEBUG fails too.
        env.push(("AWS_LAMBDA_LOG_LEVEL".to_owned(), "debug".to_owned()));
        env
    }

    /// A warm binary of `name` against this world.
    async fn binary(&self, name: &str) -> (RuntimeApi, FunctionProcess) {
        let runtime = RuntimeApi::start_named(name).await;
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let function = spawn_function(&binary_path(name), &env, &runtime);
        assert!(
            runtime.wait_until_ready(INIT_TIMEOUT).await.is_some(),
            "{name} init failed: {:?}\n{}",
            runtime.init_error(),
            function.output()
        );
        (runtime, function)
    }

    /// Keap's redirect for a link the operator started for `id`: (the callback's query, the code).
    async fn consent(&self, operator: &RuntimeApi, id: &str) -> (String, String) {
        let started = operator
            .invoke(
                json!({"start_authorization": {"connection_id": id}}),
                DEADLINE,
            )
            .await
            .expect("start_authorization");
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let consent = browser
            .get(started["authorize_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let location = consent.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(REDIRECT_URI), "{location}");
        let query = url::Url::parse(&location)
            .unwrap()
            .query()
            .unwrap()
            .to_owned();
        let code = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        (query, code)
    }

    /// A key secret under the prefix; returns (its name, the key).
    async fn key_secret(&self) -> (String, String) {
        let key = self.fx.sandbox.issue_service_account_key(DEFAULT_APP);
        let name = format!("{}{}", self.prefix, unique_name("key"));
        aws_sdk_secretsmanager::Client::new(&self.fx.sdk)
            .create_secret()
            .name(&name)
            .secret_string(&key)
            .send()
            .await
            .unwrap();
        (name, key)
    }

    async fn events(&self) -> Vec<Value> {
        received_events(&self.fx.sdk, &self.queue).await
    }

    /// The events received so far, waiting up to 5 s for at least `count`.
    async fn wait_for_events(&self, count: usize) -> Vec<Value> {
        let mut all = Vec::new();
        for _ in 0..50 {
            all.extend(self.events().await);
            if all.len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        all
    }

    async fn pending_events(&self, pk: &str) -> usize {
        match get_item(&self.fx.sdk, &self.fx.table, pk)
            .await
            .and_then(|item| item.get(PENDING_EVENTS).cloned())
        {
            Some(AttributeValue::L(list)) => list.len(),
            _ => 0,
        }
    }

    /// Makes `id`'s access token due for refresh now.
    async fn make_due(&self, id: &str) {
        aws_sdk_dynamodb::Client::new(&self.fx.sdk)
            .update_item()
            .table_name(&self.fx.table)
            .key("pk", AttributeValue::S(format!("conn#{id}")))
            .update_expression("SET access_expires_at = :now")
            .expression_attribute_values(":now", AttributeValue::N(now_epoch_secs().to_string()))
            .send()
            .await
            .expect("make the connection due");
    }
}

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

/// One event per `event_id` (consumers dedupe on it), keyed by it.
fn deduped(events: &[Value]) -> BTreeMap<String, Value> {
    events
        .iter()
        .map(|event| {
            let id = event["detail"]["event_id"]
                .as_str()
                .unwrap_or_else(|| panic!("an event without event_id: {event}"))
                .to_owned();
            (id, event.clone())
        })
        .collect()
}

/// The one event of `detail_type` (after dedupe); panics unless there is exactly one.
fn the_event<'a>(events: &'a BTreeMap<String, Value>, detail_type: &str) -> &'a Value {
    let found: Vec<&Value> = events
        .values()
        .filter(|e| e["detail-type"] == detail_type)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {detail_type} event expected: {events:#?}"
    );
    found[0]
}

/// The documented detail: these keys and no other (`reason` only when given).
fn assert_documented_detail(event: &Value, id: &str, kind: &str, reason: Option<&str>) {
    assert_eq!(event["source"], "keapalive", "{event}");
    let detail = event["detail"].as_object().expect("detail is an object");
    let mut keys: Vec<&str> = detail.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = vec![
        "connection_id",
        "event_id",
        "generation",
        "kind",
        "occurred_at",
    ];
    if reason.is_some() {
        expected.push("reason");
        expected.sort_unstable();
    }
    assert_eq!(keys, expected, "{event}");
    assert_eq!(detail["connection_id"], id, "{event}");
    assert_eq!(detail["kind"], kind, "{event}");
    assert!(detail["generation"].as_u64().is_some(), "{event}");
    let occurred = detail["occurred_at"].as_i64().expect("occurred_at");
    assert!(
        (now_epoch_secs() - occurred).abs() < 600,
        "occurred_at {occurred}"
    );
    if let Some(reason) = reason {
        assert_eq!(detail["reason"], reason, "{event}");
    }
}

fn assert_no_secret(text: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !text.contains(secret),
            "{what} contains a secret ({} chars)",
            secret.len()
        );
    }
}

#[tokio::test]
async fn each_change_publishes_exactly_its_documented_event() {
    let world = World::new().await;
    let (operator_api, mut operator) = world.binary("operator").await;
    let (callback_api, mut callback) = world.binary("oauth-callback").await;
    let (refresher_api, mut refresher) = world.binary("token-refresher").await;

    // authorized: Keap's redirect reaches the callback.
    let (query, code) = world.consent(&operator_api, "default").await;
    let page = callback_api
        .invoke(callback_event(&query), DEADLINE)
        .await
        .expect("callback");
    assert_eq!(page["statusCode"], 200, "{page}");
    let stored = world
        .fx
        .store()
        .get(&connection_id("default"))
        .await
        .unwrap()
        .expect("authorized");
    let tokens = stored.tokens.clone().expect("a pair");
    use secrecy::ExposeSecret;
    let access = tokens.access_token.expose_secret().to_owned();
    let refresh = tokens.refresh_token.expose_secret().to_owned();

    // key_registered: the operator registers a key for another connection.
    let (secret_name, key) = world.key_secret().await;
    operator_api
        .invoke(
            json!({"register_service_account_key": {"connection_id": "keyed", "secret_id": secret_name}}),
            DEADLINE,
        )
        .await
        .expect("register_service_account_key");

    // needs_reauthorization: Keap revoked the grant and the scheduled refresh is rejected.
    world.fx.sandbox.revoke_grant(DEFAULT_APP);
    world.make_due("default").await;
    let summary = refresher_api
        .invoke(json!({}), REFRESHER_DEADLINE)
        .await
        .expect("scheduled run");
    assert_eq!(summary["newly_needs_reauthorization"], 1, "{summary}");
    let marked = world
        .fx
        .store()
        .get(&connection_id("default"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(marked.status, ConnectionStatus::NeedsReauthorization);

    // removed: the operator removes the key connection.
    let removed = operator_api
        .invoke(
            json!({"remove_connection": {"connection_id": "keyed"}}),
            DEADLINE,
        )
        .await
        .expect("remove_connection");
    assert_eq!(removed["removed"], true, "{removed}");

    let received = world.wait_for_events(4).await;
    let events = deduped(&received);
    assert_eq!(events.len(), 4, "one event per change: {events:#?}");
    let authorized = the_event(&events, "keapalive.connection.authorized");
    assert_documented_detail(authorized, "default", "oauth", None);
    assert_eq!(authorized["detail"]["generation"], stored.generation);
    let registered = the_event(&events, "keapalive.connection.key_registered");
    assert_documented_detail(registered, "keyed", "service_account_key", None);
    let needs = the_event(&events, "keapalive.connection.needs_reauthorization");
    assert_documented_detail(needs, "default", "oauth", Some("refresh_token_rejected"));
    assert_eq!(needs["detail"]["generation"], stored.generation);
    let gone = the_event(&events, "keapalive.connection.removed");
    assert_documented_detail(gone, "keyed", "service_account_key", None);
    assert_eq!(
        gone["detail"]["generation"],
        registered["detail"]["generation"]
    );
    // Each write published its own event and cleared it: nothing left for the refresher.
    assert_eq!(world.pending_events("conn#default").await, 0);
    assert_eq!(world.pending_events("tomb#keyed").await, 0);
    let tombstone = get_item(&world.fx.sdk, &world.fx.table, "tomb#keyed")
        .await
        .expect("tombstone");
    assert!(
        tombstone.contains_key("expires_at"),
        "TTL set once published"
    );
    assert!(!tombstone.contains_key("status"), "out of the status index");

    // No secret in any event or any function's log.
    let secrets = [
        access.as_str(),
        refresh.as_str(),
        code.as_str(),
        key.as_str(),
        CLIENT_SECRET,
    ];
    for event in &received {
        assert_no_secret(&event.to_string(), &secrets, "an event");
    }
    for process in [&mut operator, &mut callback, &mut refresher] {
        process.kill().await;
        assert_no_secret(&process.output(), &secrets, "a function's log");
    }
}

#[tokio::test]
async fn an_event_whose_writer_died_before_publishing_is_published_by_the_next_scheduled_run() {
    let world = World::new().await;
    let (operator_api, _operator) = world.binary("operator").await;
    let (callback_api, mut callback) = world.binary("oauth-callback").await;

    // Every PutEvents to this bus fails (the SDK's three attempts): the write lands, the
    // publish does not, and then the writer is stopped.
    let fault = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::put_events("InternalException")
                .times(3)
                .body_contains(&world.bus),
        )
        .await;
    let (query, _) = world.consent(&operator_api, "default").await;
    let page = callback_api
        .invoke(callback_event(&query), DEADLINE)
        .await
        .expect("callback");
    assert_eq!(page["statusCode"], 200, "{page}");
    fault.assert_fired(1).await;
    callback.kill().await;
    Emulator::shared().clear_faults_for(&world.bus).await;

    assert!(world.events().await.is_empty(), "nothing was published");
    assert_eq!(
        world.pending_events("conn#default").await,
        1,
        "the event waits on the item"
    );

    let (refresher_api, _refresher) = world.binary("token-refresher").await;
    let summary = refresher_api
        .invoke(json!({}), REFRESHER_DEADLINE)
        .await
        .expect("scheduled run");
    assert_eq!(summary["events_republished"], 1, "{summary}");
    let events = deduped(&world.wait_for_events(1).await);
    let authorized = the_event(&events, "keapalive.connection.authorized");
    assert_documented_detail(authorized, "default", "oauth", None);
    assert_eq!(world.pending_events("conn#default").await, 0);
}

#[tokio::test]
async fn two_quick_changes_and_a_removal_before_any_publish_all_arrive() {
    let world = World::new().await;
    let clients = world.fx.clients(&[("KEAPALIVE_EVENT_BUS", &world.bus)]);
    let store = &clients.store;
    let id = connection_id("default");

    // EventBridge refuses every entry (FailedEntryCount > 0) of the first two publishes.
    let refused = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::put_events_entries_failed()
                .times(2)
                .body_contains(&world.bus),
        )
        .await;
    let issued = world
        .fx
        .sandbox
        .issue_grant(keapalive_tests::fixture::CLIENT_ID, DEFAULT_APP);
    store
        .authorize(
            &id,
            &keapalive_tests::fixture::issued_tokens(&issued, None),
            true,
            &new_write_id(),
            now_epoch_secs(),
        )
        .await
        .unwrap();
    let version = store.get(&id).await.unwrap().unwrap().version();
    store
        .mark_needs_reauthorization(
            &id,
            &version,
            MarkGuard::GenerationOnly,
            "refresh_token_rejected",
            now_epoch_secs(),
        )
        .await
        .unwrap();
    refused.assert_fired(2).await;
    assert_eq!(world.pending_events("conn#default").await, 2);
    assert!(world.events().await.is_empty());

    // Both publishes of the removal fail too: the tombstone carries all three events.
    let failed = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::put_events("InternalException")
                .times(3)
                .body_contains(&world.bus),
        )
        .await;
    assert!(
        store
            .remove_connection(&id, now_epoch_secs())
            .await
            .unwrap()
    );
    failed.assert_fired(1).await;
    Emulator::shared().clear_faults_for(&world.bus).await;
    assert_eq!(world.pending_events("tomb#default").await, 3);
    let tombstone = get_item(&world.fx.sdk, &world.fx.table, "tomb#default")
        .await
        .unwrap();
    assert!(
        !tombstone.contains_key("expires_at"),
        "no TTL while events are pending"
    );
    assert!(world.events().await.is_empty());

    let run = clients
        .refresher()
        .run_scheduled(keapalive::deadline::Deadline::after(REFRESHER_DEADLINE), 1)
        .await
        .unwrap();
    assert_eq!(run.summary.events_republished, 3);
    let events = deduped(&world.wait_for_events(3).await);
    assert_eq!(events.len(), 3, "{events:#?}");
    the_event(&events, "keapalive.connection.authorized");
    assert_documented_detail(
        the_event(&events, "keapalive.connection.needs_reauthorization"),
        "default",
        "oauth",
        Some("refresh_token_rejected"),
    );
    the_event(&events, "keapalive.connection.removed");
    assert_eq!(world.pending_events("tomb#default").await, 0);
    let tombstone = get_item(&world.fx.sdk, &world.fx.table, "tomb#default")
        .await
        .unwrap();
    assert!(tombstone.contains_key("expires_at"), "TTL once published");
}

/// The resources of docs/examples/needs_reauthorization_rules.yaml as JSON (read with cfn-lint's
/// decoder, which knows `!Sub` and `!GetAtt`, in the emulator's Python).
fn documented_rules() -> serde_json::Map<String, Value> {
    let path =
        keapalive_tests::workspace::root().join("docs/examples/needs_reauthorization_rules.yaml");
    let output = std::process::Command::new(keapalive_tests::emulator::python())
        .args([
            "-c",
            "import json, sys\nfrom cfnlint.decode import decode\n\
             template, errors = decode(sys.argv[1])\nassert not errors, errors\n\
             print(json.dumps(template['Resources'], default=str))",
        ])
        .arg(&path)
        .output()
        .expect("the emulator's Python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the resources as JSON")
}

#[tokio::test]
async fn the_documented_rule_delivers_needs_reauthorization_to_its_queue() {
    let resources = documented_rules();
    let rule = &resources["NeedsReauthorizationToQueue"]["Properties"];
    let pattern = rule["EventPattern"].clone();
    assert_eq!(
        rule["Targets"][0]["Arn"]["Fn::GetAtt"][0],
        "NeedsReauthorizationQueue"
    );
    assert_eq!(
        resources["QueueAcceptsTheRule"]["Properties"]["PolicyDocument"]["Statement"][0]["Principal"]
            ["Service"],
        "events.amazonaws.com"
    );

    // The SNS e-mail half, statically: the emulator cannot deliver e-mail.
    let email_rule = &resources["NeedsReauthorizationToEmail"]["Properties"];
    assert_eq!(
        email_rule["EventPattern"], pattern,
        "both rules match the same events"
    );
    assert_eq!(email_rule["EventBusName"], rule["EventBusName"]);
    assert_eq!(
        email_rule["Targets"][0]["Arn"]["Ref"],
        "NeedsReauthorizationTopic"
    );
    let subscription = &resources["NeedsReauthorizationEmail"]["Properties"];
    assert_eq!(subscription["Protocol"], "email");
    assert_eq!(subscription["TopicArn"]["Ref"], "NeedsReauthorizationTopic");
    let topic_policy =
        &resources["TopicAcceptsTheRule"]["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!(topic_policy["Principal"]["Service"], "events.amazonaws.com");
    assert_eq!(topic_policy["Action"], "sns:Publish");
    let template = email_rule["Targets"][0]["InputTransformer"]["InputTemplate"]
        .as_str()
        .expect("an input template");
    assert!(template.contains("<connection>") && template.contains("<reason>"));

    // The queue half through the emulator: the example's pattern on a bus, its queue the target.
    let fx = Fixture::new().await;
    let (bus, queue) =
        keapalive_tests::aws::create_event_bus_with_rule(&fx.sdk, &pattern.to_string()).await;
    let clients = fx.clients(&[("KEAPALIVE_EVENT_BUS", &bus)]);
    let store = &clients.store;
    let id = connection_id("default");
    let issued = fx
        .sandbox
        .issue_grant(keapalive_tests::fixture::CLIENT_ID, DEFAULT_APP);
    store
        .authorize(
            &id,
            &keapalive_tests::fixture::issued_tokens(&issued, None),
            true,
            &new_write_id(),
            now_epoch_secs(),
        )
        .await
        .unwrap();
    let version = store.get(&id).await.unwrap().unwrap().version();
    store
        .mark_needs_reauthorization(
            &id,
            &version,
            MarkGuard::GenerationOnly,
            "refresh_token_rejected",
            now_epoch_secs(),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    for _ in 0..50 {
        received.extend(received_events(&fx.sdk, &queue).await);
        if !received.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    received.extend(received_events(&fx.sdk, &queue).await);
    assert_eq!(
        received.len(),
        1,
        "only the needs_reauthorization event: {received:#?}"
    );
    assert_eq!(
        received[0]["detail-type"],
        "keapalive.connection.needs_reauthorization"
    );
    assert_documented_detail(
        &received[0],
        "default",
        "oauth",
        Some("refresh_token_rejected"),
    );
}

#[tokio::test]
async fn a_key_rejection_marked_by_contact_upsert_publishes_its_reason() {
    let world = World::new().await;
    let (key, _) = crate::support::seed_key_connection(&world.fx, "default", DEFAULT_APP).await;
    let (upsert, mut function) = crate::support::function_binary(
        &world.fx,
        "contact-upsert",
        &[("KEAPALIVE_EVENT_BUS", &world.bus)],
    )
    .await;
    let email = "revoked@buttonpush.example";
    let request = json!({"connection_id": "default", "contact": {"email": email}});
    upsert
        .invoke(request.clone(), DEADLINE)
        .await
        .expect("the key works");

    // Keap revoked the key; its rejection was first confirmed 100 s ago (inside the marking
    // window: docs/design.md, "Connection kinds").
    world.fx.sandbox.revoke_service_account_key(&key);
    crate::support::key_rejected_since_secs_ago(&world.fx, "default", 100).await;
    let refused = upsert
        .invoke(request, DEADLINE)
        .await
        .expect_err("the key is revoked");
    assert_eq!(
        refused.error_type, "NotAuthorized",
        "{}",
        refused.error_message
    );

    let events = deduped(&world.wait_for_events(1).await);
    assert_eq!(events.len(), 1, "{events:#?}");
    let marked = the_event(&events, "keapalive.connection.needs_reauthorization");
    assert_documented_detail(
        marked,
        "default",
        "service_account_key",
        Some("key_rejected"),
    );
    assert_eq!(world.pending_events("conn#default").await, 0);
    function.kill().await;
    for event in events.values() {
        assert_no_secret(&event.to_string(), &[&key, email], "an event");
    }
    assert_no_secret(&function.output(), &[&key, email], "contact-upsert's log");
}

#[tokio::test]
async fn a_hanging_event_bus_holds_the_callback_page_at_most_the_publish_bound() {
    let world = World::new().await;
    let (operator_api, _operator) = world.binary("operator").await;
    let (callback_api, _callback) = world.binary("oauth-callback").await;
    // Every PutEvents to this bus hangs 10 s: far beyond the 3 s publish bound.
    let fault = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::put_events("InternalException")
                .mode(keapalive_tests::emulator::FaultMode::Hang)
                .hang(Duration::from_secs(10))
                .times(5)
                .body_contains(&world.bus),
        )
        .await;
    let (query, _) = world.consent(&operator_api, "default").await;
    let started = std::time::Instant::now();
    let page = callback_api
        .invoke(callback_event(&query), DEADLINE)
        .await
        .expect("callback");
    let took = started.elapsed();
    assert_eq!(page["statusCode"], 200, "{page}");
    fault.assert_fired(1).await;
    assert!(
        took < Duration::from_secs(3 + 3),
        "the page waited {took:?} for EventBridge"
    );
    assert_eq!(
        world.pending_events("conn#default").await,
        1,
        "the event waits for the sweep"
    );
    Emulator::shared().clear_faults_for(&world.bus).await;
}
