//! A service account key Keap answers 401 for is judged over time (docs/design.md, "Connection
//! kinds"): the first confirming 401 records `key_rejected_since`; the key is marked only by a
//! confirming 401 between the recheck interval + 30 s and 10 minutes later, and only if no
//! request with the key succeeded meanwhile (`key_accepted_at`).
//!
//! Time is compressed through `KEAPALIVE_CONNECTION_RECHECK_SECS` (the window opens at the
//! recheck interval + 30 s) or by writing the item's own timestamps; the 30 s margin and the
//! 10-minute window are constants, never a setting a deployment could shrink.

use std::time::{Duration, Instant};

use crate::support::*;
use aws_sdk_dynamodb::types::AttributeValue;
use keap_sandbox::{Endpoint, Fault, FaultKind};
use keapalive::clock::now_epoch_secs;
use keapalive::contact::{METRIC_NEEDS_REAUTHORIZATION, REASON_KEY_REJECTED};
use keapalive::token_store::{Connection, ConnectionStatus};
use keapalive_tests::aws::get_item;
use keapalive_tests::fixture::{Fixture, connection_id};
use serde_json::json;

const APP: &str = "keyblip01";

fn request(email: &str) -> serde_json::Value {
    json!({"connection_id": "default", "contact": {"email": email}})
}

fn rejections(times: u32) -> Fault {
    Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 401,
            retry_after_secs: None,
        },
        times,
    }
}

async fn read(fx: &Fixture) -> Connection {
    fx.store()
        .get(&connection_id("default"))
        .await
        .unwrap()
        .expect("connection exists")
}

/// A number attribute of the item, read raw (the test does not depend on the store's parser).
async fn item_number(fx: &Fixture, name: &str) -> Option<i64> {
    let item = get_item(&fx.sdk, &fx.table, "conn#default").await?;
    match item.get(name)? {
        AttributeValue::N(n) => n.parse().ok(),
        other => panic!("{name} is not a number: {other:?}"),
    }
}

/// Writes the item's rejection timestamps directly: how a test moves a rejection into the past.
async fn set_key_timestamps(fx: &Fixture, rejected_since: i64, accepted_at: Option<i64>) {
    let mut update = aws_sdk_dynamodb::Client::new(&fx.sdk)
        .update_item()
        .table_name(&fx.table)
        .key("pk", AttributeValue::S("conn#default".to_owned()))
        .expression_attribute_values(":since", AttributeValue::N(rejected_since.to_string()));
    update = match accepted_at {
        Some(at) => update
            .update_expression("SET key_rejected_since = :since, key_accepted_at = :at")
            .expression_attribute_values(":at", AttributeValue::N(at.to_string())),
        None => update.update_expression("SET key_rejected_since = :since REMOVE key_accepted_at"),
    };
    update.send().await.expect("set the key timestamps");
}

#[tokio::test]
async fn three_401s_within_2s_leave_a_key_active_and_it_clears_itself() {
    let fx = Fixture::new().await;
    seed_key_connection(&fx, "default", APP).await;
    let warm = container(&fx, &[]);
    upsert(&warm.service, request("warm@buttonpush.example"))
        .await
        .expect("warm");

    fx.sandbox.inject(rejections(3));
    let started = Instant::now();
    let first = upsert(&warm.service, request("ada@buttonpush.example"))
        .await
        .expect_err("the request and its probe are rejected");
    assert_eq!(first.error_type(), "Unavailable", "{first}");
    // The third 401, then the probe succeeds and the request is retried.
    upsert(&warm.service, request("ada@buttonpush.example"))
        .await
        .expect("Keap accepts the key again");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the blip took under 2 s"
    );
    upsert(&warm.service, request("bob@buttonpush.example"))
        .await
        .expect("later requests work");

    assert_eq!(read(&fx).await.status, ConnectionStatus::Active);
    let since = item_number(&fx, "key_rejected_since")
        .await
        .expect("the confirming 401 recorded key_rejected_since");
    let accepted = item_number(&fx, "key_accepted_at")
        .await
        .expect("a success with the key recorded key_accepted_at");
    assert!(accepted >= since, "accepted {accepted} < rejected {since}");
    assert_eq!(warm.metric_total(METRIC_NEEDS_REAUTHORIZATION), 0.0);
}

#[tokio::test]
async fn a_revoked_key_is_marked_within_the_recheck_interval_plus_60s_of_traffic() {
    const RECHECK_SECS: u64 = 2;
    let fx = Fixture::new().await;
    let (key, _) = seed_key_connection(&fx, "default", APP).await;
    let warm = container(
        &fx,
        &[(
            "KEAPALIVE_CONNECTION_RECHECK_SECS",
            &RECHECK_SECS.to_string(),
        )],
    );
    upsert(&warm.service, request("warm@buttonpush.example"))
        .await
        .expect("warm");

    fx.sandbox.revoke_service_account_key(&key);
    let revoked = Instant::now();
    let limit = Duration::from_secs(RECHECK_SECS + 60);
    let marked_after = loop {
        let answer = upsert(&warm.service, request("ada@buttonpush.example"))
            .await
            .expect_err("the key is revoked");
        if answer.error_type() == "NotAuthorized" {
            assert!(
                answer.to_string().contains("register_service_account_key"),
                "{answer}"
            );
            break revoked.elapsed();
        }
        assert_eq!(answer.error_type(), "Unavailable", "{answer}");
        assert!(
            revoked.elapsed() < limit,
            "not marked within {limit:?} of traffic"
        );
        assert_eq!(read(&fx).await.status, ConnectionStatus::Active);
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    assert!(
        marked_after >= Duration::from_secs(RECHECK_SECS + 30),
        "marked after {marked_after:?}: before the window opened"
    );
    let connection = read(&fx).await;
    assert_eq!(connection.status, ConnectionStatus::NeedsReauthorization);
    assert_eq!(connection.last_error.as_deref(), Some(REASON_KEY_REJECTED));
    assert_eq!(warm.metric_total(METRIC_NEEDS_REAUTHORIZATION), 1.0);
    // Known dead from now on: no Keap request.
    fx.sandbox.clear_requests();
    let answer = upsert(&warm.service, request("ada@buttonpush.example"))
        .await
        .unwrap_err();
    assert_eq!(answer.error_type(), "NotAuthorized");
    assert!(api_requests(&fx).is_empty());
}

#[tokio::test]
async fn a_key_that_worked_after_its_recorded_rejection_is_not_marked() {
    let fx = Fixture::new().await;
    seed_key_connection(&fx, "default", APP).await;
    let warm = container(&fx, &[("KEAPALIVE_CONNECTION_RECHECK_SECS", "2")]);
    let now = now_epoch_secs();
    // A rejection recorded 40 s ago (the window opened at 32 s), answered 20 s ago.
    set_key_timestamps(&fx, now - 40, Some(now - 20)).await;
    fx.sandbox.inject(rejections(2));
    let answer = upsert(&warm.service, request("ada@buttonpush.example"))
        .await
        .unwrap_err();
    assert_eq!(answer.error_type(), "Unavailable", "{answer}");
    assert_eq!(read(&fx).await.status, ConnectionStatus::Active);
    assert!(
        item_number(&fx, "key_rejected_since").await >= Some(now),
        "an answered rejection starts a new window"
    );

    // The same rejection, never answered: the confirming 401 inside the window marks.
    set_key_timestamps(&fx, now - 40, None).await;
    fx.sandbox.inject(rejections(2));
    let answer = upsert(&warm.service, request("ada@buttonpush.example"))
        .await
        .unwrap_err();
    assert_eq!(answer.error_type(), "NotAuthorized", "{answer}");
    assert_eq!(
        read(&fx).await.status,
        ConnectionStatus::NeedsReauthorization
    );
    assert_eq!(warm.metric_total(METRIC_NEEDS_REAUTHORIZATION), 1.0);
}

#[tokio::test]
async fn a_rejection_older_than_10_minutes_is_stale_and_starts_a_new_window() {
    let fx = Fixture::new().await;
    seed_key_connection(&fx, "default", APP).await;
    let warm = container(&fx, &[("KEAPALIVE_CONNECTION_RECHECK_SECS", "2")]);
    let now = now_epoch_secs();
    set_key_timestamps(&fx, now - 601, None).await;
    fx.sandbox.inject(rejections(2));
    let answer = upsert(&warm.service, request("ada@buttonpush.example"))
        .await
        .unwrap_err();
    assert_eq!(answer.error_type(), "Unavailable", "{answer}");
    assert_eq!(read(&fx).await.status, ConnectionStatus::Active);
    assert!(item_number(&fx, "key_rejected_since").await >= Some(now));
}

#[tokio::test]
async fn another_containers_success_answers_the_rejection() {
    let fx = Fixture::new().await;
    seed_key_connection(&fx, "default", APP).await;
    let first = container(&fx, &[("KEAPALIVE_CONNECTION_RECHECK_SECS", "1")]);
    let second = container(&fx, &[("KEAPALIVE_CONNECTION_RECHECK_SECS", "1")]);
    upsert(&second.service, request("warm@buttonpush.example"))
        .await
        .expect("warm");

    fx.sandbox.inject(rejections(2));
    upsert(&first.service, request("ada@buttonpush.example"))
        .await
        .expect_err("rejected twice");
    let since = item_number(&fx, "key_rejected_since")
        .await
        .expect("the first container recorded the rejection");

    // The second container re-reads the item within its recheck interval, sees the rejection,
    // and its successful request answers it.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    upsert(&second.service, request("bob@buttonpush.example"))
        .await
        .expect("the key works for the second container");
    let accepted = item_number(&fx, "key_accepted_at").await;
    assert!(accepted >= Some(since), "{accepted:?}");
    assert_eq!(read(&fx).await.status, ConnectionStatus::Active);
}
