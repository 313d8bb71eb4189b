//! Keap's HTTP API: the OAuth token endpoint and REST v1, with typed outcomes.

pub(crate) mod contacts;
pub(crate) mod http;
pub(crate) mod model;
pub(crate) mod oauth;
pub(crate) mod rate_limit;
pub(crate) mod rest;
pub(crate) mod tags;
pub(crate) mod tokens;

pub use oauth::{OAuthClient, SHORT_EXPIRES_IN_SECS, TokenError};
pub use rest::{KeapError, RestClient};
pub use tokens::{AccessCredential, IssuedTokens, TokenPair, keap_app_from_scope};
