//! Refresher throughput: N due connections refreshed by one token-refresher invocation, with
//! Keap's token endpoint answering after a fixed latency, against an unserialized emulator
//! (a single refresher has no race for moto to get wrong).
//!
//! Ideal wall time = max(N × latency / L, N / R). When a run misses its target, the emulator's
//! own share is measured apart: the same DynamoDB requests (scan, lease, commit per connection)
//! replayed through the token store at concurrency L with Keap out of the picture.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use futures_util::{StreamExt, TryStreamExt, stream};
use keap_sandbox::{Endpoint, IssuedPair, Sandbox};
use keapalive::clock::now_epoch_secs;
use keapalive::keap::keap_app_from_scope;
use keapalive::token_store::{CommitOutcome, LeaseOutcome, RotationCause, new_write_id};
use keapalive_tests::aws::{create_client_secret, create_table, get_item};
use keapalive_tests::emulator::Emulator;
use keapalive_tests::fixture::{CLIENT_ID, CLIENT_SECRET, Fixture, connection_id, issued_tokens};
use serde::Serialize;
use serde_json::Value;

use crate::binaries;
use crate::container::Container;
use crate::counts::{AwsScope, AwsSnapshot, Floor, Measured, OperationCount};
use crate::events;
use crate::report::TARGET_THROUGHPUT_RATIO;

/// Lambda's longest timeout: the refresher's deadline for the run.
const RUN_DEADLINE: Duration = Duration::from_secs(900);
const BATCH_WRITE_ITEMS: usize = 25;
/// How long a container keeps the client secret (`KEAPALIVE_SECRET_CACHE_SECS`'s default).
const SECRET_CACHE: Duration = Duration::from_secs(300);
/// A query page is 1 MB and a connection item well under 1 KB.
const ITEMS_PER_SCAN_PAGE_AT_LEAST: usize = 1_000;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Settings {
    pub concurrency: usize,
    pub rate_per_sec: u32,
    pub keap_latency_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRun {
    pub connections: usize,
    pub settings: Settings,
    pub wall_s: f64,
    /// N × latency / L: Keap's latency with L requests in flight.
    pub latency_bound_s: f64,
    /// N / R: the request-rate limit.
    pub rate_bound_s: f64,
    pub ideal_s: f64,
    pub ratio_to_ideal: f64,
    /// The same DynamoDB requests, replayed at concurrency L without Keap; measured only when
    /// the run misses its target (to tell the emulator's share from the refresher's).
    pub emulator_alone_s: Option<f64>,
    /// max(ideal, emulator alone): the best this machine's emulator allows.
    pub bound_s: f64,
    pub ratio_to_bound: f64,
    pub requests: Measured,
    /// The function's summary.
    pub summary: Value,
}

pub async fn measure(
    emulator: &Emulator,
    connections: usize,
    settings: Settings,
) -> Result<(ThroughputRun, OperationCount), String> {
    let fixture = fixture_on(emulator).await?;
    seed_due(&fixture, connections).await?;
    fixture.sandbox.set_latency(
        Endpoint::Token,
        Duration::from_millis(settings.keap_latency_ms),
    );

    let mut env = emulator.process_env();
    let concurrency = settings.concurrency.to_string();
    let rate = settings.rate_per_sec.to_string();
    env.extend(fixture.env(&[
        ("KEAPALIVE_REFRESH_CONCURRENCY", &concurrency),
        ("KEAPALIVE_KEAP_RATE_PER_SEC", &rate),
    ]));
    let scope = AwsScope {
        table: fixture.table.clone(),
        secret_id: fixture.secret_id.clone(),
        // The refresher runs without a bus here: no lifecycle event to count.
        event_bus: None,
    };
    let refresher = Container::start(&binaries::locate(binaries::REFRESHER)?, &env).await?;
    fixture.sandbox.clear_requests();
    let before = AwsSnapshot::take(emulator, &scope).await;
    let (summary, wall) = refresher.invoke(events::scheduled(), RUN_DEADLINE).await?;
    let after = AwsSnapshot::take(emulator, &scope).await;
    refresher.stop().await;
    let refreshed = summary.get("refreshed").and_then(Value::as_u64);
    if refreshed != Some(connections as u64) {
        return Err(format!(
            "the refresher refreshed {refreshed:?} of {connections} due connections: {summary}"
        ));
    }
    let mut requests = Measured::between(&before, &after, &fixture.sandbox);
    // The request log of 10,000 token calls says nothing the count does not.
    requests.keap_requests.dedup();

    let n = connections as f64;
    let latency_bound = n * settings.keap_latency_ms as f64 / 1_000.0 / settings.concurrency as f64;
    let rate_bound = n / f64::from(settings.rate_per_sec);
    let ideal = latency_bound.max(rate_bound);
    let wall_s = wall.as_secs_f64();
    let emulator_alone_s = if wall_s / ideal > TARGET_THROUGHPUT_RATIO {
        eprintln!("    missed the target: timing the emulator alone on the same requests");
        let alone = replay_store_requests(&fixture, connections, settings.concurrency).await?;
        Some(alone.as_secs_f64())
    } else {
        None
    };
    let bound = ideal.max(emulator_alone_s.unwrap_or(0.0));
    let count = OperationCount {
        operation: format!("scheduled run, {connections} due"),
        measured_through: binaries::REFRESHER.to_owned(),
        samples: 1,
        measured: requests.clone(),
        floor: Floor {
            keap: connections as u64,
            // The `active` query's pages (and a last empty one), plus the
            // `needs_reauthorization` query's one.
            dynamodb_reads: connections.div_ceil(ITEMS_PER_SCAN_PAGE_AT_LEAST) as u64 + 2,
            // Lease, counted presentation, commit.
            dynamodb_writes: 3 * connections as u64,
            // One read per container per secret cache lifetime: a run longer than that may
            // read it again when the cache expires.
            secrets: 1 + (wall_s / SECRET_CACHE.as_secs_f64()) as u64,
            put_events: 0,
        },
        note: "per connection: 2 conditional writes + 1 Keap; the read is one status-index query per status (paged); \
               1 secret read per 5 min of run"
            .to_owned(),
    };
    Ok((
        ThroughputRun {
            connections,
            settings,
            wall_s,
            latency_bound_s: latency_bound,
            rate_bound_s: rate_bound,
            ideal_s: ideal,
            ratio_to_ideal: wall_s / ideal,
            emulator_alone_s,
            bound_s: bound,
            ratio_to_bound: wall_s / bound,
            requests,
            summary,
        },
        count,
    ))
}

/// A sandbox, a table and a client secret on `emulator` (not necessarily the shared one).
async fn fixture_on(emulator: &Emulator) -> Result<Fixture, String> {
    let sandbox = Sandbox::start()
        .await
        .map_err(|e| format!("the Keap sandbox did not start: {e}"))?;
    sandbox.register_client(CLIENT_ID, CLIENT_SECRET);
    let sdk = emulator.sdk_config();
    let table = create_table(&sdk).await;
    let secret_id = create_client_secret(&sdk, CLIENT_ID, CLIENT_SECRET).await;
    Ok(Fixture {
        sandbox,
        sdk,
        table,
        secret_id,
    })
}

/// `count` active OAuth connections due within a minute, each with its own Keap grant. One is
/// written by the token store; the rest are copies of its item (new key and pair) written in
/// batches, which is 25 times fewer requests than authorizing each.
async fn seed_due(fixture: &Fixture, count: usize) -> Result<(), String> {
    let due = now_epoch_secs() + 60;
    let template_id = "bench-00000";
    let grant = fixture.sandbox.issue_grant(CLIENT_ID, "bench00000");
    fixture
        .store()
        .authorize(
            &connection_id(template_id),
            &issued_tokens(&grant, Some(due)),
            true,
            &new_write_id(),
            now_epoch_secs(),
        )
        .await
        .map_err(|e| format!("seeding the template connection failed: {e}"))?;
    let template = get_item(&fixture.sdk, &fixture.table, &format!("conn#{template_id}"))
        .await
        .ok_or("the template connection was not stored")?;

    let items: Vec<HashMap<String, AttributeValue>> = (1..count)
        .map(|i| {
            let grant = fixture
                .sandbox
                .issue_grant(CLIENT_ID, &format!("bench{i:05}"));
            copy_with_grant(&template, &format!("bench-{i:05}"), &grant)
        })
        .collect();
    let client = aws_sdk_dynamodb::Client::new(&fixture.sdk);
    stream::iter(items.chunks(BATCH_WRITE_ITEMS))
        .map(|chunk| {
            let writes: Result<Vec<WriteRequest>, String> = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map_err(|e| format!("put request: {e}"))?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<_, String>>();
            let client = client.clone();
            let table = fixture.table.clone();
            async move {
                let output = client
                    .batch_write_item()
                    .request_items(table, writes?)
                    .send()
                    .await
                    .map_err(|e| format!("seeding batch failed: {e:?}"))?;
                if output.unprocessed_items().is_some_and(|u| !u.is_empty()) {
                    return Err("the emulator left seeding items unprocessed".to_owned());
                }
                Ok(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn copy_with_grant(
    template: &HashMap<String, AttributeValue>,
    id: &str,
    grant: &IssuedPair,
) -> HashMap<String, AttributeValue> {
    let mut item = template.clone();
    let text = |s: &str| AttributeValue::S(s.to_owned());
    item.insert("pk".to_owned(), text(&format!("conn#{id}")));
    item.insert("access_token".to_owned(), text(&grant.access_token));
    item.insert("refresh_token".to_owned(), text(&grant.refresh_token));
    if item.contains_key("keap_scope") {
        item.insert("keap_scope".to_owned(), text(&grant.scope));
    }
    if let (true, Some(app)) = (
        item.contains_key("keap_app"),
        keap_app_from_scope(&grant.scope),
    ) {
        item.insert("keap_app".to_owned(), text(&app));
    }
    item
}

/// The refresher's DynamoDB requests without Keap: on a fresh copy of the connections, one
/// scan, then a lease and a commit per connection, `concurrency` connections at a time.
async fn replay_store_requests(
    fixture: &Fixture,
    connections: usize,
    concurrency: usize,
) -> Result<Duration, String> {
    let replay = Fixture {
        sandbox: Sandbox::start()
            .await
            .map_err(|e| format!("the Keap sandbox did not start: {e}"))?,
        sdk: fixture.sdk.clone(),
        table: create_table(&fixture.sdk).await,
        secret_id: fixture.secret_id.clone(),
    };
    replay.sandbox.register_client(CLIENT_ID, CLIENT_SECRET);
    seed_due(&replay, connections).await?;
    let store = replay.store();
    let pair = IssuedPair {
        access_token: "replayed-access-token".to_owned(),
        refresh_token: "replayed-refresh-token".to_owned(),
        expires_in: 86_400,
        scope: "full|replay.infusionsoft.com".to_owned(),
    };
    let issued = issued_tokens(&pair, None);

    let started = Instant::now();
    let listed = store
        .list_connections()
        .await
        .map_err(|e| format!("replay scan failed: {e}"))?;
    stream::iter(listed.connections.iter())
        .map(|connection| {
            let (store, issued) = (&store, &issued);
            async move {
                let now = now_epoch_secs();
                let lease = store
                    .take_lease(
                        &connection.id,
                        &connection.version(),
                        "replay",
                        now,
                        now + 300,
                    )
                    .await
                    .map_err(|e| format!("replay lease failed: {e}"))?;
                if !matches!(lease, LeaseOutcome::Acquired { .. }) {
                    return Err(format!("replay lease not acquired: {lease:?}"));
                }
                let commit = store
                    .commit_refresh(
                        &connection.id,
                        &connection.version(),
                        &new_write_id(),
                        issued,
                        RotationCause::Expiry,
                        now,
                    )
                    .await
                    .map_err(|e| format!("replay commit failed: {e}"))?;
                if !matches!(commit, CommitOutcome::Committed { .. }) {
                    return Err(format!("replay commit did not land: {commit:?}"));
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let took = started.elapsed();
    if listed.connections.len() != connections {
        return Err(format!(
            "replay listed {} connections, seeded {connections}",
            listed.connections.len()
        ));
    }
    Ok(took)
}
