//! The composition root: everything a function builds once per container — logging, the
//! configuration, the AWS configuration and every client — and the domain service each
//! function hands its events to.
//!
//! Each `functions/*/src/main.rs` calls one of [`oauth_callback`], [`operator`],
//! [`token_refresher`], [`contact_upsert`], [`keap_proxy`], [`access_token`], then runs the
//! returned service's `handle`. Any init failure prints one line naming the problem (the variable, usually) to stderr and exits
//! non-zero, the same way for every function: Lambda reports the failed init and the line is in
//! the function's log. Nothing here runs per invocation. Domain modules never import this one.

mod timings;
#[cfg(test)]
mod tls_handshake;

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

use crate::access_token::{AccessTokenService, AccessTokenSettings};
use crate::authorization::AuthorizationService;
use crate::config::{Config, ConfigError, Requirements};
use crate::contact::{LazySqs, UpsertService, UpsertSettings};
use crate::events::EventBus;
use crate::hooks::{HookCheck, HookSubscriptions, HooksReceiver, KeapViaProxy, PROXY_READ_TIMEOUT};
use crate::keap::http::build_client;
use crate::keap::rate_limit::RateLimiter;
use crate::keap::{KeapUsage, OAuthClient, RestClient};
use crate::proxy::{ProxyService, ProxySettings};
use crate::refresh::{
    COMMIT_BUDGET, OnDemandRefresher, Refresher, RefresherFunction, RefresherSettings,
};
use crate::secrets::SecretsSource;
use crate::telemetry;
use crate::tls::{TlsError, TlsRoots};
use crate::token_store::DynamoDbTokenStore;

pub use timings::{InitTimings, LINE_PREFIX as INIT_TIMINGS_LINE_PREFIX};

/// Failure to build clients at init. One line, naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "configuration: KEAPALIVE_FUNCTION_TIMEOUT_SECS ({function_secs} s) is below \
         KEAPALIVE_KEAP_TIMEOUT_SECS ({keap_secs} s) plus the commit budget ({budget_secs} s): a \
         pair Keap issues could not be stored in time; set the function's Timeout and \
         KEAPALIVE_FUNCTION_TIMEOUT_SECS to at least {floor_secs}, or lower \
         KEAPALIVE_KEAP_TIMEOUT_SECS"
    )]
    TimeoutBelowFloor {
        function_secs: u64,
        keap_secs: u64,
        budget_secs: u64,
        floor_secs: u64,
    },
}

/// A function that presents a refresh token or a code to Keap must have time, after it, to
/// wait for the answer and to store the pair (docs/design.md, "The fault model").
fn check_timeout_floor(config: &Config) -> Result<(), InitError> {
    let floor = config.keap_timeout + COMMIT_BUDGET;
    if config.function_timeout < floor {
        return Err(InitError::TimeoutBelowFloor {
            function_secs: config.function_timeout.as_secs(),
            keap_secs: config.keap_timeout.as_secs(),
            budget_secs: COMMIT_BUDGET.as_secs(),
            floor_secs: floor.as_secs_f64().ceil() as u64,
        });
    }
    Ok(())
}

/// One attempt of any AWS call (DynamoDB, Secrets Manager, SQS, EventBridge) is abandoned after this: a
/// connection that hangs must not eat the invocation while Keap's new pair waits in memory.
pub const AWS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// One AWS call with all of the SDK's own retries; the commit retries past it, up to the
/// invocation deadline minus a margin (docs/design.md, "The fault model").
pub const AWS_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
pub const AWS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts of one DynamoDB call (the SDK's default is 3).
const DYNAMODB_ATTEMPTS: u32 = 5;

/// oauth-callback's init. Its callback route finishes authorizations, so it needs the redirect URI.
pub async fn oauth_callback() -> AuthorizationService {
    init_or_exit(
        Requirements {
            redirect_uri: true,
            ..Requirements::default()
        },
        PresentsToKeap::Yes,
    )
    .await
    .authorization()
}

/// operator's init. start_authorization builds the authorize link, which names the callback's
/// redirect URI.
pub async fn operator() -> AuthorizationService {
    // A key probe, but never a refresh token or a code: no pair to store after it.
    init_or_exit(
        Requirements {
            redirect_uri: true,
            ..Requirements::default()
        },
        PresentsToKeap::No,
    )
    .await
    .authorization()
}

/// token-refresher's init.
pub async fn token_refresher() -> RefresherFunction {
    let clients = init_or_exit(Requirements::default(), PresentsToKeap::Yes).await;
    let function = RefresherFunction::new(clients.refresher(), &clients.config);
    match &clients.keap_via_proxy {
        Some(keap) => function.with_hook_check(HookCheck::new(
            clients.store.clone(),
            keap.clone(),
            clients.store.event_bus().cloned(),
        )),
        None => function,
    }
}

/// contact-upsert's init.
pub async fn contact_upsert() -> UpsertService {
    init_or_exit(Requirements::default(), PresentsToKeap::Yes)
        .await
        .upsert_service()
}

/// access-token's init.
pub async fn access_token() -> AccessTokenService {
    init_or_exit(Requirements::default(), PresentsToKeap::Yes)
        .await
        .access_token_service()
}

/// keap-proxy's init.
pub async fn keap_proxy() -> ProxyService {
    init_or_exit(Requirements::default(), PresentsToKeap::Yes)
        .await
        .proxy_service()
}

/// keap-hooks' init: the table (hook items only) and the bus; it never calls Keap.
pub async fn keap_hooks() -> HooksReceiver {
    let requirements = Requirements {
        event_bus: true,
        ..Requirements::default()
    };
    init_or_exit(requirements, PresentsToKeap::No)
        .await
        .hooks_receiver()
        .unwrap_or_else(|e| exit_at_init(&e))
}

/// Whether a function presents a refresh token or an authorization code to Keap.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PresentsToKeap {
    Yes,
    No,
}

/// Logging, then the configuration (and, for a function that presents a token or a code, its
/// timeout floor), then [`init`]; on any failure, one line and exit 1.
async fn init_or_exit(requirements: Requirements, presents: PresentsToKeap) -> Clients {
    telemetry::init_logging();
    let config = Config::from_env(requirements).unwrap_or_else(|e| exit_at_init(&e));
    if presents == PresentsToKeap::Yes {
        check_timeout_floor(&config).unwrap_or_else(|e| exit_at_init(&e));
    }
    init(config).await.unwrap_or_else(|e| exit_at_init(&e))
}

/// One line naming the problem (its `Display`, never a `Debug` dump), then exit.
fn exit_at_init(error: &dyn std::fmt::Display) -> ! {
    eprintln!("{error}");
    std::process::exit(1)
}

/// A function's init: the trust roots, the SDK configuration and every client, each phase
/// timed ([`InitTimings`]: DEBUG log, and a stderr line with `KEAPALIVE_INIT_TIMINGS=true`).
///
/// Every client exists when this returns. Built on first use: the SQS client (no commit needs
/// it) and the AWS connector, whose roots the SDK parses from PEM ([`TlsRoots::aws_http_client`]):
/// the container's first AWS call builds it, and that call (a lease, a read) always comes before
/// any token is presented, so a commit never waits for it.
pub async fn init(config: Config) -> Result<Clients, InitError> {
    let mut phases = timings::Phases::start();
    let roots = TlsRoots::load(&config.tls)?;
    let aws_http = roots.aws_http_client();
    let tls_roots_us = phases.lap();
    let aws = load_aws_with(aws_http).await;
    let aws_config_us = phases.lap();
    let report = config.init_timings;
    let clients = Clients::with_roots(config, &aws, &roots)?;
    let timings = InitTimings {
        tls_roots_us,
        aws_config_us,
        clients_us: phases.lap(),
    };
    timings.report(report);
    Ok(clients)
}

/// The SDK configuration from the standard chain (env, `AWS_ENDPOINT_URL` for emulators),
/// with the SDK's own HTTPS client (the system's roots). The functions use [`init`]; this is
/// for tools. [`Clients::new`] bounds every call it makes with [`aws_timeouts`].
pub async fn load_aws() -> aws_config::SdkConfig {
    aws_config::load_defaults(BehaviorVersion::latest()).await
}

/// The standard chain, every AWS client (and aws-config's own providers) sharing `http`:
/// one connector per set of connector settings over the container's roots, each built on
/// first use ([`TlsRoots::aws_http_client`]).
async fn load_aws_with(
    http: aws_smithy_runtime_api::client::http::SharedHttpClient,
) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(aws_timeouts())
        .load()
        .await
}

/// Attempt, operation and connect timeouts for every AWS client keapalive builds.
pub fn aws_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(AWS_CONNECT_TIMEOUT)
        .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT)
        .operation_timeout(AWS_OPERATION_TIMEOUT)
        .build()
}

/// A lifecycle event's publish, with the SDK's retries: it comes after the change landed, so
/// it must never hold the caller (a callback page, an upsert) for long; what it cannot publish
/// in time stays pending and the scheduled refresher publishes it (docs/events.md).
pub const EVENTS_OPERATION_TIMEOUT: Duration = Duration::from_secs(3);

/// [`aws_timeouts`] with the operation bounded by [`EVENTS_OPERATION_TIMEOUT`].
fn events_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(AWS_CONNECT_TIMEOUT)
        .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT.min(EVENTS_OPERATION_TIMEOUT))
        .operation_timeout(EVENTS_OPERATION_TIMEOUT)
        .build()
}

/// Everything a keapalive function talks to, built once.
#[derive(Clone)]
pub struct Clients {
    pub config: Arc<Config>,
    pub store: DynamoDbTokenStore,
    pub secrets: Arc<SecretsSource>,
    pub oauth: OAuthClient,
    /// Shared by every Keap request this container makes.
    pub keap_limiter: Arc<RateLimiter>,
    /// Keap REST v1, sharing the OAuth client's connection pool and `keap_limiter` (and its
    /// per-key limiters).
    pub rest: RestClient,
    /// Only contact-upsert's dead letters use it, and no commit does: built on first use.
    pub sqs: LazySqs,
    /// keap-proxy as the operator reaches it (`KEAPALIVE_PROXY_FUNCTION`), for the hook commands.
    pub keap_via_proxy: Option<KeapViaProxy>,
}

impl Clients {
    /// Clients over `aws` and the roots `config` names (tests, tools: a function uses [`init`]).
    pub fn new(config: Config, aws: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let roots = TlsRoots::load(&config.tls)?;
        Self::with_roots(config, aws, &roots)
    }

    /// Clients over `aws`, Keap's HTTP client trusting `roots`.
    pub fn with_roots(
        config: Config,
        aws: &aws_config::SdkConfig,
        roots: &TlsRoots,
    ) -> Result<Self, InitError> {
        let http = build_client(config.keap_timeout, roots.reqwest_tls()?)?;
        // One count of Keap requests per container: token and REST requests alike.
        let usage = Arc::new(KeapUsage::default());
        let oauth = OAuthClient::new(http.clone(), &config.keap).with_usage(usage.clone());
        let keap_limiter = Arc::new(RateLimiter::per_second(config.keap_rate_per_sec));
        let rest = RestClient::new(http.clone(), &config.keap, keap_limiter.clone())
            .with_key_rate_per_sec(config.key_rate_per_sec)
            .with_usage(usage);
        let mut store = DynamoDbTokenStore::new(
            aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(aws)
                    .timeout_config(aws_timeouts())
                    // Safe to retry more: every decisive write recognises its own landing.
                    .retry_config(RetryConfig::standard().with_max_attempts(DYNAMODB_ATTEMPTS))
                    .build(),
            ),
            &config.table,
        );
        if let Some(bus) = &config.event_bus {
            // Lifecycle events (docs/events.md): a publish that fails leaves the event pending
            // on the item, so the SDK's default retries are enough.
            store = store.with_events(EventBus::new(
                aws_sdk_eventbridge::Client::from_conf(
                    aws_sdk_eventbridge::config::Builder::from(aws)
                        .timeout_config(events_timeouts())
                        .build(),
                ),
                bus,
            ));
        }
        Ok(Self {
            store,
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
            sqs: LazySqs::new(
                aws_sdk_sqs::config::Builder::from(aws)
                    .timeout_config(aws_timeouts())
                    .build(),
            ),
            oauth,
            keap_via_proxy: config.proxy_function.as_ref().map(|function| {
                // Retries off and a read timeout past the proxy's Timeout: a re-invoke after a
                // client-side timeout would send a POST /v1/hooks twice.
                let client = aws_sdk_lambda::Client::from_conf(
                    aws_sdk_lambda::config::Builder::from(aws)
                        .retry_config(RetryConfig::disabled())
                        .timeout_config(
                            TimeoutConfig::builder()
                                .connect_timeout(AWS_CONNECT_TIMEOUT)
                                .read_timeout(PROXY_READ_TIMEOUT)
                                .operation_attempt_timeout(PROXY_READ_TIMEOUT)
                                .operation_timeout(PROXY_READ_TIMEOUT)
                                .build(),
                        )
                        .build(),
                );
                KeapViaProxy::new(client, function)
            }),
            config: Arc::new(config),
        })
    }

    pub fn refresher(&self) -> Refresher {
        Refresher::new(
            self.store.clone(),
            self.oauth.clone(),
            self.secrets.clone(),
            self.keap_limiter.clone(),
            RefresherSettings::from_config(&self.config),
        )
    }

    pub fn authorization(&self) -> AuthorizationService {
        let service = AuthorizationService::new(
            self.config.clone(),
            self.store.clone(),
            self.secrets.clone(),
            self.oauth.clone(),
            self.rest.clone(),
            self.keap_limiter.clone(),
        );
        match (&self.keap_via_proxy, &self.config.hooks_base_url) {
            (Some(keap), Some(base_url)) => service.with_hooks(HookSubscriptions::new(
                self.store.clone(),
                keap.clone(),
                base_url.clone(),
            )),
            _ => service,
        }
    }

    pub fn upsert_service(&self) -> UpsertService {
        UpsertService::new(
            self.rest.clone(),
            Arc::new(self.on_demand()),
            self.secrets.clone(),
            self.sqs.clone(),
            UpsertSettings::from_config(&self.config),
        )
    }

    /// keap-hooks: the store (hook items) and the bus (`KEAPALIVE_EVENT_BUS`, required).
    pub fn hooks_receiver(&self) -> Result<HooksReceiver, ConfigError> {
        let bus = self
            .store
            .event_bus()
            .cloned()
            .ok_or(ConfigError::Missing("KEAPALIVE_EVENT_BUS"))?;
        Ok(HooksReceiver::new(
            self.store.clone(),
            bus,
            self.config.stage.clone(),
        ))
    }

    pub fn proxy_service(&self) -> ProxyService {
        ProxyService::new(
            self.rest.clone(),
            Arc::new(self.on_demand()),
            self.secrets.clone(),
            ProxySettings::from_config(&self.config),
        )
    }

    pub fn access_token_service(&self) -> AccessTokenService {
        AccessTokenService::new(
            self.rest.clone(),
            Arc::new(self.on_demand()),
            self.secrets.clone(),
            AccessTokenSettings::from_config(&self.config),
        )
    }

    pub fn on_demand(&self) -> OnDemandRefresher {
        OnDemandRefresher::new(
            Arc::new(self.refresher()),
            self.secrets.clone(),
            self.config.connection_recheck,
        )
    }
}
