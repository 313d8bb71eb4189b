//! Fault injection, latency and the request log.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use keap_sandbox::{Endpoint, Fault, FaultKind, most_in_flight};

fn fault(endpoint: Endpoint, kind: FaultKind, times: u32) -> Fault {
    Fault {
        endpoint,
        kind,
        times,
    }
}

#[tokio::test]
async fn drop_after_processing_closes_the_connection_and_the_refresh_token_is_consumed() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    sandbox.inject(fault(Endpoint::Token, FaultKind::DropAfterProcessing, 1));

    let error = try_refresh_at(&client, &sandbox.token_url(), &pair.refresh_token)
        .await
        .expect_err("no response arrives");
    assert!(!error.is_timeout() && !error.is_status(), "{error:?}");

    // Keap rotated the pair although the client never saw it.
    let issued = sandbox.current_refresh_token(APP).expect("a live pair");
    assert_ne!(issued, pair.refresh_token);
    let retry = refresh(&sandbox, &client, &pair.refresh_token).await;
    assert_eq!(retry.status(), 400);
    assert_eq!(json(retry).await["error"], "invalid_grant");
    assert_eq!(refresh(&sandbox, &client, &issued).await.status(), 200);

    let statuses: Vec<u16> = sandbox.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [0, 400, 200],
        "one attempt each, no hidden retries"
    );
}

#[tokio::test]
async fn drop_before_processing_consumes_nothing() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    sandbox.inject(fault(Endpoint::Token, FaultKind::DropBeforeProcessing, 1));
    let error = try_refresh_at(&client, &sandbox.token_url(), &pair.refresh_token)
        .await
        .expect_err("connection closed");
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(
        sandbox.current_refresh_token(APP).as_deref(),
        Some(pair.refresh_token.as_str())
    );
    assert_eq!(
        refresh(&sandbox, &client, &pair.refresh_token)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after_and_changes_nothing() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    sandbox.inject(fault(
        Endpoint::Token,
        FaultKind::Status {
            status: 429,
            retry_after_secs: Some(7),
        },
        1,
    ));
    let throttled = refresh(&sandbox, &client, &pair.refresh_token).await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "7");
    assert_eq!(
        json(throttled).await["fault"]["detail"]["errorcode"],
        "policies.ratelimit.QuotaViolation"
    );
    let ok = refresh(&sandbox, &client, &pair.refresh_token).await;
    assert_eq!(
        ok.status(),
        200,
        "the fault applied once and consumed nothing"
    );

    let log = sandbox.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].status, 429);
    assert_eq!(
        log[0].grant_type.as_deref(),
        Some("refresh_token"),
        "faulted requests are logged in full"
    );
    assert_eq!(log[0].app.as_deref(), Some(APP));
}

#[tokio::test]
async fn faults_match_their_endpoint_and_count_down() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    sandbox.inject(fault(
        Endpoint::Api,
        FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        2,
    ));
    sandbox.inject(fault(
        Endpoint::Any,
        FaultKind::Status {
            status: 500,
            retry_after_secs: None,
        },
        1,
    ));
    // The token request skips the Api fault and takes the Any one.
    assert_eq!(
        refresh(&sandbox, &client, &pair.refresh_token)
            .await
            .status(),
        500
    );
    let rotated = json(refresh(&sandbox, &client, &pair.refresh_token).await).await;
    let access = rotated["access_token"].as_str().unwrap();
    assert_eq!(profile_status(&sandbox, &client, access).await, 503);
    let second = client
        .get(api(&sandbox, "/account/profile"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    assert!(second.headers().get("retry-after").is_none());
    assert_eq!(profile_status(&sandbox, &client, access).await, 200);

    sandbox.inject(fault(
        Endpoint::Authorize,
        FaultKind::DropBeforeProcessing,
        1,
    ));
    assert_eq!(profile_status(&sandbox, &client, access).await, 200);
    let authorize = client
        .get(with_query(
            &sandbox.authorize_url(),
            &[("client_id", CLIENT_ID), ("redirect_uri", REDIRECT_URI)],
        ))
        .send()
        .await;
    assert!(authorize.is_err());
}

#[tokio::test]
async fn delay_processes_first_so_a_timed_out_refresh_still_rotates() {
    let (sandbox, _) = start().await;
    let pair = grant(&sandbox);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    sandbox.inject(fault(
        Endpoint::Token,
        FaultKind::Delay(Duration::from_millis(600)),
        1,
    ));
    let error = try_refresh_at(&impatient, &sandbox.token_url(), &pair.refresh_token)
        .await
        .expect_err("the client gives up");
    assert!(error.is_timeout(), "{error:?}");
    assert_ne!(
        sandbox.current_refresh_token(APP).as_deref(),
        Some(pair.refresh_token.as_str())
    );

    // The request finishes on the server although the client left.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let log = sandbox.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, 200);
    assert!(log[0].handling >= Duration::from_millis(600));
}

async fn concurrent_refreshes_overlap(count: usize, latency: Duration) {
    let (sandbox, client) = start().await;
    sandbox.set_latency(Endpoint::Token, latency);
    let tokens: Vec<String> = (0..count)
        .map(|i| {
            sandbox
                .issue_grant(CLIENT_ID, &format!("app{i}"))
                .refresh_token
        })
        .collect();
    let token_url = Arc::new(sandbox.token_url());
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens {
        let (client, token_url) = (client.clone(), token_url.clone());
        tasks.spawn(async move { refresh_at(&client, &token_url, &token).await.status() });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), 200);
    }
    let log = sandbox.requests();
    let overlap = most_in_flight(&log);
    assert!(
        overlap >= 5,
        "at most {overlap} of {count} requests in flight at once: latency must not serialize them"
    );
    assert_eq!(log.len(), count);
    assert!(log.iter().all(|r| r.handling >= latency));
    assert!(
        log.windows(2).all(|w| w[0].at <= w[1].at),
        "ordered by arrival"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_added_concurrently_for_100_requests() {
    concurrent_refreshes_overlap(100, Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_added_concurrently_for_1000_requests() {
    concurrent_refreshes_overlap(1000, Duration::from_millis(50)).await;
}

#[tokio::test]
async fn latency_can_be_turned_off_and_applies_only_to_its_endpoint() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    sandbox.set_latency(Endpoint::Api, Duration::from_millis(120));
    assert_eq!(
        profile_status(&sandbox, &client, &pair.access_token).await,
        200
    );
    assert_eq!(
        refresh(&sandbox, &client, &pair.refresh_token)
            .await
            .status(),
        200
    );
    sandbox.set_latency(Endpoint::Api, Duration::ZERO);
    assert_eq!(
        profile_status(&sandbox, &client, &pair.access_token).await,
        200
    );
    let handling: Vec<Duration> = sandbox.requests().iter().map(|r| r.handling).collect();
    assert!(handling[0] >= Duration::from_millis(120));
    assert!(handling[1] < Duration::from_millis(120));
    assert!(handling[2] < Duration::from_millis(120));
}

#[tokio::test]
async fn request_log_counts_every_request_and_can_be_cleared() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    for _ in 0..3 {
        profile_status(&sandbox, &client, &pair.access_token).await;
    }
    refresh(&sandbox, &client, &pair.refresh_token).await;
    refresh(&sandbox, &client, &pair.refresh_token).await;
    let log = sandbox.requests();
    assert_eq!(log.len(), 5);
    let api_calls = log
        .iter()
        .filter(|r| r.path == "/crm/rest/v1/account/profile" && r.method == "GET")
        .count();
    assert_eq!(api_calls, 3);
    let token_statuses: Vec<u16> = log
        .iter()
        .filter(|r| r.path == "/token")
        .map(|r| r.status)
        .collect();
    assert_eq!(token_statuses, [200, 400]);
    assert!(log.iter().all(|r| r.app.as_deref() == Some(APP)));
    let debug = format!("{log:?}");
    assert!(!debug.contains(&pair.access_token) && !debug.contains(&pair.refresh_token));
    assert!(!debug.contains(CLIENT_SECRET));

    sandbox.clear_requests();
    assert!(sandbox.requests().is_empty());
    profile_status(&sandbox, &client, &pair.access_token).await;
    assert_eq!(sandbox.requests().len(), 1);
}

#[tokio::test]
async fn dropping_the_sandbox_stops_the_server() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    assert_eq!(
        profile_status(&sandbox, &client, &pair.access_token).await,
        200
    );
    let url = api(&sandbox, "/account/profile");
    drop(sandbox);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = client.get(url).bearer_auth(&pair.access_token).send().await;
    assert!(after.is_err(), "{after:?}");
}

#[tokio::test]
async fn each_fault_counts_the_requests_it_answered() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    let api = sandbox.inject(fault(
        Endpoint::Api,
        FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        1,
    ));
    let token = sandbox.inject(fault(
        Endpoint::Token,
        FaultKind::Status {
            status: 429,
            retry_after_secs: None,
        },
        2,
    ));
    assert_eq!((api.fired(), token.fired()), (0, 0));

    assert_eq!(
        refresh(&sandbox, &client, &pair.refresh_token)
            .await
            .status(),
        429
    );
    assert_eq!(
        (api.fired(), token.fired()),
        (0, 1),
        "only the matching fault"
    );
    assert_eq!(
        refresh(&sandbox, &client, &pair.refresh_token)
            .await
            .status(),
        429
    );
    let rotated = refresh(&sandbox, &client, &pair.refresh_token).await;
    assert_eq!(rotated.status(), 200);
    assert_eq!(token.fired(), 2, "used up, and its count kept");
    token.assert_fired(2);
    let unfired = std::panic::catch_unwind(|| api.assert_fired(1));
    assert!(
        unfired.is_err(),
        "a fault that never fired fails its assertion"
    );

    // Each refresh-token presentation is numbered per token (I1's evidence).
    let presentations: Vec<Option<u32>> =
        sandbox.requests().iter().map(|r| r.presentation).collect();
    assert_eq!(presentations, [Some(1), Some(2), Some(3)]);
}
