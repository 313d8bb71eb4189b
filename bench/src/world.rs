//! The bench's world: one fixture (Keap sandbox, table, client secret) per function on the
//! shared, serialized emulator, and how to make each function do its one operation.

use keapalive::authorization::{StartAuthorization, start_authorization};
use keapalive::clock::now_epoch_secs;
use keapalive::token_store::HookToken;
use keapalive::wiring::Clients;
use keapalive_tests::aws::{create_event_bus_with_rule, received_events};
use keapalive_tests::emulator::Emulator;
use keapalive_tests::fixture::{Fixture, connection_id};
use serde_json::Value;

use crate::binaries;
use crate::counts::{AwsScope, AwsSnapshot};
use crate::events;

/// The app (tenant) the sandbox's consent approves: the callback authorizes it.
const CALLBACK_APP: &str = keap_sandbox::DEFAULT_APP;
const UPSERT_APP: &str = "benchupsert";
pub const TAGS: [&str; 2] = ["bench-newsletter", "bench-customer"];
/// The Keap event keap-hooks' one subscription is for.
const HOOK_EVENT_KEY: &str = "contact.add";
/// A consumer's rule on the hooks' bus, to a queue (docs/events.md, "Keap changes": "attach your
/// own rule"), so each `PutEvents` is matched and routed, not just accepted, and the bench can
/// see what a consumer gets.
const HOOK_CONSUMER_PATTERN: &str =
    r#"{"source": ["keapalive"], "detail-type": [{"prefix": "keap."}]}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Hello,
    Refresher,
    Upsert,
    Callback,
    Proxy,
    AccessToken,
    Hooks,
}

impl Subject {
    pub const ALL: [Subject; 7] = [
        Subject::Hello,
        Subject::Refresher,
        Subject::Upsert,
        Subject::Callback,
        Subject::Proxy,
        Subject::AccessToken,
        Subject::Hooks,
    ];

    pub fn binary(self) -> &'static str {
        match self {
            Subject::Hello => binaries::HELLO,
            Subject::Refresher => binaries::REFRESHER,
            Subject::Upsert => binaries::UPSERT,
            Subject::Callback => binaries::CALLBACK,
            Subject::Proxy => binaries::PROXY,
            Subject::AccessToken => binaries::ACCESS_TOKEN,
            Subject::Hooks => binaries::HOOKS,
        }
    }

    /// What its first invocation does in the cold-start runs.
    pub fn operation(self) -> &'static str {
        match self {
            Subject::Hello => "echo the event",
            Subject::Refresher => "scheduled run, 1 due connection",
            Subject::Upsert => "upsert 1 contact, no tags",
            Subject::Callback => "finish 1 authorization",
            Subject::Proxy => "GET /v1/contacts?email=",
            Subject::AccessToken => "hand out the current token",
            Subject::Hooks => "deliver 1 contact.add (3 objects) → PutEvents",
        }
    }
}

pub struct World {
    pub emulator: &'static Emulator,
    pub refresher: Fixture,
    pub upsert: Fixture,
    pub callback: Fixture,
    /// keap-hooks' table (one hook item, no connection: the receiver reads only the hook).
    pub hooks: Fixture,
    /// The bus keap-hooks publishes to (`KEAPALIVE_EVENT_BUS`).
    hook_bus: String,
    /// The consumer rule's queue ([`World::consume`] reads it).
    hook_queue: String,
    /// The subscription's URL token, whose hash the hook item holds.
    hook_token: HookToken,
    /// Starts authorizations for the callback (the operator's step, not measured).
    operator: Clients,
    browser: reqwest::Client,
}

impl World {
    pub async fn new() -> Result<Self, String> {
        let emulator = Emulator::shared();
        let refresher = Fixture::new().await;
        let upsert = Fixture::new().await;
        upsert.seed_connection("default", UPSERT_APP, None).await;
        // The overhead loop sends thousands of upserts a minute, beyond Keap's 1,500 (the
        // sandbox enforces it): the bench measures keapalive's code, not Keap's quota.
        upsert
            .sandbox
            .set_product_limits(keap_sandbox::ProductLimits {
                throttle_per_minute: Some(u32::MAX),
                quota_per_day: Some(u32::MAX),
            });
        for tag in TAGS {
            upsert.sandbox.add_tag(UPSERT_APP, tag);
        }
        let callback = Fixture::new().await;
        let operator = callback.clients(&[]);
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let hooks = Fixture::new().await;
        let (hook_bus, hook_queue) =
            create_event_bus_with_rule(&hooks.sdk, HOOK_CONSUMER_PATTERN).await;
        let hook_token = subscribe_hook(&hooks).await?;
        Ok(Self {
            emulator,
            refresher,
            upsert,
            callback,
            hooks,
            hook_bus,
            hook_queue,
            hook_token,
            operator,
            browser,
        })
    }

    pub fn fixture(&self, subject: Subject) -> Option<&Fixture> {
        match subject {
            Subject::Hello => None,
            Subject::Refresher => Some(&self.refresher),
            // The proxy and access-token use the upsert's connection.
            Subject::Upsert | Subject::Proxy | Subject::AccessToken => Some(&self.upsert),
            Subject::Callback => Some(&self.callback),
            Subject::Hooks => Some(&self.hooks),
        }
    }

    /// The function's environment: the configuration contract pointed at its fixture.
    pub fn env(&self, subject: Subject, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.emulator.process_env();
        if let Some(fixture) = self.fixture(subject) {
            env.extend(fixture.env(extra));
        }
        if let Some(bus) = self.event_bus(subject) {
            env.push(("KEAPALIVE_EVENT_BUS".to_owned(), bus.to_owned()));
        }
        env
    }

    /// Only keap-hooks gets a bus: the others' lifecycle events are not what they are
    /// benchmarked for.
    fn event_bus(&self, subject: Subject) -> Option<&str> {
        (subject == Subject::Hooks).then_some(self.hook_bus.as_str())
    }

    pub fn scope(&self, subject: Subject) -> Option<AwsScope> {
        self.fixture(subject).map(|fixture| AwsScope {
            table: fixture.table.clone(),
            secret_id: fixture.secret_id.clone(),
            event_bus: self.event_bus(subject).map(str::to_owned),
        })
    }

    pub async fn snapshot(&self, subject: Subject) -> AwsSnapshot {
        match self.scope(subject) {
            Some(scope) => AwsSnapshot::take(self.emulator, &scope).await,
            None => AwsSnapshot::default(),
        }
    }

    /// Sets up the world for one operation (`run` names it uniquely) and returns its event.
    /// The sandbox's request log is cleared last, so it holds only the function's requests.
    pub async fn prepare(&self, subject: Subject, run: &str) -> Result<Value, String> {
        let event = match subject {
            Subject::Hello => events::hello(),
            Subject::Refresher => {
                let soon = Some(now_epoch_secs() + 60);
                self.refresher
                    .seed_connection(&format!("due-{run}"), &format!("app{run}"), soon)
                    .await;
                events::scheduled()
            }
            Subject::Upsert => events::upsert(&format!("{run}@example.com"), &[]),
            Subject::Callback => events::callback(&self.authorization_redirect().await?),
            Subject::Proxy => events::proxy_get(&format!("{run}@example.com")),
            Subject::AccessToken => events::access_token(),
            Subject::Hooks => events::hook_delivery(self.hook_token.expose_secret()),
        };
        if let Some(fixture) = self.fixture(subject) {
            fixture.sandbox.clear_requests();
        }
        Ok(event)
    }

    /// The operator starts an authorization and the user approves it: the query string Keap
    /// redirects the browser to (`code=..&state=..`).
    async fn authorization_redirect(&self) -> Result<String, String> {
        let started = start_authorization(
            &self.operator.authorization(),
            &StartAuthorization {
                connection_id: connection_id("default"),
                replace_account: false,
            },
        )
        .await
        .map_err(|e| format!("start_authorization failed: {e}"))?;
        let response = self
            .browser
            .get(&started.authorize_url)
            .send()
            .await
            .map_err(|e| format!("the sandbox's authorize page failed: {e}"))?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| {
                format!(
                    "the sandbox's authorize page answered {} without a redirect",
                    response.status()
                )
            })?;
        let redirect =
            url::Url::parse(location).map_err(|e| format!("bad redirect location: {e}"))?;
        let query = redirect.query().unwrap_or_default();
        if !query.contains("code=") {
            return Err(format!(
                "the sandbox's redirect carries no code (app {CALLBACK_APP})"
            ));
        }
        Ok(query.to_owned())
    }

    /// Whether the answer shows the operation really happened (else its counts mean nothing).
    pub fn check(&self, subject: Subject, answer: &Value) -> Result<(), String> {
        let ok = match subject {
            Subject::Hello => answer.get("echo") == Some(&events::hello()),
            Subject::Refresher => {
                answer.get("refreshed").and_then(Value::as_u64) == Some(1)
                    && answer.get("due").and_then(Value::as_u64) == Some(1)
            }
            Subject::Upsert => answer.get("contact_id").and_then(Value::as_i64).is_some(),
            Subject::Callback => answer.get("statusCode").and_then(Value::as_u64) == Some(200),
            Subject::Proxy => answer.get("status").and_then(Value::as_u64) == Some(200),
            Subject::AccessToken => answer.get("access_token").is_some_and(Value::is_string),
            // 200 only once PutEvents accepted every entry (anything else, Keap would retry).
            Subject::Hooks => answer.get("statusCode").and_then(Value::as_u64) == Some(200),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} did not do its operation ({}); it answered {}",
                subject.binary(),
                subject.operation(),
                summarize(answer)
            ))
        }
    }

    /// After an invocation that [`World::check`] accepted: what a consumer gets from it, checked
    /// and taken. For keap-hooks, the consumer's queue must hold exactly the delivery's event
    /// (`keap.contact.add` with its three objects). Taking it also keeps the queue empty, which
    /// the timings need: moto routes a `PutEvents` to the rule's queue inside the request, and
    /// its SQS gets slower as a queue grows (≈ 11 → 18 ms per `PutEvents` over 300 unread
    /// messages), so a queue left to fill would drift the answer times over a loop.
    pub async fn consume(&self, subject: Subject) -> Result<(), String> {
        if subject != Subject::Hooks {
            return Ok(());
        }
        let events = received_events(&self.hooks.sdk, &self.hook_queue).await;
        let [event] = events.as_slice() else {
            return Err(format!(
                "keap-hooks answered 200, but the consumer's queue got {} events, not 1: {events:?}",
                events.len()
            ));
        };
        let mut ids: Vec<i64> = event["detail"]["object_keys"]
            .as_array()
            .map(|keys| keys.iter().filter_map(|key| key["id"].as_i64()).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        if event["detail-type"] == "keap.contact.add" && ids == events::HOOK_DELIVERY_OBJECTS {
            Ok(())
        } else {
            Err(format!(
                "keap-hooks published an event that is not the delivery's: {event}"
            ))
        }
    }
}

/// Stores a `contact.add` subscription as the operator's `subscribe_hooks` does (the item
/// holds the token's hash) and returns the token for the delivery URL.
async fn subscribe_hook(fixture: &Fixture) -> Result<HookToken, String> {
    let token = HookToken::generate().map_err(|e| format!("no random hook token: {e}"))?;
    let stored = fixture
        .store()
        .put_hook(
            &token.hash(),
            &connection_id("default"),
            HOOK_EVENT_KEY,
            now_epoch_secs(),
        )
        .await
        .map_err(|e| format!("could not store the hook: {e}"))?;
    if stored {
        Ok(token)
    } else {
        Err("a hook item with the new token's hash already exists".to_owned())
    }
}

/// The answer without a page body (the callback's HTML is long and says nothing new).
fn summarize(answer: &Value) -> String {
    let mut shown = answer.clone();
    if let Some(body) = shown.get_mut("body") {
        *body = Value::String("<page>".to_owned());
    }
    shown.to_string()
}
