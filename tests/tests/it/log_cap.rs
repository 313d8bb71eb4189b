//! The log cap, through the real contact-upsert binary: at the default level nothing logs below
//! INFO; at TRACE (asked through either variable) keapalive logs at TRACE while every dependency
//! stays capped, and no token, client secret or AWS session token reaches the output.

use std::time::Duration;

use crate::support::upsert_binary;
use aws_sdk_dynamodb::types::AttributeValue;
use keapalive::clock::now_epoch_secs;
use keapalive_tests::aws::get_item;
use keapalive_tests::fixture::{CLIENT_SECRET, Fixture};
use serde_json::{Value, json};

const APP: &str = "logcap01";
const SESSION_TOKEN: &str = "keapalive-test-session-token-do-not-log";
const EMAIL: &str = "ada.logcap@buttonpush.example";

/// Runs one upsert that must refresh first (the token is due), so the output holds a token
/// exchange, DynamoDB writes carrying both pairs, and a Keap REST call. Returns the process
/// output and every credential that was in play.
async fn upsert_through_the_binary(level: Option<(&str, &str)>) -> (String, Vec<String>) {
    let fx = Fixture::new().await;
    let issued = fx
        .seed_connection("default", APP, Some(now_epoch_secs() + 60))
        .await;
    let mut extra = vec![("AWS_SESSION_TOKEN", SESSION_TOKEN)];
    extra.extend(level);
    let (runtime, mut function) = upsert_binary(&fx, &extra).await;
    let created = runtime
        .invoke(
            json!({"contact": {"email": EMAIL}}),
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| panic!("upsert failed: {e:?}\n{}", function.output()));
    assert_eq!(created["created"], true);
    // Let the runtime client log its last lines before the output is read.
    tokio::time::sleep(Duration::from_millis(200)).await;
    function.kill().await;

    let item = get_item(&fx.sdk, &fx.table, "conn#default")
        .await
        .expect("the connection item");
    assert_eq!(
        item.get("generation"),
        Some(&AttributeValue::N("2".into())),
        "the upsert refreshed the due pair first"
    );
    let mut secrets = vec![
        issued.access_token.clone(),
        issued.refresh_token.clone(),
        CLIENT_SECRET.to_owned(),
        SESSION_TOKEN.to_owned(),
        EMAIL.to_owned(),
    ];
    for attribute in ["access_token", "refresh_token"] {
        if let Some(AttributeValue::S(token)) = item.get(attribute) {
            secrets.push(token.clone());
        }
    }
    (function.output(), secrets)
}

/// `(level, target)` of every JSON log line.
fn lines(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| {
            Some((
                line["level"].as_str()?.to_owned(),
                line["target"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn below_info(level: &str) -> bool {
    matches!(level, "DEBUG" | "TRACE")
}

fn ours(target: &str) -> bool {
    target == "keapalive" || target.starts_with("keapalive::") || target == "contact_upsert"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_level_logs_nothing_below_info() {
    let (output, _) = upsert_through_the_binary(None).await;
    let lines = lines(&output);
    assert!(
        lines.iter().any(|(level, _)| level == "INFO"),
        "the upsert logs at INFO:\n{output}"
    );
    let verbose = lines.iter().filter(|(level, _)| below_info(level)).count();
    assert_eq!(
        verbose,
        0,
        "{verbose} of {} lines below INFO:\n{output}",
        lines.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_through_either_variable_leaks_no_credential() {
    for variable in ["AWS_LAMBDA_LOG_LEVEL", "RUST_LOG"] {
        let (output, secrets) = upsert_through_the_binary(Some((variable, "trace"))).await;
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "{variable}=trace: a credential or address reached the output:\n{output}"
            );
        }
        let lines = lines(&output);
        assert!(
            lines
                .iter()
                .any(|(level, target)| below_info(level) && ours(target)),
            "{variable}=trace: keapalive's own lines follow the level asked for:\n{output}"
        );
        let capped: Vec<_> = lines
            .iter()
            .filter(|(level, target)| below_info(level) && !ours(target))
            .collect();
        assert!(
            capped.is_empty(),
            "{variable}=trace: dependencies logged below INFO: {capped:?}"
        );
    }
}
