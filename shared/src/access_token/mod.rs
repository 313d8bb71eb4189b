//! access-token: a short-lived Keap access token for a service that calls Keap itself with an
//! SDK or an HTTP client (docs/access-token.md). It never refreshes anything itself: the token
//! comes from the same on-demand path as contact-upsert and keap-proxy (the lease protocol,
//! losers wait and re-read, 401 memory), so keapalive stays the only presenter of the grant's
//! single-use refresh token.
//!
//! - [`request`]: `{"connection_id", "min_valid_secs", "rejected_generation"}`, strictly.
//! - [`service`]: the handler: a token valid for at least `min_valid_secs`, a reported
//!   rejection probed before anything rotates, key connections refused.
//! - [`error`]: the four `errorType`s a caller branches on.

pub mod error;
pub mod request;
mod service;

pub use error::AccessTokenError;
pub use request::{AccessTokenRequest, DEFAULT_MIN_VALID_SECS, MAX_MIN_VALID_SECS};
pub use service::{AccessTokenService, AccessTokenSettings, VendedToken};
