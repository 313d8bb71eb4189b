//! keapalive: keep a Keap (Infusionsoft) OAuth grant alive and use it safely.
//!
//! The Lambda binaries in `functions/` are thin; everything else lives here. Modules no other
//! crate names are private (`secrets`, `tls`, ...); each public item has one path.
//! - [`config`]: the environment-variable contract, parsed once at init.
//! - `secrets`: client credentials and service-account keys from Secrets Manager, cached.
//! - [`keap`]: the Keap HTTP client (OAuth token endpoint, REST v1), with typed errors.
//! - [`token_store`]: connection and state records in DynamoDB, every write conditional.
//! - [`refresh`]: the refresh protocol (lease → refresh → commit) and its invariants.
//! - [`contact`]: the contact-upsert request schema, validation, translation and service.
//! - [`events`]: connection lifecycle events on EventBridge (the outbox is in `token_store`).
//! - [`deadline`]: the invocation deadline, robust to local emulators' odd values.
//! - [`telemetry`]: JSON logs and CloudWatch embedded-metric lines.
//! - `tls`: the trust roots, built once per container for Keap's and the AWS clients.
//! - [`ErrorType`]: the `errorType` strings every function's Lambda errors carry.
//! - [`proxy`]: keap-proxy (any Keap REST request through the connection's credential).
//! - [`access_token`]: access-token (a short-lived Keap token for a service with its own SDK).
//! - [`authorization`]: oauth-callback (callback pages) and operator (start, key registration, remove).

pub mod access_token;
pub mod authorization;
pub mod clock;
pub mod config;
mod connection_id;
pub mod contact;
pub mod deadline;
mod error_type;
pub mod events;
pub mod hooks;
pub mod keap;
pub mod proxy;
pub mod redact;
pub mod refresh;
mod secrets;
pub mod telemetry;
mod tls;
pub mod token_store;
mod ttl_cache;
pub mod wiring;

pub use config::Config;
pub use connection_id::ConnectionId;
pub use error_type::ErrorType;
