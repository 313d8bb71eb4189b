//! The name of one authorized Keap account inside a deployment.

use std::fmt;

/// A validated connection id: 1–64 characters of `[A-Za-z0-9._-]`.
///
/// Validation keeps ids safe to embed in DynamoDB keys, log lines and HTML pages unescaped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ConnectionId(String);

pub const DEFAULT_CONNECTION_ID: &str = "default";
pub const MAX_CONNECTION_ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("connection_id must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
pub struct InvalidConnectionId;

impl ConnectionId {
    pub fn parse(raw: &str) -> Result<Self, InvalidConnectionId> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if raw.is_empty() || raw.len() > MAX_CONNECTION_ID_LEN || !raw.chars().all(valid_char) {
            return Err(InvalidConnectionId);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn default_id() -> Self {
        Self(DEFAULT_CONNECTION_ID.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ConnectionId {
    fn default() -> Self {
        Self::default_id()
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ConnectionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(ConnectionId::parse("default").is_ok());
        assert!(ConnectionId::parse("prod.eu_1-a").is_ok());
        assert!(ConnectionId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_unsafe_ids() {
        for bad in ["", "a b", "conn#1", "ü", "<script>", "a/b"] {
            assert_eq!(
                ConnectionId::parse(bad),
                Err(InvalidConnectionId),
                "{bad:?}"
            );
        }
        assert!(ConnectionId::parse(&"a".repeat(65)).is_err());
    }
}
