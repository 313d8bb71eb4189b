//! The public vocabulary: who may log in, which faults to inject, what the request log holds.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the simulated Keap user clicks on the consent screen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Consent {
    /// The user allows access to this Keap app (tenant), e.g. `"sandbox01"`.
    Approve { app: String },
    /// The user clicks "deny": Keap redirects with `error=access_denied`.
    Deny,
}

impl Default for Consent {
    fn default() -> Self {
        Consent::Approve {
            app: crate::DEFAULT_APP.to_owned(),
        }
    }
}

/// A freshly minted token pair, as the token endpoint would return it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    /// `full|<app>.infusionsoft.com`
    pub scope: String,
}

impl fmt::Debug for IssuedPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedPair")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Which part of the simulated Keap a fault or latency setting applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /token`
    Token,
    /// Everything under `/crm/rest`
    Api,
    /// `GET /app/oauth/authorize`
    Authorize,
    /// Every request except the sandbox's own `/_sandbox` control API.
    Any,
}

/// A misbehaviour to inject into the next `times` requests that match `endpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub endpoint: Endpoint,
    pub kind: FaultKind,
    pub times: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer this status without processing the request: nothing is consumed or changed.
    Status {
        status: u16,
        retry_after_secs: Option<u64>,
    },
    /// Answer this status line and headers (with the full `Content-Length`) without
    /// processing the request, then send only half the gateway's error body and `break_body`
    /// it: what a client sees when a 429 or 503 from Keap's gateway is cut off by a proxy or a
    /// dying connection. The status line arrived, so nothing was consumed.
    StatusThenBrokenBody { status: u16, break_body: BodyBreak },
    /// Answer this 3xx with `Location` set, without processing: a misrouted or hijacked
    /// endpoint. A client that follows it delivers its request (and credential) to `location`.
    Redirect { status: u16, location: String },
    /// Process normally, then wait this long before answering (client timeouts).
    Delay(Duration),
    /// Process fully (tokens rotate, contacts are written), then close the TCP connection
    /// without sending a single response byte: the "lost response" case.
    DropAfterProcessing,
    /// Close the TCP connection without processing.
    DropBeforeProcessing,
}

/// How [`FaultKind::StatusThenBrokenBody`] ends the body after its first half.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyBreak {
    /// Close the connection: the client reads a truncated body.
    Cut,
    /// Send nothing more until the client gives up (its timeout).
    Stall,
}

/// How a request authenticated, without the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthKind {
    /// `Authorization: Basic`, with the client id it carried.
    Basic {
        client_id: String,
    },
    /// `Authorization: Bearer`
    Bearer,
    /// `X-Keap-API-Key`
    ApiKey,
    None,
}

/// One request as the sandbox saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Arrival time; the log is ordered by it.
    pub at: Instant,
    pub auth: AuthKind,
    /// For `/token`: the form body's `grant_type`.
    pub grant_type: Option<String>,
    /// For `/token`: the `client_id` sent in the form body (client_secret_post), if any.
    pub form_client_id: Option<String>,
    /// For a `refresh_token` grant: how many times this refresh token had been presented, this
    /// request included (I1: 1, or 2 for the retry after a lost answer).
    pub presentation: Option<u32>,
    /// 0 when the connection was dropped instead of answered.
    pub status: u16,
    /// The server's own handling time, including injected latency and delays.
    pub handling: Duration,
    /// The Keap app (tenant) the request acted on, when the sandbox could tell.
    pub app: Option<String>,
}

/// The most requests the sandbox was handling at one moment: 1 means the client serialized
/// them. A causal measure, unlike wall time, so it holds on a loaded machine.
pub fn most_in_flight(requests: &[RecordedRequest]) -> usize {
    let mut events: Vec<(Instant, bool)> = requests
        .iter()
        .flat_map(|r| [(r.at, true), (r.at + r.handling, false)])
        .collect();
    // At equal instants, ends first: back-to-back is not overlap.
    events.sort_by_key(|&(at, starts)| (at, starts));
    let (mut now, mut most) = (0usize, 0usize);
    for (_, starts) in events {
        if starts {
            now += 1;
            most = most.max(now);
        } else {
            now = now.saturating_sub(1);
        }
    }
    most
}

/// A REST Hook subscription's status, as Keap spells it in `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookStatus {
    /// Created, but the receiver has not (yet) proved it controls `hookUrl`: no deliveries.
    Unverified,
    /// The only status that receives deliveries.
    Verified,
    /// Four failed attempts, or a 410: no deliveries until a successful `verify`.
    Inactive,
}

impl HookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HookStatus::Unverified => "Unverified",
            HookStatus::Verified => "Verified",
            HookStatus::Inactive => "Inactive",
        }
    }
}

/// A REST Hook subscription as Keap answers it (`{key, eventKey, hookUrl, status}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub key: String,
    pub event_key: String,
    pub hook_url: String,
    pub status: HookStatus,
}

/// One changed object in a delivery: Keap's `{id, apiUrl, timestamp}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectKey {
    pub id: i64,
    #[serde(rename = "apiUrl", default)]
    pub api_url: String,
    pub timestamp: String,
}

/// A change in the simulated Keap that [`crate::Sandbox::deliver_hook_event`] sends to every
/// `Verified` hook of the app subscribed to `event_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEvent {
    pub event_key: String,
    /// `None`: what precedes the event key's last dot (`contact.add` → `contact`).
    pub object_type: Option<String>,
    pub object_keys: Vec<ObjectKey>,
}

/// What the sandbox sent to a hook's URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookRequestKind {
    /// The `X-Hook-Secret` handshake of a create or a `verify`.
    Verification,
    /// An event delivery (numbered attempts).
    Delivery,
}

/// One outgoing POST to a hook's URL and how the receiver answered it.
#[derive(Clone, Debug)]
pub struct HookAttempt {
    pub kind: HookRequestKind,
    pub hook_key: String,
    pub hook_url: String,
    pub app: String,
    pub event_key: String,
    /// Numbers the deliveries the sandbox made (each one up to four attempts); 0 for handshakes.
    pub delivery: u64,
    /// 1 to 4 for a delivery; 1 for a handshake.
    pub attempt: u32,
    /// The receiver's status; `None` when it did not answer in time or the connection failed.
    pub status: Option<u16>,
    /// Why the attempt failed without a status (timeout, connection refused).
    pub error: Option<String>,
    /// Whether Keap counts the answer as a success (see `hook_delivery`).
    pub succeeded: bool,
    /// The JSON body sent (`[]` for a handshake).
    pub body: serde_json::Value,
    pub at: Instant,
}
