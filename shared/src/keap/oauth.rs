//! Keap's OAuth2 endpoints: the authorize URL, the code exchange and the refresh.
//!
//! The code exchange sends the client credentials in the form body and the refresh sends them
//! as HTTP Basic, as Keap's own SDK does. Every answer is classified into [`TokenError`] the way
//! the refresh protocol needs it (docs/design.md, "Refresh protocol", step 5).

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::http::{never_sent, redirect_target, retry_after};
use super::quota::KeapUsage;
use super::tokens::{IssuedTokens, TokenPair, keap_app_from_scope};
use crate::clock::now_epoch_secs;
use crate::config::KeapEndpoints;
use crate::secrets::ClientCredentials;

/// How Keap's token endpoint answered, when it did not issue a pair.
///
/// `Display` never includes a token, code or secret: only Keap's error code and HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The refresh token is spent, rotated away, expired or revoked (`invalid_grant`, or
    /// `invalid_request` whose description names the refresh token).
    #[error("Keap rejected the refresh token ({code})")]
    RefreshTokenRejected { code: String },
    /// The authorization code is unknown, used, expired or bound to another redirect URI.
    #[error("Keap rejected the authorization code ({code})")]
    CodeRejected { code: String },
    /// The client id/secret are wrong or were rotated: a configuration error, not a dead grant.
    #[error(
        "Keap rejected the client credentials (HTTP {status}, {code}): check the client secret"
    )]
    ClientRejected { status: u16, code: String },
    /// Any other 4xx with an OAuth error body.
    #[error("Keap refused the token request (HTTP {status}, {code})")]
    Refused { status: u16, code: String },
    /// 429: Keap's gateway throttled the request before it reached the token service, so
    /// nothing was consumed, whatever happened to the body after the status line.
    #[error("Keap is throttling token requests (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    /// 503 (and 5xx other than 500, 502, 504): the service refused the request, so nothing was
    /// consumed, whatever happened to the body after the status line.
    #[error("Keap's token endpoint is unavailable (HTTP {status})")]
    Unavailable { status: u16 },
    /// 500, 502 or 504: an error from a layer that may already have passed the request on (a
    /// gateway whose upstream timed out or failed mid-answer): the refresh token may be spent.
    /// A lost answer, like [`TokenError::NoAnswer`].
    #[error(
        "Keap's token endpoint answered HTTP {status}, which does not tell whether the request was processed"
    )]
    MaybeProcessed { status: u16 },
    /// 3xx: never followed (it would carry the token or secret to the host it names). The
    /// endpoint did not issue a pair, so nothing was consumed; a code exchange is not retried.
    #[error(
        "Keap's token endpoint answered with a redirect (HTTP {status} to {target}), which keapalive never follows"
    )]
    Redirected { status: u16, target: String },
    /// The request could not have reached Keap (connect failed): nothing was consumed.
    #[error("could not reach Keap's token endpoint")]
    NotSent,
    /// The request may have reached Keap but no answer arrived (timeout, dropped connection):
    /// the refresh token may be spent.
    #[error("no answer from Keap's token endpoint ({})", if *.timed_out { "timed out" } else { "connection dropped" })]
    NoAnswer { timed_out: bool },
    /// An answer that is not a token response nor an OAuth error (e.g. an HTML error page).
    #[error("unexpected answer from Keap's token endpoint (HTTP {status}): {reason}")]
    UnexpectedResponse { status: u16, reason: &'static str },
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

#[derive(serde::Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Which grant a token request used; decides what `invalid_grant` means.
#[derive(Clone, Copy)]
enum Grant {
    AuthorizationCode,
    RefreshToken,
}

#[derive(Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    authorize_url: Url,
    token_url: Url,
    /// Token requests count toward the container's Keap usage, beside its REST requests.
    usage: Arc<KeapUsage>,
}

impl OAuthClient {
    pub fn new(http: reqwest::Client, endpoints: &KeapEndpoints) -> Self {
        Self {
            http,
            authorize_url: endpoints.authorize_url.clone(),
            token_url: endpoints.token_url.clone(),
            usage: Arc::new(KeapUsage::default()),
        }
    }

    /// Counts into `usage` (the container's, shared with its [`RestClient`](super::RestClient)).
    pub fn with_usage(mut self, usage: Arc<KeapUsage>) -> Self {
        self.usage = usage;
        self
    }

    /// The token requests and 429s counted so far (the function's metrics).
    pub fn usage(&self) -> &KeapUsage {
        &self.usage
    }

    /// The URL an operator opens to grant access; `state` is the single-use nonce.
    pub fn authorize_url(&self, client_id: &str, redirect_uri: &Url, state: &str) -> Url {
        let mut url = self.authorize_url.clone();
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri.as_str())
            .append_pair("response_type", "code")
            .append_pair("scope", "full")
            .append_pair("state", state);
        url
    }

    pub async fn exchange_code(
        &self,
        credentials: &ClientCredentials,
        code: &SecretString,
        redirect_uri: &Url,
    ) -> Result<IssuedTokens, TokenError> {
        let form = [
            ("client_id", credentials.client_id.as_str()),
            ("client_secret", credentials.client_secret.expose_secret()),
            ("code", code.expose_secret()),
            ("grant_type", "authorization_code"),
            ("redirect_uri", redirect_uri.as_str()),
        ];
        let request = self.http.post(self.token_url.clone()).form(&form);
        self.send(request, Grant::AuthorizationCode).await
    }

    pub async fn refresh(
        &self,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<IssuedTokens, TokenError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let request = self
            .http
            .post(self.token_url.clone())
            .basic_auth(
                &credentials.client_id,
                Some(credentials.client_secret.expose_secret()),
            )
            .form(&form);
        self.send(request, Grant::RefreshToken).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        grant: Grant,
    ) -> Result<IssuedTokens, TokenError> {
        self.usage.sent();
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        if status == 429 {
            self.usage.throttled();
        }
        if response.status().is_redirection() {
            let target = redirect_target(response.headers());
            tracing::warn!(status, location_host = %target, "Keap's token endpoint answered with a redirect; not followed");
            return Err(TokenError::Redirected { status, target });
        }
        let retry = retry_after(response.headers());
        if let Some(refused) = refused_by_status(status, retry) {
            // The status line says nothing was processed: the body (often cut off or stalled
            // under the very load that caused the status) is not waited for.
            return Err(refused);
        }
        // A body that was cut off or stalled after the status line is classified by the status
        // alone: `None` below.
        let body = response.bytes().await.ok();
        let received_at = now_epoch_secs();
        classify(status, retry, body.as_deref(), grant, received_at)
    }
}

fn transport_error(error: reqwest::Error) -> TokenError {
    if never_sent(&error) {
        TokenError::NotSent
    } else {
        TokenError::NoAnswer {
            timed_out: error.is_timeout(),
        }
    }
}

/// Statuses that mean the request was refused before anything was consumed: 429 (answered by
/// Keap's API gateway, Apigee, itself) and 503. Decided on the status line alone.
fn refused_by_status(status: u16, retry_after: Option<Duration>) -> Option<TokenError> {
    match status {
        429 => Some(TokenError::RateLimited { retry_after }),
        503 => Some(TokenError::Unavailable { status }),
        _ => None,
    }
}

/// `body` is `None` when the status line arrived but the body could not be read (cut off,
/// stalled until the timeout).
fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: Option<&[u8]>,
    grant: Grant,
    received_at: i64,
) -> Result<IssuedTokens, TokenError> {
    if let Some(refused) = refused_by_status(status, retry_after) {
        return Err(refused);
    }
    match status {
        200..=299 => match body {
            Some(body) => parse_tokens(status, body, received_at),
            // Keap answered success: the token is spent, and the new pair is lost.
            None => Err(TokenError::UnexpectedResponse {
                status,
                reason: "token response body was cut off",
            }),
        },
        500 | 502 | 504 => Err(TokenError::MaybeProcessed { status }),
        500..=599 => Err(TokenError::Unavailable { status }),
        400..=499 => {
            let Some(Ok(error)) = body.map(serde_json::from_slice::<OAuthErrorBody>) else {
                return Err(if status == 401 {
                    TokenError::ClientRejected {
                        status,
                        code: "unauthorized".to_owned(),
                    }
                } else {
                    TokenError::UnexpectedResponse {
                        status,
                        reason: "not an OAuth error body",
                    }
                });
            };
            Err(classify_oauth_error(status, error, grant))
        }
        _ => Err(TokenError::UnexpectedResponse {
            status,
            reason: "unexpected HTTP status",
        }),
    }
}

fn classify_oauth_error(status: u16, error: OAuthErrorBody, grant: Grant) -> TokenError {
    let names_refresh_token = says_refresh_token_is_invalid(&error.error_description);
    // Keap's own error codes are a short fixed vocabulary; anything longer is not worth echoing.
    let code: String = error.error.chars().take(40).collect();
    match (error.error.as_str(), grant) {
        ("invalid_client" | "unauthorized_client", _) => {
            TokenError::ClientRejected { status, code }
        }
        (_, _) if status == 401 => TokenError::ClientRejected { status, code },
        ("invalid_grant", Grant::RefreshToken) => TokenError::RefreshTokenRejected { code },
        ("invalid_request", Grant::RefreshToken) if names_refresh_token => {
            TokenError::RefreshTokenRejected { code }
        }
        ("invalid_grant", Grant::AuthorizationCode) => TokenError::CodeRejected { code },
        _ => TokenError::Refused { status, code },
    }
}

/// `invalid_request` is also Keap's answer to a malformed request ("response_type or grant_type
/// is required"), so it marks a grant dead only when its description says the refresh token is
/// invalid (docs/design.md, "The fault model": odd answers). Compared lower-case, whole phrase.
const DEAD_REFRESH_TOKEN_DESCRIPTIONS: &[&str] = &[
    "invalid refresh token",
    "refresh token is invalid",
    "refresh token has expired",
    "refresh token expired",
    "refresh token is expired",
    "refresh token has been revoked",
    "refresh token was revoked",
];

fn says_refresh_token_is_invalid(description: &str) -> bool {
    let description = description
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    DEAD_REFRESH_TOKEN_DESCRIPTIONS
        .iter()
        .any(|known| description == *known)
}

/// Keap documents 24 h access tokens; a 200 carrying both tokens but no usable `expires_in` is
/// still a success (the refresh token is already spent), stored with this lifetime.
const DEFAULT_EXPIRES_IN_SECS: i64 = 86_400;
/// `expires_in` above this is clamped down: a huge one would stop refreshes until the refresh
/// token ages out. Never clamped up: a token Keap says is short-lived is stored as such
/// (docs/design.md, "The fault model").
const MAX_EXPIRES_IN_SECS: i64 = 7 * 86_400;
/// A stated lifetime below this is stored as is, but warned about and counted
/// (`ShortTokenLifetime`): expiry-driven rotations are then limited per connection
/// (`expiry_rotation_at`).
pub const SHORT_EXPIRES_IN_SECS: i64 = 300;

fn parse_tokens(status: u16, body: &[u8], received_at: i64) -> Result<IssuedTokens, TokenError> {
    let malformed = |reason| TokenError::UnexpectedResponse { status, reason };
    let parsed: TokenResponse =
        serde_json::from_slice(body).map_err(|_| malformed("token response is not JSON"))?;
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("token response has no access_token"))?;
    let refresh_token = parsed
        .refresh_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("token response has no refresh_token"))?;
    let stated = match &parsed.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|secs| secs.is_finite() && *secs >= 1.0);
    let expires_in = match stated {
        // Truncation is the point: fractional seconds round down, never past Keap's expiry.
        Some(secs) => (secs as i64).min(MAX_EXPIRES_IN_SECS),
        None => DEFAULT_EXPIRES_IN_SECS,
    };
    if stated.map(|s| s as i64) != Some(expires_in) {
        tracing::warn!(
            expires_in = ?parsed.expires_in.as_ref().map(|v| v.to_string()),
            used_secs = expires_in,
            "Keap's token response has a missing, odd or huge expires_in; the pair is stored with a default or capped lifetime"
        );
    } else if expires_in < SHORT_EXPIRES_IN_SECS {
        tracing::warn!(
            expires_in,
            "Keap issued an access token that lives less than 5 minutes; it is stored as stated, and expiry-driven rotations of the connection are limited to one a minute"
        );
    }
    let keap_app = parsed.scope.as_deref().and_then(keap_app_from_scope);
    Ok(IssuedTokens {
        pair: TokenPair {
            access_token: SecretString::from(access_token),
            refresh_token: SecretString::from(refresh_token),
            access_expires_at: received_at.saturating_add(expires_in),
        },
        scope: parsed.scope,
        keap_app,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresh(status: u16, body: &str) -> Result<IssuedTokens, TokenError> {
        classify(
            status,
            None,
            Some(body.as_bytes()),
            Grant::RefreshToken,
            1_000,
        )
    }

    #[test]
    fn success_computes_absolute_expiry_and_app() {
        let issued = refresh(
            200,
            r#"{"access_token":"a","refresh_token":"r","expires_in":86400,"token_type":"bearer","scope":"full|ab1.infusionsoft.com"}"#,
        )
        .unwrap();
        assert_eq!(issued.pair.access_expires_at, 87_400);
        assert_eq!(issued.keap_app.as_deref(), Some("ab1.infusionsoft.com"));
    }

    #[test]
    fn both_spellings_of_a_dead_refresh_token_are_rejections() {
        let grant = refresh(
            400,
            r#"{"error":"invalid_grant","error_description":"Invalid refresh token"}"#,
        );
        assert!(matches!(
            grant,
            Err(TokenError::RefreshTokenRejected { .. })
        ));
        let request = refresh(
            400,
            r#"{"error":"invalid_request","error_description":"Invalid Refresh Token"}"#,
        );
        assert!(matches!(
            request,
            Err(TokenError::RefreshTokenRejected { .. })
        ));
        let other = refresh(
            400,
            r#"{"error":"invalid_request","error_description":"Missing grant_type"}"#,
        );
        assert!(matches!(other, Err(TokenError::Refused { .. })));
    }

    #[test]
    fn client_errors_are_not_grant_errors() {
        assert!(matches!(
            refresh(401, r#"{"error":"invalid_client"}"#),
            Err(TokenError::ClientRejected { .. })
        ));
        assert!(matches!(
            refresh(401, "<html>nope</html>"),
            Err(TokenError::ClientRejected { .. })
        ));
        assert!(matches!(
            refresh(400, r#"{"error":"invalid_client"}"#),
            Err(TokenError::ClientRejected { .. })
        ));
    }

    #[test]
    fn throttling_outages_and_garbage_are_classified() {
        assert!(matches!(
            classify(429, Some(Duration::from_secs(3)), Some(b""), Grant::RefreshToken, 0),
            Err(TokenError::RateLimited { retry_after: Some(d) }) if d.as_secs() == 3
        ));
        assert!(matches!(
            refresh(503, "down"),
            Err(TokenError::Unavailable { status: 503 })
        ));
        assert!(matches!(
            refresh(200, "<html>"),
            Err(TokenError::UnexpectedResponse { .. })
        ));
        assert!(matches!(
            refresh(200, r#"{"access_token":"a","expires_in":5}"#),
            Err(TokenError::UnexpectedResponse { .. })
        ));
    }

    #[test]
    fn a_status_line_decides_once_it_arrived() {
        let cut = |status| classify(status, None, None, Grant::RefreshToken, 0);
        // Refused before anything was consumed, whatever the body did.
        assert!(matches!(cut(429), Err(TokenError::RateLimited { .. })));
        assert!(matches!(
            cut(503),
            Err(TokenError::Unavailable { status: 503 })
        ));
        // A gateway error may hide a processed request: a lost answer.
        for status in [500, 502, 504] {
            assert!(matches!(
                refresh(status, "oops"),
                Err(TokenError::MaybeProcessed { .. })
            ));
            assert!(matches!(
                cut(status),
                Err(TokenError::MaybeProcessed { .. })
            ));
        }
        // A success whose body was cut: the token is spent, the pair lost.
        assert!(matches!(
            cut(200),
            Err(TokenError::UnexpectedResponse { status: 200, .. })
        ));
        // A 400 whose body was cut names no dead grant.
        assert!(matches!(
            cut(400),
            Err(TokenError::UnexpectedResponse { status: 400, .. })
        ));
    }

    #[test]
    fn a_200_with_both_tokens_succeeds_whatever_expires_in_says() {
        for (expires_in, lifetime) in [
            ("", DEFAULT_EXPIRES_IN_SECS),
            (r#","expires_in":0"#, DEFAULT_EXPIRES_IN_SECS),
            (r#","expires_in":null"#, DEFAULT_EXPIRES_IN_SECS),
            (r#","expires_in":"soon""#, DEFAULT_EXPIRES_IN_SECS),
            (r#","expires_in":86399.7"#, 86_399),
            (r#","expires_in":"3600""#, 3_600),
            (r#","expires_in":5"#, 5),
            (r#","expires_in":"30""#, 30),
            (r#","expires_in":99999999999"#, MAX_EXPIRES_IN_SECS),
        ] {
            let body = format!(r#"{{"access_token":"a","refresh_token":"r"{expires_in}}}"#);
            let issued = refresh(200, &body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(issued.pair.access_expires_at, 1_000 + lifetime, "{body}");
        }
    }

    #[test]
    fn invalid_request_marks_a_grant_dead_only_for_known_descriptions() {
        let dead = |description: &str| {
            matches!(
                refresh(
                    400,
                    &format!(
                        r#"{{"error":"invalid_request","error_description":"{description}"}}"#
                    )
                ),
                Err(TokenError::RefreshTokenRejected { .. })
            )
        };
        assert!(dead("Invalid refresh token"));
        assert!(dead(
            "The refresh token has expired.".trim_start_matches("The ")
        ));
        assert!(!dead("response_type or grant_type is required"));
        assert!(!dead("refresh token parameter missing from request"));
        assert!(!dead("could not validate refresh token: try again later"));
    }

    #[test]
    fn code_exchange_invalid_grant_means_the_code() {
        let result = classify(
            400,
            None,
            Some(br#"{"error":"invalid_grant"}"#),
            Grant::AuthorizationCode,
            0,
        );
        assert!(matches!(result, Err(TokenError::CodeRejected { .. })));
    }

    #[test]
    fn authorize_url_carries_the_documented_parameters() {
        let endpoints = KeapEndpoints {
            authorize_url: Url::parse("https://accounts.infusionsoft.com/app/oauth/authorize")
                .unwrap(),
            token_url: Url::parse("https://api.infusionsoft.com/token").unwrap(),
            api_base_url: Url::parse("https://api.infusionsoft.com/crm/rest").unwrap(),
        };
        let client = OAuthClient::new(reqwest::Client::new(), &endpoints);
        let redirect = Url::parse("https://example.com/oauth/callback").unwrap();
        let url = client.authorize_url("cid", &redirect, "nonce");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert!(pairs.contains(&("client_id".into(), "cid".into())));
        assert!(pairs.contains(&("redirect_uri".into(), redirect.to_string())));
        assert!(pairs.contains(&("response_type".into(), "code".into())));
        assert!(pairs.contains(&("scope".into(), "full".into())));
        assert!(pairs.contains(&("state".into(), "nonce".into())));
    }
}
