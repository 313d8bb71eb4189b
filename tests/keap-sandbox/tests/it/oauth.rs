//! OAuth behaviour: authorize redirects, code exchange, refresh-token rotation.

use std::collections::HashMap;

use crate::support::*;
use keap_sandbox::{AuthKind, Consent};
use serde_json::json;

async fn authorize(
    sandbox: &keap_sandbox::Sandbox,
    client: &reqwest::Client,
    params: &[(&str, &str)],
) -> reqwest::Response {
    client
        .get(with_query(&sandbox.authorize_url(), params))
        .send()
        .await
        .expect("authorize answered")
}

fn location_query(response: &reqwest::Response) -> (String, HashMap<String, String>) {
    let location = response
        .headers()
        .get("location")
        .expect("Location header")
        .to_str()
        .expect("ASCII location")
        .to_owned();
    let url = url::Url::parse(&location).expect("absolute Location");
    let params = url.query_pairs().into_owned().collect();
    (location, params)
}

async fn code_for(
    sandbox: &keap_sandbox::Sandbox,
    client: &reqwest::Client,
    redirect_uri: &str,
) -> String {
    let response = authorize(
        sandbox,
        client,
        &[
            ("client_id", CLIENT_ID),
            ("redirect_uri", redirect_uri),
            ("response_type", "code"),
            ("scope", "full"),
            ("state", "s1"),
        ],
    )
    .await;
    assert_eq!(response.status(), 302);
    location_query(&response).1["code"].clone()
}

async fn exchange(
    sandbox: &keap_sandbox::Sandbox,
    client: &reqwest::Client,
    client_id: &str,
    code: &str,
    redirect_uri: &str,
) -> reqwest::Response {
    client
        .post(sandbox.token_url())
        .form(&[
            ("client_id", client_id),
            ("client_secret", CLIENT_SECRET),
            ("code", code),
            ("grant_type", "authorization_code"),
            ("redirect_uri", redirect_uri),
        ])
        .send()
        .await
        .expect("token answered")
}

#[tokio::test]
async fn approve_redirects_with_code_and_state_and_the_code_works_once() {
    let (sandbox, client) = start().await;
    let response = authorize(
        &sandbox,
        &client,
        &[
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("response_type", "code"),
            ("scope", "full"),
            ("state", "abc 123/+"),
        ],
    )
    .await;
    assert_eq!(response.status(), 302);
    let (location, params) = location_query(&response);
    assert!(location.starts_with(&format!("{REDIRECT_URI}?code=")));
    assert_eq!(params["state"], "abc 123/+");
    let code = params["code"].clone();
    assert!(code.len() >= 16);

    let first = exchange(&sandbox, &client, CLIENT_ID, &code, REDIRECT_URI).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["cache-control"], "no-store");
    let body = json(first).await;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86400);
    assert_eq!(body["scope"], "full|sandbox01.infusionsoft.com");
    let access = body["access_token"].as_str().unwrap();
    let refresh_token = body["refresh_token"].as_str().unwrap();
    assert_ne!(access, refresh_token);
    assert_eq!(profile_status(&sandbox, &client, access).await, 200);
    assert_eq!(
        sandbox.current_refresh_token(APP).as_deref(),
        Some(refresh_token)
    );

    let again = exchange(&sandbox, &client, CLIENT_ID, &code, REDIRECT_URI).await;
    assert_eq!(again.status(), 400);
    assert_eq!(
        json(again).await,
        json!({"error": "invalid_grant", "error_description": "Invalid authorization code"})
    );

    let log = sandbox.requests();
    let token_requests: Vec<_> = log.iter().filter(|r| r.path == "/token").collect();
    assert_eq!(token_requests.len(), 2);
    assert!(token_requests.iter().all(|r| r.auth == AuthKind::None
        && r.form_client_id.as_deref() == Some(CLIENT_ID)
        && r.grant_type.as_deref() == Some("authorization_code")));
    assert_eq!(token_requests[0].app.as_deref(), Some(APP));
}

#[tokio::test]
async fn code_is_bound_to_the_exact_redirect_uri_and_the_client() {
    let (sandbox, client) = start().await;
    sandbox.register_client("other-client", CLIENT_SECRET);
    let code = code_for(&sandbox, &client, REDIRECT_URI).await;

    for wrong in [
        "https://example.com/oauth/callback/",
        "https://example.com/oauth/callback?x=1",
        "https://evil.example/oauth/callback",
    ] {
        let response = exchange(&sandbox, &client, CLIENT_ID, &code, wrong).await;
        assert_eq!(response.status(), 400, "{wrong}");
        assert_eq!(json(response).await["error"], "invalid_grant");
    }
    let response = exchange(&sandbox, &client, "other-client", &code, REDIRECT_URI).await;
    assert_eq!(response.status(), 400);
    assert_eq!(json(response).await["error"], "invalid_grant");

    // A failed attempt does not burn the code for its rightful client.
    let response = exchange(&sandbox, &client, CLIENT_ID, &code, REDIRECT_URI).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn code_exchange_rejects_wrong_client_credentials_with_401() {
    let (sandbox, client) = start().await;
    let code = code_for(&sandbox, &client, REDIRECT_URI).await;
    let response = client
        .post(sandbox.token_url())
        .form(&[
            ("client_id", CLIENT_ID),
            ("client_secret", "wrong"),
            ("code", code.as_str()),
            ("grant_type", "authorization_code"),
            ("redirect_uri", REDIRECT_URI),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        json(response).await,
        json!({"error": "invalid_client", "error_description": "Invalid client credentials"})
    );
    // HTTP Basic is accepted for the exchange too, and the code survived the rejected attempt.
    let response = client
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("code", code.as_str()),
            ("grant_type", "authorization_code"),
            ("redirect_uri", REDIRECT_URI),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn denial_redirect_matches_keaps() {
    let (sandbox, client) = start().await;
    sandbox.set_consent(Consent::Deny);
    let response = authorize(
        &sandbox,
        &client,
        &[
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("response_type", "code"),
            ("scope", "full"),
        ],
    )
    .await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "https://example.com/oauth/callback?state=&error=access_denied&error_description=User+denied+access+to+resource&error_uri=https%3A%2F%2Fdeveloper.infusionsoft.com%2Fdocs%2Fread%2FGetting_Started_With_OAuth2"
    );
}

#[tokio::test]
async fn authorize_refuses_bad_requests_without_redirecting() {
    let (sandbox, client) = start().await;
    let cases: [&[(&str, &str)]; 5] = [
        &[("client_id", "unknown"), ("redirect_uri", REDIRECT_URI)],
        &[
            ("client_id", CLIENT_ID),
            ("redirect_uri", "/oauth/callback"),
        ],
        &[
            ("client_id", CLIENT_ID),
            ("redirect_uri", "http://example.com/cb"),
        ],
        &[
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("response_type", "token"),
        ],
        &[("redirect_uri", REDIRECT_URI)],
    ];
    for params in cases {
        let response = authorize(&sandbox, &client, params).await;
        assert_eq!(response.status(), 400, "{params:?}");
        assert!(response.headers().get("location").is_none());
    }
    // Loopback callbacks may be plain http (the local demo).
    let code = code_for(&sandbox, &client, "http://127.0.0.1:9/cb").await;
    assert!(!code.is_empty());
}

#[tokio::test]
async fn reused_refresh_token_gets_invalid_grant_with_keaps_body() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    let first = refresh(&sandbox, &client, &pair.refresh_token).await;
    assert_eq!(first.status(), 200);
    let rotated = json(first).await;
    assert_ne!(rotated["refresh_token"], pair.refresh_token.as_str());
    assert_eq!(rotated["scope"], "full|sandbox01.infusionsoft.com");

    let second = refresh(&sandbox, &client, &pair.refresh_token).await;
    assert_eq!(second.status(), 400);
    assert_eq!(
        second.text().await.unwrap(),
        r#"{"error":"invalid_grant","error_description":"Invalid refresh token"}"#
    );
    // The rotated token is the live one and works exactly once.
    let rotated_token = rotated["refresh_token"].as_str().unwrap();
    assert_eq!(
        sandbox.current_refresh_token(APP).as_deref(),
        Some(rotated_token)
    );
    assert_eq!(
        refresh(&sandbox, &client, rotated_token).await.status(),
        200
    );
    assert_eq!(
        refresh(&sandbox, &client, rotated_token).await.status(),
        400
    );
    assert_eq!(
        refresh(&sandbox, &client, "never-issued").await.status(),
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uses_of_one_refresh_token_let_exactly_one_win() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    let start_together = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, url, token) = (
            client.clone(),
            sandbox.token_url(),
            pair.refresh_token.clone(),
        );
        let start_together = start_together.clone();
        attempts.spawn(async move {
            start_together.wait().await;
            let response = refresh_at(&client, &url, &token).await;
            (response.status().as_u16(), json(response).await)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = attempts.join_next().await {
        let (status, body) = joined.expect("attempt task");
        match status {
            200 => winners.push(body),
            400 => assert_eq!(body["error"], "invalid_grant"),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(
        sandbox.current_refresh_token(APP).as_deref(),
        winners[0]["refresh_token"].as_str()
    );
    let log = sandbox.requests();
    assert_eq!(log.len(), 32);
    assert_eq!(log.iter().filter(|r| r.status == 200).count(), 1);
    assert!(
        log.iter()
            .all(|r| r.grant_type.as_deref() == Some("refresh_token")
                && r.auth
                    == AuthKind::Basic {
                        client_id: CLIENT_ID.into()
                    })
    );
}

#[tokio::test]
async fn refresh_requires_http_basic_and_a_rejected_attempt_consumes_nothing() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);

    let credentials_in_body = client
        .post(sandbox.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", pair.refresh_token.as_str()),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(credentials_in_body.status(), 401);
    assert_eq!(json(credentials_in_body).await["error"], "invalid_client");

    let wrong_secret = client
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some("wrong"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", pair.refresh_token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_secret.status(), 401);

    // The id passed as the secret: a mistake a forum user made.
    let id_as_secret = client
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_ID))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", pair.refresh_token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(id_as_secret.status(), 401);

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
async fn token_endpoint_accepts_only_a_form_body() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    let as_json = client
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .json(&json!({"grant_type": "refresh_token", "refresh_token": pair.refresh_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_json.status(), 400);
    assert_eq!(json(as_json).await["error"], "invalid_request");

    let in_query = client
        .post(with_query(
            &sandbox.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", pair.refresh_token.as_str()),
            ],
        ))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(in_query.status(), 400);
    assert_eq!(json(in_query).await["error"], "invalid_request");

    let unknown_grant = client
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_grant.status(), 400);
    assert_eq!(json(unknown_grant).await["error"], "unsupported_grant_type");

    assert_eq!(
        refresh(&sandbox, &client, &pair.refresh_token)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn old_access_token_stays_valid_after_refresh_until_it_expires() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    let rotated = json(refresh(&sandbox, &client, &pair.refresh_token).await).await;
    let new_access = rotated["access_token"].as_str().unwrap();
    assert_eq!(
        profile_status(&sandbox, &client, &pair.access_token).await,
        200
    );
    assert_eq!(profile_status(&sandbox, &client, new_access).await, 200);

    sandbox.expire_access_tokens();
    let expired = client
        .get(api(&sandbox, "/account/profile"))
        .bearer_auth(&pair.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    assert_eq!(
        json(expired).await,
        json!({"fault": {"faultstring": "Access Token expired",
                         "detail": {"errorcode": "keymanagement.service.access_token_expired"}}})
    );
    assert_eq!(profile_status(&sandbox, &client, new_access).await, 401);

    // Refreshing still works and yields a token that is valid again.
    let next = json(
        refresh(
            &sandbox,
            &client,
            rotated["refresh_token"].as_str().unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(
        profile_status(&sandbox, &client, next["access_token"].as_str().unwrap()).await,
        200
    );
}

#[tokio::test]
async fn access_token_lifetime_applies_to_new_tokens() {
    let (sandbox, client) = start().await;
    sandbox.set_access_token_lifetime(1);
    let pair = grant(&sandbox);
    assert_eq!(pair.expires_in, 1);
    assert_eq!(
        profile_status(&sandbox, &client, &pair.access_token).await,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        profile_status(&sandbox, &client, &pair.access_token).await,
        401
    );
}

#[tokio::test]
async fn reauthorization_replaces_the_grant_but_old_access_tokens_live_on() {
    let (sandbox, client) = start().await;
    let first = grant(&sandbox);
    let code = code_for(&sandbox, &client, REDIRECT_URI).await;
    let second = json(exchange(&sandbox, &client, CLIENT_ID, &code, REDIRECT_URI).await).await;

    assert_eq!(
        refresh(&sandbox, &client, &first.refresh_token)
            .await
            .status(),
        400
    );
    assert_eq!(
        profile_status(&sandbox, &client, &first.access_token).await,
        200
    );
    assert_eq!(
        sandbox.current_refresh_token(APP).as_deref(),
        second["refresh_token"].as_str()
    );
    assert_eq!(
        refresh(&sandbox, &client, second["refresh_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn revoking_the_grant_kills_access_and_refresh_tokens_of_that_app_only() {
    let (sandbox, client) = start().await;
    let revoked = grant(&sandbox);
    let other = sandbox.issue_grant(CLIENT_ID, "otherapp");
    sandbox.revoke_grant(APP);

    let response = client
        .get(api(&sandbox, "/account/profile"))
        .bearer_auth(&revoked.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        json(response).await,
        json!({"fault": {"faultstring": "Invalid Access Token",
                         "detail": {"errorcode": "keymanagement.service.invalid_access_token"}}})
    );
    let refused = refresh(&sandbox, &client, &revoked.refresh_token).await;
    assert_eq!(refused.status(), 400);
    assert_eq!(
        json(refused).await["error_description"],
        "Invalid refresh token"
    );
    assert_eq!(sandbox.current_refresh_token(APP), None);

    assert_eq!(
        profile_status(&sandbox, &client, &other.access_token).await,
        200
    );
    assert_eq!(
        refresh(&sandbox, &client, &other.refresh_token)
            .await
            .status(),
        200
    );
}
