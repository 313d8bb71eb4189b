//! The lifecycle events' outbox (docs/design.md, "Lifecycle events"; docs/events.md).
//!
//! A write that changes a connection's lifecycle (a pair or key grant, a mark, a removal)
//! appends its event to the item's `pending_events` list **in the same conditional write**, so
//! the event exists exactly when the change does. After the write lands the writer puts it on
//! the bus and then removes it from the list, conditionally (the element at the index it read
//! must still carry its `event_id`). A writer that dies in between leaves the event in the
//! list; the scheduled refresher run publishes every leftover (connection items from the
//! status index, tombstones too: a tombstone with pending events has `status = removed`).
//! So every event is published at least once, and may be published more than once: consumers
//! dedupe on `event_id`, the change's write id.
//!
//! A list, not a map keyed by write id: DynamoDB cannot add a key to a map that may not exist
//! yet in one expression (`SET m.#k` fails on a missing `m`, and `if_not_exists(m)` beside it
//! overlaps), while `list_append(if_not_exists(pending_events, :nil), :event)` needs no read.
//! So a change never reads before it writes, and two changes before a publish are both kept.

use aws_sdk_dynamodb::types::AttributeValue;
use tracing::{info, warn};

use super::dynamodb::DynamoDbTokenStore;
use super::grants::tombstone_expires_at;
use super::model::{
    PENDING_EVENTS, STATUS_INDEX, TOMBSTONE_PENDING_STATUS, TOMBSTONE_PREFIX, connection_key,
    number, parse_pending, string, tombstone_key,
};
use super::{Connection, ConnectionKind, StoreError};
use crate::clock::now_epoch_secs;
use crate::connection_id::ConnectionId;
use crate::events::LifecycleEvent;

/// Clearing an event re-reads the list when another clear moved its index: at most this often.
const CLEAR_ATTEMPTS: usize = 4;

/// A removed connection's tombstone whose events are not all published (or whose TTL is not set).
#[derive(Debug, Clone)]
pub struct PendingTombstone {
    pub id: ConnectionId,
    pub events: Vec<LifecycleEvent>,
}

/// What a sweep of leftovers did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeftoverSummary {
    /// Events found pending (connection items and tombstones).
    pub pending: usize,
    /// Of them, put on the bus in this run.
    pub published: usize,
    /// Tombstones whose TTL this run set.
    pub tombstones_finished: usize,
}

impl DynamoDbTokenStore {
    /// Whether lifecycle events are recorded (`KEAPALIVE_EVENT_BUS` is set).
    pub fn records_events(&self) -> bool {
        self.events.is_some()
    }

    /// Publishes `events` of the item at `key` and removes each one EventBridge accepted from
    /// its `pending_events`. Never fails its caller: the change has landed, and what stays
    /// pending the scheduled refresher publishes (logged, with no secret).
    pub(crate) async fn deliver(&self, key: &AttributeValue, events: &[LifecycleEvent]) -> usize {
        let Some(bus) = &self.events else {
            return 0;
        };
        if events.is_empty() {
            return 0;
        }
        let accepted = match bus.publish(events).await {
            Ok(accepted) => accepted,
            Err(error) => {
                for event in events {
                    warn!(connection = %event.connection_id, event_id = %event.event_id,
                        detail_type = %event.change.detail_type(), error = %error,
                        "lifecycle event not published; it stays pending and the next scheduled refresher run publishes it");
                }
                return 0;
            }
        };
        for event in events {
            if !accepted.contains(&event.event_id) {
                warn!(connection = %event.connection_id, event_id = %event.event_id,
                    detail_type = %event.change.detail_type(),
                    "EventBridge refused a lifecycle event; it stays pending and the next scheduled refresher run publishes it");
                continue;
            }
            info!(connection = %event.connection_id, event_id = %event.event_id,
                detail_type = %event.change.detail_type(), "lifecycle event published");
            if let Err(error) = self.clear_event(key, &event.event_id).await {
                warn!(connection = %event.connection_id, event_id = %event.event_id, error = %error,
                    "a published lifecycle event could not be cleared; it may be published again (consumers dedupe on event_id)");
            }
        }
        accepted.len()
    }

    /// Removes the event `event_id` from the item's `pending_events`, conditional on the
    /// element at the index read still being it (another clear may have moved it: read again).
    async fn clear_event(&self, key: &AttributeValue, event_id: &str) -> Result<(), StoreError> {
        for _ in 0..CLEAR_ATTEMPTS {
            let output = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", key.clone())
                .consistent_read(true)
                .projection_expression("#pe")
                .expression_attribute_names("#pe", PENDING_EVENTS)
                .send()
                .await
                .map_err(StoreError::from_sdk)?;
            let pending = output.item.as_ref().map(parse_pending).unwrap_or_default();
            let Some(index) = pending.iter().position(|e| e.event_id == event_id) else {
                return Ok(());
            };
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", key.clone())
                .update_expression(format!("REMOVE #pe[{index}]"))
                .condition_expression(format!("#pe[{index}].event_id = :eid"))
                .expression_attribute_names("#pe", PENDING_EVENTS)
                .expression_attribute_values(":eid", string(event_id))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(error) => {
                    let error = StoreError::from_sdk(error);
                    if !condition_failed(&error) {
                        return Err(error);
                    }
                }
            }
        }
        Err(StoreError::Unavailable {
            reason: "the pending event moved on every attempt to clear it".to_owned(),
        })
    }

    /// Sets a tombstone's TTL and takes it out of the status index, only when no event is
    /// pending on it. `true` when it did.
    pub(crate) async fn finish_tombstone(&self, id: &ConnectionId) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", tombstone_key(id))
            .update_expression("SET expires_at = :expires REMOVE #status")
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(#pe) OR size(#pe) = :zero)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#pe", PENDING_EVENTS)
            .expression_attribute_values(":expires", number(tombstone_expires_at(now_epoch_secs())))
            .expression_attribute_values(":zero", number(0))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) => match StoreError::from_sdk(error) {
                error if condition_failed(&error) => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Tombstones still in the status index: events pending, or TTL not set yet.
    pub async fn pending_tombstones(&self) -> Result<Vec<PendingTombstone>, StoreError> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(STATUS_INDEX)
            .key_condition_expression("#status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", string(TOMBSTONE_PENDING_STATUS))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page.map_err(StoreError::from_sdk)?.items() {
                let Some(AttributeValue::S(pk)) = item.get("pk") else {
                    continue;
                };
                let Some(id) = pk
                    .strip_prefix(TOMBSTONE_PREFIX)
                    .and_then(|raw| ConnectionId::parse(raw).ok())
                else {
                    warn!(item = %pk, "skipping an unreadable tombstone in the status index");
                    continue;
                };
                let generation = match item.get("generation") {
                    Some(AttributeValue::N(n)) => n.parse().unwrap_or(0),
                    _ => 0,
                };
                let events = parse_pending(item)
                    .iter()
                    .map(|recorded| recorded.event(&id, ConnectionKind::OAuth, generation))
                    .collect();
                found.push(PendingTombstone { id, events });
            }
        }
        Ok(found)
    }

    /// The scheduled run's sweep: publishes every event left pending on `connections` (as
    /// listed) and on tombstones, clears what was published, and finishes each tombstone with
    /// nothing pending. One item's failure never stops the others.
    pub async fn publish_leftovers(
        &self,
        connections: &[Connection],
    ) -> Result<LeftoverSummary, StoreError> {
        let mut summary = LeftoverSummary::default();
        for connection in connections {
            if connection.pending_events.is_empty() || self.events.is_none() {
                continue;
            }
            summary.pending += connection.pending_events.len();
            summary.published += self
                .deliver(&connection_key(&connection.id), &connection.pending_events)
                .await;
        }
        for tombstone in self.pending_tombstones().await? {
            summary.pending += tombstone.events.len();
            if self.events.is_some() {
                summary.published += self
                    .deliver(&tombstone_key(&tombstone.id), &tombstone.events)
                    .await;
            }
            match self.finish_tombstone(&tombstone.id).await {
                Ok(true) => summary.tombstones_finished += 1,
                Ok(false) => {}
                Err(error) => {
                    warn!(connection = %tombstone.id, error = %error, "could not finish a tombstone; the next run tries again")
                }
            }
        }
        Ok(summary)
    }
}

fn condition_failed(error: &StoreError) -> bool {
    matches!(error, StoreError::Refused { code } if code == "ConditionalCheckFailedException")
}
