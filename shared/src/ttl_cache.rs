//! A per-container cache whose entries expire after a fixed time.
//!
//! Lambda containers hold a handful of entries (one client secret, a few keys, one Keap model
//! per connection), so a mutex-guarded map is enough; a full caching crate would add size
//! and start-up cost for features (eviction policies, size bounds) this never needs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
    /// Held while a miss is filled, so that concurrent misses (a cold container refreshing many
    /// connections, or an SQS batch) fetch once and the rest read what it stored. Misses are
    /// rare (one per key per TTL), so one lock for all keys costs nothing.
    filling: tokio::sync::Mutex<()>,
}

impl<V: Clone> TtlCache<V> {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            filling: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached value, or the one `fetch` gives, stored. Concurrent callers missing at once
    /// wait for the first and use its value; a failed fetch stores nothing (the next one tries).
    pub(crate) async fn get_or_try_fill<E, F, Fut>(&self, key: &str, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        if let Some(cached) = self.get(key) {
            return Ok(cached);
        }
        let _filling = self.filling.lock().await;
        if let Some(cached) = self.get(key) {
            return Ok(cached);
        }
        let value = fetch().await?;
        self.insert(key, value.clone());
        Ok(value)
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_fetch_once_and_failures_store_nothing() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let cache = Arc::new(TtlCache::new(Duration::from_secs(60)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, fetches) = (cache.clone(), fetches.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_try_fill("k", || async {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, ()>(7)
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(7));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        let failed = cache.get_or_try_fill("e", || async { Err::<i32, _>("down") });
        assert_eq!(failed.await, Err("down"));
        assert_eq!(cache.get("e"), None);
    }
}
