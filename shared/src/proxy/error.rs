//! The outcomes a keap-proxy caller can branch on (`errorType` of the Lambda error). Anything
//! Keap answered that is not 401, 429 or 5xx is not an error: it is the answer.

use lambda_runtime::Diagnostic;

use crate::error_type::ErrorType;

/// Every message says what happened and what to do; none holds a token, key, query value or
/// body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed (path, method, query, body, an unknown field) or names a
    /// connection this deployment's proxy does not serve. No Keap request was made.
    #[error("{0}")]
    Validation(String),
    /// The connection is missing or needs re-authorization (a human must act).
    #[error("{0}")]
    NotAuthorized(String),
    /// Keap is throttling; the message ends with `retry_after_secs=<N>`.
    #[error("{0}")]
    RateLimited(String),
    /// Keap or AWS did not answer, or time ran out; the message says whether Keap may have
    /// applied the request.
    #[error("{0}")]
    Unavailable(String),
    /// Keap's answer does not fit in a Lambda response (6 MB); nothing is truncated.
    #[error("{0}")]
    ResponseTooLarge(String),
}

impl ProxyError {
    pub fn kind(&self) -> ErrorType {
        match self {
            Self::Validation(_) => ErrorType::Validation,
            Self::NotAuthorized(_) => ErrorType::NotAuthorized,
            Self::RateLimited(_) => ErrorType::RateLimited,
            Self::Unavailable(_) => ErrorType::Unavailable,
            Self::ResponseTooLarge(_) => ErrorType::ResponseTooLarge,
        }
    }
}

impl From<ProxyError> for Diagnostic {
    fn from(error: ProxyError) -> Self {
        error.kind().diagnostic(error.to_string())
    }
}
