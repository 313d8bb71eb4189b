//! Keap REST v1 (`{KEAP_API_BASE_URL}/v1/...`): one request, one classified answer.
//!
//! This layer sends exactly once and says what happened ([`KeapError`]); deciding whether to
//! wait and retry (429, 5xx) or to get a fresh credential (401) is the caller's job, because
//! only the caller knows its deadline and its connection. Every request waits for the
//! container's limiter and, for a service-account key, for that key's own limiter
//! (`KEAPALIVE_KEY_RATE_PER_SEC`, default 5 a second, and 240 a minute).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use url::Url;

use super::http::{never_sent, redirect_target, retry_after};
use super::path::KeapPath;
use super::quota::{KeapUsage, QuotaHolds};
use super::rate_limit::{KEY_REQUESTS_PER_SECOND, KeyRateLimiter, RateLimiter};
use super::tokens::AccessCredential;
use crate::config::KeapEndpoints;
use crate::redact;

/// The header Keap reads a Personal Access Token or Service Account Key from.
pub const API_KEY_HEADER: &str = "X-Keap-API-Key";
/// Keap's messages are short; anything longer is cut rather than passed on whole.
const MAX_MESSAGE_CHARS: usize = 300;

/// How Keap answered a REST request that did not succeed.
///
/// `Display` never contains a credential or a full email: Keap's own message is passed on
/// (callers need it to fix their request) with anything that looks like an email redacted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeapError {
    /// 401: the access token or key is invalid, expired or revoked.
    #[error("Keap rejected the credential (HTTP 401: {fault})")]
    Unauthorized { fault: String },
    /// Any other 4xx: Keap understood the request and refused it.
    #[error("Keap refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// 429: Keap answered, nothing was done.
    #[error("Keap is throttling requests (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx.
    #[error("Keap is unavailable (HTTP {status})")]
    Unavailable { status: u16 },
    /// 3xx: never followed (the credential would go along to the host it names).
    #[error(
        "Keap answered with a redirect (HTTP {status} to {target}), which keapalive never follows"
    )]
    Redirected { status: u16, target: String },
    /// The connection failed before the request was sent: nothing was done.
    #[error("could not reach Keap")]
    NotSent,
    /// The request may have reached Keap but no answer came back.
    #[error("no answer from Keap ({})", if *.timed_out { "timed out" } else { "connection dropped" })]
    NoAnswer { timed_out: bool },
    /// A 2xx whose body is not what the endpoint returns, or a status Keap does not use.
    #[error("unexpected answer from Keap (HTTP {status}): {reason}")]
    UnexpectedResponse { status: u16, reason: &'static str },
}

/// One REST request, relative to `/v1/`. Plain data, so a caller can send it again.
#[derive(Debug, Clone)]
pub struct RestRequest {
    pub method: Method,
    /// Like `contacts/model` or `contacts/12/tags` (no leading slash).
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<serde_json::Value>,
}

impl RestRequest {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            query: Vec::new(),
            body: None,
        }
    }

    pub fn with_body(method: Method, path: impl Into<String>, body: serde_json::Value) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: Some(body),
        }
    }

    pub fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }
}

/// A caller's request (keap-proxy): any method, a checked path, an encoded query, a JSON body.
#[derive(Debug, Clone)]
pub struct KeapCall {
    pub method: Method,
    pub path: KeapPath,
    /// Name and value pairs, in order; encoded by the client.
    pub query: Vec<(String, String)>,
    /// Serialized JSON, sent with `Content-Type: application/json`.
    pub body: Option<Vec<u8>>,
}

/// Keap's answer to a [`KeapCall`], whatever its status (but 401, 429 and 5xx).
#[derive(Debug, Clone)]
pub struct KeapAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    /// Empty when `over_limit`.
    pub body: Vec<u8>,
    /// `Content-Length`, when Keap sent one.
    pub declared_len: Option<u64>,
    /// The body was longer than the caller's limit and was not kept.
    pub over_limit: bool,
}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct RestResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl RestResponse {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, KeapError> {
        serde_json::from_slice(&self.body).map_err(|_| KeapError::UnexpectedResponse {
            status: self.status,
            reason: "the body is not the JSON this endpoint returns",
        })
    }
}

/// Keap REST v1 client; cheap to clone, built once per container.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    /// `.../crm/rest/v1/`, always with the trailing slash so `join` appends.
    v1: Url,
    /// `KEAP_API_BASE_URL` (`.../crm/rest`): a [`KeapCall`]'s path is appended to it.
    base: Url,
    limiter: Arc<RateLimiter>,
    key_limiters: Arc<Mutex<HashMap<u64, Arc<KeyRateLimiter>>>>,
    key_rate_per_sec: u32,
    /// Credentials whose quota Keap reported spent ([`QuotaHolds`]).
    holds: Arc<QuotaHolds>,
    usage: Arc<KeapUsage>,
}

impl RestClient {
    pub fn new(
        http: reqwest::Client,
        endpoints: &KeapEndpoints,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        let mut v1 = endpoints.api_base_url.clone();
        let base_path = v1.path().trim_end_matches('/').to_owned();
        v1.set_path(&format!("{base_path}/v1/"));
        Self {
            http,
            v1,
            base: endpoints.api_base_url.clone(),
            limiter,
            key_limiters: Arc::new(Mutex::new(HashMap::new())),
            key_rate_per_sec: KEY_REQUESTS_PER_SECOND,
            holds: Arc::new(QuotaHolds::default()),
            usage: Arc::new(KeapUsage::default()),
        }
    }

    /// This container's Keap requests, 429s and throttle waits (the function's metrics).
    pub fn usage(&self) -> &KeapUsage {
        &self.usage
    }

    /// Counts into `usage` (the container's, shared with its [`OAuthClient`](super::OAuthClient)).
    pub fn with_usage(mut self, usage: Arc<KeapUsage>) -> Self {
        self.usage = usage;
        self
    }

    /// Each key's requests per second (`KEAPALIVE_KEY_RATE_PER_SEC`).
    pub fn with_key_rate_per_sec(mut self, per_second: u32) -> Self {
        self.key_rate_per_sec = per_second;
        self
    }

    /// `GET /v1/account/profile`: the cheapest call that proves a credential works (and names
    /// the Keap account it belongs to).
    pub async fn account_profile(
        &self,
        credential: &AccessCredential,
    ) -> Result<serde_json::Value, KeapError> {
        self.send(credential, &RestRequest::get("account/profile"))
            .await?
            .json()
    }

    /// Sends `request` once and classifies the answer.
    pub async fn send(
        &self,
        credential: &AccessCredential,
        request: &RestRequest,
    ) -> Result<RestResponse, KeapError> {
        let mut url = self
            .v1
            .join(&request.path)
            .map_err(|_| KeapError::UnexpectedResponse {
                status: 0,
                reason: "the request path is not a valid URL path",
            })?;
        if !request.query.is_empty() {
            url.query_pairs_mut().extend_pairs(request.query.iter());
        }
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        builder = with_credential(builder, credential)?;

        self.wait_for_limiters(credential).await?;
        let response = builder.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        self.answered(credential, status, response.headers());
        if response.status().is_redirection() {
            let target = redirect_target(response.headers());
            tracing::warn!(status, location_host = %target, path = %request.path, "Keap answered with a redirect; not followed");
            return Err(KeapError::Redirected { status, target });
        }
        let retry = retry_after(response.headers());
        let body = response.bytes().await.map_err(transport_error)?;
        // The path only: the query of a lookup holds the email.
        tracing::debug!(method = %request.method, path = %request.path, status, bytes = body.len(), "Keap answered");
        classify(status, retry, body.to_vec())
    }

    /// Sends a caller's request (keap-proxy) once: `call.path` joined to `KEAP_API_BASE_URL`
    /// (never a string concatenated with a host), the query encoded here, the body as JSON.
    ///
    /// Every answer Keap gives is returned as it came, except the three a caller cannot use
    /// as data: 401 ([`KeapError::Unauthorized`]: renew the credential), 429
    /// ([`KeapError::RateLimited`]) and 5xx ([`KeapError::Unavailable`]). A 3xx is an answer
    /// like any other and is not followed. At most `max_body` bytes of the body are read: a
    /// longer one is reported ([`KeapAnswer::over_limit`]), never cut silently.
    pub async fn exchange(
        &self,
        credential: &AccessCredential,
        call: &KeapCall,
        max_body: usize,
    ) -> Result<KeapAnswer, KeapError> {
        let url = self.url_for(call)?;
        let mut builder = self
            .http
            .request(call.method.clone(), url)
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(body) = &call.body {
            builder = builder
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body.clone());
        }
        builder = with_credential(builder, credential)?;

        self.wait_for_limiters(credential).await?;
        let mut response = builder.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        self.answered(credential, status, &headers);
        let declared_len = response.content_length();
        let mut body = Vec::new();
        let mut over_limit = declared_len.is_some_and(|n| n > max_body as u64);
        while !over_limit && let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > max_body {
                over_limit = true;
            } else {
                body.extend_from_slice(&chunk);
            }
        }
        // The masked path only: the query and the body may hold anything.
        tracing::debug!(method = %call.method, path = %call.path, status, bytes = body.len(), over_limit, "Keap answered");
        match status {
            401 => Err(KeapError::Unauthorized {
                fault: keap_message(&body).unwrap_or_else(|| "unauthorized".to_owned()),
            }),
            429 => Err(KeapError::RateLimited {
                retry_after: retry_after(&headers),
            }),
            500..=599 => Err(KeapError::Unavailable { status }),
            _ => Ok(KeapAnswer {
                status,
                headers,
                body,
                declared_len,
                over_limit,
            }),
        }
    }

    /// `KEAP_API_BASE_URL` with the path appended. A [`KeapPath`] has nothing the URL parser
    /// would normalise (no dot segment, no backslash, no escape it decodes), so the URL's path
    /// is the base's followed by exactly the caller's; the check below proves it.
    fn url_for(&self, call: &KeapCall) -> Result<Url, KeapError> {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}{}", call.path.as_str()));
        url.set_query(None);
        url.set_fragment(None);
        if url.path() != format!("{base_path}{}", call.path.as_str())
            || url.host_str() != self.base.host_str()
        {
            return Err(KeapError::UnexpectedResponse {
                status: 0,
                reason: "the request path did not join the base URL unchanged",
            });
        }
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(call.query.iter());
        }
        Ok(url)
    }

    /// Waits for the container's and the key's limiters. A credential Keap reported spent is
    /// not sent at all (before or after the wait): `RateLimited` with the time left. Once this
    /// returns `Ok`, the request counts as sent.
    async fn wait_for_limiters(&self, credential: &AccessCredential) -> Result<(), KeapError> {
        self.not_held(credential)?;
        if let AccessCredential::ApiKey(key) = credential {
            self.key_limiter(key.expose_secret()).acquire().await;
        }
        self.limiter.acquire().await;
        self.not_held(credential)?;
        self.usage.sent();
        Ok(())
    }

    fn not_held(&self, credential: &AccessCredential) -> Result<(), KeapError> {
        match self.holds.held_for(credential) {
            Some(left) => {
                self.usage.throttled();
                Err(KeapError::RateLimited {
                    retry_after: Some(Duration::from_secs(left.as_secs_f64().ceil() as u64)),
                })
            }
            None => Ok(()),
        }
    }

    /// Keap answered: its quota headers, and a 429 counted.
    fn answered(&self, credential: &AccessCredential, status: u16, headers: &HeaderMap) {
        self.holds.observe(credential, headers);
        if status == 429 {
            self.usage.throttled();
        }
    }

    /// One limiter per key (Keap counts per key), found by a hash so the map never holds the key.
    fn key_limiter(&self, key: &str) -> Arc<KeyRateLimiter> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let mut limiters = self
            .key_limiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        limiters
            .entry(hasher.finish())
            .or_insert_with(|| Arc::new(KeyRateLimiter::service_account_key(self.key_rate_per_sec)))
            .clone()
    }
}

/// The credential's header: `Authorization: Bearer` for OAuth, `X-Keap-API-Key` for a key;
/// marked sensitive so no debug output of the request shows it.
fn with_credential(
    builder: reqwest::RequestBuilder,
    credential: &AccessCredential,
) -> Result<reqwest::RequestBuilder, KeapError> {
    Ok(match credential {
        AccessCredential::Bearer(token) => {
            builder.header(AUTHORIZATION, bearer_value(token.expose_secret())?)
        }
        AccessCredential::ApiKey(key) => {
            let mut value =
                HeaderValue::from_str(key.expose_secret()).map_err(|_| malformed_credential())?;
            value.set_sensitive(true);
            builder.header(API_KEY_HEADER, value)
        }
    })
}

fn bearer_value(token: &str) -> Result<HeaderValue, KeapError> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| malformed_credential())?;
    value.set_sensitive(true);
    Ok(value)
}

fn malformed_credential() -> KeapError {
    KeapError::Unauthorized {
        fault: "the stored credential is not a valid header value".to_owned(),
    }
}

fn transport_error(error: reqwest::Error) -> KeapError {
    if never_sent(&error) {
        KeapError::NotSent
    } else {
        KeapError::NoAnswer {
            timed_out: error.is_timeout(),
        }
    }
}

fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
) -> Result<RestResponse, KeapError> {
    match status {
        200..=299 => Ok(RestResponse { status, body }),
        401 => Err(KeapError::Unauthorized {
            fault: keap_message(&body).unwrap_or_else(|| "unauthorized".to_owned()),
        }),
        429 => Err(KeapError::RateLimited { retry_after }),
        500..=599 => Err(KeapError::Unavailable { status }),
        400..=499 => Err(KeapError::Rejected {
            status,
            message: keap_message(&body).unwrap_or_else(|| "no message".to_owned()),
        }),
        _ => Err(KeapError::UnexpectedResponse {
            status,
            reason: "unexpected HTTP status",
        }),
    }
}

/// Keap's human-readable message: `{"message": ...}` from the API, or the gateway's
/// `{"fault": {"faultstring": ...}}`; emails in it are redacted and its length bounded.
fn keap_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = value
        .get("message")
        .and_then(|m| m.as_str())
        .or_else(|| value.pointer("/fault/faultstring").and_then(|m| m.as_str()))?;
    Some(safe_message(text))
}

/// Redacts every email address and bounds the length.
pub(crate) fn safe_message(text: &str) -> String {
    let joined = redact::emails_in(text);
    if joined.chars().count() > MAX_MESSAGE_CHARS {
        let cut: String = joined.chars().take(MAX_MESSAGE_CHARS).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_passed_on_without_emails() {
        let body = br#"{"message":"Contact ada@example.com is invalid"}"#;
        assert_eq!(
            keap_message(body).as_deref(),
            Some("Contact a***@example.com is invalid")
        );
        let fault = br#"{"fault":{"faultstring":"Invalid Access Token","detail":{}}}"#;
        assert_eq!(keap_message(fault).as_deref(), Some("Invalid Access Token"));
        assert_eq!(keap_message(b"<html>"), None);
        assert!(safe_message(&"x".repeat(1000)).chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn every_email_in_a_message_is_redacted() {
        let message =
            safe_message("Duplicate: ada@example.com,bob.smith@example.org (and ada@example.com).");
        assert_eq!(
            message,
            "Duplicate: a***@example.com,b***@example.org (and a***@example.com)."
        );
    }

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            classify(401, None, Vec::new()),
            Err(KeapError::Unauthorized { .. })
        ));
        assert!(matches!(
            classify(400, None, br#"{"message":"Input could not be converted to a valid request"}"#.to_vec()),
            Err(KeapError::Rejected { status: 400, message }) if message.contains("Input could not")
        ));
        assert!(matches!(
            classify(429, Some(Duration::from_secs(2)), Vec::new()),
            Err(KeapError::RateLimited { retry_after: Some(d) }) if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            classify(503, None, Vec::new()),
            Err(KeapError::Unavailable { status: 503 })
        ));
        assert!(classify(201, None, b"{}".to_vec()).is_ok());
    }

    #[test]
    fn v1_is_appended_to_the_base() {
        let endpoints = KeapEndpoints {
            authorize_url: Url::parse("https://a.example/authorize").unwrap(),
            token_url: Url::parse("https://a.example/token").unwrap(),
            api_base_url: Url::parse("https://api.example/crm/rest").unwrap(),
        };
        let client = RestClient::new(
            reqwest::Client::new(),
            &endpoints,
            Arc::new(RateLimiter::per_second(10)),
        );
        assert_eq!(
            client.v1.join("contacts/model").unwrap().as_str(),
            "https://api.example/crm/rest/v1/contacts/model"
        );
    }
}
