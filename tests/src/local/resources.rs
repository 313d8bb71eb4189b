//! The AWS side of a deployment, in the emulator: the connections table (as the SAM template
//! declares it), the client secret (as an operator stores it after deploying) and the event bus
//! with a consumer's rules and queues.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use secrecy::{ExposeSecret, SecretString};

use crate::emulator::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};

pub const TABLE: &str = "keapalive-local-connections";
pub const CLIENT_SECRET_ID: &str = "keapalive/local/keap-client";
/// The stage's event bus (the template's `keapalive-<stage>`), with two rules as a consumer
/// would attach them (docs/events.md): every connection event to [`EVENTS_QUEUE`], every Keap
/// change (`keap.*`, from keap-hooks) to [`KEAP_EVENTS_QUEUE`].
pub const EVENT_BUS: &str = "keapalive-local";
pub const EVENTS_QUEUE: &str = "keapalive-local-connection-events";
const EVENTS_RULE: &str = "keapalive-local-connection-events";
const EVENTS_PATTERN: &str =
    r#"{"source": ["keapalive"], "detail-type": [{"prefix": "keapalive.connection."}]}"#;
pub const KEAP_EVENTS_QUEUE: &str = "keapalive-local-keap-events";
const KEAP_EVENTS_RULE: &str = "keapalive-local-keap-events";
const KEAP_EVENTS_PATTERN: &str =
    r#"{"source": ["keapalive"], "detail-type": [{"prefix": "keap."}]}"#;

/// The URLs of the queues [`create_event_bus`]'s rules send to.
pub struct EventQueues {
    /// Connection lifecycle events (`keapalive.connection.*`).
    pub connection: String,
    /// Keap's changes (`keap.<event_key>`).
    pub keap: String,
}

/// The environment a function or tool needs to reach the emulator.
pub fn aws_env(endpoint_url: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint_url),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The connections table as the SAM template declares it ([`crate::aws::create_connections_table`]).
pub async fn create_table(sdk: &SdkConfig) -> Result<(), String> {
    crate::aws::create_connections_table(sdk, TABLE).await
}

/// `{"client_id", "client_secret"}` under [`CLIENT_SECRET_ID`], exactly what docs/deploy.md tells
/// an operator to store in the stack's secret.
pub async fn store_client_secret(
    sdk: &SdkConfig,
    client_id: &str,
    client_secret: &SecretString,
) -> Result<(), String> {
    let value = serde_json::json!({
        "client_id": client_id,
        "client_secret": client_secret.expose_secret(),
    });
    aws_sdk_secretsmanager::Client::new(sdk)
        .create_secret()
        .name(CLIENT_SECRET_ID)
        .secret_string(value.to_string())
        .send()
        .await
        .map_err(|e| {
            format!(
                "create secret {CLIENT_SECRET_ID}: {}",
                DisplayErrorContext(&e)
            )
        })?;
    Ok(())
}

/// The bus and its two rules, each to a queue of its own (see [`EVENT_BUS`]).
pub async fn create_event_bus(sdk: &SdkConfig) -> Result<EventQueues, String> {
    aws_sdk_eventbridge::Client::new(sdk)
        .create_event_bus()
        .name(EVENT_BUS)
        .send()
        .await
        .map_err(|e| format!("create the event bus: {}", DisplayErrorContext(&e)))?;
    Ok(EventQueues {
        connection: route_to_queue(sdk, EVENTS_RULE, EVENTS_PATTERN, EVENTS_QUEUE).await?,
        keap: route_to_queue(
            sdk,
            KEAP_EVENTS_RULE,
            KEAP_EVENTS_PATTERN,
            KEAP_EVENTS_QUEUE,
        )
        .await?,
    })
}

/// Queue `queue` and rule `rule` (`pattern`) on [`EVENT_BUS`] → that queue; the queue's URL.
async fn route_to_queue(
    sdk: &SdkConfig,
    rule: &str,
    pattern: &str,
    queue: &str,
) -> Result<String, String> {
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let failed = |what: &str, e: &dyn std::fmt::Display| format!("{what} ({queue}): {e}");
    let queue_url = sqs
        .create_queue()
        .queue_name(queue)
        .send()
        .await
        .map_err(|e| failed("create the queue", &DisplayErrorContext(&e)))?
        .queue_url
        .ok_or_else(|| format!("the emulator returned no URL for queue {queue}"))?;
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| failed("read the queue's ARN", &DisplayErrorContext(&e)))?
        .attributes
        .and_then(|mut a| a.remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .ok_or_else(|| format!("queue {queue} has no ARN"))?;
    events
        .put_rule()
        .name(rule)
        .event_bus_name(EVENT_BUS)
        .event_pattern(pattern)
        .send()
        .await
        .map_err(|e| failed("create the rule", &DisplayErrorContext(&e)))?;
    let target = aws_sdk_eventbridge::types::Target::builder()
        .id("queue")
        .arn(queue_arn)
        .build()
        .map_err(|e| failed("the rule's target", &e))?;
    events
        .put_targets()
        .rule(rule)
        .event_bus_name(EVENT_BUS)
        .targets(target)
        .send()
        .await
        .map_err(|e| failed("point the rule at the queue", &DisplayErrorContext(&e)))?;
    Ok(queue_url)
}

/// The next event in the queue (waiting up to `wait_secs`), as EventBridge delivered it.
pub async fn receive_event(
    sdk: &SdkConfig,
    queue_url: &str,
    wait_secs: i32,
) -> Result<Option<serde_json::Value>, String> {
    let messages = aws_sdk_sqs::Client::new(sdk)
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(1)
        .wait_time_seconds(wait_secs)
        .send()
        .await
        .map_err(|e| format!("receive from {queue_url}: {}", DisplayErrorContext(&e)))?
        .messages
        .unwrap_or_default();
    messages
        .first()
        .and_then(|message| message.body())
        .map(|body| {
            serde_json::from_str(body).map_err(|e| format!("an event that is not JSON: {e}"))
        })
        .transpose()
}
