//! `GET /app/oauth/authorize` and `POST /token`, as Keap (Mashery) behaves.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::credentials::{self, Authorization};
use crate::respond::{html_error, json_response, no_store, oauth_error};
use crate::state::{CodeExchange, RefreshOutcome, Shared};
use crate::types::{Consent, IssuedPair};

/// Keap's denial redirect carries this exact `error_uri`.
const DENIAL_ERROR_URI: &str =
    "https://developer.infusionsoft.com/docs/read/Getting_Started_With_OAuth2";

pub(crate) async fn authorize(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(params) = credentials::parse_form(query.unwrap_or_default().as_bytes()) else {
        return html_error(StatusCode::BAD_REQUEST, "A parameter is repeated.");
    };
    let param = |name: &str| params.get(name).map(String::as_str);
    let Some(client_id) = param("client_id") else {
        return html_error(StatusCode::BAD_REQUEST, "Missing client_id.");
    };
    let Some(redirect_uri) = param("redirect_uri") else {
        return html_error(StatusCode::BAD_REQUEST, "Missing redirect_uri.");
    };
    if !acceptable_redirect_uri(redirect_uri) {
        return html_error(
            StatusCode::BAD_REQUEST,
            "redirect_uri must be an absolute https URL (http only for localhost).",
        );
    }
    // Keap documents both as "the only current valid value ... defaults to" code / full.
    if param("response_type").is_some_and(|t| t != "code") {
        return html_error(StatusCode::BAD_REQUEST, "Unsupported response_type.");
    }
    if param("scope").is_some_and(|s| s != "full") {
        return html_error(StatusCode::BAD_REQUEST, "Unsupported scope.");
    }
    let state = param("state").unwrap_or("");

    let mut sandbox = shared.lock();
    if !sandbox.is_registered(client_id) {
        return html_error(StatusCode::BAD_REQUEST, "Unknown client_id.");
    }
    let pairs: Vec<(&str, String)> = match sandbox.consent.clone() {
        Consent::Approve { app } => {
            let code = sandbox.issue_code(client_id, redirect_uri, &app);
            vec![("code", code), ("state", state.to_owned())]
        }
        Consent::Deny => vec![
            ("state", state.to_owned()),
            ("error", "access_denied".to_owned()),
            (
                "error_description",
                "User denied access to resource".to_owned(),
            ),
            ("error_uri", DENIAL_ERROR_URI.to_owned()),
        ],
    };
    drop(sandbox);
    redirect_with(redirect_uri, &pairs)
}

fn acceptable_redirect_uri(redirect_uri: &str) -> bool {
    let Ok(url) = url::Url::parse(redirect_uri) else {
        return false;
    };
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    url.fragment().is_none()
        && url.host_str().is_some()
        && (url.scheme() == "https" || (url.scheme() == "http" && loopback))
}

fn redirect_with(redirect_uri: &str, pairs: &[(&str, String)]) -> Response {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        query.append_pair(name, value);
    }
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{separator}{}", query.finish());
    let Ok(location) = HeaderValue::from_str(&location) else {
        return html_error(StatusCode::BAD_REQUEST, "Invalid redirect_uri.");
    };
    let mut response = StatusCode::FOUND.into_response();
    response.headers_mut().insert(header::LOCATION, location);
    response
}

pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !credentials::is_form_content_type(&headers) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    // Users who put the parameters in the URL get an error from Keap (forum thread 82597).
    if query.is_some_and(|q| !q.is_empty()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Parameters must be sent in the request body",
        );
    }
    let Some(form) = credentials::parse_form(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "A parameter is repeated",
        );
    };
    let field = |name: &str| form.get(name).map(String::as_str);
    let grant_type = match field("grant_type") {
        Some(g @ ("authorization_code" | "refresh_token")) => g,
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Unsupported grant type",
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing grant_type",
            );
        }
    };

    let basic = match credentials::authorization(&headers) {
        Authorization::Basic {
            client_id,
            client_secret,
        } => Some((client_id, client_secret)),
        Authorization::MalformedBasic => return invalid_client(),
        _ => None,
    };
    let client_id = match (&basic, grant_type) {
        (Some((id, secret)), _) => {
            let body_disagrees = field("client_id").is_some_and(|b| b != id)
                || field("client_secret").is_some_and(|b| b != secret);
            if body_disagrees || !shared.lock().client_secret_matches(id, secret) {
                return invalid_client();
            }
            id.clone()
        }
        // The code exchange posts the credentials in the body (infusionsoft-php); the refresh
        // must use HTTP Basic, as Keap's SDK does.
        (None, "authorization_code") => match (field("client_id"), field("client_secret")) {
            (Some(id), Some(secret)) if shared.lock().client_secret_matches(id, secret) => {
                id.to_owned()
            }
            _ => return invalid_client(),
        },
        (None, _) => return invalid_client(),
    };

    if grant_type == "authorization_code" {
        let (Some(code), Some(redirect_uri)) = (field("code"), field("redirect_uri")) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing code or redirect_uri",
            );
        };
        let outcome = shared.lock().exchange_code(&client_id, code, redirect_uri);
        match outcome {
            CodeExchange::Issued(pair) => token_response(&pair),
            CodeExchange::InvalidCode => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid authorization code",
            ),
            CodeExchange::RedirectMismatch => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Redirect URI does not match the one used to authorize",
            ),
        }
    } else {
        let Some(refresh_token) = field("refresh_token") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing refresh_token",
            );
        };
        let outcome = shared.lock().refresh(&client_id, refresh_token);
        match outcome {
            RefreshOutcome::Issued(pair) => token_response(&pair),
            RefreshOutcome::InvalidRefreshToken => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid refresh token",
            ),
        }
    }
}

fn invalid_client() -> Response {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "Invalid client credentials",
    )
}

fn token_response(pair: &IssuedPair) -> Response {
    let mut response = json_response(
        StatusCode::OK,
        json!({
            "access_token": pair.access_token,
            "refresh_token": pair.refresh_token,
            "expires_in": pair.expires_in,
            "token_type": "bearer",
            "scope": pair.scope,
        }),
    );
    no_store(&mut response);
    response
}
