//! The callback's query string, parsed strictly: bounded in size, every escape valid, no
//! control characters, and no repeated `state`, `code` or `error` (two values for one of them
//! is either a bug or an attempt to confuse whoever reads the first one).

use secrecy::SecretString;

/// Keap's redirect carries a code, a 64-character state and at most an error triple; 4 KiB is
/// several times that.
pub const MAX_QUERY_BYTES: usize = 4 * 1024;

#[derive(Default)]
pub(crate) struct CallbackQuery {
    pub state: Option<String>,
    pub code: Option<SecretString>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryError {
    Oversized,
    Malformed,
}

pub(crate) fn parse(raw: &str) -> Result<CallbackQuery, QueryError> {
    if raw.len() > MAX_QUERY_BYTES {
        return Err(QueryError::Oversized);
    }
    let mut state = Slot::default();
    let mut code = Slot::default();
    let mut error = Slot::default();
    for pair in raw.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name)?;
        // Decoded even when the name is ignored: garbage anywhere makes the request garbage.
        let value = decode(value)?;
        match name.as_str() {
            "state" => state.set(value)?,
            "code" => code.set(value)?,
            "error" => error.set(value)?,
            _ => {}
        }
    }
    Ok(CallbackQuery {
        state: state.value,
        code: code.value.map(SecretString::from),
        error: error.value,
    })
}

/// One parameter; Keap sends `state=` (empty) when no state was sent, so empty means absent.
#[derive(Default)]
struct Slot {
    seen: bool,
    value: Option<String>,
}

impl Slot {
    fn set(&mut self, value: String) -> Result<(), QueryError> {
        if self.seen {
            return Err(QueryError::Malformed);
        }
        self.seen = true;
        self.value = Some(value).filter(|v| !v.is_empty());
        Ok(())
    }
}

/// `application/x-www-form-urlencoded` decoding that refuses what lenient decoders repair: a
/// `%` without two hex digits, invalid UTF-8, control characters.
fn decode(raw: &str) -> Result<String, QueryError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                decoded.push(b' ');
                i += 1;
            }
            b'%' => {
                let high = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let low = bytes.get(i + 2).and_then(|b| hex_value(*b));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(QueryError::Malformed);
                };
                decoded.push(high << 4 | low);
                i += 3;
            }
            byte => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(decoded).map_err(|_| QueryError::Malformed)?;
    if text.chars().any(char::is_control) {
        return Err(QueryError::Malformed);
    }
    Ok(text)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn reads_keaps_success_and_denial_redirects() {
        let ok = parse("code=abc%2B1&state=s1").unwrap();
        assert_eq!(ok.code.unwrap().expose_secret(), "abc+1");
        assert_eq!(ok.state.as_deref(), Some("s1"));
        assert!(ok.error.is_none());

        let denied = parse(
            "state=&error=access_denied&error_description=User+denied+access+to+resource\
             &error_uri=https%3A%2F%2Fdeveloper.infusionsoft.com%2Fdocs%2Fread%2FGetting_Started_With_OAuth2",
        )
        .unwrap();
        assert_eq!(denied.error.as_deref(), Some("access_denied"));
        assert!(denied.state.is_none(), "an empty state is no state");
        assert!(parse("").unwrap().state.is_none());
    }

    #[test]
    fn refuses_garbage_and_repeats() {
        for bad in [
            "code=%zz&state=s",
            "code=%4",
            "state=%FF%FE",
            "state=a%00b",
            "x=%0A",
            "state=a&state=b",
            "code=a&code=b&state=s",
            "error=a&error=",
        ] {
            assert_eq!(parse(bad).err(), Some(QueryError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn refuses_oversized_queries() {
        let padding = "p".repeat(MAX_QUERY_BYTES);
        assert_eq!(
            parse(&format!("state=s&x={padding}")).err(),
            Some(QueryError::Oversized)
        );
        assert!(parse(&"p".repeat(MAX_QUERY_BYTES)).is_ok());
    }
}
