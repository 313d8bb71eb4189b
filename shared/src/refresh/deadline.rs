use std::time::Duration;

use tokio::time::Instant;

/// The moment by which an invocation must be finished (Lambda's deadline).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(remaining: Duration) -> Self {
        Self(Instant::now() + remaining)
    }

    /// From the Lambda context's deadline, epoch milliseconds.
    pub fn from_epoch_millis(deadline_ms: u64) -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::after(Duration::from_millis(deadline_ms.saturating_sub(now_ms)))
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
}
