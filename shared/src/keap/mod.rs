//! Keap's HTTP API: the OAuth token endpoint and REST v1, with typed outcomes.

pub mod contacts;
pub mod http;
pub mod model;
pub mod oauth;
pub mod rate_limit;
pub mod rest;
pub mod tags;
pub mod tokens;

pub use oauth::{OAuthClient, TokenError};
pub use rest::{KeapError, RestClient};
pub use tokens::{AccessCredential, IssuedTokens, TokenPair};
