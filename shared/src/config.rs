//! The environment-variable contract (docs/configuration.md), parsed once at init.
//!
//! Every variable but the required ones has a documented default, so a deployment that sets
//! only the contract's variables works. A malformed value, a missing required value or an
//! unknown `KEAPALIVE_*` name (usually a typo that would otherwise be silently ignored) fails
//! at init with one line naming the variable.

use std::path::PathBuf;
use std::time::Duration;
use url::Url;

use crate::connection_id::ConnectionId;
use crate::tls::{RootSource, TlsSettings};

pub const DEFAULT_AUTHORIZE_URL: &str = "https://accounts.infusionsoft.com/app/oauth/authorize";
pub const DEFAULT_TOKEN_URL: &str = "https://api.infusionsoft.com/token";
pub const DEFAULT_API_BASE_URL: &str = "https://api.infusionsoft.com/crm/rest";

/// Every `KEAPALIVE_*` variable this version understands.
pub const KNOWN_VARIABLES: &[&str] = &[
    "KEAPALIVE_TABLE",
    "KEAPALIVE_CLIENT_SECRET_ID",
    "KEAPALIVE_REDIRECT_URI",
    "KEAPALIVE_REFRESH_WINDOW_SECS",
    "KEAPALIVE_CREATE_MISSING_TAGS",
    "KEAPALIVE_DEAD_LETTER_QUEUE_URL",
    "KEAPALIVE_LEASE_SECS",
    "KEAPALIVE_REFRESH_CONCURRENCY",
    "KEAPALIVE_KEAP_RATE_PER_SEC",
    "KEAPALIVE_KEY_RATE_PER_SEC",
    "KEAPALIVE_FUNCTION_TIMEOUT_SECS",
    "KEAPALIVE_KEAP_TIMEOUT_SECS",
    "KEAPALIVE_SECRET_CACHE_SECS",
    "KEAPALIVE_MODEL_CACHE_SECS",
    "KEAPALIVE_STAGE",
    "KEAPALIVE_KEY_SECRET_PREFIX",
    "KEAPALIVE_CONNECTION_RECHECK_SECS",
    "KEAPALIVE_EVENT_BUS",
    "KEAPALIVE_HOOKS_BASE_URL",
    "KEAPALIVE_PROXY_FUNCTION",
    crate::telemetry::DEPENDENCY_LOG_LEVEL_VARIABLE,
    "KEAPALIVE_TLS_ROOTS",
    "KEAPALIVE_EXTRA_CA_CERTS",
    "KEAPALIVE_INIT_TIMINGS",
    PROXY_CONNECTIONS_VARIABLE,
];

/// keap-proxy serves only the connections this lists (comma-separated ids); all when unset.
pub const PROXY_CONNECTIONS_VARIABLE: &str = "KEAPALIVE_PROXY_CONNECTIONS";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration: {0} is required but not set")]
    Missing(&'static str),
    #[error("configuration: {name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
    #[error("configuration: unknown variable {0} (known: see docs/configuration.md)")]
    Unknown(String),
    /// A Keap URL or an AWS endpoint that would carry credentials in clear text.
    #[error(
        "configuration: {0} must be an https URL (plain http only to a loopback address: \
         127.0.0.0/8, ::1 or localhost)"
    )]
    NotHttps(String),
}

/// What a function needs beyond the variables every function needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requirements {
    /// oauth-callback exchanges codes; operator builds authorize URLs.
    pub redirect_uri: bool,
    /// keap-hooks exists to publish: without a bus it has nothing to do.
    pub event_bus: bool,
}

/// Keap's three endpoints; overridable so tests and the local demo point at the sandbox.
#[derive(Clone, Debug)]
pub struct KeapEndpoints {
    pub authorize_url: Url,
    pub token_url: Url,
    /// REST base without the version: `.../crm/rest`.
    pub api_base_url: Url,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub table: String,
    pub client_secret_id: String,
    pub redirect_uri: Option<Url>,
    pub refresh_window: Duration,
    pub create_missing_tags: bool,
    pub dead_letter_queue_url: Option<String>,
    pub lease: Duration,
    pub refresh_concurrency: usize,
    pub keap_rate_per_sec: u32,
    /// Requests per second one service-account key (or PAT) may make from one container: Keap's
    /// spike arrest for a key was observed at 5/s (docs/design.md, "Connection kinds").
    pub key_rate_per_sec: u32,
    /// The function's configured Lambda `Timeout` (the SAM template sets both from one value):
    /// the budget of an invocation whose Runtime API deadline had already passed on arrival, as
    /// local emulators send (cargo-lambda's relative `600000`, a zero, the invoke time).
    pub function_timeout: Duration,
    pub keap_timeout: Duration,
    pub secret_cache_ttl: Duration,
    pub model_cache_ttl: Duration,
    /// A warm container re-checks a cached credential against the connection item this often.
    pub connection_recheck: Duration,
    /// Metric dimension; the SAM stack sets it per stage.
    pub stage: String,
    /// Service-account-key secrets must live under this prefix (least privilege in IAM).
    pub key_secret_prefix: Option<String>,
    /// The EventBridge bus lifecycle events go to (`KEAPALIVE_EVENT_BUS`, docs/events.md);
    /// `None`: no lifecycle event is recorded or published.
    pub event_bus: Option<String>,
    /// operator: the public `…/keap/hooks` URL a subscription's hook URL starts with.
    pub hooks_base_url: Option<Url>,
    /// operator: the keap-proxy function it reaches Keap through (the hook commands).
    pub proxy_function: Option<String>,
    pub keap: KeapEndpoints,
    /// Which roots Keap's and the AWS clients trust (`KEAPALIVE_TLS_ROOTS`,
    /// `KEAPALIVE_EXTRA_CA_CERTS`).
    pub tls: TlsSettings,
    /// Write the init phases' timings to stderr (`KEAPALIVE_INIT_TIMINGS`, for the bench).
    pub init_timings: bool,
    /// The connections keap-proxy serves (`KEAPALIVE_PROXY_CONNECTIONS`); `None`: all.
    pub proxy_connections: Option<Vec<ConnectionId>>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env(requirements: Requirements) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::from_vars(&vars, requirements)
    }

    /// Reads from an explicit list of variables (tests, tools).
    pub fn from_vars(
        vars: &[(String, String)],
        requirements: Requirements,
    ) -> Result<Self, ConfigError> {
        if let Some((unknown, _)) = vars
            .iter()
            .find(|(k, _)| k.starts_with("KEAPALIVE_") && !KNOWN_VARIABLES.contains(&k.as_str()))
        {
            return Err(ConfigError::Unknown(unknown.clone()));
        }
        let get = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &'static str| get(name).ok_or(ConfigError::Missing(name));

        let redirect_uri = match get("KEAPALIVE_REDIRECT_URI") {
            Some(raw) => Some(parse_absolute_url("KEAPALIVE_REDIRECT_URI", &raw)?),
            None if requirements.redirect_uri => {
                return Err(ConfigError::Missing("KEAPALIVE_REDIRECT_URI"));
            }
            None => None,
        };
        // Keap's URLs carry the client secret, refresh tokens and access tokens: https only.
        let url_or = |name: &'static str, default: &str| {
            let url = match get(name) {
                Some(raw) => parse_absolute_url(name, &raw)?,
                None => parse_absolute_url(name, default)?,
            };
            require_https(name, &url)?;
            Ok::<_, ConfigError>(url)
        };
        check_aws_endpoints(vars)?;

        // Read by telemetry before this runs; checked here so a typo fails the init like any other.
        let dependency_level = get(crate::telemetry::DEPENDENCY_LOG_LEVEL_VARIABLE);
        if crate::telemetry::dependency_log_level(dependency_level.as_deref()).is_none() {
            return Err(ConfigError::Malformed {
                name: crate::telemetry::DEPENDENCY_LOG_LEVEL_VARIABLE,
                reason: "expected one of off, error, warn, info, debug (dependencies never log at trace)"
                    .to_owned(),
            });
        }

        Ok(Self {
            table: required("KEAPALIVE_TABLE")?,
            client_secret_id: required("KEAPALIVE_CLIENT_SECRET_ID")?,
            redirect_uri,
            refresh_window: secs(get, "KEAPALIVE_REFRESH_WINDOW_SECS", 21_600, 1)?,
            create_missing_tags: boolean(get, "KEAPALIVE_CREATE_MISSING_TAGS", false)?,
            dead_letter_queue_url: get("KEAPALIVE_DEAD_LETTER_QUEUE_URL"),
            lease: secs(get, "KEAPALIVE_LEASE_SECS", 300, 1)?,
            refresh_concurrency: number(get, "KEAPALIVE_REFRESH_CONCURRENCY", 8, 1, 256)? as usize,
            keap_rate_per_sec: number(get, "KEAPALIVE_KEAP_RATE_PER_SEC", 10, 1, 1_000)? as u32,
            key_rate_per_sec: number(get, "KEAPALIVE_KEY_RATE_PER_SEC", 5, 1, 100)? as u32,
            function_timeout: number(get, "KEAPALIVE_FUNCTION_TIMEOUT_SECS", 30, 1, 900)
                .map(Duration::from_secs)?,
            keap_timeout: secs(get, "KEAPALIVE_KEAP_TIMEOUT_SECS", 10, 1)?,
            secret_cache_ttl: secs(get, "KEAPALIVE_SECRET_CACHE_SECS", 300, 0)?,
            model_cache_ttl: secs(get, "KEAPALIVE_MODEL_CACHE_SECS", 300, 0)?,
            connection_recheck: secs(get, "KEAPALIVE_CONNECTION_RECHECK_SECS", 60, 0)?,
            stage: get("KEAPALIVE_STAGE").unwrap_or_else(|| "default".to_owned()),
            key_secret_prefix: get("KEAPALIVE_KEY_SECRET_PREFIX"),
            event_bus: match get("KEAPALIVE_EVENT_BUS").filter(|bus| !bus.is_empty()) {
                None if requirements.event_bus => {
                    return Err(ConfigError::Missing("KEAPALIVE_EVENT_BUS"));
                }
                bus => bus,
            },
            hooks_base_url: match get("KEAPALIVE_HOOKS_BASE_URL") {
                Some(raw) => {
                    let url = parse_absolute_url("KEAPALIVE_HOOKS_BASE_URL", &raw)?;
                    // Keap sends the token in this URL: never in clear text to another host.
                    require_https("KEAPALIVE_HOOKS_BASE_URL", &url)?;
                    Some(url)
                }
                None => None,
            },
            proxy_function: get("KEAPALIVE_PROXY_FUNCTION").filter(|name| !name.is_empty()),
            keap: KeapEndpoints {
                authorize_url: url_or("KEAP_AUTHORIZE_URL", DEFAULT_AUTHORIZE_URL)?,
                token_url: url_or("KEAP_TOKEN_URL", DEFAULT_TOKEN_URL)?,
                api_base_url: url_or("KEAP_API_BASE_URL", DEFAULT_API_BASE_URL)?,
            },
            tls: TlsSettings {
                roots: match get("KEAPALIVE_TLS_ROOTS") {
                    None => RootSource::default(),
                    Some(raw) => RootSource::parse(&raw).ok_or_else(|| ConfigError::Malformed {
                        name: "KEAPALIVE_TLS_ROOTS",
                        reason: "expected webpki or system".to_owned(),
                    })?,
                },
                extra_ca_certs: get("KEAPALIVE_EXTRA_CA_CERTS").map(PathBuf::from),
            },
            init_timings: boolean(get, "KEAPALIVE_INIT_TIMINGS", false)?,
            proxy_connections: get(PROXY_CONNECTIONS_VARIABLE)
                .map(|raw| connection_list(PROXY_CONNECTIONS_VARIABLE, &raw))
                .transpose()?,
        })
    }

    /// The redirect URI, for the functions that required it at init.
    pub fn redirect_uri(&self) -> Result<&Url, ConfigError> {
        self.redirect_uri
            .as_ref()
            .ok_or(ConfigError::Missing("KEAPALIVE_REDIRECT_URI"))
    }
}

/// `a,b, c`: connection ids, each valid, none empty.
fn connection_list(name: &'static str, raw: &str) -> Result<Vec<ConnectionId>, ConfigError> {
    raw.split(',')
        .map(|id| {
            ConnectionId::parse(id.trim()).map_err(|e| ConfigError::Malformed {
                name,
                reason: format!("expected comma-separated connection ids: {e}"),
            })
        })
        .collect()
}

fn parse_absolute_url(name: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|e| ConfigError::Malformed {
        name,
        reason: format!("not an absolute URL ({e})"),
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(ConfigError::Malformed {
            name,
            reason: "scheme must be https (or http for a local sandbox)".to_owned(),
        });
    }
    Ok(url)
}

/// `https`, or plain `http` to a loopback literal (a local sandbox or emulator): anything else
/// would send credentials in clear text over a network.
fn require_https(name: &str, url: &Url) -> Result<(), ConfigError> {
    if url.scheme() == "https" || is_loopback(url) {
        Ok(())
    } else {
        Err(ConfigError::NotHttps(name.to_owned()))
    }
}

/// A loopback literal: `127.0.0.0/8`, `::1` or the name `localhost` (no other name: DNS could
/// point it anywhere).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// `AWS_ENDPOINT_URL` and its per-service forms (`AWS_ENDPOINT_URL_DYNAMODB`, …) redirect the
/// SDK's signed requests (secrets, tokens in DynamoDB items): https only, as for Keap's URLs.
fn check_aws_endpoints(vars: &[(String, String)]) -> Result<(), ConfigError> {
    for (name, raw) in vars {
        let raw = raw.trim();
        if raw.is_empty() || !(name == "AWS_ENDPOINT_URL" || name.starts_with("AWS_ENDPOINT_URL_"))
        {
            continue;
        }
        match Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "https" | "http") => require_https(name, &url)?,
            _ => return Err(ConfigError::NotHttps(name.clone())),
        }
    }
    Ok(())
}

fn number(
    get: impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(raw) = get(name) else {
        return Ok(default);
    };
    let value: u64 = raw.parse().map_err(|_| ConfigError::Malformed {
        name,
        reason: "expected a whole number".to_owned(),
    })?;
    if !(min..=max).contains(&value) {
        return Err(ConfigError::Malformed {
            name,
            reason: format!("must be between {min} and {max}"),
        });
    }
    Ok(value)
}

fn secs(
    get: impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    min: u64,
) -> Result<Duration, ConfigError> {
    number(get, name, default, min, 31_536_000).map(Duration::from_secs)
}

fn boolean(
    get: impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(_) => Err(ConfigError::Malformed {
            name,
            reason: "expected true or false".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("KEAPALIVE_TABLE", "t"),
        ("KEAPALIVE_CLIENT_SECRET_ID", "s"),
    ];

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::from_vars(&vars(MINIMAL), Requirements::default()).unwrap();
        assert_eq!(config.refresh_window, Duration::from_secs(21_600));
        assert_eq!(config.lease, Duration::from_secs(300));
        assert_eq!(config.refresh_concurrency, 8);
        assert_eq!(config.keap_rate_per_sec, 10);
        assert_eq!(config.key_rate_per_sec, 5);
        assert_eq!(config.function_timeout, Duration::from_secs(30));
        assert!(!config.create_missing_tags);
        assert_eq!(config.keap.token_url.as_str(), DEFAULT_TOKEN_URL);
        assert_eq!(config.keap.api_base_url.as_str(), DEFAULT_API_BASE_URL);
        assert_eq!(config.tls, TlsSettings::default());
        assert_eq!(config.tls.roots, RootSource::Webpki);
        assert!(!config.init_timings);
        assert_eq!(config.proxy_connections, None);
    }

    #[test]
    fn reads_the_proxy_allowlist() {
        let mut v = vars(MINIMAL);
        v.push((
            PROXY_CONNECTIONS_VARIABLE.into(),
            "default, sales-eu".into(),
        ));
        let config = Config::from_vars(&v, Requirements::default()).unwrap();
        let ids: Vec<&str> = config
            .proxy_connections
            .iter()
            .flatten()
            .map(ConnectionId::as_str)
            .collect();
        assert_eq!(ids, ["default", "sales-eu"]);
        for bad in ["a,,b", "a b", "a,", "../x"] {
            let mut v = vars(MINIMAL);
            v.push((PROXY_CONNECTIONS_VARIABLE.into(), bad.into()));
            let err = Config::from_vars(&v, Requirements::default()).unwrap_err();
            assert!(
                err.to_string().contains(PROXY_CONNECTIONS_VARIABLE),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn reads_the_tls_variables() {
        let mut v = vars(MINIMAL);
        v.push(("KEAPALIVE_TLS_ROOTS".into(), "system".into()));
        v.push((
            "KEAPALIVE_EXTRA_CA_CERTS".into(),
            "/var/task/proxy-ca.pem".into(),
        ));
        v.push(("KEAPALIVE_INIT_TIMINGS".into(), "true".into()));
        let config = Config::from_vars(&v, Requirements::default()).unwrap();
        assert_eq!(config.tls.roots, RootSource::System);
        assert_eq!(
            config.tls.extra_ca_certs.as_deref(),
            Some(std::path::Path::new("/var/task/proxy-ca.pem"))
        );
        assert!(config.init_timings);

        let mut v = vars(MINIMAL);
        v.push(("KEAPALIVE_TLS_ROOTS".into(), "native".into()));
        let err = Config::from_vars(&v, Requirements::default()).unwrap_err();
        assert!(err.to_string().contains("KEAPALIVE_TLS_ROOTS"), "{err}");
    }

    #[test]
    fn names_the_missing_variable() {
        let err = Config::from_vars(&vars(&[("KEAPALIVE_TABLE", "t")]), Requirements::default())
            .unwrap_err();
        assert_eq!(err, ConfigError::Missing("KEAPALIVE_CLIENT_SECRET_ID"));
        let err = Config::from_vars(
            &vars(MINIMAL),
            Requirements {
                redirect_uri: true,
                ..Requirements::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("KEAPALIVE_REDIRECT_URI"));
    }

    #[test]
    fn names_malformed_and_unknown_variables() {
        let mut v = vars(MINIMAL);
        v.push(("KEAPALIVE_LEASE_SECS".into(), "five".into()));
        let err = Config::from_vars(&v, Requirements::default()).unwrap_err();
        assert!(err.to_string().contains("KEAPALIVE_LEASE_SECS"), "{err}");

        let mut v = vars(MINIMAL);
        v.push(("KEAPALIVE_REDIRECT_URI".into(), "/relative".into()));
        let err = Config::from_vars(&v, Requirements::default()).unwrap_err();
        assert!(err.to_string().contains("KEAPALIVE_REDIRECT_URI"), "{err}");

        let mut v = vars(MINIMAL);
        v.push(("KEAPALIVE_REFRESH_WINDOW".into(), "60".into()));
        let err = Config::from_vars(&v, Requirements::default()).unwrap_err();
        assert_eq!(err, ConfigError::Unknown("KEAPALIVE_REFRESH_WINDOW".into()));
    }

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut v = vars(MINIMAL);
        v.extend(vars(extra));
        Config::from_vars(&v, Requirements::default())
    }

    #[test]
    fn keap_urls_must_be_https_except_to_a_loopback_literal() {
        for name in ["KEAP_TOKEN_URL", "KEAP_AUTHORIZE_URL", "KEAP_API_BASE_URL"] {
            for url in [
                "http://api.infusionsoft.com/token",
                "http://10.0.0.5/token",
                "http://localhost.example.com/token",
                "http://[::2]/token",
                "http://128.0.0.1/token",
            ] {
                let err = with(&[(name, url)]).unwrap_err();
                assert_eq!(err, ConfigError::NotHttps(name.to_owned()), "{name}={url}");
                let line = err.to_string();
                assert!(line.contains(name) && !line.contains('\n'), "{line}");
                assert!(!line.contains(url), "the value is not echoed: {line}");
            }
            for url in [
                "https://api.infusionsoft.com/token",
                "http://127.0.0.1:9180/token",
                "http://127.3.4.5/token",
                "http://[::1]:8080/token",
                "http://localhost:9180/token",
                "http://LOCALHOST/token",
            ] {
                assert!(with(&[(name, url)]).is_ok(), "{name}={url}");
            }
        }
    }

    #[test]
    fn aws_endpoints_must_be_https_except_to_a_loopback_literal() {
        for name in [
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_DYNAMODB",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "AWS_ENDPOINT_URL_SQS",
        ] {
            for url in [
                "http://dynamodb.internal:8000",
                "http://10.1.2.3",
                "not a url",
            ] {
                let err = with(&[(name, url)]).unwrap_err();
                assert_eq!(err, ConfigError::NotHttps(name.to_owned()), "{name}={url}");
            }
            for url in [
                "https://dynamodb.us-east-1.amazonaws.com",
                "http://127.0.0.1:5000",
                "http://localhost:4566",
                "http://[::1]:4566",
                "",
            ] {
                assert!(with(&[(name, url)]).is_ok(), "{name}={url}");
            }
        }
    }
}
