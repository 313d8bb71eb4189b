//! What the token-refresher function does with one invocation: decide between the scheduled
//! run and the operator's one-connection run, and report errors with a branchable `errorType`.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;

use super::Refresher;
use super::scheduled::{RefreshRun, RunError, ScheduledRequest};
use crate::config::Config;
use crate::deadline::{Deadline, DeadlinePolicy};
use crate::error_type::ErrorType;
use crate::hooks::HookCheck;
use crate::telemetry::MetricSink;

/// The `Function` dimension of the refresher's Keap usage metrics (its binary name).
const FUNCTION_NAME: &str = "token-refresher";

#[derive(Debug)]
pub enum RefresherEvent {
    /// EventBridge schedule (or an empty payload): every due connection.
    Scheduled,
    /// Operator: `{"connection_id": "...", "force": true}`.
    One(ScheduledRequest),
    /// The hooks schedule: `{"check_hooks": true}` — the subscriptions check, no refresh.
    CheckHooks,
}

#[derive(Debug, thiserror::Error)]
pub enum RefresherError {
    #[error(
        "invalid refresher payload: {0}; expected an EventBridge scheduled event or {{\"connection_id\": \"...\", \"force\": true}}"
    )]
    InvalidEvent(String),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<RefresherError> for Diagnostic {
    fn from(error: RefresherError) -> Self {
        let kind = match &error {
            RefresherError::InvalidEvent(_) => ErrorType::Validation,
            RefresherError::Run(RunError::NotFound(_)) => ErrorType::NotAuthorized,
            RefresherError::Run(RunError::Store(_)) => ErrorType::Unavailable,
        };
        kind.diagnostic(error.to_string())
    }
}

impl RefresherEvent {
    pub fn parse(payload: Value) -> Result<Self, RefresherError> {
        let is_object_with = |key: &str| payload.get(key).is_some();
        if payload.is_null() || payload.as_object().is_some_and(|o| o.is_empty()) {
            return Ok(Self::Scheduled);
        }
        if let Some(check) = payload.get("check_hooks") {
            return match (check.as_bool(), payload.as_object().map(|o| o.len())) {
                (Some(true), Some(1)) => Ok(Self::CheckHooks),
                _ => Err(RefresherError::InvalidEvent(
                    "check_hooks must be true and alone in the event".to_owned(),
                )),
            };
        }
        if is_object_with("detail-type") {
            // Parsed only to reject look-alikes early; its contents do not steer the run.
            let _event: EventBridgeEvent<Value> = serde_json::from_value(payload)
                .map_err(|e| RefresherError::InvalidEvent(e.to_string()))?;
            return Ok(Self::Scheduled);
        }
        let request: ScheduledRequest = serde_json::from_value(payload)
            .map_err(|e| RefresherError::InvalidEvent(e.to_string()))?;
        Ok(match request.connection_id {
            Some(_) => Self::One(request),
            None => Self::Scheduled,
        })
    }
}

impl Refresher {
    pub async fn handle(
        &self,
        event: RefresherEvent,
        deadline: Deadline,
        concurrency: usize,
    ) -> Result<RefreshRun, RefresherError> {
        // Boxed: the run's future nests the SDK's paginator and retry futures deep enough that
        // rustc's layout query overflows its depth limit when it is inlined into `main`'s
        // future. One allocation per invocation.
        Ok(match event {
            RefresherEvent::Scheduled => {
                Box::pin(self.run_scheduled(deadline, concurrency)).await?
            }
            RefresherEvent::One(ScheduledRequest {
                connection_id: Some(id),
                force,
            }) => Box::pin(self.run_one(&id, deadline, force)).await?,
            RefresherEvent::One(_) | RefresherEvent::CheckHooks => {
                Box::pin(self.run_scheduled(deadline, concurrency)).await?
            }
        })
    }
}

/// The token-refresher function: built once per container, then one [`handle`](Self::handle)
/// per invocation (deadline, parsing, the run, its metrics).
pub struct RefresherFunction {
    refresher: Refresher,
    deadlines: DeadlinePolicy,
    concurrency: usize,
    /// Metric dimension.
    stage: String,
    /// `{"check_hooks": true}` (`KEAPALIVE_PROXY_FUNCTION` set).
    hook_check: Option<HookCheck>,
}

impl RefresherFunction {
    pub fn new(refresher: Refresher, config: &Config) -> Self {
        Self {
            refresher,
            deadlines: DeadlinePolicy::from_config(config),
            concurrency: config.refresh_concurrency,
            stage: config.stage.clone(),
            hook_check: None,
        }
    }

    /// The same function, able to run the subscriptions check.
    pub fn with_hook_check(mut self, check: HookCheck) -> Self {
        self.hook_check = Some(check);
        self
    }

    /// One invocation: the run's summary (a refresh), or the check's (`check_hooks`).
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
        let deadline = self.deadlines.deadline(event.context.deadline);
        let request = RefresherEvent::parse(event.payload)?;
        if matches!(request, RefresherEvent::CheckHooks) {
            let check = self.hook_check.as_ref().ok_or_else(|| {
                ErrorType::Configuration.diagnostic(
                    "check_hooks needs KEAPALIVE_PROXY_FUNCTION (the stack sets it)".to_owned(),
                )
            })?;
            let (summary, metrics) = check
                .run(deadline)
                .await
                .map_err(|e| ErrorType::Unavailable.diagnostic(e.to_string()))?;
            metrics.emit(&self.stage);
            return Ok(serde_json::to_value(summary).unwrap_or_default());
        }
        let run = self
            .refresher
            .handle(request, deadline, self.concurrency)
            .await;
        // Whatever the outcome: the token requests it made spent the client id's quota.
        self.refresher
            .keap_usage()
            .flush(&MetricSink::stdout(), &self.stage, FUNCTION_NAME);
        let run = run?;
        run.metrics.emit(&self.stage);
        Ok(serde_json::to_value(run.summary).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recognises_schedules_operators_and_garbage() {
        let scheduled = json!({
            "version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-23T10:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/r"], "detail": {}
        });
        assert!(matches!(
            RefresherEvent::parse(scheduled),
            Ok(RefresherEvent::Scheduled)
        ));
        assert!(matches!(
            RefresherEvent::parse(json!({})),
            Ok(RefresherEvent::Scheduled)
        ));
        assert!(matches!(
            RefresherEvent::parse(json!({"connection_id": "default", "force": true})),
            Ok(RefresherEvent::One(ScheduledRequest { force: true, .. }))
        ));
        assert!(matches!(
            RefresherEvent::parse(json!({"check_hooks": true})),
            Ok(RefresherEvent::CheckHooks)
        ));
        // The hooks schedule's input never runs a refresh, and a look-alike is refused.
        for bad in [
            json!({"check_hooks": false}),
            json!({"check_hooks": true, "connection_id": "default"}),
            json!({"check_hooks": "yes"}),
        ] {
            assert!(RefresherEvent::parse(bad).is_err());
        }
        for bad in [
            json!({"connection_id": "bad id"}),
            json!({"conection_id": "default"}),
            json!([1]),
        ] {
            assert!(RefresherEvent::parse(bad).is_err());
        }
    }
}
