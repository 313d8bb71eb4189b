//! A stateful local stand-in for Keap's (Infusionsoft's) OAuth2 endpoints and REST v1 API, for
//! integration tests, benchmarks and the local demo. It is deliberately strict: it rejects what
//! Keap rejects (or is reported to reject), so a client that passes here is not merely passing
//! against a lenient fake.
//!
//! # Endpoints (real HTTP on 127.0.0.1)
//!
//! - `GET /app/oauth/authorize?client_id&redirect_uri&response_type=code&scope=full&state` →
//!   `302` to `redirect_uri?code=..&state=..`, or Keap's denial redirect
//!   (`?state=..&error=access_denied&error_description=User+denied+access+to+resource&error_uri=..`)
//!   per [`Consent`]. Bad client / redirect URI (must be https, or http on localhost) → `400` page.
//!   Codes: single use, 10 minutes, bound to the client and the exact redirect URI.
//! - `POST /token` (form body only; a JSON body or URL parameters → `400 invalid_request`):
//!   `authorization_code` (client credentials in the body or HTTP Basic) and `refresh_token`
//!   (HTTP Basic required). Refresh tokens are single-use; a new authorization of the same
//!   client and app kills the grant's previous refresh token; access tokens live until expiry.
//!   Errors: `400 {"error":"invalid_grant","error_description":"Invalid refresh token"}`,
//!   `400 invalid_grant "Invalid authorization code"`, `401 invalid_client`.
//! - `/crm/rest/v1/...` with `Authorization: Bearer` or `X-Keap-API-Key` (a `?access_token=`
//!   query parameter is not accepted): `GET account/profile`, `PUT contacts` (strict upsert),
//!   `GET contacts?email=`, `GET contacts/{id}` (`optional_properties=custom_fields` to include
//!   custom fields), `GET contacts/model`, `GET|POST tags`, `GET tags/{id}`,
//!   `POST contacts/{id}/tags` (200 with one outcome per id, as Keap answers; see `tags`).
//!   Auth failures are `401` with Keap's gateway body
//!   `{"fault":{"faultstring":"Invalid Access Token","detail":{"errorcode":"keymanagement.service.invalid_access_token"}}}`
//!   (`"Access Token expired"` / `keymanagement.service.access_token_expired` when expired,
//!   `"Invalid ApiKey"` / `oauth.v2.InvalidApiKey` for keys). Shape errors in request bodies are
//!   `400 {"message":"Input could not be converted to a valid request"}`.
//!
//! - REST Hooks (see `hooks`, `hook_delivery`): `GET hooks/event_keys` (a JSON array of
//!   strings), `POST hooks {"eventKey","hookUrl"}` (Keap POSTs `[]` with a fresh `X-Hook-Secret`
//!   to `hookUrl` during the call: a `200` echoing the header makes it `Verified`, anything else
//!   `Unverified`; answers `200 {"key","eventKey","hookUrl","status"}`; an unknown event key or a
//!   non-http(s) URL → `400 {"message"}`), `GET hooks` (the app's hooks, every integration's),
//!   `GET|DELETE hooks/{key}` (`204`; unknown → `404`), `POST hooks/{key}/verify` (a new
//!   handshake now: an echo makes even an `Inactive` hook `Verified`; a failure leaves
//!   `Inactive` as it is, anything else `Unverified`), `POST hooks/{key}/delayedVerify` with
//!   the latest handshake's `X-Hook-Secret` (→ `Verified`; a wrong one → `400`). Deliveries
//!   (started with `POST /_sandbox/hook-events`) go only to `Verified` hooks of the app and key:
//!   `{"event_key","object_type","object_keys"}`, ≤ 1,000 objects each, four attempts after
//!   30–60 s, 30–60 s, 5 min, 30 min (× the delay scale); an attempt fails on no answer in
//!   30 s (× the timeout scale) or a status < 200 or ≥ 400 but 410; the fourth failure, or any
//!   410, makes the hook `Inactive`. Redirects are not followed. The hooks endpoints are `api`
//!   endpoints for faults, latency, quotas and the request log.
//! - Sandbox-only, for keap-proxy's tests: `ANY /crm/rest/{v1,v2}/_echo/{*rest}` answers what
//!   arrived (method, path, query, JSON body, auth kind) with two `x-keap-*` headers and a
//!   `set-cookie` (see `echo`). A redirect is [`FaultKind::Redirect`]; any unrouted path is 404.
//!
//! Data is per Keap app (tenant); a token's or key's app is its tenant. `PUT /contacts` accepts
//! `tag_ids` but ignores it (whether Keap honours it is unverified). Without `duplicate_option`
//! it always creates.
//!
//! # Control API (for out-of-process users such as `keap-sandbox` the binary)
//!
//! Under `/_sandbox`, JSON in and out, never faulted, delayed or logged:
//!
//! | request | body / query | answer |
//! |---|---|---|
//! | `POST /_sandbox/clients` | `{"client_id","client_secret"}` | 204 |
//! | `PUT /_sandbox/consent` | `{"decision":"approve","app":"sandbox01"}` or `{"decision":"deny"}` | 204 |
//! | `POST /_sandbox/grants` | `{"client_id","app"}` | `{"access_token","refresh_token","expires_in","scope"}` |
//! | `POST /_sandbox/revoke-grant` | `{"app"}` | 204 |
//! | `POST /_sandbox/expire-access-tokens` | — | 204 |
//! | `PUT /_sandbox/access-token-lifetime` | `{"secs"}` | 204 |
//! | `GET /_sandbox/refresh-token?app=` | — | `{"refresh_token": string or null}` |
//! | `POST /_sandbox/service-account-keys` | `{"app"}` | `{"key"}` |
//! | `POST /_sandbox/revoke-service-account-key` | `{"key"}` | 204 |
//! | `POST /_sandbox/custom-fields` | `{"app","label","field_type"}` | `{"id"}` |
//! | `POST /_sandbox/tags` | `{"app","name"}` | `{"id"}` |
//! | `GET /_sandbox/tags?app=` | — | `[{"id","name"}]` |
//! | `GET /_sandbox/contacts?app=` | — | the stored contacts |
//! | `POST /_sandbox/faults` | `{"endpoint":"token"\|"api"\|"authorize"\|"any","times":1,"kind":K}` | `{"id"}` |
//! | `GET /_sandbox/faults/fired?id=` | — | `{"fired"}`: requests fault `id` answered (404 for an unknown id) |
//! | `PUT /_sandbox/latency` | `{"endpoint","millis"}` | 204 |
//! | `GET /_sandbox/requests` | — | `[{"method","path","query","at_ms","auth","basic_client_id","grant_type","form_client_id","presentation","status","handling_ms","app"}]` |
//! | `DELETE /_sandbox/requests` | — | 204 |
//! | `GET /_sandbox/hooks?app=` | — | `[{"key","eventKey","hookUrl","status"}]` |
//! | `PUT /_sandbox/hook-status` | `{"key","status":"Inactive"}` (or `"Verified"`, `"Unverified"`) | 204 (404 for an unknown key) |
//! | `POST /_sandbox/hook-events` | `{"app","event_key","object_keys":[{"id","apiUrl","timestamp"}],"object_type"?}` | `{"hooks":[key]}`: the hooks it goes to (400 for an unknown event key) |
//! | `PUT /_sandbox/hook-delay-scale` | `{"scale":0.001,"timeout_scale"?:0.1}` (`timeout_scale` defaults to `scale`) | 204 |
//! | `GET /_sandbox/hook-deliveries` | — | `[{"kind":"verification"\|"delivery","hook_key","hook_url","app","event_key","delivery","attempt","status","error","succeeded","body","at_ms"}]` |
//! | `DELETE /_sandbox/hook-deliveries` | — | 204 |
//! | `GET /_sandbox/hook-deliveries/in-flight` | — | `{"in_flight"}`: deliveries still retrying |
//!
//! `K` is `{"status":{"status":429,"retry_after_secs":3}}`, `{"delay_ms":5000}`,
//! `{"status_then_broken_body":{"status":503,"break_body":"cut"}}` (or `"stall"`: the status line
//! and half the body, then the connection is closed or goes silent),
//! `"drop_after_processing"` or `"drop_before_processing"` (see [`FaultKind`]). `at_ms` counts
//! from the sandbox's start; `auth` is `basic`, `bearer`, `api_key` or `none`.

mod api;
mod clock;
mod contacts;
mod control;
mod credentials;
mod echo;
mod gate;
mod hook_control;
mod hook_delivery;
mod hook_store;
mod hooks;
mod oauth;
mod quota;
mod random;
mod respond;
mod server;
mod state;
mod tags;
mod types;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use quota::ProductLimits;
use state::Shared;
pub use types::{
    AuthKind, BodyBreak, Consent, Endpoint, Fault, FaultKind, Hook, HookAttempt, HookEvent,
    HookRequestKind, HookStatus, IssuedPair, ObjectKey, RecordedRequest, most_in_flight,
};

/// The app (tenant) the default consent approves.
pub const DEFAULT_APP: &str = "sandbox01";

/// A running sandbox. Dropping it stops the server and closes its connections.
pub struct Sandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    // Dropping the sender is the shutdown signal.
    _shutdown: watch::Sender<()>,
    accept_task: JoinHandle<()>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.accept_task.abort();
        // A delivery may wait 36 minutes between its attempts: it must not outlive the sandbox.
        self.shared.lock().hooks.abort_deliveries();
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("addr", &self.addr).finish()
    }
}

impl Sandbox {
    /// Binds 127.0.0.1 on a free port. Hook deliveries run on the runtime this is called on.
    pub async fn start() -> std::io::Result<Sandbox> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let (shutdown, shutdown_signal) = watch::channel(());
        let accept_task = tokio::spawn(server::accept_loop(
            listener,
            router(shared.clone()),
            shutdown_signal,
        ));
        Ok(Sandbox {
            shared,
            addr,
            _shutdown: shutdown,
            accept_task,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn authorize_url(&self) -> String {
        format!("{}/app/oauth/authorize", self.base_url())
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// Clients append `/v1/...`, as with `https://api.infusionsoft.com/crm/rest`.
    pub fn api_base_url(&self) -> String {
        format!("{}/crm/rest", self.base_url())
    }

    // ---- OAuth apps and grants ----

    pub fn register_client(&self, client_id: &str, client_secret: &str) {
        self.shared.lock().register_client(client_id, client_secret);
    }

    pub fn set_consent(&self, consent: Consent) {
        self.shared.lock().consent = consent;
    }

    /// Mints a pair as a completed authorization would (replacing that client's grant for `app`).
    pub fn issue_grant(&self, client_id: &str, app: &str) -> IssuedPair {
        self.shared.lock().new_grant(client_id, app)
    }

    /// The user revoked access in Keap: every access and refresh token of `app` dies.
    pub fn revoke_grant(&self, app: &str) {
        self.shared.lock().revoke_grant(app);
    }

    /// Every access token valid now is expired from now on; later ones are unaffected.
    pub fn expire_access_tokens(&self) {
        self.shared.lock().expire_access_tokens();
    }

    /// `expires_in` of tokens issued from now on (default 86400).
    pub fn set_access_token_lifetime(&self, secs: u64) {
        self.shared.lock().access_token_lifetime_secs = secs;
    }

    /// The live refresh token of the app's most recent grant.
    pub fn current_refresh_token(&self, app: &str) -> Option<String> {
        self.shared.lock().current_refresh_token(app)
    }

    // ---- Service account keys ----

    pub fn issue_service_account_key(&self, app: &str) -> String {
        self.shared.lock().issue_service_account_key(app)
    }

    pub fn revoke_service_account_key(&self, key: &str) {
        self.shared.lock().revoke_service_account_key(key);
    }

    // ---- Tenant data ----

    /// Returns the field's id; the same label and type again return the same id.
    pub fn add_custom_field(&self, app: &str, label: &str, field_type: &str) -> i64 {
        self.shared.lock().add_custom_field(app, label, field_type)
    }

    /// Returns the tag's id; an existing name returns the existing id.
    pub fn add_tag(&self, app: &str, name: &str) -> i64 {
        self.shared.lock().add_tag(app, name)
    }

    /// Deletes the tag (and takes it off every contact), as a Keap user may at any time.
    pub fn delete_tag(&self, app: &str, id: i64) {
        self.shared.lock().delete_tag(app, id);
    }

    /// Applies of tag `id` report `outcome` (`"NO_PERMISSION"`, `"FAILURE"`) instead of applying
    /// it; `None` restores normal applies.
    pub fn set_tag_apply_outcome(&self, app: &str, id: i64, outcome: Option<&str>) {
        self.shared.lock().set_tag_apply_outcome(app, id, outcome);
    }

    /// Stored contacts, by id, as `PUT /contacts` returns them (custom fields included).
    pub fn contacts(&self, app: &str) -> Vec<serde_json::Value> {
        self.shared.lock().contacts_json(app)
    }

    pub fn tags(&self, app: &str) -> Vec<(i64, String)> {
        self.shared.lock().tag_list(app)
    }

    // ---- REST Hooks ----

    /// `app`'s hook subscriptions, as `GET /v1/hooks` answers them.
    pub fn hooks(&self, app: &str) -> Vec<Hook> {
        self.shared.lock().hooks.list(app)
    }

    /// Sets any app's hook `key` to `status` at once (e.g. `Inactive`, as four failed deliveries
    /// would); false for an unknown key.
    pub fn set_hook_status(&self, key: &str, status: HookStatus) -> bool {
        self.shared.lock().hooks.set_status(key, status)
    }

    /// Multiplies Keap's retry delays (30–60 s, 30–60 s, 5 min, 30 min) and the 30 s it waits
    /// for an answer (deliveries and handshakes) by `scale` (default 1). Panics unless `scale`
    /// is finite and positive.
    pub fn set_hook_delay_scale(&self, scale: f64) {
        assert!(hook_control::valid_scale(scale, false), "bad scale {scale}");
        let mut sandbox = self.shared.lock();
        sandbox.hooks.delay_scale = scale;
        sandbox.hooks.timeout_scale = scale;
    }

    /// Multiplies only the 30 s answer timeout (set after [`Sandbox::set_hook_delay_scale`]): a
    /// loaded test machine may need more than 30 ms to answer while delays stay short. Panics
    /// unless `scale` is finite and positive.
    pub fn set_hook_timeout_scale(&self, scale: f64) {
        assert!(hook_control::valid_scale(scale, false), "bad scale {scale}");
        self.shared.lock().hooks.timeout_scale = scale;
    }

    /// The change happened in Keap: every `Verified` hook of `app` for `event.event_key` gets
    /// it (in payloads of at most 1,000 objects), in the background, with Keap's retries.
    /// Answers the keys of those hooks; an event key Keap does not list is an error.
    pub fn deliver_hook_event(&self, app: &str, event: HookEvent) -> Result<Vec<String>, String> {
        hook_control::deliver(&self.shared, app, event)
    }

    /// Every handshake and delivery attempt so far, in the order they were answered.
    pub fn hook_attempts(&self) -> Vec<HookAttempt> {
        self.shared.lock().hooks.attempts()
    }

    pub fn clear_hook_attempts(&self) {
        self.shared.lock().hooks.clear_attempts();
    }

    /// Waits until no delivery is pending (delivered, given up, or the hook went `Inactive`);
    /// false if some still are after `timeout`.
    pub async fn wait_for_hook_deliveries(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.lock().hooks.in_flight() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ---- Faults, latency, request log ----

    /// Faults queue in order; a request takes the first one that matches its endpoint. The
    /// returned handle counts the requests the fault answered, so a test can prove it fired.
    pub fn inject(&self, fault: Fault) -> FaultHandle {
        let id = self.shared.lock().inject(fault);
        FaultHandle {
            id,
            shared: self.shared.clone(),
        }
    }

    /// Drops every fault still queued; what the used ones answered is still counted.
    pub fn clear_faults(&self) {
        self.shared.lock().clear_faults();
    }

    /// Lowers (or restores, with the default) Keap's product throttle and daily quota; usage
    /// so far is forgotten. Every REST answer reports them in `x-keap-product-*` headers, and a
    /// request made with nothing available is refused with a 429 ([`ProductLimits`]).
    pub fn set_product_limits(&self, limits: ProductLimits) {
        self.shared.lock().product_quota.set_limits(limits);
    }

    /// Added to every matching request (settings for `Any` and a specific endpoint add up);
    /// zero turns it off. Requests sleep concurrently.
    pub fn set_latency(&self, endpoint: Endpoint, latency: Duration) {
        self.shared.lock().set_latency(endpoint, latency);
    }

    /// Finished requests (dropped ones included, with status 0), in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().clear_requests();
    }
}

/// A fault [`Sandbox::inject`] queued (or queued once: the count outlives the fault).
#[derive(Clone)]
pub struct FaultHandle {
    id: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHandle").field("id", &self.id).finish()
    }
}

impl FaultHandle {
    /// Requests this fault answered so far.
    pub fn fired(&self) -> u64 {
        self.shared.lock().fired(self.id).unwrap_or(0)
    }

    /// Panics unless this fault answered at least `at_least` requests: a fault test whose fault
    /// never matched a request would otherwise pass without testing anything.
    #[track_caller]
    pub fn assert_fired(&self, at_least: u64) {
        let fired = self.fired();
        assert!(
            fired >= at_least,
            "the injected Keap sandbox fault fired {fired} time(s), expected at least \
             {at_least}: it never matched the request the test meant to fault"
        );
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/app/oauth/authorize", get(oauth::authorize))
        .route("/token", post(oauth::token))
        .nest("/crm/rest/v1", api::router())
        .nest("/crm/rest/v2", api::v2_router())
        .nest(gate::CONTROL_PREFIX, control::router())
        .fallback(api::fallback)
        .layer(from_fn_with_state(shared.clone(), gate::gate))
        .with_state(shared)
}
