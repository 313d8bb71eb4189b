//! contact-upsert's write-brownout guard (docs/design.md, "The fault model"): one per
//! container, shared by every record and invocation it serves.
//!
//! Once a commit of a refreshed pair fails or starts retrying, DynamoDB is refusing writes:
//! every other refresh started now would have Keap rotate a pair that probably cannot be
//! stored either, and a pair Keap issued that is never stored kills the grant. So no on-demand
//! refresh starts (the caller gets `Unavailable` and retries) until a commit lands again, or 30 s
//! after the brownout began, whichever is first. The scheduled run has the same rule per run
//! ([`RunGuard`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;

use super::protocol::RunGuard;

/// How long a brownout stops new refreshes when no commit lands to end it sooner.
pub(crate) const WRITE_BROWNOUT_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub(crate) struct WriteBrownout {
    current: Mutex<Arc<RunGuard>>,
}

impl WriteBrownout {
    /// The guard a refresh starting now runs under: the current one, unless its brownout began
    /// [`WRITE_BROWNOUT_MAX`] ago or more.
    pub(crate) fn guard(&self) -> Arc<RunGuard> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current
            .browned_out_since()
            .is_some_and(|since| since.elapsed() >= WRITE_BROWNOUT_MAX)
        {
            info!("write brownout over after 30 s; on-demand refreshes may start again");
            *current = Arc::new(RunGuard::new());
        }
        current.clone()
    }

    /// A commit landed: DynamoDB takes writes again.
    pub(crate) fn write_succeeded(&self) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_browned_out() {
            info!("a commit landed; write brownout over");
            *current = Arc::new(RunGuard::new());
        }
    }
}
