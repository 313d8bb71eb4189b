//! The outgoing side of REST Hooks: the `X-Hook-Secret` handshake and event deliveries with
//! Keap's retry policy.
//!
//! Keap's "Rest Hook Documentation" (developer.keap.com / developer.infusionsoft.com
//! `rest-hook-documentation`, "Hook Event Policy"):
//! - events are sent only while the subscription is `Verified`, batched, at most 1,000 changed
//!   objects of one event type per payload `{event_key, object_type, object_keys: [{id, apiUrl,
//!   timestamp}]}`;
//! - four attempts: the first 30–60 s after the change (5–10 min for `contactGroup.applied` and
//!   `contactGroup.delete`), the second 30–60 s after the first failed, the third 5 minutes and
//!   the fourth 30 minutes after the one before;
//! - an attempt fails when the receiver does not answer within 30 s or answers < 200 or >= 400
//!   (but not 410); a 410, at any time, makes the subscription `Inactive`. After the fourth
//!   failure it is `Inactive` too (the AsyncAPI description of Keap's hooks at
//!   asyncapi.apis.io/asyncapis/keap/keap-resthooks-asyncapi, and `DESIGN.md` "Events out").
//!
//! The handshake (Keap's interactive v1 docs, "Create a Hook Subscription", as generated into
//! infusionsoft-nodejs `docs/RESTHooksApi.md`): a `POST` to `hookUrl` carrying a temporary
//! secret in `X-Hook-Secret`; the receiver must answer `200` with the same header and value.
//! Keap's body for it is not documented; receivers in Keap's forum ("Unverified REST hook",
//! integration.keap.com/t/375) read a non-empty one, so the sandbox sends `[]`.
//!
//! Every delay and the 30 s timeout are multiplied by the scales set with
//! `PUT /_sandbox/hook-delay-scale`, so tests need not wait 36 minutes. Redirects are never
//! followed (a 3xx is an answer, not a failure, by the rule above), and proxies from the
//! environment are ignored: the sandbox talks to the receiver directly.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::header;
use serde_json::{Value, json};

use crate::random;
use crate::state::Shared;
use crate::types::{Hook, HookAttempt, HookRequestKind, HookStatus, ObjectKey};

pub(crate) const SECRET_HEADER: &str = "x-hook-secret";
/// Keap: "The payload will contain a maximum of 1000 changed objects."
pub(crate) const MAX_OBJECTS_PER_DELIVERY: usize = 1000;
const ANSWER_TIMEOUT_SECS: f64 = 30.0;
const ATTEMPTS: usize = 4;

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// How long Keap waits for an answer, scaled.
fn answer_timeout(shared: &Shared) -> Duration {
    scaled(ANSWER_TIMEOUT_SECS, shared.lock().hooks.timeout_scale)
}

fn scaled(secs: f64, scale: f64) -> Duration {
    Duration::try_from_secs_f64(secs * scale).unwrap_or(Duration::ZERO)
}

/// Seconds before each attempt, drawn from Keap's documented ranges.
fn attempt_delays(event_key: &str) -> [f64; ATTEMPTS] {
    let between = |low: f64, high: f64| low + (high - low) * random::unit();
    let first = if matches!(event_key, "contactGroup.applied" | "contactGroup.delete") {
        between(300.0, 600.0)
    } else {
        between(30.0, 60.0)
    };
    [first, between(30.0, 60.0), 300.0, 1800.0]
}

struct Answer {
    status: Option<u16>,
    error: Option<String>,
    echoed_secret: Option<String>,
}

async fn post(url: &str, body: &Value, secret: Option<&str>, timeout: Duration) -> Answer {
    let mut request = client()
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .timeout(timeout);
    if let Some(secret) = secret {
        request = request.header(SECRET_HEADER, secret);
    }
    match request.send().await {
        Ok(response) => {
            let echoed_secret = response
                .headers()
                .get(SECRET_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            Answer {
                status: Some(response.status().as_u16()),
                error: None,
                echoed_secret,
            }
        }
        Err(error) => Answer {
            status: None,
            // The URL is in the attempt already (and may hold the receiver's secret token).
            error: Some(if error.is_timeout() {
                "timeout".to_owned()
            } else {
                error.without_url().to_string()
            }),
            echoed_secret: None,
        },
    }
}

/// Runs the handshake for `app`'s hook `key` and answers the hook as it then stands (`None`
/// for an unknown key). Runs on the caller's task: Keap verifies during the create call.
pub(crate) async fn handshake(shared: &Arc<Shared>, app: &str, key: &str) -> Option<Hook> {
    let secret = random::alphanumeric(40);
    let (url, event_key) = shared.lock().hooks.begin_handshake(app, key, &secret)?;
    let timeout = answer_timeout(shared);
    let at = Instant::now();
    let body = json!([]);
    let answer = post(&url, &body, Some(&secret), timeout).await;
    let echoed = answer.status == Some(200) && answer.echoed_secret.as_deref() == Some(&secret);
    let mut sandbox = shared.lock();
    sandbox.hooks.record(HookAttempt {
        kind: HookRequestKind::Verification,
        hook_key: key.to_owned(),
        hook_url: url,
        app: app.to_owned(),
        event_key,
        delivery: 0,
        attempt: 1,
        status: answer.status,
        error: answer.error,
        succeeded: echoed,
        body,
        at,
    });
    sandbox.hooks.end_handshake(key, &secret, echoed)
}

/// Keap's rule for one attempt's answer.
enum Outcome {
    Delivered,
    Gone,
    Failed,
}

fn outcome(status: Option<u16>) -> Outcome {
    match status {
        Some(410) => Outcome::Gone,
        Some(status) if (200..400).contains(&status) => Outcome::Delivered,
        _ => Outcome::Failed,
    }
}

/// Sends `object_keys` (split into payloads of at most 1,000) to every `Verified` hook of `app`
/// for `event_key`, each delivery on its own background task. Answers the keys of the hooks
/// that will be sent something.
pub(crate) fn deliver(
    shared: &Arc<Shared>,
    app: &str,
    event_key: &str,
    object_type: &str,
    object_keys: &[ObjectKey],
) -> Vec<String> {
    let hooks = shared.lock().hooks.verified_for(app, event_key);
    for (key, _) in &hooks {
        for batch in object_keys.chunks(MAX_OBJECTS_PER_DELIVERY) {
            let body = json!({
                "event_key": event_key,
                "object_type": object_type,
                "object_keys": batch,
            });
            let delivery = {
                let mut sandbox = shared.lock();
                sandbox.hooks.delivery_started();
                sandbox.hooks.next_delivery()
            };
            let job = Delivery {
                shared: shared.clone(),
                app: app.to_owned(),
                event_key: event_key.to_owned(),
                key: key.clone(),
                delivery,
                body,
            };
            let task = shared.runtime.spawn(job.run());
            shared.lock().hooks.track(task.abort_handle());
        }
    }
    hooks.into_iter().map(|(key, _)| key).collect()
}

struct Delivery {
    shared: Arc<Shared>,
    app: String,
    event_key: String,
    key: String,
    delivery: u64,
    body: Value,
}

impl Delivery {
    async fn run(self) {
        for (index, delay) in attempt_delays(&self.event_key).into_iter().enumerate() {
            // Read at each wait, so a test may change the scale while a delivery waits.
            let delay_scale = self.shared.lock().hooks.delay_scale;
            tokio::time::sleep(scaled(delay, delay_scale)).await;
            // A hook made Inactive, unverified or deleted meanwhile gets no more attempts.
            let Some(url) = self.shared.lock().hooks.deliverable(&self.key) else {
                break;
            };
            let at = Instant::now();
            let answer = post(&url, &self.body, None, answer_timeout(&self.shared)).await;
            let result = outcome(answer.status);
            let mut sandbox = self.shared.lock();
            sandbox.hooks.record(HookAttempt {
                kind: HookRequestKind::Delivery,
                hook_key: self.key.clone(),
                hook_url: url,
                app: self.app.clone(),
                event_key: self.event_key.clone(),
                delivery: self.delivery,
                attempt: u32::try_from(index + 1).unwrap_or(u32::MAX),
                status: answer.status,
                error: answer.error,
                succeeded: matches!(result, Outcome::Delivered),
                body: self.body.clone(),
                at,
            });
            match result {
                Outcome::Delivered => break,
                Outcome::Gone => {
                    sandbox.hooks.set_status(&self.key, HookStatus::Inactive);
                    break;
                }
                Outcome::Failed if index + 1 == ATTEMPTS => {
                    sandbox.hooks.set_status(&self.key, HookStatus::Inactive);
                }
                Outcome::Failed => {}
            }
        }
        self.shared.lock().hooks.delivery_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::{Outcome, attempt_delays, outcome};

    #[test]
    fn keaps_failure_rule() {
        assert!(matches!(outcome(Some(200)), Outcome::Delivered));
        assert!(matches!(outcome(Some(204)), Outcome::Delivered));
        assert!(matches!(outcome(Some(302)), Outcome::Delivered));
        assert!(matches!(outcome(Some(410)), Outcome::Gone));
        for failed in [Some(100), Some(400), Some(404), Some(429), Some(500), None] {
            assert!(matches!(outcome(failed), Outcome::Failed), "{failed:?}");
        }
    }

    #[test]
    fn delays_fall_in_keaps_ranges() {
        for _ in 0..100 {
            let [first, second, third, fourth] = attempt_delays("contact.add");
            assert!((30.0..=60.0).contains(&first) && (30.0..=60.0).contains(&second));
            assert_eq!((third, fourth), (300.0, 1800.0));
            let [first, ..] = attempt_delays("contactGroup.applied");
            assert!((300.0..=600.0).contains(&first));
        }
    }
}
