//! The harness itself is real: the emulator serializes conditional writes like DynamoDB, its
//! faults reach the SDK as typed errors, and the Runtime API host drives a real
//! `lambda_runtime` binary.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use keapalive_tests::aws::{
    create_client_secret, create_queue, create_table, drain_queue, get_item, scan_all,
};
use keapalive_tests::emulator::{DynamoDbFault, Emulator};
use keapalive_tests::logs;
use keapalive_tests::runtime_api::{RuntimeApi, binary_path, spawn_function};
use serde_json::{Value, json};

const CONTENDERS: usize = 32;
const ROUNDS: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_put_from_many_clients_succeeds_exactly_once() {
    let emulator = Emulator::shared();
    let table = create_table(&emulator.sdk_config()).await;

    let mut contenders = Vec::new();
    for contender in 0..CONTENDERS {
        let table = table.clone();
        // A client each: separate connection pools, so requests really arrive concurrently.
        let client = aws_sdk_dynamodb::Client::new(&emulator.sdk_config());
        contenders.push(tokio::spawn(async move {
            client
                .put_item()
                .table_name(&table)
                .item("pk", AttributeValue::S("conn#race".into()))
                .item(
                    "lease_owner",
                    AttributeValue::S(format!("contender-{contender}")),
                )
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await
        }));
    }

    let mut winners = 0;
    let mut conditional_failures = 0;
    for contender in contenders {
        match contender.await.expect("task ran") {
            Ok(_) => winners += 1,
            Err(error) => {
                let error = error.into_service_error();
                assert!(
                    error.is_conditional_check_failed_exception(),
                    "unexpected error: {error:?}"
                );
                conditional_failures += 1;
            }
        }
    }
    assert_eq!(winners, 1, "exactly one conditional put may win");
    assert_eq!(conditional_failures, CONTENDERS - 1);
    assert_eq!(scan_all(&emulator.sdk_config(), &table).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_race_grants_one_lease_per_round() {
    // Unserialized moto grants two leases in some round of 20 most runs; DynamoDB never does.
    let emulator = Emulator::shared();
    let sdk = emulator.sdk_config();
    let table = create_table(&sdk).await;
    let seed = aws_sdk_dynamodb::Client::new(&sdk);
    seed.put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("conn#default".into()))
        .item("generation", AttributeValue::N("1".into()))
        .item("status", AttributeValue::S("active".into()))
        .send()
        .await
        .unwrap();

    for round in 0..ROUNDS {
        let mut contenders = Vec::new();
        for contender in 0..CONTENDERS {
            let table = table.clone();
            let client = aws_sdk_dynamodb::Client::new(&sdk);
            contenders.push(tokio::spawn(async move {
                client
                    .update_item()
                    .table_name(&table)
                    .key("pk", AttributeValue::S("conn#default".into()))
                    .update_expression("SET lease_owner = :me, lease_until = :until")
                    .condition_expression(
                        "generation = :g AND #s = :active AND \
                         (attribute_not_exists(lease_until) OR lease_until < :now)",
                    )
                    .expression_attribute_names("#s", "status")
                    .expression_attribute_values(":me", AttributeValue::S(format!("c{contender}")))
                    .expression_attribute_values(
                        ":until",
                        AttributeValue::N(format!("{}", 1000 + round)),
                    )
                    .expression_attribute_values(
                        ":now",
                        AttributeValue::N(format!("{}", 1000 + round)),
                    )
                    .expression_attribute_values(":g", AttributeValue::N("1".into()))
                    .expression_attribute_values(":active", AttributeValue::S("active".into()))
                    .send()
                    .await
                    .is_ok()
            }));
        }
        let mut winners = 0;
        for contender in contenders {
            if contender.await.unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}: exactly one lease");
    }
}

#[tokio::test]
async fn table_matches_the_data_model() {
    let emulator = Emulator::shared();
    let sdk = emulator.sdk_config();
    let table = create_table(&sdk).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);

    let description = client
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let keys = description.key_schema();
    assert_eq!(keys.len(), 1, "partition key only, no sort key");
    assert_eq!(keys[0].attribute_name(), "pk");
    assert_eq!(
        description
            .billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|m| m.as_str()),
        Some("PAY_PER_REQUEST")
    );
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .unwrap();
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
    assert_eq!(
        ttl.time_to_live_status().map(|s| s.as_str()),
        Some("ENABLED")
    );

    // Tables are separate: a fresh one starts empty.
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("conn#default".into()))
        .send()
        .await
        .unwrap();
    assert!(get_item(&sdk, &table, "conn#default").await.is_some());
    assert!(scan_all(&sdk, &create_table(&sdk).await).await.is_empty());
}

#[tokio::test]
async fn injected_fault_reaches_the_sdk_as_a_typed_error_and_is_counted() {
    let emulator = Emulator::shared();
    let sdk = emulator.sdk_config();
    let table = create_table(&sdk).await;
    // One attempt: the SDK would otherwise retry the throttling error and succeed.
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build(),
    );
    let update = || {
        client
            .update_item()
            .table_name(&table)
            .key("pk", AttributeValue::S("conn#default".into()))
            .update_expression("SET generation = :g")
            .expression_attribute_values(":g", AttributeValue::N("1".into()))
            .send()
    };

    let fault = emulator
        .inject_dynamodb_fault(
            DynamoDbFault::new("UpdateItem", "ProvisionedThroughputExceededException")
                .body_contains(&table),
        )
        .await;
    let error = update()
        .await
        .expect_err("the fault answers")
        .into_service_error();
    fault.assert_fired(1).await;
    assert!(
        error.is_provisioned_throughput_exceeded_exception(),
        "unexpected error: {error:?}"
    );

    update().await.expect("the fault was used up");
    let item = get_item(&sdk, &table, "conn#default").await.unwrap();
    assert_eq!(item.get("generation"), Some(&AttributeValue::N("1".into())));

    let counts = emulator.request_counts_for(&table).await;
    assert_eq!(counts.get("DynamoDB_20120810.UpdateItem"), Some(&2));
    assert_eq!(counts.get("DynamoDB_20120810.GetItem"), Some(&1));
    assert_eq!(counts.get("DynamoDB_20120810.CreateTable"), Some(&1));
    assert!(
        emulator.request_counts().await["DynamoDB_20120810.UpdateItem"] >= 2,
        "global counts include this test's requests"
    );
}

#[tokio::test]
async fn default_retries_ride_out_a_short_throttle_burst() {
    let emulator = Emulator::shared();
    let sdk = emulator.sdk_config();
    let table = create_table(&sdk).await;
    let fault = emulator
        .inject_dynamodb_fault(
            DynamoDbFault::new("GetItem", "ProvisionedThroughputExceededException")
                .times(2)
                .body_contains(&table),
        )
        .await;

    assert!(get_item(&sdk, &table, "conn#absent").await.is_none());
    fault.assert_fired(2).await;
    let counts = emulator.request_counts_for(&table).await;
    assert_eq!(
        counts.get("DynamoDB_20120810.GetItem"),
        Some(&3),
        "2 faults + 1 success"
    );
}

#[tokio::test]
async fn server_errors_can_be_injected_and_cleared() {
    let emulator = Emulator::shared();
    let sdk = emulator.sdk_config();
    let table = create_table(&sdk).await;
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let fault = emulator
        .inject_dynamodb_fault(
            DynamoDbFault::new("GetItem", "InternalServerError")
                .status(500)
                .times(100)
                .body_contains(&table),
        )
        .await;
    let get = || {
        client
            .get_item()
            .table_name(&table)
            .key("pk", AttributeValue::S("conn#x".into()))
            .send()
    };
    let error = get().await.expect_err("fault").into_service_error();
    fault.assert_fired(1).await;
    assert!(
        error.is_internal_server_error(),
        "unexpected error: {error:?}"
    );

    // Every test of this binary shares the emulator: clear only this table's faults, never
    // those a test running in parallel still relies on.
    emulator.clear_faults_for(&table).await;
    get().await.expect("faults cleared");
}

#[tokio::test]
async fn client_secret_round_trips_through_secrets_manager() {
    let emulator = Emulator::shared();
    let sdk = emulator.sdk_config();
    let id = create_client_secret(&sdk, "client-abc", "s3cr3t-value").await;
    let stored = aws_sdk_secretsmanager::Client::new(&sdk)
        .get_secret_value()
        .secret_id(&id)
        .send()
        .await
        .unwrap()
        .secret_string
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        stored,
        json!({"client_id": "client-abc", "client_secret": "s3cr3t-value"})
    );
    let counts = emulator.request_counts_for(&id).await;
    assert_eq!(counts.get("secretsmanager.GetSecretValue"), Some(&1));
}

#[tokio::test]
async fn queue_receives_and_drains_messages() {
    let emulator = Emulator::shared();
    let sdk = emulator.sdk_config();
    let queue = create_queue(&sdk).await;
    aws_sdk_sqs::Client::new(&sdk)
        .send_message()
        .queue_url(&queue)
        .message_body(r#"{"connection_id":"default"}"#)
        .message_attributes(
            "error_type",
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value("ValidationError")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let messages = drain_queue(&sdk, &queue).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body(), Some(r#"{"connection_id":"default"}"#));
    let attribute = &messages[0].message_attributes().unwrap()["error_type"];
    assert_eq!(attribute.string_value(), Some("ValidationError"));
    assert!(drain_queue(&sdk, &queue).await.is_empty(), "drained");
}

#[tokio::test]
async fn log_capture_sees_events_and_redaction_check_catches_leaks() {
    logs::capture_logs();
    let marker = format!("marker-{}", std::process::id());
    let mark = logs::log_mark();
    tracing::info!(marker = %marker, "harness log capture check");
    let since = logs::captured_logs_since(mark);
    let line = since
        .lines()
        .find(|l| l.contains(&marker))
        .expect("event captured");
    let parsed: Value = serde_json::from_str(line).expect("JSON lines");
    assert_eq!(parsed["level"], "INFO");

    let leak = std::panic::catch_unwind(|| logs::assert_logs_never_contain(&[&marker]));
    assert!(leak.is_err(), "a logged value must be reported");
    logs::assert_logs_never_contain(&["value-that-was-never-logged"]);
}

/// Puts an item holding `token` with the SDK and reads it back while a subscriber of this thread only, holding
/// every dependency at `dependencies` (keapalive's own cap, `telemetry::dependency_cap`),
/// records the logs; returns them. The capture's global filter cannot be used: it holds the SDK
/// at INFO, below any level that could carry a body.
async fn sdk_logs_of_a_put_item(
    dependencies: tracing::level_filters::LevelFilter,
    token: &str,
) -> String {
    use tracing_subscriber::layer::SubscriberExt;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let writer = {
        let lines = lines.clone();
        move || SharedLines(lines.clone())
    };
    let subscriber = tracing_subscriber::registry()
        .with(keapalive::telemetry::dependency_cap(dependencies))
        .with(tracing_subscriber::fmt::layer().json().with_writer(writer));
    let _scope = tracing::subscriber::set_default(subscriber);
    let emulator = Emulator::shared();
    let sdk = emulator.sdk_config();
    let table = create_table(&sdk).await;
    aws_sdk_dynamodb::Client::new(&sdk)
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("conn#default".into()))
        .item("access_token", AttributeValue::S(token.to_owned()))
        .send()
        .await
        .unwrap();
    // And read back: the answer carries the item, as a connection read does.
    aws_sdk_dynamodb::Client::new(&sdk)
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("conn#default".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    String::from_utf8_lossy(&lines.lock().unwrap()).into_owned()
}

struct SharedLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedLines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: the scoped subscriber sees every task the SDK and hyper spawn.
#[tokio::test]
async fn sdk_debug_logs_do_not_carry_item_values() {
    let token = format!("tok-{}-not-for-logs", std::process::id());
    // DEBUG is the most a deployment lets a dependency log (KEAPALIVE_DEPENDENCY_LOG_LEVEL).
    let debug = sdk_logs_of_a_put_item(tracing::level_filters::LevelFilter::DEBUG, &token).await;
    assert!(
        debug.contains("aws_smithy_runtime"),
        "the SDK logged nothing at DEBUG: the check would see nothing"
    );
    assert!(
        !debug.contains(&token),
        "the SDK logs an item value at DEBUG: every log assertion on our code would fail for the SDK's reason"
    );
    // The same capture at TRACE (refused in a deployment) does see the body: this check can fail.
    let trace = sdk_logs_of_a_put_item(tracing::level_filters::LevelFilter::TRACE, &token).await;
    assert!(
        trace.contains(&token),
        "at TRACE the SDK is expected to log the item it read; if it no longer does, this test \
         cannot tell a leak from silence"
    );
}

/// A function's last words reach the capture before `kill` returns: a process tree whose last
/// output arrives after the kill (a background writer holds the pipes) is read to the end.
#[tokio::test]
async fn kill_waits_until_the_output_is_copied() {
    logs::capture_logs();
    let dir = std::env::temp_dir().join(format!("keapalive-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("late-writer");
    std::fs::write(
        &script,
        "#!/bin/sh\n(sleep 0.5; echo \"last words $MARK\") &\necho started\nexec sleep 60\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mark = format!("mark-{}-{}", std::process::id(), line!());
    let runtime = RuntimeApi::start().await;
    let mut process = spawn_function(&script, &[("MARK", &mark)], &runtime);
    while !process.output().contains("started") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    process.kill().await;

    assert!(
        process.output().contains(&format!("last words {mark}")),
        "kill returned before the output was copied: {:?}",
        process.output()
    );
    assert!(logs::captured_logs().contains(&format!("last words {mark}")));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn runtime_api_drives_a_real_lambda_runtime_binary() {
    logs::capture_logs();
    let binary = binary_path("echo-function");
    let runtime = RuntimeApi::start_named("echo-function").await;
    let process = spawn_function(&binary, &[], &runtime);

    let cold_start = runtime
        .wait_until_ready(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("function never polled; output:\n{}", process.output()));
    assert!(cold_start > Duration::ZERO);
    let ready_at = runtime.first_next_at().expect("polled");

    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let first = runtime
        .invoke(json!({"hello": "world"}), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(first["echo"], json!({"hello": "world"}));
    assert_eq!(first["function_name"], "echo-function");
    assert_eq!(first["memory_mb"], 128);
    assert_eq!(
        first["invoked_function_arn"],
        "arn:aws:lambda:us-east-1:123456789012:function:echo-function"
    );
    assert!(first["trace_id"].as_str().unwrap().starts_with("Root=1-"));
    let deadline_ms = first["deadline_ms"].as_u64().unwrap() as u128;
    let expected = before.as_millis() + 10_000;
    assert!(
        deadline_ms.abs_diff(expected) < 2_000,
        "deadline {deadline_ms} vs {expected}"
    );

    let failed = runtime
        .invoke(
            json!({"fail": {"error_type": "ValidationError", "error_message": "email: missing"}}),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert_eq!(failed.error_type, "ValidationError");
    assert_eq!(failed.error_message, "email: missing");
    assert_eq!(
        failed.function_error_type_header.as_deref(),
        Some("unhandled")
    );

    let third = runtime
        .invoke(json!([1, 2, 3]), Duration::from_secs(10))
        .await
        .unwrap();
    assert_ne!(third["request_id"], first["request_id"]);
    assert_eq!(third["echo"], json!([1, 2, 3]));
    assert!(
        runtime.next_requests() >= 3,
        "one /next per invocation, plus the waiting one"
    );
    assert_eq!(
        runtime.first_next_at(),
        Some(ready_at),
        "cold start is the first poll only"
    );
    assert!(runtime.init_error().is_none());
    drop(process);
}

#[tokio::test]
async fn invoke_times_out_when_no_function_answers() {
    let runtime = RuntimeApi::start().await;
    let started = std::time::Instant::now();
    let error = runtime
        .invoke(json!({}), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(error.error_type, "Harness.Timeout");
    assert!(started.elapsed() >= Duration::from_millis(100));
}
