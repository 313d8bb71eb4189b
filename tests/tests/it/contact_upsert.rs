//! contact-upsert against the Keap sandbox and the AWS emulator: the ButtonPush story, custom
//! fields and tags by name, strict validation, token expiry under concurrency, request counts,
//! SQS batches and the real binary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use aws_sdk_sqs::types::Message;
use keap_sandbox::{Endpoint, Fault, FaultKind, most_in_flight};
use keapalive::clock::now_epoch_secs;
use keapalive::contact::{UpsertError, UpsertResponse, UpsertSettings};
use keapalive::token_store::MarkGuard;
use keapalive_tests::aws::{create_queue, drain_queue};
use keapalive_tests::emulator::Emulator;
use keapalive_tests::fixture::{Fixture, connection_id};
use keapalive_tests::logs::{assert_logs_never_contain, capture_logs};
use keapalive_tests::runtime_api::{RuntimeApi, binary_path, spawn_function};
use serde_json::{Value, json};
use tokio::sync::Barrier;

const APP: &str = "buttonpush01";

fn attribute<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .message_attributes()
        .and_then(|attributes| attributes.get(name))
        .and_then(|value| value.string_value())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buttonpush_story_end_to_end() {
    capture_logs();
    let fx = Fixture::new().await;
    let issued = fx.seed_connection("default", APP, None).await;
    let tag = fx.sandbox.add_tag(APP, "buttonpushed");
    let container = container(&fx, &[]);
    let email = "ada.signup@buttonpush.example";

    let signed_up = upsert(
        &container.service,
        json!({"connection_id": "default",
               "contact": {"email": email, "given_name": "Ada", "family_name": "Lovelace"},
               "match_on": "email"}),
    )
    .await
    .unwrap();
    assert!(signed_up.created);
    assert!(signed_up.tags_applied.is_empty());

    let again = upsert(
        &container.service,
        json!({"contact": {"email": email, "phone": "+44 20 7946 0000",
                           "company": "Analytical Engines"}}),
    )
    .await
    .unwrap();
    assert!(!again.created);
    assert_eq!(again.contact_id, signed_up.contact_id);

    let pushed = upsert(
        &container.service,
        json!({"contact": {"email": email, "tags": ["buttonpushed"]}}),
    )
    .await
    .unwrap();
    assert!(!pushed.created);
    assert_eq!(pushed.contact_id, signed_up.contact_id);
    assert_eq!(pushed.tags_applied, vec![tag]);

    let contacts = fx.sandbox.contacts(APP);
    assert_eq!(contacts.len(), 1, "exactly one contact: {contacts:?}");
    let contact = &contacts[0];
    assert_eq!(contact["id"], signed_up.contact_id);
    assert_eq!(contact["given_name"], "Ada");
    assert_eq!(contact["family_name"], "Lovelace");
    assert_eq!(
        contact["email_addresses"],
        json!([{"email": email, "field": "EMAIL1"}])
    );
    assert_eq!(contact["phone_numbers"][0]["number"], "+44 20 7946 0000");
    assert_eq!(contact["company"]["company_name"], "Analytical Engines");
    assert_eq!(tag_ids(contact), vec![tag]);

    let api = api_requests(&fx);
    let shape: Vec<(String, String)> = api
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("PUT".into(), "/crm/rest/v1/contacts".into()),
            ("PUT".into(), "/crm/rest/v1/contacts".into()),
            ("GET".into(), "/crm/rest/v1/tags".into()),
            ("PUT".into(), "/crm/rest/v1/contacts".into()),
            (
                "POST".into(),
                format!("/crm/rest/v1/contacts/{}/tags", signed_up.contact_id)
            ),
        ]
    );
    assert_eq!(
        api.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![201, 200, 200, 200, 200]
    );
    assert_eq!(token_endpoint_requests(&fx), 0);
    assert_logs_never_contain(&[&issued.access_token, &issued.refresh_token, email]);
}

#[tokio::test]
async fn custom_fields_by_label_and_by_id_land_as_id_content() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let color = fx.sandbox.add_custom_field(APP, "Favorite Color", "Text");
    let plan = fx.sandbox.add_custom_field(APP, "Plan", "Text");
    let container = container(&fx, &[]);

    let plan_key = plan.to_string();
    let response = upsert(
        &container.service,
        json!({"contact": {"email": "fields@buttonpush.example",
                           "custom_fields": {"Favorite Color": "blue", plan_key: "pro"}}}),
    )
    .await
    .unwrap();
    assert!(response.created);

    let contact = contact_with_email(&fx, APP, "fields@buttonpush.example").unwrap();
    let mut fields = contact["custom_fields"].as_array().unwrap().clone();
    fields.sort_by_key(|f| f["id"].as_i64());
    let mut expected = vec![
        json!({"id": color, "content": "blue"}),
        json!({"id": plan, "content": "pro"}),
    ];
    expected.sort_by_key(|f| f["id"].as_i64());
    assert_eq!(fields, expected);

    // An unknown label is the caller's mistake: named, and nothing written.
    let before = fx.sandbox.contacts(APP).len();
    let error = upsert(
        &container.service,
        json!({"contact": {"email": "other@buttonpush.example",
                           "custom_fields": {"Shoe Size": 42}}}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, UpsertError::Validation(m) if m.contains("Shoe Size")),
        "{error:?}"
    );
    assert_eq!(fx.sandbox.contacts(APP).len(), before);
}

#[tokio::test]
async fn unknown_tags_are_rejected_or_created_as_configured() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;

    let strict = container(&fx, &[]);
    let error = upsert(
        &strict.service,
        json!({"contact": {"email": "t@buttonpush.example", "tags": ["newsletter"]}}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, UpsertError::Validation(m) if m.contains("newsletter")
            && m.contains("KEAPALIVE_CREATE_MISSING_TAGS")),
        "{error:?}"
    );
    assert!(
        fx.sandbox.contacts(APP).is_empty(),
        "validated before the PUT"
    );
    assert!(fx.sandbox.tags(APP).is_empty());

    let creating = container(&fx, &[("KEAPALIVE_CREATE_MISSING_TAGS", "true")]);
    let response = upsert(
        &creating.service,
        json!({"contact": {"email": "t@buttonpush.example", "tags": ["newsletter"]}}),
    )
    .await
    .unwrap();
    let tags = fx.sandbox.tags(APP);
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0].1, "newsletter");
    assert_eq!(response.tags_applied, vec![tags[0].0]);
    let contact = contact_with_email(&fx, APP, "t@buttonpush.example").unwrap();
    assert_eq!(tag_ids(&contact), vec![tags[0].0]);
}

/// Every case must fail validation before any network call.
fn malformed_requests() -> Vec<(&'static str, String)> {
    let long = "x".repeat(256);
    let many_tags: Vec<String> = (0..101).map(|i| format!("tag{i}")).collect();
    let many_fields: serde_json::Map<String, Value> = (0..101)
        .map(|i| (format!("Field {i}"), json!("v")))
        .collect();
    let cases: Vec<(&str, String)> = vec![
        ("empty body", String::new()),
        ("whitespace body", "  \n".into()),
        ("not JSON", "contact=ada@example.com".into()),
        ("truncated JSON", r#"{"contact": {"email": "ada@example.com""#.into()),
        ("JSON array", "[]".into()),
        ("JSON string", r#""ada@example.com""#.into()),
        ("empty object", "{}".into()),
        ("trailing data", r#"{"contact": {"email": "ada@example.com"}} {}"#.into()),
        ("unknown top-level field", r#"{"contact": {"email": "ada@example.com"}, "dry_run": true}"#.into()),
        ("unknown contact field", r#"{"contact": {"email": "ada@example.com", "emails": []}}"#.into()),
        ("Keap's own shape", r#"{"contact": {"email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}}"#.into()),
        ("missing email", r#"{"contact": {"given_name": "Ada"}}"#.into()),
        ("email not a string", r#"{"contact": {"email": 42}}"#.into()),
        ("contact as array", r#"{"contact": ["ada@example.com", "Ada"]}"#.into()),
        ("request as array", r#"[{"email": "ada@example.com"}]"#.into()),
        ("email list", r#"{"contact": {"email": ["ada@example.com"]}}"#.into()),
        ("email without @", r#"{"contact": {"email": "ada.example.com"}}"#.into()),
        ("email without domain dot", r#"{"contact": {"email": "ada@example"}}"#.into()),
        ("email with space", r#"{"contact": {"email": "ada lovelace@example.com"}}"#.into()),
        ("email with two @", r#"{"contact": {"email": "ada@@example.com"}}"#.into()),
        ("email too long", format!(r#"{{"contact": {{"email": "{}@example.com"}}}}"#, "a".repeat(250))),
        ("email given twice", r#"{"contact": {"email": "ada@example.com", "email": "bob@example.com"}}"#.into()),
        ("contact given twice", r#"{"contact": {"email": "ada@example.com"}, "contact": {"email": "b@example.com"}}"#.into()),
        ("given_name not a string", r#"{"contact": {"email": "ada@example.com", "given_name": 7}}"#.into()),
        ("given_name oversized", format!(r#"{{"contact": {{"email": "ada@example.com", "given_name": "{long}"}}}}"#)),
        ("family_name empty", r#"{"contact": {"email": "ada@example.com", "family_name": "  "}}"#.into()),
        ("company oversized", format!(r#"{{"contact": {{"email": "ada@example.com", "company": "{long}"}}}}"#)),
        ("phone as number", r#"{"contact": {"email": "ada@example.com", "phone": 5551234}}"#.into()),
        ("phone with letters", r#"{"contact": {"email": "ada@example.com", "phone": "call me"}}"#.into()),
        ("unknown match_on", r#"{"contact": {"email": "ada@example.com"}, "match_on": "name"}"#.into()),
        ("match_on Keap spelling", r#"{"contact": {"email": "ada@example.com"}, "match_on": "EmailAndName"}"#.into()),
        ("bad connection_id", r#"{"connection_id": "conn#1", "contact": {"email": "ada@example.com"}}"#.into()),
        ("null connection_id", r#"{"connection_id": null, "contact": {"email": "ada@example.com"}}"#.into()),
        ("custom_fields as list", r#"{"contact": {"email": "ada@example.com", "custom_fields": [{"id": 1, "content": "x"}]}}"#.into()),
        ("custom field value object", r#"{"contact": {"email": "ada@example.com", "custom_fields": {"Color": {"v": 1}}}}"#.into()),
        ("custom field key twice", r#"{"contact": {"email": "ada@example.com", "custom_fields": {"Color": "a", "Color": "b"}}}"#.into()),
        ("custom field empty key", r#"{"contact": {"email": "ada@example.com", "custom_fields": {" ": "a"}}}"#.into()),
        ("custom field value oversized", format!(r#"{{"contact": {{"email": "ada@example.com", "custom_fields": {{"Notes": "{}"}}}}}}"#, "n".repeat(10_001))),
        ("too many custom fields", json!({"contact": {"email": "ada@example.com", "custom_fields": many_fields}}).to_string()),
        ("tags not a list", r#"{"contact": {"email": "ada@example.com", "tags": "vip"}}"#.into()),
        ("tag as object", r#"{"contact": {"email": "ada@example.com", "tags": [{"id": 1}]}}"#.into()),
        ("negative tag id", r#"{"contact": {"email": "ada@example.com", "tags": [-3]}}"#.into()),
        ("fractional tag id", r#"{"contact": {"email": "ada@example.com", "tags": [1.5]}}"#.into()),
        ("empty tag name", r#"{"contact": {"email": "ada@example.com", "tags": [""]}}"#.into()),
        ("opt_in_reason empty", r#"{"contact": {"email": "ada@example.com", "opt_in_reason": " "}}"#.into()),
        ("opt_in_reason oversized", format!(r#"{{"contact": {{"email": "ada@example.com", "opt_in_reason": "{long}"}}}}"#)),
        ("lead_source_id zero", r#"{"contact": {"email": "ada@example.com", "lead_source_id": 0}}"#.into()),
        ("lead_source_id as string", r#"{"contact": {"email": "ada@example.com", "lead_source_id": "4"}}"#.into()),
        ("owner_id negative", r#"{"contact": {"email": "ada@example.com", "owner_id": -1}}"#.into()),
        ("address as string", r#"{"contact": {"email": "ada@example.com", "address": "1 Main St"}}"#.into()),
        ("address empty", r#"{"contact": {"email": "ada@example.com", "address": {}}}"#.into()),
        ("address unknown part", r#"{"contact": {"email": "ada@example.com", "address": {"city": "Paris"}}}"#.into()),
        ("address alpha-2 country", r#"{"contact": {"email": "ada@example.com", "address": {"country_code": "US"}}}"#.into()),
        ("address region name", r#"{"contact": {"email": "ada@example.com", "address": {"region": "Illinois", "country_code": "USA"}}}"#.into()),
        ("address region without country", r#"{"contact": {"email": "ada@example.com", "address": {"region": "US-IL"}}}"#.into()),
        ("address bad US ZIP", r#"{"contact": {"email": "ada@example.com", "address": {"postal_code": "627", "country_code": "USA"}}}"#.into()),
        ("too many tags", json!({"contact": {"email": "ada@example.com", "tags": many_tags}}).to_string()),
        ("request too large", format!(r#"{{"contact": {{"email": "ada@example.com"}}, "pad": "{}"}}"#, "p".repeat(70_000))),
        ("SQS-looking event from another source", r#"{"Records": [{"eventSource": "aws:sns", "body": "{}"}]}"#.into()),
    ];
    cases
}

#[tokio::test]
async fn malformed_requests_are_validation_errors_without_any_keap_call() {
    capture_logs();
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let queue = create_queue(&fx.sdk).await;
    let container = container(&fx, &[("KEAPALIVE_DEAD_LETTER_QUEUE_URL", &queue)]);
    let cases = malformed_requests();
    assert!(cases.len() >= 25);

    // Direct invocations.
    for (name, body) in &cases {
        let error = container
            .service
            .handle(body.as_bytes(), deadline())
            .await
            .expect_err(name);
        assert_eq!(error.error_type(), "ValidationError", "{name}: {error}");
        assert!(
            !error.to_string().contains("ada@example.com"),
            "{name}: {error}"
        );
    }
    // The same bodies as SQS messages: every one dead-lettered as a ValidationError.
    let records: Vec<(String, String)> = cases
        .iter()
        .enumerate()
        .filter(|(_, (_, body))| !body.is_empty())
        .map(|(i, (_, body))| (format!("m{i}"), body.clone()))
        .collect();
    let failed = run_owned_batch(&container.service, &records).await;
    assert!(failed.is_empty(), "{failed:?}");
    let dead = drain_queue(&fx.sdk, &queue).await;
    assert_eq!(dead.len(), records.len());
    for message in &dead {
        assert_eq!(attribute(message, "error_type"), Some("ValidationError"));
        assert!(attribute(message, "error_message").is_some_and(|m| !m.is_empty()));
        assert!(
            records
                .iter()
                .any(|(_, body)| Some(body.as_str()) == message.body())
        );
    }

    assert!(api_requests(&fx).is_empty(), "{:?}", api_requests(&fx));
    assert_eq!(token_endpoint_requests(&fx), 0);
    assert_logs_never_contain(&["ada@example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_upserts_survive_token_expiry_with_exactly_one_refresh() {
    capture_logs();
    const UPSERTS: usize = 32;
    let fx = Fixture::new().await;
    let issued = fx.seed_connection("default", APP, None).await;
    let container = Arc::new(container(&fx, &[]));
    // Warm: the access token is cached.
    upsert(
        &container.service,
        json!({"contact": {"email": "warm@buttonpush.example"}}),
    )
    .await
    .unwrap();

    // 32 upserts through one container's limiter (10/s) take ~3 s; the token dies at ~1 s,
    // so some requests carry a live token and the rest the dead one.
    let barrier = Arc::new(Barrier::new(UPSERTS + 1));
    let tasks: Vec<_> = (0..UPSERTS)
        .map(|i| {
            let container = container.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                upsert(
                    &container.service,
                    json!({"contact": {"email": format!("user{i}@buttonpush.example")}}),
                )
                .await
            })
        })
        .collect();
    barrier.wait().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    fx.sandbox.expire_access_tokens();
    for task in tasks {
        let response = task.await.unwrap().expect("every upsert succeeds");
        assert!(response.created);
    }

    assert_eq!(refresh_requests(&fx), 1, "exactly one refresh");
    let rejected = api_requests(&fx).iter().filter(|r| r.status == 401).count();
    assert!(rejected >= 1, "the token did expire mid-run");
    assert_eq!(fx.sandbox.contacts(APP).len(), UPSERTS + 1);
    let connection = fx
        .store()
        .get(&connection_id("default"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connection.generation, 2);
    assert_logs_never_contain(&[&issued.access_token, &issued.refresh_token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_upserts_with_an_expired_stored_token_refresh_once() {
    const UPSERTS: usize = 32;
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, Some(now_epoch_secs() - 60))
        .await;
    let container = Arc::new(container(&fx, &[("KEAPALIVE_KEAP_RATE_PER_SEC", "100")]));
    let barrier = Arc::new(Barrier::new(UPSERTS));
    let tasks: Vec<_> = (0..UPSERTS)
        .map(|i| {
            let container = container.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                upsert(
                    &container.service,
                    json!({"contact": {"email": format!("cold{i}@buttonpush.example")}}),
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("every upsert succeeds");
    }
    assert_eq!(refresh_requests(&fx), 1);
    assert!(api_requests(&fx).iter().all(|r| r.status == 201));
}

#[tokio::test]
async fn warm_upserts_cost_one_keap_request_and_no_aws_request() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    fx.sandbox.add_tag(APP, "buttonpushed");
    fx.sandbox.add_custom_field(APP, "Favorite Color", "Text");
    let container = container(&fx, &[]);
    let emulator = Emulator::shared();
    let aws_requests = || async {
        let table: u64 = emulator.request_counts_for(&fx.table).await.values().sum();
        let secret: u64 = emulator
            .request_counts_for(&fx.secret_id)
            .await
            .values()
            .sum();
        table + secret
    };

    // Cold: reads the connection.
    upsert(
        &container.service,
        json!({"contact": {"email": "w@buttonpush.example"}}),
    )
    .await
    .unwrap();
    let aws_before = aws_requests().await;
    assert!(aws_before > 0, "the emulator counts this table's requests");
    fx.sandbox.clear_requests();

    upsert(
        &container.service,
        json!({"contact": {"email": "w@buttonpush.example"}}),
    )
    .await
    .unwrap();
    assert_eq!(api_requests(&fx).len(), 1, "warm upsert without tags");
    assert_eq!(aws_requests().await, aws_before, "no AWS request when warm");

    let tagged = json!({"contact": {"email": "w@buttonpush.example", "tags": ["buttonpushed"],
                                    "custom_fields": {"Favorite Color": "red"}}});
    upsert(&container.service, tagged.clone()).await.unwrap();
    fx.sandbox.clear_requests();
    upsert(&container.service, tagged).await.unwrap();
    let paths: Vec<String> = api_requests(&fx).iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths.len(),
        2,
        "upsert + apply tags once ids are cached: {paths:?}"
    );
    assert_eq!(aws_requests().await, aws_before);
}

#[tokio::test]
async fn throttling_is_waited_out_within_budget_and_reported_beyond_it() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let container = container(&fx, &[]);
    let request = json!({"contact": {"email": "slow@buttonpush.example"}});

    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 429,
            retry_after_secs: Some(1),
        },
        times: 1,
    });
    let started = Instant::now();
    upsert(&container.service, request.clone()).await.unwrap();
    fault.assert_fired(1);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );

    let fault2 = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 429,
            retry_after_secs: Some(30),
        },
        times: 1,
    });
    let started = Instant::now();
    let error = upsert(&container.service, request.clone())
        .await
        .unwrap_err();
    fault2.assert_fired(1);
    assert_eq!(error.error_type(), "RateLimited", "{error}");
    // Far below the 30 s Keap asked for: the upsert gave up instead of waiting hopelessly.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no hopeless wait"
    );

    // 5xx: one retry, then Unavailable.
    let fault3 = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times: 2,
    });
    let error = upsert(&container.service, request.clone())
        .await
        .unwrap_err();
    fault3.assert_fired(2);
    assert_eq!(error.error_type(), "Unavailable", "{error}");
    let fault4 = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 502,
            retry_after_secs: None,
        },
        times: 1,
    });
    upsert(&container.service, request).await.unwrap();
    fault4.assert_fired(1);
}

fn good(email: &str) -> String {
    json!({"contact": {"email": email}}).to_string()
}

const INVALID: &str = r#"{"contact": {"email": "not-an-email"}}"#;

#[tokio::test]
async fn sqs_batch_dead_letters_permanent_failures_and_retries_transient_ones() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let queue = create_queue(&fx.sdk).await;
    let with_dlq = sequential(&fx, Some(&queue));
    let transient = good("transient@buttonpush.example");
    let records = [
        ("transient", transient.as_str()),
        ("invalid", INVALID),
        ("good", &good("good@buttonpush.example")),
    ];

    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times: 2,
    });
    let failed = run_batch(&with_dlq, &records).await;
    fault.assert_fired(2);
    assert_eq!(failed, vec!["transient"]);
    let dead = drain_queue(&fx.sdk, &queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(INVALID), "body unchanged");
    assert_eq!(attribute(&dead[0], "error_type"), Some("ValidationError"));
    assert!(attribute(&dead[0], "error_message").is_some_and(|m| m.contains("contact.email")));
    assert!(contact_with_email(&fx, APP, "good@buttonpush.example").is_some());
    assert!(contact_with_email(&fx, APP, "transient@buttonpush.example").is_none());

    // Without a dead-letter queue, both failures stay with SQS.
    let without_dlq = sequential(&fx, None);
    let fault2 = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times: 2,
    });
    let failed = run_batch(&without_dlq, &records).await;
    fault2.assert_fired(2);
    assert_eq!(failed, vec!["invalid", "transient"]);

    // A dead-letter queue that cannot be written to: the record is not acknowledged.
    let missing_queue = format!("{queue}-missing");
    let broken_dlq = sequential(&fx, Some(&missing_queue));
    let failed = run_batch(
        &broken_dlq,
        &[
            ("invalid", INVALID),
            ("good", &good("g2@buttonpush.example")),
        ],
    )
    .await;
    assert_eq!(failed, vec!["invalid"]);
}

/// A container whose batches run one record at a time.
fn sequential(fx: &Fixture, dead_letter_queue: Option<&str>) -> Service {
    let clients = fx.clients(&[]);
    let mut settings = UpsertSettings::from_config(&clients.config);
    settings.batch_concurrency = 1;
    settings.dead_letter_queue_url = dead_letter_queue.map(str::to_owned);
    Service::new(
        clients.rest.clone(),
        Arc::new(clients.on_demand()),
        clients.secrets.clone(),
        clients.sqs.clone(),
        settings,
    )
}

#[tokio::test]
async fn sqs_batch_keeps_keap_rejections_out_of_retries() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let queue = create_queue(&fx.sdk).await;
    let container = container(&fx, &[("KEAPALIVE_DEAD_LETTER_QUEUE_URL", &queue)]);
    // A tag the connection's Keap user may not apply: Keap refuses it (NO_PERMISSION).
    let locked = fx.sandbox.add_tag(APP, "locked");
    fx.sandbox
        .set_tag_apply_outcome(APP, locked, Some("NO_PERMISSION"));
    let refused =
        json!({"contact": {"email": "r@buttonpush.example", "tags": [locked]}}).to_string();
    let failed = run_batch(&container.service, &[("refused", &refused)]).await;
    assert!(failed.is_empty());
    let dead = drain_queue(&fx.sdk, &queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(attribute(&dead[0], "error_type"), Some("KeapRejected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_batch_processes_records_concurrently() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    fx.sandbox
        .set_latency(Endpoint::Api, Duration::from_millis(300));
    let container = container(&fx, &[("KEAPALIVE_KEAP_RATE_PER_SEC", "100")]);
    let bodies: Vec<(String, String)> = (0..8)
        .map(|i| {
            (
                format!("m{i}"),
                good(&format!("batch{i}@buttonpush.example")),
            )
        })
        .collect();
    assert!(
        run_owned_batch(&container.service, &bodies)
            .await
            .is_empty()
    );
    assert_eq!(fx.sandbox.contacts(APP).len(), 8);
    // Sequentially, each upsert would wait out the previous one's 300 ms: 1 in flight.
    let in_flight = most_in_flight(&api_requests(&fx));
    assert!(
        in_flight >= 2,
        "at most {in_flight} upsert in flight at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_batch_resolves_the_model_and_each_tag_once() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    fx.sandbox.add_custom_field(APP, "Favorite Color", "Text");
    fx.sandbox.add_tag(APP, "buttonpushed");
    fx.sandbox
        .set_latency(Endpoint::Api, Duration::from_millis(100));
    let container = container(&fx, &[("KEAPALIVE_KEAP_RATE_PER_SEC", "100")]);
    let bodies: Vec<(String, String)> = (0..8)
        .map(|i| {
            let contact = json!({"contact": {
                "email": format!("cold{i}@buttonpush.example"),
                "custom_fields": {"Favorite Color": "blue"},
                "tags": ["buttonpushed"],
            }});
            (format!("m{i}"), contact.to_string())
        })
        .collect();

    assert!(
        run_owned_batch(&container.service, &bodies)
            .await
            .is_empty()
    );

    let requests = api_requests(&fx);
    let count = |method: &str, path: &str| {
        requests
            .iter()
            .filter(|r| r.method == method && r.path.ends_with(path))
            .count()
    };
    assert_eq!(count("GET", "/contacts/model"), 1, "{requests:#?}");
    assert_eq!(count("GET", "/tags"), 1, "{requests:#?}");
    assert_eq!(fx.sandbox.contacts(APP).len(), 8);
}

#[tokio::test]
async fn sqs_batch_for_a_connection_needing_reauthorization_fails_every_record() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let id = connection_id("default");
    let store = fx.store();
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
    let queue = create_queue(&fx.sdk).await;
    let container = container(&fx, &[("KEAPALIVE_DEAD_LETTER_QUEUE_URL", &queue)]);

    let a = good("a@buttonpush.example");
    let b = good("b@buttonpush.example");
    let failed = run_batch(&container.service, &[("a", &a), ("b", &b)]).await;
    assert_eq!(failed, vec!["a", "b"]);
    assert!(
        drain_queue(&fx.sdk, &queue).await.is_empty(),
        "NotAuthorized is never dead-lettered"
    );
    assert!(api_requests(&fx).is_empty());

    let error = upsert(
        &container.service,
        json!({"contact": {"email": "a@buttonpush.example"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.error_type(), "NotAuthorized");
    assert!(error.to_string().contains("start_authorization"), "{error}");

    let missing = upsert(
        &container.service,
        json!({"connection_id": "nobody", "contact": {"email": "a@buttonpush.example"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(missing.error_type(), "NotAuthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_handles_direct_and_sqs_invocations() {
    capture_logs();
    let fx = Fixture::new().await;
    let issued = fx.seed_connection("default", APP, None).await;
    let tag = fx.sandbox.add_tag(APP, "buttonpushed");
    let binary = binary_path("contact-upsert");
    let runtime = RuntimeApi::start_named("contact-upsert").await;
    let mut env = fx.env(&[]);
    env.retain(|(k, _)| k != "KEAPALIVE_REDIRECT_URI");
    env.extend(Emulator::shared().process_env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut function = spawn_function(&binary, &env, &runtime);
    assert!(
        runtime
            .wait_until_ready(Duration::from_secs(60))
            .await
            .is_some(),
        "init failed: {:?}\n{}",
        runtime.init_error(),
        function.output()
    );
    let limit = Duration::from_secs(20);

    let created = runtime
        .invoke(
            json!({"contact": {"email": "bin@buttonpush.example", "tags": ["buttonpushed"]}}),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(created["created"], true);
    assert_eq!(created["tags_applied"], json!([tag]));

    let invalid = runtime
        .invoke(
            json!({"contact": {"email": "bin@buttonpush.example", "nick": "x"}}),
            limit,
        )
        .await
        .unwrap_err();
    assert_eq!(invalid.error_type, "ValidationError");
    assert!(
        invalid.error_message.contains("nick"),
        "{}",
        invalid.error_message
    );

    let batch = runtime
        .invoke(
            sqs_event(&[("ok", &good("bin@buttonpush.example")), ("bad", INVALID)]),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(
        batch,
        json!({"batchItemFailures": [{"itemIdentifier": "bad"}]}),
        "no dead-letter queue configured: the invalid record stays with SQS"
    );
    let contact = contact_with_email(&fx, APP, "bin@buttonpush.example").unwrap();
    assert_eq!(tag_ids(&contact), vec![tag]);

    function.kill().await;
    assert_logs_never_contain(&[
        &issued.access_token,
        &issued.refresh_token,
        "bin@buttonpush.example",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_records_for_one_contact_run_in_order_one_at_a_time() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    fx.sandbox
        .set_latency(Endpoint::Api, Duration::from_millis(150));
    let container = container(&fx, &[("KEAPALIVE_KEAP_RATE_PER_SEC", "100")]);
    let bodies: Vec<(String, String)> = ["First", "Second", "Third", "Fourth"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let body = json!({"contact": {"email": "Same@Buttonpush.example", "given_name": name}});
            (format!("m{i}"), body.to_string())
        })
        .collect();
    assert!(
        run_owned_batch(&container.service, &bodies)
            .await
            .is_empty()
    );

    let contacts = fx.sandbox.contacts(APP);
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0]["given_name"], "Fourth", "queue order kept");
    let puts: Vec<_> = api_requests(&fx)
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 4);
    for pair in puts.windows(2) {
        assert!(
            pair[1].at >= pair[0].at + pair[0].handling,
            "upserts of one contact overlapped"
        );
    }
}

/// Every new field, bad, is a `ValidationError` that names it, before any Keap call.
#[tokio::test]
async fn bad_marketing_fields_and_addresses_name_the_field_before_any_keap_call() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let container = container(&fx, &[]);
    for (contact_field, named) in [
        (json!({"opt_in_reason": ""}), "contact.opt_in_reason"),
        (json!({"lead_source_id": 0}), "contact.lead_source_id"),
        (json!({"owner_id": -7}), "contact.owner_id"),
        (json!({"owner_id": "7"}), "contact.owner_id"),
        (
            json!({"address": {"country_code": "FR"}}),
            "contact.address.country_code",
        ),
        (
            json!({"address": {"region": "Île-de-France", "country_code": "FRA"}}),
            "contact.address.region",
        ),
        (
            json!({"address": {"region": "FR-IDF"}}),
            "contact.address.region",
        ),
        (
            json!({"address": {"postal_code": "ABCDE", "country_code": "USA"}}),
            "contact.address.postal_code",
        ),
        (
            json!({"address": {"line1": "\u{7}"}}),
            "contact.address.line1",
        ),
    ] {
        let mut contact = json!({"email": "fields@buttonpush.example"});
        for (key, value) in contact_field.as_object().unwrap() {
            contact[key] = value.clone();
        }
        let error = upsert(&container.service, json!({"contact": contact}))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, UpsertError::Validation(m) if m.contains(named)),
            "{contact_field}: {error:?}"
        );
    }
    assert!(api_requests(&fx).is_empty(), "{:?}", api_requests(&fx));
}

#[tokio::test]
async fn opt_in_lead_source_owner_and_billing_address_reach_keap_in_its_wire_shape() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let container = container(&fx, &[]);
    upsert(
        &container.service,
        json!({"contact": {
            "email": "marketable@buttonpush.example",
            "opt_in_reason": "Signed up on buttonpush.example",
            "lead_source_id": 12, "owner_id": 3,
            "address": {"line1": "1 Main St", "line2": "Suite 2", "locality": "Springfield",
                        "region": "us-il", "postal_code": "62701-1234", "country_code": "usa"}}}),
    )
    .await
    .unwrap();
    let contact = contact_with_email(&fx, APP, "marketable@buttonpush.example").unwrap();
    assert_eq!(contact["opt_in_reason"], "Signed up on buttonpush.example");
    assert_eq!(contact["lead_source_id"], 12);
    assert_eq!(contact["owner_id"], 3);
    assert_eq!(
        contact["addresses"],
        json!([{"field": "BILLING", "line1": "1 Main St", "line2": "Suite 2",
                "locality": "Springfield", "region": "US-IL", "zip_code": "62701",
                "zip_four": "1234", "country_code": "USA"}])
    );

    upsert(
        &container.service,
        json!({"contact": {"email": "uk@buttonpush.example",
                           "address": {"locality": "London", "region": "GB-LND",
                                       "postal_code": "SW1A 1AA", "country_code": "GBR"}}}),
    )
    .await
    .unwrap();
    let contact = contact_with_email(&fx, APP, "uk@buttonpush.example").unwrap();
    assert_eq!(
        contact["addresses"],
        json!([{"field": "BILLING", "locality": "London", "region": "GB-LND",
                "postal_code": "SW1A 1AA", "country_code": "GBR"}])
    );
}

#[tokio::test]
async fn an_unknown_numeric_tag_id_is_a_validation_error_with_no_keap_write() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let vip = fx.sandbox.add_tag(APP, "vip");
    let container = container(&fx, &[]);

    let error = upsert(
        &container.service,
        json!({"contact": {"email": "ids@buttonpush.example", "tags": [vip, 424_242]}}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, UpsertError::Validation(m) if m.contains("424242")
            && m.contains("contact.tags")),
        "{error:?}"
    );
    assert!(fx.sandbox.contacts(APP).is_empty(), "nothing was written");
    assert!(
        api_requests(&fx).iter().all(|r| r.method == "GET"),
        "only lookups: {:?}",
        api_requests(&fx)
    );

    // A known id is checked once per container, then applied.
    for round in 0..2 {
        let applied = upsert(
            &container.service,
            json!({"contact": {"email": "ids@buttonpush.example", "tags": [vip]}}),
        )
        .await
        .unwrap();
        assert_eq!(applied.tags_applied, vec![vip], "round {round}");
    }
    let lookups = api_requests(&fx)
        .iter()
        .filter(|r| r.path == format!("/crm/rest/v1/tags/{vip}"))
        .count();
    assert_eq!(lookups, 1, "the id check is cached");
}

async fn tag_vip(container: &Container, email: &str) -> Result<UpsertResponse, UpsertError> {
    upsert(
        &container.service,
        json!({"contact": {"email": email, "tags": ["vip"]}}),
    )
    .await
}

#[tokio::test]
async fn a_tag_deleted_after_caching_is_resolved_again_or_reported_never_applied() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let first = fx.sandbox.add_tag(APP, "vip");
    let strict = container(&fx, &[]);
    let email = "stale@buttonpush.example";

    assert_eq!(
        tag_vip(&strict, email).await.unwrap().tags_applied,
        vec![first]
    );

    // Deleted and re-created in Keap: the cached id is gone, the name has a new one.
    fx.sandbox.delete_tag(APP, first);
    let second = fx.sandbox.add_tag(APP, "vip");
    assert_ne!(first, second);
    let response = tag_vip(&strict, email).await.unwrap();
    assert_eq!(response.tags_applied, vec![second]);
    let contact = contact_with_email(&fx, APP, email).unwrap();
    assert_eq!(tag_ids(&contact), vec![second]);

    // Deleted for good: reported after the write, with the contact id, never as applied.
    fx.sandbox.delete_tag(APP, second);
    let error = tag_vip(&strict, email).await.unwrap_err();
    let UpsertError::KeapRejected(message) = &error else {
        panic!("expected KeapRejected, got {error:?}");
    };
    assert!(
        message.contains("`vip`") && message.contains("TAG_ID_NOT_FOUND"),
        "{message}"
    );
    assert!(
        message.contains(&format!("contact_id={}", response.contact_id)),
        "{message}"
    );
    assert!(tag_ids(&contact_with_email(&fx, APP, email).unwrap()).is_empty());

    // The next request knows before writing.
    let before = api_requests(&fx).len();
    let error = tag_vip(&strict, email).await.unwrap_err();
    assert!(
        matches!(&error, UpsertError::Validation(m) if m.contains("vip")),
        "{error:?}"
    );
    assert!(
        api_requests(&fx)[before..]
            .iter()
            .all(|r| r.method == "GET")
    );

    // Configured to create missing tags: created again and applied.
    let creating = container(&fx, &[("KEAPALIVE_CREATE_MISSING_TAGS", "true")]);
    let third = fx.sandbox.add_tag(APP, "vip");
    assert_eq!(
        tag_vip(&creating, email).await.unwrap().tags_applied,
        vec![third]
    );
    fx.sandbox.delete_tag(APP, third);
    let recreated = tag_vip(&creating, email).await.unwrap();
    let fourth = fx
        .sandbox
        .tags(APP)
        .iter()
        .find(|(_, n)| n == "vip")
        .unwrap()
        .0;
    assert_eq!(recreated.tags_applied, vec![fourth]);
    assert_eq!(
        tag_ids(&contact_with_email(&fx, APP, email).unwrap()),
        vec![fourth]
    );
}

#[tokio::test]
async fn tags_keap_does_not_apply_are_errors_naming_them_and_the_contact() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let vip = fx.sandbox.add_tag(APP, "vip");
    let locked = fx.sandbox.add_tag(APP, "locked");
    let flaky = fx.sandbox.add_tag(APP, "flaky");
    fx.sandbox
        .set_tag_apply_outcome(APP, locked, Some("NO_PERMISSION"));
    fx.sandbox
        .set_tag_apply_outcome(APP, flaky, Some("FAILURE"));
    let container = container(&fx, &[]);
    let email = "outcomes@buttonpush.example";

    let error = upsert(
        &container.service,
        json!({"contact": {"email": email, "tags": ["vip", "locked"]}}),
    )
    .await
    .unwrap_err();
    let contact_id = contact_with_email(&fx, APP, email).unwrap()["id"]
        .as_i64()
        .unwrap();
    let UpsertError::KeapRejected(message) = &error else {
        panic!("expected KeapRejected, got {error:?}");
    };
    assert!(
        message.contains(&format!("tag {locked} `locked`: NO_PERMISSION"))
            && message.contains(&format!("contact_id={contact_id}"))
            && message.contains(&format!("applied: [{vip}]")),
        "{message}"
    );

    let error = upsert(
        &container.service,
        json!({"contact": {"email": email, "tags": [flaky, "vip"]}}),
    )
    .await
    .unwrap_err();
    let UpsertError::Unavailable(message) = &error else {
        panic!("expected Unavailable, got {error:?}");
    };
    assert!(
        message.contains(&format!("tag {flaky}: FAILURE"))
            && message.contains(&format!("contact_id={contact_id}")),
        "{message}"
    );
    // Once Keap applies it, the same request succeeds; an already-applied tag is DUPLICATE.
    fx.sandbox.set_tag_apply_outcome(APP, flaky, None);
    let response = upsert(
        &container.service,
        json!({"contact": {"email": email, "tags": [flaky, "vip"]}}),
    )
    .await
    .unwrap();
    assert_eq!(response.tags_applied, vec![flaky, vip]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rate_per_sec_is_honoured() {
    let fx = Fixture::new().await;
    seed_key_connection(&fx, "default", APP).await;
    let container = container(
        &fx,
        &[
            ("KEAPALIVE_KEY_RATE_PER_SEC", "2"),
            ("KEAPALIVE_KEAP_RATE_PER_SEC", "100"),
        ],
    );
    let service = Arc::new(container.service);
    let started = Instant::now();
    let upserts: Vec<_> = (0..7)
        .map(|i| {
            let service = service.clone();
            tokio::spawn(async move {
                upsert(
                    &service,
                    json!({"contact": {"email": format!("rate{i}@buttonpush.example")}}),
                )
                .await
            })
        })
        .collect();
    for handle in upserts {
        handle.await.unwrap().unwrap();
    }
    let took = started.elapsed();
    let arrivals: Vec<Instant> = api_requests(&fx).iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 7);
    for (i, at) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..]
            .iter()
            .take_while(|later| **later < *at + Duration::from_secs(1))
            .count();
        assert!(in_window <= 2, "{in_window} key requests within one second");
    }
    // 7 requests at 2/s: six gaps of 525 ms, not much more.
    assert!(took >= Duration::from_millis(3_000), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

/// Local emulators send a deadline already past on arrival (cargo-lambda's relative
/// `600000`): the binaries use their configured timeout instead; a real deadline still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_work_under_an_emulators_relative_deadline_and_honour_a_real_one() {
    let fx = Fixture::new().await;
    // Due for refresh: the access token expires in a minute.
    fx.seed_connection("default", APP, Some(now_epoch_secs() + 60))
        .await;
    let mut env = fx.env(&[("KEAPALIVE_FUNCTION_TIMEOUT_SECS", "60")]);
    env.extend(Emulator::shared().process_env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let wait = Duration::from_secs(60);

    let refresher_api = RuntimeApi::start_named("token-refresher").await;
    let mut refresher = spawn_function(&binary_path("token-refresher"), &env, &refresher_api);
    let summary = refresher_api
        .invoke_with_deadline_header(json!({"connection_id": "default"}), 600_000, wait)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", refresher.output()));
    assert_eq!(summary["refreshed"], 1, "{summary}");
    refresher.kill().await;

    let upsert_api = RuntimeApi::start_named("contact-upsert").await;
    let mut function = spawn_function(&binary_path("contact-upsert"), &env, &upsert_api);
    for (n, sent) in [600_000u128, 0].into_iter().enumerate() {
        let created = upsert_api
            .invoke_with_deadline_header(
                json!({"contact": {"email": format!("watch{n}@buttonpush.example")}}),
                sent,
                wait,
            )
            .await
            .unwrap_or_else(|e| panic!("{sent}: {e:?}\n{}", function.output()));
        assert_eq!(created["created"], true, "{sent}: {created}");
    }
    let warnings = function
        .output()
        .matches("deadline had already passed")
        .count();
    assert_eq!(
        warnings,
        1,
        "one warning per container:\n{}",
        function.output()
    );

    // A real 5 s deadline is honoured, not replaced by the 60 s timeout.
    fx.sandbox
        .set_latency(Endpoint::Api, Duration::from_secs(8));
    let started = Instant::now();
    let error = upsert_api
        .invoke(
            json!({"contact": {"email": "slow@buttonpush.example"}}),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(error.error_type, "Unavailable", "{error:?}");
    assert!(
        took < Duration::from_secs(5),
        "answered within the deadline: {took:?}"
    );
    function.kill().await;
}

// ------------------------------------------------------- write brownout (issue 22, point 5)

/// A commit that DynamoDB throttles, for every connection of `fx`'s table.
async fn throttle_commits(fx: &Fixture) -> keapalive_tests::emulator::InjectedFault {
    Emulator::shared()
        .inject_dynamodb_fault(
            keapalive_tests::emulator::DynamoDbFault::new(
                "UpdateItem",
                "ProvisionedThroughputExceededException",
            )
            .body_contains(&fx.table)
            .body_contains(":next")
            .times(10_000),
        )
        .await
}

fn upsert_for(connection: &str, email: &str) -> Value {
    json!({"connection_id": connection, "contact": {"email": email}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_commit_stops_other_upserts_presenting_tokens_until_it_lands() {
    let fx = Fixture::new().await;
    let expired = Some(now_epoch_secs() - 10);
    fx.seed_connection("c1", "brownup1", expired).await;
    fx.seed_connection("c2", "brownup2", expired).await;
    let container = Arc::new(container(&fx, &[]));
    let throttle = throttle_commits(&fx).await;

    let holder = {
        let container = container.clone();
        tokio::spawn(async move {
            upsert(
                &container.service,
                upsert_for("c1", "one@buttonpush.example"),
            )
            .await
        })
    };
    // One SDK call makes at most 5 attempts: a sixth throttled attempt means the commit failed
    // once and is being retried, so the container is in brownout.
    let waited = Instant::now();
    while throttle.fired().await < 6 {
        assert!(
            waited.elapsed() < Duration::from_secs(25),
            "the commit was never retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refresh_requests(&fx), 1, "c1's token was presented");
    let refused = upsert(
        &container.service,
        upsert_for("c2", "two@buttonpush.example"),
    )
    .await
    .expect_err("no new token is requested while commits fail");
    assert_eq!(refused.error_type(), "Unavailable", "{refused}");
    assert_eq!(refresh_requests(&fx), 1, "c2's token was not presented");

    Emulator::shared().clear_faults_for(&fx.table).await;
    holder
        .await
        .unwrap()
        .expect("c1's commit lands once the throttling ends");
    // The landed commit ended the brownout: c2 refreshes at once, long before 30 s.
    let ended = Instant::now();
    upsert(
        &container.service,
        upsert_for("c2", "two@buttonpush.example"),
    )
    .await
    .expect("the brownout ended with the first successful commit");
    assert!(ended.elapsed() < Duration::from_secs(10));
    assert_eq!(refresh_requests(&fx), 2);
    throttle.assert_fired(6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_brownout_ends_after_30_seconds_without_a_successful_commit() {
    let fx = Fixture::new().await;
    let expired = Some(now_epoch_secs() - 10);
    fx.seed_connection("c1", "brownend1", expired).await;
    fx.seed_connection("c2", "brownend2", expired).await;
    let container = container(&fx, &[]);
    let throttle = throttle_commits(&fx).await;

    let started = Instant::now();
    let failed = container
        .service
        .handle(
            upsert_for("c1", "one@buttonpush.example")
                .to_string()
                .as_bytes(),
            keapalive::deadline::Deadline::after(Duration::from_secs(22)),
        )
        .await
        .expect_err("the commit never lands before the deadline");
    assert_eq!(failed.error_type(), "Unavailable", "{failed}");
    throttle.assert_fired(2).await;
    Emulator::shared().clear_faults_for(&fx.table).await;

    // Writes work again, but nothing has proven it: no token is presented for 30 s.
    let refused = upsert(
        &container.service,
        upsert_for("c2", "two@buttonpush.example"),
    )
    .await
    .expect_err("still in brownout");
    assert_eq!(refused.error_type(), "Unavailable", "{refused}");
    assert_eq!(refresh_requests(&fx), 1, "c2's token was not presented");

    let answer = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match upsert(
            &container.service,
            upsert_for("c2", "two@buttonpush.example"),
        )
        .await
        {
            Ok(answer) => break answer,
            Err(error) => {
                assert_eq!(error.error_type(), "Unavailable", "{error}");
                assert_eq!(refresh_requests(&fx), 1);
                assert!(
                    started.elapsed() < Duration::from_secs(50),
                    "the brownout never ended"
                );
            }
        }
    };
    assert!(answer.created);
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "ended {:?} after the first upsert began",
        started.elapsed()
    );
    assert_eq!(refresh_requests(&fx), 2);
}

// ------------------------------------------------------- SQS order (issue 22, point 6)

#[tokio::test]
async fn a_failed_record_fails_the_later_records_of_its_contact_in_the_batch() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = sequential(&fx, None);
    let first = json!({"contact": {"email": "Order@Buttonpush.example", "given_name": "Old"}});
    let second = json!({"contact": {"email": "order@buttonpush.example", "given_name": "New"}});
    let other = good("other@buttonpush.example");
    // The first record's PUT and its one retry fail: it goes back to SQS.
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times: 2,
    });
    let failed = run_batch(
        &service,
        &[
            ("m0", &first.to_string()),
            ("m1", &second.to_string()),
            ("m2", &other),
        ],
    )
    .await;
    assert_eq!(
        failed,
        vec!["m0", "m1"],
        "the newer record waits for the older one"
    );
    assert!(
        contact_with_email(&fx, APP, "order@buttonpush.example").is_none(),
        "the newer record was not applied ahead of the older one"
    );
    assert!(contact_with_email(&fx, APP, "other@buttonpush.example").is_some());
}

/// An SQS event whose records carry a `MessageGroupId` (a FIFO queue's).
fn fifo_event(records: &[(&str, &str, Option<&str>)]) -> aws_lambda_events::sqs::SqsEvent {
    let plain: Vec<(&str, &str)> = records.iter().map(|(id, body, _)| (*id, *body)).collect();
    let mut event = sqs_event(&plain);
    for (record, (_, _, group)) in event["Records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(records)
    {
        if let Some(group) = group {
            record["attributes"]["MessageGroupId"] = json!(group);
        }
    }
    serde_json::from_value(event).expect("SqsEvent")
}

#[tokio::test]
async fn a_fifo_dead_letter_queue_gets_the_contacts_message_group() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let queue = keapalive_tests::aws::create_fifo_queue(&fx.sdk).await;
    let service = sequential(&fx, Some(&queue));
    let locked = fx.sandbox.add_tag(APP, "locked");
    fx.sandbox
        .set_tag_apply_outcome(APP, locked, Some("NO_PERMISSION"));
    let refused =
        json!({"contact": {"email": "Refused@Buttonpush.example", "tags": [locked]}}).to_string();
    let event = fifo_event(&[
        ("from-fifo", &refused, Some("caller-group-0001")),
        ("from-standard", &refused, None),
    ]);
    let response = service
        .handle_batch(event, deadline())
        .await
        .expect("answered");
    assert!(response.batch_item_failures.is_empty());

    let dead = drain_queue(&fx.sdk, &queue).await;
    let mut groups: Vec<String> = dead
        .iter()
        .map(|m| {
            m.attributes()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
                })
                .cloned()
                .expect("a FIFO message has a group")
        })
        .collect();
    groups.sort();
    // The record's own group is reused; without one, the documented hash:
    // printf 'default\nrefused@buttonpush.example' | sha256sum
    assert_eq!(
        groups,
        vec![
            "37c651fc63decbad53d73c4e82fd75fd1f9a1bfcbaa76246a2c802314ed5b830".to_owned(),
            "caller-group-0001".to_owned(),
        ]
    );
}

#[tokio::test]
async fn a_failed_record_holds_back_the_later_records_of_its_fifo_message_group() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = sequential(&fx, None);
    let first = good("first@buttonpush.example");
    let second = good("second@buttonpush.example");
    let other = good("third@buttonpush.example");
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times: 2,
    });
    // Two contacts the caller put in one message group, and a third in a group of its own.
    let event = fifo_event(&[
        ("m0", &first, Some("one-group")),
        ("m1", &second, Some("one-group")),
        ("m2", &other, Some("another-group")),
    ]);
    let response = service
        .handle_batch(event, deadline())
        .await
        .expect("answered");
    let mut failed: Vec<String> = response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    failed.sort();
    assert_eq!(failed, vec!["m0", "m1"]);
    assert!(contact_with_email(&fx, APP, "second@buttonpush.example").is_none());
    assert!(contact_with_email(&fx, APP, "third@buttonpush.example").is_some());
}

/// Each invocation reports its Keap usage once, under `Function: contact-upsert`: the requests
/// it sent, the 429s it met and how long it waited them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invocation_reports_its_keap_requests_throttles_and_waits() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let container = container(&fx, &[]);
    let throttled = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 429,
            retry_after_secs: Some(1),
        },
        times: 1,
    });
    upsert(
        &container.service,
        json!({"contact": {"email": "usage@buttonpush.example"}}),
    )
    .await
    .unwrap();
    throttled.assert_fired(1);
    let sent = api_requests(&fx).len() as f64;
    assert_eq!(container.metric_total("KeapRequests"), sent);
    assert_eq!(container.metric_total("KeapThrottled"), 1.0);
    assert!(container.metric_total("KeapThrottleWaitMs") >= 1_000.0);
    let usage: Vec<Value> = container
        .metrics
        .lock()
        .unwrap()
        .iter()
        .filter(|doc| doc.get("KeapRequests").is_some())
        .cloned()
        .collect();
    assert_eq!(usage.len(), 1, "one usage document per invocation");
    assert_eq!(usage[0]["Function"], "contact-upsert");
}
