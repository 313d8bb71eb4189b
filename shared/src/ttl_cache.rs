//! A per-container cache whose entries expire after a fixed time.
//!
//! Lambda containers hold a handful of entries (one client secret, a few keys, one Keap model
//! per connection), so a mutex-guarded map is enough; a full caching crate would add size
//! and start-up cost for features (eviction policies, size bounds) this never needs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(stored, _)| stored.elapsed() < self.ttl)
            .map(|(_, value)| value.clone())
    }

    pub(crate) fn insert(&self, key: &str, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(key.to_owned(), (Instant::now(), value));
    }

    pub(crate) fn invalidate(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_invalidated() {
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.insert("a", 1);
        assert_eq!(cache.get("a"), Some(1));
        cache.invalidate("a");
        assert_eq!(cache.get("a"), None);
        cache.insert("a", 2);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get("a"), None);
    }
}
