//! contact-upsert on Service Account Key connections: the same upsert with `X-Keap-API-Key`,
//! never a token request; a rejected key marks the connection and raises the metric; a rotated
//! key is picked up; the key's own rate limits hold within a container.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use aws_sdk_dynamodb::types::AttributeValue;
use keapalive::contact::{METRIC_NEEDS_REAUTHORIZATION, REASON_KEY_REJECTED};
use keapalive::token_store::ConnectionStatus;
use keapalive_tests::aws::get_item;
use keapalive_tests::emulator::Emulator;
use keapalive_tests::fixture::{Fixture, connection_id};
use keapalive_tests::logs::{assert_logs_never_contain, capture_logs};
use keapalive_tests::runtime_api::{RuntimeApi, binary_path, spawn_function};
use serde_json::json;

const APP: &str = "keyapp01";

#[tokio::test]
async fn buttonpush_story_with_a_service_account_key() {
    capture_logs();
    let fx = Fixture::new().await;
    let (key, _) = seed_key_connection(&fx, "default", APP).await;
    let tag = fx.sandbox.add_tag(APP, "buttonpushed");
    let container = container(&fx, &[]);
    let email = "key.signup@buttonpush.example";

    let first = upsert(&container.service, json!({"contact": {"email": email}}))
        .await
        .unwrap();
    assert!(first.created);
    let second = upsert(
        &container.service,
        json!({"contact": {"email": email, "given_name": "Ada"}}),
    )
    .await
    .unwrap();
    assert!(!second.created);
    assert_eq!(second.contact_id, first.contact_id);
    let pushed = upsert(
        &container.service,
        json!({"contact": {"email": email, "tags": ["buttonpushed"]}}),
    )
    .await
    .unwrap();
    assert_eq!(pushed.tags_applied, vec![tag]);

    let contacts = fx.sandbox.contacts(APP);
    assert_eq!(contacts.len(), 1);
    assert_eq!(tag_ids(&contacts[0]), vec![tag]);
    let api = api_requests(&fx);
    assert_eq!(api.len(), 5, "{api:?}");
    assert!(
        all_used_api_key(&api),
        "every request carried X-Keap-API-Key"
    );
    assert_eq!(
        token_endpoint_requests(&fx),
        0,
        "a key never touches /token"
    );
    assert_logs_never_contain(&[&key, email]);
}

#[tokio::test]
async fn revoked_key_marks_the_connection_and_raises_the_metric() {
    capture_logs();
    let fx = Fixture::new().await;
    let (key, _) = seed_key_connection(&fx, "default", APP).await;
    let container = container(&fx, &[]);
    let email = "revoked@buttonpush.example";
    upsert(&container.service, json!({"contact": {"email": email}}))
        .await
        .unwrap();

    fx.sandbox.revoke_service_account_key(&key);
    // A rejection first confirmed 100 s ago: the window opened at the recheck interval (60 s)
    // + 30 s (the window itself: `key_rejection::*`).
    key_rejected_since_secs_ago(&fx, "default", 100).await;
    let error = upsert(&container.service, json!({"contact": {"email": email}}))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), "NotAuthorized");
    assert!(
        error.to_string().contains("register_service_account_key"),
        "{error}"
    );

    let connection = fx
        .store()
        .get(&connection_id("default"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connection.status, ConnectionStatus::NeedsReauthorization);
    assert_eq!(connection.last_error.as_deref(), Some(REASON_KEY_REJECTED));
    assert_eq!(container.metric_total(METRIC_NEEDS_REAUTHORIZATION), 1.0);
    let doc = container
        .metrics
        .lock()
        .unwrap()
        .iter()
        .find(|doc| doc.get("NeedsReauthorization").is_some())
        .cloned()
        .expect("a NeedsReauthorization document");
    assert_eq!(doc["Stage"], "test");
    assert_eq!(
        doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
        "NeedsReauthorization"
    );

    // From now on the connection is known dead: no Keap call, no second metric.
    fx.sandbox.clear_requests();
    let error = upsert(&container.service, json!({"contact": {"email": email}}))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), "NotAuthorized");
    assert!(api_requests(&fx).is_empty());
    assert_eq!(container.metric_total(METRIC_NEEDS_REAUTHORIZATION), 1.0);
    assert_logs_never_contain(&[&key, email]);
}

#[tokio::test]
async fn rotated_key_is_reread_instead_of_marking_the_connection() {
    let fx = Fixture::new().await;
    let (old_key, secret_id) = seed_key_connection(&fx, "default", APP).await;
    let container = container(&fx, &[]);
    upsert(
        &container.service,
        json!({"contact": {"email": "r@buttonpush.example"}}),
    )
    .await
    .unwrap();

    // The operator rotates: a new key in the same secret, the old one revoked in Keap.
    let new_key = fx.sandbox.issue_service_account_key(APP);
    aws_sdk_secretsmanager::Client::new(&fx.sdk)
        .put_secret_value()
        .secret_id(&secret_id)
        .secret_string(&new_key)
        .send()
        .await
        .unwrap();
    fx.sandbox.revoke_service_account_key(&old_key);

    let response = upsert(
        &container.service,
        json!({"contact": {"email": "r@buttonpush.example"}}),
    )
    .await
    .unwrap();
    assert!(!response.created);
    let connection = fx
        .store()
        .get(&connection_id("default"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(container.metric_total(METRIC_NEEDS_REAUTHORIZATION), 0.0);
    let statuses: Vec<u16> = api_requests(&fx).iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![201, 401, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_rate_limit_holds_within_a_container() {
    const UPSERTS: usize = 25;
    let fx = Fixture::new().await;
    seed_key_connection(&fx, "default", APP).await;
    // The container-wide limit is far above the key's, so only the key limiter can hold it.
    let container = Arc::new(container(&fx, &[("KEAPALIVE_KEAP_RATE_PER_SEC", "200")]));
    upsert(
        &container.service,
        json!({"contact": {"email": "warm@buttonpush.example"}}),
    )
    .await
    .unwrap();
    fx.sandbox.clear_requests();

    let tasks: Vec<_> = (0..UPSERTS)
        .map(|i| {
            let container = container.clone();
            tokio::spawn(async move {
                upsert(
                    &container.service,
                    json!({"contact": {"email": format!("k{i}@buttonpush.example")}}),
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("every upsert succeeds");
    }
    let mut arrivals: Vec<_> = api_requests(&fx).iter().map(|r| r.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), UPSERTS);
    let most_in_one_second = (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|t| **t < arrivals[i] + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        most_in_one_second <= 10,
        "{most_in_one_second} requests in one second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_reports_a_revoked_key() {
    capture_logs();
    let fx = Fixture::new().await;
    let (key, _) = seed_key_connection(&fx, "default", APP).await;
    let binary = binary_path("contact-upsert");
    let runtime = RuntimeApi::start_named("contact-upsert").await;
    let mut env = fx.env(&[]);
    env.extend(Emulator::shared().process_env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut function = spawn_function(&binary, &env, &runtime);
    let limit = Duration::from_secs(20);

    let created = runtime
        .invoke(
            json!({"contact": {"email": "bk@buttonpush.example"}}),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(created["created"], true);

    fx.sandbox.revoke_service_account_key(&key);
    key_rejected_since_secs_ago(&fx, "default", 100).await;
    let error = runtime
        .invoke(
            json!({"contact": {"email": "bk@buttonpush.example"}}),
            limit,
        )
        .await
        .unwrap_err();
    assert_eq!(error.error_type, "NotAuthorized");

    let item = get_item(&fx.sdk, &fx.table, "conn#default").await.unwrap();
    assert_eq!(
        item.get("status"),
        Some(&AttributeValue::S("needs_reauthorization".into()))
    );
    let output = function.output();
    let metric_line = output
        .lines()
        .find(|line| line.contains("\"_aws\"") && line.contains(METRIC_NEEDS_REAUTHORIZATION))
        .unwrap_or_else(|| panic!("no EMF line in the output:\n{output}"));
    let doc: serde_json::Value = serde_json::from_str(metric_line).unwrap();
    assert_eq!(doc[METRIC_NEEDS_REAUTHORIZATION], 1.0);
    assert_eq!(doc["Stage"], "test");

    function.kill().await;
    assert_logs_never_contain(&[&key, "bk@buttonpush.example"]);
}
