//! Keap REST Hook subscriptions in the connections table (docs/design.md, "Data model"): only
//! the token's hash is stored, hook items stay out of the other indexes, decisions re-read
//! consistently, and a landed write whose answer was lost is recognised.

use aws_sdk_dynamodb::types::AttributeValue;
use keapalive::clock::now_epoch_secs;
use keapalive::token_store::HookToken;
use keapalive_tests::aws::scan_all;
use keapalive_tests::emulator::{DynamoDbFault, Emulator};
use keapalive_tests::fixture::{Fixture, connection_id};

const APP: &str = "hooks01";

fn values(item: &std::collections::HashMap<String, AttributeValue>) -> Vec<String> {
    item.values()
        .filter_map(|value| value.as_s().ok().cloned())
        .collect()
}

#[tokio::test]
async fn a_hook_item_holds_only_the_token_hash_and_is_found_by_it() {
    let fx = Fixture::new().await;
    let store = fx.store();
    let id = connection_id("default");
    let token = HookToken::generate().unwrap();
    assert!(
        store
            .put_hook(&token.hash(), &id, "contact.add", now_epoch_secs())
            .await
            .unwrap()
    );
    assert!(
        store
            .record_keap_hook_key(&token.hash(), "71")
            .await
            .unwrap()
    );

    for item in scan_all(&fx.sdk, &fx.table).await {
        assert!(
            values(&item)
                .iter()
                .all(|value| !value.contains(token.expose_secret())),
            "an item holds the plain token"
        );
    }
    // The token as it arrives in a delivery's path.
    let arrived = HookToken::from_path_segment(token.expose_secret()).unwrap();
    let hook = store.hook(&arrived.hash()).await.unwrap().expect("found");
    assert_eq!(hook.connection_id, id);
    assert_eq!(hook.event_key, "contact.add");
    assert_eq!(hook.keap_hook_key.as_deref(), Some("71"));
    let stranger = HookToken::generate().unwrap();
    assert!(store.hook(&stranger.hash()).await.unwrap().is_none());

    store.delete_hook(&token.hash()).await.unwrap();
    assert!(store.hook(&token.hash()).await.unwrap().is_none());
    assert!(
        !store
            .record_keap_hook_key(&token.hash(), "72")
            .await
            .unwrap(),
        "a removed subscription is not re-created by a late write"
    );
}

#[tokio::test]
async fn hooks_are_listed_per_connection_and_stay_out_of_the_other_indexes() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let store = fx.store();
    let (default, other) = (connection_id("default"), connection_id("other"));
    let now = now_epoch_secs();
    for (connection, event_key) in [
        (&default, "contact.edit"),
        (&default, "contact.add"),
        (&other, "contact.add"),
    ] {
        let token = HookToken::generate().unwrap();
        assert!(
            store
                .put_hook(&token.hash(), connection, event_key, now)
                .await
                .unwrap()
        );
    }

    let hooks = store.hooks_of(&default).await.unwrap();
    let keys: Vec<&str> = hooks.iter().map(|h| h.event_key.as_str()).collect();
    assert_eq!(keys, ["contact.add", "contact.edit"]);
    assert_eq!(store.hooks_of(&other).await.unwrap().len(), 1);
    assert!(
        store
            .hooks_of(&connection_id("nobody"))
            .await
            .unwrap()
            .is_empty()
    );

    // The refresher's listing and the removal of links never meet a hook item.
    let listed = store.list_connections().await.unwrap();
    assert_eq!(listed.connections.len(), 1);
    assert!(listed.malformed.is_empty(), "{:?}", listed.malformed);
    let scanned = store.scan_connections().await.unwrap();
    assert_eq!(scanned.connections.len(), 1);
    assert!(scanned.malformed.is_empty(), "{:?}", scanned.malformed);
    assert_eq!(
        store.retire_pending_authorizations(&default).await.unwrap(),
        0
    );
    assert_eq!(store.hooks_of(&default).await.unwrap().len(), 2);
}

#[tokio::test]
async fn inactive_since_keeps_the_first_sighting_and_clears_only_that_one() {
    let fx = Fixture::new().await;
    let store = fx.store();
    let token = HookToken::generate().unwrap();
    let hash = token.hash();
    store
        .put_hook(&hash, &connection_id("default"), "contact.add", 1_000)
        .await
        .unwrap();

    assert_eq!(
        store.note_hook_inactive(&hash, 2_000).await.unwrap(),
        Some(2_000)
    );
    assert_eq!(
        store.note_hook_inactive(&hash, 3_000).await.unwrap(),
        Some(2_000),
        "a later sighting keeps the first"
    );
    // The gap event for another sighting was published: this one stays.
    store.clear_hook_inactive(&hash, 3_000).await.unwrap();
    let hook = store.hook(&hash).await.unwrap().unwrap();
    assert_eq!(hook.inactive_since, Some(2_000));
    store.clear_hook_inactive(&hash, 2_000).await.unwrap();
    assert_eq!(
        store.hook(&hash).await.unwrap().unwrap().inactive_since,
        None
    );
}

#[tokio::test]
async fn a_subscription_written_whose_answer_was_lost_is_recognised_as_ours() {
    let fx = Fixture::new().await;
    let store = fx.clients(&[]).store;
    let token = HookToken::generate().unwrap();
    let hash = token.hash();
    let lost = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::applied_then_lost("UpdateItem")
                .body_contains(&fx.table)
                .body_contains(hash.as_str()),
        )
        .await;
    let created = store
        .put_hook(
            &hash,
            &connection_id("default"),
            "contact.add",
            now_epoch_secs(),
        )
        .await
        .unwrap();
    lost.assert_fired(1).await;
    assert!(created, "the retry found its own landed write");

    let other = store
        .put_hook(
            &hash,
            &connection_id("default"),
            "contact.edit",
            now_epoch_secs(),
        )
        .await
        .unwrap();
    assert!(
        !other,
        "a different subscription under the same hash is refused"
    );
}
