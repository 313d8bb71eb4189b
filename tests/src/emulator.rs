//! One serialized moto server per test process (see `tests/emulator/moto_serialized.py`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use serde::Serialize;

use crate::workspace;

/// Points every test at an emulator that is already running instead of starting one.
pub const ENDPOINT_ENV: &str = "KEAPALIVE_TEST_AWS_ENDPOINT";
/// Overrides the Python interpreter that runs moto (the Makefile sets it when `VENV` moves).
pub const PYTHON_ENV: &str = "KEAPALIVE_TEST_PYTHON";

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY_ID: &str = "keapalive-test";
pub const SECRET_ACCESS_KEY: &str = "keapalive-test";

// moto imports every backend on start; a loaded 2-core machine can take a while.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Emulator {
    endpoint_url: String,
    http: reqwest::Client,
    _process: Option<EmulatorProcess>,
}

/// The shared one is never dropped (it lives in a static): when the test process exits, for any
/// reason, the OS closes `stdin` and moto, started with `--exit-on-stdin-eof`, exits too. An
/// unserialized one closes `stdin` (and so stops moto) when dropped.
struct EmulatorProcess {
    _child: Child,
    _stdin: ChildStdin,
}

/// A DynamoDB error the emulator returns instead of calling moto.
#[derive(Debug, Clone, Serialize)]
pub struct DynamoDbFault {
    target: String,
    error_type: String,
    status: u16,
    times: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    body_contains: Vec<String>,
    mode: FaultMode,
    hang_secs: f64,
    probability: f64,
}

/// What the emulator does to a matching request (docs/design.md, "The fault model").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    /// Answer the error; nothing applied.
    Error,
    /// Apply the request, then answer the error: a write that landed and lost its answer.
    ApplyThenError,
    /// Apply the request, then hold the answer for `hang_secs`.
    ApplyThenHang,
    /// Hold the request for `hang_secs`, then answer the error; nothing applied.
    Hang,
    /// EventBridge `PutEvents` only: answer 200 with every entry failed (`FailedEntryCount` > 0,
    /// each entry's `ErrorCode` the fault's error type); nothing published.
    FailedEntries,
}

impl DynamoDbFault {
    /// `operation` like `"UpdateItem"`, `error_type` like
    /// `"ProvisionedThroughputExceededException"`; answers once with status 400.
    pub fn new(operation: &str, error_type: &str) -> Self {
        Self {
            target: format!("DynamoDB_20120810.{operation}"),
            error_type: error_type.to_owned(),
            status: 400,
            times: 1,
            body_contains: Vec::new(),
            mode: FaultMode::Error,
            hang_secs: 0.0,
            probability: 1.0,
        }
    }

    /// An EventBridge fault: `PutEvents` answered with `error_type` (status 500 by default, so the
    /// SDK retries it; `times` counts every attempt), nothing published. Scope it with
    /// [`DynamoDbFault::body_contains`] (the bus name): tests share one emulator.
    pub fn put_events(error_type: &str) -> Self {
        Self {
            target: "AWSEvents.PutEvents".to_owned(),
            ..Self::new("PutEvents", error_type).status(500)
        }
    }

    /// `PutEvents` answered 200 with every entry refused (`FailedEntryCount` > 0).
    pub fn put_events_entries_failed() -> Self {
        Self::put_events("InternalFailure")
            .status(200)
            .mode(FaultMode::FailedEntries)
    }

    /// A write that DynamoDB applied and whose answer was lost: a 500, so the SDK retries it.
    pub fn applied_then_lost(operation: &str) -> Self {
        Self::new(operation, "InternalServerError")
            .status(500)
            .mode(FaultMode::ApplyThenError)
    }

    pub fn mode(mut self, mode: FaultMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn hang(mut self, hang: Duration) -> Self {
        self.hang_secs = hang.as_secs_f64();
        self
    }

    /// Picks each matching request with this probability (`times` counts picked ones only).
    pub fn probability(mut self, probability: f64) -> Self {
        self.probability = probability;
        self
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    /// Only requests whose body contains `needle`; called again, every needle must occur.
    /// Pass the table name: tests share one emulator, so an unscoped fault can hit a test
    /// running in parallel.
    pub fn body_contains(mut self, needle: &str) -> Self {
        self.body_contains.push(needle.to_owned());
        self
    }
}

impl Emulator {
    /// The emulator of this test process, started on first use.
    pub fn shared() -> &'static Emulator {
        static SHARED: OnceLock<Emulator> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var(ENDPOINT_ENV) {
            Ok(endpoint) if !endpoint.is_empty() => Emulator::external(endpoint),
            _ => Emulator::start(),
        })
    }

    fn external(endpoint_url: String) -> Self {
        Self {
            endpoint_url: endpoint_url.trim_end_matches('/').to_owned(),
            http: control_client(),
            _process: None,
        }
    }

    fn start() -> Self {
        Self::spawn(Serialization::Serialized)
    }

    /// A new moto process of its own that handles requests concurrently: several times the
    /// throughput of [`Emulator::shared`], and wrong under conditional-write races (docs/design.md,
    /// "Testing notes"). For benchmarks with no race to get wrong; the process exits when the
    /// returned value is dropped.
    pub fn start_unserialized() -> Self {
        Self::spawn(Serialization::Concurrent)
    }

    fn spawn(serialization: Serialization) -> Self {
        let root = workspace::root();
        let python = python_path(&root);
        if !python.exists() {
            panic!(
                "moto's Python ({}) is missing: run `make test` (it creates .venv with moto), \
                 or set {ENDPOINT_ENV} to a running emulator",
                python.display()
            );
        }
        let script = root.join("tests/emulator/moto_serialized.py");
        let log_path = emulator_log_path(&root, serialization);
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));

        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", "0", "--exit-on-stdin-eof"])
            .args(match serialization {
                Serialization::Serialized => &[][..],
                Serialization::Concurrent => &["--no-serialize"][..],
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");

        let (port_tx, port_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|line| line.strip_prefix("MOTO_PORT=").map(str::to_owned));
            let _ = port_tx.send(port);
            // Keep draining so moto never blocks on a full stdout pipe.
            for _ in lines {}
        });

        let port = match port_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(port)) => port,
            outcome => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!(
                    "moto did not report its port ({}); log {}:\n{log}",
                    if outcome.is_err() {
                        "timed out"
                    } else {
                        "exited"
                    },
                    log_path.display()
                );
            }
        };

        Self {
            endpoint_url: format!("http://127.0.0.1:{port}"),
            http: control_client(),
            _process: Some(EmulatorProcess {
                _child: child,
                _stdin: stdin,
            }),
        }
    }

    pub fn endpoint_url(&self) -> &str {
        &self.endpoint_url
    }

    /// Region, dummy static credentials and the emulator's endpoint; nothing read from the
    /// environment or profile files, so a developer's real AWS setup is never used.
    pub fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(&self.endpoint_url)
    }

    /// Environment for a child process (a function binary, a tool) that talks to this emulator.
    pub fn process_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint_url.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Injects `fault`; the returned handle tells how many requests it answered, so a fault
    /// test can assert that its fault fired (a fault that matches nothing proves nothing).
    pub async fn inject_dynamodb_fault(&self, fault: DynamoDbFault) -> InjectedFault {
        #[derive(serde::Deserialize)]
        struct Injected {
            id: u64,
        }
        let injected: Injected = self
            .control(self.http.post(self.control_url("faults")).json(&fault))
            .await
            .json()
            .await
            .expect("the emulator answers an injected fault's id");
        InjectedFault {
            id: injected.id,
            fired_url: self.control_url("faults/fired"),
            http: self.http.clone(),
        }
    }

    /// Clears every fault, including those of tests running in parallel.
    pub async fn clear_faults(&self) {
        self.control(self.http.delete(self.control_url("faults")))
            .await;
    }

    /// Clears only the faults injected with [`DynamoDbFault::body_contains`]`(needle)` (a table
    /// name): what one test may clear while others run against the same emulator.
    pub async fn clear_faults_for(&self, needle: &str) {
        let url =
            url::Url::parse_with_params(&self.control_url("faults"), [("body_contains", needle)])
                .expect("control URL");
        self.control(self.http.delete(url)).await;
    }

    /// Requests per operation (`"DynamoDB_20120810.GetItem"`, `"secretsmanager.GetSecretValue"`)
    /// since the emulator started or [`Emulator::reset_request_counts`], from all tests.
    pub async fn request_counts(&self) -> HashMap<String, u64> {
        self.control(self.http.get(self.control_url("requests")))
            .await
            .json()
            .await
            .expect("request counts are JSON")
    }

    /// Like [`Emulator::request_counts`], only requests naming `resource` (a table name, secret
    /// id or queue URL): unaffected by other tests running in parallel.
    pub async fn request_counts_for(&self, resource: &str) -> HashMap<String, u64> {
        let url =
            url::Url::parse_with_params(&self.control_url("requests"), [("resource", resource)])
                .expect("control URL");
        self.control(self.http.get(url))
            .await
            .json()
            .await
            .expect("request counts are JSON")
    }

    /// Every request since the emulator started (or [`Emulator::reset_request_counts`]), in
    /// order, as IAM would see it: the caller (the access key id that signed it), action,
    /// resources and condition-key values (`tests/emulator/moto_serialized.py`).
    pub async fn request_log(&self) -> Vec<serde_json::Value> {
        self.control(self.http.get(self.control_url("requests/log")))
            .await
            .json()
            .await
            .expect("the request log is JSON")
    }

    pub async fn reset_request_counts(&self) {
        self.control(self.http.delete(self.control_url("requests")))
            .await;
    }

    fn control_url(&self, path: &str) -> String {
        format!("{}/_keapalive/{path}", self.endpoint_url)
    }

    async fn control(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("emulator control request failed: {e}"));
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            panic!("emulator control request answered {status}: {body}");
        }
        response
    }
}

/// A fault the emulator holds (or held): how often it fired outlives the fault itself.
#[derive(Debug, Clone)]
pub struct InjectedFault {
    id: u64,
    fired_url: String,
    http: reqwest::Client,
}

impl InjectedFault {
    /// Requests this fault answered so far.
    pub async fn fired(&self) -> u64 {
        #[derive(serde::Deserialize)]
        struct Fired {
            fired: u64,
        }
        let url = url::Url::parse_with_params(&self.fired_url, [("id", self.id.to_string())])
            .expect("control URL");
        let response = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("emulator control request failed: {e}"));
        assert!(
            response.status().is_success(),
            "emulator control request answered {}",
            response.status()
        );
        let fired: Fired = response.json().await.expect("fired count is JSON");
        fired.fired
    }

    /// Panics unless this fault answered at least `at_least` requests: a fault test whose fault
    /// never matched would otherwise pass without testing anything.
    pub async fn assert_fired(&self, at_least: u64) {
        let fired = self.fired().await;
        assert!(
            fired >= at_least,
            "the injected fault fired {fired} time(s), expected at least {at_least}: it never \
             matched the request the test meant to fault"
        );
    }
}

/// Each `#[tokio::test]` has its own runtime and a pooled connection dies with the runtime that
/// opened it, so the shared client must not keep connections between calls.
fn control_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("reqwest client")
}

/// The Python that runs moto (and the infra checks the tests call, which need its boto3).
pub fn python() -> PathBuf {
    python_path(&workspace::root())
}

fn python_path(root: &Path) -> PathBuf {
    match std::env::var_os(PYTHON_ENV) {
        Some(python) if !python.is_empty() => PathBuf::from(python),
        _ => root.join(".venv/bin/python"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serialization {
    Serialized,
    Concurrent,
}

fn emulator_log_path(root: &Path, serialization: Serialization) -> PathBuf {
    let dir = root.join("target/keapalive-emulator");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    // One log per test binary name: bounded, and the last run's log is there to read.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    let suffix = match serialization {
        Serialization::Serialized => "",
        Serialization::Concurrent => "-unserialized",
    };
    dir.join(format!("moto-{binary}{suffix}.log"))
}

/// The SDK configuration for an emulator at `endpoint_url`: region, dummy static credentials,
/// nothing read from the environment or profile files, so a real AWS account is never touched.
pub fn sdk_config_for(endpoint_url: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "keapalive-tests",
        )))
        .endpoint_url(endpoint_url)
        .build()
}
