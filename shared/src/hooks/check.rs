//! The scheduled check that keeps subscriptions alive (docs/events.md, "Keap changes"): the
//! token-refresher runs it — and only it, no refresh — for `{"check_hooks": true}`.
//!
//! Keap marks a hook Inactive after four failed deliveries (or a 410) and then drops changes
//! silently. For each connection with subscriptions, the check lists Keap's hooks and
//! re-verifies (`POST /v1/hooks/{key}/verify`) every one keapalive owns (a hook item holds its
//! Keap key, for its event, at its token's URL) that is Inactive or Unverified. A hook found Inactive also gets a
//! `keapalive.hooks.gap` event — changes were lost meanwhile; consumers may reconcile — and
//! `inactive_since` (when keapalive first saw it so: Keap gives no time) stays on the item until
//! `PutEvents` accepted that event, so a failed publish is retried by the next check. Last, it
//! forgets subscriptions whose connection is gone (one written a moment before a removal that
//! the index did not show it): their deliveries get 410 from then on.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::subscriptions::keap_key;
use super::via_proxy::{KeapViaProxy, PROXY_READ_TIMEOUT};
use crate::clock::now_epoch_secs;
use crate::connection_id::ConnectionId;
use crate::deadline::Deadline;
use crate::events::EventBus;
use crate::telemetry::{Metrics, Unit};
use crate::token_store::{
    Connection, ConnectionStatus, DynamoDbTokenStore, HookSubscription, StoreError,
};

/// `DetailType` of the gap event.
pub const GAP_DETAIL_TYPE: &str = "keapalive.hooks.gap";
/// A connection's check is not started with less time left (two proxy calls and a publish).
const TIME_PER_CONNECTION: Duration = Duration::from_secs(70);
/// The orphan sweep is not started with less time left (an index scan, a read and a delete
/// per orphan).
const TIME_FOR_ORPHANS: Duration = Duration::from_secs(10);
/// A re-verify is not started with less time left (one proxy call, a publish, two writes).
const TIME_PER_REVERIFY: Duration = Duration::from_secs(PROXY_READ_TIMEOUT.as_secs() + 5);

#[derive(Debug, Default, Serialize)]
pub struct HookCheckSummary {
    pub connections_checked: usize,
    pub hooks_owned: usize,
    pub reverified: usize,
    /// Still Inactive after the re-verify (the alarm's metric).
    pub still_inactive: usize,
    pub gap_events_published: usize,
    /// Connections whose check failed (Keap or the proxy unavailable): the next run retries.
    pub failed: usize,
    /// Connections not checked for lack of time.
    pub not_started_deadline: usize,
    /// Hooks of checked connections left for the next run for lack of time.
    pub reverify_not_started_deadline: usize,
    /// Subscriptions with a Keap key that Keap does not list (for their event, at their URL)
    /// at the connection's account: no feed comes to them (metric `HooksNotFoundAtKeap`).
    pub not_found_at_keap: usize,
    /// Subscriptions whose connection is gone (written a moment before its removal, missed by
    /// the index): forgotten, so their deliveries get 410 and Keap drops the hook.
    pub orphans_forgotten: usize,
}

/// What the check needs: the subscriptions, Keap through keap-proxy, the bus for gap events.
#[derive(Clone)]
pub struct HookCheck {
    store: DynamoDbTokenStore,
    keap: KeapViaProxy,
    bus: Option<EventBus>,
}

impl HookCheck {
    pub fn new(store: DynamoDbTokenStore, keap: KeapViaProxy, bus: Option<EventBus>) -> Self {
        Self { store, keap, bus }
    }

    pub async fn run(&self, deadline: Deadline) -> Result<(HookCheckSummary, Metrics), StoreError> {
        let mut summary = HookCheckSummary::default();
        let listing = self.store.list_connections().await?;
        for connection in &listing.connections {
            if connection.status != ConnectionStatus::Active {
                continue;
            }
            let hooks = self.store.hooks_of(&connection.id).await?;
            if hooks.iter().all(|hook| hook.keap_hook_key.is_none()) {
                continue;
            }
            if deadline.remaining() < TIME_PER_CONNECTION {
                summary.not_started_deadline += 1;
                continue;
            }
            summary.connections_checked += 1;
            if let Err(reason) = self
                .check(&connection.id, &hooks, deadline, &mut summary)
                .await
            {
                warn!(connection = %connection.id, reason = %reason, "hook check failed; the next run retries");
                summary.failed += 1;
            }
        }
        if deadline.remaining() >= TIME_FOR_ORPHANS {
            match self.forget_orphans(&listing.connections).await {
                Ok(forgotten) => summary.orphans_forgotten = forgotten,
                Err(e) => {
                    warn!(error = %e, "could not look for subscriptions of removed connections; the next run retries")
                }
            }
        }
        let mut metrics = Metrics::new();
        metrics
            .put("HooksReverified", summary.reverified as f64, Unit::Count)
            .put("HooksInactive", summary.still_inactive as f64, Unit::Count)
            .put(
                "HooksNotFoundAtKeap",
                summary.not_found_at_keap as f64,
                Unit::Count,
            );
        info!(?summary, "hook check done");
        Ok((summary, metrics))
    }

    async fn check(
        &self,
        id: &ConnectionId,
        hooks: &[HookSubscription],
        deadline: Deadline,
        summary: &mut HookCheckSummary,
    ) -> Result<(), String> {
        let answer = self
            .keap
            .request(id, "GET", "/v1/hooks", None)
            .await
            .map_err(|e| e.to_string())?;
        if !answer.is_success() {
            return Err(format!("Keap answered {} to GET /v1/hooks", answer.status));
        }
        let listed = answer.body.as_array().cloned().unwrap_or_default();
        for hook in hooks {
            let Some(key) = &hook.keap_hook_key else {
                continue;
            };
            // Ours: the key this item holds, for its event, at the URL of its token — a key alone
            // could name another integration's hook once the connection moved to another account.
            let Some(at_keap) = listed.iter().find(|h| {
                keap_key(h).as_deref() == Some(key)
                    && h.get("eventKey").and_then(Value::as_str) == Some(hook.event_key.as_str())
                    && h.get("hookUrl")
                        .and_then(Value::as_str)
                        .is_some_and(|url| hook.token_hash.is_of_url(url))
            }) else {
                // Deleted at Keap, or created at the account the connection left: Keap sends this
                // account's changes to no subscription of it. `subscribe_hooks` replaces it.
                summary.not_found_at_keap += 1;
                warn!(connection = %id, event_key = %hook.event_key, hook = %hook.token_hash.masked(), "Keap lists no hook for this subscription at the connection's account; send subscribe_hooks again");
                continue;
            };
            summary.hooks_owned += 1;
            let status = at_keap.get("status").and_then(Value::as_str).unwrap_or("");
            let mut inactive_since = hook.inactive_since;
            if status == "Inactive" {
                inactive_since = self
                    .store
                    .note_hook_inactive(&hook.token_hash, now_epoch_secs())
                    .await
                    .map_err(|e| e.to_string())?
                    .or(inactive_since);
            }
            let mut active = status == "Verified";
            if status == "Inactive" || status == "Unverified" {
                if deadline.remaining() < TIME_PER_REVERIFY {
                    summary.reverify_not_started_deadline += 1;
                    continue;
                }
                let path = format!("/v1/hooks/{key}/verify");
                let verified = self
                    .keap
                    .request(id, "POST", &path, None)
                    .await
                    .map_err(|e| e.to_string())?;
                summary.reverified += 1;
                let now_status = verified.body.get("status").and_then(Value::as_str);
                active = verified.is_success() && now_status == Some("Verified");
                if active {
                    info!(connection = %id, event_key = %hook.event_key, "hook re-verified");
                } else if !self.still_subscribed(hook).await? {
                    // Unsubscribed meanwhile: Keap's delete raced the re-verify, nothing is lost.
                    continue;
                } else {
                    // Unverified gets no deliveries either: as lost as Inactive.
                    summary.still_inactive += 1;
                    warn!(connection = %id, event_key = %hook.event_key, status = verified.status, "a hook is still not active after its re-verify");
                }
            }
            // Published once the hook is back: the gap's start stays the first sighting for as
            // long as it lasts, and a consumer reconciles once, over the whole gap.
            if let (Some(since), true) = (inactive_since, active) {
                self.publish_gap(id, hook, since, summary).await;
            }
        }
        Ok(())
    }

    /// Deletes every subscription whose connection does not exist (a consistent read says so;
    /// `listed` only spares the reads). Keap cannot be asked to delete the hook: the
    /// connection's credential is gone with it.
    async fn forget_orphans(&self, listed: &[Connection]) -> Result<usize, StoreError> {
        // Only "exists" is remembered: a connection removed and created again while the sweep
        // runs must not lose its new subscriptions to an earlier "absent".
        let listed: HashSet<&str> = listed.iter().map(|c| c.id.as_str()).collect();
        let mut found: HashSet<String> = HashSet::new();
        let mut forgotten = 0;
        for (hash, connection) in self.store.every_hook_owner().await? {
            if listed.contains(connection.as_str()) || found.contains(&connection) {
                continue;
            }
            let Ok(id) = ConnectionId::parse(&connection) else {
                warn!(hook = %hash.masked(), "a subscription names no valid connection id; left alone");
                continue;
            };
            if self.store.read_authorization(&id).await?.is_some() {
                found.insert(connection);
                continue;
            }
            self.store.delete_hook(&hash).await?;
            forgotten += 1;
            warn!(connection = %connection, hook = %hash.masked(), "forgot a subscription of a removed connection; Keap drops its hook after a 410");
        }
        Ok(forgotten)
    }

    /// A consistent re-read: `unsubscribe_hooks` may have forgotten the hook since the listing.
    async fn still_subscribed(&self, hook: &HookSubscription) -> Result<bool, String> {
        self.store
            .hook(&hook.token_hash)
            .await
            .map(|found| found.is_some())
            .map_err(|e| e.to_string())
    }

    /// The gap event, then (accepted) the item's `inactive_since` cleared; a failure leaves it
    /// for the next check.
    async fn publish_gap(
        &self,
        id: &ConnectionId,
        hook: &HookSubscription,
        since: i64,
        summary: &mut HookCheckSummary,
    ) {
        let Some(bus) = &self.bus else {
            return;
        };
        let detail = json!({
            "connection_id": id.as_str(),
            "event_key": hook.event_key,
            "inactive_since": since,
        })
        .to_string();
        match bus.put_every(&[(GAP_DETAIL_TYPE, detail.as_str())]).await {
            Ok(()) => {
                summary.gap_events_published += 1;
                if let Err(e) = self
                    .store
                    .clear_hook_inactive(&hook.token_hash, since)
                    .await
                {
                    warn!(connection = %id, error = %e, "the gap event was published but not cleared; it may be published again");
                }
            }
            Err(e) => {
                warn!(connection = %id, error = %e, "the gap event was not published; the next check retries")
            }
        }
    }
}
