//! The refresh protocol under the faults real DynamoDB and networks have (docs/design.md, "The
//! fault model"): writes that land and lose their answer, calls that hang, removed and
//! re-created connections (ABA), malformed items, a write brownout, lost Keap answers.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use keap_sandbox::{Endpoint, Fault, FaultKind};
use keapalive::clock::now_epoch_secs;
use keapalive::deadline::Deadline;
use keapalive::refresh::{LEASE_CLOCK_SKEW_SECS, RefreshOutcome, RunGuard};
use keapalive::token_store::{Connection, ConnectionStatus};
use keapalive::wiring::AWS_ATTEMPT_TIMEOUT;
use keapalive_tests::aws::scan_all;
use keapalive_tests::emulator::{DynamoDbFault, Emulator, FaultMode};
use keapalive_tests::fixture::{Fixture, connection_id};
use keapalive_tests::logs::{capture_logs, captured_logs_since, log_mark};
use secrecy::ExposeSecret;

const APP: &str = "fault01";

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

fn assert_stored_pair_is_keaps_latest(fx: &Fixture, connection: &Connection) {
    let pair = connection.tokens.as_ref().expect("pair stored");
    assert_eq!(
        Some(pair.refresh_token.expose_secret().to_owned()),
        fx.sandbox.current_refresh_token(APP),
        "the stored refresh token must be the one Keap issued last"
    );
}

async fn has_orphan_pair(fx: &Fixture) -> bool {
    scan_all(&fx.sdk, &fx.table)
        .await
        .iter()
        .any(|item| item.contains_key("orphan_pair"))
}

/// A fault on this test's UpdateItems whose expression contains `needle`.
fn update_fault(fx: &Fixture, needle: &str) -> DynamoDbFault {
    DynamoDbFault::applied_then_lost("UpdateItem")
        .body_contains(&fx.table)
        .body_contains(needle)
}

// ------------------------------------------------------- writes that land and lose their answer

#[tokio::test]
async fn landed_lease_whose_answer_is_lost_is_recognised() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let fault = Emulator::shared()
        .inject_dynamodb_fault(update_fault(&fx, "lease_owner = :owner, lease_until"))
        .await;

    let run = fx
        .clients(&[])
        .refresher()
        .run_scheduled(deadline(), 8)
        .await
        .unwrap();

    fault.assert_fired(1).await;
    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    assert_eq!(
        run.summary.skipped_locked, 0,
        "its own lease never blocks it"
    );
    let connection = read(&fx, "default").await;
    assert_eq!(connection.generation, 2);
    assert!(connection.lease.is_none());
    assert_eq!(refresh_calls(&fx), (1, 0));
}

#[tokio::test]
async fn landed_commit_whose_answer_is_lost_is_recognised() {
    capture_logs();
    let mark = log_mark();
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let fault = Emulator::shared()
        .inject_dynamodb_fault(update_fault(&fx, ":next"))
        .await;

    let run = fx
        .clients(&[])
        .refresher()
        .run_scheduled(deadline(), 8)
        .await
        .unwrap();

    fault.assert_fired(1).await;
    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    assert_eq!(run.summary.orphaned, 0);
    assert_eq!(run.summary.unknown, 0);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.generation, 2);
    assert_stored_pair_is_keaps_latest(&fx, &connection);
    assert!(
        !has_orphan_pair(&fx).await,
        "the live pair is not an orphan"
    );
    let logs = captured_logs_since(mark);
    assert!(
        !logs.contains("re-authorization replaced"),
        "no ERROR claims a re-authorization"
    );
}

#[tokio::test]
async fn landed_mark_whose_answer_is_lost_is_recognised() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    fx.sandbox.revoke_grant(APP);
    let fault = Emulator::shared()
        .inject_dynamodb_fault(update_fault(&fx, ":dead"))
        .await;

    let run = fx
        .clients(&[])
        .refresher()
        .run_scheduled(deadline(), 8)
        .await
        .unwrap();

    fault.assert_fired(1).await;
    assert_eq!(
        run.summary.newly_needs_reauthorization, 1,
        "{:?}",
        run.summary
    );
    assert_eq!(run.summary.skipped_locked, 0);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::NeedsReauthorization);
    assert_eq!(refresh_calls(&fx), (1, 1));
}

#[tokio::test]
async fn landed_key_registration_whose_answer_is_lost_is_recognised() {
    let fx = Fixture::new().await;
    let id = connection_id("reports");
    let fault = Emulator::shared()
        .inject_dynamodb_fault(update_fault(&fx, ":key_kind"))
        .await;

    let generation = fx
        .store()
        .register_service_account_key(&id, "keapalive/keys/reports", None, now_epoch_secs())
        .await
        .unwrap();

    fault.assert_fired(1).await;
    assert_eq!(generation, 1, "applied once, and the retry says so");
    assert_eq!(read(&fx, "reports").await.generation, 1);
}

// ------------------------------------------------------- hangs

#[tokio::test]
async fn hung_commit_attempt_is_abandoned_and_the_pair_committed_within_30s() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    // Nothing applied, no answer for 100 s: only an attempt timeout gets past it.
    let fault = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("UpdateItem", "InternalServerError")
                .status(500)
                .mode(FaultMode::Hang)
                .hang(Duration::from_secs(100))
                .body_contains(&fx.table)
                .body_contains(":next"),
        )
        .await;

    let started = Instant::now();
    let run = fx
        .clients(&[])
        .refresher()
        .run_scheduled(Deadline::after(Duration::from_secs(60)), 8)
        .await
        .unwrap();

    fault.assert_fired(1).await;
    assert!(
        started.elapsed() >= AWS_ATTEMPT_TIMEOUT,
        "the hung attempt was waited out: {:?}",
        started.elapsed()
    );
    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "committed after {:?}",
        started.elapsed()
    );
    assert_stored_pair_is_keaps_latest(&fx, &read(&fx, "default").await);
}

#[tokio::test]
async fn commit_that_lands_then_hangs_is_recognised_after_the_attempt_timeout() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let fault = Emulator::shared()
        .inject_dynamodb_fault(
            update_fault(&fx, ":next")
                .mode(FaultMode::ApplyThenHang)
                .hang(Duration::from_secs(100)),
        )
        .await;

    let started = Instant::now();
    let run = fx
        .clients(&[])
        .refresher()
        .run_scheduled(Deadline::after(Duration::from_secs(60)), 8)
        .await
        .unwrap();

    fault.assert_fired(1).await;
    assert!(
        started.elapsed() >= AWS_ATTEMPT_TIMEOUT,
        "the hung answer was waited out: {:?}",
        started.elapsed()
    );
    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    assert_eq!(run.summary.orphaned + run.summary.unknown, 0);
    assert_eq!(read(&fx, "default").await.generation, 2);
    assert!(!has_orphan_pair(&fx).await);
}

/// A commit outage that outlasts the commit budget: every commit attempt hangs until the SDK's
/// operation timeout (10 s). Started with just enough time, the refresh may present the token
/// (its budget says a commit fits) but no store call may run past the invocation's deadline —
/// Lambda would end the invocation mid-call. The soak's deadline overrun (docs/development.md).
#[tokio::test]
async fn a_commit_outage_never_holds_the_refresh_past_its_deadline() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let fault = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("UpdateItem", "InternalServerError")
                .status(500)
                .mode(FaultMode::Hang)
                .hang(Duration::from_secs(100))
                .body_contains(&fx.table)
                .body_contains(":next")
                .times(10_000),
        )
        .await;
    let clients = fx.clients(&[]);
    let budget =
        clients.config.keap_timeout + keapalive::refresh::COMMIT_BUDGET + Duration::from_secs(3);

    let started = Instant::now();
    let run = clients
        .refresher()
        .run_scheduled(Deadline::after(budget), 1)
        .await
        .unwrap();

    fault.assert_fired(1).await;
    assert!(
        started.elapsed() <= budget,
        "the refresh ran {:?} past its deadline",
        started.elapsed() - budget
    );
    assert_eq!(refresh_calls(&fx), (1, 0), "the token was presented once");
    assert_eq!(run.summary.commit_failed, 1, "{:?}", run.summary);
}

// ------------------------------------------------------- the lease outlives its holder

#[tokio::test]
async fn lease_ends_no_earlier_than_the_holders_deadline_plus_skew() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Delay(Duration::from_millis(1_500)),
        times: 1,
    });
    // A 2 s lease setting, an invocation with 900 s left: the lease must cover the invocation.
    let refresher = fx.clients(&[("KEAPALIVE_LEASE_SECS", "2")]).refresher();
    let deadline = Deadline::after(Duration::from_secs(900));
    let expected = deadline.epoch_secs() + LEASE_CLOCK_SKEW_SECS;

    let refresh = refresher.run_scheduled(deadline, 8);
    let peek = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        read(&fx, "default").await.lease
    };
    let (run, lease) = tokio::join!(refresh, peek);

    let lease = lease.expect("the lease is held while Keap answers");
    fault.assert_fired(1);
    assert!(
        lease.until >= expected - 1,
        "lease until {} < deadline + skew {expected}",
        lease.until
    );
    assert_eq!(run.unwrap().summary.refreshed, 1);
}

// ------------------------------------------------------- no ABA

#[tokio::test]
async fn refresh_decided_on_a_removed_connection_never_touches_its_successor() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let stale = read(&fx, "default").await;
    // Removed and authorized anew: generation 1 again, but another incarnation.
    assert!(fx.store().delete_connection(&stale.id).await.unwrap());
    let newer = fx.seed_connection("default", APP, due_soon()).await;
    let successor = read(&fx, "default").await;
    assert_eq!(successor.generation, stale.generation);
    assert_ne!(successor.incarnation, stale.incarnation);

    let outcome = fx
        .clients(&[])
        .refresher()
        .refresh(&stale, deadline(), false, &RunGuard::new())
        .await
        .unwrap();

    assert!(
        matches!(outcome, RefreshOutcome::AlreadyRefreshed),
        "{outcome:?}"
    );
    assert_eq!(refresh_calls(&fx), (0, 0), "no token presented");
    let after = read(&fx, "default").await;
    assert_eq!(after.status, ConnectionStatus::Active);
    assert_eq!(
        after.tokens.unwrap().refresh_token.expose_secret(),
        newer.refresh_token
    );
}

#[tokio::test]
async fn refresh_racing_remove_and_reauthorize_orphans_only_the_old_pair() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Delay(Duration::from_millis(2_000)),
        times: 1,
    });
    let refresher = fx.clients(&[]).refresher();

    let refresh = refresher.run_scheduled(deadline(), 8);
    let replace = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            fx.store()
                .delete_connection(&connection_id("default"))
                .await
                .unwrap()
        );
        fx.seed_connection("default", APP, None).await
    };
    let (run, newer) = tokio::join!(refresh, replace);

    let summary = run.unwrap().summary;
    fault.assert_fired(1);
    assert_eq!(summary.orphaned, 1, "{summary:?}");
    assert_eq!(summary.refreshed, 0);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(connection.generation, 1, "the new grant's first generation");
    assert_eq!(
        connection.tokens.unwrap().refresh_token.expose_secret(),
        newer.refresh_token,
        "the new grant's pair is untouched"
    );
}

// ------------------------------------------------------- bad data is isolated

#[tokio::test]
async fn malformed_item_is_skipped_and_the_due_connection_refreshed() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    aws_sdk_dynamodb::Client::new(&fx.sdk)
        .put_item()
        .table_name(&fx.table)
        .item("pk", AttributeValue::S("conn#broken".to_owned()))
        .item("generation", AttributeValue::S("three".to_owned()))
        .item("status", AttributeValue::S("active".to_owned()))
        .send()
        .await
        .unwrap();

    let run = fx
        .clients(&[])
        .refresher()
        .run_scheduled(deadline(), 8)
        .await
        .unwrap();

    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    assert_eq!(run.summary.malformed, 1);
    assert_eq!(run.metrics.get("MalformedConnections"), Some(1.0));
    assert_eq!(read(&fx, "default").await.generation, 2);
}

// ------------------------------------------------------- brownout

#[tokio::test]
async fn write_brownout_presents_at_most_one_token_per_commit_slot() {
    const CONNECTIONS: usize = 12;
    const CONCURRENCY: usize = 3;
    let fx = Fixture::new().await;
    for i in 0..CONNECTIONS {
        fx.seed_connection(&format!("c{i:02}"), &format!("brown{i:02}"), due_soon())
            .await;
    }
    // Every commit fails (throttled) for the whole run: no new pair can be stored.
    let fault = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("UpdateItem", "ProvisionedThroughputExceededException")
                .body_contains(&fx.table)
                .body_contains(":next")
                .times(10_000),
        )
        .await;

    let run = fx
        .clients(&[])
        .refresher()
        .run_scheduled(Deadline::after(Duration::from_secs(25)), CONCURRENCY)
        .await
        .unwrap();

    let presented = fx
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count();
    fault.assert_fired(1).await;
    assert!(
        presented <= CONCURRENCY,
        "{presented} tokens presented with {CONCURRENCY} commit slots: {:?}",
        run.summary
    );
    assert_eq!(run.summary.commit_failed, presented);
    assert_eq!(
        run.summary.not_started_brownout,
        CONNECTIONS - presented,
        "{:?}",
        run.summary
    );
}

// ------------------------------------------------------- lost Keap answers

#[tokio::test]
async fn second_lost_response_marks_lost_response_and_never_presents_again() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    // Both the first request and its one retry get no answer.
    let fault = fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::DropBeforeProcessing,
        times: 2,
    });
    let refresher = fx.clients(&[]).refresher();

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    fault.assert_fired(2);
    assert_eq!(
        run.summary.newly_needs_reauthorization, 1,
        "{:?}",
        run.summary
    );
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::NeedsReauthorization);
    assert_eq!(connection.last_error.as_deref(), Some("lost_response"));
    assert_eq!(
        refresh_calls(&fx).0,
        2,
        "presented twice, never a third time"
    );

    let again = refresher.run_scheduled(deadline(), 8).await.unwrap();
    assert_eq!(again.summary.due, 0);
    assert_eq!(refresh_calls(&fx).0, 2);
}

#[tokio::test]
async fn connect_failure_is_not_a_lost_response() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    // Nothing listens here: the request is never sent, so nothing can have been spent.
    let refresher = fx
        .clients(&[("KEAP_TOKEN_URL", "http://127.0.0.1:9/token")])
        .refresher();

    for _ in 0..3 {
        let run = refresher.run_scheduled(deadline(), 8).await.unwrap();
        assert_eq!(run.summary.failed_transient, 1, "{:?}", run.summary);
    }

    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(connection.lost_responses, 0);
}
