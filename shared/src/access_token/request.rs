//! `{"connection_id": "default", "min_valid_secs": 300}`, or, to report a token Keap refused,
//! `{"connection_id": "default", "rejected_generation": 7}`. Any other field, or a value of the
//! wrong type or range, is a `ValidationError` naming the field, never quoting the value.

use serde_json::{Map, Value};

use super::error::AccessTokenError;
use crate::connection_id::ConnectionId;

/// Without `min_valid_secs`, the token handed out is valid for at least 5 minutes.
pub const DEFAULT_MIN_VALID_SECS: u64 = 300;
/// At most 6 hours: Keap's tokens live 24 h and the refresher renews them 6 h before expiry
/// (`KEAPALIVE_REFRESH_WINDOW_SECS`), so asking for more would rotate the grant on every call.
pub const MAX_MIN_VALID_SECS: u64 = 6 * 3600;
const FIELDS: [&str; 3] = ["connection_id", "min_valid_secs", "rejected_generation"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRequest {
    pub connection_id: ConnectionId,
    pub min_valid_secs: u64,
    /// The `generation` of a token Keap answered 401 for, as the caller was given it.
    pub rejected_generation: Option<u64>,
}

impl AccessTokenRequest {
    pub fn parse(raw: &[u8]) -> Result<Self, AccessTokenError> {
        let object: Map<String, Value> = serde_json::from_slice(raw).map_err(|_| {
            invalid("the request must be a JSON object like {\"connection_id\": \"default\"}")
        })?;
        let mut request = Self {
            connection_id: ConnectionId::default(),
            min_valid_secs: DEFAULT_MIN_VALID_SECS,
            rejected_generation: None,
        };
        for (field, value) in object {
            match field.as_str() {
                "connection_id" => {
                    let raw = value
                        .as_str()
                        .ok_or_else(|| invalid("connection_id: must be a string"))?;
                    request.connection_id =
                        ConnectionId::parse(raw).map_err(|e| invalid(e.to_string()))?;
                }
                "min_valid_secs" => {
                    request.min_valid_secs = value
                        .as_u64()
                        .filter(|secs| (1..=MAX_MIN_VALID_SECS).contains(secs))
                        .ok_or_else(|| {
                            invalid(format!(
                                "min_valid_secs: must be a whole number of seconds from 1 to \
                                 {MAX_MIN_VALID_SECS} (6 hours)"
                            ))
                        })?;
                }
                "rejected_generation" => {
                    request.rejected_generation = Some(value.as_u64().ok_or_else(|| {
                        invalid(
                            "rejected_generation: must be the generation (a whole number) the \
                             rejected token came with",
                        )
                    })?);
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown field {}: the fields are {}",
                        printable(&field),
                        FIELDS.join(", ")
                    )));
                }
            }
        }
        Ok(request)
    }
}

fn invalid(message: impl Into<String>) -> AccessTokenError {
    AccessTokenError::Validation(message.into())
}

/// A field name as sent, if it is short and plain; it is the caller's own key, not a value.
fn printable(field: &str) -> String {
    if field.len() <= 40 && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!("`{field}`")
    } else {
        "(a field name that is not plain)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<AccessTokenRequest, String> {
        AccessTokenRequest::parse(raw.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_fields() {
        let request = parse("{}").unwrap();
        assert_eq!(request.connection_id.as_str(), "default");
        assert_eq!(request.min_valid_secs, 300);
        assert_eq!(request.rejected_generation, None);
        let request = parse(
            r#"{"connection_id": "sales", "min_valid_secs": 21600, "rejected_generation": 7}"#,
        )
        .unwrap();
        assert_eq!(request.connection_id.as_str(), "sales");
        assert_eq!(request.min_valid_secs, 21_600);
        assert_eq!(request.rejected_generation, Some(7));
    }

    #[test]
    fn out_of_range_wrong_types_and_unknown_fields_are_refused_without_quoting_values() {
        for (raw, names) in [
            (r#"{"min_valid_secs": 0}"#, "min_valid_secs"),
            (r#"{"min_valid_secs": 21601}"#, "min_valid_secs"),
            (r#"{"min_valid_secs": "secret-300"}"#, "min_valid_secs"),
            (r#"{"min_valid_secs": 1.5}"#, "min_valid_secs"),
            (r#"{"rejected_generation": -1}"#, "rejected_generation"),
            (
                r#"{"rejected_generation": "secret-7"}"#,
                "rejected_generation",
            ),
            (r#"{"connection_id": 7}"#, "connection_id"),
            (r#"{"access_token": "secret-token"}"#, "access_token"),
        ] {
            let error = parse(raw).unwrap_err();
            assert!(error.contains(names), "{raw}: {error}");
            assert!(!error.contains("secret"), "{raw}: {error}");
        }
        assert!(parse("[]").is_err());
        assert!(parse("not json").is_err());
    }
}
