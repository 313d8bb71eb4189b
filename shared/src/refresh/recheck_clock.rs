//! When a cached credential is due for its re-check against the connection item
//! (docs/design.md, "Containment"): when either the monotonic or the wall clock says the
//! interval has passed.
//!
//! Lambda freezes a warm container between invocations, and whether the monotonic clock
//! advances across a freeze is not something these tests can observe; the wall clock does
//! advance. So both bound the cache, and a wall clock that stepped backwards past the check
//! counts as expired: how long ago the check was is then unknown, and one consistent read is
//! cheaper than trusting a credential nobody can vouch for.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Both clocks read at one moment: when a credential was checked, or now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClockReading {
    pub(crate) monotonic: Instant,
    pub(crate) wall: SystemTime,
}

impl ClockReading {
    pub(crate) fn now() -> Self {
        Self {
            monotonic: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Whether `interval` has passed between this reading (the check) and `now`.
    pub(crate) fn has_passed(&self, interval: Duration, now: ClockReading) -> bool {
        let by_monotonic = now.monotonic.saturating_duration_since(self.monotonic) >= interval;
        let by_wall = match now.wall.duration_since(self.wall) {
            Ok(elapsed) => elapsed >= interval,
            // The wall clock stepped backwards past the check.
            Err(_) => true,
        };
        by_monotonic || by_wall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECHECK: Duration = Duration::from_secs(60);

    fn checked() -> ClockReading {
        ClockReading {
            monotonic: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn later(at: ClockReading, monotonic: Duration, wall: Duration) -> ClockReading {
        ClockReading {
            monotonic: at.monotonic + monotonic,
            wall: at.wall + wall,
        }
    }

    #[test]
    fn fresh_on_both_clocks_is_not_due() {
        let at = checked();
        let now = later(at, Duration::from_secs(59), Duration::from_secs(59));
        assert!(!at.has_passed(RECHECK, now));
    }

    #[test]
    fn the_monotonic_clock_alone_expires_it() {
        let at = checked();
        let now = later(at, Duration::from_secs(60), Duration::from_secs(1));
        assert!(at.has_passed(RECHECK, now));
    }

    #[test]
    fn the_wall_clock_alone_expires_it_when_the_monotonic_clock_stood_still() {
        // A frozen container whose monotonic clock did not advance across the freeze.
        let at = checked();
        let now = later(at, Duration::from_secs(1), Duration::from_secs(3_600));
        assert!(at.has_passed(RECHECK, now));
    }

    #[test]
    fn a_wall_clock_that_stepped_backwards_counts_as_expired() {
        let at = checked();
        let now = ClockReading {
            monotonic: at.monotonic + Duration::from_secs(1),
            wall: at.wall - Duration::from_secs(5),
        };
        assert!(at.has_passed(RECHECK, now));
    }
}
