//! Keap's HTTP API: the OAuth token endpoint and REST (v1, and any caller's path for
//! keap-proxy), with typed outcomes.

pub(crate) mod contacts;
pub(crate) mod http;
pub(crate) mod model;
pub(crate) mod oauth;
pub(crate) mod path;
pub(crate) mod quota;
pub(crate) mod rate_limit;
pub(crate) mod rest;
pub(crate) mod tags;
pub(crate) mod tokens;

pub use oauth::{OAuthClient, SHORT_EXPIRES_IN_SECS, TokenError};
pub use path::{KeapPath, MAX_PATH_BYTES, PathError};
pub use quota::{KeapUsage, QuotaHolds};
pub use rest::{KeapAnswer, KeapCall, KeapError, RestClient};
pub use tokens::{AccessCredential, IssuedTokens, TokenPair, keap_app_from_scope};
