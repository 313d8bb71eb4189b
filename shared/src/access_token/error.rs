//! The outcomes an access-token caller can branch on (`errorType` of the Lambda error).

use lambda_runtime::Diagnostic;

use crate::error_type::ErrorType;

/// Every message says what happened and what to do; none holds a token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessTokenError {
    /// The request is malformed, names a connection this deployment does not serve, or names a
    /// key connection (a key never leaves keapalive).
    #[error("{0}")]
    Validation(String),
    /// The connection is missing or needs re-authorization (a human must act).
    #[error("{0}")]
    NotAuthorized(String),
    /// Keap is throttling; the message ends with `retry_after_secs=<N>`.
    #[error("{0}")]
    RateLimited(String),
    /// Keap or AWS did not answer, a refresh could not be made now, or time ran out.
    #[error("{0}")]
    Unavailable(String),
}

impl AccessTokenError {
    /// One of [`ErrorType::ACCESS_TOKEN_FACING`].
    pub fn kind(&self) -> ErrorType {
        match self {
            Self::Validation(_) => ErrorType::Validation,
            Self::NotAuthorized(_) => ErrorType::NotAuthorized,
            Self::RateLimited(_) => ErrorType::RateLimited,
            Self::Unavailable(_) => ErrorType::Unavailable,
        }
    }
}

impl From<AccessTokenError> for Diagnostic {
    fn from(error: AccessTokenError) -> Self {
        error.kind().diagnostic(error.to_string())
    }
}
