//! How long each phase of a function's init took ([`super::init`]): logged at DEBUG, and with
//! `KEAPALIVE_INIT_TIMINGS=true` also written to stderr as one line the bench reads
//! ([`InitTimings::from_line`]) for its per-phase breakdown of cold init.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What starts the stderr line; the rest of the line is the JSON of [`InitTimings`].
pub const LINE_PREFIX: &str = "keapalive-init-timings ";

/// Microseconds spent in each phase of [`super::init`]. What the process spends outside them
/// (exec and loading, the runtime, logging, parsing the configuration) is "other": the bench
/// gets it as its measured init minus their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitTimings {
    /// The trust roots (`tls.rs`); the AWS connector over them is built on the first AWS call.
    pub tls_roots_us: u64,
    /// `aws_config`'s standard chain (region, credentials, retry and timeout settings).
    pub aws_config_us: u64,
    /// The Keap HTTP client and the AWS SDK clients.
    pub clients_us: u64,
}

impl InitTimings {
    pub fn from_line(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim().strip_prefix(LINE_PREFIX)?).ok()
    }

    pub fn total_us(&self) -> u64 {
        self.tls_roots_us + self.aws_config_us + self.clients_us
    }

    /// DEBUG log, and the stderr line when `to_stderr` (`KEAPALIVE_INIT_TIMINGS`).
    pub(crate) fn report(&self, to_stderr: bool) {
        tracing::debug!(
            tls_roots_us = self.tls_roots_us,
            aws_config_us = self.aws_config_us,
            clients_us = self.clients_us,
            "init phases"
        );
        if to_stderr && let Ok(json) = serde_json::to_string(self) {
            eprintln!("{LINE_PREFIX}{json}");
        }
    }
}

/// Times consecutive phases: each [`Phases::lap`] returns the time since the previous one.
pub(crate) struct Phases(Instant);

impl Phases {
    pub(crate) fn start() -> Self {
        Self(Instant::now())
    }

    pub(crate) fn lap(&mut self) -> u64 {
        let now = Instant::now();
        let took = now.duration_since(self.0);
        self.0 = now;
        micros(took)
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stderr_line_round_trips() {
        let timings = InitTimings {
            tls_roots_us: 310,
            aws_config_us: 420,
            clients_us: 95,
        };
        let line = format!(
            "{LINE_PREFIX}{}",
            serde_json::to_string(&timings).expect("json")
        );
        assert_eq!(InitTimings::from_line(&line), Some(timings));
        assert_eq!(timings.total_us(), 825);
        assert_eq!(InitTimings::from_line("{\"level\":\"INFO\"}"), None);
    }
}
