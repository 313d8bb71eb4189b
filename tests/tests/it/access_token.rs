//! access-token against the Keap sandbox and the AWS emulator: a vended token is live and valid
//! long enough, a token too close to expiry is refreshed first through the lease protocol (once,
//! however many callers), a reported rejection is probed before anything rotates, key
//! connections never leave, and nothing the binary logs holds a token.

use std::time::Duration;

use crate::support::*;
use keapalive::access_token::{AccessTokenError, AccessTokenService};
use keapalive::clock::now_epoch_secs;
use keapalive::deadline::Deadline;
use keapalive_tests::fixture::Fixture;
use keapalive_tests::logs::{assert_logs_never_contain, capture_logs};
use serde_json::{Value, json};

const APP: &str = "vend01";

fn service(fx: &Fixture, extra: &[(&str, &str)]) -> AccessTokenService {
    fx.clients(extra).access_token_service()
}

async fn vend(service: &AccessTokenService, request: Value) -> Result<Value, AccessTokenError> {
    service
        .handle(
            request.to_string().as_bytes(),
            Deadline::after(Duration::from_secs(25)),
        )
        .await
}

fn token(answer: &Value) -> String {
    answer["access_token"]
        .as_str()
        .expect("an access_token")
        .to_owned()
}

/// Whether Keap (the sandbox) accepts the token, asked the way a caller's SDK would: its own
/// request to `api_base_url` with the bearer token.
async fn live(answer: &Value) -> bool {
    let url = format!(
        "{}/v1/account/profile",
        answer["api_base_url"].as_str().expect("an api_base_url")
    );
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token(answer))
        .send()
        .await
        .expect("the sandbox answers")
        .status()
        .is_success()
}

/// Token-endpoint answers that were errors (an `invalid_grant` among them).
fn token_errors(fx: &Fixture) -> usize {
    fx.sandbox
        .requests()
        .iter()
        .filter(|r| r.path == "/token" && r.status >= 400)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vended_token_is_live_and_valid_for_at_least_min_valid_secs() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = service(&fx, &[]);
    let answer = vend(&service, json!({})).await.unwrap();
    assert_eq!(answer["connection_id"], "default");
    assert_eq!(answer["generation"], 1);
    assert!(answer["expires_at"].as_i64().unwrap() >= now_epoch_secs() + 300);
    assert!(!answer["api_base_url"].as_str().unwrap().ends_with('/'));
    assert!(live(&answer).await, "the vended token works at Keap");
    assert_eq!(
        refresh_requests(&fx),
        0,
        "a valid stored token is not rotated"
    );

    // Stored token valid 2 h, caller needs 6 h: refreshed first (generation + 1).
    fx.seed_connection("soon", "vend02", Some(now_epoch_secs() + 7_200))
        .await;
    let answer = vend(
        &service,
        json!({"connection_id": "soon", "min_valid_secs": 21_600}),
    )
    .await
    .unwrap();
    assert_eq!(answer["generation"], 2);
    assert!(answer["expires_at"].as_i64().unwrap() >= now_epoch_secs() + 21_600);
    assert!(live(&answer).await);
    assert_eq!(refresh_requests(&fx), 1);
    assert_eq!(token_errors(&fx), 0, "no invalid_grant");
}

/// Keap issues tokens shorter than the caller asked for: the fresh one is returned with its
/// real `expires_at`, and asking again within the expiry-rotation interval rotates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keaps_short_token_is_returned_with_its_real_expiry_and_not_rotated_again() {
    let fx = Fixture::new().await;
    fx.sandbox.set_access_token_lifetime(3_600);
    fx.seed_connection("default", APP, Some(now_epoch_secs() + 600))
        .await;
    let service = service(&fx, &[]);
    let first = vend(&service, json!({"min_valid_secs": 7_200}))
        .await
        .unwrap();
    assert_eq!(first["generation"], 2, "refreshed: 10 minutes left < 2 h");
    let expires_in = first["expires_at"].as_i64().unwrap() - now_epoch_secs();
    assert!(
        (3_500..=3_600).contains(&expires_in),
        "Keap's real expiry: {expires_in} s"
    );
    let again = vend(&service, json!({"min_valid_secs": 7_200}))
        .await
        .unwrap();
    assert_eq!(token(&again), token(&first));
    let other = service_again(&fx);
    let third = vend(&other, json!({"min_valid_secs": 7_200}))
        .await
        .unwrap();
    assert_eq!(
        token(&third),
        token(&first),
        "another container: same token"
    );
    assert_eq!(
        refresh_requests(&fx),
        1,
        "no second rotation for a short token"
    );
    assert_eq!(token_errors(&fx), 0);
}

fn service_again(fx: &Fixture) -> AccessTokenService {
    service(fx, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_calls_on_an_expired_connection_refresh_once_and_share_the_token() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, Some(now_epoch_secs() - 10))
        .await;
    // Eight containers: eight services, one table.
    let services: Vec<AccessTokenService> = (0..8).map(|_| service(&fx, &[])).collect();
    let answers = futures_util::future::join_all(services.iter().map(|s| vend(s, json!({}))))
        .await
        .into_iter()
        .map(|answer| answer.expect("every caller gets a token"))
        .collect::<Vec<_>>();
    assert_eq!(refresh_requests(&fx), 1, "exactly one refresh");
    assert_eq!(token_errors(&fx), 0, "no invalid_grant");
    let first = token(&answers[0]);
    assert!(
        answers.iter().all(|a| token(a) == first),
        "one token for all"
    );
    assert!(answers.iter().all(|a| a["generation"] == 2));
    assert!(live(&answers[0]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_rejection_is_probed_before_anything_rotates() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = service(&fx, &[]);
    let given = vend(&service, json!({})).await.unwrap();
    assert_eq!(given["generation"], 1);

    // The caller's 401 was not about the token: Keap accepts it, nothing rotates.
    fx.sandbox.clear_requests();
    let same = vend(&service, json!({"rejected_generation": 1}))
        .await
        .unwrap();
    assert_eq!(token(&same), token(&given));
    assert_eq!(refresh_requests(&fx), 0);
    assert_eq!(
        api_requests(&fx).len(),
        1,
        "one probe: GET /v1/account/profile"
    );

    // Keap refuses it: one rotation, the new token is live.
    fx.sandbox.expire_access_tokens();
    let renewed = vend(&service, json!({"rejected_generation": 1}))
        .await
        .unwrap();
    assert_eq!(renewed["generation"], 2);
    assert_ne!(token(&renewed), token(&given));
    assert!(live(&renewed).await);
    assert_eq!(refresh_requests(&fx), 1);

    // Refused again within 10 minutes: no second rotation.
    fx.sandbox.expire_access_tokens();
    let error = vend(&service, json!({"rejected_generation": 2}))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AccessTokenError::Unavailable(_)),
        "{error:?}"
    );
    assert_eq!(
        refresh_requests(&fx),
        1,
        "at most one rotation per 10 minutes"
    );

    // An older generation: the current token, no Keap call at all.
    fx.sandbox.clear_requests();
    let current = vend(&service, json!({"rejected_generation": 1}))
        .await
        .unwrap();
    assert_eq!(current["generation"], 2);
    assert_eq!(token(&current), token(&renewed));
    assert_eq!(fx.sandbox.requests().len(), 0);
    assert_eq!(token_errors(&fx), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_connection_is_refused_and_the_key_appears_nowhere() {
    capture_logs();
    let fx = Fixture::new().await;
    let (key, key_secret) = seed_key_connection(&fx, "sales", APP).await;
    let emulator = keapalive_tests::emulator::Emulator::shared();
    let key_reads_before: u64 = emulator
        .request_counts_for(&key_secret)
        .await
        .values()
        .sum();
    let service = service(&fx, &[]);
    let error = vend(&service, json!({"connection_id": "sales"}))
        .await
        .unwrap_err();
    let AccessTokenError::Validation(message) = &error else {
        panic!("{error:?}");
    };
    assert!(message.contains("keap-proxy"), "{message}");
    assert!(!message.contains(&key));
    assert!(fx.sandbox.requests().is_empty(), "no Keap request");
    let key_reads: u64 = emulator
        .request_counts_for(&key_secret)
        .await
        .values()
        .sum();
    assert_eq!(
        key_reads, key_reads_before,
        "the key's secret was read (access-token's role may not read key secrets)"
    );
    assert_logs_never_contain(&[&key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_connections_are_served_and_bad_requests_are_refused() {
    let fx = Fixture::new().await;
    fx.seed_connection("default", APP, None).await;
    let service = service(&fx, &[("KEAPALIVE_PROXY_CONNECTIONS", "sales")]);
    let error = vend(&service, json!({})).await.unwrap_err();
    assert!(
        matches!(&error, AccessTokenError::Validation(m) if m.contains("KEAPALIVE_PROXY_CONNECTIONS")),
        "{error:?}"
    );
    let open = self::service(&fx, &[]);
    for request in [
        json!({"min_valid_secs": 0}),
        json!({"min_valid_secs": 21_601}),
        json!({"rejected_generation": "7"}),
        json!({"access_token": "x"}),
    ] {
        let error = vend(&open, request.clone()).await.unwrap_err();
        assert!(
            matches!(error, AccessTokenError::Validation(_)),
            "{request}: {error:?}"
        );
    }
    assert!(fx.sandbox.requests().is_empty());
}

/// The real binary at TRACE: a refresh, a probe, a renewal; no token of any generation, and no
/// client secret, in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_at_trace_logs_no_token() {
    let fx = Fixture::new().await;
    let issued = fx
        .seed_connection("default", APP, Some(now_epoch_secs() - 10))
        .await;
    let (runtime, mut function) =
        function_binary(&fx, "access-token", &[("AWS_LAMBDA_LOG_LEVEL", "trace")]).await;
    let limit = Duration::from_secs(30);
    let first = runtime.invoke(json!({}), limit).await.unwrap();
    assert_eq!(first["generation"], 2);
    fx.sandbox.expire_access_tokens();
    let second = runtime
        .invoke(json!({"rejected_generation": 2}), limit)
        .await
        .unwrap();
    assert_eq!(second["generation"], 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    function.kill().await;
    let output = function.output();
    assert!(
        output.contains("\"TRACE\"") || output.contains("\"DEBUG\""),
        "the binary logged below INFO"
    );
    for secret in [
        issued.access_token.as_str(),
        issued.refresh_token.as_str(),
        &token(&first),
        &token(&second),
        keapalive_tests::fixture::CLIENT_SECRET,
    ] {
        assert!(
            !output.contains(secret),
            "a token or secret reached the output:\n{output}"
        );
    }
}
