//! Errors of the operator commands, as Lambda errors whose `errorType` a caller can branch on.
//!
//! Messages name what went wrong and what to do; they never contain a key, a secret value or
//! anything else the caller sent except a validated connection id.

use lambda_runtime::Diagnostic;

use crate::error_type::ErrorType;
use crate::secrets::SecretsError;
use crate::token_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command is malformed; retrying it unchanged fails the same way.
    #[error("{0}")]
    Validation(String),
    /// The function may not act on what the command names (a secret outside its prefix).
    #[error("{0}")]
    NotAuthorized(String),
    /// Keap refused the credential or request.
    #[error("{0}")]
    KeapRejected(String),
    /// Keap, DynamoDB or Secrets Manager did not answer: safe to retry.
    #[error("{0}")]
    Unavailable(String),
    /// The deployment is misconfigured (secret, table, IAM policy).
    #[error("{0}")]
    Configuration(String),
}

impl CommandError {
    pub fn kind(&self) -> ErrorType {
        match self {
            Self::Validation(_) => ErrorType::Validation,
            Self::NotAuthorized(_) => ErrorType::NotAuthorized,
            Self::KeapRejected(_) => ErrorType::KeapRejected,
            Self::Unavailable(_) => ErrorType::Unavailable,
            Self::Configuration(_) => ErrorType::Configuration,
        }
    }

    /// The same kind, with `note` after the message (what was done already, what to do).
    pub(crate) fn noting(self, note: &str) -> Self {
        match self {
            Self::Validation(m) => Self::Validation(format!("{m}; {note}")),
            Self::NotAuthorized(m) => Self::NotAuthorized(format!("{m}; {note}")),
            Self::KeapRejected(m) => Self::KeapRejected(format!("{m}; {note}")),
            Self::Unavailable(m) => Self::Unavailable(format!("{m}; {note}")),
            Self::Configuration(m) => Self::Configuration(format!("{m}; {note}")),
        }
    }

    pub fn error_type(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The client-credentials secret: anything but an outage is the deployment's fault.
    pub(crate) fn from_client_secret(error: SecretsError) -> Self {
        match error {
            SecretsError::Unavailable { .. } => Self::Unavailable(error.to_string()),
            _ => Self::Configuration(error.to_string()),
        }
    }

    pub(crate) fn from_store(error: StoreError) -> Self {
        if error.is_retryable() {
            Self::Unavailable(error.to_string())
        } else {
            Self::Configuration(error.to_string())
        }
    }
}

impl From<CommandError> for Diagnostic {
    fn from(error: CommandError) -> Self {
        error.kind().diagnostic(error.to_string())
    }
}
