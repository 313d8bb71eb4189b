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
//! Records run concurrently (bounded), except that records for the same contact (connection and
//! email, case-insensitive) or the same SQS message group run in queue order, one at a time; once
//! one of them is left for SQS to retry, the later ones are not run and are reported as failures
//! too (Lambda's rule for FIFO queues), so a redelivered older record never overwrites a newer one.
//!
//! Nothing is acknowledged that was neither upserted nor dead-lettered: a failed record
//! without a `messageId` (which `batchItemFailures` needs) fails the whole invocation instead.

use std::collections::HashMap;
use std::fmt::Write as _;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageAttributeValue;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use super::error::UpsertError;
use super::request::UpsertRequest;
use super::service::UpsertService;
use crate::deadline::Deadline;

/// SQS message attributes are part of the 256 KiB message; Keap's messages are short anyway.
const MAX_ERROR_MESSAGE_CHARS: usize = 1_000;

/// The SQS system attribute of a FIFO queue's record.
const MESSAGE_GROUP_ID: &str = "MessageGroupId";

enum Disposition {
    Done,
    Retry,
}

/// The FIFO message group of a contact: hex SHA-256 of `connection_id + "\n" + lower-cased
/// email` (docs/calling.md, "Through SQS"). Hashed because SQS caps a group id at 128
/// characters and an email must not sit in SQS metadata.
pub(crate) fn contact_message_group(connection_id: &str, email: &str) -> String {
    let digest = Sha256::digest(format!("{connection_id}\n{}", email.to_lowercase()));
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
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

    /// The keys that order this record after earlier ones: its contact, and its FIFO message
    /// group (a caller's group may be coarser than one contact).
    fn order_keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(2);
        if let Some((connection, email)) = self.contact_key() {
            keys.push(format!("contact\u{1f}{connection}\u{1f}{email}"));
        }
        if let Some(group) = self.record.attributes.get(MESSAGE_GROUP_ID) {
            keys.push(format!("group\u{1f}{group}"));
        }
        keys
    }
}

/// Splits a batch into groups that must run in queue order: records sharing a contact or a
/// message group, transitively. Each group keeps queue order.
fn ordered_groups(records: Vec<Parsed>) -> Vec<Vec<Parsed>> {
    // Union-find over record indexes; a batch has at most 10,000 records.
    let mut parent: Vec<usize> = (0..records.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_with: HashMap<String, usize> = HashMap::new();
    for (index, parsed) in records.iter().enumerate() {
        for key in parsed.order_keys() {
            match first_with.get(&key) {
                Some(&other) => {
                    let (a, b) = (root(&mut parent, index), root(&mut parent, other));
                    parent[a.max(b)] = a.min(b);
                }
                None => {
                    first_with.insert(key, index);
                }
            }
        }
    }
    let mut group_of_root: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<Vec<Parsed>> = Vec::new();
    for (index, parsed) in records.into_iter().enumerate() {
        let r = root(&mut parent, index);
        let group = *group_of_root.entry(r).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(parsed);
    }
    groups
}

impl UpsertService {
    pub async fn handle_batch(
        &self,
        event: SqsEvent,
        deadline: Deadline,
    ) -> Result<SqsBatchResponse, UpsertError> {
        let records: Vec<Parsed> = event
            .records
            .into_iter()
            .map(|record| {
                let request = match record.body.as_deref() {
                    None => Err(UpsertError::Validation(
                        "the SQS message has no body".to_owned(),
                    )),
                    Some(body) => UpsertRequest::parse(body.as_bytes()),
                };
                Parsed { record, request }
            })
            .collect();
        let groups = ordered_groups(records);

        let concurrency = self.settings.batch_concurrency.max(1);
        let outcomes: Vec<Vec<(Option<String>, Disposition)>> = futures_util::stream::iter(groups)
            .map(|group| async move {
                let mut outcomes = Vec::with_capacity(group.len());
                let mut held_back = false;
                for parsed in group {
                    let disposition = if held_back {
                        // An earlier record of this contact or group goes back to SQS: this
                        // one must not overtake it.
                        info!(
                            message_id = parsed.record.message_id.as_deref().unwrap_or("<none>"),
                            "record held back behind a failed earlier record of its contact; left for SQS to retry"
                        );
                        Disposition::Retry
                    } else {
                        self.process_record(&parsed, deadline).await
                    };
                    held_back |= matches!(disposition, Disposition::Retry);
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
        match self.dead_letter(queue_url, parsed, &failure).await {
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
        parsed: &Parsed,
        failure: &UpsertError,
    ) -> Result<(), String> {
        let record = &parsed.record;
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
            // The record's own group (a FIFO source queue's), else the contact's, so the dead
            // letters of one contact stay in order when redriven.
            let group = match record.attributes.get(MESSAGE_GROUP_ID) {
                Some(group) => group.clone(),
                None => match parsed.contact_key() {
                    Some((connection, email)) => contact_message_group(&connection, &email),
                    None => "keapalive-dead-letter".to_owned(),
                },
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_group_is_the_documented_hash() {
        // printf 'default\nada@example.com' | sha256sum
        assert_eq!(
            contact_message_group("default", "Ada@Example.com"),
            "c37cf89631c4bce21c17dbcc30063d67a75a264b33f037e5e6d9e7aafc7db33e"
        );
    }
}
