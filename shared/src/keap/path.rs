//! A caller's REST path, parsed so that only a path under Keap's REST API can exist
//! (parse, don't validate): keap-proxy turns the caller's `path` into a [`KeapPath`] before
//! anything else, and [`RestClient::exchange`](super::RestClient::exchange) joins it to the
//! configured `KEAP_API_BASE_URL`. No other string reaches a URL.
//!
//! The rules (docs/keap-proxy.md, "Path"):
//! - starts with `/v1/` or `/v2/` (lower case), at most [`MAX_PATH_BYTES`] bytes;
//! - every segment is one or more of `A-Z a-z 0-9 . _ ~ : -` or `%XX` (upper-case hex), so no
//!   `?`, `#`, `@`, `\`, space, control or non-ASCII byte appears raw;
//! - no escape decodes to an unreserved character (`%2E` would hide a dot segment, `%41` is just
//!   `A` written oddly), to `/ \ % ? # @` (`%2F` would add a segment, `%25` is double encoding),
//!   to a control or to a non-ASCII byte;
//! - no empty segment (`//`, a trailing `/`) and no `.` or `..` segment.
//!
//! What is left can only name a resource below the base: the URL parser has nothing to
//! normalise (no dot segment, no backslash, no escape it would decode).

use std::fmt;

/// Longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 2_048;

/// A path under Keap's REST API, like `/v1/contacts/12` or `/v2/contacts:applyTags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeapPath(String);

/// Why a path was refused. The message names the rule, never the path (it may hold anything).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with /v1/ or /v2/ (relative to Keap's REST base, e.g. /v1/contacts)")]
    Prefix,
    #[error("path is {0} bytes; at most 2048 are accepted")]
    TooLong(usize),
    #[error("path has an empty segment (// or a trailing /)")]
    EmptySegment,
    #[error("path has a . or .. segment")]
    DotSegment,
    #[error(
        "path segment {0} has a character outside A-Z a-z 0-9 . _ ~ : - and %XX escapes \
         (no ?, #, @, \\, space, control or non-ASCII; send query parameters in `query`)"
    )]
    Character(usize),
    #[error(
        "path segment {0} has a malformed escape (% must be followed by two upper-case hex digits)"
    )]
    MalformedEscape(usize),
    #[error(
        "path segment {0} has an escape of a character that must not be escaped (an unreserved \
         character, / \\ % ? # @, a control or a non-ASCII byte; no double encoding)"
    )]
    ForbiddenEscape(usize),
}

impl KeapPath {
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(raw.len()));
        }
        let rest = raw
            .strip_prefix("/v1/")
            .or_else(|| raw.strip_prefix("/v2/"))
            .ok_or(PathError::Prefix)?;
        for (index, segment) in rest.split('/').enumerate() {
            // Segment 1 is the first after the version.
            check_segment(index + 1, segment)?;
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `v1` or `v2`.
    pub fn version(&self) -> &str {
        &self.0[1..3]
    }

    /// The segments after the version.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0[4..].split('/')
    }

    /// REST Hooks (`/v1/hooks`, `/v1/hooks/{key}`, ...): Keap's answers carry `hookUrl`s.
    pub fn is_rest_hooks(&self) -> bool {
        self.version() == "v1" && self.segments().next() == Some("hooks")
    }

    /// For logs: every segment after the version that holds a digit or an escape is `{id}`
    /// (`/v1/contacts/{id}/tags`), so a log line names the endpoint, not the record.
    pub fn masked(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        out.push('/');
        out.push_str(self.version());
        for segment in self.segments() {
            out.push('/');
            if segment.bytes().any(|b| b.is_ascii_digit() || b == b'%') {
                out.push_str("{id}");
            } else {
                out.push_str(segment);
            }
        }
        out
    }
}

impl fmt::Display for KeapPath {
    /// The masked form: a path is displayed only in logs and messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

fn check_segment(index: usize, segment: &str) -> Result<(), PathError> {
    if segment.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(PathError::DotSegment);
    }
    let bytes = segment.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte == b'%' {
            let hex = bytes
                .get(at + 1..at + 3)
                .ok_or(PathError::MalformedEscape(index))?;
            let decoded = upper_hex(hex[0])
                .zip(upper_hex(hex[1]))
                .map(|(high, low)| (high << 4) | low)
                .ok_or(PathError::MalformedEscape(index))?;
            if !escapable(decoded) {
                return Err(PathError::ForbiddenEscape(index));
            }
            at += 3;
        } else if is_unreserved(byte) || byte == b':' {
            at += 1;
        } else {
            return Err(PathError::Character(index));
        }
    }
    Ok(())
}

fn upper_hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 unreserved.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// What an escape may stand for: printable ASCII that is neither unreserved nor one of
/// `/ \ % ? # @` (space, `:`, `,`, `+`, `=`, `!`, `$`, `&`, quotes, brackets, ...).
fn escapable(byte: u8) -> bool {
    (0x20..0x7f).contains(&byte)
        && !is_unreserved(byte)
        && !matches!(byte, b'/' | b'\\' | b'%' | b'?' | b'#' | b'@')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile paths: each must be refused (the integration test sends them through the real
    /// binary and checks that the sandbox saw nothing).
    const HOSTILE: &[&str] = &[
        "",
        "/",
        "/token",
        "/v1",
        "/v1/",
        "/v3/contacts",
        "/V1/contacts",
        "/V2/contacts",
        "v1/contacts",
        "http://other/",
        "https://api.infusionsoft.com/crm/rest/v1/contacts",
        "//other.example/v1/contacts",
        "/v1/../token",
        "/v1/./contacts",
        "/v1/contacts/..",
        "/v1/contacts/.",
        "/v1/contacts/../../../token",
        "/%2e%2e/token",
        "/v1/%2e%2e/token",
        "/v1/%2E%2E/token",
        "/v1/%2e./token",
        "/v1/.%2E/token",
        "/v1/a%2F..%2Ftoken",
        "/v1/a%2f..%2ftoken",
        "/v1/%252e%252e/",
        "/v1/%252e%252e/token",
        "/v1/%25",
        "/v1/contacts%3Femail=x",
        "/v1/contacts?email=x",
        "/v1/contacts#fragment",
        "/v1/contacts%23x",
        "/v1/user@other.example/x",
        "/v1/a%40b",
        "/v1/a\\..\\token",
        "/v1/a%5C..%5Ctoken",
        "/v1/a%5c..%5ctoken",
        "/v1//contacts",
        "/v1/contacts/",
        "/v1/contacts//12",
        "/v1/contacts 12",
        "/v1/contacts\t12",
        "/v1/contacts\n12",
        "/v1/contacts%0A12",
        "/v1/contacts%00",
        "/v1/contacts%7F",
        "/v1/contacts%C3%A9",
        "/v1/contacté",
        "/v1/contacts%2",
        "/v1/contacts%ZZ",
        "/v1/contacts%",
        "/v1/%41ccount/profile",
        "/v1/account%2Fprofile",
        "/v1/contacts;x=..",
        "/v1/contacts\u{0}",
        "/v1/\u{202e}stcatnoc",
        "/v1/contacts/12%2F..%2F..%2F..%2Ftoken",
    ];

    #[test]
    fn hostile_paths_are_refused() {
        assert!(HOSTILE.len() >= 40);
        for raw in HOSTILE {
            assert!(KeapPath::parse(raw).is_err(), "accepted {raw:?}");
        }
        let long = format!("/v1/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(KeapPath::parse(&long), Err(PathError::TooLong(long.len())));
    }

    #[test]
    fn legitimate_odd_paths_pass() {
        for raw in [
            "/v1/contacts",
            "/v1/account/profile",
            "/v2/contacts:applyTags",
            "/v2/tags/12/contacts:applyTags",
            "/v1/contacts/12/tags",
            "/v1/files/My%20File",
            "/v1/a%2Cb%3A%2B%3D%21",
            "/v1/...",
            "/v1/a.b~c_d-e",
            "/v1/hooks/event_keys",
        ] {
            let path = KeapPath::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(path.as_str(), raw);
        }
        let at_limit = format!("/v1/{}", "a".repeat(MAX_PATH_BYTES - 4));
        assert!(KeapPath::parse(&at_limit).is_ok());
    }

    #[test]
    fn errors_name_the_rule_not_the_path() {
        let error = KeapPath::parse("/v1/ada@example.com").unwrap_err();
        assert_eq!(error, PathError::Character(1));
        assert!(!error.to_string().contains("ada"));
        assert_eq!(
            KeapPath::parse("/v1/a/%2E"),
            Err(PathError::ForbiddenEscape(2))
        );
        assert_eq!(KeapPath::parse("/v1/a//b"), Err(PathError::EmptySegment));
        assert_eq!(KeapPath::parse("/v1/a/.."), Err(PathError::DotSegment));
    }

    #[test]
    fn logs_see_the_endpoint_not_the_record() {
        let path = KeapPath::parse("/v1/contacts/12/tags/7").unwrap();
        assert_eq!(path.masked(), "/v1/contacts/{id}/tags/{id}");
        assert_eq!(path.to_string(), "/v1/contacts/{id}/tags/{id}");
        let path = KeapPath::parse("/v2/contacts:applyTags").unwrap();
        assert_eq!(path.masked(), "/v2/contacts:applyTags");
        let path = KeapPath::parse("/v1/files/Ada%20Lovelace").unwrap();
        assert_eq!(path.masked(), "/v1/files/{id}");
    }

    #[test]
    fn rest_hooks_paths_are_recognised() {
        assert!(KeapPath::parse("/v1/hooks").unwrap().is_rest_hooks());
        assert!(
            KeapPath::parse("/v1/hooks/12/verify")
                .unwrap()
                .is_rest_hooks()
        );
        assert!(!KeapPath::parse("/v2/hooks").unwrap().is_rest_hooks());
        assert!(!KeapPath::parse("/v1/hooksy").unwrap().is_rest_hooks());
        assert!(
            !KeapPath::parse("/v1/contacts/hooks")
                .unwrap()
                .is_rest_hooks()
        );
    }
}
