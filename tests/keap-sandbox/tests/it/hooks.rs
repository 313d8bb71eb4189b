//! REST Hooks: the subscription API with its `X-Hook-Secret` handshake, and deliveries with
//! Keap's retry policy, against a scripted receiver on 127.0.0.1.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use keap_sandbox::{
    Endpoint, Fault, FaultKind, HookEvent, HookRequestKind, HookStatus, ObjectKey, Sandbox,
};
use reqwest::Client;
use serde_json::{Value, json};

use crate::support::*;

/// How the receiver answers one delivery.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Answers 200, but only after the sandbox's (scaled) timeout has passed.
    TooSlow,
    /// A 307 to another URL, which the sandbox must not follow.
    Redirect,
}

#[derive(Default)]
struct Script {
    echo: bool,
    /// Handshake secrets seen, in order.
    secrets: Vec<String>,
    /// Delivery bodies seen, in order.
    deliveries: Vec<Value>,
    /// Answers for the next deliveries; 200 once they run out.
    answers: VecDeque<Answer>,
}

/// A hook receiver: echoes the handshake when told to, answers deliveries as scripted.
#[derive(Clone)]
struct Receiver {
    url: String,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    async fn start(echo: bool) -> Receiver {
        let script = Arc::new(Mutex::new(Script {
            echo,
            ..Script::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/keap/hooks/t0ken", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/keap/hooks/{token}", post(receive))
            .with_state(script.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, script }
    }

    fn set_echo(&self, echo: bool) {
        self.script.lock().unwrap().echo = echo;
    }

    fn answer_next(&self, answers: &[Answer]) {
        self.script.lock().unwrap().answers.extend(answers);
    }

    fn secrets(&self) -> Vec<String> {
        self.script.lock().unwrap().secrets.clone()
    }

    fn deliveries(&self) -> Vec<Value> {
        self.script.lock().unwrap().deliveries.clone()
    }
}

async fn receive(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(secret) = headers.get("x-hook-secret") {
        let secret = secret.to_str().unwrap().to_owned();
        let mut script = script.lock().unwrap();
        script.secrets.push(secret.clone());
        if script.echo {
            return (StatusCode::OK, [("X-Hook-Secret", secret)]).into_response();
        }
        return StatusCode::OK.into_response();
    }
    let answer = {
        let mut script = script.lock().unwrap();
        script
            .deliveries
            .push(serde_json::from_slice(&body).unwrap());
        script.answers.pop_front().unwrap_or(Answer::Status(200))
    };
    match answer {
        Answer::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Answer::TooSlow => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK.into_response()
        }
        Answer::Redirect => (
            StatusCode::TEMPORARY_REDIRECT,
            [("Location", "http://127.0.0.1:9/elsewhere")],
        )
            .into_response(),
    }
}

/// Delays of 30–60 ms, 30–60 ms, 0.3 s, 1.8 s; a 0.6 s answer timeout (a loaded machine still
/// answers a local request in time).
fn fast(sandbox: &Sandbox) {
    sandbox.set_hook_delay_scale(0.001);
    sandbox.set_hook_timeout_scale(0.02);
}

async fn create_hook(
    sandbox: &Sandbox,
    client: &Client,
    token: &str,
    event_key: &str,
    hook_url: &str,
) -> reqwest::Response {
    client
        .post(api(sandbox, "/hooks"))
        .bearer_auth(token)
        .json(&json!({"eventKey": event_key, "hookUrl": hook_url}))
        .send()
        .await
        .unwrap()
}

async fn post_hook(
    sandbox: &Sandbox,
    client: &Client,
    token: &str,
    path: &str,
) -> reqwest::Response {
    client
        .post(api(sandbox, path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn contact_event(ids: std::ops::Range<i64>) -> HookEvent {
    HookEvent {
        event_key: "contact.add".to_owned(),
        object_type: None,
        object_keys: ids
            .map(|id| ObjectKey {
                id,
                api_url: String::new(),
                timestamp: "2026-12-05T10:00:00.000Z".to_owned(),
            })
            .collect(),
    }
}

fn status_of(sandbox: &Sandbox, key: &str) -> HookStatus {
    sandbox
        .hooks(APP)
        .into_iter()
        .find(|hook| hook.key == key)
        .expect("hook exists")
        .status
}

/// `(attempt, status)` of every delivery attempt to `key`.
fn delivery_attempts(sandbox: &Sandbox, key: &str) -> Vec<(u32, Option<u16>)> {
    sandbox
        .hook_attempts()
        .into_iter()
        .filter(|a| a.kind == HookRequestKind::Delivery && a.hook_key == key)
        .map(|a| (a.attempt, a.status))
        .collect()
}

async fn settle(sandbox: &Sandbox) {
    assert!(
        sandbox
            .wait_for_hook_deliveries(Duration::from_secs(20))
            .await,
        "deliveries still pending"
    );
}

#[tokio::test]
async fn event_keys_and_what_create_rejects() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let keys = client
        .get(api(&sandbox, "/hooks/event_keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status(), 200);
    let keys: Vec<String> = serde_json::from_value(json(keys).await).unwrap();
    for key in [
        "contact.add",
        "contact.edit",
        "contact.delete",
        "order.add",
        "invoice.payment.add",
        "contactGroup.applied",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} listed");
    }

    let receiver = Receiver::start(true).await;
    let unknown = create_hook(&sandbox, &client, &token, "contact.explode", &receiver.url).await;
    assert_eq!(unknown.status(), 400);
    assert!(json(unknown).await["message"].is_string());
    let bad_url = create_hook(&sandbox, &client, &token, "contact.add", "ftp://x/y").await;
    assert_eq!(bad_url.status(), 400);
    let malformed = client
        .post(api(&sandbox, "/hooks"))
        .bearer_auth(&token)
        .json(&json!({"eventKey": 5, "hookUrl": receiver.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        json(malformed).await["message"],
        "Input could not be converted to a valid request"
    );
    let anonymous = client
        .post(api(&sandbox, "/hooks"))
        .json(&json!({"eventKey": "contact.add", "hookUrl": receiver.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(sandbox.hooks(APP).is_empty(), "nothing was created");
    assert!(receiver.secrets().is_empty(), "nothing was verified");
}

#[tokio::test]
async fn an_echoing_receiver_is_verified_during_the_create_call() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let receiver = Receiver::start(true).await;
    let created = create_hook(&sandbox, &client, &token, "contact.add", &receiver.url).await;
    assert_eq!(created.status(), 200);
    let created = json(created).await;
    assert_eq!(created["eventKey"], "contact.add");
    assert_eq!(created["hookUrl"], receiver.url.as_str());
    assert_eq!(created["status"], "Verified");
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(receiver.secrets().len(), 1);
    let handshakes: Vec<_> = sandbox
        .hook_attempts()
        .into_iter()
        .filter(|a| a.kind == HookRequestKind::Verification)
        .collect();
    assert_eq!(handshakes.len(), 1);
    assert_eq!(
        (handshakes[0].status, handshakes[0].succeeded),
        (Some(200), true)
    );

    // A service account key of the same app sees it too: hooks belong to the app.
    let app_key = sandbox.issue_service_account_key(APP);
    let listed = client
        .get(api(&sandbox, "/hooks"))
        .header("X-Keap-API-Key", &app_key)
        .send()
        .await
        .unwrap();
    assert_eq!(json(listed).await, json!([created]));
    let got = client
        .get(api(&sandbox, &format!("/hooks/{key}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(json(got).await, created);
    // Another app's credential cannot see or delete it.
    let other = sandbox.issue_grant(CLIENT_ID, "otherapp").access_token;
    let foreign = client
        .delete(api(&sandbox, &format!("/hooks/{key}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);

    let deleted = client
        .delete(api(&sandbox, &format!("/hooks/{key}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = client
        .get(api(&sandbox, &format!("/hooks/{key}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    assert!(sandbox.hooks(APP).is_empty());
}

#[tokio::test]
async fn a_silent_receiver_stays_unverified_until_delayed_verify() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let receiver = Receiver::start(false).await;
    let created =
        json(create_hook(&sandbox, &client, &token, "order.add", &receiver.url).await).await;
    assert_eq!(created["status"], "Unverified");
    let key = created["key"].as_str().unwrap().to_owned();
    let secret = receiver
        .secrets()
        .pop()
        .expect("the handshake reached the receiver");

    // An Unverified hook receives nothing.
    fast(&sandbox);
    let event = HookEvent {
        event_key: "order.add".to_owned(),
        ..contact_event(1..2)
    };
    assert!(
        sandbox
            .deliver_hook_event(APP, event.clone())
            .unwrap()
            .is_empty()
    );

    let delayed = |secret: String| {
        client
            .post(api(&sandbox, &format!("/hooks/{key}/delayedVerify")))
            .bearer_auth(&token)
            .header("X-Hook-Secret", secret)
            .send()
    };
    assert_eq!(
        delayed("not-the-secret".into()).await.unwrap().status(),
        400
    );
    assert_eq!(status_of(&sandbox, &key), HookStatus::Unverified);
    let verified = delayed(secret).await.unwrap();
    assert_eq!(verified.status(), 200);
    assert_eq!(json(verified).await["status"], "Verified");

    assert_eq!(sandbox.deliver_hook_event(APP, event).unwrap(), vec![key]);
    settle(&sandbox).await;
    assert_eq!(receiver.deliveries().len(), 1);
}

#[tokio::test]
async fn a_delivery_reaches_the_receiver_in_keaps_shape_in_batches_of_1000() {
    let (sandbox, client) = start().await;
    fast(&sandbox);
    let token = grant(&sandbox).access_token;
    let receiver = Receiver::start(true).await;
    let other_key = Receiver::start(true).await;
    let key = json(create_hook(&sandbox, &client, &token, "contact.add", &receiver.url).await)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    create_hook(&sandbox, &client, &token, "contact.edit", &other_key.url).await;

    let event = HookEvent {
        object_keys: vec![ObjectKey {
            id: 42,
            api_url: "https://api.infusionsoft.com/crm/rest/v1/contacts/42".to_owned(),
            timestamp: "2026-12-05T10:00:00.000Z".to_owned(),
        }],
        ..contact_event(0..0)
    };
    assert_eq!(
        sandbox.deliver_hook_event(APP, event).unwrap(),
        vec![key.clone()]
    );
    settle(&sandbox).await;
    assert_eq!(
        receiver.deliveries(),
        vec![json!({
            "event_key": "contact.add",
            "object_type": "contact",
            "object_keys": [{
                "id": 42,
                "apiUrl": "https://api.infusionsoft.com/crm/rest/v1/contacts/42",
                "timestamp": "2026-12-05T10:00:00.000Z",
            }],
        })]
    );
    assert!(
        other_key.deliveries().is_empty(),
        "only the event key's hooks"
    );
    assert!(
        sandbox
            .deliver_hook_event("otherapp", contact_event(1..2))
            .unwrap()
            .is_empty(),
        "only the app's hooks"
    );
    assert!(
        sandbox
            .deliver_hook_event(
                APP,
                HookEvent {
                    event_key: "contact.explode".to_owned(),
                    ..contact_event(1..2)
                }
            )
            .is_err()
    );

    sandbox
        .deliver_hook_event(APP, contact_event(0..1500))
        .unwrap();
    settle(&sandbox).await;
    let mut sizes: Vec<usize> = receiver.deliveries()[1..]
        .iter()
        .map(|d| d["object_keys"].as_array().unwrap().len())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![500, 1000]);
    assert_eq!(status_of(&sandbox, &key), HookStatus::Verified);
}

#[tokio::test]
async fn three_failures_then_success_take_four_attempts_and_keep_the_hook_verified() {
    let (sandbox, client) = start().await;
    fast(&sandbox);
    let token = grant(&sandbox).access_token;
    let receiver = Receiver::start(true).await;
    let key = json(create_hook(&sandbox, &client, &token, "contact.add", &receiver.url).await)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    receiver.answer_next(&[Answer::Status(500), Answer::TooSlow, Answer::Status(429)]);
    sandbox
        .deliver_hook_event(APP, contact_event(1..3))
        .unwrap();
    settle(&sandbox).await;
    assert_eq!(
        delivery_attempts(&sandbox, &key),
        vec![(1, Some(500)), (2, None), (3, Some(429)), (4, Some(200))]
    );
    assert_eq!(receiver.deliveries().len(), 4, "the same body each time");
    assert!(receiver.deliveries().windows(2).all(|w| w[0] == w[1]));
    // The third attempt waits 5 min × 0.001 = 300 ms after the second, the fourth 1.8 s.
    let at: Vec<_> = sandbox
        .hook_attempts()
        .into_iter()
        .filter(|a| a.kind == HookRequestKind::Delivery)
        .map(|a| a.at)
        .collect();
    assert!(at[3] - at[2] >= Duration::from_millis(1800));
    assert!(at[2] - at[1] >= Duration::from_millis(300));
    assert_eq!(status_of(&sandbox, &key), HookStatus::Verified);
}

#[tokio::test]
async fn four_failures_make_the_hook_inactive_until_verify_succeeds() {
    let (sandbox, client) = start().await;
    fast(&sandbox);
    let token = grant(&sandbox).access_token;
    let receiver = Receiver::start(true).await;
    let key = json(create_hook(&sandbox, &client, &token, "contact.add", &receiver.url).await)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    receiver.answer_next(&[
        Answer::Status(503),
        Answer::Status(404),
        Answer::Status(400),
        Answer::Status(500),
    ]);
    sandbox
        .deliver_hook_event(APP, contact_event(1..2))
        .unwrap();
    settle(&sandbox).await;
    assert_eq!(
        delivery_attempts(&sandbox, &key),
        vec![
            (1, Some(503)),
            (2, Some(404)),
            (3, Some(400)),
            (4, Some(500))
        ]
    );
    assert_eq!(status_of(&sandbox, &key), HookStatus::Inactive);
    assert!(
        sandbox
            .deliver_hook_event(APP, contact_event(2..3))
            .unwrap()
            .is_empty()
    );

    // A verify the receiver does not echo leaves it Inactive; one it echoes re-activates it.
    receiver.set_echo(false);
    let failed = post_hook(&sandbox, &client, &token, &format!("/hooks/{key}/verify")).await;
    assert_eq!(failed.status(), 200);
    assert_eq!(json(failed).await["status"], "Inactive");
    receiver.set_echo(true);
    let verified = post_hook(&sandbox, &client, &token, &format!("/hooks/{key}/verify")).await;
    assert_eq!(json(verified).await["status"], "Verified");
    assert_eq!(receiver.secrets().len(), 3, "create and two verifies");
    assert_eq!(
        sandbox
            .deliver_hook_event(APP, contact_event(3..4))
            .unwrap(),
        vec![key]
    );
    settle(&sandbox).await;
    assert_eq!(receiver.deliveries().len(), 5);
}

#[tokio::test]
async fn a_410_makes_the_hook_inactive_at_once_and_a_redirect_is_not_followed() {
    let (sandbox, client) = start().await;
    fast(&sandbox);
    let token = grant(&sandbox).access_token;
    let receiver = Receiver::start(true).await;
    let key = json(create_hook(&sandbox, &client, &token, "contact.add", &receiver.url).await)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();

    // A 3xx is an answer Keap does not count as failed (and the sandbox never follows it).
    receiver.answer_next(&[Answer::Redirect]);
    sandbox
        .deliver_hook_event(APP, contact_event(1..2))
        .unwrap();
    settle(&sandbox).await;
    assert_eq!(delivery_attempts(&sandbox, &key), vec![(1, Some(307))]);

    sandbox.clear_hook_attempts();
    receiver.answer_next(&[Answer::Status(410)]);
    sandbox
        .deliver_hook_event(APP, contact_event(2..3))
        .unwrap();
    settle(&sandbox).await;
    assert_eq!(delivery_attempts(&sandbox, &key), vec![(1, Some(410))]);
    assert_eq!(status_of(&sandbox, &key), HookStatus::Inactive);
}

#[tokio::test]
async fn the_control_api_drives_hooks_over_http() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let receiver = Receiver::start(true).await;
    let key = json(
        create_hook(
            &sandbox,
            &client,
            &token,
            "invoice.payment.add",
            &receiver.url,
        )
        .await,
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let control = |path: &str| format!("{}/_sandbox{path}", sandbox.base_url());

    let scale = client
        .put(control("/hook-delay-scale"))
        .json(&json!({"scale": 0.001, "timeout_scale": 0.02}))
        .send()
        .await
        .unwrap();
    assert_eq!(scale.status(), 204);
    let bad_scale = client
        .put(control("/hook-delay-scale"))
        .json(&json!({"scale": -1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_scale.status(), 400);

    let sent = client
        .post(control("/hook-events"))
        .json(&json!({
            "app": APP,
            "event_key": "invoice.payment.add",
            "object_keys": [{"id": 7, "apiUrl": "", "timestamp": "2026-12-05T10:00:00.000Z"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(json(sent).await, json!({"hooks": [key]}));
    settle(&sandbox).await;
    let in_flight = client
        .get(control("/hook-deliveries/in-flight"))
        .send()
        .await
        .unwrap();
    assert_eq!(json(in_flight).await, json!({"in_flight": 0}));
    assert_eq!(receiver.deliveries()[0]["object_type"], "invoice.payment");
    let log = json(
        client
            .get(control("/hook-deliveries"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["verification", "delivery"]);
    assert_eq!(log[1]["hook_key"], key.as_str());
    assert_eq!(log[1]["attempt"], 1);
    assert_eq!(log[1]["status"], 200);
    assert_eq!(log[1]["succeeded"], true);
    assert_eq!(log[1]["body"]["object_keys"][0]["id"], 7);

    let inactive = client
        .put(control("/hook-status"))
        .json(&json!({"key": key, "status": "Inactive"}))
        .send()
        .await
        .unwrap();
    assert_eq!(inactive.status(), 204);
    let listed = json(
        client
            .get(with_query(&control("/hooks"), &[("app", APP)]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed[0]["status"], "Inactive");
    let unknown = client
        .put(control("/hook-status"))
        .json(&json!({"key": "999", "status": "Inactive"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        client
            .delete(control("/hook-deliveries"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(sandbox.hook_attempts().is_empty());
}

#[tokio::test]
async fn hooks_endpoints_are_api_endpoints_for_faults_and_the_request_log() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let receiver = Receiver::start(true).await;
    let fault = sandbox.inject(Fault {
        endpoint: Endpoint::Api,
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times: 1,
    });
    let refused = create_hook(&sandbox, &client, &token, "contact.add", &receiver.url).await;
    assert_eq!(refused.status(), 503);
    fault.assert_fired(1);
    assert!(sandbox.hooks(APP).is_empty());
    assert!(
        receiver.secrets().is_empty(),
        "a faulted create verifies nothing"
    );
    let created = create_hook(&sandbox, &client, &token, "contact.add", &receiver.url).await;
    assert_eq!(created.status(), 200);
    let logged: Vec<(String, u16, Option<String>)> = sandbox
        .requests()
        .into_iter()
        .map(|r| (r.path, r.status, r.app))
        .collect();
    assert_eq!(
        logged,
        vec![
            ("/crm/rest/v1/hooks".to_owned(), 503, Some(APP.to_owned())),
            ("/crm/rest/v1/hooks".to_owned(), 200, Some(APP.to_owned())),
        ]
    );
}
