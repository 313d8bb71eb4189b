//! The caller examples of docs/calling.md and docs/keap-proxy.md (`docs/examples/`) run as
//! written against a local Lambda Invoke API in front of the real contact-upsert and keap-proxy
//! binaries: the AWS CLI, Python (boto3), Node (AWS SDK v3) and Rust (`aws-sdk-lambda`), plus
//! the SQS path and the re-authorization command.
//!
//! Python and the AWS CLI come from `docs/examples/requirements.txt`, installed into
//! `target/docs-examples/venv`; Node's SDK from `docs/examples/package-lock.json` (`npm ci`).
//! When a tool or its install is unavailable, the test fails under `CI=true` (CI must run every
//! example: `make test` needs only Rust and Python 3, and CI's machines have Node too); on a
//! developer's machine without Node or PyPI it prints `SKIPPED: <reason>` and passes, so the
//! rest still runs.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use keap_sandbox::{DEFAULT_APP, Endpoint, Fault, FaultKind};
use keapalive_tests::aws::{create_queue, drain_queue};
use keapalive_tests::emulator::{Emulator, REGION};
use keapalive_tests::fixture::Fixture;
use keapalive_tests::local::functions::{
    self, ACCESS_TOKEN, CONTACT_UPSERT, KEAP_PROXY, LocalFunction, OPERATOR,
};
use keapalive_tests::local::invoke_api::InvokeApi;
use keapalive_tests::local::supervisor::Supervisor;
use keapalive_tests::runtime_api::{ACCOUNT_ID, binary_path};
use keapalive_tests::workspace;
use serde_json::{Value, json};
use tokio::process::Command;

const UPSERT_FUNCTION: &str = "keapalive-local-contact-upsert";
const OPERATOR_FUNCTION: &str = "keapalive-local-operator";
const PROXY_FUNCTION: &str = "keapalive-local-keap-proxy";
const ACCESS_TOKEN_FUNCTION: &str = "keapalive-local-access-token";
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------ the world

struct World {
    fixture: Fixture,
    supervisor: Supervisor,
    upsert: LocalFunction,
    invoke_api: InvokeApi,
}

/// A sandbox with the ButtonPush account's field and tag, the connection `default` authorized
/// (unless `authorized` is false), contact-upsert, operator and keap-proxy running behind a
/// local Invoke API.
async fn world(authorized: bool, extra_env: &[(&str, &str)]) -> World {
    for name in [CONTACT_UPSERT, OPERATOR, KEAP_PROXY, ACCESS_TOKEN] {
        binary_path(name);
    }
    let fixture = Fixture::new().await;
    fixture
        .sandbox
        .add_custom_field(DEFAULT_APP, "Favorite Color", "Text");
    fixture.sandbox.add_tag(DEFAULT_APP, "buttonpushed");
    if authorized {
        fixture.seed_connection("default", DEFAULT_APP, None).await;
    }
    let mut env = Emulator::shared().process_env();
    env.extend(fixture.env(extra_env));
    let supervisor = Supervisor::new(false);
    let upsert = functions::start(CONTACT_UPSERT, &env, &supervisor)
        .await
        .expect("contact-upsert starts");
    let operator = functions::start(OPERATOR, &env, &supervisor)
        .await
        .expect("operator starts");
    let proxy = functions::start(KEAP_PROXY, &env, &supervisor)
        .await
        .expect("keap-proxy starts");
    let vending = functions::start(ACCESS_TOKEN, &env, &supervisor)
        .await
        .expect("access-token starts");
    let invoke_api = InvokeApi::start(vec![
        (UPSERT_FUNCTION.to_owned(), upsert.clone()),
        (OPERATOR_FUNCTION.to_owned(), operator),
        (PROXY_FUNCTION.to_owned(), proxy),
        (ACCESS_TOKEN_FUNCTION.to_owned(), vending),
    ])
    .await
    .expect("invoke API starts");
    World {
        fixture,
        supervisor,
        upsert,
        invoke_api,
    }
}

impl World {
    /// What a caller's machine has: dummy credentials, the Lambda endpoint pointed at the local
    /// Invoke API, SQS at the emulator, no profile files (a developer's real AWS setup must
    /// never be used).
    fn caller_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("AWS_ACCESS_KEY_ID", "keapalive-docs"),
            ("AWS_SECRET_ACCESS_KEY", "keapalive-docs"),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_PAGER", ""),
            ("CONTACT_UPSERT_FUNCTION", UPSERT_FUNCTION),
            ("OPERATOR_FUNCTION", OPERATOR_FUNCTION),
            ("KEAP_PROXY_FUNCTION", PROXY_FUNCTION),
            ("ACCESS_TOKEN_FUNCTION", ACCESS_TOKEN_FUNCTION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        env.push((
            "AWS_ENDPOINT_URL_LAMBDA".into(),
            self.invoke_api.endpoint_url(),
        ));
        env.push((
            "AWS_ENDPOINT_URL_SQS".into(),
            Emulator::shared().endpoint_url().to_owned(),
        ));
        for name in ["HOME", "PATH"] {
            if let Ok(value) = std::env::var(name) {
                env.push((name.to_owned(), value));
            }
        }
        env
    }

    fn contact(&self, email: &str) -> Option<Value> {
        self.fixture
            .sandbox
            .contacts(DEFAULT_APP)
            .into_iter()
            .find(|c| {
                c.pointer("/email_addresses/0/email")
                    .and_then(Value::as_str)
                    == Some(email)
            })
    }

    /// The contact exists with the example's custom field and tag.
    fn assert_upserted(&self, email: &str) {
        let contact = self
            .contact(email)
            .unwrap_or_else(|| panic!("no contact {email} in the sandbox"));
        let field = self
            .fixture
            .sandbox
            .add_custom_field(DEFAULT_APP, "Favorite Color", "Text");
        let tag = self.fixture.sandbox.add_tag(DEFAULT_APP, "buttonpushed");
        assert!(
            contact["custom_fields"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["id"] == field && f["content"] == "blue")),
            "{contact}"
        );
        assert!(
            contact["tag_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|id| *id == tag)),
            "{contact}"
        );
    }

    async fn stop(self) {
        self.supervisor.shutdown().await;
    }
}

// ------------------------------------------------------------------ tools

fn examples_dir() -> PathBuf {
    workspace::root().join("docs/examples")
}

/// A missing tool: a failure under CI (`CI=true`), a printed skip elsewhere.
fn skip(reason: &str) {
    if keapalive_tests::workspace::in_ci() {
        panic!(
            "{reason}: CI=true, so every example must run (install the tool; see docs/development.md)"
        );
    }
    eprintln!("SKIPPED: {reason}");
}

/// The examples' virtualenv (boto3, awscli), created once per machine and refreshed when
/// `requirements.txt` changes. `Err` says why it is not available.
fn python_venv() -> Result<PathBuf, String> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = workspace::root().join("target/docs-examples/venv");
        let requirements = examples_dir().join("requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).map_err(|e| e.to_string())?;
        let stamp = venv.join(".keapalive-requirements");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
            return Ok(venv);
        }
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let created = std::process::Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map_err(|e| format!("{python} is not available: {e}"))?;
        if !created.success() {
            return Err(format!("`{python} -m venv` failed"));
        }
        eprintln!(
            "installing docs/examples/requirements.txt (boto3, awscli) into {}",
            venv.display()
        );
        let installed = std::process::Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements)
            .status()
            .map_err(|e| format!("pip did not run: {e}"))?;
        if !installed.success() {
            return Err("pip install -r docs/examples/requirements.txt failed".to_owned());
        }
        std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
        Ok(venv)
    })
    .clone()
}

/// `node`, with `@aws-sdk/client-lambda` installed in docs/examples/node_modules.
fn node_with_sdk() -> Result<(), String> {
    static NODE: OnceLock<Result<(), String>> = OnceLock::new();
    NODE.get_or_init(|| {
        let version = std::process::Command::new("node")
            .arg("--version")
            .output()
            .map_err(|e| format!("node is not available: {e}"))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let major: u32 = version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 18 {
            return Err(format!("node {version} is older than 18"));
        }
        if examples_dir()
            .join("node_modules/@aws-sdk/client-lambda/package.json")
            .exists()
        {
            return Ok(());
        }
        eprintln!("installing @aws-sdk/client-lambda into docs/examples/node_modules (npm ci)");
        let installed = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(examples_dir())
            .status()
            .map_err(|e| format!("npm is not available: {e}"))?;
        if !installed.success() {
            return Err("`npm ci` in docs/examples failed".to_owned());
        }
        Ok(())
    })
    .clone()
}

/// `target/<profile>/examples/invoke_upsert`, built on first use (`cargo test --test
/// docs_examples` builds only this test, not the package's examples).
fn rust_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_example("invoke_upsert")).clone()
}

/// `target/<profile>/examples/invoke_access_token`, built on first use.
fn rust_access_token_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_example("invoke_access_token"))
        .clone()
}

/// `target/<profile>/examples/invoke_proxy`, built on first use.
fn rust_proxy_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_example("invoke_proxy")).clone()
}

/// Builds the package's example `name` and returns its path.
fn build_example(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = std::process::Command::new(cargo);
    command.current_dir(workspace::root()).args([
        "build",
        "--quiet",
        "-p",
        "keapalive-tests",
        "--example",
        name,
    ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let status = command.status().expect("run cargo");
    assert!(status.success(), "building the {name} example failed");
    functions::binary_dir().join("examples").join(name)
}

async fn run_example(program: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(examples_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    tokio::time::timeout(EXAMPLE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish", program.display()))
        .expect("example output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// The venv's bin first on PATH: `aws` and `python` are the examples' own.
fn with_venv_path(mut env: Vec<(String, String)>, venv: &Path) -> Vec<(String, String)> {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    env.retain(|(k, _)| k != "PATH");
    env.push((
        "PATH".into(),
        format!("{}:{path}", venv.join("bin").display()),
    ));
    env
}

/// A request file like request.json with another email (an invalid one for the error path),
/// plus the example account's custom field and tag (calling.md's payload), which the world has.
fn request_file(email: &str) -> tempfile_path::TempPath {
    let request: Value = serde_json::from_str(
        &std::fs::read_to_string(examples_dir().join("request.json")).expect("request.json"),
    )
    .expect("request.json is JSON");
    let mut request = request;
    request["contact"]["email"] = json!(email);
    request["contact"]["custom_fields"] = json!({"Favorite Color": "blue"});
    request["contact"]["tags"] = json!(["buttonpushed"]);
    tempfile_path::TempPath::with_contents(&request.to_string())
}

mod tempfile_path {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A file under the system temp dir, deleted when dropped.
    pub struct TempPath(pub PathBuf);

    impl TempPath {
        pub fn with_contents(contents: &str) -> Self {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "keapalive-docs-{}-{}.json",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, contents).expect("write temp file");
            Self(path)
        }

        pub fn as_str(&self) -> &str {
            self.0.to_str().expect("utf-8 temp path")
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

// ------------------------------------------------------------------ the Invoke API itself

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_api_speaks_lambda_to_the_rust_sdk() {
    let world = world(true, &[]).await;
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_lambda::config::SharedCredentialsProvider::new(
            aws_sdk_lambda::config::Credentials::new("k", "s", None, None, "test"),
        ))
        .endpoint_url(world.invoke_api.endpoint_url())
        .build();
    let lambda = aws_sdk_lambda::Client::new(&config);

    let invalid = lambda
        .invoke()
        .function_name(format!(
            "arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{UPSERT_FUNCTION}"
        ))
        .payload(aws_sdk_lambda::primitives::Blob::new(
            r#"{"contact": {"email": "nope"}}"#,
        ))
        .send()
        .await
        .expect("a function error is still a successful Invoke");
    assert_eq!(invalid.status_code(), 200);
    assert_eq!(invalid.function_error(), Some("Unhandled"));
    let body: Value = serde_json::from_slice(invalid.payload().unwrap().as_ref()).unwrap();
    assert_eq!(body["errorType"], "ValidationError", "{body}");

    let missing = lambda
        .invoke()
        .function_name("no-such-function")
        .send()
        .await
        .expect_err("unknown function");
    assert!(
        missing
            .into_service_error()
            .is_resource_not_found_exception()
    );
    world.stop().await;
}

// ------------------------------------------------------------------ Python

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_upserts_and_branches_on_error_type() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("python example: {reason}")),
    };
    let world = world(true, &[]).await;
    let env = with_venv_path(world.caller_env(), &venv);
    let python = venv.join("bin/python");

    let ok = run_example(&python, &["invoke_upsert.py", "ada@example.com"], &env).await;
    assert_exit(&ok, 0);
    let answer: Value = serde_json::from_str(
        text(&ok.stdout)
            .trim()
            .strip_prefix("upserted: ")
            .expect("upserted line"),
    )
    .unwrap();
    assert_eq!(answer["created"], true, "{answer}");
    world.assert_upserted("ada@example.com");

    let invalid = run_example(&python, &["invoke_upsert.py", "not-an-email"], &env).await;
    assert_exit(&invalid, 2);
    assert!(text(&invalid.stderr).starts_with("ValidationError: contact.email"));

    // The user revokes access in Keap: the next upsert finds the grant dead, the connection
    // needs re-authorization, and the example says what to do.
    world.fixture.sandbox.revoke_grant(DEFAULT_APP);
    let unauthorized = run_example(&python, &["invoke_upsert.py", "ada@example.com"], &env).await;
    assert_exit(&unauthorized, 3);
    assert!(text(&unauthorized.stderr).contains("NotAuthorized"));
    assert!(text(&unauthorized.stderr).contains("re-authorize the connection"));
    world.stop().await;
}

// ------------------------------------------------------------------ Node

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_example_upserts_and_branches_on_error_type() {
    if let Err(reason) = node_with_sdk() {
        return skip(&format!("node example: {reason}"));
    }
    let world = world(true, &[]).await;
    let env = world.caller_env();
    let node = PathBuf::from("node");

    let ok = run_example(&node, &["invoke_upsert.mjs", "grace@example.com"], &env).await;
    assert_exit(&ok, 0);
    assert!(
        text(&ok.stdout).contains("\"created\":true"),
        "{}",
        text(&ok.stdout)
    );
    world.assert_upserted("grace@example.com");

    let invalid = run_example(&node, &["invoke_upsert.mjs", "not-an-email"], &env).await;
    assert_exit(&invalid, 2);
    // Node may print the SDK's own warnings (supported Node versions) first.
    assert!(
        text(&invalid.stderr).contains("\nValidationError: contact.email")
            || text(&invalid.stderr).starts_with("ValidationError: contact.email"),
        "{}",
        text(&invalid.stderr)
    );
    world.stop().await;
}

// ------------------------------------------------------------------ Rust

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_example_upserts_and_branches_on_error_type() {
    let example = rust_example();
    let world = world(true, &[]).await;
    let env = world.caller_env();

    let ok = run_example(&example, &["hopper@example.com"], &env).await;
    assert_exit(&ok, 0);
    assert!(
        text(&ok.stdout).contains("\"created\":true"),
        "{}",
        text(&ok.stdout)
    );
    world.assert_upserted("hopper@example.com");

    // Updating the same contact: created is false now.
    let again = run_example(&example, &["hopper@example.com"], &env).await;
    assert_exit(&again, 0);
    assert!(
        text(&again.stdout).contains("\"created\":false"),
        "{}",
        text(&again.stdout)
    );

    let invalid = run_example(&example, &["not-an-email"], &env).await;
    assert_exit(&invalid, 2);
    assert!(text(&invalid.stderr).starts_with("ValidationError: contact.email"));
    world.stop().await;
}

// ------------------------------------------------------------------ AWS CLI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_example_upserts_and_branches_on_error_type() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("AWS CLI example: {reason}")),
    };
    let world = world(true, &[]).await;
    let env = with_venv_path(world.caller_env(), &venv);
    let script = examples_dir().join("invoke_upsert.sh");

    let ok = run_example(&script, &[], &env).await;
    assert_exit(&ok, 0);
    assert!(
        text(&ok.stdout).starts_with("upserted: {"),
        "{}",
        text(&ok.stdout)
    );
    // request.json is the first call of docs/deploy.md: an email and a name, no field or tag.
    let contact = world
        .contact("ada@example.com")
        .expect("the contact exists");
    assert_eq!(contact["given_name"], "Ada", "{contact}");

    let bad = request_file("not-an-email");
    let invalid = run_example(&script, &[bad.as_str()], &env).await;
    assert_exit(&invalid, 2);
    assert!(text(&invalid.stderr).starts_with("ValidationError: fix the request"));
    world.stop().await;
}

/// Step 8 of docs/deploy.md ("Call it"), the command exactly as written, against a fresh Keap
/// account: no custom field, no tag, only the connection the steps before it authorized. The
/// function is registered under the dev stage's name, as the stack names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_of_deploy_md_succeeds_on_a_fresh_account() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("deploy.md first call: {reason}")),
    };
    let deploy = std::fs::read_to_string(workspace::root().join("docs/deploy.md")).unwrap();
    let step = deploy
        .lines()
        .find(|l| l.contains("**Call it**"))
        .expect("deploy.md has a \"Call it\" step");
    let command = step
        .split('`')
        .nth(1)
        .expect("the step's command in a code span");
    let function = command
        .split_whitespace()
        .find_map(|w| w.strip_prefix("CONTACT_UPSERT_FUNCTION="))
        .expect("the command names the function")
        .to_owned();
    assert!(
        function.starts_with("keapalive-dev-"),
        "the first call goes to the dev stage: {function}"
    );

    binary_path(CONTACT_UPSERT);
    let fixture = Fixture::new().await;
    fixture.seed_connection("default", DEFAULT_APP, None).await;
    let mut env = Emulator::shared().process_env();
    env.extend(fixture.env(&[]));
    let supervisor = Supervisor::new(false);
    let upsert = functions::start(CONTACT_UPSERT, &env, &supervisor)
        .await
        .expect("contact-upsert starts");
    let invoke_api = InvokeApi::start(vec![(function.clone(), upsert.clone())])
        .await
        .expect("invoke API starts");
    let world = World {
        fixture,
        supervisor,
        upsert,
        invoke_api,
    };
    let env = with_venv_path(world.caller_env(), &venv);

    let output = tokio::time::timeout(
        EXAMPLE_TIMEOUT,
        Command::new("bash")
            .args(["-c", command])
            .current_dir(workspace::root())
            .env_clear()
            .envs(env)
            .output(),
    )
    .await
    .expect("the first call finished in time")
    .expect("bash runs");
    assert_exit(&output, 0);
    assert!(
        text(&output.stdout).starts_with("upserted: {")
            && text(&output.stdout).contains("\"created\":true"),
        "{}",
        text(&output.stdout)
    );
    assert!(
        world.fixture.sandbox.tags(DEFAULT_APP).is_empty(),
        "a fresh account: no tag was needed or made"
    );
    assert!(world.contact("ada@example.com").is_some());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthorize_command_prints_a_fresh_authorize_link() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("re-authorize example: {reason}")),
    };
    let world = world(true, &[]).await;
    let env = with_venv_path(world.caller_env(), &venv);

    let output = run_example(&examples_dir().join("reauthorize.sh"), &["default"], &env).await;
    assert_exit(&output, 0);
    let stdout = text(&output.stdout);
    let link = stdout
        .lines()
        .find(|line| line.starts_with("http"))
        .unwrap_or_else(|| panic!("no link:\n{stdout}"));
    let link = url::Url::parse(link).expect("a URL");
    assert!(
        link.as_str()
            .starts_with(&world.fixture.sandbox.authorize_url()),
        "{link}"
    );
    let query: Vec<(String, String)> = link.query_pairs().into_owned().collect();
    assert!(
        query.iter().any(|(k, v)| k == "state" && v.len() >= 32),
        "{query:?}"
    );
    assert!(query.iter().any(|(k, _)| k == "client_id"));

    // The link works: the sandbox's consent redirects to the callback with a code.
    let consent = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(link.as_str())
        .send()
        .await
        .unwrap();
    assert!(consent.status().is_redirection());
    assert!(
        consent.headers()["location"]
            .to_str()
            .unwrap()
            .contains("code=")
    );
    world.stop().await;
}

// ------------------------------------------------------------------ keap-proxy callers

/// The example's `answer: {...}` line, parsed.
fn proxy_answer(output: &Output) -> Value {
    let stdout = text(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("answer: "))
        .unwrap_or_else(|| panic!("no answer line:\n{stdout}"));
    serde_json::from_str(line).expect("the answer is JSON")
}

/// POSTs that reached the sandbox's echo route.
fn echoed_posts(world: &World) -> usize {
    world
        .fixture
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/crm/rest/v1/_echo/notes")
        .count()
}

/// One keap-proxy example (`call` runs it with a proxy request as JSON text) through the real
/// keap-proxy binary: a GET of a contact the test upserted, a GET by email, a POST whose answer
/// is lost after it reached Keap (the example must not send it again: the SDK's retries are
/// off), a throttle beyond the proxy's wait, a hostile path and a revoked grant.
async fn proxy_round_trip(email: &str, call: impl AsyncFn(&World, &str) -> Output) {
    let world = world(true, &[]).await;
    let upserted = world
        .upsert
        .invoke(json!({"contact": {"email": email, "given_name": "Ada"}}))
        .await
        .expect("the contact is upserted");
    let id = upserted["contact_id"].as_i64().expect("contact_id");

    let one = call(
        &world,
        &json!({"method": "GET", "path": format!("/v1/contacts/{id}")}).to_string(),
    )
    .await;
    assert_exit(&one, 0);
    let answer = proxy_answer(&one);
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body_encoding"], "json");
    assert_eq!(answer["body"]["id"], id, "{answer}");
    assert_eq!(answer["body"]["given_name"], "Ada", "{answer}");

    let found = call(
        &world,
        &json!({"method": "GET", "path": "/v1/contacts", "query": {"email": email}}).to_string(),
    )
    .await;
    assert_exit(&found, 0);
    let answer = proxy_answer(&found);
    assert_eq!(answer["body"]["count"], 1, "{answer}");
    assert_eq!(answer["body"]["contacts"][0]["id"], id, "{answer}");

    // A Keap 404 is data, not an error.
    let missing = call(
        &world,
        &json!({"method": "GET", "path": "/v1/contacts/999999"}).to_string(),
    )
    .await;
    assert_exit(&missing, 0);
    assert_eq!(proxy_answer(&missing)["status"], 404);

    // The POST reaches Keap, then its answer is lost between Lambda and the caller: an SDK
    // with its retries on would invoke the function again and Keap would get a second POST.
    world.invoke_api.lose_answers(1);
    let posted = call(
        &world,
        &json!({"method": "POST", "path": "/v1/_echo/notes",
                "body": {"contact_id": id, "title": "Called"}})
        .to_string(),
    )
    .await;
    assert_eq!(
        world.invoke_api.answers_left_to_lose(),
        0,
        "the fault fired"
    );
    assert_exit(&posted, 5);
    assert!(
        text(&posted.stderr).contains("check before sending it again"),
        "{}",
        text(&posted.stderr)
    );
    assert_eq!(
        echoed_posts(&world),
        1,
        "the POST reached Keap exactly once"
    );

    // Keap asks for 30 s: more than the proxy waits (5 s) and the example waits (10 s).
    let throttle = world.fixture.sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 429,
            retry_after_secs: Some(30),
        },
        times: 1,
    });
    let throttled = call(
        &world,
        &json!({"method": "GET", "path": format!("/v1/contacts/{id}")}).to_string(),
    )
    .await;
    assert_exit(&throttled, 4);
    assert!(
        text(&throttled.stderr).contains("retry in 30 s"),
        "{}",
        text(&throttled.stderr)
    );
    throttle.assert_fired(1);

    let hostile = call(
        &world,
        &json!({"method": "GET", "path": "/v1/../token"}).to_string(),
    )
    .await;
    assert_exit(&hostile, 2);
    assert!(text(&hostile.stderr).contains("ValidationError"));

    world.fixture.sandbox.revoke_grant(DEFAULT_APP);
    let revoked = call(
        &world,
        &json!({"method": "GET", "path": format!("/v1/contacts/{id}")}).to_string(),
    )
    .await;
    assert_exit(&revoked, 3);
    assert!(text(&revoked.stderr).contains("NotAuthorized"));
    assert_eq!(echoed_posts(&world), 1);
    world.stop().await;
}

/// One access-token example (`call` runs it with Keap paths and extra environment) against the
/// real access-token binary: Keap no longer accepts the stored token (it expired at Keap, not
/// in the table), so the example's first request meets a 401; it reports the generation, gets
/// the rotated token, sends the request once more, and serves the second path from its cache.
/// A connection that does not exist is `NotAuthorized` (exit 3).
async fn vending_round_trip(call: impl AsyncFn(&World, &[&str], &[(&str, &str)]) -> Output) {
    let world = world(true, &[]).await;
    world.fixture.sandbox.expire_access_tokens();
    world.fixture.sandbox.clear_requests();
    let output = call(
        &world,
        &["/v1/contacts?limit=1", "/v1/account/profile"],
        &[],
    )
    .await;
    assert_exit(&output, 0);
    let stdout = text(&output.stdout);
    for line in [
        "GET /v1/contacts: status 200",
        "GET /v1/account/profile: status 200",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let requests = world.fixture.sandbox.requests();
    let refreshes = requests
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count();
    assert_eq!(refreshes, 1, "the reported 401 rotated the grant once");
    let to = |path: &str, status: u16| {
        requests
            .iter()
            .filter(|r| r.path == path && r.status == status)
            .count()
    };
    assert_eq!(
        to("/crm/rest/v1/contacts", 401),
        1,
        "the stale token's request"
    );
    assert_eq!(
        to("/crm/rest/v1/contacts", 200),
        1,
        "sent once more, with the new token"
    );
    assert_eq!(
        to("/crm/rest/v1/account/profile", 401),
        1,
        "keapalive probed the reported token before rotating"
    );
    assert_eq!(to("/crm/rest/v1/account/profile", 200), 1);

    let absent = call(
        &world,
        &["/v1/contacts"],
        &[("KEAP_CONNECTION_ID", "absent")],
    )
    .await;
    assert_exit(&absent, 3);
    assert!(text(&absent.stderr).contains("NotAuthorized"));
    for output in [&output, &absent] {
        let printed = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(
            !printed.contains("access_token\""),
            "an example printed the token:\n{printed}"
        );
    }
    world.stop().await;
}

fn with_extra(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_access_token_example_caches_and_reports_a_401() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("python access-token example: {reason}")),
    };
    let python = venv.join("bin/python");
    vending_round_trip(async |world, paths, extra| {
        let env = with_extra(with_venv_path(world.caller_env(), &venv), extra);
        let mut args = vec!["invoke_access_token.py"];
        args.extend(paths);
        run_example(&python, &args, &env).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_access_token_example_caches_and_reports_a_401() {
    if let Err(reason) = node_with_sdk() {
        return skip(&format!("node access-token example: {reason}"));
    }
    let node = PathBuf::from("node");
    vending_round_trip(async |world, paths, extra| {
        let mut args = vec!["invoke_access_token.mjs"];
        args.extend(paths);
        run_example(&node, &args, &with_extra(world.caller_env(), extra)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_access_token_example_caches_and_reports_a_401() {
    let example = rust_access_token_example();
    vending_round_trip(async |world, paths, extra| {
        run_example(&example, paths, &with_extra(world.caller_env(), extra)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_access_token_example_reports_a_401() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("CLI access-token example: {reason}")),
    };
    let bash = PathBuf::from("bash");
    // One path per run: a shell script keeps no token between runs (see its header).
    let world = world(true, &[]).await;
    world.fixture.sandbox.expire_access_tokens();
    world.fixture.sandbox.clear_requests();
    let env = with_venv_path(world.caller_env(), &venv);
    let output = run_example(
        &bash,
        &["invoke_access_token.sh", "/v1/contacts?limit=1"],
        &env,
    )
    .await;
    assert_exit(&output, 0);
    assert!(
        text(&output.stdout).contains("GET /v1/contacts: status 200"),
        "{}",
        text(&output.stdout)
    );
    let refreshes = world
        .fixture
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count();
    assert_eq!(refreshes, 1, "the reported 401 rotated the grant once");
    let absent = run_example(
        &bash,
        &["invoke_access_token.sh", "/v1/contacts"],
        &with_extra(env, &[("KEAP_CONNECTION_ID", "absent")]),
    )
    .await;
    assert_exit(&absent, 3);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_proxy_example_calls_keap_and_never_repeats_a_post() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("python proxy example: {reason}")),
    };
    let python = venv.join("bin/python");
    proxy_round_trip("proxy.python@example.com", async |world, request| {
        let env = with_venv_path(world.caller_env(), &venv);
        run_example(&python, &["invoke_proxy.py", request], &env).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_proxy_example_calls_keap_and_never_repeats_a_post() {
    if let Err(reason) = node_with_sdk() {
        return skip(&format!("node proxy example: {reason}"));
    }
    let node = PathBuf::from("node");
    proxy_round_trip("proxy.node@example.com", async |world, request| {
        run_example(&node, &["invoke_proxy.mjs", request], &world.caller_env()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_proxy_example_calls_keap_and_never_repeats_a_post() {
    let example = rust_proxy_example();
    proxy_round_trip("proxy.rust@example.com", async |world, request| {
        run_example(&example, &[request], &world.caller_env()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_proxy_example_calls_keap_and_never_repeats_a_post() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("AWS CLI proxy example: {reason}")),
    };
    let script = examples_dir().join("invoke_proxy.sh");
    proxy_round_trip("proxy.cli@example.com", async |world, request| {
        let file = tempfile_path::TempPath::with_contents(request);
        let env = with_venv_path(world.caller_env(), &venv);
        run_example(&script, &[file.as_str()], &env).await
    })
    .await;
}

/// proxy_request.json, the CLI example's default request, is a valid keap-proxy request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_proxy_request_finds_a_contact_by_email() {
    let world = world(true, &[]).await;
    world
        .upsert
        .invoke(json!({"contact": {"email": "ada@example.com"}}))
        .await
        .expect("upserted");
    let request: Value = serde_json::from_str(
        &std::fs::read_to_string(examples_dir().join("proxy_request.json")).unwrap(),
    )
    .unwrap();
    let proxy = world.invoke_api.endpoint_url();
    let answer: Value = reqwest::Client::new()
        .post(format!(
            "{proxy}/2015-03-31/functions/{PROXY_FUNCTION}/invocations"
        ))
        .body(request.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["count"], 1, "{answer}");
    world.stop().await;
}

// ------------------------------------------------------------------ SQS

/// The messages as Lambda's SQS event source hands them to the function.
fn sqs_event(queue_url: &str, messages: &[Message]) -> Value {
    let queue_name = queue_url.rsplit('/').next().unwrap_or_default();
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "0",
                    "SenderId": ACCOUNT_ID,
                    "ApproximateFirstReceiveTimestamp": "0"
                },
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queue_name}"),
                "awsRegion": REGION
            })
        })
        .collect();
    json!({ "Records": records })
}

/// Sends one good and one invalid request with `send` (an example), then delivers the queue to
/// contact-upsert as an SQS event: the good one is upserted, the invalid one dead-lettered.
async fn queue_round_trip(
    send: impl AsyncFn(&World, &str, &[(String, String)], &str) -> Output,
    env_for: impl Fn(&World) -> Vec<(String, String)>,
) {
    let sdk = Emulator::shared().sdk_config();
    let queue = create_queue(&sdk).await;
    let dead_letters = create_queue(&sdk).await;
    let world = world(true, &[("KEAPALIVE_DEAD_LETTER_QUEUE_URL", &dead_letters)]).await;
    let mut env = env_for(&world);
    env.push(("UPSERT_QUEUE_URL".into(), queue.clone()));

    for email in ["lin@example.com", "not-an-email"] {
        let output = send(&world, email, &env, &queue).await;
        assert_exit(&output, 0);
    }

    let messages = drain_queue(&sdk, &queue).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let answer = world
        .upsert
        .invoke(sqs_event(&queue, &messages))
        .await
        .expect("the batch is handled");
    assert_eq!(answer, json!({"batchItemFailures": []}));
    world.assert_upserted("lin@example.com");

    let dead = drain_queue(&sdk, &dead_letters).await;
    assert_eq!(
        dead.len(),
        1,
        "the invalid request is dead-lettered: {dead:?}"
    );
    let error_type = dead[0]
        .message_attributes()
        .and_then(|a| a.get("error_type"))
        .and_then(|a| a.string_value());
    assert_eq!(error_type, Some("ValidationError"));
    assert!(dead[0].body().unwrap().contains("not-an-email"));
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_queue_example_reaches_the_function() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("python queue example: {reason}")),
    };
    let python = venv.join("bin/python");
    queue_round_trip(
        async |_world, email, env, _queue| {
            run_example(&python, &["send_to_queue.py", email], env).await
        },
        |world| with_venv_path(world.caller_env(), &venv),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_queue_example_reaches_the_function() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("AWS CLI queue example: {reason}")),
    };
    let script = examples_dir().join("send_to_queue.sh");
    queue_round_trip(
        async |_world, email, env, _queue| {
            let request = request_file(email);
            run_example(&script, &[request.as_str()], env).await
        },
        |world| with_venv_path(world.caller_env(), &venv),
    )
    .await;
}

/// docs/calling.md's FIFO sender: every message about one contact carries the documented
/// group (the hex SHA-256 of connection id, newline, lower-cased email), never the email, and
/// a deduplication id of its own; the queued messages upsert the contact in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fifo_queue_example_groups_each_contact() {
    let venv = match python_venv() {
        Ok(venv) => venv,
        Err(reason) => return skip(&format!("python FIFO queue example: {reason}")),
    };
    let python = venv.join("bin/python");
    let sdk = Emulator::shared().sdk_config();
    let queue = keapalive_tests::aws::create_fifo_queue(&sdk).await;
    let world = world(true, &[]).await;
    let mut env = with_venv_path(world.caller_env(), &venv);
    env.push(("UPSERT_QUEUE_URL".into(), queue.clone()));

    for (email, name) in [("Ada@Example.com", "First"), ("Ada@Example.com", "Second")] {
        let output = run_example(&python, &["send_to_fifo_queue.py", email, name], &env).await;
        assert_exit(&output, 0);
    }

    let messages = drain_queue(&sdk, &queue).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    for message in &messages {
        let attributes = message.attributes().expect("system attributes");
        // printf 'default\nada@example.com' | sha256sum (docs/calling.md)
        assert_eq!(
            attributes
                .get(&MessageSystemAttributeName::MessageGroupId)
                .map(String::as_str),
            Some("c37cf89631c4bce21c17dbcc30063d67a75a264b33f037e5e6d9e7aafc7db33e")
        );
        assert!(
            attributes.contains_key(&MessageSystemAttributeName::MessageDeduplicationId),
            "{attributes:?}"
        );
    }
    let answer = world
        .upsert
        .invoke(sqs_event(&queue, &messages))
        .await
        .expect("the batch is handled");
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let contact = world
        .contact("Ada@Example.com")
        .or_else(|| world.contact("ada@example.com"))
        .expect("upserted");
    assert_eq!(
        contact["given_name"], "Second",
        "the later message wins: {contact}"
    );
    world.stop().await;
}

// ------------------------------------------------------------------ README quotes

/// `(file, block)` for every fenced block preceded by `<!-- quote: <file> -->`.
fn quoted_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut quotes = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(file) = line
            .trim()
            .strip_prefix("<!-- quote:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        if !lines.next().is_some_and(|fence| fence.starts_with("```")) {
            quotes.push((
                file.trim().to_owned(),
                String::from("<no fenced block after the marker>"),
            ));
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        quotes.push((file.trim().to_owned(), block.join("\n")));
    }
    quotes
}

/// Quotes whose block is not a verbatim part of their file (or whose file is missing).
fn stale_quotes(markdown: &str) -> Vec<String> {
    quoted_blocks(markdown)
        .into_iter()
        .filter(|(file, block)| {
            std::fs::read_to_string(workspace::root().join(file))
                .map(|content| !content.contains(block.as_str()))
                .unwrap_or(true)
        })
        .map(|(file, _)| file)
        .collect()
}

#[test]
fn quote_check_catches_an_edited_excerpt() {
    let faithful =
        "<!-- quote: docs/examples/send_to_queue.sh -->\n```sh\nset -euo pipefail\n```\n";
    assert_eq!(quoted_blocks(faithful).len(), 1);
    assert!(stale_quotes(faithful).is_empty());
    let edited = "<!-- quote: docs/examples/send_to_queue.sh -->\n```sh\nset -e -u\n```\n";
    assert_eq!(stale_quotes(edited), ["docs/examples/send_to_queue.sh"]);
    let missing = "<!-- quote: docs/examples/nope.sh -->\n```sh\nx\n```\n";
    assert_eq!(stale_quotes(missing), ["docs/examples/nope.sh"]);
}

/// README.md and every `docs/*.md` (sorted), as `(path relative to the root, text)`; `None`
/// without a README.md.
fn documents() -> Option<Vec<(String, String)>> {
    let root = workspace::root();
    let readme = std::fs::read_to_string(root.join("README.md")).ok()?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "md"))
                .collect()
        })
        .unwrap_or_default();
    pages.sort();
    let mut documents = vec![(String::from("README.md"), readme)];
    for page in pages {
        let name = page
            .strip_prefix(&root)
            .expect("docs/ is under the root")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{name}: {e}"));
        documents.push((name, text));
    }
    Some(documents)
}

/// The documents quote the example files; the files are what the tests above run.
#[test]
fn doc_quotes_are_verbatim_excerpts_of_the_examples() {
    let Some(documents) = documents() else {
        return skip("no README.md");
    };
    let quoted = documents
        .iter()
        .flat_map(|(_, text)| quoted_blocks(text))
        .filter(|(file, _)| file.starts_with("docs/examples/"))
        .count();
    let names: Vec<&str> = documents.iter().map(|(name, _)| name.as_str()).collect();
    assert!(
        quoted > 0,
        "no document quotes a docs/examples file (looked in {names:?})"
    );
    let stale: Vec<String> = documents
        .iter()
        .flat_map(|(name, text)| {
            stale_quotes(text)
                .into_iter()
                .map(move |file| format!("{name} quotes {file}"))
        })
        .collect();
    assert_eq!(
        stale,
        Vec::<String>::new(),
        "these documents quote files, but the quoted text is no longer in them"
    );
}

// ------------------------------------------------------------------ links in the docs

/// What a link's path names, as the link checker sees it.
enum Found {
    Missing,
    /// a directory, or a file that is not markdown (its anchors are not checked)
    Other,
    /// a markdown file's text
    Markdown(String),
}

/// The lines of `markdown` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(markdown: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut prose = Vec::new();
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => prose.push((index + 1, line)),
            _ => {}
        }
    }
    prose
}

/// GitHub's anchor for a heading: lowercase; everything but letters, digits, spaces, hyphens
/// and underscores removed; spaces turned into hyphens.
fn heading_slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor `markdown`'s headings define; a repeated slug gets `-1`, `-2`, … as on GitHub.
fn anchors(markdown: &str) -> Vec<String> {
    let mut anchors: Vec<String> = Vec::new();
    for (_, line) in prose_lines(markdown) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        let Some(heading) = line[hashes..].strip_prefix(' ') else {
            continue;
        };
        if !(1..=6).contains(&hashes) {
            continue;
        }
        let slug = heading_slug(heading);
        let mut anchor = slug.clone();
        let mut n = 0;
        while anchors.contains(&anchor) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        anchors.push(anchor);
    }
    anchors
}

/// `(line, target)` of every inline link `](target)` outside code blocks and code spans.
fn link_targets(markdown: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (number, line) in prose_lines(markdown) {
        // Even pieces between backticks are outside code spans.
        let outside_code: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = outside_code.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or_default();
            links.push((number, target.trim_matches(['<', '>']).to_owned()));
            rest = &rest[end..];
        }
    }
    links
}

/// `path` with `.` and `..` resolved lexically; `None` if it climbs above the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => parts.push(part),
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.iter().collect())
}

/// The links of `document` (its path from the root, e.g. `docs/calling.md`) that do not
/// resolve: a relative path that `find` does not know, or an anchor that no heading of the
/// target markdown defines. Web and mail links are not checked.
fn broken_links(document: &Path, text: &str, find: &dyn Fn(&Path) -> Found) -> Vec<String> {
    let directory = document.parent().unwrap_or(Path::new(""));
    let mut broken = Vec::new();
    for (line, target) in link_targets(text) {
        if ["http://", "https://", "mailto:"]
            .iter()
            .any(|scheme| target.starts_with(scheme))
        {
            continue;
        }
        let at = format!("{}:{line}: ({target})", document.display());
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let markdown = if path.is_empty() {
            Some(text.to_owned())
        } else {
            let Some(resolved) = normalize(&directory.join(path)) else {
                broken.push(format!("{at}: leaves the repository"));
                continue;
            };
            match find(&resolved) {
                Found::Missing => {
                    broken.push(format!("{at}: no such file {}", resolved.display()));
                    continue;
                }
                Found::Other => None,
                Found::Markdown(text) => Some(text),
            }
        };
        if let (Some(anchor), Some(markdown)) = (anchor, markdown)
            && !anchors(&markdown).iter().any(|a| a == anchor)
        {
            broken.push(format!("{at}: no heading has the anchor #{anchor}"));
        }
    }
    broken
}

#[test]
fn link_check_catches_a_broken_link_and_anchor() {
    let page = "# Calling\n\n\
                [Back](../README.md#quick-start), [errors](#errors).\n\
                [missing](nope.md) and [bad anchor](../README.md#deploy)\n\
                \n\
                ```sh\n\
                # Errors in a code block are neither headings nor links: [x](gone.md)\n\
                ```\n\
                \n\
                ## Errors\n\
                \n\
                See `[code](span.md)` and [examples](examples/).\n";
    let find = |path: &Path| match path.to_str() {
        Some("README.md") => Found::Markdown("# keapalive\n\n## Quick start\n".to_owned()),
        Some("docs/examples") => Found::Other,
        _ => Found::Missing,
    };
    assert_eq!(
        broken_links(Path::new("docs/calling.md"), page, &find),
        [
            "docs/calling.md:4: (nope.md): no such file docs/nope.md",
            "docs/calling.md:4: (../README.md#deploy): no heading has the anchor #deploy",
        ]
    );
    assert_eq!(
        heading_slug("Develop with `cargo lambda watch`"),
        "develop-with-cargo-lambda-watch"
    );
    assert_eq!(
        heading_slug("Connections: OAuth or Service Account Key"),
        "connections-oauth-or-service-account-key"
    );
    assert_eq!(anchors("# A\n## A\n# B"), ["a", "a-1", "b"]);
    assert_eq!(normalize(Path::new("docs/../../x")), None);
}

/// Every relative link of README.md and docs/*.md names a file or directory that exists, and
/// every anchor a heading of its document.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let Some(documents) = documents() else {
        return skip("no README.md");
    };
    let root = workspace::root();
    let find = |path: &Path| {
        let full = root.join(path);
        if !full.exists() {
            Found::Missing
        } else if full.is_file() && full.extension().is_some_and(|x| x == "md") {
            Found::Markdown(std::fs::read_to_string(&full).unwrap_or_default())
        } else {
            Found::Other
        }
    };
    let broken: Vec<String> = documents
        .iter()
        .flat_map(|(name, text)| broken_links(Path::new(name), text, &find))
        .collect();
    assert!(
        broken.is_empty(),
        "links that do not resolve:\n{}",
        broken.join("\n")
    );
}
