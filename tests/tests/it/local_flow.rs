//! `make local` as a test: the real `keapalive-local` binary runs the whole flow, names a failed
//! step, and leaves no process behind — after success, after Ctrl-C mid-flow, and even when it
//! is killed outright.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keap_sandbox::{DEFAULT_APP, Sandbox};
use keapalive_tests::runtime_api::binary_path;
use keapalive_tests::workspace;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// A running `keapalive-local`, its output collected line by line.
struct Driver {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn function_binaries_built() {
    // Builds them once per test process (cargo test does not rebuild other packages' bins).
    for name in [
        "oauth-callback",
        "token-refresher",
        "contact-upsert",
        "operator",
        "keap-proxy",
        "access-token",
        "keap-hooks",
    ] {
        binary_path(name);
    }
}

impl Driver {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        function_binaries_built();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keapalive-local"))
            .args(["--no-build", "--print-pids"])
            .args(args)
            .envs(env.iter().copied())
            .current_dir(workspace::root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start keapalive-local");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        tokio::spawn(collect(
            child.stdout.take().unwrap(),
            stdout.clone(),
            Some(tx),
        ));
        tokio::spawn(collect(child.stderr.take().unwrap(), stderr.clone(), None));
        Self {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    /// Waits for a stdout line for which `wanted` is true and returns it.
    async fn line_where(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let line = tokio::time::timeout_at(deadline.into(), self.lines.recv()).await;
            match line {
                Ok(Some(line)) if wanted(&line) => return line,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => panic!(
                    "no such line; stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                ),
            }
        }
    }

    async fn exit_code(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(RUN_TIMEOUT, self.child.wait())
            .await
            .expect("keapalive-local finished in time")
            .expect("wait for keapalive-local");
        // Let the collectors read the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        status.code()
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("still running") as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `CHILD_PID=<pid> <name>` lines so far.
    fn children(&self) -> Vec<(i32, String)> {
        self.stdout()
            .lines()
            .filter_map(|line| line.strip_prefix("CHILD_PID="))
            .filter_map(|rest| {
                let (pid, name) = rest.split_once(' ')?;
                Some((pid.parse().ok()?, name.to_owned()))
            })
            .collect()
    }
}

async fn collect(
    stream: impl AsyncRead + Unpin,
    into: Arc<Mutex<String>>,
    lines_tx: Option<mpsc::UnboundedSender<String>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut text = into.lock().unwrap();
        text.push_str(&line);
        text.push('\n');
        if let Some(tx) = &lines_tx {
            let _ = tx.send(line);
        }
    }
}

/// Running: the process exists and is not a zombie (a zombie has exited; only its entry is
/// left until its new parent reaps it).
fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // `pid (comm) STATE ...`; comm may contain spaces, so read after the last ')'.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

/// Every child is gone within `within` (a killed process needs a moment to exit).
async fn assert_all_gone(children: &[(i32, String)], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let running: Vec<_> = children
            .iter()
            .filter(|(pid, _)| is_running(*pid))
            .collect();
        if running.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("still running after {within:?}: {running:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_every_process_announced(children: &[(i32, String)]) {
    let names: Vec<&str> = children.iter().map(|(_, name)| name.as_str()).collect();
    for expected in [
        "moto",
        "oauth-callback",
        "token-refresher",
        "contact-upsert",
        "operator",
        "keap-proxy",
        "access-token",
        "keap-hooks",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_holds_and_leaves_nothing_running() {
    let mut driver = Driver::start(&[], &[]);
    let code = driver.exit_code().await;
    let (stdout, stderr) = (driver.stdout(), driver.stderr());
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");

    for title in [
        "Starting the AWS emulator",
        "Starting the Keap sandbox",
        "Starting an authorization",
        "Consenting in the Keap sandbox",
        "Following the redirect",
        "Forcing a refresh",
        "Upserting the ButtonPush contact",
    ] {
        assert!(stdout.contains(title), "no step {title:?}:\n{stdout}");
    }
    assert!(stdout.contains("generation 1, active"), "{stdout}");
    // The authorization's lifecycle event, received through the bus's rule → SQS queue.
    assert!(
        stdout.contains("event on keapalive-local: keapalive.connection.authorized")
            && stdout.contains("\"connection_id\":\"default\""),
        "{stdout}"
    );
    assert!(stdout.contains("generation 2"), "{stdout}");
    assert!(
        stdout.contains("\"created\":true") && stdout.contains("\"tags_applied\":["),
        "{stdout}"
    );
    // The proxy step read the upserted contact back from the sandbox, through the real
    // keap-proxy binary, and printed it with the email redacted.
    assert!(
        stdout.contains("Reading the contact back through keap-proxy")
            && stdout.contains("\"method\": \"GET\", \"path\": \"/v1/contacts/1\""),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "Keap answered 200 (body_encoding json): contact 1 found, \"Ada Lovelace\", a***@example.com, 1 tag(s)"
        ),
        "{stdout}"
    );
    // The hooks step: the operator subscribed contact.add (Verified by the sandbox's handshake
    // through keap-hooks), the sandbox delivered the upserted contact's contact.add, and the
    // bus's rule put the event on its queue.
    assert!(
        stdout.contains("Subscribing to Keap's contact.add")
            && stdout.contains("contact.add subscribed: Verified at Keap (token hash ")
            && stdout.contains(
                "Keap's delivery answered 200; event on keapalive-local: keap.contact.add {"
            )
            && stdout.contains("\"event_key\":\"contact.add\"")
            && stdout.contains("\"object_keys\":[{\"id\":1,"),
        "{stdout}"
    );
    // A hook URL's token is a credential: only the route's template is printed.
    assert!(
        stdout
            .match_indices("/keap/hooks/")
            .all(|(at, _)| stdout[at..].starts_with("/keap/hooks/{token}")),
        "{stdout}"
    );
    // Every step numbered, the hooks step among them.
    assert!(
        stdout.contains("[10/13] Subscribing to Keap's contact.add"),
        "{stdout}"
    );
    assert!(stdout.contains("[13/13] Connections"), "{stdout}");
    // The vend step used access-token's token against the sandbox directly.
    assert!(
        stdout.contains("A token for your own SDK: invoke access-token")
            && stdout.contains("token of generation 2, valid 2")
            && stdout.contains("Keap answered 200 to GET /v1/contacts/1 with it"),
        "{stdout}"
    );
    // The admin tool's table, with the refreshed connection.
    let row = stdout
        .lines()
        .find(|line| line.starts_with("default "))
        .unwrap_or_else(|| panic!("no status row:\n{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        [
            "default",
            "oauth",
            "active",
            "sandbox01.infusionsoft.com",
            "2"
        ]
    );
    assert!(row.contains("in 1d") || row.contains("in 23h"), "{row}");
    assert!(stdout.contains("All steps held"), "{stdout}");
    // The full email is a person's: never printed.
    assert!(!stdout.contains("ada@example.com"), "{stdout}");

    let children = driver.children();
    assert_every_process_announced(&children);
    assert_all_gone(&children, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_mid_flow_stops_every_child() {
    let mut driver = Driver::start(&["--pause-before", "upsert"], &[]);
    driver
        .line_where(|line| line.starts_with("PAUSED before step `upsert`"))
        .await;
    let children = driver.children();
    assert_every_process_announced(&children);
    assert!(children.iter().all(|(pid, _)| is_running(*pid)));

    driver.signal(libc::SIGINT);
    let code = driver.exit_code().await;
    assert_eq!(code, Some(130), "stderr:\n{}", driver.stderr());
    assert!(
        driver
            .stderr()
            .contains("Ctrl-C during step `upsert`: stopping"),
        "{}",
        driver.stderr()
    );
    // The driver reaps its children before it exits: nothing may be left even briefly.
    assert_all_gone(&children, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_die_with_a_killed_driver() {
    let mut driver = Driver::start(&["--pause-before", "refresh"], &[]);
    driver
        .line_where(|line| line.starts_with("PAUSED before step `refresh`"))
        .await;
    let children = driver.children();
    assert_every_process_announced(&children);

    // SIGKILL: no handler runs. moto sees its stdin close, the functions their Runtime API
    // connection drop.
    driver.signal(libc::SIGKILL);
    driver.exit_code().await;
    assert_all_gone(&children, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_is_named_and_fails_the_run() {
    let mut driver = Driver::start(&[], &[("KEAPALIVE_TEST_PYTHON", "/nonexistent/python3")]);
    let code = driver.exit_code().await;
    assert_eq!(code, Some(1), "stdout:\n{}", driver.stdout());
    let stderr = driver.stderr();
    assert!(
        stderr.contains("FAILED: step `emulator` failed: /nonexistent/python3 is missing"),
        "{stderr}"
    );
    assert!(!driver.stdout().contains("All steps held"));
}

/// `--real-keap` against a stand-in: the test is the browser and Keap is a sandbox behind the
/// `KEAP_*_URL` overrides. Proves the real-Keap path (printed link, callback server, waiting
/// for the redirect) without any network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_keap_mode_serves_the_callback_and_finishes_the_flow() {
    const CLIENT_ID: &str = "local-real-mode-client";
    const CLIENT_SECRET: &str = "local-real-mode-secret-never-printed";
    const EMAIL: &str = "real-mode@example.com";
    let keap = Sandbox::start().await.expect("sandbox");
    keap.register_client(CLIENT_ID, CLIENT_SECRET);
    let secret_file =
        std::env::temp_dir().join(format!("keapalive-local-secret-{}", std::process::id()));
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let redirect_uri = format!("http://127.0.0.1:{port}/oauth/callback");
    let (authorize, token, api) = (keap.authorize_url(), keap.token_url(), keap.api_base_url());

    let mut driver = Driver::start(
        &[
            "--real-keap",
            "--client-id",
            CLIENT_ID,
            "--client-secret-file",
            secret_file.to_str().unwrap(),
            "--redirect-uri",
            &redirect_uri,
            "--callback-port",
            &port.to_string(),
            "--contact-email",
            EMAIL,
            "--consent-timeout-secs",
            "120",
        ],
        &[
            ("KEAP_AUTHORIZE_URL", &authorize),
            ("KEAP_TOKEN_URL", &token),
            ("KEAP_API_BASE_URL", &api),
        ],
    );
    let link = driver
        .line_where(|line| line.trim_start().starts_with(&format!("{authorize}?")))
        .await;

    // The browser: the consent screen redirects, the redirect reaches the callback server.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let favicon = browser
        .get(format!("http://127.0.0.1:{port}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(favicon.status(), 404, "not the callback route");
    let consent = browser.get(link.trim()).send().await.unwrap();
    assert!(consent.status().is_redirection(), "{}", consent.status());
    let location = consent.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&redirect_uri), "{location}");
    let page = browser.get(&location).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    let code = driver.exit_code().await;
    let (stdout, stderr) = (driver.stdout(), driver.stderr());
    let _ = std::fs::remove_file(&secret_file);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("generation 2"), "{stdout}");
    // Keap cannot reach 127.0.0.1: the hooks step says so instead of subscribing.
    assert!(
        stdout.contains("skipped: the real Keap delivers only to a public HTTPS URL"),
        "{stdout}"
    );
    assert!(
        stdout.contains("lived in the local emulator only"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(CLIENT_SECRET) && !stderr.contains(CLIENT_SECRET),
        "the client secret was printed"
    );
    let contacts = keap.contacts(DEFAULT_APP);
    assert!(
        contacts.iter().any(|c| {
            c.pointer("/email_addresses/0/email")
                .and_then(Value::as_str)
                == Some(EMAIL)
        }),
        "{contacts:?}"
    );
    assert_all_gone(&driver.children(), Duration::from_secs(1)).await;
}
