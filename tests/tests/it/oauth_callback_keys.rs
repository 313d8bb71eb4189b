//! oauth-callback's key commands in-process: `register_service_account_key` validates the key
//! with one account-profile read before storing anything, and only reads secrets under
//! `KEAPALIVE_KEY_SECRET_PREFIX`; `remove_connection` deletes a connection item.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use keap_sandbox::{AuthKind, Endpoint, Fault, FaultKind};
use keapalive::authorization;
use keapalive::wiring::Clients;
use keapalive_tests::aws::{scan_all, unique_name};
use keapalive_tests::emulator::Emulator;
use keapalive_tests::fixture::{CLIENT_SECRET, Fixture};
use keapalive_tests::logs::{self, assert_logs_never_contain};
use lambda_runtime::Diagnostic;
use serde_json::{Value, json};

type Item = HashMap<String, AttributeValue>;

struct World {
    fixture: Fixture,
    clients: Clients,
    prefix: String,
}

impl World {
    async fn new() -> Self {
        logs::capture_logs();
        let fixture = Fixture::new().await;
        let prefix = format!("{}/keys/", unique_name("keapalive-test"));
        let clients = fixture.clients(&[("KEAPALIVE_KEY_SECRET_PREFIX", &prefix)]);
        Self {
            fixture,
            clients,
            prefix,
        }
    }

    /// A secret holding `value`, named `<name_prefix><unique>`; returns (name, ARN).
    async fn secret(&self, name_prefix: &str, value: &str) -> (String, String) {
        let name = format!("{name_prefix}{}", unique_name("key"));
        let created = aws_sdk_secretsmanager::Client::new(&self.fixture.sdk)
            .create_secret()
            .name(&name)
            .secret_string(value)
            .send()
            .await
            .unwrap();
        (name, created.arn.expect("moto returns the ARN"))
    }

    async fn register(&self, connection_id: &str, secret_id: &str) -> Result<Value, Diagnostic> {
        authorization::answer_operator(
            &self.clients.authorization(),
            json!({"register_service_account_key": {
                "connection_id": connection_id,
                "secret_id": secret_id,
            }}),
        )
        .await
    }

    async fn connection(&self, id: &str) -> Option<Item> {
        let pk = format!("conn#{id}");
        scan_all(&self.fixture.sdk, &self.fixture.table)
            .await
            .into_iter()
            .find(|item| matches!(item.get("pk"), Some(AttributeValue::S(p)) if *p == pk))
    }

    fn profile_reads(&self) -> usize {
        self.fixture
            .sandbox
            .requests()
            .iter()
            .filter(|r| r.path == "/crm/rest/v1/account/profile")
            .count()
    }
}

fn s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

#[tokio::test]
async fn a_valid_key_is_checked_once_and_stored_without_tokens() {
    let world = World::new().await;
    let key = world.fixture.sandbox.issue_service_account_key("sandbox01");
    let (name, arn) = world.secret(&world.prefix, &key).await;

    let registered = world.register("keys", &name).await.unwrap();
    assert_eq!(
        registered,
        json!({"connection_id": "keys", "kind": "service_account_key", "generation": 1})
    );
    let requests = world.fixture.sandbox.requests();
    assert_eq!(requests.len(), 1, "one cheap read validates the key");
    assert_eq!(requests[0].path, "/crm/rest/v1/account/profile");
    assert_eq!(requests[0].auth, AuthKind::ApiKey);

    let item = world.connection("keys").await.unwrap();
    assert_eq!(s(&item, "kind"), Some("service_account_key"));
    assert_eq!(s(&item, "key_secret_id"), Some(name.as_str()));
    assert_eq!(s(&item, "status"), Some("active"));
    for token_attribute in ["access_token", "refresh_token", "access_expires_at"] {
        assert!(!item.contains_key(token_attribute), "{token_attribute}");
    }
    assert!(
        !format!("{item:?}").contains(&key),
        "the key itself stays in Secrets Manager"
    );

    // The same secret by ARN (the name inside the ARN is under the prefix).
    let again = world.register("keys", &arn).await.unwrap();
    assert_eq!(again["generation"], 2);
    assert_logs_never_contain(&[&key, CLIENT_SECRET]);
}

#[tokio::test]
async fn a_key_replaces_an_oauth_pair_entirely() {
    let world = World::new().await;
    let pair = world
        .fixture
        .seed_connection("default", "sandbox01", None)
        .await;
    let key = world.fixture.sandbox.issue_service_account_key("sandbox01");
    let (name, _) = world.secret(&world.prefix, &key).await;

    let registered = world.register("default", &name).await.unwrap();
    assert_eq!(registered["generation"], 2);
    let item = world.connection("default").await.unwrap();
    assert_eq!(s(&item, "kind"), Some("service_account_key"));
    for token_attribute in [
        "access_token",
        "refresh_token",
        "access_expires_at",
        "keap_scope",
    ] {
        assert!(!item.contains_key(token_attribute), "{token_attribute}");
    }
    assert_logs_never_contain(&[&key, &pair.access_token, &pair.refresh_token]);
}

#[tokio::test]
async fn a_revoked_or_unknown_key_is_refused_and_nothing_is_stored() {
    let world = World::new().await;
    let revoked = world.fixture.sandbox.issue_service_account_key("sandbox01");
    world.fixture.sandbox.revoke_service_account_key(&revoked);
    let (revoked_secret, _) = world.secret(&world.prefix, &revoked).await;
    let (made_up_secret, _) = world.secret(&world.prefix, "KeapAK-made-up-key").await;

    for secret in [&revoked_secret, &made_up_secret] {
        let error = world.register("keys", secret).await.unwrap_err();
        assert_eq!(error.error_type, "KeapRejected");
        assert!(
            error.error_message.contains("Keap rejected the key"),
            "{error:?}"
        );
        assert!(!error.error_message.contains(&revoked));
    }
    assert_eq!(world.profile_reads(), 2);
    assert!(world.connection("keys").await.is_none());
    assert_logs_never_contain(&[&revoked, "KeapAK-made-up-key"]);
}

#[tokio::test]
async fn a_secret_outside_the_prefix_is_never_read() {
    let world = World::new().await;
    let key = world.fixture.sandbox.issue_service_account_key("sandbox01");
    let (outside, outside_arn) = world.secret("elsewhere/", &key).await;
    let emulator = Emulator::shared();

    for secret_id in [&outside, &outside_arn] {
        let error = world.register("keys", secret_id).await.unwrap_err();
        assert_eq!(error.error_type, "NotAuthorized");
        assert!(error.error_message.contains(&world.prefix), "{error:?}");
        assert!(!error.error_message.contains(&key));
    }
    let reads = emulator.request_counts_for(&outside).await;
    assert_eq!(
        reads.get("secretsmanager.GetSecretValue"),
        None,
        "{reads:?}"
    );
    assert_eq!(world.profile_reads(), 0);
    assert!(world.connection("keys").await.is_none());
}

#[tokio::test]
async fn a_missing_secret_or_keap_outage_stores_nothing() {
    let world = World::new().await;
    let missing = format!("{}does-not-exist", world.prefix);
    let error = world.register("keys", &missing).await.unwrap_err();
    assert_eq!(error.error_type, "ValidationError");

    let key = world.fixture.sandbox.issue_service_account_key("sandbox01");
    let (name, _) = world.secret(&world.prefix, &key).await;
    let fault = world.fixture.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times: 1,
    });
    let error = world.register("keys", &name).await.unwrap_err();
    fault.assert_fired(1);
    assert_eq!(error.error_type, "Unavailable");
    assert!(world.connection("keys").await.is_none());

    // Once Keap is back, the same command works.
    assert_eq!(
        world.register("keys", &name).await.unwrap()["generation"],
        1
    );
    assert_logs_never_contain(&[&key]);
}

#[tokio::test]
async fn remove_connection_deletes_the_item_once() {
    let world = World::new().await;
    world
        .fixture
        .seed_connection("old", "sandbox01", None)
        .await;
    let remove = json!({"remove_connection": {"connection_id": "old"}});

    let first = authorization::answer_operator(&world.clients.authorization(), remove.clone())
        .await
        .unwrap();
    assert_eq!(first["removed"], true);
    assert!(world.connection("old").await.is_none());
    let second = authorization::answer_operator(&world.clients.authorization(), remove)
        .await
        .unwrap();
    assert_eq!(second["removed"], false);

    let unnamed = authorization::answer_operator(
        &world.clients.authorization(),
        json!({"remove_connection": {}}),
    )
    .await
    .unwrap_err();
    assert_eq!(unnamed.error_type, "ValidationError");
}
