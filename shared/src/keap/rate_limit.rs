//! Spacing limiter for Keap requests: at most `rate` requests start in any one-second window.
//!
//! Keap refuses per-second spikes (per OAuth client id; for a Personal Access Token or Service
//! Account Key a spike arrest of 5/s was observed, see `KEY_REQUESTS_PER_SECOND`), so the
//! guarantee needed is "never more than R in any window", which a bursting token bucket does not
//! give (a full bucket plus its refill allows up to 2R in one second). Spacing requests evenly
//! gives it with a dozen lines; a rate-limiting crate configured with burst 1 would do the same
//! with more dependencies.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Requests are spaced 5 % wider than 1/R: R + 1 requests then span at least 1.05 s as they
/// leave, so up to 50 ms of jitter between our send and Keap's arrival (scheduling, network)
/// cannot squeeze them into one second. The price is 5 % of the configured throughput.
const JITTER_MARGIN: f64 = 1.05;

pub struct RateLimiter {
    interval: Duration,
    next_slot: Mutex<Instant>,
}

impl RateLimiter {
    pub fn per_second(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            interval: Duration::from_secs_f64(JITTER_MARGIN / rate),
            next_slot: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    ///
    /// The lock is held through the wait and the next slot counted from when this caller really
    /// woke: slots reserved ahead of time would all fall due together after a stall (a throttled
    /// Lambda vCPU, a busy runtime) and their requests leave as one burst. Waiters queue fairly
    /// on tokio's FIFO mutex, so the order is still first come, first served.
    pub async fn acquire(&self) {
        let mut next = self.next_slot.lock().await;
        wait_until(*next).await;
        *next = Instant::now() + self.interval;
    }
}

/// Keap's limits for one Personal Access Token or Service Account Key: Keap's key quotas are
/// per tenant and its spike limit per key, observed as `SpikeArrest Rate=5ps` in a 429 (Keap
/// developer forum, "api-error-quota-exceeded-request-throttled"); 240 a minute is Keap's
/// documented key quota. `KEAPALIVE_KEY_RATE_PER_SEC` overrides the first (default 5).
pub const KEY_REQUESTS_PER_SECOND: u32 = 5;
pub const KEY_REQUESTS_PER_MINUTE: usize = 240;
/// The minute window is measured a second longer, for the same reason as [`JITTER_MARGIN`].
const MINUTE_WINDOW: Duration = Duration::from_secs(61);

/// Spacing plus a per-minute cap, for one key: 5/s alone would allow 300 a minute, and Keap
/// allows a key 240.
pub struct KeyRateLimiter {
    interval: Duration,
    per_window: usize,
    window: Duration,
    /// Start times handed out, oldest first; only the last `per_window` are kept.
    state: Mutex<KeySlots>,
}

struct KeySlots {
    next_slot: Instant,
    recent: VecDeque<Instant>,
}

impl KeyRateLimiter {
    /// One key's limiter: `per_second` (`KEAPALIVE_KEY_RATE_PER_SEC`) and Keap's 240 a minute.
    pub fn service_account_key(per_second: u32) -> Self {
        Self::new(per_second, KEY_REQUESTS_PER_MINUTE, MINUTE_WINDOW)
    }

    fn new(per_second: u32, per_window: usize, window: Duration) -> Self {
        Self {
            interval: Duration::from_secs_f64(JITTER_MARGIN / f64::from(per_second.max(1))),
            per_window: per_window.max(1),
            window,
            state: Mutex::new(KeySlots {
                next_slot: Instant::now(),
                recent: VecDeque::new(),
            }),
        }
    }

    /// Waits for this caller's slot; held and counted from the real wake time, as in
    /// [`RateLimiter::acquire`].
    pub async fn acquire(&self) {
        let mut state = self.state.lock().await;
        let mut slot = state.next_slot;
        if state.recent.len() >= self.per_window
            && let Some(oldest_in_window) = state.recent.get(state.recent.len() - self.per_window)
        {
            slot = slot.max(*oldest_in_window + self.window);
        }
        wait_until(slot).await;
        let started = Instant::now();
        state.recent.push_back(started);
        while state.recent.len() > self.per_window {
            state.recent.pop_front();
        }
        state.next_slot = started + self.interval;
    }
}

/// Sleeps only for a slot in the future: tokio rounds every sleep up to its next 1 ms tick, which
/// a due slot (the common case, well under the rate) must not pay on every Keap request.
async fn wait_until(slot: Instant) {
    if slot > Instant::now() {
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When each of `count` concurrent tasks got through `acquire`, sorted.
    async fn acquisition_times<F, Fut>(count: usize, acquire: F) -> Vec<Instant>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let handles: Vec<_> = (0..count)
            .map(|_| {
                let acquired = acquire();
                tokio::spawn(async move {
                    acquired.await;
                    Instant::now()
                })
            })
            .collect();
        let mut times = Vec::new();
        for handle in handles {
            times.push(handle.await.unwrap());
        }
        times.sort();
        times
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_rate_in_any_second() {
        let limiter = std::sync::Arc::new(RateLimiter::per_second(20));
        let start = Instant::now();
        let times = acquisition_times(100, move || {
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        })
        .await;
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count();
            assert!(in_window <= 20, "{in_window} requests in one second");
        }
        // And it is not needlessly slow: 100 requests at 20/s take 99 × 52.5 ms ≈ 5.2 s.
        assert!(times[99] - start <= Duration::from_millis(5_250));
    }

    /// Most acquisitions that fall within any one second.
    fn busiest_second(times: &[Instant]) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|u| **u < times[i] + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Queues `count` waiters on `acquire`, lets the first few through, then stalls the runtime
    /// for `stall` (the clock jumps while no task runs, as on a throttled vCPU) and returns when
    /// each got through, sorted.
    async fn acquisition_times_across_a_stall<F, Fut>(
        count: usize,
        stall: Duration,
        acquire: F,
    ) -> Vec<Instant>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let handles: Vec<_> = (0..count)
            .map(|_| {
                let acquired = acquire();
                tokio::spawn(async move {
                    acquired.await;
                    Instant::now()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(120)).await;
        tokio::time::advance(stall).await;
        let mut times = Vec::new();
        for handle in handles {
            times.push(handle.await.unwrap());
        }
        times.sort();
        times
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_runtime_does_not_release_its_waiters_as_one_burst() {
        let limiter = std::sync::Arc::new(RateLimiter::per_second(20));
        let times = acquisition_times_across_a_stall(60, Duration::from_millis(600), move || {
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        })
        .await;
        let busiest = busiest_second(&times);
        assert!(busiest <= 20, "{busiest} requests in one second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_runtime_does_not_release_key_waiters_as_one_burst() {
        let limiter = std::sync::Arc::new(KeyRateLimiter::service_account_key(10));
        let times = acquisition_times_across_a_stall(40, Duration::from_millis(900), move || {
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        })
        .await;
        let busiest = busiest_second(&times);
        assert!(busiest <= 10, "{busiest} requests in one second");
    }

    #[tokio::test(start_paused = true)]
    async fn key_limiter_caps_each_second_and_each_minute() {
        let limiter = std::sync::Arc::new(KeyRateLimiter::service_account_key(10));
        let start = Instant::now();
        let times = acquisition_times(500, move || {
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        })
        .await;
        let most_within = |window: Duration| {
            (0..times.len())
                .map(|i| {
                    times[i..]
                        .iter()
                        .take_while(|u| **u < times[i] + window)
                        .count()
                })
                .max()
                .unwrap()
        };
        assert!(most_within(Duration::from_secs(1)) <= 10);
        assert!(most_within(Duration::from_secs(60)) <= 240);
        // 500 requests: two full minutes of 240, then the rest; not needlessly slower.
        let took = times[499] - start;
        assert!(took >= Duration::from_secs(120), "{took:?}");
        assert!(took < Duration::from_secs(130), "{took:?}");
    }
}
