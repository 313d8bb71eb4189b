//! The `keap-sandbox` binary, driven through its `/_sandbox` control API.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Kills the child if a test assertion fails before the orderly shutdown.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn() -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keap-sandbox"))
        .args([
            "--port",
            "0",
            "--client-id",
            "demo-client",
            "--client-secret",
            "demo-secret",
            "--app",
            "demo",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("ready line");
    let url = line
        .trim_end()
        .strip_prefix("KEAP_SANDBOX_URL=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"));
    (Running(child), url)
}

#[tokio::test]
async fn binary_serves_the_sandbox_and_its_control_api() {
    let (mut running, base) = spawn();
    let client = reqwest::Client::new();
    let control = |path: &str| format!("{base}/_sandbox{path}");

    let pair: Value = client
        .post(control("/grants"))
        .json(&json!({"client_id": "demo-client", "app": "demo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pair["scope"], "full|demo.infusionsoft.com");
    let refresh_token = pair["refresh_token"].as_str().unwrap();

    let injected: Value = client
        .post(control("/faults"))
        .json(&json!({"endpoint": "token", "times": 1,
                      "kind": {"status": {"status": 429, "retry_after_secs": 2}}}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let fired_url = format!("{}?id={}", control("/faults/fired"), injected["id"]);
    let fired = || async {
        let answer: Value = client
            .get(&fired_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["fired"].as_u64().unwrap()
    };
    assert_eq!(fired().await, 0, "nothing has matched it yet");
    let refresh = || {
        client
            .post(format!("{base}/token"))
            .basic_auth("demo-client", Some("demo-secret"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
    };
    let throttled = refresh().await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "2");
    assert_eq!(
        fired().await,
        1,
        "the control API counts the fault's one answer"
    );
    let unknown = client
        .get(format!("{}?id=999999", control("/faults/fired")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(unknown, 404);
    let rotated: Value = refresh().await.unwrap().json().await.unwrap();
    let live: Value = client
        .get(control("/refresh-token?app=demo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["refresh_token"], rotated["refresh_token"]);

    client
        .post(control("/faults"))
        .json(&json!({"endpoint": "token", "kind": "drop_after_processing"}))
        .send()
        .await
        .unwrap();
    let dropped = client
        .post(format!("{base}/token"))
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rotated["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await;
    assert!(dropped.is_err());

    let access = rotated["access_token"].as_str().unwrap();
    let profile = || {
        client
            .get(format!("{base}/crm/rest/v1/account/profile"))
            .bearer_auth(access)
            .send()
    };
    assert_eq!(profile().await.unwrap().status(), 200);
    client
        .post(control("/expire-access-tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(profile().await.unwrap().status(), 401);

    let requests: Value = client
        .get(control("/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<u64> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [429, 200, 0, 200, 401],
        "control calls are not logged"
    );
    assert_eq!(requests[0]["auth"], "basic");
    assert_eq!(requests[0]["basic_client_id"], "demo-client");
    assert_eq!(requests[0]["grant_type"], "refresh_token");
    assert_eq!(requests[3]["app"], "demo");

    // SIGTERM ends it cleanly.
    let pid = running.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(exit) = running.0.try_wait().unwrap() {
            assert!(exit.success(), "{exit:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn binary_rejects_bad_arguments() {
    let output = Command::new(env!("CARGO_BIN_EXE_keap-sandbox"))
        .args(["--client-id", "only-the-id"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--client-secret"));
}
