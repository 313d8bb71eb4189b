//! The invocation deadline a function works to, from the Runtime API's
//! `Lambda-Runtime-Deadline-Ms` (epoch milliseconds in Lambda).
//!
//! Local emulators send deadlines that have already passed when the invocation arrives:
//! cargo-lambda 1.9's `watch` sends `600000` (a relative value, read as 1970), others zero or
//! the invoke time. Taken literally, every refresh would be skipped and every Keap call refused
//! for lack of time. Lambda never delivers an invocation whose deadline has passed, so such a
//! deadline is replaced by the function's configured timeout (`KEAPALIVE_FUNCTION_TIMEOUT_SECS`,
//! which the SAM template sets equal to the function's `Timeout`), with one warning per
//! container. A deadline in the future is used as it is: never extended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::warn;

use crate::config::Config;

/// The moment by which an invocation must be finished (Lambda's deadline).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(remaining: Duration) -> Self {
        Self(Instant::now() + remaining)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The deadline as epoch seconds, rounded up: what a lease must outlive.
    pub fn epoch_secs(&self) -> i64 {
        let remaining = self.remaining();
        let remaining = i64::try_from(remaining.as_secs()).unwrap_or(i64::MAX / 2)
            + i64::from(remaining.subsec_nanos() > 0);
        crate::clock::now_epoch_secs().saturating_add(remaining)
    }

    pub fn instant(&self) -> Instant {
        self.0
    }

    /// Runs `work` until `margin` before the deadline at the latest: `None` when it was still
    /// running then. For a call whose own timeouts (the SDK's operation timeout, 10 s) can
    /// outlast the invocation: Lambda would end it mid-call, with nothing reported.
    pub async fn cut<F: Future>(&self, margin: Duration, work: F) -> Option<F::Output> {
        let until = self.0.checked_sub(margin).unwrap_or(self.0);
        tokio::time::timeout_at(until, work).await.ok()
    }
}

/// Built once per container; `deadline` is called per invocation.
#[derive(Debug)]
pub struct DeadlinePolicy {
    configured_timeout: Duration,
    warned: AtomicBool,
}

impl DeadlinePolicy {
    pub fn new(configured_timeout: Duration) -> Self {
        Self {
            configured_timeout,
            warned: AtomicBool::new(false),
        }
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(config.function_timeout)
    }

    /// The deadline of an invocation whose Runtime API deadline is `deadline_epoch_ms`.
    pub fn deadline(&self, deadline_epoch_ms: u64) -> Deadline {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if deadline_epoch_ms > now_ms {
            return Deadline::after(Duration::from_millis(deadline_epoch_ms - now_ms));
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            warn!(
                deadline_ms = deadline_epoch_ms,
                now_ms,
                assumed_timeout_secs = self.configured_timeout.as_secs(),
                "the invocation's deadline had already passed when it arrived (a local emulator \
                 such as `cargo lambda watch`); using KEAPALIVE_FUNCTION_TIMEOUT_SECS instead \
                 (warned once per container)"
            );
        }
        Deadline::after(self.configured_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_ms_in(offset: Duration) -> u64 {
        (SystemTime::now() + offset)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn a_past_deadline_becomes_the_configured_timeout_and_warns_once() {
        let policy = DeadlinePolicy::new(Duration::from_secs(30));
        let past_now = epoch_ms_in(Duration::ZERO).saturating_sub(5);
        for sent in [600_000, 0, past_now] {
            let remaining = policy.deadline(sent).remaining();
            assert!(
                remaining > Duration::from_secs(29) && remaining <= Duration::from_secs(30),
                "{sent}: {remaining:?}"
            );
        }
        assert!(policy.warned.load(Ordering::Relaxed));
    }

    #[test]
    fn a_future_deadline_is_never_extended() {
        let policy = DeadlinePolicy::new(Duration::from_secs(300));
        let remaining = policy
            .deadline(epoch_ms_in(Duration::from_secs(5)))
            .remaining();
        assert!(remaining <= Duration::from_secs(5), "{remaining:?}");
        assert!(remaining > Duration::from_secs(4), "{remaining:?}");
        assert!(!policy.warned.load(Ordering::Relaxed));
    }
}
