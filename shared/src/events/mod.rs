//! Connection lifecycle events on the `keapalive-<stage>` EventBridge bus (docs/events.md).
//!
//! This module knows the events' shape and how to put them on the bus; when they are recorded
//! and cleared (the outbox on the item, at least once) is the store's business
//! (`token_store::outbox`, docs/design.md, "Lifecycle events"). An event names a connection
//! and what happened to it, never a token, a key, a code or an email: the types below have no
//! field that could hold one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde::Serialize;

/// `Source` of every lifecycle event.
pub const EVENT_SOURCE: &str = "keapalive";
/// Every lifecycle event's `DetailType` starts with this; the change follows.
pub const DETAIL_TYPE_PREFIX: &str = "keapalive.connection.";
/// EventBridge takes at most this many entries in one `PutEvents`.
const MAX_ENTRIES_PER_PUT: usize = 10;

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A first OAuth pair, or a re-authorization (oauth-callback).
    Authorized,
    /// A service account key was registered (operator).
    KeyRegistered,
    /// The grant is dead and a human must re-authorize it (with the reason).
    NeedsReauthorization,
    /// The operator removed the connection.
    Removed,
}

impl Change {
    pub const ALL: [Change; 4] = [
        Change::Authorized,
        Change::KeyRegistered,
        Change::NeedsReauthorization,
        Change::Removed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorized => "authorized",
            Self::KeyRegistered => "key_registered",
            Self::NeedsReauthorization => "needs_reauthorization",
            Self::Removed => "removed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|change| change.as_str() == text)
    }

    /// `keapalive.connection.<change>`.
    pub fn detail_type(self) -> String {
        format!("{DETAIL_TYPE_PREFIX}{}", self.as_str())
    }
}

/// One lifecycle event: the `Detail` of its EventBridge entry, and its change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LifecycleEvent {
    #[serde(skip)]
    pub change: Change,
    pub connection_id: String,
    /// `oauth` or `service_account_key`.
    pub kind: String,
    /// The connection's generation the change made or found (docs/events.md).
    pub generation: u64,
    /// The write id of the change: the same for every delivery of this event (dedupe on it).
    pub event_id: String,
    /// When the change was written, epoch seconds.
    pub occurred_at: i64,
    /// Why (`needs_reauthorization` only): `refresh_token_rejected`, `lost_response`,
    /// `key_rejected`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LifecycleEvent {
    /// The `Detail` JSON.
    pub fn detail(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A `PutEvents` that failed as a whole: nothing is known to be published.
#[derive(Debug, thiserror::Error)]
#[error("EventBridge PutEvents failed: {reason}")]
pub struct PublishError {
    pub reason: String,
}

/// The bus every lifecycle event of this stage goes to (`KEAPALIVE_EVENT_BUS`).
#[derive(Clone, Debug)]
pub struct EventBus {
    client: Client,
    name: String,
}

impl EventBus {
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Puts one request of `(detail_type, detail)` entries (at most ten, within EventBridge's
    /// request limit), source [`EVENT_SOURCE`]: `Ok` only when EventBridge accepted every entry
    /// (`FailedEntryCount` 0). For a sender that must not say "done" before that: keap-hooks
    /// answers Keap 200 only then.
    pub async fn put_every(&self, entries: &[(&str, &str)]) -> Result<(), PublishError> {
        let now = SystemTime::now();
        let timed: Vec<(&str, &str, SystemTime)> = entries
            .iter()
            .map(|(kind, detail)| (*kind, *detail, now))
            .collect();
        let refused = self
            .put(&timed)
            .await
            .map_err(|reason| PublishError { reason })?
            .iter()
            .filter(|result| result.is_some())
            .count();
        if refused == 0 {
            Ok(())
        } else {
            Err(PublishError {
                reason: format!("{refused} of {} entries refused", entries.len()),
            })
        }
    }

    /// Puts `events` on the bus (ten per request) and returns the `event_id`s EventBridge
    /// accepted. An entry EventBridge refused (`FailedEntryCount` > 0) is not returned and stays
    /// pending; a request that failed as a whole fails the call only if nothing was accepted.
    pub async fn publish(&self, events: &[LifecycleEvent]) -> Result<Vec<String>, PublishError> {
        let mut accepted = Vec::new();
        let mut last_error = None;
        for chunk in events.chunks(MAX_ENTRIES_PER_PUT) {
            let details: Vec<(String, String)> = chunk
                .iter()
                .map(|event| (event.change.detail_type(), event.detail()))
                .collect();
            let timed: Vec<(&str, &str, SystemTime)> = chunk
                .iter()
                .zip(&details)
                .map(|(event, (kind, detail))| {
                    let at = UNIX_EPOCH
                        + Duration::from_secs(u64::try_from(event.occurred_at).unwrap_or(0));
                    (kind.as_str(), detail.as_str(), at)
                })
                .collect();
            match self.put(&timed).await {
                Ok(results) => {
                    for (event, result) in chunk.iter().zip(results) {
                        match result {
                            None => accepted.push(event.event_id.clone()),
                            Some(code) => last_error = Some(format!("entry refused: {code}")),
                        }
                    }
                }
                Err(reason) => last_error = Some(reason),
            }
        }
        match last_error {
            Some(reason) if accepted.is_empty() => Err(PublishError { reason }),
            _ => Ok(accepted),
        }
    }

    /// One `PutEvents` of `(detail_type, detail, time)` entries: per entry, `None` when
    /// EventBridge accepted it (a result with an event id and no error code; a missing result is
    /// not proof of anything), else the refusal's code; `Err` when the request failed as a whole.
    async fn put(
        &self,
        entries: &[(&str, &str, SystemTime)],
    ) -> Result<Vec<Option<String>>, String> {
        let request = entries
            .iter()
            .map(|(detail_type, detail, at)| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.name)
                    .source(EVENT_SOURCE)
                    .detail_type(*detail_type)
                    .detail(*detail)
                    .time(DateTime::from(*at))
                    .build()
            })
            .collect();
        let output = self
            .client
            .put_events()
            .set_entries(Some(request))
            .send()
            .await
            .map_err(|error| {
                aws_sdk_eventbridge::error::DisplayErrorContext(&error)
                    .to_string()
                    .chars()
                    .take(300)
                    .collect::<String>()
            })?;
        let results = output.entries();
        Ok((0..entries.len())
            .map(|i| match results.get(i) {
                Some(result) if result.error_code().is_none() && result.event_id().is_some() => {
                    None
                }
                Some(result) => Some(result.error_code().unwrap_or("no event id").to_owned()),
                None => Some("no result".to_owned()),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_types_are_the_documented_names() {
        let names: Vec<String> = Change::ALL.iter().map(|c| c.detail_type()).collect();
        assert_eq!(
            names,
            [
                "keapalive.connection.authorized",
                "keapalive.connection.key_registered",
                "keapalive.connection.needs_reauthorization",
                "keapalive.connection.removed",
            ]
        );
        for change in Change::ALL {
            assert_eq!(Change::parse(change.as_str()), Some(change));
        }
    }

    #[test]
    fn detail_has_the_documented_fields_and_no_other() {
        let event = LifecycleEvent {
            change: Change::NeedsReauthorization,
            connection_id: "default".into(),
            kind: "oauth".into(),
            generation: 3,
            event_id: "abc".into(),
            occurred_at: 1_700_000_000,
            reason: Some("refresh_token_rejected".into()),
        };
        let detail: serde_json::Value = serde_json::from_str(&event.detail()).unwrap();
        assert_eq!(
            detail,
            serde_json::json!({"connection_id": "default", "kind": "oauth", "generation": 3,
                "event_id": "abc", "occurred_at": 1_700_000_000, "reason": "refresh_token_rejected"})
        );
        let no_reason = LifecycleEvent {
            reason: None,
            ..event
        };
        assert!(!no_reason.detail().contains("reason"));
    }
}
