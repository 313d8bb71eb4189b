//! SQS batches (docs/design.md, "SQS batches"): what is acknowledged, retried or dead-lettered.
//!
//! - upserted → acknowledged;
//! - `ValidationError`, `KeapRejected` (retrying cannot help) → sent to
//!   `KEAPALIVE_DEAD_LETTER_QUEUE_URL` with the body unchanged and the message attributes
//!   `error_type` and `error_message`, then acknowledged; if that send fails, or the variable is
//!   unset, reported in `batchItemFailures`;
//! - `RateLimited`, `Unavailable`, `NotAuthorized` (a human will re-authorize; the message must
//!   survive until then) → `batchItemFailures`, so SQS retries and finally redrives them.
//!
//! Records run concurrently (bounded), except that records for the same contact run in queue
//! order, one at a time.
//!
//! Nothing is acknowledged that was neither upserted nor dead-lettered: a failed record
//! without a `messageId` (which `batchItemFailures` needs) fails the whole invocation instead.

use std::collections::HashMap;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageAttributeValue;
use futures_util::StreamExt;
use tracing::{error, info, warn};

use super::error::UpsertError;
use super::request::UpsertRequest;
use super::service::UpsertService;
use crate::deadline::Deadline;

/// SQS message attributes are part of the 256 KiB message; Keap's messages are short anyway.
const MAX_ERROR_MESSAGE_CHARS: usize = 1_000;

enum Disposition {
    Done,
    Retry,
}

/// One record and what parsing its body gave.
struct Parsed {
    record: SqsMessage,
    request: Result<UpsertRequest, UpsertError>,
}

impl Parsed {
    /// Records for the same contact are upserted one after another, in queue order: two
    /// concurrent creates of one new email could otherwise make two contacts in Keap.
    fn contact_key(&self) -> Option<(String, String)> {
        let request = self.request.as_ref().ok()?;
        Some((
            request.connection_id.as_str().to_owned(),
            request.contact.email.to_lowercase(),
        ))
    }
}

impl UpsertService {
    pub async fn handle_batch(
        &self,
        event: SqsEvent,
        deadline: Deadline,
    ) -> Result<SqsBatchResponse, UpsertError> {
        let mut groups: Vec<Vec<Parsed>> = Vec::new();
        let mut group_of: HashMap<(String, String), usize> = HashMap::new();
        for record in event.records {
            let request = match record.body.as_deref() {
                None => Err(UpsertError::Validation(
                    "the SQS message has no body".to_owned(),
                )),
                Some(body) => UpsertRequest::parse(body.as_bytes()),
            };
            let parsed = Parsed { record, request };
            match parsed.contact_key() {
                Some(key) => match group_of.get(&key) {
                    Some(&index) => groups[index].push(parsed),
                    None => {
                        group_of.insert(key, groups.len());
                        groups.push(vec![parsed]);
                    }
                },
                None => groups.push(vec![parsed]),
            }
        }

        let concurrency = self.settings.batch_concurrency.max(1);
        let outcomes: Vec<Vec<(Option<String>, Disposition)>> = futures_util::stream::iter(groups)
            .map(|group| async move {
                let mut outcomes = Vec::with_capacity(group.len());
                for parsed in group {
                    let disposition = self.process_record(&parsed, deadline).await;
                    outcomes.push((parsed.record.message_id, disposition));
                }
                outcomes
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;

        let mut response = SqsBatchResponse::default();
        for (message_id, disposition) in outcomes.into_iter().flatten() {
            if let Disposition::Retry = disposition {
                let Some(message_id) = message_id else {
                    return Err(UpsertError::Unavailable(
                        "a record without messageId failed; failing the whole batch so SQS \
                         delivers it again"
                            .to_owned(),
                    ));
                };
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                response.batch_item_failures.push(failure);
            }
        }
        Ok(response)
    }

    async fn process_record(&self, parsed: &Parsed, deadline: Deadline) -> Disposition {
        let record = &parsed.record;
        let message_id = record.message_id.as_deref().unwrap_or("<none>");
        let result = match &parsed.request {
            Ok(request) => self.upsert(request, deadline).await.map(|_| ()),
            Err(invalid) => Err(invalid.clone()),
        };
        let failure = match result {
            Ok(()) => return Disposition::Done,
            Err(failure) => failure,
        };
        if !failure.is_permanent() {
            warn!(message_id, error_type = failure.error_type(), error = %failure, "record left for SQS to retry");
            return Disposition::Retry;
        }
        let Some(queue_url) = self.settings.dead_letter_queue_url.as_deref() else {
            warn!(message_id, error_type = failure.error_type(), error = %failure,
                "permanent failure and no KEAPALIVE_DEAD_LETTER_QUEUE_URL; left for SQS's redrive policy");
            return Disposition::Retry;
        };
        match self.dead_letter(queue_url, record, &failure).await {
            Ok(()) => {
                info!(message_id, error_type = failure.error_type(), error = %failure, "record dead-lettered");
                Disposition::Done
            }
            Err(reason) => {
                error!(
                    message_id,
                    error_type = failure.error_type(),
                    reason,
                    "could not dead-letter the record; left for SQS to retry"
                );
                Disposition::Retry
            }
        }
    }

    async fn dead_letter(
        &self,
        queue_url: &str,
        record: &SqsMessage,
        failure: &UpsertError,
    ) -> Result<(), String> {
        let body = record
            .body
            .as_deref()
            .filter(|b| !b.is_empty())
            .ok_or("the message has no body to forward")?;
        let error_message: String = failure
            .to_string()
            .chars()
            .take(MAX_ERROR_MESSAGE_CHARS)
            .collect();
        let mut send = self
            .sqs
            .get()
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .message_attributes("error_type", string_attribute(failure.error_type())?)
            .message_attributes("error_message", string_attribute(&error_message)?);
        if queue_url.ends_with(".fifo") {
            let group = record
                .attributes
                .get("MessageGroupId")
                .map(String::as_str)
                .unwrap_or("keapalive-dead-letter");
            send = send
                .message_group_id(group)
                .message_deduplication_id(record.message_id.as_deref().unwrap_or("none"));
        }
        send.send().await.map(|_| ()).map_err(|e| {
            use aws_sdk_sqs::error::ProvideErrorMetadata;
            e.code().unwrap_or("no response from SQS").to_owned()
        })
    }
}

fn string_attribute(value: &str) -> Result<MessageAttributeValue, String> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| e.to_string())
}
