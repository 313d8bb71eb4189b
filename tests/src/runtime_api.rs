//! A local AWS Lambda Runtime API, so tests, the local demo and benchmarks run the real function
//! binaries as child processes, exactly as Lambda drives them.
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::{logs, workspace};

pub const ACCOUNT_ID: &str = "123456789012";
/// Extra time `invoke` waits past the deadline before giving up on a silent function.
const DEADLINE_GRACE: Duration = Duration::from_secs(5);

/// The Lambda error an invocation produced, as a caller of `Invoke` would see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type}: {error_message}")]
pub struct InvokeError {
    /// `errorType` of the function's error body (or `Harness.*` for the harness's own verdicts).
    pub error_type: String,
    pub error_message: String,
    /// The `Lambda-Runtime-Function-Error-Type` header the runtime sent, if any.
    pub function_error_type_header: Option<String>,
}

impl InvokeError {
    fn harness(kind: &str, message: impl Into<String>) -> Self {
        Self {
            error_type: format!("Harness.{kind}"),
            error_message: message.into(),
            function_error_type_header: None,
        }
    }
}

struct Invocation {
    request_id: String,
    event: Value,
    /// The `Lambda-Runtime-Deadline-Ms` value sent.
    deadline_ms: u128,
}

type Outcome = Result<Value, InvokeError>;

/// When the current process was spawned and when it first asked for an event.
struct ColdStart {
    spawned_at: Instant,
    first_next_at: Option<Instant>,
}

struct Shared {
    function_name: String,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    cold_start: Mutex<ColdStart>,
    next_requests: AtomicU64,
    init_error: watch::Sender<Option<InvokeError>>,
}

pub struct RuntimeApi {
    address: String,
    shared: Arc<Shared>,
    queue_tx: mpsc::UnboundedSender<Invocation>,
    server: JoinHandle<()>,
}

impl RuntimeApi {
    /// Listens on 127.0.0.1 (a free port) on the current tokio runtime; the function is named
    /// `function` in the ARN header.
    pub async fn start() -> Self {
        Self::start_named("function").await
    }

    pub async fn start_named(function_name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the runtime API on 127.0.0.1");
        let address = listener.local_addr().expect("local address").to_string();
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            function_name: function_name.to_owned(),
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            pending: Mutex::new(HashMap::new()),
            cold_start: Mutex::new(ColdStart {
                spawned_at: Instant::now(),
                first_next_at: None,
            }),
            next_requests: AtomicU64::new(0),
            init_error: watch::channel(None).0,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            address,
            shared,
            queue_tx,
            server,
        }
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Queues `event` and waits for the function's answer. `deadline` becomes the invocation's
    /// `Lambda-Runtime-Deadline-Ms` (what the function sees as its remaining time); if no answer
    /// comes by then plus a grace period, the result is a `Harness.Timeout` error.
    pub async fn invoke(&self, event: Value, deadline: Duration) -> Result<Value, InvokeError> {
        let deadline_ms = (SystemTime::now() + deadline)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        self.invoke_with_deadline_header(event, deadline_ms, deadline)
            .await
    }

    /// Like [`RuntimeApi::invoke`], sending `deadline_header_ms` verbatim as
    /// `Lambda-Runtime-Deadline-Ms` (what local emulators send: cargo-lambda's relative
    /// `600000`, a zero, the invoke time) and waiting up to `wait` plus the grace period.
    pub async fn invoke_with_deadline_header(
        &self,
        event: Value,
        deadline_header_ms: u128,
        wait: Duration,
    ) -> Result<Value, InvokeError> {
        let deadline = wait;
        if let Some(error) = self.init_error() {
            return Err(error);
        }
        let request_id = new_request_id();
        let (answer_tx, answer_rx) = oneshot::channel();
        lock(&self.shared.pending).insert(request_id.clone(), answer_tx);
        let invocation = Invocation {
            request_id: request_id.clone(),
            event,
            deadline_ms: deadline_header_ms,
        };
        if self.queue_tx.send(invocation).is_err() {
            return Err(InvokeError::harness(
                "Stopped",
                "the runtime API has stopped",
            ));
        }

        let mut init_errors = self.shared.init_error.subscribe();
        let outcome = tokio::select! {
            answer = answer_rx => answer.unwrap_or_else(|_| {
                Err(InvokeError::harness("Stopped", "the runtime API has stopped"))
            }),
            _ = tokio::time::sleep(deadline + DEADLINE_GRACE) => Err(InvokeError::harness(
                "Timeout",
                format!("no answer within {deadline:?} + {DEADLINE_GRACE:?}"),
            )),
            Ok(error) = init_errors.wait_for(Option::is_some) => {
                Err(error.clone().unwrap_or_else(|| InvokeError::harness("InitError", "")))
            }
        };
        lock(&self.shared.pending).remove(&request_id);
        outcome
    }

    /// When the function last spawned by [`spawn_function`] (or, without one, any client after
    /// [`RuntimeApi::start`]) first asked for an event.
    pub fn first_next_at(&self) -> Option<Instant> {
        lock(&self.shared.cold_start).first_next_at
    }

    /// The cold start of the function last spawned by [`spawn_function`]: from process launch
    /// to its first `GET /next` (init finished, ready for an event).
    pub fn cold_start(&self) -> Option<Duration> {
        let cold_start = lock(&self.shared.cold_start);
        cold_start
            .first_next_at
            .map(|at| at.duration_since(cold_start.spawned_at))
    }

    /// Waits until the function has asked for its first event (it finished init) and returns
    /// its [`RuntimeApi::cold_start`]; `None` after `timeout` or an init error.
    pub async fn wait_until_ready(&self, timeout: Duration) -> Option<Duration> {
        let give_up = Instant::now() + timeout;
        while Instant::now() < give_up {
            if let Some(cold_start) = self.cold_start() {
                return Some(cold_start);
            }
            if self.init_error().is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// `GET /next` requests received, including the one waiting now.
    pub fn next_requests(&self) -> u64 {
        self.shared.next_requests.load(Ordering::Relaxed)
    }

    /// What the function posted to `/runtime/init/error`, if anything.
    pub fn init_error(&self) -> Option<InvokeError> {
        self.shared.init_error.borrow().clone()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next_invocation(State(shared): State<Arc<Shared>>) -> Response {
    lock(&shared.cold_start)
        .first_next_at
        .get_or_insert_with(Instant::now);
    shared.next_requests.fetch_add(1, Ordering::Relaxed);
    let invocation = shared.queue_rx.lock().await.recv().await;
    let Some(invocation) = invocation else {
        return StatusCode::GONE.into_response();
    };
    let deadline_ms = invocation.deadline_ms;
    let arn = format!(
        "arn:aws:lambda:{}:{ACCOUNT_ID}:function:{}",
        crate::emulator::REGION,
        shared.function_name
    );
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        headers.insert(
            name,
            HeaderValue::from_str(&value).expect("header value is ASCII"),
        );
    };
    set(
        "lambda-runtime-aws-request-id",
        invocation.request_id.clone(),
    );
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", arn);
    set("lambda-runtime-trace-id", trace_id());
    (StatusCode::OK, headers, axum::Json(invocation.event)).into_response()
}

async fn invocation_response(
    State(shared): State<Arc<Shared>>,
    UrlPath(request_id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let outcome = serde_json::from_slice(&body)
        .map_err(|e| InvokeError::harness("NonJsonResponse", format!("response is not JSON: {e}")));
    answer(&shared, &request_id, outcome)
}

async fn invocation_error(
    State(shared): State<Arc<Shared>>,
    UrlPath(request_id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&shared, &request_id, Err(function_error(&headers, &body)))
}

async fn init_error(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared
        .init_error
        .send_replace(Some(function_error(&headers, &body)));
    accepted()
}

fn answer(shared: &Shared, request_id: &str, outcome: Outcome) -> Response {
    let Some(waiter) = lock(&shared.pending).remove(request_id) else {
        // Unknown, already answered, or the caller gave up: Lambda answers the same way.
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"}),
            ),
        )
            .into_response();
    };
    let _ = waiter.send(outcome);
    accepted()
}

fn function_error(headers: &HeaderMap, body: &[u8]) -> InvokeError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |key: &str| parsed.get(key).and_then(Value::as_str).map(str::to_owned);
    InvokeError {
        error_type: text("errorType").unwrap_or_default(),
        error_message: text("errorMessage")
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
        function_error_type_header: headers
            .get("lambda-runtime-function-error-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // UUID-shaped, like Lambda's, unique within and across test processes.
    let hex = format!(
        "{:016x}{:08x}{:08x}",
        nanos as u64,
        std::process::id(),
        n as u32
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn trace_id() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("Root=1-{seconds:08x}-000000000000000000000000;Parent=0000000000000000;Sampled=0")
}

/// A function binary running against a [`RuntimeApi`]. Killed when dropped. Its stdout and
/// stderr go to [`FunctionProcess::output`] and into the log capture ([`logs::captured_logs`]).
pub struct FunctionProcess {
    pub child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    /// The tasks copying stdout and stderr: [`FunctionProcess::kill`] waits for them, so what
    /// the process wrote is all in [`FunctionProcess::output`] and the log capture by then.
    copies: Vec<JoinHandle<()>>,
}

impl FunctionProcess {
    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&lock(&self.output)).into_owned()
    }

    /// Kills the process and waits until everything it wrote has been copied, so a "never
    /// logged" assertion after it reads the whole output. A grandchild holding the pipes open
    /// would keep them from closing: the copies get 10 s after the kill, then the test fails.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
        for copy in self.copies.drain(..) {
            match tokio::time::timeout(Duration::from_secs(10), copy).await {
                Ok(_) => {}
                Err(_) => panic!("the killed function's output was still open 10 s later"),
            }
        }
    }
}

/// Starts `binary` as Lambda would: the runtime API address, the function's identity and a
/// JSON log format in the environment, and nothing inherited from the test's environment except
/// `PATH`, `HOME` and `RUST_BACKTRACE`. AWS calls go to a closed local port unless `env` sets
/// `AWS_ENDPOINT_URL` (use [`crate::emulator::Emulator::process_env`]), so no request can reach
/// real AWS. `env` overrides every default.
pub fn spawn_function(
    binary: &Path,
    env: &[(&str, &str)],
    runtime: &RuntimeApi,
) -> FunctionProcess {
    let function_name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".to_owned());
    let log_group = format!("/aws/lambda/{function_name}");
    let mut command = Command::new(binary);
    command
        .env_clear()
        .envs(
            ["PATH", "HOME", "RUST_BACKTRACE"]
                .into_iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k, v))),
        )
        .env("AWS_LAMBDA_RUNTIME_API", runtime.address())
        .env("AWS_LAMBDA_FUNCTION_NAME", &function_name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", &log_group)
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "local/[$LATEST]0")
        .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
        .env("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023")
        .env("LAMBDA_TASK_ROOT", "/var/task")
        .env("_HANDLER", "bootstrap")
        .env("TZ", ":UTC")
        .env("AWS_REGION", crate::emulator::REGION)
        .env("AWS_DEFAULT_REGION", crate::emulator::REGION)
        .env("AWS_ACCESS_KEY_ID", crate::emulator::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", crate::emulator::SECRET_ACCESS_KEY)
        // Port 9 (discard) on loopback: nothing listens, so a missing endpoint fails fast.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    *lock(&runtime.shared.cold_start) = ColdStart {
        spawned_at: Instant::now(),
        first_next_at: None,
    };
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut copies = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        copies.push(tokio::spawn(copy_output(stdout, output.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        copies.push(tokio::spawn(copy_output(stderr, output.clone())));
    }
    FunctionProcess {
        child,
        output,
        copies,
    }
}

async fn copy_output(mut stream: impl AsyncRead + Unpin, output: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = vec![0u8; 8192];
    while let Ok(read @ 1..) = stream.read(&mut chunk).await {
        lock(&output).extend_from_slice(&chunk[..read]);
        logs::append(&chunk[..read]);
    }
}

/// Skips the on-demand `cargo build` in [`binary_path`] (when binaries were just built).
pub const PREBUILT_ENV: &str = "KEAPALIVE_TEST_PREBUILT";

/// Binaries of this package; every other binary is named like its package (docs/design.md, "Configuration").
const OWN_BINARIES: &[&str] = &["echo-function"];

/// Path of the workspace binary `name` (`oauth-callback`, `echo-function`, ...), in the profile
/// the tests were built with. Unless [`PREBUILT_ENV`] is `1`, first runs
/// `cargo build -p <package> --bin <name>` once per process, so a test never drives a stale
/// binary (`cargo test -p keapalive-tests` does not rebuild other packages' binaries).
pub fn binary_path(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let release = !cfg!(debug_assertions);
    let mut built = lock(&BUILT);
    if std::env::var(PREBUILT_ENV).as_deref() != Ok("1") && !built.iter().any(|n| n == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let package = if OWN_BINARIES.contains(&name) {
            env!("CARGO_PKG_NAME")
        } else {
            name
        };
        let mut command = std::process::Command::new(cargo);
        command
            .current_dir(workspace::root())
            .args(["build", "--quiet", "-p", package, "--bin", name]);
        if release {
            command.arg("--release");
        }
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
        assert!(
            status.success(),
            "`cargo build -p {package} --bin {name}` failed"
        );
        built.push(name.to_owned());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace::root().join("target"));
    let path = target
        .join(if release { "release" } else { "debug" })
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bin {name}`",
        path.display()
    );
    path
}
