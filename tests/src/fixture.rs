//! One test's world: a Keap sandbox with a registered client, a fresh table and client secret
//! in the emulator, and helpers to build the functions' clients and seed connections.

use aws_config::SdkConfig;
use keap_sandbox::{IssuedPair, Sandbox};
use keapalive::ConnectionId;
use keapalive::clock::now_epoch_secs;
use keapalive::config::{Config, Requirements};
use keapalive::keap::keap_app_from_scope;
use keapalive::keap::{IssuedTokens, TokenPair};
use keapalive::token_store::{AuthorizeOutcome, DynamoDbTokenStore, new_write_id};
use keapalive::wiring::Clients;
use secrecy::SecretString;

use crate::aws::{create_client_secret, create_table};
use crate::emulator::Emulator;

pub const CLIENT_ID: &str = "keapalive-test-client";
pub const CLIENT_SECRET: &str = "keapalive-test-client-secret-do-not-log";
pub const REDIRECT_URI: &str = "https://keapalive.test/oauth/callback";

pub struct Fixture {
    pub sandbox: Sandbox,
    pub sdk: SdkConfig,
    pub table: String,
    pub secret_id: String,
}

impl Fixture {
    pub async fn new() -> Self {
        let sandbox = Sandbox::start().await.expect("sandbox starts");
        sandbox.register_client(CLIENT_ID, CLIENT_SECRET);
        let sdk = Emulator::shared().sdk_config();
        let table = create_table(&sdk).await;
        let secret_id = create_client_secret(&sdk, CLIENT_ID, CLIENT_SECRET).await;
        Self {
            sandbox,
            sdk,
            table,
            secret_id,
        }
    }

    /// The functions' environment contract pointed at this fixture, plus `extra` overrides.
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = [
            ("KEAPALIVE_TABLE", self.table.as_str()),
            ("KEAPALIVE_CLIENT_SECRET_ID", self.secret_id.as_str()),
            ("KEAPALIVE_REDIRECT_URI", REDIRECT_URI),
            ("KEAPALIVE_STAGE", "test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        vars.push(("KEAP_AUTHORIZE_URL".into(), self.sandbox.authorize_url()));
        vars.push(("KEAP_TOKEN_URL".into(), self.sandbox.token_url()));
        vars.push(("KEAP_API_BASE_URL".into(), self.sandbox.api_base_url()));
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        vars
    }

    pub fn config(&self, extra: &[(&str, &str)]) -> Config {
        Config::from_vars(
            &self.env(extra),
            Requirements {
                redirect_uri: true,
                ..Requirements::default()
            },
        )
        .expect("fixture configuration is valid")
    }

    /// A fresh set of clients (own HTTP pool, own SDK clients), as one Lambda container has.
    pub fn clients(&self, extra: &[(&str, &str)]) -> Clients {
        Clients::new(self.config(extra), &self.sdk).expect("clients build")
    }

    pub fn store(&self) -> DynamoDbTokenStore {
        DynamoDbTokenStore::new(aws_sdk_dynamodb::Client::new(&self.sdk), &self.table)
    }

    /// Authorizes `id` with a pair the sandbox issued for `app`; `access_expires_at` overrides
    /// the stored expiry (in the past or near future makes the connection due).
    pub async fn seed_connection(
        &self,
        id: &str,
        app: &str,
        access_expires_at: Option<i64>,
    ) -> IssuedPair {
        let issued = self.sandbox.issue_grant(CLIENT_ID, app);
        let tokens = issued_tokens(&issued, access_expires_at);
        let outcome = self
            .store()
            .authorize(
                &connection_id(id),
                &tokens,
                true,
                &new_write_id(),
                now_epoch_secs(),
            )
            .await
            .expect("authorize");
        assert!(matches!(outcome, AuthorizeOutcome::Authorized { .. }));
        issued
    }
}

pub fn connection_id(id: &str) -> ConnectionId {
    ConnectionId::parse(id).expect("valid connection id")
}

/// The store's view of a sandbox-issued pair.
pub fn issued_tokens(issued: &IssuedPair, access_expires_at: Option<i64>) -> IssuedTokens {
    IssuedTokens {
        pair: TokenPair {
            access_token: SecretString::from(issued.access_token.clone()),
            refresh_token: SecretString::from(issued.refresh_token.clone()),
            access_expires_at: access_expires_at
                .unwrap_or_else(|| now_epoch_secs() + issued.expires_in as i64),
        },
        scope: Some(issued.scope.clone()),
        keap_app: keap_app_from_scope(&issued.scope),
    }
}
