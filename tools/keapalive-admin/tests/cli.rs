//! The real `keapalive-admin` binary against the emulator: what it shows, that it never shows
//! a token, and that `remove` deletes only when confirmed.

use std::process::{Command, Output, Stdio};

use keapalive::clock::now_epoch_secs;
use keapalive::keap::{IssuedTokens, TokenPair};
use keapalive::token_store::{DynamoDbTokenStore, MarkGuard, new_write_id};
use keapalive_tests::aws::{create_table, get_item};
use keapalive_tests::emulator::Emulator;
use keapalive_tests::fixture::connection_id;
use secrecy::SecretString;
use serde_json::Value;

const ACCESS_TOKEN: &str = "admin-test-access-token-must-never-print";
const REFRESH_TOKEN: &str = "admin-test-refresh-token-must-never-print";
const KEY_SECRET: &str = "keapalive/test/keys/reports";

struct World {
    table: String,
    store: DynamoDbTokenStore,
}

/// Three connections: `default` (active, expires in ~23h), `eu` (needs re-authorization) and
/// `reports` (a service account key).
async fn world() -> World {
    let sdk = Emulator::shared().sdk_config();
    let table = create_table(&sdk).await;
    let store = DynamoDbTokenStore::new(aws_sdk_dynamodb::Client::new(&sdk), &table);
    let now = now_epoch_secs();
    for (id, app) in [
        ("default", "ab123.infusionsoft.com"),
        ("eu", "eu42.infusionsoft.com"),
    ] {
        let issued = IssuedTokens {
            pair: TokenPair {
                access_token: SecretString::from(ACCESS_TOKEN),
                refresh_token: SecretString::from(REFRESH_TOKEN),
                access_expires_at: now + 23 * 3600 + 15 * 60,
            },
            scope: Some(format!("full|{app}")),
            keap_app: Some(app.to_owned()),
        };
        store
            .authorize(&connection_id(id), &issued, true, &new_write_id(), now)
            .await
            .expect("authorize");
    }
    let eu = store
        .get(&connection_id("eu"))
        .await
        .expect("read")
        .expect("eu exists");
    store
        .mark_needs_reauthorization(
            &connection_id("eu"),
            &eu.version(),
            MarkGuard::GenerationOnly,
            "refresh token rejected (invalid_grant)",
            now,
        )
        .await
        .expect("mark");
    store
        .register_service_account_key(&connection_id("reports"), KEY_SECRET, None, now)
        .await
        .expect("register key");
    World { table, store }
}

fn admin(table: &str, args: &[&str]) -> Output {
    admin_with_env(args, &[("KEAPALIVE_TABLE", table)])
}

fn admin_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keapalive-admin"))
        .args(args)
        .env_clear()
        .envs(Emulator::shared().process_env())
        .envs(env.iter().copied())
        // Not a terminal: what a script, CI or `make` sees.
        .stdin(Stdio::null())
        .output()
        .expect("run keapalive-admin")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_token(output: &Output) {
    for stream in [&output.stdout, &output.stderr] {
        let printed = text(stream);
        assert!(
            !printed.contains(ACCESS_TOKEN) && !printed.contains(REFRESH_TOKEN),
            "a token was printed:\n{printed}"
        );
    }
}

#[tokio::test]
async fn status_lists_every_connection_without_tokens() {
    let world = world().await;
    let output = admin(&world.table, &["status"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_no_token(&output);
    let table = text(&output.stdout);
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no line for {id}:\n{table}"))
            .to_owned()
    };
    let default = line("default");
    assert!(
        default.contains("oauth") && default.contains("active"),
        "{table}"
    );
    assert!(default.contains("ab123.infusionsoft.com"), "{table}");
    // 23h 15m minus the seconds the test took.
    assert!(default.contains("in 23h 1"), "{table}");
    assert!(default.contains("never (authorized"), "{table}");
    let eu = line("eu");
    assert!(eu.contains("needs_reauthorization"), "{table}");
    assert!(
        eu.contains("refresh token rejected (invalid_grant)"),
        "{table}"
    );
    let reports = line("reports");
    assert!(
        reports.contains("service_account_key") && reports.contains("never (key)"),
        "{table}"
    );
    assert!(
        table.contains("1 connection(s) need re-authorization"),
        "{table}"
    );
}

#[tokio::test]
async fn status_json_is_for_machines() {
    let world = world().await;
    let output = admin(&world.table, &["status", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_no_token(&output);
    let value: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    let connections = value["connections"].as_array().expect("connections");
    let ids: Vec<&str> = connections
        .iter()
        .map(|c| c["connection_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["default", "eu", "reports"]);
    let default = &connections[0];
    assert_eq!(default["status"], "active");
    assert_eq!(default["generation"], 1);
    let expires_in = default["access_expires_in_secs"].as_i64().unwrap();
    assert!(
        (23 * 3600..=23 * 3600 + 15 * 60).contains(&expires_in),
        "{expires_in}"
    );
    assert_eq!(connections[1]["status"], "needs_reauthorization");
    assert_eq!(connections[2]["kind"], "service_account_key");
    assert!(connections[2]["access_expires_at"].is_null());
}

#[tokio::test]
async fn remove_without_a_terminal_needs_yes() {
    let world = world().await;
    let refused = admin(&world.table, &["remove", "eu"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("pass --yes"),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        world
            .store
            .get(&connection_id("eu"))
            .await
            .unwrap()
            .is_some(),
        "a refused remove must not delete"
    );

    let removed = admin(&world.table, &["remove", "eu", "--yes"]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert_no_token(&removed);
    assert!(text(&removed.stderr).contains("deleted connection `eu`"));
    let sdk = Emulator::shared().sdk_config();
    assert!(get_item(&sdk, &world.table, "conn#eu").await.is_none());
    // Only that one.
    assert!(get_item(&sdk, &world.table, "conn#default").await.is_some());
}

#[tokio::test]
async fn removing_a_key_connection_points_at_its_secret() {
    let world = world().await;
    let removed = admin(&world.table, &["remove", "reports", "--yes"]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert!(
        text(&removed.stderr).contains(KEY_SECRET),
        "{}",
        text(&removed.stderr)
    );
}

#[tokio::test]
async fn remove_of_an_unknown_connection_fails() {
    let world = world().await;
    let output = admin(&world.table, &["remove", "nope", "--yes"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("no connection `nope`"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn missing_table_names_the_variable() {
    let output = admin_with_env(&["status"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("KEAPALIVE_TABLE is not set"));
}

#[tokio::test]
async fn an_empty_table_says_how_to_start() {
    let table = create_table(&Emulator::shared().sdk_config()).await;
    let output = admin(&table, &["status"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("start_authorization"));
}

#[tokio::test]
async fn an_unreachable_table_fails_with_its_name() {
    let output = admin("keapalive-no-such-table", &["status"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot read table keapalive-no-such-table"),
        "{stderr}"
    );
}

/// Runs `keapalive-admin <args>` on a pseudo-terminal (util-linux `script`), typing `answer`.
fn admin_on_a_terminal(table: &str, args: &str, answer: &str) -> Option<Output> {
    let script_available = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !script_available {
        let reason = "util-linux `script` is not available to provide a terminal";
        if keapalive_tests::workspace::in_ci() {
            panic!(
                "{reason}: CI=true, so this test must run (apt-get install util-linux / bsdutils)"
            );
        }
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_keapalive-admin"));
    let mut child = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env_clear()
        .envs(Emulator::shared().process_env())
        .env("KEAPALIVE_TABLE", table)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // The question comes after a read of the table; typing ahead is what a person does too.
        stdin.write_all(answer.as_bytes()).unwrap();
    }
    Some(child.wait_with_output().expect("script output"))
}

#[tokio::test]
async fn remove_on_a_terminal_asks_and_honours_the_answer() {
    let world = world().await;
    let Some(declined) = admin_on_a_terminal(&world.table, "remove eu", "n\n") else {
        return;
    };
    let shown = text(&declined.stdout);
    assert_eq!(declined.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("Delete connection `eu`?") && shown.contains("[y/N]"),
        "{shown}"
    );
    assert!(shown.contains("not deleted"), "{shown}");
    assert!(
        world
            .store
            .get(&connection_id("eu"))
            .await
            .unwrap()
            .is_some()
    );

    let confirmed = admin_on_a_terminal(&world.table, "remove eu", "y\n").unwrap();
    let shown = text(&confirmed.stdout);
    assert_eq!(confirmed.status.code(), Some(0), "{shown}");
    assert!(shown.contains("deleted connection `eu`"), "{shown}");
    assert!(
        world
            .store
            .get(&connection_id("eu"))
            .await
            .unwrap()
            .is_none()
    );
}
