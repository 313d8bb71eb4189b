//! Fresh, uniquely named AWS resources in the emulator, so tests never share state and run in
//! parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType, SseSpecification,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use keapalive::token_store::{HOOK_INDEX, PENDING_INDEX, STATUS_INDEX};

pub const PARTITION_KEY: &str = "pk";
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// Unique across tests of one process and across processes sharing one emulator.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The connections table as docs/design.md ("Data model") and the SAM template describe it:
/// partition key `pk` (string), no sort key, the sparse indexes, on-demand, server-side
/// encryption, TTL on `expires_at`. A fresh uniquely named one per call.
pub async fn create_table(sdk: &SdkConfig) -> String {
    let name = unique_name("keapalive-test");
    create_connections_table(sdk, &name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    name
}

/// The sparse indexes: (name, hash key, projection). Every one is keyed on an attribute that
/// only one kind of item carries (docs/design.md, "Data model").
const INDEXES: [(&str, &str, ProjectionType); 3] = [
    (STATUS_INDEX, "status", ProjectionType::All),
    (PENDING_INDEX, "connection_id", ProjectionType::KeysOnly),
    (HOOK_INDEX, "hook_connection_id", ProjectionType::KeysOnly),
];

/// Creates the connections table `name` (see [`create_table`]).
pub async fn create_connections_table(sdk: &SdkConfig, name: &str) -> Result<(), String> {
    let client = aws_sdk_dynamodb::Client::new(sdk);
    let built = |e: aws_sdk_dynamodb::error::BuildError| format!("table definition: {e}");
    let string_attribute = |attribute: &str| {
        AttributeDefinition::builder()
            .attribute_name(attribute)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(built)
    };
    let mut request = client
        .create_table()
        .table_name(name)
        .attribute_definitions(string_attribute(PARTITION_KEY)?)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(PARTITION_KEY)
                .key_type(KeyType::Hash)
                .build()
                .map_err(built)?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .sse_specification(SseSpecification::builder().enabled(true).build());
    for (index, key, projection) in INDEXES {
        request = request
            .attribute_definitions(string_attribute(key)?)
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(index)
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name(key)
                            .key_type(KeyType::Hash)
                            .build()
                            .map_err(built)?,
                    )
                    .projection(Projection::builder().projection_type(projection).build())
                    .build()
                    .map_err(built)?,
            );
    }
    request
        .send()
        .await
        .map_err(|e| format!("create table {name}: {}", DisplayErrorContext(&e)))?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(TTL_ATTRIBUTE)
                .build()
                .map_err(built)?,
        )
        .send()
        .await
        .map_err(|e| format!("enable TTL on {name}: {}", DisplayErrorContext(&e)))?;
    Ok(())
}

/// Stores `{"client_id": .., "client_secret": ..}` as the Keap client secret; returns its id.
pub async fn create_client_secret(sdk: &SdkConfig, client_id: &str, client_secret: &str) -> String {
    let value = serde_json::json!({ "client_id": client_id, "client_secret": client_secret });
    create_secret_string(sdk, &value.to_string()).await
}

/// Stores any string (a service account key, a malformed client secret); returns its id.
pub async fn create_secret_string(sdk: &SdkConfig, value: &str) -> String {
    let name = unique_name("keapalive-test-secret");
    aws_sdk_secretsmanager::Client::new(sdk)
        .create_secret()
        .name(&name)
        .secret_string(value)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create secret {name}: {e:?}"));
    name
}

/// A fresh SQS queue (a dead-letter queue in contact-upsert tests); returns its URL.
pub async fn create_queue(sdk: &SdkConfig) -> String {
    let name = unique_name("keapalive-test-queue");
    aws_sdk_sqs::Client::new(sdk)
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create queue {name}: {e:?}"))
        .queue_url
        .expect("create_queue returns the queue URL")
}

/// A fresh FIFO queue (no content-based deduplication, as the stack makes them); its URL.
pub async fn create_fifo_queue(sdk: &SdkConfig) -> String {
    let name = format!("{}.fifo", unique_name("keapalive-fifo"));
    aws_sdk_sqs::Client::new(sdk)
        .create_queue()
        .queue_name(&name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap_or_else(|e| panic!("create queue {name}: {e:?}"))
        .queue_url
        .expect("create_queue returns the queue URL")
}

/// Every message currently in the queue, with all message attributes, removed from it.
pub async fn drain_queue(sdk: &SdkConfig, queue_url: &str) -> Vec<Message> {
    let client = aws_sdk_sqs::Client::new(sdk);
    let mut messages = Vec::new();
    loop {
        let batch = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap_or_else(|e| panic!("receive from {queue_url}: {e:?}"))
            .messages
            .unwrap_or_default();
        if batch.is_empty() {
            return messages;
        }
        for message in &batch {
            if let Some(handle) = message.receipt_handle() {
                client
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("delete from {queue_url}: {e:?}"));
            }
        }
        messages.extend(batch);
    }
}

/// Every item in the table (consistent scan, all pages).
pub async fn scan_all(sdk: &SdkConfig, table: &str) -> Vec<HashMap<String, AttributeValue>> {
    aws_sdk_dynamodb::Client::new(sdk)
        .scan()
        .table_name(table)
        .consistent_read(true)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap_or_else(|e| panic!("scan {table}: {e:?}"))
}

/// One item by partition key (consistent read).
pub async fn get_item(
    sdk: &SdkConfig,
    table: &str,
    pk: &str,
) -> Option<HashMap<String, AttributeValue>> {
    aws_sdk_dynamodb::Client::new(sdk)
        .get_item()
        .table_name(table)
        .key(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {pk} from {table}: {e:?}"))
        .item
}

/// A fresh EventBridge bus with one rule sending every keapalive lifecycle event
/// (`source` keapalive, `detail-type` `keapalive.connection.*`) to a fresh SQS queue, as
/// docs/events.md's first example does; returns (bus name, queue URL).
pub async fn create_event_bus_to_queue(sdk: &SdkConfig) -> (String, String) {
    create_event_bus_with_rule(
        sdk,
        r#"{"source": ["keapalive"], "detail-type": [{"prefix": "keapalive.connection."}]}"#,
    )
    .await
}

/// A fresh bus whose one rule (`event_pattern`) targets a fresh SQS queue; (bus name, queue URL).
pub async fn create_event_bus_with_rule(sdk: &SdkConfig, event_pattern: &str) -> (String, String) {
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let bus = unique_name("keapalive-test-bus");
    events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bus {bus}: {e:?}"));
    let queue_url = create_queue(sdk).await;
    let queue_arn = aws_sdk_sqs::Client::new(sdk)
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("queue ARN of {queue_url}: {e:?}"))
        .attributes
        .and_then(|mut a| a.remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .expect("the queue has an ARN");
    let rule = unique_name("keapalive-test-rule");
    events
        .put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(event_pattern)
        .send()
        .await
        .unwrap_or_else(|e| panic!("put rule {rule}: {e:?}"));
    events
        .put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(queue_arn)
                .build()
                .expect("a target with id and ARN"),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("put target of {rule}: {e:?}"));
    (bus, queue_url)
}

/// The EventBridge events delivered to `queue_url` so far (each message body parsed), removed
/// from the queue.
pub async fn received_events(sdk: &SdkConfig, queue_url: &str) -> Vec<serde_json::Value> {
    drain_queue(sdk, queue_url)
        .await
        .iter()
        .map(|message| {
            serde_json::from_str(message.body().unwrap_or_default())
                .unwrap_or_else(|e| panic!("an event body is JSON: {e}"))
        })
        .collect()
}
