//! One contact-upsert invocation: a direct request, or an SQS batch of requests.

use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::UpsertError;
use super::request::UpsertRequest;
use super::service::UpsertService;
use crate::deadline::Deadline;

/// The `Function` dimension of contact-upsert's Keap usage metrics (its binary name).
const FUNCTION_NAME: &str = "contact-upsert";

/// What a direct answer keeps of the invocation: time for the runtime to post it.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "Records")]
    records: Option<Vec<ProbeRecord>>,
}

#[derive(Deserialize)]
struct ProbeRecord {
    #[serde(rename = "eventSource")]
    event_source: Option<String>,
}

/// An SQS event is recognised by `Records[0].eventSource == "aws:sqs"`; anything else is a
/// direct request (and validated as one).
pub(crate) fn is_sqs_event(payload: &[u8]) -> bool {
    serde_json::from_slice::<Probe>(payload)
        .ok()
        .and_then(|probe| probe.records)
        .and_then(|records| records.into_iter().next())
        .and_then(|record| record.event_source)
        .is_some_and(|source| source == "aws:sqs")
}

impl UpsertService {
    /// One invocation of the function: its deadline (robust to local emulators), then
    /// [`handle`](Self::handle).
    pub async fn handle_event(
        &self,
        event: LambdaEvent<Box<RawValue>>,
    ) -> Result<Value, UpsertError> {
        let deadline = self.deadlines.deadline(event.context.deadline);
        // Boxed: the handler's future is deeply nested (batch → session → refresh protocol),
        // and inlined into the binary's `main` it overflows the compiler's layout query depth.
        Box::pin(self.handle(event.payload.get().as_bytes(), deadline)).await
    }

    /// The function's handler: the raw payload in, the JSON answer out.
    pub async fn handle(&self, payload: &[u8], deadline: Deadline) -> Result<Value, UpsertError> {
        let answer = self.answer(payload, deadline).await;
        // Once per invocation, whatever the outcome: Keap requests, 429s, throttle waits.
        self.keap.flush_usage(FUNCTION_NAME);
        answer
    }

    async fn answer(&self, payload: &[u8], deadline: Deadline) -> Result<Value, UpsertError> {
        let answer = if is_sqs_event(payload) {
            let event: SqsEvent = serde_json::from_slice(payload).map_err(|e| {
                UpsertError::Validation(format!(
                    "the SQS event is malformed ({})",
                    e.classify_name()
                ))
            })?;
            serde_json::to_value(self.handle_batch(event, deadline).await?)
        } else {
            let request = UpsertRequest::parse(payload)?;
            // Every step checks the time before it starts, but a store or Keap call can run
            // past the deadline on its own timeouts; Lambda would then end the invocation with
            // no answer. Cut here instead, with one.
            let upserted = deadline
                .cut(ANSWER_MARGIN, self.upsert(&request, deadline))
                .await
                .ok_or_else(|| {
                    UpsertError::Unavailable(
                        "the invocation's deadline came before Keap or the token store answered; \
                         the contact may or may not have been written: retry (an upsert by \
                         email is idempotent)"
                            .to_owned(),
                    )
                })??;
            serde_json::to_value(upserted)
        };
        answer.map_err(|e| UpsertError::Unavailable(format!("could not encode the answer: {e}")))
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Data => "a field has the wrong type",
            _ => "not valid JSON",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_sqs_events() {
        assert!(is_sqs_event(
            br#"{"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}"#
        ));
        assert!(!is_sqs_event(
            br#"{"Records": [{"eventSource": "aws:sns"}]}"#
        ));
        assert!(!is_sqs_event(br#"{"contact": {"email": "a@b.co"}}"#));
        assert!(!is_sqs_event(b"not json"));
        assert!(!is_sqs_event(br#"{"Records": []}"#));
    }
}
