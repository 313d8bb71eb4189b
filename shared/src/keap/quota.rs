//! Keap's own word on its quotas, read from every REST answer, and what this container has spent.
//!
//! Keap's gateway reports, on each REST answer, the credential's per-minute throttle and daily
//! quota (developer.infusionsoft.com, "API Token Quota and Usage Measurements"; names are
//! lower-case since 2022-10-31 and `HeaderMap` matches them case-insensitively):
//! `x-keap-product-throttle-{limit,time-unit,interval,available,used}` and
//! `x-keap-product-quota-{limit,time-unit,interval,available,used,expiry-time}`, the expiry in
//! epoch **milliseconds** (e.g. `1723680000000`). The OAuth quotas are the app's (per client
//! id, across every account), a key's are the key's. So when an answer says a credential has
//! nothing left, every later REST request with that credential would only be a 429: they are
//! held in this container instead —
//! - `throttle-available: 0`: for one throttle interval (`interval` × `time-unit`), at most 60 s;
//! - `quota-available: 0`: until `quota-expiry-time`, at most 24 h (the next 00:00 UTC, when
//!   Keap resets daily quotas, if the expiry is missing).
//!
//! A held request is answered `RateLimited` with the time left as its `retry_after`, without
//! being sent. The token endpoint is never held: a refresh must not wait on REST quotas.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::tokens::AccessCredential;
use crate::telemetry::{MetricSink, Metrics, Unit};

pub const THROTTLE_AVAILABLE: &str = "x-keap-product-throttle-available";
pub const THROTTLE_INTERVAL: &str = "x-keap-product-throttle-interval";
pub const THROTTLE_TIME_UNIT: &str = "x-keap-product-throttle-time-unit";
pub const QUOTA_AVAILABLE: &str = "x-keap-product-quota-available";
pub const QUOTA_EXPIRY_TIME: &str = "x-keap-product-quota-expiry-time";

/// The longest a spent throttle holds a credential: Keap's throttle window is a minute.
pub const MAX_THROTTLE_HOLD: Duration = Duration::from_secs(60);
/// The longest a spent daily quota holds a credential.
pub const MAX_QUOTA_HOLD: Duration = Duration::from_secs(24 * 3600);

/// Whose quota a request spends: the OAuth app's (one client id per deployment) or one key's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Quota {
    OAuthApp,
    /// A hash of the key, so nothing here holds the key itself.
    Key(u64),
}

impl Quota {
    fn of(credential: &AccessCredential) -> Self {
        match credential {
            AccessCredential::Bearer(_) => Quota::OAuthApp,
            AccessCredential::ApiKey(key) => {
                let mut hasher = DefaultHasher::new();
                key.expose_secret().hash(&mut hasher);
                Quota::Key(hasher.finish())
            }
        }
    }
}

/// The credentials Keap said are spent, and until when. One per container.
#[derive(Default)]
pub struct QuotaHolds {
    until: Mutex<HashMap<Quota, Instant>>,
}

impl QuotaHolds {
    /// How long `credential`'s requests are still held, if they are.
    pub fn held_for(&self, credential: &AccessCredential) -> Option<Duration> {
        let quota = Quota::of(credential);
        let mut until = self.lock();
        let left = until.get(&quota)?.checked_duration_since(Instant::now());
        if left.is_none_or(|left| left.is_zero()) {
            until.remove(&quota);
            return None;
        }
        left
    }

    /// Reads Keap's quota headers of an answer to a request made with `credential`.
    pub fn observe(&self, credential: &AccessCredential, headers: &HeaderMap) {
        let Some(hold) = hold_from_headers(headers, crate::clock::now_epoch_millis()) else {
            return;
        };
        tracing::info!(
            hold_ms = hold.as_millis() as u64,
            key = matches!(credential, AccessCredential::ApiKey(_)),
            "Keap reports the credential's quota spent; holding its requests"
        );
        let quota = Quota::of(credential);
        let until = Instant::now() + hold;
        let mut holds = self.lock();
        let entry = holds.entry(quota).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Quota, Instant>> {
        self.until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How long Keap's headers say to hold the credential (`now_ms`: epoch milliseconds).
pub fn hold_from_headers(headers: &HeaderMap, now_ms: i64) -> Option<Duration> {
    let quota = (number(headers, QUOTA_AVAILABLE) == Some(0)).then(|| {
        let expiry_ms = number(headers, QUOTA_EXPIRY_TIME)
            .and_then(|ms| i64::try_from(ms).ok())
            .unwrap_or_else(|| next_utc_midnight_ms(now_ms));
        let left = u64::try_from(expiry_ms.saturating_sub(now_ms)).unwrap_or(0);
        Duration::from_millis(left).min(MAX_QUOTA_HOLD)
    });
    let throttle = (number(headers, THROTTLE_AVAILABLE) == Some(0)).then(|| {
        let interval = number(headers, THROTTLE_INTERVAL).unwrap_or(1).max(1);
        let unit = headers
            .get(THROTTLE_TIME_UNIT)
            .and_then(|v| v.to_str().ok())
            .map(unit_secs)
            .unwrap_or(60);
        Duration::from_secs(interval.saturating_mul(unit)).min(MAX_THROTTLE_HOLD)
    });
    quota
        .into_iter()
        .chain(throttle)
        .filter(|hold| !hold.is_zero())
        .max()
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Seconds in one of Keap's time units; an unknown unit counts as a minute.
fn unit_secs(unit: &str) -> u64 {
    match unit.trim().to_ascii_lowercase().trim_end_matches('s') {
        "second" => 1,
        "hour" => 3600,
        "day" => 86_400,
        _ => 60,
    }
}

fn next_utc_midnight_ms(now_ms: i64) -> i64 {
    const DAY_MS: i64 = 86_400_000;
    (now_ms.div_euclid(DAY_MS) + 1) * DAY_MS
}

/// Keap requests, 429s (and held requests) and throttle waits of one function in this
/// container, emitted as EMF metrics (dimension `Function`) once per invocation.
#[derive(Default)]
pub struct KeapUsage {
    requests: AtomicU64,
    throttled: AtomicU64,
    wait_ms: AtomicU64,
}

pub const METRIC_KEAP_REQUESTS: &str = "KeapRequests";
pub const METRIC_KEAP_THROTTLED: &str = "KeapThrottled";
pub const METRIC_KEAP_THROTTLE_WAIT: &str = "KeapThrottleWaitMs";

impl KeapUsage {
    pub(crate) fn sent(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// A caller waited `wait` for Keap's throttling.
    pub fn waited(&self, wait: Duration) {
        self.wait_ms
            .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
    }

    /// What was counted since the last call, as metrics (empty when nothing was).
    pub fn take(&self) -> Metrics {
        let mut metrics = Metrics::new();
        for (name, counter, unit) in [
            (METRIC_KEAP_REQUESTS, &self.requests, Unit::Count),
            (METRIC_KEAP_THROTTLED, &self.throttled, Unit::Count),
            (METRIC_KEAP_THROTTLE_WAIT, &self.wait_ms, Unit::Milliseconds),
        ] {
            let value = counter.swap(0, Ordering::Relaxed);
            if value > 0 {
                metrics.put(name, value as f64, unit);
            }
        }
        metrics
    }

    /// Emits what was counted since the last call for `function` (its binary name).
    pub fn flush(&self, sink: &MetricSink, stage: &str, function: &'static str) {
        let metrics = self.take().with_function(function);
        if !metrics.is_empty() {
            sink.emit(&metrics, stage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const NOW_MS: i64 = 1_723_600_000_000;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn headers_with_quota_left_hold_nothing() {
        assert_eq!(hold_from_headers(&HeaderMap::new(), NOW_MS), None);
        let h = headers(&[(THROTTLE_AVAILABLE, "1499"), (QUOTA_AVAILABLE, "149000")]);
        assert_eq!(hold_from_headers(&h, NOW_MS), None);
    }

    #[test]
    fn a_spent_throttle_holds_one_interval_at_most_a_minute() {
        let h = headers(&[
            (THROTTLE_AVAILABLE, "0"),
            (THROTTLE_INTERVAL, "1"),
            (THROTTLE_TIME_UNIT, "minute"),
        ]);
        assert_eq!(hold_from_headers(&h, NOW_MS), Some(Duration::from_secs(60)));
        let h = headers(&[
            (THROTTLE_AVAILABLE, "0"),
            (THROTTLE_INTERVAL, "10"),
            (THROTTLE_TIME_UNIT, "second"),
        ]);
        assert_eq!(hold_from_headers(&h, NOW_MS), Some(Duration::from_secs(10)));
        let h = headers(&[(THROTTLE_AVAILABLE, "0"), (THROTTLE_TIME_UNIT, "hour")]);
        assert_eq!(hold_from_headers(&h, NOW_MS), Some(MAX_THROTTLE_HOLD));
    }

    #[test]
    fn a_spent_quota_holds_until_its_expiry_in_milliseconds_at_most_a_day() {
        let h = headers(&[
            (QUOTA_AVAILABLE, "0"),
            (QUOTA_EXPIRY_TIME, &(NOW_MS + 90_000).to_string()),
        ]);
        assert_eq!(hold_from_headers(&h, NOW_MS), Some(Duration::from_secs(90)));
        let h = headers(&[
            (QUOTA_AVAILABLE, "0"),
            (QUOTA_EXPIRY_TIME, &(NOW_MS + 3 * 86_400_000).to_string()),
        ]);
        assert_eq!(hold_from_headers(&h, NOW_MS), Some(MAX_QUOTA_HOLD));
        // No expiry: Keap resets daily quotas at 00:00 UTC.
        let h = headers(&[(QUOTA_AVAILABLE, "0")]);
        let hold = hold_from_headers(&h, NOW_MS).unwrap();
        assert_eq!(
            (NOW_MS + hold.as_millis() as i64) % 86_400_000,
            0,
            "held until midnight UTC"
        );
        // An expiry already past holds nothing.
        let h = headers(&[
            (QUOTA_AVAILABLE, "0"),
            (QUOTA_EXPIRY_TIME, &(NOW_MS - 1).to_string()),
        ]);
        assert_eq!(hold_from_headers(&h, NOW_MS), None);
    }

    #[test]
    fn header_names_match_in_any_case() {
        let mut map = HeaderMap::new();
        map.insert(
            reqwest::header::HeaderName::from_bytes(b"X-Keap-Product-Throttle-Available").unwrap(),
            HeaderValue::from_static("0"),
        );
        assert_eq!(
            hold_from_headers(&map, NOW_MS),
            Some(Duration::from_secs(60))
        );
    }

    #[tokio::test]
    async fn a_hold_is_per_credential() {
        let holds = QuotaHolds::default();
        let oauth = AccessCredential::Bearer("token-a".to_owned().into());
        let other_token = AccessCredential::Bearer("token-b".to_owned().into());
        let key = AccessCredential::ApiKey(std::sync::Arc::new("KeapAK-one".to_owned().into()));
        holds.observe(&oauth, &headers(&[(THROTTLE_AVAILABLE, "0")]));
        assert!(holds.held_for(&oauth).is_some());
        assert!(
            holds.held_for(&other_token).is_some(),
            "the OAuth quota is the app's, whatever the token"
        );
        assert_eq!(holds.held_for(&key), None, "a key has its own quota");
    }

    #[test]
    fn usage_is_taken_once() {
        let usage = KeapUsage::default();
        usage.sent();
        usage.sent();
        usage.throttled();
        usage.waited(Duration::from_millis(1_200));
        let metrics = usage.take();
        assert_eq!(metrics.get(METRIC_KEAP_REQUESTS), Some(2.0));
        assert_eq!(metrics.get(METRIC_KEAP_THROTTLED), Some(1.0));
        assert_eq!(metrics.get(METRIC_KEAP_THROTTLE_WAIT), Some(1_200.0));
        assert!(usage.take().is_empty());
    }
}
