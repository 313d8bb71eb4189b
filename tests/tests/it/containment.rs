//! How far a warm contact-upsert container trusts its cache (docs/design.md, "Containment").

use std::time::{Duration, Instant};

use crate::support::*;
use keapalive::contact::UpsertError;
use keapalive::token_store::TokenStore;
use keapalive_tests::fixture::{Fixture, connection_id};
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
