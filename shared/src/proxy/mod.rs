//! keap-proxy: any Keap REST request through keapalive's credential (docs/keap-proxy.md).
//!
//! - [`request`]: the strict request (`connection_id`, `method`, `path`, `query`, `body`,
//!   `retry`); the path is a [`KeapPath`](crate::keap::KeapPath), so a `ValidationError`
//!   never costs a Keap request.
//! - [`replay`]: when a request is sent again (401 once after renewal; 429 within 5 s; a lost
//!   request only if nothing was sent or the method is repeatable and `retry` is on).
//! - [`answer`]: Keap's answer as data (status, selected headers, body and its encoding, hook
//!   tokens masked, the 6 MB limit).
//! - [`service`]: the function's handler, on contact-upsert's Keap session (credential, 401).
//! - [`error`]: the five `errorType`s a caller branches on.

pub mod answer;
pub mod error;
pub mod replay;
pub mod request;
mod service;

pub use answer::{BodyEncoding, ProxyAnswer};
pub use error::ProxyError;
pub use request::ProxyRequest;
pub(crate) use service::check_served;
pub use service::{ProxyService, ProxySettings};
