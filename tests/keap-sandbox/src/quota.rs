//! Keap's product throttle (per minute) and quota (per day) for each credential, as its gateway
//! reports them on every REST answer and enforces them with a 429.
//!
//! developer.infusionsoft.com, "API Token Quota and Usage Measurements": OAuth apps get 1,500
//! requests a minute and 150,000 a day per client id, keys 240 a minute and 30,000 a day; every
//! answer carries `x-keap-product-throttle-{limit,time-unit,interval,available,used}` and
//! `x-keap-product-quota-{limit,time-unit,interval,available,used,expiry-time}` (the expiry in
//! epoch milliseconds, e.g. `1723680000000`; daily quotas reset at 00:00 UTC), lower-case since
//! 2022-10-31 (a real answer: pastebin.com/Y9EnSpbW, cited in the team's Keap notes). A request
//! made when nothing is available is refused with a 429 and counts for nothing.
//!
//! The sandbox has one OAuth client in practice, so every bearer token shares one OAuth quota;
//! each key has its own. Tests lower the limits with `Sandbox::set_product_limits`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

const OAUTH_PER_MINUTE: u32 = 1_500;
const OAUTH_PER_DAY: u32 = 150_000;
const KEY_PER_MINUTE: u32 = 240;
const KEY_PER_DAY: u32 = 30_000;
const MINUTE: Duration = Duration::from_secs(60);
const DAY_MS: i64 = 86_400_000;

/// Overrides of Keap's published limits (`None`: Keap's number for the credential's kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProductLimits {
    pub throttle_per_minute: Option<u32>,
    pub quota_per_day: Option<u32>,
}

/// Whose quota a REST request spends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Bucket {
    OAuth,
    Key(String),
}

struct Usage {
    minute_started: Instant,
    minute_used: u32,
    /// Days since the epoch (UTC) that `day_used` counts.
    day: i64,
    day_used: u32,
}

/// What the gateway does with one request: refuse it, and the headers it reports either way.
pub(crate) struct Admission {
    pub refused: bool,
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Default)]
pub(crate) struct ProductQuota {
    limits: ProductLimits,
    usage: HashMap<Bucket, Usage>,
}

impl ProductQuota {
    pub(crate) fn set_limits(&mut self, limits: ProductLimits) {
        self.limits = limits;
        self.usage.clear();
    }

    /// Counts a request against `bucket` unless its minute or day is spent.
    pub(crate) fn admit(&mut self, bucket: Bucket, now: Instant, now_ms: i64) -> Admission {
        let (minute_limit, day_limit) = match bucket {
            Bucket::OAuth => (OAUTH_PER_MINUTE, OAUTH_PER_DAY),
            Bucket::Key(_) => (KEY_PER_MINUTE, KEY_PER_DAY),
        };
        let minute_limit = self.limits.throttle_per_minute.unwrap_or(minute_limit);
        let day_limit = self.limits.quota_per_day.unwrap_or(day_limit);
        let today = now_ms.div_euclid(DAY_MS);
        let usage = self.usage.entry(bucket).or_insert(Usage {
            minute_started: now,
            minute_used: 0,
            day: today,
            day_used: 0,
        });
        if now.duration_since(usage.minute_started) >= MINUTE {
            usage.minute_started = now;
            usage.minute_used = 0;
        }
        if usage.day != today {
            usage.day = today;
            usage.day_used = 0;
        }
        let refused = usage.minute_used >= minute_limit || usage.day_used >= day_limit;
        if !refused {
            usage.minute_used += 1;
            usage.day_used += 1;
        }
        let headers = vec![
            ("x-keap-product-throttle-limit", minute_limit.to_string()),
            ("x-keap-product-throttle-time-unit", "minute".to_owned()),
            ("x-keap-product-throttle-interval", "1".to_owned()),
            (
                "x-keap-product-throttle-available",
                minute_limit.saturating_sub(usage.minute_used).to_string(),
            ),
            (
                "x-keap-product-throttle-used",
                usage.minute_used.to_string(),
            ),
            ("x-keap-product-quota-limit", day_limit.to_string()),
            ("x-keap-product-quota-time-unit", "day".to_owned()),
            ("x-keap-product-quota-interval", "1".to_owned()),
            (
                "x-keap-product-quota-available",
                day_limit.saturating_sub(usage.day_used).to_string(),
            ),
            ("x-keap-product-quota-used", usage.day_used.to_string()),
            (
                "x-keap-product-quota-expiry-time",
                ((today + 1) * DAY_MS).to_string(),
            ),
        ];
        Admission { refused, headers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(admission: &'a Admission, name: &str) -> &'a str {
        admission
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn the_last_allowed_request_reports_zero_available_and_the_next_is_refused() {
        let mut quota = ProductQuota::default();
        quota.set_limits(ProductLimits {
            throttle_per_minute: Some(2),
            quota_per_day: None,
        });
        let now = Instant::now();
        let first = quota.admit(Bucket::OAuth, now, 0);
        assert!(!first.refused);
        assert_eq!(header(&first, "x-keap-product-throttle-available"), "1");
        let second = quota.admit(Bucket::OAuth, now, 0);
        assert!(!second.refused);
        assert_eq!(header(&second, "x-keap-product-throttle-available"), "0");
        assert!(quota.admit(Bucket::OAuth, now, 0).refused);
        assert!(
            !quota.admit(Bucket::Key("k".into()), now, 0).refused,
            "a key has its own quota"
        );
        assert!(!quota.admit(Bucket::OAuth, now + MINUTE, 0).refused);
    }

    #[test]
    fn the_daily_quota_expires_at_midnight_utc_in_milliseconds() {
        let mut quota = ProductQuota::default();
        quota.set_limits(ProductLimits {
            throttle_per_minute: None,
            quota_per_day: Some(1),
        });
        let now_ms = 1_723_600_000_000;
        let spent = quota.admit(Bucket::OAuth, Instant::now(), now_ms);
        assert_eq!(header(&spent, "x-keap-product-quota-available"), "0");
        assert_eq!(
            header(&spent, "x-keap-product-quota-expiry-time"),
            "1723680000000"
        );
        assert!(quota.admit(Bucket::OAuth, Instant::now(), now_ms).refused);
        assert!(
            !quota
                .admit(Bucket::OAuth, Instant::now(), 1_723_680_000_000)
                .refused
        );
    }
}
