//! oauth-callback in-process: `start_authorization` → the sandbox's consent → the callback, as
//! API Gateway's payload 2.0 events, against the emulator's table and the Keap sandbox.
//! Every failure proves by a table scan that nothing was stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::apigw::{
    ApiGatewayV2httpRequest, ApiGatewayV2httpRequestContext,
    ApiGatewayV2httpRequestContextHttpDescription, ApiGatewayV2httpResponse,
};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::Method;
use aws_sdk_dynamodb::types::AttributeValue;
use keap_sandbox::{Consent, Endpoint, Fault, FaultKind};
use keapalive::authorization::{
    self, AuthorizationStarted, CALLBACK_PATH, MAX_QUERY_BYTES, StartAuthorization,
    handle_callback, start_authorization,
};
use keapalive::clock::now_epoch_secs;
use keapalive::token_store::{MarkGuard, PendingAuthorization};
use keapalive::wiring::Clients;
use keapalive_tests::aws::{create_secret_string, scan_all};
use keapalive_tests::emulator::{DynamoDbFault, Emulator};
use keapalive_tests::fixture::{CLIENT_SECRET, Fixture, REDIRECT_URI, connection_id};
use keapalive_tests::logs::{self, assert_logs_never_contain, captured_logs_since, log_mark};
use serde_json::{Value, json};

type Item = HashMap<String, AttributeValue>;

// ---------------------------------------------------------------- helpers

struct World {
    fixture: Fixture,
    clients: Clients,
    browser: reqwest::Client,
}

impl World {
    async fn new() -> Self {
        Self::with(&[]).await
    }

    async fn with(extra: &[(&str, &str)]) -> Self {
        logs::capture_logs();
        let fixture = Fixture::new().await;
        let clients = fixture.clients(extra);
        Self {
            fixture,
            clients,
            browser: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    async fn start(&self, id: &str, replace_account: bool) -> AuthorizationStarted {
        start_authorization(
            &self.clients.authorization(),
            &StartAuthorization {
                connection_id: connection_id(id),
                replace_account,
            },
        )
        .await
        .expect("start_authorization")
    }

    /// What the operator's browser does with the authorize link: Keap's consent, then the raw
    /// query string of the redirect back to the callback.
    async fn consent(&self, authorize_url: &str) -> String {
        let response = self.browser.get(authorize_url).send().await.unwrap();
        assert_eq!(
            response.status(),
            302,
            "the sandbox redirects after consent"
        );
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with(REDIRECT_URI),
            "redirected to the callback: {location}"
        );
        url::Url::parse(&location)
            .unwrap()
            .query()
            .unwrap_or_default()
            .to_owned()
    }

    async fn callback(&self, raw_query: &str) -> ApiGatewayV2httpResponse {
        handle_callback(
            &self.clients.authorization(),
            &event(Method::GET, CALLBACK_PATH, raw_query),
        )
        .await
    }

    /// start → consent → callback.
    async fn authorize(
        &self,
        id: &str,
        replace_account: bool,
    ) -> (ApiGatewayV2httpResponse, String) {
        let started = self.start(id, replace_account).await;
        let query = self.consent(&started.authorize_url).await;
        (self.callback(&query).await, query)
    }

    async fn items(&self) -> Vec<Item> {
        scan_all(&self.fixture.sdk, &self.fixture.table).await
    }

    async fn connection(&self, id: &str) -> Option<Item> {
        let pk = format!("conn#{id}");
        self.items()
            .await
            .into_iter()
            .find(|item| s(item, "pk") == Some(&pk))
    }

    async fn state_count(&self) -> usize {
        self.items()
            .await
            .iter()
            .filter(|item| s(item, "pk").is_some_and(|pk| pk.starts_with("state#")))
            .count()
    }

    async fn connection_count(&self) -> usize {
        self.items()
            .await
            .iter()
            .filter(|item| s(item, "pk").is_some_and(|pk| pk.starts_with("conn#")))
            .count()
    }

    fn token_requests(&self) -> usize {
        self.fixture
            .sandbox
            .requests()
            .iter()
            .filter(|r| r.path == "/token")
            .count()
    }

    /// A state stored directly (to make one that expired, or one no `start` could make).
    async fn put_state(&self, id: &str, expires_at: i64) -> String {
        put_state(&self.clients, id, expires_at).await
    }

    /// Secrets that must never be logged: this fixture's client secret and the stored pair.
    async fn assert_no_secret_logged(&self, extra: &[&str]) {
        let mut secrets: Vec<String> = vec![CLIENT_SECRET.to_owned()];
        for item in self.items().await {
            for name in ["access_token", "refresh_token"] {
                if let Some(value) = s(&item, name) {
                    secrets.push(value.to_owned());
                }
            }
        }
        secrets.extend(extra.iter().map(|s| (*s).to_owned()));
        let needles: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_logs_never_contain(&needles);
    }
}

async fn put_state(clients: &Clients, id: &str, expires_at: i64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let nonce = format!(
        "{nanos:032x}{:032x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    clients
        .store
        .put_state(
            &nonce,
            &PendingAuthorization {
                connection_id: connection_id(id),
                expires_at,
                replace_account: false,
            },
        )
        .await
        .unwrap();
    nonce
}

fn event(method: Method, path: &str, raw_query: &str) -> ApiGatewayV2httpRequest {
    let mut http = ApiGatewayV2httpRequestContextHttpDescription::default();
    http.method = method.clone();
    http.path = Some(path.to_owned());
    http.protocol = Some("HTTP/1.1".to_owned());
    http.source_ip = Some("198.51.100.7".to_owned());
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.http = http;
    context.route_key = Some(format!("{method} {path}"));
    context.stage = Some("$default".to_owned());
    context.request_id = Some("test-request".to_owned());
    let mut request = ApiGatewayV2httpRequest::default();
    request.version = Some("2.0".to_owned());
    request.route_key = Some(format!("{method} {path}"));
    request.raw_path = Some(path.to_owned());
    request.raw_query_string = Some(raw_query.to_owned());
    request.request_context = context;
    request
}

fn s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

fn n(item: &Item, name: &str) -> Option<i64> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().ok(),
        _ => None,
    }
}

fn body(response: &ApiGatewayV2httpResponse) -> &str {
    match &response.body {
        Some(Body::Text(text)) => text,
        other => panic!("expected an HTML body, got {other:?}"),
    }
}

fn param(query: &str, name: &str) -> String {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Status and the headers every page must carry.
#[track_caller]
fn assert_page(response: &ApiGatewayV2httpResponse, status: i64) {
    assert_eq!(response.status_code, status, "page: {}", body(response));
    let header = |name: &str| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_owned()
    };
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(
        header("content-security-policy"),
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(!response.is_base64_encoded);
}

// ---------------------------------------------------------------- happy path

#[tokio::test]
async fn authorization_stores_generation_one_active_with_both_tokens() {
    let world = World::new().await;
    let started = world.start("default", false).await;
    assert_eq!(started.connection_id.as_str(), "default");
    let now = now_epoch_secs();
    assert!((now + 590..=now + 610).contains(&started.state_expires_at));
    let authorize = url::Url::parse(&started.authorize_url).unwrap();
    assert!(
        started
            .authorize_url
            .starts_with(&world.fixture.sandbox.authorize_url())
    );
    let params: HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(params["redirect_uri"], REDIRECT_URI);
    assert_eq!(params["state"].len(), 64, "256-bit hex nonce");
    assert_eq!(world.state_count().await, 1);

    let query = world.consent(&started.authorize_url).await;
    let code = param(&query, "code");
    assert!(!code.is_empty());
    let response = world.callback(&query).await;
    assert_page(&response, 200);
    let html = body(&response);
    assert!(html.contains("<code>default</code>"), "{html}");
    assert!(html.contains("sandbox01.infusionsoft.com"), "{html}");

    let item = world
        .connection("default")
        .await
        .expect("connection stored");
    assert_eq!(n(&item, "generation"), Some(1));
    assert_eq!(s(&item, "status"), Some("active"));
    assert_eq!(s(&item, "kind"), Some("oauth"));
    assert_eq!(s(&item, "keap_app"), Some("sandbox01.infusionsoft.com"));
    assert!(
        !item.contains_key("expires_at"),
        "a connection item never carries the TTL"
    );
    let refresh = s(&item, "refresh_token").unwrap();
    let access = s(&item, "access_token").unwrap();
    assert_eq!(
        world
            .fixture
            .sandbox
            .current_refresh_token("sandbox01")
            .as_deref(),
        Some(refresh),
        "the stored refresh token is the live one"
    );
    let expires = n(&item, "access_expires_at").unwrap();
    assert!(
        (now + 86_400 - 5..=now + 86_400 + 60).contains(&expires),
        "expiry from expires_in (86400): {expires}"
    );
    assert!(!html.contains(access) && !html.contains(refresh) && !html.contains(&code));
    assert_eq!(world.state_count().await, 0, "the state is consumed");
    assert_eq!(world.token_requests(), 1);
    world.assert_no_secret_logged(&[&code]).await;
}

#[tokio::test]
async fn the_dispatcher_routes_http_events_and_commands() {
    let world = World::new().await;
    let started = authorization::answer_operator(
        &world.clients.authorization(),
        json!({"start_authorization": {"connection_id": "sales"}}),
    )
    .await
    .unwrap();
    assert_eq!(started["connection_id"], "sales");
    let authorize_url = started["authorize_url"].as_str().unwrap();
    assert!(started["state_expires_at"].as_i64().unwrap() > now_epoch_secs());

    let query = world.consent(authorize_url).await;
    let wire = serde_json::to_value(event(Method::GET, CALLBACK_PATH, &query)).unwrap();
    let answer = authorization::answer_public(&world.clients.authorization(), wire.clone())
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 200);
    assert_eq!(
        answer["headers"]["content-type"],
        "text/html; charset=utf-8"
    );
    assert!(
        answer["body"]
            .as_str()
            .unwrap()
            .contains("<code>sales</code>")
    );
    assert!(world.connection("sales").await.is_some());

    let unknown =
        authorization::answer_operator(&world.clients.authorization(), json!({"start": {}}))
            .await
            .unwrap_err();
    assert_eq!(unknown.error_type, "ValidationError");
    assert!(unknown.error_message.contains("start_authorization"));
    assert!(unknown.error_message.contains("remove_connection"));

    let bad_id = authorization::answer_operator(
        &world.clients.authorization(),
        json!({"start_authorization": {"connection_id": "no spaces"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_id.error_type, "ValidationError");
    assert!(bad_id.error_message.contains("connection_id"));
    assert_eq!(
        world.state_count().await,
        0,
        "a refused start stores no state"
    );
}

#[tokio::test]
async fn the_public_function_refuses_operator_commands_and_the_operator_refuses_http() {
    let world = World::new().await;
    for command in [
        json!({"start_authorization": {"connection_id": "sales"}}),
        json!({"register_service_account_key": {"connection_id": "k", "secret_id": "s"}}),
        json!({"remove_connection": {"connection_id": "sales"}}),
    ] {
        let refused = authorization::answer_public(&world.clients.authorization(), command)
            .await
            .unwrap_err();
        assert_eq!(refused.error_type, "ValidationError");
        assert!(
            refused.error_message.contains("operator function"),
            "{}",
            refused.error_message
        );
    }
    assert_eq!(
        world.state_count().await,
        0,
        "a refused command stores nothing"
    );

    let started = world.start("sales", false).await;
    let query = world.consent(&started.authorize_url).await;
    let wire = serde_json::to_value(event(Method::GET, CALLBACK_PATH, &query)).unwrap();
    let refused = authorization::answer_operator(&world.clients.authorization(), wire)
        .await
        .unwrap_err();
    assert_eq!(refused.error_type, "ValidationError");
    assert_eq!(world.state_count().await, 1, "the link is still usable");
    assert!(world.connection("sales").await.is_none());
}

/// `remove_connection` retires the connection's authorize links (its state items), consumed
/// or not, and leaves other connections' links alone: a link followed after the removal
/// authorizes nothing.
#[tokio::test]
async fn remove_retires_the_connections_pending_authorization_links() {
    let world = World::new().await;
    let (page, _) = world.authorize("sales", false).await;
    assert_eq!(page.status_code, 200);
    let open_one = world.start("sales", false).await;
    let open_two = world.start("sales", false).await;
    let other = world.start("support", false).await;
    assert_eq!(world.state_count().await, 3);

    let removed = authorization::answer_operator(
        &world.clients.authorization(),
        json!({"remove_connection": {"connection_id": "sales"}}),
    )
    .await
    .unwrap();
    assert_eq!(removed["removed"], true);
    assert_eq!(removed["pending_authorizations_retired"], 2);
    assert!(world.connection("sales").await.is_none());
    assert_eq!(
        world.state_count().await,
        1,
        "only the other connection's link is left"
    );

    for link in [&open_one, &open_two] {
        let query = world.consent(&link.authorize_url).await;
        let page = world.callback(&query).await;
        assert_eq!(page.status_code, 400, "a retired link authorizes nothing");
    }
    assert!(
        world.connection("sales").await.is_none(),
        "the removed connection does not come back"
    );
    let query = world.consent(&other.authorize_url).await;
    assert_eq!(world.callback(&query).await.status_code, 200);
    assert!(world.connection("support").await.is_some());
}

// ---------------------------------------------------------------- re-authorization

#[tokio::test]
async fn reauthorization_is_the_next_generation_and_revives_a_dead_connection() {
    let world = World::new().await;
    let (first, _) = world.authorize("default", false).await;
    assert_page(&first, 200);
    let first_refresh = s(&world.connection("default").await.unwrap(), "refresh_token")
        .unwrap()
        .to_owned();

    let (second, _) = world.authorize("default", false).await;
    assert_page(&second, 200);
    let item = world.connection("default").await.unwrap();
    assert_eq!(n(&item, "generation"), Some(2));
    assert_eq!(s(&item, "status"), Some("active"));
    assert_ne!(s(&item, "refresh_token"), Some(first_refresh.as_str()));

    let marked = world
        .clients
        .store
        .mark_needs_reauthorization(
            &connection_id("default"),
            &world
                .clients
                .store
                .get(&connection_id("default"))
                .await
                .unwrap()
                .unwrap()
                .version(),
            MarkGuard::GenerationOnly,
            "refresh_token_rejected",
            now_epoch_secs(),
        )
        .await
        .unwrap();
    assert_eq!(marked, keapalive::token_store::MarkOutcome::Marked);
    assert_eq!(
        s(&world.connection("default").await.unwrap(), "status"),
        Some("needs_reauthorization")
    );

    let (third, _) = world.authorize("default", false).await;
    assert_page(&third, 200);
    let item = world.connection("default").await.unwrap();
    assert_eq!(n(&item, "generation"), Some(3));
    assert_eq!(s(&item, "status"), Some("active"));
    assert!(
        !item.contains_key("last_error"),
        "re-authorization clears the old error"
    );
    assert_eq!(world.connection_count().await, 1);
    world.assert_no_secret_logged(&[&first_refresh]).await;
}

#[tokio::test]
async fn a_different_keap_account_is_refused_unless_the_start_said_replace_account() {
    let world = World::new().await;
    world.fixture.sandbox.set_consent(Consent::Approve {
        app: "alpha".to_owned(),
    });
    let (first, _) = world.authorize("default", false).await;
    assert_page(&first, 200);
    let before = world.connection("default").await.unwrap();

    world.fixture.sandbox.set_consent(Consent::Approve {
        app: "beta".to_owned(),
    });
    let mark = log_mark();
    let (refused, _) = world.authorize("default", false).await;
    assert_page(&refused, 409);
    let html = body(&refused);
    assert!(html.contains("alpha.infusionsoft.com"), "{html}");
    assert!(html.contains("beta.infusionsoft.com"), "{html}");
    assert!(html.contains("replace_account"), "{html}");
    let after = world.connection("default").await.unwrap();
    assert_eq!(after, before, "nothing stored: the item is untouched");
    assert_eq!(world.state_count().await, 0);
    assert!(captured_logs_since(mark).contains("\"reason\":\"account_mismatch\""));

    let (replaced, _) = world.authorize("default", true).await;
    assert_page(&replaced, 200);
    assert!(body(&replaced).contains("beta.infusionsoft.com"));
    let item = world.connection("default").await.unwrap();
    assert_eq!(n(&item, "generation"), Some(2));
    assert_eq!(s(&item, "keap_app"), Some("beta.infusionsoft.com"));
    assert_eq!(s(&item, "status"), Some("active"));
    world.assert_no_secret_logged(&[]).await;
}

// ---------------------------------------------------------------- single use and races

#[tokio::test]
async fn a_replayed_state_is_refused_even_after_a_successful_use() {
    let world = World::new().await;
    let (first, query) = world.authorize("default", false).await;
    assert_page(&first, 200);

    let replay = world.callback(&query).await;
    assert_page(&replay, 400);
    assert!(body(&replay).contains("already used"));
    let item = world.connection("default").await.unwrap();
    assert_eq!(n(&item, "generation"), Some(1), "the replay stored nothing");
    assert_eq!(world.token_requests(), 1, "the replay never reached Keap");
    world
        .assert_no_secret_logged(&[&param(&query, "code")])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_callbacks_with_one_state_store_exactly_one_pair() {
    const RACERS: usize = 8;
    let world = World::new().await;
    let started = world.start("default", false).await;
    let query = world.consent(&started.authorize_url).await;

    let mut racers = Vec::new();
    for _ in 0..RACERS {
        let clients = world.clients.clone();
        let request = event(Method::GET, CALLBACK_PATH, &query);
        racers.push(tokio::spawn(async move {
            handle_callback(&clients.authorization(), &request)
                .await
                .status_code
        }));
    }
    let mut statuses = Vec::new();
    for racer in racers {
        statuses.push(racer.await.unwrap());
    }
    statuses.sort();
    let mut expected = vec![200];
    expected.extend(std::iter::repeat_n(400, RACERS - 1));
    assert_eq!(statuses, expected);
    let item = world.connection("default").await.unwrap();
    assert_eq!(n(&item, "generation"), Some(1));
    assert_eq!(
        world.token_requests(),
        1,
        "only the winner exchanged the code"
    );
}

// ---------------------------------------------------------------- refusals

#[tokio::test]
async fn denied_consent_is_a_403_page_and_stores_nothing() {
    let world = World::new().await;
    world.fixture.sandbox.set_consent(Consent::Deny);
    let started = world.start("default", false).await;
    let query = world.consent(&started.authorize_url).await;
    assert_eq!(param(&query, "error"), "access_denied");

    let mark = log_mark();
    let response = world.callback(&query).await;
    assert_page(&response, 403);
    let html = body(&response);
    assert!(html.contains("denied"), "{html}");
    assert!(
        html.contains("start_authorization"),
        "says how to retry: {html}"
    );
    assert!(
        html.contains("<code>default</code>"),
        "names the connection: {html}"
    );
    assert!(
        !html.contains("User denied access"),
        "nothing from the query is echoed"
    );
    assert_eq!(world.connection_count().await, 0);
    assert_eq!(
        world.state_count().await,
        0,
        "the denied flow's state is retired"
    );
    assert_eq!(world.token_requests(), 0);
    assert!(captured_logs_since(mark).contains("\"reason\":\"access_denied\""));
}

#[tokio::test]
async fn other_keap_errors_are_a_400_page() {
    let world = World::new().await;
    let started = world.start("default", false).await;
    let state = param(
        url::Url::parse(&started.authorize_url)
            .unwrap()
            .query()
            .unwrap(),
        "state",
    );
    let response = world
        .callback(&format!(
            "state={state}&error=server_error&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        ))
        .await;
    assert_page(&response, 400);
    assert!(!body(&response).contains("script"), "nothing echoed");
    assert!(!body(&response).contains("server_error"), "nothing echoed");
    assert_eq!(world.connection_count().await, 0);
    assert_eq!(world.state_count().await, 0);
}

#[tokio::test]
async fn missing_unknown_malformed_and_expired_states_are_400_pages() {
    let world = World::new().await;
    let mark = log_mark();

    let missing = world.callback("code=abc").await;
    assert_page(&missing, 400);

    let never_issued = "0123456789abcdef".repeat(4);
    let unknown = world
        .callback(&format!("code=abc&state={never_issued}"))
        .await;
    assert_page(&unknown, 400);
    assert!(body(&unknown).contains("unknown"));

    let malformed = world.callback("code=abc&state=not-a-nonce").await;
    assert_page(&malformed, 400);

    let expired_state = world.put_state("default", now_epoch_secs() - 1).await;
    let expired = world
        .callback(&format!("code=abc&state={expired_state}"))
        .await;
    assert_page(&expired, 400);
    assert!(body(&expired).contains("expired"), "{}", body(&expired));

    assert_eq!(world.connection_count().await, 0);
    assert_eq!(world.token_requests(), 0, "no code was exchanged");
    let logged = captured_logs_since(mark);
    for reason in ["missing_state", "unknown_state", "expired_state"] {
        assert!(
            logged.contains(&format!("\"reason\":\"{reason}\"")),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_missing_code_is_a_400_page() {
    let world = World::new().await;
    let started = world.start("default", false).await;
    let query = world.consent(&started.authorize_url).await;
    let state = param(&query, "state");

    let response = world.callback(&format!("state={state}")).await;
    assert_page(&response, 400);
    assert!(body(&response).contains("authorization code"));
    let empty = world.callback(&format!("state={state}&code=")).await;
    assert_page(&empty, 400);
    assert_eq!(world.connection_count().await, 0);
    assert_eq!(world.token_requests(), 0);
}

#[tokio::test]
async fn a_code_keap_rejects_is_a_400_page_and_spends_the_state() {
    let world = World::new().await;
    // A reused code: the first flow succeeds, the second presents its code again.
    let (first, first_query) = world.authorize("default", false).await;
    assert_page(&first, 200);
    let used_code = param(&first_query, "code");
    let started = world.start("default", false).await;
    let state = param(
        url::Url::parse(&started.authorize_url)
            .unwrap()
            .query()
            .unwrap(),
        "state",
    );
    let reused = world
        .callback(&format!("code={used_code}&state={state}"))
        .await;
    assert_page(&reused, 400);
    assert!(body(&reused).contains("refused"), "{}", body(&reused));
    assert!(!body(&reused).contains(&used_code));
    assert_eq!(world.state_count().await, 0, "the state is spent");
    assert_eq!(
        n(&world.connection("default").await.unwrap(), "generation"),
        Some(1),
        "nothing stored"
    );

    // A code issued for another redirect URI.
    let started = world.start("other", false).await;
    let mut authorize = url::Url::parse(&started.authorize_url).unwrap();
    let params: Vec<(String, String)> = authorize
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            let v = if k == "redirect_uri" {
                "https://elsewhere.test/cb".to_owned()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    authorize.query_pairs_mut().clear().extend_pairs(params);
    let response = world.browser.get(authorize.as_str()).send().await.unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let query = url::Url::parse(&location)
        .unwrap()
        .query()
        .unwrap()
        .to_owned();
    let mismatched = world.callback(&query).await;
    assert_page(&mismatched, 400);
    assert!(world.connection("other").await.is_none());
    assert_eq!(world.state_count().await, 0);
    world
        .assert_no_secret_logged(&[&used_code, &param(&query, "code")])
        .await;
}

#[tokio::test]
async fn keap_down_is_a_502_page_and_spends_the_state() {
    let world = World::with(&[("KEAPALIVE_KEAP_TIMEOUT_SECS", "1")]).await;
    let fault = world.fixture.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times: 1,
    });
    let mark = log_mark();
    let (unavailable, _) = world.authorize("default", false).await;
    fault.assert_fired(1);
    assert_page(&unavailable, 502);
    assert!(body(&unavailable).contains("start again"));
    assert_eq!(world.connection_count().await, 0);
    assert_eq!(world.state_count().await, 0);
    assert!(captured_logs_since(mark).contains("\"reason\":\"keap_unavailable\""));

    let fault2 = world.fixture.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Delay(Duration::from_secs(3)),
        times: 1,
    });
    let started = std::time::Instant::now();
    let (timed_out, query) = world.authorize("default", false).await;
    fault2.assert_fired(1);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the exchange waited out the 1 s Keap timeout: {:?}",
        started.elapsed()
    );
    assert_page(&timed_out, 502);
    assert_eq!(world.connection_count().await, 0);
    assert_eq!(world.state_count().await, 0);
    world
        .assert_no_secret_logged(&[&param(&query, "code")])
        .await;
}

#[tokio::test]
async fn a_throttled_table_is_retried_then_a_503_page() {
    let world = World::new().await;
    let emulator = Emulator::shared();
    let started = world.start("default", false).await;
    let query = world.consent(&started.authorize_url).await;
    // More throttles than one SDK call retries through: only the callback's own retry of the
    // pair's write gets it stored.
    let throttle = |times| {
        // The pair's write: a transaction with the removal tombstone's check.
        DynamoDbFault::new(
            "TransactWriteItems",
            "ProvisionedThroughputExceededException",
        )
        .body_contains(&world.fixture.table)
        .body_contains("authorized_by")
        .times(times)
    };
    let fault = emulator.inject_dynamodb_fault(throttle(4)).await;
    let stored = world.callback(&query).await;
    fault.assert_fired(4).await;
    assert_page(&stored, 200);
    assert_eq!(
        n(&world.connection("default").await.unwrap(), "generation"),
        Some(1)
    );

    let fault2 = emulator.inject_dynamodb_fault(throttle(1_000)).await;
    let mark = log_mark();
    let (unavailable, _) = world.authorize("default", false).await;
    fault2.assert_fired(1).await;
    assert_page(&unavailable, 503);
    assert!(body(&unavailable).contains("start again"));
    assert_eq!(
        n(&world.connection("default").await.unwrap(), "generation"),
        Some(1),
        "nothing stored"
    );
    assert!(captured_logs_since(mark).contains("\"reason\":\"store_unavailable\""));
}

#[tokio::test]
async fn garbage_and_oversized_queries_are_400_pages() {
    let world = World::new().await;
    let started = world.start("default", false).await;
    let query = world.consent(&started.authorize_url).await;
    let state = param(&query, "state");
    let code = param(&query, "code");

    let padding = "x".repeat(MAX_QUERY_BYTES);
    for garbage in [
        format!("code={code}&state={state}&pad={padding}"),
        format!("code={code}&state={state}%zz"),
        format!("code={code}&state={state}&state={state}"),
        format!("code={code}&code=other&state={state}"),
        format!("code={code}%00&state={state}"),
        format!("code=%FF%FE&state={state}"),
    ] {
        let response = world.callback(&garbage).await;
        assert_page(&response, 400);
        assert!(!body(&response).contains(&code));
    }
    assert_eq!(world.connection_count().await, 0);
    assert_eq!(world.token_requests(), 0);
    assert_eq!(
        world.state_count().await,
        1,
        "garbage never reaches the state"
    );

    // The real redirect still works afterwards.
    assert_page(&world.callback(&query).await, 200);
}

#[tokio::test]
async fn pages_never_echo_the_query() {
    let world = World::new().await;
    let hostile = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    for query in [
        format!("code={hostile}&state={hostile}"),
        format!("error={hostile}&state={hostile}"),
        format!("error=access_denied&error_description={hostile}"),
    ] {
        let response = world.callback(&query).await;
        assert!(response.status_code >= 400);
        assert_page(&response, response.status_code);
        assert!(!body(&response).contains("<script>"));
        assert!(!body(&response).contains("alert(1)"));
    }
}

#[tokio::test]
async fn wrong_method_or_path_is_404_or_405() {
    let world = World::new().await;
    let post = handle_callback(
        &world.clients.authorization(),
        &event(Method::POST, CALLBACK_PATH, ""),
    )
    .await;
    assert_page(&post, 405);
    assert_eq!(post.headers["allow"], "GET");
    for path in ["/", "/oauth", "/oauth/callback/x", "/admin"] {
        let response = handle_callback(
            &world.clients.authorization(),
            &event(Method::GET, path, "code=a&state=b"),
        )
        .await;
        assert_page(&response, 404);
    }
    assert!(world.items().await.is_empty());
}

#[tokio::test]
async fn unreadable_client_credentials_are_a_500_configuration_page() {
    logs::capture_logs();
    let fixture = Fixture::new().await;
    let broken_value = "not-json-but-secret-looking-value-123";
    let broken = create_secret_string(&fixture.sdk, broken_value).await;
    for secret_id in [broken.as_str(), "keapalive-test-no-such-secret"] {
        let clients = fixture.clients(&[("KEAPALIVE_CLIENT_SECRET_ID", secret_id)]);
        let start = start_authorization(&clients.authorization(), &StartAuthorization::default())
            .await
            .unwrap_err();
        assert_eq!(start.error_type(), "ConfigurationError");
        assert!(!start.to_string().contains(broken_value));

        let state = put_state(&clients, "default", now_epoch_secs() + 600).await;
        let request = event(
            Method::GET,
            CALLBACK_PATH,
            &format!("code=abc&state={state}"),
        );
        let response = handle_callback(&clients.authorization(), &request).await;
        assert_page(&response, 500);
        let html = body(&response);
        assert!(html.contains("configuration"), "{html}");
        assert!(
            !html.contains(secret_id) && !html.contains(broken_value),
            "{html}"
        );
        let items = scan_all(&fixture.sdk, &fixture.table).await;
        assert!(items.is_empty(), "state spent, nothing stored: {items:?}");
    }
    assert_logs_never_contain(&[broken_value]);
}

#[tokio::test]
async fn no_token_code_or_secret_reaches_the_logs() {
    let world = World::new().await;
    let mut codes = Vec::new();
    for id in ["default", "second"] {
        let (response, query) = world.authorize(id, false).await;
        assert_page(&response, 200);
        codes.push(param(&query, "code"));
    }
    world.fixture.sandbox.set_consent(Consent::Deny);
    let (denied, _) = world.authorize("default", false).await;
    assert_page(&denied, 403);
    let replay = world
        .callback(&format!("code={}&state={}", codes[0], "ab".repeat(32)))
        .await;
    assert_page(&replay, 400);

    let stored: Vec<Value> = world
        .items()
        .await
        .iter()
        .map(|item| json!({"pk": s(item, "pk")}))
        .collect();
    assert_eq!(stored.len(), 2, "two connections: {stored:?}");
    let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
    world.assert_no_secret_logged(&codes).await;
}

// ---------------------------------------------------------------- the fault model

/// A state consume that DynamoDB applied and whose answer was lost: the SDK retries it, the
/// retry's condition fails on our own `consumed_by`, and the callback goes on instead of
/// refusing its own state (and stranding the code it was about to exchange).
#[tokio::test]
async fn landed_state_consume_whose_answer_is_lost_is_recognised() {
    let world = World::new().await;
    let started = world.start("default", false).await;
    let query = world.consent(&started.authorize_url).await;
    let fault = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::applied_then_lost("UpdateItem")
                .body_contains(&world.fixture.table)
                .body_contains("consumed_by"),
        )
        .await;

    let response = world.callback(&query).await;

    fault.assert_fired(1).await;
    assert_page(&response, 200);
    let item = world.connection("default").await.expect("pair stored");
    assert_eq!(n(&item, "generation"), Some(1));
    assert_eq!(world.state_count().await, 0, "the state is consumed");
    assert_eq!(world.token_requests(), 1);
}

/// The first-pair write landed and its answer was lost: the retry neither applies twice
/// (generation 2) nor fails as an account mismatch.
#[tokio::test]
async fn landed_first_pair_write_whose_answer_is_lost_is_recognised() {
    let world = World::new().await;
    let started = world.start("default", false).await;
    let query = world.consent(&started.authorize_url).await;
    let fault = Emulator::shared()
        .inject_dynamodb_fault(
            DynamoDbFault::applied_then_lost("TransactWriteItems")
                .body_contains(&world.fixture.table)
                .body_contains("authorized_by"),
        )
        .await;

    let response = world.callback(&query).await;

    fault.assert_fired(1).await;
    assert_page(&response, 200);
    let item = world.connection("default").await.expect("pair stored");
    assert_eq!(n(&item, "generation"), Some(1), "applied exactly once");
    assert_eq!(s(&item, "status"), Some("active"));
    assert!(s(&item, "incarnation").is_some_and(|i| !i.is_empty()));
}

#[tokio::test]
async fn a_redirected_code_exchange_delivers_nothing_and_is_not_retried() {
    let world = World::new().await;
    let started = world.start("default", false).await;
    let query = world.consent(&started.authorize_url).await;
    let code = param(&query, "code");
    let capture = crate::support::CaptureServer::start().await;
    let fault = world.fixture.sandbox.inject(Fault {
        endpoint: Endpoint::Token,
        kind: FaultKind::Redirect {
            status: 308,
            location: format!("{}/token", capture.url),
        },
        times: 1,
    });

    let response = world.callback(&query).await;

    fault.assert_fired(1);
    assert!(
        response.status_code >= 500,
        "Keap unavailable: {}",
        response.status_code
    );
    assert_eq!(capture.received(), "", "the redirect was followed");
    let exchanges = world
        .fixture
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .count();
    assert_eq!(exchanges, 1, "the single-use code is presented once");
    assert_eq!(world.connection_count().await, 0);
    world.assert_no_secret_logged(&[&code]).await;
}
