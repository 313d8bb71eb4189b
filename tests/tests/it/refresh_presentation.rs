//! When a refresh token may be presented, and what Keap's answer means (docs/design.md,
//! "Refresh protocol" and "The fault model"): the time check after every wait, presentations
//! counted before they are made, answers classified by their status line once it arrived,
//! orphaned pairs that keep no other grant's tokens, and token lifetimes as Keap states them.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use keap_sandbox::{BodyBreak, Endpoint, Fault, FaultKind};
use keapalive::clock::now_epoch_secs;
use keapalive::deadline::Deadline;
use keapalive::token_store::{Connection, ConnectionStatus};
use keapalive_tests::aws::scan_all;
use keapalive_tests::emulator::{DynamoDbFault, Emulator, FaultMode};
use keapalive_tests::fixture::{Fixture, connection_id};
use secrecy::ExposeSecret;

const APP: &str = "present01";
/// The SDK's attempt timeout for every AWS call (`wiring::aws_timeouts`).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

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

/// Refresh-token presentations the sandbox received, by answered status.
fn refresh_statuses(fx: &Fixture) -> Vec<u16> {
    fx.sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token" && r.grant_type.as_deref() == Some("refresh_token"))
        .map(|r| r.status)
        .collect()
}

/// No pair lost: the refresh token stored is the one Keap would accept now.
fn assert_stored_token_is_live(fx: &Fixture, connection: &Connection) {
    let pair = connection.tokens.as_ref().expect("pair stored");
    assert_eq!(
        Some(pair.refresh_token.expose_secret().to_owned()),
        fx.sandbox.current_refresh_token(APP),
        "the stored refresh token must be the one Keap issued last (live at Keap)"
    );
}

/// The `orphan_pair` map of this test's only connection item.
async fn orphan_pair(fx: &Fixture) -> std::collections::HashMap<String, AttributeValue> {
    let items = scan_all(&fx.sdk, &fx.table).await;
    match items.iter().find_map(|item| item.get("orphan_pair")) {
        Some(AttributeValue::M(map)) => map.clone(),
        other => panic!("no orphan_pair map: {other:?}"),
    }
}

// ------------------------------------------------------- time is checked where it matters

#[tokio::test]
async fn slow_lease_write_and_slow_token_endpoint_lose_no_pair() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    // The lease write hangs past the attempt timeout twice (nothing applied); the SDK's third
    // attempt lands. The "enough time?" check before the lease passed; after it, it must not.
    let slow_lease = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("UpdateItem", "InternalServerError")
                .status(500)
                .mode(FaultMode::Hang)
                .hang(Duration::from_secs(5))
                .body_contains(&fx.table)
                .body_contains("lease_until = :until")
                .times(2),
        )
        .await;
    // Keap rotates at once but answers after 9 s (inside the 10 s Keap timeout)...
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Delay(Duration::from_millis(9_000)),
        times: 1,
    });
    // ...and the commit then meets a write outage of about 9 s: inside the commit budget.
    Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::new("UpdateItem", "InternalServerError")
                .status(500)
                .mode(FaultMode::Hang)
                .hang(Duration::from_secs(5))
                .body_contains(&fx.table)
                .body_contains(":next")
                .times(3),
        )
        .await;
    let refresher = fx.clients(&[]).refresher();

    // Just over the Keap timeout (10 s) plus the commit budget (10 s) when the run starts.
    let started = Instant::now();
    let run = refresher
        .run_scheduled(Deadline::after(Duration::from_millis(21_500)), 8)
        .await
        .unwrap();

    slow_lease.assert_fired(2).await;
    assert!(
        started.elapsed() >= 2 * ATTEMPT_TIMEOUT,
        "the lease write waited out two attempt timeouts ({:?})",
        started.elapsed()
    );
    assert_eq!(run.summary.commit_failed, 0, "{:?}", run.summary);
    assert_eq!(run.summary.not_started_deadline, 1, "{:?}", run.summary);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert!(connection.lease.is_none(), "the lease was released");
    assert_eq!(
        connection.lost_responses, 0,
        "a presentation refused by the time check is not counted"
    );
    assert_stored_token_is_live(&fx, &connection);
    assert!(
        refresh_statuses(&fx).is_empty(),
        "the token was not presented"
    );
}

// ------------------------------------------------------- classified by the status line

#[tokio::test]
async fn two_cut_off_503s_leave_the_grant_active_and_its_token_live() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::StatusThenBrokenBody {
            status: 503,
            break_body: BodyBreak::Cut,
        },
        times: 2,
    });
    let refresher = fx.clients(&[]).refresher();

    for _ in 0..2 {
        let run = refresher.run_scheduled(deadline(), 8).await.unwrap();
        assert_eq!(run.summary.failed_transient, 1, "{:?}", run.summary);
        assert_eq!(run.summary.newly_needs_reauthorization, 0);
    }

    assert_eq!(refresh_statuses(&fx), [503, 503], "both faults fired");
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(connection.lost_responses, 0, "a 503 is never counted");
    assert!(connection.lease.is_none());
    assert_stored_token_is_live(&fx, &connection);

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();
    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    assert_stored_token_is_live(&fx, &read(&fx, "default").await);
}

#[tokio::test]
async fn a_stalled_429_body_is_not_waited_for_nor_counted() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::StatusThenBrokenBody {
            status: 429,
            break_body: BodyBreak::Stall,
        },
        times: 2,
    });
    let refresher = fx.clients(&[]).refresher();

    let started = Instant::now();
    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    assert_eq!(run.summary.failed_transient, 1, "{:?}", run.summary);
    assert_eq!(refresh_statuses(&fx), [429], "the fault fired, once");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the status line decided; the stalled body was not waited for ({:?})",
        started.elapsed()
    );
    let connection = read(&fx, "default").await;
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(connection.lost_responses, 0);
    assert_stored_token_is_live(&fx, &connection);
}

#[tokio::test]
async fn a_502_is_a_lost_answer_presented_once_more() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    // A gateway error: the request may have been processed upstream (here it was not).
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Status {
            status: 502,
            retry_after_secs: None,
        },
        times: 1,
    });
    let refresher = fx.clients(&[]).refresher();

    let run = refresher.run_scheduled(deadline(), 8).await.unwrap();

    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    assert_eq!(refresh_statuses(&fx), [502, 200]);
    let connection = read(&fx, "default").await;
    assert_eq!(connection.lost_responses, 0, "the commit clears the count");
    assert_stored_token_is_live(&fx, &connection);
}

// ------------------------------------------------------- orphans keep no other grant's tokens

/// Refreshes while `replace` runs 700 ms into Keap's 2 s answer; returns the run's summary.
async fn refresh_racing(
    fx: &Fixture,
    replace: impl std::future::Future<Output = ()>,
) -> keapalive::refresh::RefreshSummary {
    fx.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Delay(Duration::from_millis(2_000)),
        times: 1,
    });
    let refresher = fx.clients(&[]).refresher();
    let refresh = refresher.run_scheduled(deadline(), 8);
    let replace = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        replace.await
    };
    let (run, ()) = tokio::join!(refresh, replace);
    run.unwrap().summary
}

fn assert_diagnosis_only(orphan: &std::collections::HashMap<String, AttributeValue>) {
    let mut keys: Vec<&str> = orphan.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_expires_at",
            "access_fingerprint",
            "generation",
            "refresh_fingerprint",
            "stored_at"
        ],
        "only what diagnosis needs, no token"
    );
    assert!(matches!(orphan.get("generation"), Some(AttributeValue::N(g)) if g == "2"));
}

#[tokio::test]
async fn refresh_racing_remove_and_recreate_keeps_no_token_of_the_old_grant() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let summary = refresh_racing(&fx, async {
        assert!(
            fx.store()
                .delete_connection(&connection_id("default"))
                .await
                .unwrap()
        );
        fx.seed_connection("default", APP, None).await;
    })
    .await;

    assert_eq!(summary.orphaned, 1, "{summary:?}");
    let connection = read(&fx, "default").await;
    assert_eq!(connection.generation, 1, "the new grant's first generation");
    assert_stored_token_is_live(&fx, &connection);
    assert_diagnosis_only(&orphan_pair(&fx).await);
}

#[tokio::test]
async fn refresh_racing_a_replace_account_reauthorization_keeps_no_token_of_the_old_grant() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    let summary = refresh_racing(&fx, async {
        // `seed_connection` authorizes with `replace_account`: another Keap account.
        fx.seed_connection("default", "present02", None).await;
    })
    .await;

    assert_eq!(summary.orphaned, 1, "{summary:?}");
    let connection = read(&fx, "default").await;
    assert_eq!(
        connection.keap_app.as_deref(),
        Some("present02.infusionsoft.com")
    );
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_diagnosis_only(&orphan_pair(&fx).await);
}

// ------------------------------------------------------- token lifetimes Keap states

#[tokio::test]
async fn short_lifetimes_are_stored_as_stated_and_rotate_at_most_once_a_minute() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, due_soon()).await;
    fx.sandbox.set_access_token_lifetime(40);
    let id = connection_id("default");

    let before = now_epoch_secs();
    let run = fx
        .clients(&[])
        .refresher()
        .run_scheduled(deadline(), 8)
        .await
        .unwrap();

    assert_eq!(run.summary.refreshed, 1, "{:?}", run.summary);
    assert_eq!(run.metrics.get("ShortTokenLifetime"), Some(1.0));
    let connection = read(&fx, "default").await;
    let expires_at = connection.tokens.as_ref().unwrap().access_expires_at;
    assert!(
        (before + 40..=now_epoch_secs() + 40).contains(&expires_at),
        "stored as Keap stated it (40 s), not clamped up: expires in {} s",
        expires_at - before
    );
    assert!(connection.expiry_rotation_at.is_some());

    // Every container now finds the token due; within the minute none rotates it again.
    for _ in 0..2 {
        let again = fx
            .clients(&[])
            .refresher()
            .run_scheduled(deadline(), 8)
            .await
            .unwrap();
        assert_eq!(again.summary.refreshed, 0, "{:?}", again.summary);
        assert_eq!(again.summary.skipped_locked, 1, "{:?}", again.summary);
    }
    // An on-demand caller (contact-upsert) in yet another container gets the current token,
    // which Keap still accepts, instead of a rotation.
    let grant = fx
        .clients(&[])
        .on_demand()
        .grant(&id, Deadline::after(Duration::from_secs(30)), None)
        .await
        .unwrap();
    assert_eq!(grant.generation, 2);
    assert_eq!(refresh_statuses(&fx), [200], "one rotation in the minute");
    let after = read(&fx, "default").await;
    assert_eq!(after.generation, 2);
    assert_stored_token_is_live(&fx, &after);
}
