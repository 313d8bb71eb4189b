//! When a request is sent again, and what the caller is told when it is not.
//!
//! - 401: Keap applied nothing; one replay after the credential is renewed (the session's
//!   rules), whatever the method and `retry`.
//! - 429: Keap applied nothing; a `Retry-After` that fits in [`MAX_THROTTLE_WAIT`] (total per
//!   invocation) and the deadline is waited out and the request replayed; otherwise
//!   `RateLimited` ending `retry_after_secs=<N>`.
//! - Nothing sent (the connection failed): always safe to send; up to [`MAX_ATTEMPTS`].
//! - 5xx, timeout, dropped connection: the request may have been applied. GET, PUT and DELETE
//!   are re-sent (with backoff, up to [`MAX_ATTEMPTS`]) when `retry` is true: repeating them
//!   lands in the same state. POST and PATCH are never re-sent: a second POST creates a second
//!   record, a PATCH may append. `Unavailable` then says Keap may have applied it.

use std::time::Duration;

use reqwest::Method;

use crate::connection_id::ConnectionId;
use crate::keap::{KeapError, KeapPath};

/// Attempts of one request after failures that are not 401 or 429.
pub const MAX_ATTEMPTS: u32 = 3;
/// Pause before the second attempt; doubled before each further one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Total time one invocation may spend waiting out Keap's throttling (as contact-upsert).
pub const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(5);
/// Backoff when a 429 carries no `Retry-After`: 1 s, 2 s, 4 s ...
const THROTTLE_BACKOFF: Duration = Duration::from_secs(1);

/// A request that got no usable answer, as far as replaying it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The connection failed before anything was written: Keap saw nothing.
    NotSent,
    /// Written, but no answer (timeout or dropped connection): Keap may have applied it.
    NoAnswer { timed_out: bool },
    /// Keap answered 5xx: it may have applied part or all of it.
    ServerError { status: u16 },
}

impl Lost {
    /// `None` for the errors that are not lost requests (401, 429 are handled before).
    pub fn from_error(error: &KeapError) -> Self {
        match error {
            KeapError::NotSent => Self::NotSent,
            KeapError::Unavailable { status } => Self::ServerError { status: *status },
            KeapError::NoAnswer { timed_out } => Self::NoAnswer {
                timed_out: *timed_out,
            },
            // Not produced by an exchange; treated as the worst case.
            _ => Self::NoAnswer { timed_out: false },
        }
    }

    fn may_have_reached_keap(self) -> bool {
        !matches!(self, Self::NotSent)
    }

    fn describe(self) -> String {
        match self {
            Self::NotSent => "Keap could not be reached".to_owned(),
            Self::NoAnswer { timed_out: true } => "Keap did not answer in time".to_owned(),
            Self::NoAnswer { timed_out: false } => {
                "the connection to Keap dropped before its answer".to_owned()
            }
            Self::ServerError { status } => format!("Keap answered HTTP {status}"),
        }
    }
}

/// GET, PUT and DELETE land in the same state however often they are applied.
pub fn is_repeatable(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::PUT | Method::DELETE)
}

/// Whether a request that ended `lost` may be sent again (attempts and time aside).
pub fn may_resend(method: &Method, retry: bool, lost: Lost) -> bool {
    !lost.may_have_reached_keap() || (retry && is_repeatable(method))
}

/// Pause before attempt `next` (2, 3, ...).
pub fn backoff(next: u32) -> Duration {
    FIRST_BACKOFF * 2u32.pow(next.saturating_sub(2).min(4))
}

/// The `Unavailable` message: what happened and whether Keap may have applied the request.
pub fn unavailable_message(
    id: &ConnectionId,
    method: &Method,
    path: &KeapPath,
    retry: bool,
    lost: Lost,
    attempts: u32,
) -> String {
    let what = format!(
        "{} for {method} {path} on connection {id} ({attempts} attempt{})",
        lost.describe(),
        if attempts == 1 { "" } else { "s" }
    );
    if !lost.may_have_reached_keap() {
        return format!(
            "{what}; the request never reached Keap, so nothing was applied; retry later"
        );
    }
    if *method == Method::GET {
        return format!("{what}; a GET changes nothing; retry later");
    }
    let applied = "Keap may have applied the request";
    if !retry {
        format!(
            "{what}; {applied}; it was not sent again (retry: false): check in Keap before sending it again"
        )
    } else if is_repeatable(method) {
        format!("{what}; {applied}; {method} is safe to repeat, so retry later")
    } else {
        format!(
            "{what}; {applied}; it was not sent again ({method} is not safe to repeat): check in \
             Keap before sending it again"
        )
    }
}

/// What to do about a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    Wait(Duration),
    /// `RateLimited`; the caller should wait this many seconds.
    GiveUp {
        retry_after_secs: u64,
    },
}

/// `waited`: throttle waits so far in this invocation; `throttles`: 429s so far;
/// `time_for`: whether the deadline leaves room for a wait of that length and an attempt.
pub fn on_throttle(
    retry_after: Option<Duration>,
    waited: Duration,
    throttles: u32,
    time_for: impl Fn(Duration) -> bool,
) -> Throttle {
    let wait = retry_after.unwrap_or_else(|| THROTTLE_BACKOFF * 2u32.pow(throttles.min(4)));
    if waited + wait <= MAX_THROTTLE_WAIT && time_for(wait) {
        Throttle::Wait(wait)
    } else {
        Throttle::GiveUp {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

/// The `RateLimited` message; it ends with `retry_after_secs=<N>` for callers to parse.
pub fn rate_limited_message(id: &ConnectionId, retry_after_secs: u64) -> String {
    format!(
        "Keap is throttling requests for connection {id}; nothing was applied; retry after the \
         wait: retry_after_secs={retry_after_secs}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Lost; 4] = [
        Lost::NotSent,
        Lost::NoAnswer { timed_out: true },
        Lost::NoAnswer { timed_out: false },
        Lost::ServerError { status: 503 },
    ];

    #[test]
    fn post_and_patch_are_never_resent_once_they_may_have_reached_keap() {
        for method in [Method::POST, Method::PATCH] {
            for retry in [true, false] {
                assert!(may_resend(&method, retry, Lost::NotSent));
                for lost in &ALL[1..] {
                    assert!(!may_resend(&method, retry, *lost), "{method} {lost:?}");
                }
            }
        }
    }

    #[test]
    fn get_put_delete_are_resent_only_with_retry() {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            for lost in ALL {
                assert!(may_resend(&method, true, lost));
            }
            assert!(may_resend(&method, false, Lost::NotSent));
            for lost in &ALL[1..] {
                assert!(!may_resend(&method, false, *lost), "{method} {lost:?}");
            }
        }
    }

    #[test]
    fn backoff_doubles() {
        assert_eq!(backoff(2), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_millis(500));
    }

    #[test]
    fn unavailable_says_whether_keap_may_have_applied_it() {
        let id = ConnectionId::default_id();
        let path = KeapPath::parse("/v1/contacts/12/notes").unwrap();
        let post = unavailable_message(
            &id,
            &Method::POST,
            &path,
            true,
            Lost::NoAnswer { timed_out: true },
            1,
        );
        assert!(post.contains("may have applied"), "{post}");
        assert!(post.contains("not sent again"), "{post}");
        assert!(post.contains("/v1/contacts/{id}/notes"), "{post}");
        assert!(!post.contains("12"), "{post}");
        let never = unavailable_message(&id, &Method::POST, &path, true, Lost::NotSent, 3);
        assert!(never.contains("nothing was applied"), "{never}");
        let off = unavailable_message(
            &id,
            &Method::PUT,
            &path,
            false,
            Lost::ServerError { status: 502 },
            1,
        );
        assert!(
            off.contains("may have applied") && off.contains("retry: false"),
            "{off}"
        );
        let get = unavailable_message(
            &id,
            &Method::GET,
            &path,
            true,
            Lost::ServerError { status: 503 },
            3,
        );
        assert!(
            get.contains("changes nothing") && get.contains("3 attempts"),
            "{get}"
        );
    }

    #[test]
    fn throttling_waits_at_most_five_seconds_in_total() {
        let always = |_: Duration| true;
        assert_eq!(
            on_throttle(Some(Duration::from_secs(1)), Duration::ZERO, 0, always),
            Throttle::Wait(Duration::from_secs(1))
        );
        assert_eq!(
            on_throttle(Some(Duration::from_secs(30)), Duration::ZERO, 0, always),
            Throttle::GiveUp {
                retry_after_secs: 30
            }
        );
        assert_eq!(
            on_throttle(
                Some(Duration::from_secs(2)),
                Duration::from_secs(4),
                2,
                always
            ),
            Throttle::GiveUp {
                retry_after_secs: 2
            }
        );
        assert_eq!(
            on_throttle(None, Duration::ZERO, 0, always),
            Throttle::Wait(Duration::from_secs(1))
        );
        assert_eq!(
            on_throttle(None, Duration::from_secs(3), 2, always),
            Throttle::GiveUp {
                retry_after_secs: 4
            }
        );
        assert_eq!(
            on_throttle(Some(Duration::from_secs(1)), Duration::ZERO, 0, |_| false),
            Throttle::GiveUp {
                retry_after_secs: 1
            }
        );
        let message = rate_limited_message(&ConnectionId::default_id(), 30);
        assert!(message.ends_with("retry_after_secs=30"), "{message}");
    }
}
