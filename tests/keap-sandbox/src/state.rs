//! Everything the sandbox remembers, behind one mutex. Every check-and-change (consuming a
//! code or refresh token, deduplicating a contact) happens under a single lock acquisition,
//! so single-use guarantees hold under any concurrency. The lock is never held across `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::contacts::Contact;
use crate::hook_store::HookStore;
use crate::quota::ProductQuota;
use crate::types::{Consent, Endpoint, Fault, FaultKind, IssuedPair, RecordedRequest};
use crate::{clock, random};

/// Keap's code lifetime is not documented; 10 minutes is the common OAuth choice.
const CODE_LIFETIME: Duration = Duration::from_secs(600);
pub(crate) const DEFAULT_ACCESS_TOKEN_LIFETIME_SECS: u64 = 86_400;

pub(crate) struct Shared {
    state: Mutex<State>,
    pub started: Instant,
    /// Where hook deliveries run: a `Sandbox` method may be called from outside any runtime.
    pub runtime: tokio::runtime::Handle,
}

impl Shared {
    /// Must be called within a Tokio runtime (the one hook deliveries will run on).
    pub(crate) fn new() -> Self {
        Shared {
            state: Mutex::new(State::default()),
            started: Instant::now(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// A panic in one handler must not wedge every later test request.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Which sandbox area a request path belongs to (for faults, latency and the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteClass {
    Token,
    Api,
    Authorize,
    Other,
}

impl RouteClass {
    pub(crate) fn of(path: &str) -> Self {
        if path == "/token" {
            RouteClass::Token
        } else if path == "/crm/rest" || path.starts_with("/crm/rest/") {
            RouteClass::Api
        } else if path == "/app/oauth/authorize" {
            RouteClass::Authorize
        } else {
            RouteClass::Other
        }
    }

    fn matches(self, endpoint: Endpoint) -> bool {
        matches!(
            (endpoint, self),
            (Endpoint::Any, _)
                | (Endpoint::Token, RouteClass::Token)
                | (Endpoint::Api, RouteClass::Api)
                | (Endpoint::Authorize, RouteClass::Authorize)
        )
    }
}

pub(crate) struct AuthCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub app: String,
    pub expires_at: Instant,
}

struct RefreshToken {
    client_id: String,
    app: String,
    live: bool,
}

struct AccessToken {
    app: String,
    expires_at: Instant,
    revoked: bool,
}

struct ServiceAccountKey {
    app: String,
    revoked: bool,
}

/// One (client, app) authorization: only its newest refresh token is alive.
struct Grant {
    refresh_token: String,
    issued_seq: u64,
}

pub(crate) enum AccessCheck {
    Valid { app: String },
    Expired,
    Invalid,
}

pub(crate) enum CodeExchange {
    Issued(IssuedPair),
    InvalidCode,
    RedirectMismatch,
}

pub(crate) enum RefreshOutcome {
    Issued(IssuedPair),
    InvalidRefreshToken,
}

#[derive(Clone)]
pub(crate) struct CustomField {
    pub id: i64,
    pub label: String,
    pub field_type: String,
}

#[derive(Clone)]
pub(crate) struct Tag {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub category_id: Option<i64>,
}

/// One Keap app's (tenant's) data. Ids start in different ranges per kind so that a client
/// passing a tag id where a custom-field id belongs is caught.
pub(crate) struct AppData {
    pub contacts: BTreeMap<i64, Contact>,
    pub next_contact_id: i64,
    pub custom_fields: Vec<CustomField>,
    pub next_custom_field_id: i64,
    pub tags: BTreeMap<i64, Tag>,
    pub next_tag_id: i64,
    /// Outcomes a tag's applies report instead of being applied (`NO_PERMISSION`, `FAILURE`).
    pub tag_apply_outcomes: BTreeMap<i64, String>,
}

impl Default for AppData {
    fn default() -> Self {
        AppData {
            contacts: BTreeMap::new(),
            next_contact_id: 1,
            custom_fields: Vec::new(),
            next_custom_field_id: 12,
            tags: BTreeMap::new(),
            next_tag_id: 90,
            tag_apply_outcomes: BTreeMap::new(),
        }
    }
}

pub(crate) struct State {
    clients: HashMap<String, String>,
    pub consent: Consent,
    pub access_token_lifetime_secs: u64,
    codes: HashMap<String, AuthCode>,
    grants: HashMap<(String, String), Grant>,
    refresh_tokens: HashMap<String, RefreshToken>,
    access_tokens: HashMap<String, AccessToken>,
    service_account_keys: HashMap<String, ServiceAccountKey>,
    apps: HashMap<String, AppData>,
    /// Queued faults with their ids (see [`State::inject`]).
    faults: VecDeque<(u64, Fault)>,
    /// Requests each fault answered, by id; kept after the fault is used up.
    fired: HashMap<u64, u64>,
    next_fault_id: u64,
    /// Presentations of each refresh token so far (I1: at most one, two after a lost answer).
    presentations: HashMap<String, u32>,
    latency: HashMap<Endpoint, Duration>,
    requests: Vec<(u64, RecordedRequest)>,
    next_request_seq: u64,
    next_grant_seq: u64,
    last_timestamp_millis: i64,
    pub(crate) product_quota: ProductQuota,
    pub(crate) hooks: HookStore,
}

impl Default for State {
    fn default() -> Self {
        State {
            clients: HashMap::new(),
            consent: Consent::default(),
            access_token_lifetime_secs: DEFAULT_ACCESS_TOKEN_LIFETIME_SECS,
            codes: HashMap::new(),
            grants: HashMap::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            service_account_keys: HashMap::new(),
            apps: HashMap::new(),
            faults: VecDeque::new(),
            fired: HashMap::new(),
            next_fault_id: 0,
            presentations: HashMap::new(),
            latency: HashMap::new(),
            requests: Vec::new(),
            next_request_seq: 0,
            next_grant_seq: 0,
            last_timestamp_millis: 0,
            product_quota: ProductQuota::default(),
            hooks: HookStore::default(),
        }
    }
}

pub(crate) fn scope_for(app: &str) -> String {
    format!("full|{app}.infusionsoft.com")
}

impl State {
    // ---- OAuth clients, codes, grants ----

    pub(crate) fn register_client(&mut self, client_id: &str, client_secret: &str) {
        self.clients
            .insert(client_id.to_owned(), client_secret.to_owned());
    }

    pub(crate) fn is_registered(&self, client_id: &str) -> bool {
        self.clients.contains_key(client_id)
    }

    pub(crate) fn client_secret_matches(&self, client_id: &str, client_secret: &str) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|secret| secret == client_secret)
    }

    pub(crate) fn issue_code(&mut self, client_id: &str, redirect_uri: &str, app: &str) -> String {
        let code = random::alphanumeric(24);
        self.codes.insert(
            code.clone(),
            AuthCode {
                client_id: client_id.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                app: app.to_owned(),
                expires_at: Instant::now() + CODE_LIFETIME,
            },
        );
        code
    }

    pub(crate) fn code_app(&self, code: &str) -> Option<String> {
        self.codes.get(code).map(|c| c.app.clone())
    }

    /// A code works once, for the client it was issued to, with the exact redirect URI used at
    /// authorize, within its lifetime. A failed attempt does not burn it.
    pub(crate) fn exchange_code(
        &mut self,
        client_id: &str,
        code: &str,
        redirect_uri: &str,
    ) -> CodeExchange {
        let Some(record) = self.codes.get(code) else {
            return CodeExchange::InvalidCode;
        };
        if record.client_id != client_id || Instant::now() >= record.expires_at {
            return CodeExchange::InvalidCode;
        }
        if record.redirect_uri != redirect_uri {
            return CodeExchange::RedirectMismatch;
        }
        let app = record.app.clone();
        self.codes.remove(code);
        CodeExchange::Issued(self.new_grant(client_id, &app))
    }

    /// Keap: a new authorization of the same client for the same app replaces the grant, so the
    /// previous refresh token dies; previously issued access tokens live until they expire.
    pub(crate) fn new_grant(&mut self, client_id: &str, app: &str) -> IssuedPair {
        let pair = self.mint_pair(client_id, app);
        self.next_grant_seq += 1;
        let previous = self.grants.insert(
            (client_id.to_owned(), app.to_owned()),
            Grant {
                refresh_token: pair.refresh_token.clone(),
                issued_seq: self.next_grant_seq,
            },
        );
        if let Some(previous) = previous
            && let Some(old) = self.refresh_tokens.get_mut(&previous.refresh_token)
        {
            old.live = false;
        }
        pair
    }

    pub(crate) fn refresh_token_app(&self, refresh_token: &str) -> Option<String> {
        self.refresh_tokens
            .get(refresh_token)
            .map(|r| r.app.clone())
    }

    /// Single use: the presented token dies in the same critical section that mints its successor.
    /// The old access token is left alone (Keap does not revoke it on refresh).
    pub(crate) fn refresh(&mut self, client_id: &str, refresh_token: &str) -> RefreshOutcome {
        let app = match self.refresh_tokens.get_mut(refresh_token) {
            Some(record) if record.live && record.client_id == client_id => {
                record.live = false;
                record.app.clone()
            }
            _ => return RefreshOutcome::InvalidRefreshToken,
        };
        let pair = self.mint_pair(client_id, &app);
        if let Some(grant) = self.grants.get_mut(&(client_id.to_owned(), app)) {
            grant.refresh_token = pair.refresh_token.clone();
        }
        RefreshOutcome::Issued(pair)
    }

    fn mint_pair(&mut self, client_id: &str, app: &str) -> IssuedPair {
        let access_token = random::alphanumeric(32);
        let refresh_token = random::alphanumeric(32);
        let expires_in = self.access_token_lifetime_secs;
        self.access_tokens.insert(
            access_token.clone(),
            AccessToken {
                app: app.to_owned(),
                expires_at: Instant::now() + Duration::from_secs(expires_in),
                revoked: false,
            },
        );
        self.refresh_tokens.insert(
            refresh_token.clone(),
            RefreshToken {
                client_id: client_id.to_owned(),
                app: app.to_owned(),
                live: true,
            },
        );
        IssuedPair {
            access_token,
            refresh_token,
            expires_in,
            scope: scope_for(app),
        }
    }

    pub(crate) fn revoke_grant(&mut self, app: &str) {
        for token in self.refresh_tokens.values_mut().filter(|t| t.app == app) {
            token.live = false;
        }
        for token in self.access_tokens.values_mut().filter(|t| t.app == app) {
            token.revoked = true;
        }
        self.grants.retain(|(_, grant_app), _| grant_app != app);
    }

    pub(crate) fn expire_access_tokens(&mut self) {
        let now = Instant::now();
        for token in self.access_tokens.values_mut() {
            if token.expires_at > now {
                token.expires_at = now;
            }
        }
    }

    /// The live refresh token of the app's most recently authorized grant.
    pub(crate) fn current_refresh_token(&self, app: &str) -> Option<String> {
        self.grants
            .iter()
            .filter(|((_, grant_app), grant)| {
                grant_app == app
                    && self
                        .refresh_tokens
                        .get(&grant.refresh_token)
                        .is_some_and(|t| t.live)
            })
            .max_by_key(|(_, grant)| grant.issued_seq)
            .map(|(_, grant)| grant.refresh_token.clone())
    }

    pub(crate) fn check_access_token(&self, token: &str) -> AccessCheck {
        match self.access_tokens.get(token) {
            None => AccessCheck::Invalid,
            Some(t) if t.revoked => AccessCheck::Invalid,
            Some(t) if Instant::now() >= t.expires_at => AccessCheck::Expired,
            Some(t) => AccessCheck::Valid { app: t.app.clone() },
        }
    }

    pub(crate) fn access_token_app(&self, token: &str) -> Option<String> {
        self.access_tokens.get(token).map(|t| t.app.clone())
    }

    // ---- Service account keys ----

    pub(crate) fn issue_service_account_key(&mut self, app: &str) -> String {
        let key = format!("KeapAK-{}", random::alphanumeric(40));
        self.service_account_keys.insert(
            key.clone(),
            ServiceAccountKey {
                app: app.to_owned(),
                revoked: false,
            },
        );
        key
    }

    pub(crate) fn revoke_service_account_key(&mut self, key: &str) {
        if let Some(record) = self.service_account_keys.get_mut(key) {
            record.revoked = true;
        }
    }

    /// The app of a live key.
    pub(crate) fn check_service_account_key(&self, key: &str) -> Option<String> {
        self.service_account_keys
            .get(key)
            .filter(|k| !k.revoked)
            .map(|k| k.app.clone())
    }

    pub(crate) fn service_account_key_app(&self, key: &str) -> Option<String> {
        self.service_account_keys.get(key).map(|k| k.app.clone())
    }

    // ---- Tenant data ----

    pub(crate) fn app_mut(&mut self, app: &str) -> &mut AppData {
        self.apps.entry(app.to_owned()).or_default()
    }

    pub(crate) fn app(&self, app: &str) -> Option<&AppData> {
        self.apps.get(app)
    }

    /// Seeding is idempotent: the same label and type give the same id.
    pub(crate) fn add_custom_field(&mut self, app: &str, label: &str, field_type: &str) -> i64 {
        let data = self.app_mut(app);
        if let Some(existing) = data
            .custom_fields
            .iter()
            .find(|f| f.label == label && f.field_type == field_type)
        {
            return existing.id;
        }
        let id = data.next_custom_field_id;
        data.next_custom_field_id += 1;
        data.custom_fields.push(CustomField {
            id,
            label: label.to_owned(),
            field_type: field_type.to_owned(),
        });
        id
    }

    /// Seeding is idempotent: an existing tag of that name keeps its id.
    pub(crate) fn add_tag(&mut self, app: &str, name: &str) -> i64 {
        let data = self.app_mut(app);
        if let Some(existing) = data.tags.values().find(|t| t.name == name) {
            return existing.id;
        }
        let id = data.next_tag_id;
        data.next_tag_id += 1;
        data.tags.insert(
            id,
            Tag {
                id,
                name: name.to_owned(),
                description: None,
                category_id: None,
            },
        );
        id
    }

    pub(crate) fn delete_tag(&mut self, app: &str, id: i64) {
        let data = self.app_mut(app);
        data.tags.remove(&id);
        for contact in data.contacts.values_mut() {
            contact.tag_ids.remove(&id);
        }
    }

    pub(crate) fn set_tag_apply_outcome(&mut self, app: &str, id: i64, outcome: Option<&str>) {
        let data = self.app_mut(app);
        match outcome {
            Some(outcome) => data.tag_apply_outcomes.insert(id, outcome.to_owned()),
            None => data.tag_apply_outcomes.remove(&id),
        };
    }

    pub(crate) fn contacts_json(&self, app: &str) -> Vec<serde_json::Value> {
        self.app(app)
            .map(|data| data.contacts.values().map(|c| c.to_json(true)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn tag_list(&self, app: &str) -> Vec<(i64, String)> {
        self.app(app)
            .map(|data| data.tags.values().map(|t| (t.id, t.name.clone())).collect())
            .unwrap_or_default()
    }

    /// Strictly increasing across the sandbox, so `last_updated` moves forward on every write
    /// even when two writes land in the same millisecond.
    pub(crate) fn next_timestamp(&mut self) -> String {
        let millis = clock::now_millis().max(self.last_timestamp_millis + 1);
        self.last_timestamp_millis = millis;
        clock::iso8601_millis(millis)
    }

    // ---- Faults, latency, request log ----

    /// Queues `fault` and returns its id, under which [`State::fired`] counts the requests it
    /// answered.
    pub(crate) fn inject(&mut self, fault: Fault) -> u64 {
        self.next_fault_id += 1;
        let id = self.next_fault_id;
        self.fired.insert(id, 0);
        if fault.times > 0 {
            self.faults.push_back((id, fault));
        }
        id
    }

    pub(crate) fn take_fault(&mut self, class: RouteClass) -> Option<FaultKind> {
        let index = self
            .faults
            .iter()
            .position(|(_, f)| class.matches(f.endpoint))?;
        let (id, fault) = self.faults.get_mut(index)?;
        let id = *id;
        fault.times -= 1;
        let kind = fault.kind.clone();
        if fault.times == 0 {
            self.faults.remove(index);
        }
        *self.fired.entry(id).or_default() += 1;
        Some(kind)
    }

    /// Drops every queued fault (their fired counts stay).
    pub(crate) fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// Requests fault `id` answered; `None` for an id never handed out.
    pub(crate) fn fired(&self, id: u64) -> Option<u64> {
        self.fired.get(&id).copied()
    }

    /// Counts one presentation of `refresh_token` and returns how many there were, this one
    /// included.
    pub(crate) fn count_presentation(&mut self, refresh_token: &str) -> u32 {
        let count = self
            .presentations
            .entry(refresh_token.to_owned())
            .or_default();
        *count += 1;
        *count
    }

    pub(crate) fn set_latency(&mut self, endpoint: Endpoint, latency: Duration) {
        if latency.is_zero() {
            self.latency.remove(&endpoint);
        } else {
            self.latency.insert(endpoint, latency);
        }
    }

    /// Settings for several matching endpoints (e.g. `Token` and `Any`) add up.
    pub(crate) fn latency_for(&self, class: RouteClass) -> Duration {
        self.latency
            .iter()
            .filter(|(endpoint, _)| class.matches(**endpoint))
            .map(|(_, latency)| *latency)
            .sum()
    }

    pub(crate) fn next_request_seq(&mut self) -> u64 {
        self.next_request_seq += 1;
        self.next_request_seq
    }

    pub(crate) fn record(&mut self, seq: u64, request: RecordedRequest) {
        self.requests.push((seq, request));
    }

    /// Ordered by arrival, although entries are written when each request finishes.
    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        let mut entries: Vec<&(u64, RecordedRequest)> = self.requests.iter().collect();
        entries.sort_by_key(|(seq, request)| (request.at, *seq));
        entries.into_iter().map(|(_, r)| r.clone()).collect()
    }

    pub(crate) fn clear_requests(&mut self) {
        self.requests.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn timestamps_strictly_increase_even_within_one_millisecond() {
        let mut state = State::default();
        let stamps: Vec<String> = (0..1000).map(|_| state.next_timestamp()).collect();
        // Fixed-width ISO-8601, so text order is time order.
        assert!(stamps.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
