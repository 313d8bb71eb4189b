//! Token values. Each is a [`SecretString`]: `Debug` shows `[REDACTED]`.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

/// An access/refresh pair as Keap issued it; always stored and replaced together.
#[derive(Clone, Debug)]
pub struct TokenPair {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    /// Epoch seconds, computed from `expires_in` when the pair was received.
    pub access_expires_at: i64,
}

/// A token-endpoint answer: the pair plus what it says about the Keap account.
#[derive(Clone, Debug)]
pub struct IssuedTokens {
    pub pair: TokenPair,
    /// Raw `scope`, e.g. `full|ab123.infusionsoft.com`.
    pub scope: Option<String>,
    /// The Keap app (tenant) the grant belongs to: the part of `scope` after `|`.
    pub keap_app: Option<String>,
}

/// `full|ab123.infusionsoft.com` → `ab123.infusionsoft.com`.
pub fn keap_app_from_scope(scope: &str) -> Option<String> {
    scope
        .split_once('|')
        .map(|(_, app)| app.trim())
        .filter(|app| !app.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn app_is_the_part_after_the_bar() {
        assert_eq!(
            keap_app_from_scope("full|ab123.infusionsoft.com").as_deref(),
            Some("ab123.infusionsoft.com")
        );
        assert_eq!(keap_app_from_scope("full"), None);
        assert_eq!(keap_app_from_scope("full|"), None);
    }

    #[test]
    fn debug_hides_both_tokens() {
        let pair = TokenPair {
            access_token: SecretString::from("access-123"),
            refresh_token: SecretString::from("refresh-456"),
            access_expires_at: 1,
        };
        let printed = format!("{pair:?}");
        assert!(!printed.contains("access-123") && !printed.contains("refresh-456"));
        assert_eq!(pair.access_token.expose_secret(), "access-123");
    }
}

/// What authenticates a Keap REST call: an OAuth access token or a service-account key.
#[derive(Clone)]
pub enum AccessCredential {
    /// An OAuth access token: `Authorization: Bearer`.
    Bearer(SecretString),
    /// A service-account key: `X-Keap-API-Key`.
    ApiKey(Arc<SecretString>),
}

impl std::fmt::Debug for AccessCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bearer(_) => f.write_str("Bearer([REDACTED])"),
            Self::ApiKey(_) => f.write_str("ApiKey([REDACTED])"),
        }
    }
}

impl AccessCredential {
    /// The same kind and the same secret value (a rejected credential is compared with a
    /// re-read one without exposing either).
    pub fn same_secret(&self, other: &AccessCredential) -> bool {
        match (self, other) {
            (Self::Bearer(a), Self::Bearer(b)) => a.expose_secret() == b.expose_secret(),
            (Self::ApiKey(a), Self::ApiKey(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        }
    }
}
