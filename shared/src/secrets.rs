//! Client credentials and service-account keys from Secrets Manager, cached per container.
//!
//! Values are wrapped in [`SecretString`], so `Debug` prints `[REDACTED]` and leaking one
//! through a log line takes an explicit `expose_secret()`.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use secrecy::{ExposeSecret, SecretString};

use crate::ttl_cache::TtlCache;

/// The Keap developer app's credentials, stored as `{"client_id": ..., "client_secret": ...}`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret {id} does not exist (or has no value yet): put the value into it")]
    NotFound { id: String },
    #[error("secret {id} could not be read: access denied (check the function's IAM policy)")]
    AccessDenied { id: String },
    #[error(
        "secret {id} is malformed: {reason} (client credentials are JSON {{\"client_id\": ..., \"client_secret\": ...}})"
    )]
    Malformed { id: String, reason: String },
    #[error("Secrets Manager is unavailable for {id}: {reason}")]
    Unavailable { id: String, reason: String },
}

/// Reads secrets once per TTL per container; `invalidate` forces the next read (after Keap
/// rejected the client, the secret may have been rotated).
pub struct SecretsSource {
    client: Client,
    credentials: TtlCache<Arc<ClientCredentials>>,
    strings: TtlCache<Arc<SecretString>>,
}

impl SecretsSource {
    pub fn new(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            credentials: TtlCache::new(ttl),
            strings: TtlCache::new(ttl),
        }
    }

    pub async fn client_credentials(
        &self,
        secret_id: &str,
    ) -> Result<Arc<ClientCredentials>, SecretsError> {
        self.credentials
            .get_or_try_fill(secret_id, || async {
                let raw = self.fetch(secret_id).await?;
                let parsed: ClientCredentials =
                    serde_json::from_str(&raw).map_err(|e| SecretsError::Malformed {
                        id: secret_id.to_owned(),
                        // serde_json's message names the missing field or the position, never
                        // the value.
                        reason: format!("not the expected JSON object ({})", json_problem(&e)),
                    })?;
                // The stack creates the secret with empty values; the operator fills them in once.
                if parsed.client_id.trim().is_empty()
                    || parsed.client_secret.expose_secret().trim().is_empty()
                {
                    return Err(SecretsError::Malformed {
                        id: secret_id.to_owned(),
                        reason: "client_id or client_secret is empty: put the Keap app's credentials into the secret (see docs/deploy.md)".to_owned(),
                    });
                }
                Ok(Arc::new(parsed))
            })
            .await
    }

    /// A secret whose whole string is the value (a service-account key).
    pub async fn secret_string(&self, secret_id: &str) -> Result<Arc<SecretString>, SecretsError> {
        self.strings
            .get_or_try_fill(secret_id, || async {
                let raw = self.fetch(secret_id).await?;
                let trimmed = raw.trim();
                if trimmed.is_empty() {
                    return Err(SecretsError::Malformed {
                        id: secret_id.to_owned(),
                        reason: "the secret string is empty".to_owned(),
                    });
                }
                Ok(Arc::new(SecretString::from(trimmed.to_owned())))
            })
            .await
    }

    pub fn invalidate(&self, secret_id: &str) {
        self.credentials.invalidate(secret_id);
        self.strings.invalidate(secret_id);
    }

    async fn fetch(&self, secret_id: &str) -> Result<String, SecretsError> {
        let id = || secret_id.to_owned();
        let output = self
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|err| match err.code() {
                Some("ResourceNotFoundException") => SecretsError::NotFound { id: id() },
                Some("AccessDeniedException") => SecretsError::AccessDenied { id: id() },
                code => SecretsError::Unavailable {
                    id: id(),
                    reason: code.unwrap_or("no response").to_owned(),
                },
            })?;
        output
            .secret_string
            .ok_or_else(|| SecretsError::NotFound { id: id() })
    }
}

/// serde_json's own message can quote the input; this names only the kind of problem.
fn json_problem(error: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match error.classify() {
        Category::Io => "unreadable",
        Category::Syntax | Category::Eof => "not valid JSON",
        Category::Data => "missing or mistyped client_id or client_secret",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_client_secret() {
        let creds: ClientCredentials =
            serde_json::from_str(r#"{"client_id":"id","client_secret":"hunter2"}"#).unwrap();
        let printed = format!("{creds:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("id"));
    }
}
