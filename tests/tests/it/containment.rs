//! How far a warm contact-upsert container trusts its cache (docs/design.md, "Containment").

use std::time::{Duration, Instant};

use crate::support::*;
use keap_sandbox::{Endpoint, Fault, FaultKind};
use keapalive::contact::{
    METRIC_NEEDS_REAUTHORIZATION, METRIC_SPURIOUS_UNAUTHORIZED, METRIC_UNAUTHORIZED_INCIDENT,
    UpsertError,
};
use keapalive::token_store::ConnectionStatus;
use keapalive_tests::fixture::{Fixture, connection_id};
use keapalive_tests::runtime_api::RuntimeApi;
use serde_json::json;

const APP: &str = "contain01";

fn request(email: &str) -> serde_json::Value {
    json!({"connection_id": "default", "contact": {"email": email}})
}

#[tokio::test]
async fn warm_container_stops_using_a_removed_connection_within_the_recheck_interval() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let warm = container(&fx, &[("KEAPALIVE_CONNECTION_RECHECK_SECS", "2")]);
    upsert(&warm.service, request("ada@buttonpush.example"))
        .await
        .expect("the first upsert works");
    assert!(
        fx.store()
            .delete_connection(&connection_id("default"))
            .await
            .unwrap()
    );
    let removed_at = Instant::now();

    let (answer, keap_requests) = loop {
        let before = api_requests(&fx).len();
        match upsert(&warm.service, request("grace@buttonpush.example")).await {
            Err(e) => break (e, api_requests(&fx).len() - before),
            Ok(_) if removed_at.elapsed() < Duration::from_secs(4) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(_) => panic!("the removed connection was still used after 4 s"),
        }
    };

    assert!(
        matches!(answer, UpsertError::NotAuthorized(_)),
        "{answer:?}"
    );
    assert!(
        removed_at.elapsed() < Duration::from_secs(3),
        "NotAuthorized after {:?}",
        removed_at.elapsed()
    );
    assert_eq!(
        keap_requests, 0,
        "the NotAuthorized answer costs no Keap request"
    );
}

#[tokio::test]
async fn warm_upsert_rechecks_the_item_at_most_once_per_interval() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let warm = container(&fx, &[("KEAPALIVE_CONNECTION_RECHECK_SECS", "60")]);
    upsert(&warm.service, request("ada@buttonpush.example"))
        .await
        .unwrap();
    let emulator = keapalive_tests::emulator::Emulator::shared();
    let before = emulator.request_counts_for(&fx.table).await;

    for i in 0..5 {
        upsert(&warm.service, request(&format!("p{i}@buttonpush.example")))
            .await
            .unwrap();
    }

    let after = emulator.request_counts_for(&fx.table).await;
    assert_eq!(
        before, after,
        "no DynamoDB request within the recheck interval"
    );
}

/// Ten upserts, one after another, through one binary; their `errorType`s.
async fn ten_upserts(runtime: &RuntimeApi, who: &str) -> Vec<Result<(), String>> {
    let mut answers = Vec::new();
    for i in 0..10 {
        let answer = runtime
            .invoke(
                json!({"contact": {"email": format!("{who}{i}@buttonpush.example")}}),
                Duration::from_secs(60),
            )
            .await;
        answers.push(answer.map(|_| ()).map_err(|e| e.error_type));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keap_answering_401_to_everything_rotates_at_most_once_across_two_processes() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let (first, _first_process) = upsert_binary(&fx, &[]).await;
    let (second, _second_process) = upsert_binary(&fx, &[]).await;
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 401,
            retry_after_secs: None,
        },
        times: 1_000,
    });

    let (a, b) = tokio::join!(ten_upserts(&first, "a"), ten_upserts(&second, "b"));

    for answer in a.iter().chain(b.iter()) {
        assert_eq!(answer, &Err("Unavailable".to_owned()));
    }
    fault.assert_fired(1);
    // Exactly one: the first 401 on a token rotates it once (a 401 may mean only that token
    // died), every later one finds the rotated token rejected too and rotates no more. Zero
    // would mean a 401 never rotates: a bound of "at most one" cannot tell that apart.
    assert_eq!(
        refresh_requests(&fx),
        1,
        "rotations for 20 upserts that all got 401"
    );
    let connection = fx
        .store()
        .get(&connection_id("default"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(connection.generation, 2, "seeded at 1, rotated once");
}

#[tokio::test]
async fn one_spurious_401_on_a_key_leaves_the_connection_active() {
    let fx = Fixture::new().await;
    seed_key_connection(&fx, "default", APP).await;
    let warm = container(&fx, &[]);
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 401,
            retry_after_secs: None,
        },
        times: 1,
    });

    let created = upsert(&warm.service, request("ada@buttonpush.example"))
        .await
        .expect("the probe succeeds, so the request is retried");

    fault.assert_fired(1);
    assert!(created.created);
    let connection = fx
        .store()
        .get(&connection_id("default"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connection.status, ConnectionStatus::Active);
    let statuses: Vec<u16> = api_requests(&fx).iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![401, 200, 201],
        "401, profile probe, retried upsert"
    );
    assert_eq!(warm.metric_total(METRIC_SPURIOUS_UNAUTHORIZED), 1.0);
    assert_eq!(warm.metric_total(METRIC_NEEDS_REAUTHORIZATION), 0.0);
}

#[tokio::test]
async fn many_keys_rejected_at_once_is_an_incident_not_many_revocations() {
    let fx = Fixture::new().await;
    let mut keys = Vec::new();
    for id in ["k1", "k2", "k3"] {
        keys.push(seed_key_connection(&fx, id, APP).await.0);
    }
    let warm = container(&fx, &[]);
    for (key, id) in keys.iter().zip(["k1", "k2", "k3"]) {
        fx.sandbox.revoke_service_account_key(key);
        // Each rejection already in its marking window (docs/design.md, "Connection kinds").
        key_rejected_since_secs_ago(&fx, id, 100).await;
    }

    let mut answers = Vec::new();
    for id in ["k1", "k2", "k3"] {
        let answer = upsert(
            &warm.service,
            json!({"connection_id": id, "contact": {"email": "ada@buttonpush.example"}}),
        )
        .await
        .unwrap_err();
        answers.push(answer.error_type().to_owned());
    }

    assert_eq!(
        answers,
        vec!["NotAuthorized", "NotAuthorized", "Unavailable"]
    );
    let k3 = fx.store().get(&connection_id("k3")).await.unwrap().unwrap();
    assert_eq!(
        k3.status,
        ConnectionStatus::Active,
        "the third is not marked"
    );
    assert_eq!(warm.metric_total(METRIC_UNAUTHORIZED_INCIDENT), 1.0);
    assert_eq!(warm.metric_total(METRIC_NEEDS_REAUTHORIZATION), 2.0);
}

#[tokio::test]
async fn a_connection_recreated_for_another_account_never_reuses_the_old_accounts_field_ids() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", "fieldsone1", None).await;
    let old_field = fx.sandbox.add_custom_field("fieldsone1", "Plan", "Text");
    let warm = container(&fx, &[("KEAPALIVE_CONNECTION_RECHECK_SECS", "1")]);
    let with_plan = |email: &str| {
        json!({"connection_id": "default",
               "contact": {"email": email, "custom_fields": {"Plan": "pro"}}})
    };
    upsert(&warm.service, with_plan("ada@buttonpush.example"))
        .await
        .expect("the first account's model is fetched and cached");

    assert!(
        fx.store()
            .delete_connection(&connection_id("default"))
            .await
            .unwrap()
    );
    fx.seed_connection("default", "fieldstwo2", None).await;
    // The sandbox numbers each account's fields from the same start: one more makes them differ.
    fx.sandbox
        .add_custom_field("fieldstwo2", "Shoe Size", "Text");
    let new_field = fx.sandbox.add_custom_field("fieldstwo2", "Plan", "Text");
    assert_ne!(old_field, new_field, "the two accounts' ids differ");
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    upsert(&warm.service, with_plan("grace@buttonpush.example"))
        .await
        .expect("the new account's model is fetched");

    let contact = contact_with_email(&fx, "fieldstwo2", "grace@buttonpush.example")
        .expect("the contact went to the new account");
    assert_eq!(
        contact["custom_fields"],
        json!([{"id": new_field, "content": "pro"}])
    );
}
