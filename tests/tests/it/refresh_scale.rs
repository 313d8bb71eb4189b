//! Many due connections: concurrency, the request-rate limit, and nothing failing at scale.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keap_sandbox::Endpoint;
use keapalive::clock::now_epoch_secs;
use keapalive::deadline::Deadline;
use keapalive_tests::emulator::Emulator;
use keapalive_tests::fixture::{CLIENT_ID, Fixture, connection_id, issued_tokens};

async fn seed_many(fx: &Fixture, count: usize) {
    let store = fx.store();
    let soon = Some(now_epoch_secs() + 60);
    // Bounded: a thousand simultaneous connections to the emulator fail to dispatch.
    futures_util::stream::iter((0..count).map(|i| {
        let store = store.clone();
        let issued = fx.sandbox.issue_grant(CLIENT_ID, &format!("app{i}"));
        async move {
            store
                .authorize(
                    &connection_id(&format!("conn-{i:05}")),
                    &issued_tokens(&issued, soon),
                    true,
                    &keapalive::token_store::new_write_id(),
                    now_epoch_secs(),
                )
                .await
                .unwrap();
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
}

#[tokio::test]
async fn thousand_due_connections_refresh_within_the_concurrency_bound() {
    let _heavy = crate::support::one_heavy_test_at_a_time().await;
    const CONNECTIONS: usize = 1_000;
    const CONCURRENCY: usize = 32;
    let fx = Fixture::new().await;
    seed_many(&fx, CONNECTIONS).await;
    fx.sandbox
        .set_latency(Endpoint::Token, Duration::from_millis(50));
    let refresher = fx
        .clients(&[
            ("KEAPALIVE_REFRESH_CONCURRENCY", "32"),
            ("KEAPALIVE_KEAP_RATE_PER_SEC", "1000"),
        ])
        .refresher();

    let started = Instant::now();
    let run = refresher
        .run_scheduled(Deadline::after(Duration::from_secs(900)), CONCURRENCY)
        .await
        .unwrap();
    let elapsed = started.elapsed();

    assert_eq!(run.summary.due, CONNECTIONS);
    assert_eq!(run.summary.refreshed, CONNECTIONS, "{:?}", run.summary);
    let ideal = Duration::from_millis(50) * CONNECTIONS as u32 / CONCURRENCY as u32;
    println!(
        "refreshed {CONNECTIONS} connections in {elapsed:?} (Keap-latency ideal {ideal:?}, ratio {:.1}; the serialized emulator adds ~3 writes per connection)",
        elapsed.as_secs_f64() / ideal.as_secs_f64()
    );
    // Generous: the serialized emulator, not the protocol, dominates on this machine (the
    // bench reports the real figure against the ideal).
    assert!(elapsed < Duration::from_secs(240), "{elapsed:?}");
    // The bound itself, measured where it matters: how many refreshes Keap was answering at
    // once (each held 50 ms by the sandbox). Elapsed time alone passes an unbounded refresher.
    let refreshes: Vec<_> = fx
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .collect();
    assert_eq!(refreshes.len(), CONNECTIONS);
    let in_flight = keap_sandbox::most_in_flight(&refreshes);
    println!("at most {in_flight} refreshes in flight at Keap (bound {CONCURRENCY})");
    assert!(
        in_flight <= CONCURRENCY,
        "{in_flight} refreshes in flight at once, bound {CONCURRENCY}"
    );
    assert!(
        in_flight > 1,
        "the refreshes were serialized: the concurrency is not used"
    );
    // A cold container refreshing 32 connections at once reads the client secret once.
    let secret_reads = Emulator::shared()
        .request_counts_for(&fx.secret_id)
        .await
        .get("secretsmanager.GetSecretValue")
        .copied();
    assert_eq!(secret_reads, Some(1));
}

// Multi-threaded so that the sandbox records arrivals while the refresher's 32 workers run,
// rather than when a single shared thread gets round to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_never_exceed_the_rate_limit_in_any_second() {
    let _heavy = crate::support::one_heavy_test_at_a_time().await;
    const CONNECTIONS: usize = 200;
    const RATE: usize = 20;
    let fx = Fixture::new().await;
    seed_many(&fx, CONNECTIONS).await;
    let refresher = fx
        .clients(&[("KEAPALIVE_KEAP_RATE_PER_SEC", "20")])
        .refresher();

    let run = refresher
        .run_scheduled(Deadline::after(Duration::from_secs(300)), 32)
        .await
        .unwrap();

    assert_eq!(run.summary.refreshed, CONNECTIONS);
    let mut arrivals: Vec<_> = fx
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .map(|r| r.at)
        .collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), CONNECTIONS);
    let busiest = (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|t| **t < arrivals[i] + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    let span = arrivals[CONNECTIONS - 1] - arrivals[0];
    println!(
        "busiest one-second window: {busiest} refreshes (limit {RATE}); {CONNECTIONS} in {span:?}"
    );
    assert!(
        busiest <= RATE,
        "{busiest} refreshes in one second, limit {RATE}"
    );
    let fastest_allowed = Duration::from_secs_f64((CONNECTIONS - 1) as f64 / RATE as f64);
    assert!(
        span >= fastest_allowed.mul_f64(0.98),
        "{CONNECTIONS} refreshes in {span:?}: faster than {RATE}/s on average"
    );
}
