//! The keap-proxy request, parsed strictly before any network call:
//! `{"connection_id": "default", "method": "GET", "path": "/v1/contacts",
//!   "query": {"email": "ada@example.com"}, "body": {...}, "retry": true}`.
//!
//! Messages name the field and the rule, never a value the caller sent (a query value or a
//! body may hold an email, a path anything). A field given twice is an error, not "last one
//! wins"; an unknown field (`headers` included: the proxy sets every header) is an error.

use std::collections::BTreeSet;
use std::fmt;

use reqwest::Method;
use serde::Deserializer;
use serde::de::{self, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::ProxyError;
use crate::connection_id::ConnectionId;
use crate::keap::{KeapCall, KeapPath};

/// Longest encoded query string, in bytes.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Longest body, as compact JSON, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The request fields, in the order the documentation lists them.
const FIELDS: [&str; 6] = ["connection_id", "method", "path", "query", "body", "retry"];

/// A request every rule has passed.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    pub connection_id: ConnectionId,
    pub call: KeapCall,
    /// Re-send after a 5xx or a lost answer (GET, PUT and DELETE only); `true` when absent.
    pub retry: bool,
}

impl ProxyRequest {
    pub fn parse(raw: &[u8]) -> Result<Self, ProxyError> {
        let fields = top_level_fields(raw)?;
        let mut connection_id = None;
        let mut method = None;
        let mut path = None;
        let mut query = Vec::new();
        let mut body = None;
        let mut retry = true;
        for (name, raw_value) in &fields {
            let value: Value = serde_json::from_str(raw_value.get())
                .map_err(|_| invalid(format!("{name}: not valid JSON")))?;
            match name.as_str() {
                "connection_id" => connection_id = Some(parse_connection_id(&value)?),
                "method" => method = Some(parse_method(&value)?),
                "path" => path = Some(parse_path(&value)?),
                "query" => query = parse_query(&value)?,
                "body" => body = parse_body(&value)?,
                "retry" => {
                    retry = value.as_bool().ok_or_else(|| {
                        invalid(format!(
                            "retry: must be true or false, not {}",
                            kind(&value)
                        ))
                    })?;
                }
                "headers" => {
                    return Err(invalid(
                        "headers: not accepted; the proxy sets the credential, Accept and \
                         Content-Type itself"
                            .to_owned(),
                    ));
                }
                other => {
                    return Err(invalid(format!(
                        "unknown field `{}`; expected {}",
                        printable(other),
                        FIELDS.join(", ")
                    )));
                }
            }
        }
        let method = method.ok_or_else(|| {
            invalid("method: required (GET, POST, PUT, PATCH or DELETE)".to_owned())
        })?;
        let path = path.ok_or_else(|| invalid("path: required, e.g. /v1/contacts".to_owned()))?;
        if method == Method::GET && body.is_some() {
            return Err(invalid(
                "body: a GET carries no body; put its parameters in `query`".to_owned(),
            ));
        }
        Ok(Self {
            connection_id: connection_id.unwrap_or_default(),
            call: KeapCall {
                method,
                path,
                query,
                body,
            },
            retry,
        })
    }
}

fn invalid(message: String) -> ProxyError {
    ProxyError::Validation(message)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A name the caller chose (a field, a query parameter), safe to quote: at most 64
/// characters of printable ASCII, else a description.
fn printable(name: &str) -> String {
    if name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic()) && !name.contains('@') {
        name.to_owned()
    } else {
        format!("(a name of {} bytes)", name.len())
    }
}

fn parse_connection_id(value: &Value) -> Result<ConnectionId, ProxyError> {
    let raw = value.as_str().ok_or_else(|| {
        invalid(format!(
            "connection_id: must be a string, not {}",
            kind(value)
        ))
    })?;
    ConnectionId::parse(raw).map_err(|e| invalid(e.to_string()))
}

fn parse_method(value: &Value) -> Result<Method, ProxyError> {
    match value.as_str() {
        Some("GET") => Ok(Method::GET),
        Some("POST") => Ok(Method::POST),
        Some("PUT") => Ok(Method::PUT),
        Some("PATCH") => Ok(Method::PATCH),
        Some("DELETE") => Ok(Method::DELETE),
        _ => Err(invalid(
            "method: must be one of GET, POST, PUT, PATCH, DELETE (upper case)".to_owned(),
        )),
    }
}

fn parse_path(value: &Value) -> Result<KeapPath, ProxyError> {
    let raw = value.as_str().ok_or_else(|| {
        invalid(format!(
            "path: must be a string like /v1/contacts, not {}",
            kind(value)
        ))
    })?;
    KeapPath::parse(raw).map_err(|e| invalid(e.to_string()))
}

/// A flat object of strings or arrays of strings; an array repeats the parameter
/// (`{"ids": ["1", "2"]}` → `ids=1&ids=2`).
fn parse_query(value: &Value) -> Result<Vec<(String, String)>, ProxyError> {
    let object = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Object(object) => object,
        other => {
            return Err(invalid(format!(
                "query: must be an object of strings (or arrays of strings), not {}",
                kind(other)
            )));
        }
    };
    let mut pairs = Vec::new();
    for (name, value) in object {
        if name.is_empty() {
            return Err(invalid("query: a parameter name is empty".to_owned()));
        }
        let wrong = || {
            invalid(format!(
                "query.{}: must be a string or an array of strings (write numbers and booleans \
                 as strings, e.g. \"10\")",
                printable(name)
            ))
        };
        match value {
            Value::String(s) => pairs.push((name.clone(), s.clone())),
            Value::Array(items) => {
                for item in items {
                    pairs.push((name.clone(), item.as_str().ok_or_else(wrong)?.to_owned()));
                }
            }
            _ => return Err(wrong()),
        }
    }
    let encoded = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter())
        .finish();
    if encoded.len() > MAX_QUERY_BYTES {
        return Err(invalid(format!(
            "query: {} bytes encoded; at most {MAX_QUERY_BYTES} are accepted",
            encoded.len()
        )));
    }
    Ok(pairs)
}

/// Any JSON, sent as compact JSON; `null` is no body.
fn parse_body(value: &Value) -> Result<Option<Vec<u8>>, ProxyError> {
    if value.is_null() {
        return Ok(None);
    }
    let bytes = serde_json::to_vec(value)
        .map_err(|_| invalid("body: could not be encoded as JSON".to_owned()))?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(invalid(format!(
            "body: {} bytes as JSON; at most {MAX_BODY_BYTES} are accepted",
            bytes.len()
        )));
    }
    Ok(Some(bytes))
}

/// The top-level object's fields in order, each once, values unparsed.
fn top_level_fields(raw: &[u8]) -> Result<Vec<(String, Box<RawValue>)>, ProxyError> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, Box<RawValue>)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = BTreeSet::new();
            let mut fields = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                if !seen.insert(name.clone()) {
                    return Err(de::Error::custom(format!(
                        "field `{}` is given twice",
                        printable(&name)
                    )));
                }
                fields.push((name, map.next_value::<Box<RawValue>>()?));
            }
            Ok(fields)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let fields = deserializer.deserialize_map(Fields).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data if e.to_string().contains("given twice") => {
                let message = e.to_string();
                let cut = message.find(" at line ").unwrap_or(message.len());
                invalid(format!("the request: {}", &message[..cut]))
            }
            Category::Data => invalid(
                "the request must be a JSON object like {\"method\": \"GET\", \"path\": \
                 \"/v1/contacts\"}"
                    .to_owned(),
            ),
            _ => invalid(format!(
                "the request is not valid JSON (at line {} column {})",
                e.line(),
                e.column()
            )),
        }
    })?;
    deserializer
        .end()
        .map_err(|_| invalid("the request has data after its JSON object".to_owned()))?;
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<ProxyRequest, String> {
        ProxyRequest::parse(raw.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_example_parses() {
        let request = parse(
            r#"{"connection_id": "default", "method": "GET", "path": "/v1/contacts",
                "query": {"email": "ada@example.com", "ids": ["1", "2"]}, "retry": true}"#,
        )
        .unwrap();
        assert_eq!(request.connection_id.as_str(), "default");
        assert_eq!(request.call.method, Method::GET);
        assert_eq!(request.call.path.as_str(), "/v1/contacts");
        assert_eq!(
            request.call.query,
            vec![
                ("email".to_owned(), "ada@example.com".to_owned()),
                ("ids".to_owned(), "1".to_owned()),
                ("ids".to_owned(), "2".to_owned()),
            ]
        );
        assert!(request.retry);
        assert!(request.call.body.is_none());

        let request = parse(
            r#"{"method": "PUT", "path": "/v1/contacts", "body": {"given_name": "Ada"},
                "retry": false}"#,
        )
        .unwrap();
        assert_eq!(request.connection_id.as_str(), "default");
        assert_eq!(
            request.call.body.as_deref(),
            Some(&br#"{"given_name":"Ada"}"#[..])
        );
        assert!(!request.retry);
    }

    #[test]
    fn only_the_five_methods_pass() {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let body = if method == "GET" {
                ""
            } else {
                r#", "body": {}"#
            };
            parse(&format!(
                r#"{{"method": "{method}", "path": "/v1/x"{body}}}"#
            ))
            .unwrap();
        }
        for method in [
            "HEAD", "OPTIONS", "TRACE", "CONNECT", "get", "Get", "", "GET ",
        ] {
            let error =
                parse(&format!(r#"{{"method": "{method}", "path": "/v1/x"}}"#)).unwrap_err();
            assert!(error.starts_with("method:"), "{method}: {error}");
        }
        assert!(parse(r#"{"method": 1, "path": "/v1/x"}"#).is_err());
        assert!(
            parse(r#"{"path": "/v1/x"}"#)
                .unwrap_err()
                .starts_with("method:")
        );
        assert!(
            parse(r#"{"method": "GET"}"#)
                .unwrap_err()
                .starts_with("path:")
        );
    }

    /// Hostile or malformed requests: each is a `ValidationError` and quotes nothing sent.
    #[test]
    fn hostile_requests_are_refused_without_quoting_them() {
        let cases = [
            r#"{"method": "GET", "path": "/v1/x", "headers": {"Authorization": "Bearer secret-ada"}}"#,
            r#"{"method": "GET", "path": "/v1/x", "Headers": {}}"#,
            r#"{"method": "GET", "path": "/v1/x", "url": "http://other/"}"#,
            r#"{"method": "GET", "path": "/v1/x", "host": "other"}"#,
            r#"{"method": "GET", "path": "/v1/x", "base_url": "http://other/"}"#,
            r#"{"method": "GET", "path": "/v1/x", "path": "/token"}"#,
            r#"{"method": "GET", "path": "/v1/x", "query": {"email": 1}}"#,
            r#"{"method": "GET", "path": "/v1/x", "query": {"email": {"nested": "ada@example.com"}}}"#,
            r#"{"method": "GET", "path": "/v1/x", "query": {"ids": ["1", 2]}}"#,
            r#"{"method": "GET", "path": "/v1/x", "query": {"ids": [["ada@example.com"]]}}"#,
            r#"{"method": "GET", "path": "/v1/x", "query": {"": "ada@example.com"}}"#,
            r#"{"method": "GET", "path": "/v1/x", "query": "email=ada@example.com"}"#,
            r#"{"method": "GET", "path": "/v1/x", "query": ["email", "ada@example.com"]}"#,
            r#"{"method": "GET", "path": "/v1/x", "body": {"email": "ada@example.com"}}"#,
            r#"{"method": "GET", "path": "/v1/x", "retry": "yes"}"#,
            r#"{"method": "GET", "path": "/v1/x", "connection_id": "../other"}"#,
            r#"{"method": "GET", "path": "/v1/x", "connection_id": 7}"#,
            r#"{"method": "GET", "path": "/v1/x?email=ada@example.com"}"#,
            r#"{"method": "GET", "path": 7}"#,
            r#"["GET", "/v1/x"]"#,
            r#""ada@example.com""#,
            r#"{"method": "GET", "path": "/v1/x"} trailing"#,
            r#"{"method": "GET", "path": "/v1/x""#,
            "",
        ];
        for case in cases {
            let error = parse(case).unwrap_err();
            assert!(!error.contains("ada"), "{case}: {error}");
            assert!(!error.contains("secret"), "{case}: {error}");
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let long = "x".repeat(MAX_QUERY_BYTES);
        let error = parse(&format!(
            r#"{{"method": "GET", "path": "/v1/x", "query": {{"q": "{long}"}}}}"#
        ))
        .unwrap_err();
        assert!(error.starts_with("query:"), "{error}");
        let fits = "x".repeat(MAX_QUERY_BYTES - 2);
        parse(&format!(
            r#"{{"method": "GET", "path": "/v1/x", "query": {{"q": "{fits}"}}}}"#
        ))
        .unwrap();

        let big = "x".repeat(MAX_BODY_BYTES);
        let error = parse(&format!(
            r#"{{"method": "POST", "path": "/v1/x", "body": "{big}"}}"#
        ))
        .unwrap_err();
        assert!(error.starts_with("body:"), "{error}");
        let fits = "x".repeat(MAX_BODY_BYTES - 2);
        parse(&format!(
            r#"{{"method": "POST", "path": "/v1/x", "body": "{fits}"}}"#
        ))
        .unwrap();
    }

    #[test]
    fn a_null_body_or_query_is_none() {
        let request =
            parse(r#"{"method": "DELETE", "path": "/v1/x", "body": null, "query": null}"#).unwrap();
        assert!(request.call.body.is_none());
        assert!(request.call.query.is_empty());
        let request = parse(r#"{"method": "POST", "path": "/v1/x", "body": [1, "a"]}"#).unwrap();
        assert_eq!(request.call.body.as_deref(), Some(&br#"[1,"a"]"#[..]));
    }
}
