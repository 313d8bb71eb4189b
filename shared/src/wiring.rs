//! Building the long-lived clients a function needs, once per container, from [`Config`].
//!
//! Every function's `main` calls these at init; nothing here runs per invocation.

use std::sync::Arc;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

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

/// One attempt of any AWS call (DynamoDB, Secrets Manager, SQS) is abandoned after this: a
/// connection that hangs must not eat the invocation while Keap's new pair waits in memory.
pub const AWS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// One AWS call with all of the SDK's own retries; the commit retries past it, up to the
/// invocation deadline minus a margin (docs/design.md, "The fault model").
pub const AWS_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
pub const AWS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts of one DynamoDB call (the SDK's default is 3).
const DYNAMODB_ATTEMPTS: u32 = 5;

/// The SDK configuration from the standard chain (env, `AWS_ENDPOINT_URL` for emulators).
/// [`Clients::new`] bounds every call it makes with [`aws_timeouts`].
pub async fn load_aws() -> aws_config::SdkConfig {
    aws_config::load_defaults(BehaviorVersion::latest()).await
}

/// Attempt, operation and connect timeouts for every AWS client keapalive builds.
pub fn aws_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(AWS_CONNECT_TIMEOUT)
        .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT)
        .operation_timeout(AWS_OPERATION_TIMEOUT)
        .build()
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
            store: DynamoDbTokenStore::new(
                aws_sdk_dynamodb::Client::from_conf(
                    aws_sdk_dynamodb::config::Builder::from(aws)
                        .timeout_config(aws_timeouts())
                        // Safe to retry more: every decisive write recognises its own landing.
                        .retry_config(RetryConfig::standard().with_max_attempts(DYNAMODB_ATTEMPTS))
                        .build(),
                ),
                &config.table,
            ),
            secrets: Arc::new(SecretsSource::new(
                aws_sdk_secretsmanager::Client::from_conf(
                    aws_sdk_secretsmanager::config::Builder::from(aws)
                        .timeout_config(aws_timeouts())
                        .build(),
                ),
                config.secret_cache_ttl,
            )),
            keap_limiter,
            rest,
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(aws)
                    .timeout_config(aws_timeouts())
                    .build(),
            ),
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
        OnDemandRefresher::new(
            Arc::new(self.refresher()),
            self.secrets.clone(),
            self.config.connection_recheck,
        )
    }
}
