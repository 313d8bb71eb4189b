//! The upsert side's circuit breaker: one container seeing several connections' credentials
//! rejected at once is treated as a Keap incident, not as that many revocations.
//!
//! The scheduled run has its own (`scheduled.rs`: it sees a whole run at once). A container
//! serving upserts sees rejections one at a time, so it remembers them for a window: the first
//! [`MARKS_PER_WINDOW`] distinct connections are marked `needs_reauthorization` as usual; more
//! within the window are left `active` (the caller gets `Unavailable`) and counted by the
//! `UnauthorizedIncident` metric, so a Keap-side outage cannot kill every integration.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::connection_id::ConnectionId;

/// Distinct connections one container may mark within [`WINDOW`].
pub const MARKS_PER_WINDOW: usize = 2;
pub const WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct RejectionBreaker {
    marked: Mutex<VecDeque<(Instant, ConnectionId)>>,
}

impl RejectionBreaker {
    /// Whether `id` may be marked now; if so, it is remembered for the window. A connection
    /// already marked within the window may be marked again (it is one incident, not two).
    pub fn admit(&self, id: &ConnectionId) -> bool {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while marked
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            marked.pop_front();
        }
        if marked.iter().any(|(_, seen)| seen == id) {
            return true;
        }
        if marked.len() >= MARKS_PER_WINDOW {
            return false;
        }
        marked.push_back((now, id.clone()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ConnectionId {
        ConnectionId::parse(name).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_third_connection_within_the_window_is_not_marked() {
        let breaker = RejectionBreaker::default();
        assert!(breaker.admit(&id("a")));
        assert!(breaker.admit(&id("b")));
        assert!(breaker.admit(&id("a")), "the same connection again");
        assert!(!breaker.admit(&id("c")));
        tokio::time::advance(WINDOW).await;
        assert!(breaker.admit(&id("c")), "the window has passed");
    }
}
