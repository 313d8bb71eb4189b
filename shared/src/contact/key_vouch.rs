//! How often a container reports that a service account key works again (`key_accepted_at`,
//! docs/design.md, "Connection kinds"): at most once per connection per recheck interval, so a
//! busy container does not turn every successful request into a DynamoDB write.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::connection_id::ConnectionId;

#[derive(Debug, Default)]
pub(crate) struct KeyVouches {
    last: Mutex<HashMap<ConnectionId, Instant>>,
}

impl KeyVouches {
    /// Whether this container may write `key_accepted_at` for `id` now; if so, the slot is
    /// taken until `interval` has passed.
    pub(crate) fn admit(&self, id: &ConnectionId, interval: Duration) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get(id) {
            Some(at) if now.saturating_duration_since(*at) < interval => false,
            _ => {
                last.insert(id.clone(), now);
                true
            }
        }
    }
}
