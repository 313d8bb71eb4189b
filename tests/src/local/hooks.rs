//! Keap's REST Hooks in the run (docs/events.md, "Keap changes"): the operator subscribes
//! `contact.add` through keap-proxy, Keap (the sandbox) verifies the hook URL through the route
//! in front of keap-hooks, then delivers the upserted contact's `contact.add`; keap-hooks puts
//! it on the bus, and the bus's rule routes the `keap.contact.add` event to a queue.

use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use keap_sandbox::{DEFAULT_APP, HookEvent, HookRequestKind, HookStatus, ObjectKey, Sandbox};
use serde_json::{Value, json};

use super::functions::LocalFunction;
use super::invoke_api::InvokeApi;
use super::progress::Progress;
use super::resources;
use crate::http_front::HttpFront;

pub const EVENT_KEY: &str = "contact.add";
/// The name the operator invokes keap-proxy by (`KEAPALIVE_PROXY_FUNCTION`), as the stack
/// names it for stage `local`.
const PROXY_FUNCTION: &str = "keapalive-local-keap-proxy";
/// The stack's HTTP API route to keap-hooks is `POST /keap/hooks/{token}`.
const HOOKS_PREFIX: &str = "/keap/hooks/";
/// How long the run waits for Keap's delivery and the rule's copy of the event: the sandbox's
/// first attempt comes within a second (the run scales Keap's delays), and keap-hooks answers
/// it once `PutEvents` accepted the event.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// What the operator's hook commands reach besides the table: keap-proxy through Lambda's
/// Invoke API, and the public hook URLs, which the stack's HTTP API routes to keap-hooks.
/// Serves until dropped.
pub struct HookRoutes {
    invoke_api: InvokeApi,
    front: HttpFront,
}

impl HookRoutes {
    pub async fn start(
        keap_proxy: &LocalFunction,
        keap_hooks: &LocalFunction,
    ) -> Result<Self, String> {
        let invoke_api = InvokeApi::start(vec![(PROXY_FUNCTION.to_owned(), keap_proxy.clone())])
            .await
            .map_err(|e| format!("cannot serve the Lambda Invoke API for keap-proxy: {e}"))?;
        let front = HttpFront::try_start(keap_hooks.runtime.clone(), HOOKS_PREFIX, "token")
            .await
            .map_err(|e| format!("cannot serve the keap-hooks route: {e}"))?;
        Ok(Self { invoke_api, front })
    }

    /// `http://127.0.0.1:<port>/keap/hooks`: a hook URL is this, `/`, a token.
    pub fn base_url(&self) -> String {
        self.front.url(HOOKS_PREFIX.trim_end_matches('/'))
    }

    /// The operator's variables for the hook commands (the stack sets the first two; the Lambda
    /// endpoint points its SDK at the local Invoke API).
    pub fn operator_env(&self) -> Vec<(String, String)> {
        [
            ("KEAPALIVE_HOOKS_BASE_URL", self.base_url()),
            ("KEAPALIVE_PROXY_FUNCTION", PROXY_FUNCTION.to_owned()),
            ("AWS_ENDPOINT_URL_LAMBDA", self.invoke_api.endpoint_url()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }
}

/// The step's checks: subscribed and Verified (a note), delivered, and the event read back
/// naming `contact_id`. Answers the step's closing line (the event; never a token).
pub async fn subscribe_deliver_and_read_back(
    progress: &Progress,
    operator: &LocalFunction,
    sandbox: &Sandbox,
    sdk: &SdkConfig,
    queue_url: &str,
    contact_id: i64,
) -> Result<String, String> {
    progress.note(&subscribe(operator).await?);
    check_verified_at_keap(sandbox)?;
    deliver_contact_added(sandbox, contact_id)?;
    let event = next_event(sdk, queue_url).await?.ok_or_else(|| {
        format!(
            "no keap.{EVENT_KEY} event reached queue {} within {EVENT_WAIT:?}; {}",
            resources::KEAP_EVENTS_QUEUE,
            delivery_statuses(sandbox)
        )
    })?;
    let event = event_summary(&event, contact_id)?;
    check_delivered(sandbox).await?;
    Ok(format!("Keap's delivery answered 200; {event}"))
}

/// `subscribe_hooks` through the operator; its answer must list the hook as Keap's `Verified`.
async fn subscribe(operator: &LocalFunction) -> Result<String, String> {
    let answer = operator
        .invoke(json!({"subscribe_hooks": {"connection_id": "default", "event_keys": [EVENT_KEY]}}))
        .await
        .map_err(|e| format!("operator answered {}: {}", e.error_type, e.error_message))?;
    subscription_summary(&answer)
}

/// The operator's answer as a progress line: the hook's status and its token's hash prefix
/// (the answer never holds the token). `Err` unless it lists `contact.add` as `Verified`.
fn subscription_summary(answer: &Value) -> Result<String, String> {
    let hook = answer
        .get("hooks")
        .and_then(Value::as_array)
        .and_then(|hooks| hooks.iter().find(|hook| hook["event_key"] == EVENT_KEY))
        .ok_or_else(|| format!("the operator's answer lists no {EVENT_KEY} hook: {answer}"))?;
    let status = hook["status"].as_str().unwrap_or("no status");
    if status != HookStatus::Verified.as_str() {
        return Err(format!(
            "the operator subscribed {EVENT_KEY}, but Keap lists it as {status}, not Verified"
        ));
    }
    Ok(format!(
        "{EVENT_KEY} subscribed: Verified at Keap (token hash {})",
        hook["token"].as_str().unwrap_or("?")
    ))
}

/// Keap's side of the subscription: one `Verified` `contact.add` hook. Keap delivers to
/// nothing else.
fn check_verified_at_keap(sandbox: &Sandbox) -> Result<(), String> {
    let hooks = sandbox.hooks(DEFAULT_APP);
    if hooks
        .iter()
        .any(|hook| hook.event_key == EVENT_KEY && hook.status == HookStatus::Verified)
    {
        return Ok(());
    }
    let statuses: Vec<String> = hooks
        .iter()
        .map(|hook| format!("{} {}", hook.event_key, hook.status.as_str()))
        .collect();
    Err(format!(
        "the sandbox has no Verified {EVENT_KEY} hook (its hooks: {statuses:?})"
    ))
}

/// What Keap does when a contact is added: a delivery naming it, timestamped with its creation.
fn deliver_contact_added(sandbox: &Sandbox, contact_id: i64) -> Result<(), String> {
    let created_at = sandbox
        .contacts(DEFAULT_APP)
        .into_iter()
        .find(|contact| contact["id"].as_i64() == Some(contact_id))
        .and_then(|contact| contact["date_created"].as_str().map(str::to_owned))
        .ok_or_else(|| format!("the sandbox has no contact {contact_id} with a date_created"))?;
    let delivered_to = sandbox.deliver_hook_event(
        DEFAULT_APP,
        HookEvent {
            event_key: EVENT_KEY.to_owned(),
            object_type: None,
            object_keys: vec![ObjectKey {
                id: contact_id,
                api_url: format!("{}/v1/contacts/{contact_id}", sandbox.api_base_url()),
                timestamp: created_at,
            }],
        },
    )?;
    if delivered_to.is_empty() {
        return Err(format!("the sandbox had no {EVENT_KEY} hook to deliver to"));
    }
    Ok(())
}

/// The queue's next event within [`EVENT_WAIT`]. Short receives, polled: the emulator serves
/// one request at a time, so a long poll would hold up keap-hooks' `PutEvents` it waits for.
async fn next_event(sdk: &SdkConfig, queue_url: &str) -> Result<Option<Value>, String> {
    let give_up = Instant::now() + EVENT_WAIT;
    loop {
        if let Some(event) = resources::receive_event(sdk, queue_url, 0).await? {
            return Ok(Some(event));
        }
        if Instant::now() >= give_up {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keap saw its delivery succeed: its last attempt was answered 200, so Keap will not retry
/// (keap-hooks answers 200 only once `PutEvents` took every entry).
async fn check_delivered(sandbox: &Sandbox) -> Result<(), String> {
    if !sandbox.wait_for_hook_deliveries(EVENT_WAIT).await {
        return Err(format!(
            "Keap's delivery was still being retried after {EVENT_WAIT:?}; {}",
            delivery_statuses(sandbox)
        ));
    }
    let last = sandbox
        .hook_attempts()
        .into_iter()
        .rfind(|attempt| attempt.kind == HookRequestKind::Delivery);
    match last.and_then(|attempt| attempt.status) {
        Some(200) => Ok(()),
        _ => Err(delivery_statuses(sandbox)),
    }
}

/// How keap-hooks answered the sandbox's delivery attempts, for a failure line.
fn delivery_statuses(sandbox: &Sandbox) -> String {
    let statuses: Vec<String> = sandbox
        .hook_attempts()
        .into_iter()
        .filter(|attempt| attempt.kind == HookRequestKind::Delivery)
        .map(|attempt| match (attempt.status, attempt.error) {
            (Some(status), _) => status.to_string(),
            (None, error) => error.unwrap_or_else(|| "no answer".to_owned()),
        })
        .collect();
    if statuses.is_empty() {
        "the sandbox made no delivery attempt".to_owned()
    } else {
        format!("keap-hooks answered the sandbox's delivery with {statuses:?}")
    }
}

/// The event as a progress line, its `delivery_id` shortened. `Err` unless it is the
/// `contact.add` of connection `default` naming `contact_id`.
fn event_summary(event: &Value, contact_id: i64) -> Result<String, String> {
    let detail = &event["detail"];
    let names_the_contact = detail["object_keys"].as_array().is_some_and(|keys| {
        keys.iter()
            .any(|key| key["id"].as_i64() == Some(contact_id))
    });
    if event["detail-type"] != format!("keap.{EVENT_KEY}").as_str()
        || detail["connection_id"] != "default"
        || detail["event_key"] != EVENT_KEY
        || !names_the_contact
    {
        return Err(format!(
            "expected keap.{EVENT_KEY} for connection default naming contact {contact_id}; \
             the queue received {event}"
        ));
    }
    let mut shown = detail.clone();
    if let Some(id) = shown.get_mut("delivery_id")
        && let Some(text) = id.as_str()
    {
        *id = Value::String(format!("{}…", text.chars().take(12).collect::<String>()));
    }
    Ok(format!(
        "event on {}: keap.{EVENT_KEY} {shown}",
        resources::EVENT_BUS
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail_type: &str, ids: &[i64]) -> Value {
        json!({"source": "keapalive", "detail-type": detail_type, "detail": {
            "connection_id": "default", "event_key": "contact.add", "object_type": "contact",
            "object_keys": ids.iter().map(|id| json!({"id": id, "timestamp": "2026-12-06T10:00:00.000Z"})).collect::<Vec<_>>(),
            "delivery_id": "0123456789abcdef0123456789abcdef", "part": 1, "parts": 1}})
    }

    #[test]
    fn the_event_line_needs_the_contact_and_shortens_the_delivery_id() {
        let line = event_summary(&event("keap.contact.add", &[7]), 7).unwrap();
        assert!(
            line.starts_with("event on keapalive-local: keap.contact.add {"),
            "{line}"
        );
        assert!(line.contains("\"delivery_id\":\"0123456789ab…\""), "{line}");
        assert!(line.contains("\"id\":7"), "{line}");
        assert!(event_summary(&event("keap.contact.add", &[8]), 7).is_err());
        assert!(event_summary(&event("keap.contact.edit", &[7]), 7).is_err());
    }

    #[test]
    fn the_subscription_must_be_verified() {
        let answer = |status: &str| {
            json!({"connection_id": "default", "other_hooks_at_keap": 0, "hooks": [
                {"event_key": "contact.add", "keap_hook_key": "1", "status": status,
                 "token": "a1b2c3d4…", "created_at": 1, "created": true}]})
        };
        assert_eq!(
            subscription_summary(&answer("Verified")).unwrap(),
            "contact.add subscribed: Verified at Keap (token hash a1b2c3d4…)"
        );
        assert!(subscription_summary(&answer("Unverified")).is_err());
        assert!(subscription_summary(&json!({"hooks": []})).is_err());
    }
}
