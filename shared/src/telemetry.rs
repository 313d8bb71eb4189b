//! Logs and metrics.
//!
//! Logs go through `tracing`; in Lambda, `AWS_LAMBDA_LOG_FORMAT=JSON` (set by the SAM
//! template) makes them JSON objects. Metrics are CloudWatch embedded-metric-format (EMF)
//! lines on stdout: CloudWatch turns them into metrics with no API call and no extra latency.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

pub const METRICS_NAMESPACE: &str = "Keapalive";

/// Libraries that log whole events, request and response bodies at TRACE (an authorization
/// code, a DynamoDB item with its tokens, a contact's email): never more verbose than DEBUG,
/// whatever level the operator asks for. Our own crates still log at the level asked.
const CAPPED_TARGETS: &[&str] = &[
    "lambda_runtime",
    "lambda_runtime_api_client",
    "aws_config",
    "aws_runtime",
    "aws_sdk_dynamodb",
    "aws_sdk_secretsmanager",
    "aws_sdk_sqs",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_smithy_json",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
    "tower",
];

/// Installs a subscriber like `lambda_runtime`'s default one (honours `AWS_LAMBDA_LOG_LEVEL`,
/// then `RUST_LOG`, and `AWS_LAMBDA_LOG_FORMAT=JSON`), with [`CAPPED_TARGETS`] capped at DEBUG.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::{Directive, LevelFilter};

    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let mut filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(level);
    for target in CAPPED_TARGETS {
        if let Ok(directive) = format!("{target}=debug").parse::<Directive>() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_env_filter(filter);
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Seconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Seconds => "Seconds",
        }
    }
}

/// A set of metric values sharing one `Stage` dimension, rendered as one EMF line.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    values: Vec<(&'static str, f64, Unit)>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
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
        let mut document = Map::new();
        document.insert(
            "_aws".to_owned(),
            json!({
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": METRICS_NAMESPACE,
                    "Dimensions": [["Stage"]],
                    "Metrics": definitions,
                }],
            }),
        );
        document.insert("Stage".to_owned(), Value::String(stage.to_owned()));
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
