//! Keap's client follows no redirect (docs/design.md, "Containment"): a 3xx is an `Unavailable`
//! answer naming the host, and the host it names receives nothing — no refresh token, no client
//! secret, no API key. A capture server plays that host.

use keap_sandbox::{Endpoint, Fault, FaultKind};
use keapalive::contact::UpsertError;
use keapalive::deadline::Deadline;
use keapalive::refresh::{RefreshOutcome, RunGuard};
use keapalive_tests::fixture::{CLIENT_SECRET, Fixture, connection_id};
use secrecy::ExposeSecret;
use serde_json::json;
use std::time::Duration;

use crate::support::*;

const APP: &str = "redirect01";

fn redirect_to(capture: &CaptureServer, endpoint: Endpoint, path: &str) -> Fault {
    Fault {
        endpoint,
        kind: FaultKind::Redirect {
            status: 307,
            location: format!("{}{path}", capture.url),
        },
        times: 1,
    }
}

#[tokio::test]
async fn a_redirected_refresh_delivers_nothing_and_releases_the_lease() {
    let fx = Fixture::new().await;
    let issued = fx
        .seed_connection(
            "default",
            APP,
            Some(keapalive::clock::now_epoch_secs() + 60),
        )
        .await;
    let capture = CaptureServer::start().await;
    let fault = fx
        .sandbox
        .inject(redirect_to(&capture, Endpoint::Token, "/token"));
    let refresher = fx.clients(&[]).refresher();
    let id = connection_id("default");
    let before = fx.store().get(&id).await.unwrap().unwrap();

    let outcome = refresher
        .refresh(
            &before,
            Deadline::after(Duration::from_secs(60)),
            false,
            &RunGuard::new(),
        )
        .await
        .unwrap();

    let RefreshOutcome::FailedTransient { reason } = &outcome else {
        panic!("a redirect is a transient failure: {outcome:?}");
    };
    fault.assert_fired(1);
    assert!(reason.contains("redirect"), "{reason}");
    assert!(
        reason.contains("127.0.0.1"),
        "the answer names the host: {reason}"
    );
    assert_eq!(capture.received(), "", "the redirect was followed");
    let after = fx.store().get(&id).await.unwrap().unwrap();
    assert!(after.lease.is_none(), "the lease is released");
    assert_eq!(after.generation, 1);
    // Keap did not consume the token: the same one refreshes on the next try.
    let retried = refresher
        .refresh(
            &after,
            Deadline::after(Duration::from_secs(60)),
            false,
            &RunGuard::new(),
        )
        .await
        .unwrap();
    assert!(
        matches!(retried, RefreshOutcome::Refreshed { .. }),
        "{retried:?}"
    );
    let stored = fx.store().get(&id).await.unwrap().unwrap();
    assert_ne!(
        stored.tokens.unwrap().refresh_token.expose_secret(),
        issued.refresh_token
    );
    assert!(!capture.received().contains(&issued.refresh_token));
    assert!(!capture.received().contains(CLIENT_SECRET));
}

#[tokio::test]
async fn a_redirected_rest_call_carries_neither_key_nor_token_and_is_not_retried() {
    let fx = Fixture::new().await;
    let (key, _) = seed_key_connection(&fx, "keyed", APP).await;
    let issued = fx.seed_connection("default", APP, None).await;
    let warm = container(&fx, &[]);

    for (connection, credential) in [("keyed", &key), ("default", &issued.access_token)] {
        let capture = CaptureServer::start().await;
        let fault = fx.sandbox.inject(redirect_to(
            &capture,
            Endpoint::Api,
            "/crm/rest/v1/contacts",
        ));
        let before = api_requests(&fx).len();

        let answer = upsert(
            &warm.service,
            json!({"connection_id": connection, "contact": {"email": "ada@buttonpush.example"}}),
        )
        .await
        .unwrap_err();

        fault.assert_fired(1);
        assert!(matches!(answer, UpsertError::Unavailable(_)), "{answer:?}");
        assert!(answer.to_string().contains("redirect"), "{answer}");
        assert_eq!(
            capture.received(),
            "",
            "{connection}: the redirect was followed"
        );
        assert!(!answer.to_string().contains(credential.as_str()));
        assert_eq!(
            api_requests(&fx).len() - before,
            1,
            "{connection}: a redirect is not asked again"
        );
    }
}
