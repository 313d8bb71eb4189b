//! The refresh protocol's invariants (shared/src/refresh/mod.rs), each attacked on purpose,
//! against the Keap sandbox and the DynamoDB emulator through the real clients.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use keap_sandbox::{Endpoint, Fault, FaultKind};
use keapalive::clock::now_epoch_secs;
use keapalive::deadline::Deadline;
use keapalive::refresh::{RefreshOutcome, RunGuard};
use keapalive::token_store::{Connection, ConnectionStatus, LeaseOutcome};
use keapalive_tests::aws::create_client_secret;
use keapalive_tests::emulator::{DynamoDbFault, Emulator};
use keapalive_tests::fixture::{CLIENT_ID, CLIENT_SECRET, Fixture, connection_id};
use keapalive_tests::logs::{
    assert_logs_never_contain, capture_logs, captured_logs_since, log_mark,
};
use secrecy::ExposeSecret;

const APP: &str = "ab123";

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(120))
}

fn due_soon() -> Option<i64> {
    Some(now_epoch_secs() + 60)
}

async fn read(fx: &Fixture, id: &str) -> Connection {
    fx.store()
        .get(&connection_id(id))
        .await
        .unwrap()
        .expect("connection exists")
}

/// Refresh-token presentations the sandbox received, and how many it rejected.
fn refresh_calls(fx: &Fixture) -> (usize, usize) {
    let calls: Vec<_> = fx
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token" && r.grant_type.as_deref() == Some("refresh_token"))
        .collect();
    let rejected = calls.iter().filter(|r| r.status == 400).count();
    (calls.len(), rejected)
}

fn assert_stored_pair_is_keaps_latest(fx: &Fixture, connection: &Connection, app: &str) {
    let pair = connection.tokens.as_ref().expect("pair stored");
    assert_eq!(
        Some(pair.refresh_token.expose_secret().to_owned()),
        fx.sandbox.current_refresh_token(app),
        "the stored refresh token must be the one Keap issued last"
    );
}

#[tokio::test]
async fn due_connection_is_refreshed_once_and_committed_atomically() {
    capture_logs();
    let fx = Fixture::new().await;
    let seeded = fx.seed_connection("default", APP, due_soon()).await;
    let refresher = fx.clients(&[]).refresher();

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    assert_eq!(run.summary.due, 1);
    assert_eq!(run.summary.refreshed, 1);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.generation, 2);
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert!(connection.lease.is_none());
    assert!(connection.refreshed_at.is_some());
    let pair = connection.tokens.as_ref().unwrap();
    assert!(pair.access_expires_at > now_epoch_secs() + 80_000);
    assert_ne!(pair.refresh_token.expose_secret(), seeded.refresh_token);
    assert_stored_pair_is_keaps_latest(&fx, &connection, APP);
    assert_eq!(refresh_calls(&fx), (1, 0));
    assert_eq!(run.metrics.get("Refreshed"), Some(1.0));

    // Not due any more: a second run does not call Keap.
    let again = refresher.run_scheduled(deadline(), 8).await.unwrap();
    assert_eq!(again.summary.due, 0);
    assert_eq!(refresh_calls(&fx), (1, 0));
    assert_logs_never_contain(&[
        &seeded.access_token,
        &seeded.refresh_token,
        pair.refresh_token.expose_secret(),
        pair.access_token.expose_secret(),
        CLIENT_SECRET,
    ]);
}

#[tokio::test]
async fn crashed_holder_blocks_only_until_lease_expiry() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let id = connection_id("default");
    // A refresher took the lease and died before calling Keap.
    let now = now_epoch_secs();
    let taken = fx
        .store()
        .take_lease(
            &id,
            &read(&fx, "default").await.version(),
            "crashed-refresher",
            now,
            now + 2,
        )
        .await
        .unwrap();
    assert!(matches!(taken, LeaseOutcome::Acquired { .. }));

    let refresher = fx.clients(&[("KEAPALIVE_LEASE_SECS", "2")]).refresher();
    let blocked = refresher.run_scheduled(deadline(), 8).await.unwrap();
    assert_eq!(blocked.summary.skipped_locked, 1);
    assert_eq!(refresh_calls(&fx), (0, 0), "a loser never calls Keap (I4)");

    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let after = refresher.run_scheduled(deadline(), 8).await.unwrap();
    assert_eq!(after.summary.refreshed, 1);
    assert_eq!(read(&fx, "default").await.generation, 2);
    assert_eq!(refresh_calls(&fx), (1, 0));
}

#[tokio::test]
async fn commit_retries_through_throttling_and_never_represents_the_token() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let refresher = fx.clients(&[]).refresher();
    // Every UpdateItem that commits a refreshed pair (it carries :next) fails 7 times: more
    // than the SDK's own three attempts, so the protocol's retry loop must carry it.
    let fault = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("UpdateItem", "ProvisionedThroughputExceededException")
                .body_contains(&fx.table)
                .body_contains(":next")
                .times(7),
        )
        .await;

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    fault.assert_fired(7).await;
    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.generation, 2);
    assert_stored_pair_is_keaps_latest(&fx, &connection, APP);
    assert_eq!(
        refresh_calls(&fx),
        (1, 0),
        "the refresh token was presented once"
    );
}

#[tokio::test]
async fn keap_5xx_and_429_release_the_lease_and_the_next_run_succeeds() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let refresher = fx.clients(&[]).refresher();

    for (status, retry_after_secs) in [(503, None), (429, Some(30))] {
        let fault = fx.sandbox.inject(Fault {
            endpoint: Endpoint::Token,
            kind: FaultKind::Status {
                status,
                retry_after_secs,
            },
            times: 1,
        });
        let failed = refresher.run_scheduled(deadline(), 8).await.unwrap();
        fault.assert_fired(1);
        assert_eq!(failed.summary.failed_transient, 1, "{status}");
        let connection = read(&fx, "default").await;
        assert_eq!(connection.status, ConnectionStatus::Active);
        assert!(connection.lease.is_none(), "lease released after {status}");
        assert_eq!(connection.generation, 1);
        assert!(connection.last_error.is_some());
    }
    assert_eq!(refresh_calls(&fx).0, 2, "one call per run: no busy loop");

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();
    assert_eq!(run.summary.refreshed, 1);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.generation, 2);
    assert!(connection.last_error.is_none());
    assert_stored_pair_is_keaps_latest(&fx, &connection, APP);
    // The faulted answers consumed nothing: the one real presentation succeeded.
    assert_eq!(refresh_calls(&fx), (3, 0));
}

#[tokio::test]
async fn rejected_client_never_marks_the_grant() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let wrong = create_client_secret(&fx.sdk, CLIENT_ID, "rotated-away-secret").await;
    let refresher = fx
        .clients(&[("KEAPALIVE_CLIENT_SECRET_ID", wrong.as_str())])
        .refresher();

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    assert_eq!(run.summary.client_rejected, 1);
    assert_eq!(run.metrics.get("ClientCredentialsRejected"), Some(1.0));
    assert_eq!(run.metrics.get("NeedsReauthorization"), Some(0.0));
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert!(connection.lease.is_none());
    assert_eq!(connection.generation, 1);
}

#[tokio::test]
async fn circuit_breaker_stops_mass_marking() {
    let fx = Fixture::new().await;
    for i in 0..10 {
        let app = format!("app{i}");
        fx.seed_connection(&format!("conn-{i}"), &app, due_soon())
            .await;
        fx.sandbox.revoke_grant(&app);
    }
    let refresher = fx.clients(&[]).refresher();

    let run = refresher.run_scheduled(deadline(), 4).await.unwrap();

    assert!(run.summary.circuit_breaker_open);
    assert_eq!(run.summary.newly_needs_reauthorization, 0);
    assert_eq!(run.metrics.get("CircuitBreakerOpen"), Some(1.0));
    for i in 0..10 {
        let connection = read(&fx, &format!("conn-{i}")).await;
        assert_eq!(connection.status, ConnectionStatus::Active);
        assert!(connection.lease.is_none(), "lease released");
    }
}

#[tokio::test]
async fn dead_grant_marked_after_one_call_then_left_alone() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    fx.sandbox.revoke_grant(APP);
    let refresher = fx.clients(&[]).refresher();

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    assert_eq!(run.summary.newly_needs_reauthorization, 1);
    assert_eq!(run.summary.needs_reauthorization, 1);
    assert_eq!(run.metrics.get("NeedsReauthorization"), Some(1.0));
    assert_eq!(
        run.metrics.get("ConnectionsNeedingReauthorization"),
        Some(1.0)
    );
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::NeedsReauthorization);
    assert_eq!(
        connection.last_error.as_deref(),
        Some("refresh_token_rejected")
    );
    assert_eq!(refresh_calls(&fx), (1, 1));

    for _ in 0..3 {
        let later = refresher.run_scheduled(deadline(), 8).await.unwrap();
        assert_eq!(later.summary.due, 0);
        assert_eq!(
            later.metrics.get("ConnectionsNeedingReauthorization"),
            Some(1.0)
        );
    }
    assert_eq!(refresh_calls(&fx), (1, 1), "nothing keeps hammering Keap");
}

#[tokio::test]
async fn lost_response_retries_once_then_marks() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::DropAfterProcessing,
        times: 1,
    });
    let refresher = fx.clients(&[]).refresher();

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    fault.assert_fired(1);
    assert_eq!(
        run.summary.newly_needs_reauthorization, 1,
        "{:?}",
        run.summary
    );
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::NeedsReauthorization);
    assert_eq!(connection.last_error.as_deref(), Some("lost_response"));
    // The dropped one and exactly one retry with the same token, which Keap rejected.
    assert_eq!(refresh_calls(&fx), (2, 1));
}

#[tokio::test]
async fn lost_response_whose_retry_succeeds_keeps_the_grant() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    // Dropped before Keap processed it: the token is still good, so the retry succeeds.
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::DropBeforeProcessing,
        times: 1,
    });
    let refresher = fx.clients(&[]).refresher();

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    fault.assert_fired(1);
    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    let connection = read(&fx, "default").await;
    assert_stored_pair_is_keaps_latest(&fx, &connection, APP);
    assert_eq!(refresh_calls(&fx), (2, 0));
}

#[tokio::test]
async fn commit_after_lease_expiry_lands() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    // Keap answers after 2.5 s; the lease is 1 s: it lapses before the commit.
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Delay(Duration::from_millis(2_500)),
        times: 1,
    });
    let refresher = fx.clients(&[("KEAPALIVE_LEASE_SECS", "1")]).refresher();

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    fault.assert_fired(1);
    assert_eq!(run.summary.refreshed, 1);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(connection.generation, 2);
    assert!(connection.lease.is_none());
    assert_stored_pair_is_keaps_latest(&fx, &connection, APP);
}

#[tokio::test]
async fn mark_racing_a_commit_leaves_connection_active() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    // A's request is processed at once but answered after 4.5 s. Its lease lapses (a lease
    // outlives its holder's deadline, so only a clock far off can do that: the test sets
    // lease_until in the past), B takes the lease, presents the same (now spent) token, is
    // rejected and marks the grant dead. A's commit then lands and must leave the connection
    // active (I6): the pair is Keap's newest.
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Delay(Duration::from_millis(4_500)),
        times: 1,
    });
    let a = fx.clients(&[("KEAPALIVE_LEASE_SECS", "1")]).refresher();
    let b = fx.clients(&[("KEAPALIVE_LEASE_SECS", "1")]).refresher();
    let id = connection_id("default");

    let run_a = a.run_one(&id, deadline(), false);
    let run_b = async {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        aws_sdk_dynamodb::Client::new(&fx.sdk)
            .update_item()
            .table_name(&fx.table)
            .key("pk", AttributeValue::S("conn#default".to_owned()))
            .update_expression("SET lease_until = :past")
            .expression_attribute_values(
                ":past",
                AttributeValue::N((now_epoch_secs() - 1).to_string()),
            )
            .send()
            .await
            .unwrap();
        b.run_one(&id, deadline(), true).await
    };
    let (run_a, run_b) = tokio::join!(run_a, run_b);

    fault.assert_fired(1);
    assert_eq!(run_b.unwrap().summary.newly_needs_reauthorization, 1);
    assert_eq!(run_a.unwrap().summary.refreshed, 1);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(connection.generation, 2);
    assert_stored_pair_is_keaps_latest(&fx, &connection, APP);
}

#[tokio::test]
async fn reauthorization_racing_a_mark_leaves_connection_active() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    fx.sandbox.revoke_grant(APP);
    let refresher = fx.clients(&[]).refresher();
    let before = read(&fx, "default").await;

    let outcome = refresher
        .refresh(&before, deadline(), false, &RunGuard::new())
        .await
        .unwrap();
    let RefreshOutcome::Rejected(pending) = outcome else {
        panic!("expected a rejection, got {outcome:?}");
    };
    // The operator re-authorizes before the mark is written.
    fx.seed_connection("default", APP, None).await;
    let marked = refresher.mark(&pending).await.unwrap();

    assert!(
        matches!(marked, RefreshOutcome::AlreadyRefreshed),
        "{marked:?}"
    );
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(connection.generation, 2);
}

#[tokio::test]
async fn reauthorization_during_refresh_orphans_the_pair() {
    capture_logs();
    let mark = log_mark();
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Delay(Duration::from_millis(2_000)),
        times: 1,
    });
    let refresher = fx.clients(&[]).refresher();

    let refresh = refresher.run_scheduled(deadline(), 8);
    let reauthorize = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        fx.seed_connection("default", APP, None).await
    };
    let (run, newer) = tokio::join!(refresh, reauthorize);

    fault.assert_fired(1);
    assert_eq!(run.unwrap().summary.orphaned, 1);
    let connection = read(&fx, "default").await;
    assert_eq!(
        connection.generation, 2,
        "the re-authorization's generation"
    );
    assert_eq!(connection.status, ConnectionStatus::Active);
    let pair = connection.tokens.as_ref().unwrap();
    assert_eq!(pair.refresh_token.expose_secret(), newer.refresh_token);
    assert_eq!(connection.orphan_generation, Some(2));
    let item = keapalive_tests::aws::scan_all(&fx.sdk, &fx.table).await;
    let orphan = item
        .iter()
        .find_map(|i| i.get("orphan_pair"))
        .expect("orphan_pair stored");
    assert!(matches!(orphan, AttributeValue::M(m) if m.contains_key("refresh_token")));
    let logs = captured_logs_since(mark);
    assert!(
        logs.lines()
            .any(|l| l.contains("\"ERROR\"") && l.contains("orphan_pair")),
        "an ERROR line names the orphan pair"
    );
}

#[tokio::test]
async fn too_little_time_left_starts_no_refresh() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let refresher = fx.clients(&[]).refresher();

    let run = refresher
        .run_scheduled(Deadline::after(Duration::from_secs(5)), 8)
        .await
        .unwrap();

    assert_eq!(run.summary.not_started_deadline, 1);
    assert_eq!(refresh_calls(&fx), (0, 0));
    let connection = read(&fx, "default").await;
    assert!(connection.lease.is_none(), "no lease taken");
    assert_eq!(connection.generation, 1);
}

#[tokio::test]
async fn service_account_keys_are_static_and_metrics_cover_every_run() {
    let fx = Fixture::new().await;
    let store = fx.store();
    store
        .register_service_account_key(
            &connection_id("key"),
            "keys/one",
            Some("ab9"),
            now_epoch_secs(),
        )
        .await
        .unwrap();
    let refresher = fx.clients(&[]).refresher();

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    assert_eq!(run.summary.static_, 1);
    assert_eq!(run.summary.due, 0);
    for name in [
        "Refreshed",
        "RefreshFailedTransient",
        "NeedsReauthorization",
        "ConnectionsNeedingReauthorization",
        "ClientCredentialsRejected",
        "CircuitBreakerOpen",
        "SecondsUntilEarliestExpiry",
        "SecondsSinceOldestRefresh",
    ] {
        assert!(
            run.metrics.get(name).is_some(),
            "{name} emitted on every run"
        );
    }
    let emf = run.metrics.to_emf("test");
    assert_eq!(
        emf["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "Keapalive"
    );
    assert_eq!(refresh_calls(&fx), (0, 0));
}
