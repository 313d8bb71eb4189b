//! The scheduled run over every connection, and the operator's one-connection run.

use futures_util::StreamExt;
use futures_util::stream;
use tracing::{error, info, warn};

use super::protocol::{RefreshOutcome, Refresher, RunGuard};
use crate::clock::now_epoch_secs;
use crate::connection_id::ConnectionId;
use crate::deadline::Deadline;
use crate::telemetry::{Metrics, Unit};
use crate::token_store::{Connection, ConnectionKind, ConnectionStatus, StoreError};

/// The circuit breaker opens when at least this many refresh tokens were rejected in one run...
const BREAKER_MIN_REJECTED: usize = 3;
// ...and they are more than half of the connections for which Keap was called.

/// Optional payload of the refresher: `{"connection_id": "...", "force": true}` refreshes one
/// connection now (operator tool).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledRequest {
    pub connection_id: Option<ConnectionId>,
    #[serde(default)]
    pub force: bool,
}

/// The run's result, as returned, logged and turned into metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefreshSummary {
    /// OAuth connections whose access token expires within the window (or forced).
    pub due: usize,
    pub refreshed: usize,
    pub skipped_locked: usize,
    pub failed_transient: usize,
    /// Connections in `needs_reauthorization` after this run (newly marked or already).
    pub needs_reauthorization: usize,
    /// Service-account-key connections: nothing to refresh.
    #[serde(rename = "static")]
    pub static_: usize,
    pub newly_needs_reauthorization: usize,
    pub not_started_deadline: usize,
    pub client_rejected: usize,
    pub circuit_breaker_open: bool,
    pub orphaned: usize,
    pub commit_failed: usize,
    /// Commits whose outcome nobody can tell (alarmed): never counted as orphaned.
    pub unknown: usize,
    /// Not started because a commit in this run failed or was still retrying (brownout).
    pub not_started_brownout: usize,
    /// Connection items that could not be read: skipped, named in the log, alarmed.
    pub malformed: usize,
    /// Lifecycle events a writer left pending (it died, or EventBridge failed) that this run
    /// put on the bus (docs/events.md).
    pub events_republished: usize,
}

#[derive(Debug)]
pub struct RefreshRun {
    pub summary: RefreshSummary,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("connection {0} does not exist")]
    NotFound(ConnectionId),
}

impl Refresher {
    /// Refreshes every due connection, `concurrency` at a time; one connection's failure never
    /// stops the others.
    pub async fn run_scheduled(
        &self,
        deadline: Deadline,
        concurrency: usize,
    ) -> Result<RefreshRun, RunError> {
        let scan = self.store().list_connections().await?;
        let connections = scan.connections;
        for (pk, reason) in &scan.malformed {
            error!(item = %pk, reason = %reason, "malformed connection item skipped: fix or remove it (keapalive-admin status lists it)");
        }
        let now = now_epoch_secs();
        let run = RunGuard::new();
        let run = &run;
        let due: Vec<&Connection> = connections
            .iter()
            .filter(|c| {
                c.kind == ConnectionKind::OAuth
                    && c.status == ConnectionStatus::Active
                    && self.is_due(c, now)
            })
            .collect();
        let outcomes: Vec<(ConnectionId, RefreshOutcome)> = stream::iter(due.iter().copied())
            .map(|connection| async move {
                let outcome = match self.refresh(connection, deadline, false, run).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        warn!(connection = %connection.id, error = %e, "refresh failed on the table");
                        RefreshOutcome::FailedTransient {
                            reason: e.to_string(),
                        }
                    }
                };
                (connection.id.clone(), outcome)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut finished = self.finish(&connections, due.len(), outcomes).await;
        finished.summary.malformed = scan.malformed.len();
        // The outbox's sweep (docs/design.md, "Lifecycle events"): after the refreshes, so it
        // never takes their time; what it cannot publish stays for the next run.
        match self.store().publish_leftovers(&connections).await {
            Ok(leftovers) => {
                if leftovers.pending > 0 || leftovers.tombstones_finished > 0 {
                    info!(
                        pending = leftovers.pending,
                        published = leftovers.published,
                        tombstones_finished = leftovers.tombstones_finished,
                        "lifecycle events left pending by their writers"
                    );
                }
                finished.summary.events_republished = leftovers.published;
            }
            Err(e) => {
                warn!(error = %e, "could not list the tombstones with pending lifecycle events; the next run tries again");
            }
        }
        finished.metrics.put(
            "MalformedConnections",
            scan.malformed.len() as f64,
            Unit::Count,
        );
        Ok(finished)
    }

    /// Refreshes one connection now (when due, or always with `force`).
    pub async fn run_one(
        &self,
        id: &ConnectionId,
        deadline: Deadline,
        force: bool,
    ) -> Result<RefreshRun, RunError> {
        let connection = self
            .store()
            .get(id)
            .await?
            .ok_or_else(|| RunError::NotFound(id.clone()))?;
        let outcome = self
            .refresh(&connection, deadline, force, &RunGuard::new())
            .await?;
        let due = usize::from(!matches!(
            outcome,
            RefreshOutcome::NotDue
                | RefreshOutcome::Static
                | RefreshOutcome::AlreadyNeedsReauthorization
                | RefreshOutcome::Gone
        ));
        Ok(self
            .finish(
                std::slice::from_ref(&connection),
                due,
                vec![(id.clone(), outcome)],
            )
            .await)
    }

    /// Decides the rejected ones (circuit breaker), then builds the summary and metrics.
    async fn finish(
        &self,
        connections: &[Connection],
        due: usize,
        outcomes: Vec<(ConnectionId, RefreshOutcome)>,
    ) -> RefreshRun {
        let mut summary = RefreshSummary {
            due,
            ..RefreshSummary::default()
        };
        let attempted = outcomes.iter().filter(|(_, o)| reached_keap(o)).count();
        let rejected = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, RefreshOutcome::Rejected(_)))
            .count();
        summary.circuit_breaker_open = rejected >= BREAKER_MIN_REJECTED && rejected * 2 > attempted;
        if summary.circuit_breaker_open {
            error!(
                rejected,
                attempted,
                "most refresh tokens were rejected in one run: that is a Keap incident or a wrong client, not that many dead grants; none is marked"
            );
        }

        let mut refreshed_now: Vec<(ConnectionId, i64)> = Vec::new();
        // Pairs Keap issued with a lifetime under five minutes (stored as stated, warned about).
        let mut short_lifetimes = 0usize;
        let mut marked_now: Vec<ConnectionId> = Vec::new();
        for (id, outcome) in outcomes {
            let settled = match outcome {
                RefreshOutcome::Rejected(pending) if summary.circuit_breaker_open => {
                    if let Err(e) = self.release(&pending, "circuit_breaker_open").await {
                        warn!(connection = %id, error = %e, "could not release the lease");
                    }
                    summary.failed_transient += 1;
                    continue;
                }
                RefreshOutcome::Rejected(pending) => match self.mark(&pending).await {
                    Ok(settled) => settled,
                    Err(e) => RefreshOutcome::FailedTransient {
                        reason: e.to_string(),
                    },
                },
                other => other,
            };
            match &settled {
                RefreshOutcome::Refreshed {
                    pair,
                    short_lifetime,
                    ..
                } => {
                    summary.refreshed += 1;
                    short_lifetimes += usize::from(*short_lifetime);
                    refreshed_now.push((id.clone(), pair.access_expires_at));
                }
                RefreshOutcome::MarkedNeedsReauthorization { .. } => {
                    summary.newly_needs_reauthorization += 1;
                    marked_now.push(id.clone());
                }
                RefreshOutcome::SkippedLocked
                | RefreshOutcome::AlreadyRefreshed
                | RefreshOutcome::RotationLimited { .. } => summary.skipped_locked += 1,
                RefreshOutcome::FailedTransient { .. }
                | RefreshOutcome::ConfigurationError { .. } => summary.failed_transient += 1,
                RefreshOutcome::ClientRejected => summary.client_rejected += 1,
                RefreshOutcome::NotStartedDeadline => summary.not_started_deadline += 1,
                RefreshOutcome::Orphaned => summary.orphaned += 1,
                RefreshOutcome::CommitFailed { .. } => summary.commit_failed += 1,
                RefreshOutcome::CommitUnknown { .. } => summary.unknown += 1,
                RefreshOutcome::NotStartedBrownout => summary.not_started_brownout += 1,
                _ => {}
            }
        }

        let now = now_epoch_secs();
        let mut earliest_expiry: Option<i64> = None;
        let mut oldest_success: Option<i64> = None;
        for connection in connections {
            let marked = marked_now.contains(&connection.id);
            if connection.kind == ConnectionKind::ServiceAccountKey {
                summary.static_ += 1;
            }
            if marked || connection.status == ConnectionStatus::NeedsReauthorization {
                summary.needs_reauthorization += 1;
                continue;
            }
            if connection.kind != ConnectionKind::OAuth {
                continue;
            }
            let refreshed = refreshed_now.iter().find(|(id, _)| *id == connection.id);
            let expires_at = refreshed
                .map(|(_, at)| *at)
                .or(connection.tokens.as_ref().map(|t| t.access_expires_at));
            let success_at = if refreshed.is_some() {
                Some(now)
            } else {
                connection.last_success_at()
            };
            earliest_expiry = min_some(earliest_expiry, expires_at);
            oldest_success = min_some(oldest_success, success_at);
        }

        let mut metrics = Metrics::new();
        metrics
            .put("Refreshed", summary.refreshed as f64, Unit::Count)
            .put(
                "RefreshFailedTransient",
                (summary.failed_transient + summary.commit_failed) as f64,
                Unit::Count,
            )
            .put(
                "NeedsReauthorization",
                summary.newly_needs_reauthorization as f64,
                Unit::Count,
            )
            .put(
                "ConnectionsNeedingReauthorization",
                summary.needs_reauthorization as f64,
                Unit::Count,
            )
            .put(
                "ClientCredentialsRejected",
                summary.client_rejected as f64,
                Unit::Count,
            )
            .put(
                "CircuitBreakerOpen",
                f64::from(u8::from(summary.circuit_breaker_open)),
                Unit::Count,
            )
            .put("CommitOutcomeUnknown", summary.unknown as f64, Unit::Count)
            .put("Orphaned", summary.orphaned as f64, Unit::Count)
            .put("ShortTokenLifetime", short_lifetimes as f64, Unit::Count);
        // With no live OAuth connection these gauges have nothing to measure; reporting
        // "far from expiry / just refreshed" keeps the absence alarms for a stopped refresher.
        metrics
            .put(
                "SecondsUntilEarliestExpiry",
                earliest_expiry.map_or(NOTHING_EXPIRES, |at| (at - now) as f64),
                Unit::Seconds,
            )
            .put(
                "SecondsSinceOldestRefresh",
                oldest_success.map_or(0.0, |at| (now - at).max(0) as f64),
                Unit::Seconds,
            );
        info!(summary = ?summary, "refresh run finished");
        RefreshRun { summary, metrics }
    }
}

/// Reported as the earliest expiry when no active OAuth connection exists: one year.
const NOTHING_EXPIRES: f64 = 31_536_000.0;

fn min_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Outcomes for which Keap's token endpoint was called.
fn reached_keap(outcome: &RefreshOutcome) -> bool {
    matches!(
        outcome,
        RefreshOutcome::Refreshed { .. }
            | RefreshOutcome::Rejected(_)
            | RefreshOutcome::FailedTransient { .. }
            | RefreshOutcome::ClientRejected
            | RefreshOutcome::Orphaned
            | RefreshOutcome::CommitFailed { .. }
            | RefreshOutcome::CommitUnknown { .. }
    )
}
