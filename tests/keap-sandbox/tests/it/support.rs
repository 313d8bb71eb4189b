//! Shared by the integration tests: a started sandbox with one registered client, and small
//! helpers that speak Keap's wire format over real HTTP.
#![allow(dead_code)]

use keap_sandbox::{DEFAULT_APP, IssuedPair, Sandbox};
use reqwest::{Client, Response};
use serde_json::Value;

pub const CLIENT_ID: &str = "sandbox-client";
pub const CLIENT_SECRET: &str = "sandbox-secret";
pub const REDIRECT_URI: &str = "https://example.com/oauth/callback";
pub const APP: &str = DEFAULT_APP;

pub async fn start() -> (Sandbox, Client) {
    let sandbox = Sandbox::start().await.expect("sandbox starts");
    sandbox.register_client(CLIENT_ID, CLIENT_SECRET);
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    (sandbox, client)
}

pub async fn refresh(sandbox: &Sandbox, client: &Client, refresh_token: &str) -> Response {
    refresh_at(client, &sandbox.token_url(), refresh_token).await
}

/// As Keap's SDK refreshes: HTTP Basic client authentication, form body.
pub async fn refresh_at(client: &Client, token_url: &str, refresh_token: &str) -> Response {
    try_refresh_at(client, token_url, refresh_token)
        .await
        .expect("token request answered")
}

pub async fn try_refresh_at(
    client: &Client,
    token_url: &str,
    refresh_token: &str,
) -> reqwest::Result<Response> {
    client
        .post(token_url)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
}

pub async fn json(response: Response) -> Value {
    response.json().await.expect("JSON body")
}

pub fn grant(sandbox: &Sandbox) -> IssuedPair {
    sandbox.issue_grant(CLIENT_ID, APP)
}

pub fn api(sandbox: &Sandbox, path: &str) -> String {
    format!("{}/v1{path}", sandbox.api_base_url())
}

pub async fn put_contact(
    sandbox: &Sandbox,
    client: &Client,
    access_token: &str,
    body: &Value,
) -> Response {
    client
        .put(api(sandbox, "/contacts"))
        .bearer_auth(access_token)
        .json(body)
        .send()
        .await
        .expect("contacts answered")
}

pub async fn profile_status(sandbox: &Sandbox, client: &Client, access_token: &str) -> u16 {
    client
        .get(api(sandbox, "/account/profile"))
        .bearer_auth(access_token)
        .send()
        .await
        .expect("profile answered")
        .status()
        .as_u16()
}

/// `url?name=value&...`, form-encoded (the workspace's reqwest has no `query` feature).
pub fn with_query<K: AsRef<str>, V: AsRef<str>>(url: &str, pairs: &[(K, V)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        query.append_pair(name.as_ref(), value.as_ref());
    }
    format!("{url}?{}", query.finish())
}
