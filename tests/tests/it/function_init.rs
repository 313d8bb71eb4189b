//! Every function binary inits the same way (`keapalive::wiring`): a configuration problem is
//! one line on stderr naming the variable — not a `Debug` dump of the error — and a non-zero
//! exit before the function asks the Runtime API for any event.

use std::time::Duration;

use keapalive_tests::runtime_api::{RuntimeApi, binary_path, spawn_function};

const INIT_TIMEOUT: Duration = Duration::from_secs(120);
const FUNCTIONS: [&str; 7] = [
    "oauth-callback",
    "operator",
    "token-refresher",
    "contact-upsert",
    "keap-proxy",
    "access-token",
    "keap-hooks",
];

/// What a deployed function's environment holds, minus `without`. TRACE: the most any
/// operator can ask for, so a line logged at init would show.
fn environment(without: &str) -> Vec<(&'static str, &'static str)> {
    [
        ("KEAPALIVE_TABLE", "keapalive-test"),
        ("KEAPALIVE_CLIENT_SECRET_ID", "keapalive/test/client"),
        (
            "KEAPALIVE_REDIRECT_URI",
            "https://example.test/oauth/callback",
        ),
        ("KEAPALIVE_STAGE", "test"),
        ("KEAPALIVE_EVENT_BUS", "keapalive-test"),
        ("AWS_LAMBDA_LOG_LEVEL", "trace"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        // Never reached: the functions stop before any AWS call.
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ]
    .into_iter()
    .filter(|(name, _)| *name != without)
    .collect()
}

/// Runs `function` with `env` until it exits; its exit code and everything it printed.
async fn init_failure(function: &str, env: &[(&str, &str)]) -> (Option<i32>, String, u64) {
    let runtime = RuntimeApi::start_named(function).await;
    let mut process = spawn_function(&binary_path(function), env, &runtime);
    let status = tokio::time::timeout(INIT_TIMEOUT, process.child.wait())
        .await
        .unwrap_or_else(|_| panic!("{function} kept running with a broken configuration"))
        .unwrap();
    // Give the output copier a moment to drain the pipes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    (status.code(), process.output(), runtime.next_requests())
}

fn assert_one_line_naming(function: &str, variable: &str, output: &str) {
    let output = output.trim();
    assert_eq!(
        output.lines().count(),
        1,
        "{function}: one line, got:\n{output}"
    );
    assert!(
        output.contains(variable),
        "{function} names {variable}: {output}"
    );
    for dump in ["Error:", "Missing(", "Malformed {", "Config("] {
        assert!(
            !output.contains(dump),
            "{function} printed a Debug dump: {output}"
        );
    }
}

#[tokio::test]
async fn every_function_names_a_missing_variable_in_one_line_and_exits() {
    for function in FUNCTIONS {
        let env = environment("KEAPALIVE_TABLE");
        let (code, output, requests) = init_failure(function, &env).await;
        assert_eq!(code, Some(1), "{function} exits 1: {output}");
        assert_one_line_naming(function, "KEAPALIVE_TABLE", &output);
        assert_eq!(requests, 0, "{function} never asked for an event");
    }
}

#[tokio::test]
async fn every_function_names_a_malformed_variable_in_one_line_and_exits() {
    for function in FUNCTIONS {
        let mut env = environment("");
        env.push(("KEAPALIVE_LEASE_SECS", "five minutes"));
        let (code, output, requests) = init_failure(function, &env).await;
        assert_eq!(code, Some(1), "{function} exits 1: {output}");
        assert_one_line_naming(function, "KEAPALIVE_LEASE_SECS", &output);
        assert_eq!(requests, 0, "{function} never asked for an event");
    }
}

/// Issue 21, point 5: a Keap URL or AWS endpoint in plain http to anything but a loopback
/// literal would carry the client secret, tokens or signed requests in clear text.
#[tokio::test]
async fn every_function_refuses_plain_http_to_another_host_in_one_line_and_exits() {
    for (variable, url) in [
        ("KEAP_TOKEN_URL", "http://api.infusionsoft.com/token"),
        ("AWS_ENDPOINT_URL_DYNAMODB", "http://dynamodb.example.test"),
        // Keap sends a subscription's token inside this URL.
        (
            "KEAPALIVE_HOOKS_BASE_URL",
            "http://hooks.example.test/keap/hooks",
        ),
    ] {
        for function in FUNCTIONS {
            let mut env = environment("");
            env.push((variable, url));
            let (code, output, requests) = init_failure(function, &env).await;
            assert_eq!(code, Some(1), "{function} exits 1 on {variable}: {output}");
            assert_one_line_naming(function, variable, &output);
            assert!(!output.contains(url), "{function} echoed the URL: {output}");
            assert_eq!(requests, 0, "{function} never asked for an event");
        }
    }
}

/// keap-hooks exists to publish: without a bus it says so at init instead of answering every
/// delivery 503 (which would end with Keap marking the subscription Inactive).
#[tokio::test]
async fn keap_hooks_without_a_bus_names_the_variable_and_exits() {
    let env = environment("KEAPALIVE_EVENT_BUS");
    let (code, output, requests) = init_failure("keap-hooks", &env).await;
    assert_eq!(code, Some(1), "keap-hooks exits 1: {output}");
    assert_one_line_naming("keap-hooks", "KEAPALIVE_EVENT_BUS", &output);
    assert_eq!(requests, 0);
}
