//! Building the long-lived clients a function needs, once per container, from [`Config`].
//!
//! Every function's `main` calls these at init; nothing here runs per invocation.

use std::sync::Arc;

use aws_config::BehaviorVersion;

use crate::config::Config;
use crate::keap::http::build_client;
use crate::keap::rate_limit::RateLimiter;
use crate::keap::{OAuthClient, RestClient};
use crate::refresh::{OnDemandRefresher, Refresher, RefresherSettings};
use crate::secrets::SecretsSource;
use crate::token_store::DynamoDbTokenStore;

/// Failure to build clients at init. One line, naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The SDK configuration from the standard chain (env, `AWS_ENDPOINT_URL` for emulators).
pub async fn load_aws() -> aws_config::SdkConfig {
    aws_config::load_defaults(BehaviorVersion::latest()).await
}

/// Everything a keapalive function talks to, built once.
#[derive(Clone)]
pub struct Clients {
    pub config: Arc<Config>,
    pub store: DynamoDbTokenStore,
    pub secrets: Arc<SecretsSource>,
    pub http: reqwest::Client,
    pub oauth: OAuthClient,
    /// Shared by every Keap request this container makes.
    pub keap_limiter: Arc<RateLimiter>,
    /// Keap REST v1, sharing `http` and `keap_limiter` (and its per-key limiters).
    pub rest: RestClient,
    pub sqs: aws_sdk_sqs::Client,
}

impl Clients {
    pub fn new(config: Config, aws: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let http = build_client(config.keap_timeout)?;
        let oauth = OAuthClient::new(http.clone(), &config.keap);
        let keap_limiter = Arc::new(RateLimiter::per_second(config.keap_rate_per_sec));
        let rest = RestClient::new(http.clone(), &config.keap, keap_limiter.clone())
            .with_key_rate_per_sec(config.key_rate_per_sec);
        Ok(Self {
            store: DynamoDbTokenStore::new(aws_sdk_dynamodb::Client::new(aws), &config.table),
            secrets: Arc::new(SecretsSource::new(
                aws_sdk_secretsmanager::Client::new(aws),
                config.secret_cache_ttl,
            )),
            keap_limiter,
            rest,
            sqs: aws_sdk_sqs::Client::new(aws),
            http,
            oauth,
            config: Arc::new(config),
        })
    }

    pub fn refresher(&self) -> Refresher<DynamoDbTokenStore> {
        Refresher::new(
            self.store.clone(),
            self.oauth.clone(),
            self.secrets.clone(),
            self.keap_limiter.clone(),
            RefresherSettings::from_config(&self.config),
        )
    }

    pub fn on_demand(&self) -> OnDemandRefresher<DynamoDbTokenStore> {
        OnDemandRefresher::new(Arc::new(self.refresher()), self.secrets.clone())
    }
}
