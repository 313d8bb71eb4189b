//! The five outcomes a caller can branch on (`errorType` of the Lambda error).

use lambda_runtime::Diagnostic;

use crate::error_type::ErrorType;

/// Every message says what happened and what to do; none contains a token, key or full email.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpsertError {
    /// The request is malformed or names something Keap does not have. Never retried.
    #[error("{0}")]
    Validation(String),
    /// The connection is missing or needs re-authorization (a human must act).
    #[error("{0}")]
    NotAuthorized(String),
    /// Keap refused the request; its message is passed on. Never retried.
    #[error("{0}")]
    KeapRejected(String),
    /// Keap is throttling; safe to retry later.
    #[error("{0}")]
    RateLimited(String),
    /// Keap or AWS is unavailable, or time ran out; safe to retry.
    #[error("{0}")]
    Unavailable(String),
}

impl UpsertError {
    pub fn kind(&self) -> ErrorType {
        match self {
            Self::Validation(_) => ErrorType::Validation,
            Self::NotAuthorized(_) => ErrorType::NotAuthorized,
            Self::KeapRejected(_) => ErrorType::KeapRejected,
            Self::RateLimited(_) => ErrorType::RateLimited,
            Self::Unavailable(_) => ErrorType::Unavailable,
        }
    }

    /// The Lambda `errorType`.
    pub fn error_type(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Retrying the same request cannot succeed: it belongs in the dead-letter queue.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, Self::Validation(_) | Self::KeapRejected(_))
    }
}

impl From<UpsertError> for Diagnostic {
    fn from(error: UpsertError) -> Self {
        error.kind().diagnostic(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostic_carries_the_kind() {
        let diagnostic = Diagnostic::from(UpsertError::RateLimited("later".into()));
        assert_eq!(diagnostic.error_type, "RateLimited");
        assert_eq!(diagnostic.error_message, "later");
        assert!(UpsertError::KeapRejected(String::new()).is_permanent());
        assert!(!UpsertError::NotAuthorized(String::new()).is_permanent());
    }
}
