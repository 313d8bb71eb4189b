//! Logs and metrics.
//!
//! Logs go through `tracing`; in Lambda, `AWS_LAMBDA_LOG_FORMAT=JSON` (set by the SAM
//! template) makes them JSON objects. Metrics are CloudWatch embedded-metric-format (EMF)
//! lines on stdout: CloudWatch turns them into metrics with no API call and no extra latency.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

pub const METRICS_NAMESPACE: &str = "Keapalive";

/// keapalive's own crates (library, function binaries, admin tool): they log at the level the
/// operator asks for. Everything else is a dependency.
const OWN_TARGETS: &[&str] = &[
    "keapalive",
    "oauth_callback",
    "token_refresher",
    "contact_upsert",
    "operator",
    "keapalive_admin",
];

/// Caps every dependency's logs: `KEAPALIVE_DEPENDENCY_LOG_LEVEL` (default `info`, at most
/// `debug`). Dependencies log whole events, request bodies and signing steps at TRACE (an
/// authorization code, a DynamoDB item with its tokens, `aws_sigv4`'s canonical request) and
/// dozens of connection lines at DEBUG; an allowlist of ours, not a list of theirs, so a new
/// dependency is capped the day it arrives.
pub const DEPENDENCY_LOG_LEVEL_VARIABLE: &str = "KEAPALIVE_DEPENDENCY_LOG_LEVEL";

/// The level dependencies are held to; `None` when the value is not one of
/// `error`, `warn`, `info`, `debug` (TRACE is refused: it is where the secrets are).
pub fn dependency_log_level(value: Option<&str>) -> Option<tracing::level_filters::LevelFilter> {
    use tracing::level_filters::LevelFilter;
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Some(LevelFilter::INFO),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "off" => Some(LevelFilter::OFF),
            "error" => Some(LevelFilter::ERROR),
            "warn" => Some(LevelFilter::WARN),
            "info" => Some(LevelFilter::INFO),
            "debug" => Some(LevelFilter::DEBUG),
            _ => None,
        },
    }
}

/// The filter layer that does the capping. Directives alone cannot: the more specific one
/// wins, so `hyper=debug` added to "trace" raises hyper at INFO to DEBUG instead of capping.
/// This layer is a second, independent gate: our crates pass at any level, the rest only at or
/// below `dependencies`.
pub fn dependency_cap(
    dependencies: tracing::level_filters::LevelFilter,
) -> tracing_subscriber::filter::Targets {
    use tracing::level_filters::LevelFilter;
    OWN_TARGETS.iter().fold(
        tracing_subscriber::filter::Targets::new().with_default(dependencies),
        |targets, own| targets.with_target(*own, LevelFilter::TRACE),
    )
}

/// Installs a subscriber like `lambda_runtime`'s default one (honours `AWS_LAMBDA_LOG_LEVEL`,
/// then `RUST_LOG`, and `AWS_LAMBDA_LOG_FORMAT=JSON`), with every dependency held by
/// [`dependency_cap`]. A malformed `KEAPALIVE_DEPENDENCY_LOG_LEVEL` caps at INFO here and fails
/// the init in [`crate::Config`], with one line naming it.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let requested = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(level);
    let dependencies =
        dependency_log_level(std::env::var(DEPENDENCY_LOG_LEVEL_VARIABLE).ok().as_deref())
            .unwrap_or(LevelFilter::INFO);
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Lambda stamps every line itself; the target says whose line it is (ours or a dependency's).
    let text = (!json).then(|| tracing_subscriber::fmt::layer().without_time());
    let json = json.then(|| tracing_subscriber::fmt::layer().without_time().json());
    // A second initialisation (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(dependency_cap(dependencies))
        .with(requested)
        .with(text)
        .with(json)
        .try_init();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Seconds,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Seconds => "Seconds",
            Self::Milliseconds => "Milliseconds",
        }
    }
}

/// A set of metric values sharing one `Stage` dimension (and, for per-function metrics, a
/// `Function` dimension), rendered as one EMF line.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    values: Vec<(&'static str, f64, Unit)>,
    function: Option<&'static str>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// These values are one function's (its binary name): dimensions `Stage` and `Function`.
    pub fn with_function(mut self, function: &'static str) -> Self {
        self.function = Some(function);
        self
    }

    pub fn put(&mut self, name: &'static str, value: f64, unit: Unit) -> &mut Self {
        self.values.push((name, value, unit));
        self
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, v, _)| *v)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The EMF JSON document for these values.
    pub fn to_emf(&self, stage: &str) -> Value {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let definitions: Vec<Value> = self
            .values
            .iter()
            .map(|(name, _, unit)| json!({"Name": name, "Unit": unit.as_str()}))
            .collect();
        let dimensions: Vec<&str> = ["Stage"]
            .into_iter()
            .chain(self.function.map(|_| "Function"))
            .collect();
        let mut document = Map::new();
        document.insert(
            "_aws".to_owned(),
            json!({
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": METRICS_NAMESPACE,
                    "Dimensions": [dimensions],
                    "Metrics": definitions,
                }],
            }),
        );
        document.insert("Stage".to_owned(), Value::String(stage.to_owned()));
        if let Some(function) = self.function {
            document.insert("Function".to_owned(), Value::String(function.to_owned()));
        }
        for (name, value, _) in &self.values {
            document.insert((*name).to_owned(), json!(value));
        }
        Value::Object(document)
    }

    /// Prints the EMF line to stdout, where CloudWatch Logs picks it up.
    pub fn emit(&self, stage: &str) {
        if !self.is_empty() {
            println!("{}", self.to_emf(stage));
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;

    #[test]
    fn dependencies_are_capped_and_ours_follow_the_requested_level() {
        use tracing::Level;
        let cap = super::dependency_cap(LevelFilter::INFO);
        for own in [
            "keapalive::refresh::protocol",
            "contact_upsert",
            "keapalive_admin",
        ] {
            assert!(cap.would_enable(own, &Level::TRACE), "{own}");
        }
        for dependency in ["hyper_util::client", "aws_sigv4::http_request", "h2"] {
            assert!(cap.would_enable(dependency, &Level::INFO), "{dependency}");
            assert!(!cap.would_enable(dependency, &Level::DEBUG), "{dependency}");
        }
        let raised = super::dependency_cap(LevelFilter::DEBUG);
        assert!(raised.would_enable("aws_smithy_runtime", &Level::DEBUG));
        assert!(!raised.would_enable("aws_smithy_runtime", &Level::TRACE));
    }

    #[test]
    fn dependency_level_is_at_most_debug() {
        assert_eq!(super::dependency_log_level(None), Some(LevelFilter::INFO));
        assert_eq!(
            super::dependency_log_level(Some("DEBUG")),
            Some(LevelFilter::DEBUG)
        );
        assert_eq!(super::dependency_log_level(Some("trace")), None);
        assert_eq!(super::dependency_log_level(Some("loud")), None);
    }

    use super::*;

    #[test]
    fn emf_document_declares_every_value() {
        let mut metrics = Metrics::new();
        metrics.put("Refreshed", 3.0, Unit::Count).put(
            "SecondsSinceOldestRefresh",
            60.0,
            Unit::Seconds,
        );
        let doc = metrics.to_emf("dev");
        assert_eq!(doc["Refreshed"], 3.0);
        assert_eq!(doc["Stage"], "dev");
        let declared = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], "Keapalive");
        assert_eq!(declared["Metrics"].as_array().unwrap().len(), 2);
        assert_eq!(declared["Dimensions"][0][0], "Stage");
    }
}

/// Where EMF metric lines go: stdout in Lambda (CloudWatch reads them), a closure in tests.
#[derive(Clone)]
pub struct MetricSink(Arc<EmitMetrics>);

/// Receives the metrics and the stage (their dimension).
type EmitMetrics = dyn Fn(&Metrics, &str) + Send + Sync;

impl MetricSink {
    pub fn stdout() -> Self {
        Self(Arc::new(|metrics: &Metrics, stage: &str| {
            metrics.emit(stage)
        }))
    }

    pub fn new(sink: impl Fn(&Metrics, &str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(sink))
    }

    pub fn emit(&self, metrics: &Metrics, stage: &str) {
        (self.0)(metrics, stage);
    }
}
