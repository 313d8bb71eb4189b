use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DynamoDB throttled the request ({code})")]
    Throttled { code: String },
    #[error("DynamoDB is unavailable ({reason})")]
    Unavailable { reason: String },
    #[error("DynamoDB refused the request ({code}): check the table name and the IAM policy")]
    Refused { code: String },
    #[error("stored item {pk} is malformed: {reason}")]
    Malformed { pk: String, reason: String },
}

impl StoreError {
    /// Worth retrying with backoff (the commit of a freshly issued pair retries these).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Unavailable { .. })
    }

    pub(crate) fn from_sdk<E, R>(error: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata,
    {
        let code = error.code().map(str::to_owned);
        match (&error, code.as_deref()) {
            (
                _,
                Some(
                    "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded",
                ),
            ) => Self::Throttled {
                code: code.unwrap_or_default(),
            },
            (_, Some("InternalServerError" | "ServiceUnavailable")) => Self::Unavailable {
                reason: code.unwrap_or_default(),
            },
            (SdkError::ServiceError(_), Some(_)) => Self::Refused {
                code: code.unwrap_or_default(),
            },
            (SdkError::TimeoutError(_), _) => Self::Unavailable {
                reason: "timeout".to_owned(),
            },
            (SdkError::DispatchFailure(_), _) => Self::Unavailable {
                reason: "dispatch failure".to_owned(),
            },
            (SdkError::ResponseError(_), _) => Self::Unavailable {
                reason: "unreadable response".to_owned(),
            },
            _ => Self::Unavailable {
                reason: code.unwrap_or_else(|| "unknown error".to_owned()),
            },
        }
    }
}
