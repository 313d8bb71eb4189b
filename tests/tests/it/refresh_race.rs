//! Many refreshers hitting one due connection at once: a refresh token is presented exactly
//! once per round (I1, I4), and the stored pair is always the newest Keap issued (I2, I3).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use keapalive::clock::now_epoch_secs;
use keapalive::deadline::Deadline;
use keapalive::refresh::RunError;
use keapalive::token_store::StoreError;
use keapalive_tests::emulator::{DynamoDbFault, Emulator};
use keapalive_tests::fixture::{Fixture, connection_id};
use keapalive_tests::logs::{assert_logs_never_contain, capture_logs};
use keapalive_tests::runtime_api::{RuntimeApi, binary_path, spawn_function};
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::Barrier;

const APP: &str = "race01";

/// Makes the connection due again without touching its generation or pair.
async fn make_due(fx: &Fixture, id: &str) {
    aws_sdk_dynamodb::Client::new(&fx.sdk)
        .update_item()
        .table_name(&fx.table)
        .key("pk", AttributeValue::S(format!("conn#{id}")))
        .update_expression("SET access_expires_at = :soon")
        .expression_attribute_values(
            ":soon",
            AttributeValue::N((now_epoch_secs() + 60).to_string()),
        )
        .send()
        .await
        .unwrap();
}

fn refresh_presentations(fx: &Fixture) -> (usize, usize) {
    let calls: Vec<_> = fx
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .collect();
    (
        calls.len(),
        calls.iter().filter(|r| r.status != 200).count(),
    )
}

async fn assert_final_state(fx: &Fixture, id: &str, generation: u64) {
    let connection = fx.store().get(&connection_id(id)).await.unwrap().unwrap();
    assert_eq!(connection.generation, generation);
    let stored = connection.tokens.unwrap();
    assert_eq!(
        Some(stored.refresh_token.expose_secret().to_owned()),
        fx.sandbox.current_refresh_token(APP),
        "the stored pair is the last one Keap issued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_race_never_presents_token_twice() {
    race_in_process(None).await;
}

/// The same race while DynamoDB applies a random tenth of this table's conditional writes and
/// loses their answer (a 500, so the SDK retries): each write recognises its own landing, so
/// nothing is orphaned and no lease is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_race_holds_when_a_tenth_of_writes_land_and_lose_their_answer() {
    race_in_process(Some(0.1)).await;
}

async fn race_in_process(lost_answer_probability: Option<f64>) {
    let _heavy = crate::support::one_heavy_test_at_a_time().await;
    capture_logs();
    const REFRESHERS: usize = 32;
    const ROUNDS: u64 = 100;
    let fx = Fixture::new().await;
    let seeded = fx.seed_connection("default", APP, None).await;
    let mut fault = None;
    if let Some(probability) = lost_answer_probability {
        fault = Some(
            Emulator::shared()
                .inject_dynamodb_fault(
                    DynamoDbFault::applied_then_lost("UpdateItem")
                        .body_contains(&fx.table)
                        .body_contains("ConditionExpression")
                        .probability(probability)
                        .times(1_000_000),
                )
                .await,
        );
    }
    // Separate clients per refresher: separate HTTP pools and SDK clients, like separate
    // Lambda containers.
    let refreshers: Vec<_> = (0..REFRESHERS)
        .map(|_| Arc::new(fx.clients(&[]).refresher()))
        .collect();
    let id = connection_id("default");

    let mut total_refreshed = 0;
    for round in 1..=ROUNDS {
        make_due(&fx, "default").await;
        let barrier = Arc::new(Barrier::new(REFRESHERS));
        let tasks: Vec<_> = refreshers
            .iter()
            .map(|refresher| {
                let (refresher, barrier, id) = (refresher.clone(), barrier.clone(), id.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    refresher
                        .run_one(&id, Deadline::after(Duration::from_secs(60)), false)
                        .await
                })
            })
            .collect();
        let mut refreshed = 0;
        let mut store_unavailable = 0;
        for task in tasks {
            let summary = match task.await.unwrap() {
                Ok(run) => run.summary,
                // Every attempt of one write lost its answer (p = 10⁻⁵ with five attempts, some
                // 3,500 writes a run): that refresher presents nothing and says so.
                Err(RunError::Store(StoreError::Unavailable { .. }))
                    if lost_answer_probability.is_some() =>
                {
                    store_unavailable += 1;
                    continue;
                }
                Err(e) => panic!("round {round}: {e}"),
            };
            assert_eq!(summary.failed_transient, 0, "round {round}: {summary:?}");
            assert_eq!(summary.newly_needs_reauthorization, 0, "round {round}");
            assert_eq!(summary.orphaned, 0, "round {round}: {summary:?}");
            assert_eq!(summary.unknown, 0, "round {round}: {summary:?}");
            refreshed += summary.refreshed;
        }
        if store_unavailable == 0 {
            assert_eq!(
                refreshed, 1,
                "round {round}: exactly one refresher refreshed"
            );
        } else {
            assert!(refreshed <= 1, "round {round}: {refreshed} refreshed");
        }
        total_refreshed += refreshed;
        assert_eq!(
            refresh_presentations(&fx),
            (total_refreshed, 0),
            "round {round}: one Keap refresh per refresh, no invalid_grant"
        );
        let connection = fx.store().get(&id).await.unwrap().unwrap();
        assert!(
            connection.lease.is_none(),
            "round {round}: no lease left behind"
        );
        assert!(
            connection.orphan_generation.is_none(),
            "round {round}: no orphan_pair"
        );
    }
    assert!(
        total_refreshed as u64 >= ROUNDS - 2,
        "{total_refreshed} of {ROUNDS} rounds refreshed"
    );
    assert_final_state(&fx, "default", total_refreshed as u64 + 1).await;
    if let Some(fault) = fault {
        fault.assert_fired(1).await;
    }
    assert_logs_never_contain(&[&seeded.refresh_token, &seeded.access_token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_race_across_processes() {
    let _heavy = crate::support::one_heavy_test_at_a_time().await;
    capture_logs();
    const PROCESSES: usize = 6;
    const ROUNDS: u64 = 10;
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let mut env: Vec<(String, String)> = Emulator::shared().process_env();
    env.extend(fx.env(&[]));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let mut functions = Vec::new();
    for _ in 0..PROCESSES {
        let runtime = RuntimeApi::start_named("token-refresher").await;
        let process = spawn_function(&binary_path("token-refresher"), &env_refs, &runtime);
        functions.push((runtime, process));
    }

    for round in 1..=ROUNDS {
        make_due(&fx, "default").await;
        let invocations = functions.iter().map(|(runtime, _)| {
            runtime.invoke(json!({"connection_id": "default"}), Duration::from_secs(60))
        });
        let results = futures_util::future::join_all(invocations).await;
        let mut refreshed = 0;
        for result in results {
            let summary = result.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            refreshed += summary["refreshed"].as_u64().unwrap();
            assert_eq!(summary["failed_transient"], 0, "round {round}: {summary}");
        }
        assert_eq!(refreshed, 1, "round {round}: exactly one process refreshed");
        assert_eq!(
            refresh_presentations(&fx),
            (round as usize, 0),
            "round {round}"
        );
    }
    assert_final_state(&fx, "default", ROUNDS + 1).await;

    // A scheduled EventBridge event goes through the same binary.
    make_due(&fx, "default").await;
    let scheduled = json!({
        "version": "0", "id": "c0ffee", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-11-23T10:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/keapalive-refresh"], "detail": {}
    });
    let summary = functions[0]
        .0
        .invoke(scheduled, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(summary["due"], 1);
    assert_eq!(summary["refreshed"], 1);
    for key in [
        "skipped_locked",
        "failed_transient",
        "needs_reauthorization",
        "static",
    ] {
        assert!(summary.get(key).is_some(), "summary has {key}: {summary}");
    }
    // Every token request is counted under the refresher's name: the quota is the client id's.
    // (The line is printed before the answer; its copy from the pipe may trail it a little.)
    let presented = refresh_presentations(&fx).0;
    let mut counted = 0;
    for _ in 0..50 {
        let output: String = functions.iter().map(|(_, p)| p.output()).collect();
        counted = output
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["Function"] == "token-refresher")
            .filter_map(|line| line["KeapRequests"].as_f64())
            .sum::<f64>() as usize;
        if counted >= presented {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, presented, "token requests counted in KeapRequests");
    let output: String = functions.iter().map(|(_, p)| p.output()).collect();
    assert!(
        output.contains("\"CloudWatchMetrics\""),
        "the binary prints EMF metric lines"
    );
    let bad = functions[1]
        .0
        .invoke(json!({"conection_id": "typo"}), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(bad.error_type, "ValidationError");
    for (_, mut process) in functions {
        process.kill().await;
    }
}
