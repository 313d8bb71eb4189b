//! The public upsert request: parsed strictly and validated before any network call.
//!
//! Parsing reads the raw JSON (not an already-parsed value) so that a field given twice is an
//! error rather than "last one wins", and every error names the field's path. Messages never
//! quote a string the caller sent (it may be an email): serde's `string "..."` is replaced and
//! anything that looks like an email is redacted.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::error::UpsertError;
use crate::connection_id::ConnectionId;
use crate::keap::rest::safe_message;
use crate::redact;

/// SQS allows 256 KiB; a contact is a few hundred bytes. Anything near the limit is a mistake.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;
pub(crate) const MAX_EMAIL_CHARS: usize = 254;
pub(crate) const MAX_EMAIL_LOCAL_CHARS: usize = 64;
pub const MAX_NAME_CHARS: usize = 255;
pub(crate) const MAX_PHONE_CHARS: usize = 40;
pub(crate) const MIN_PHONE_DIGITS: usize = 3;
pub(crate) const MAX_CUSTOM_FIELDS: usize = 100;
pub(crate) const MAX_CUSTOM_FIELD_KEY_CHARS: usize = 255;
pub(crate) const MAX_CUSTOM_FIELD_VALUE_CHARS: usize = 10_000;
pub(crate) const MAX_TAGS: usize = 100;
pub(crate) const MAX_TAG_NAME_CHARS: usize = 255;
pub(crate) const MAX_OPT_IN_REASON_CHARS: usize = 255;
pub(crate) const MAX_ADDRESS_LINE_CHARS: usize = 255;
pub(crate) const MAX_POSTAL_CODE_CHARS: usize = 20;

/// `{"connection_id": "default", "contact": {...}, "match_on": "email"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpsertRequest {
    /// Which authorized Keap account; `"default"` when absent.
    #[serde(default)]
    pub connection_id: ConnectionId,
    pub contact: ContactInput,
    /// How Keap finds an existing contact; `email` when absent.
    #[serde(default)]
    pub match_on: MatchOn,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContactInput {
    /// Required: both match modes need it. Stored as Keap's `EMAIL1`.
    pub email: String,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    /// Stored as Keap's `PHONE1`.
    pub phone: Option<String>,
    /// Company name.
    pub company: Option<String>,
    /// Label (or numeric id) → value.
    #[serde(default)]
    pub custom_fields: CustomFields,
    /// Tag names (or numeric ids), applied after the upsert.
    #[serde(default)]
    pub tags: Vec<TagRef>,
    /// Keap's `opt_in_reason`: makes the email marketable (from unengaged/non-marketable
    /// states only; Keap cannot re-opt-in an address that unsubscribed).
    pub opt_in_reason: Option<String>,
    /// Keap's `lead_source_id` (a lead source's id in the account).
    pub lead_source_id: Option<i64>,
    /// Keap's `owner_id` (the id of the Keap user who owns the contact).
    pub owner_id: Option<i64>,
    /// Stored as Keap's `BILLING` address.
    pub address: Option<AddressInput>,
}

/// A postal address. Country and region are ISO codes, normalized to upper case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressInput {
    pub line1: Option<String>,
    pub line2: Option<String>,
    /// City or town.
    pub locality: Option<String>,
    /// ISO 3166-2 subdivision code, e.g. `US-CA`, `GB-LND`; needs `country_code`.
    pub region: Option<String>,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-3, e.g. `USA`, `GBR`.
    pub country_code: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MatchOn {
    /// Same email → same contact (Keap `duplicate_option: Email`).
    #[default]
    Email,
    /// Same email and same given and family name (Keap `EmailAndName`).
    EmailAndName,
}

/// How the caller named a custom field: a key of only digits is an id, anything else a label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum FieldKey {
    Id(i64),
    Label(String),
}

impl fmt::Display for FieldKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Label(label) => f.write_str(label),
        }
    }
}

/// The `custom_fields` object in the caller's order; a key given twice is an error.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CustomFields(pub Vec<(FieldKey, Value)>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TagRef {
    Id(i64),
    Name(String),
}

impl fmt::Display for TagRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

impl UpsertRequest {
    /// Parses and validates one request (a direct invocation's payload or an SQS body).
    pub fn parse(raw: &[u8]) -> Result<Self, UpsertError> {
        if raw.len() > MAX_REQUEST_BYTES {
            return Err(UpsertError::Validation(format!(
                "the request is {} bytes; at most {MAX_REQUEST_BYTES} are accepted",
                raw.len()
            )));
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Err(UpsertError::Validation(
                "the request is empty; expected a JSON object like \
                 {\"contact\": {\"email\": \"...\"}}"
                    .to_owned(),
            ));
        }
        check_objects(raw)?;
        let mut deserializer = serde_json::Deserializer::from_slice(raw);
        let mut request: UpsertRequest = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|error| UpsertError::Validation(describe(&error)))?;
        deserializer.end().map_err(|_| {
            UpsertError::Validation("the request has data after its JSON object".to_owned())
        })?;
        request.validate()?;
        Ok(request)
    }

    /// Checks what types alone cannot (syntax, lengths, counts) and normalizes the email.
    pub(crate) fn validate(&mut self) -> Result<(), UpsertError> {
        let contact = &mut self.contact;
        contact.email = contact.email.trim().to_owned();
        if let Some(problem) = email_problem(&contact.email) {
            return Err(invalid(format!(
                "contact.email is not a valid email address ({problem}): {}",
                redact::email(&contact.email)
            )));
        }
        for (path, value) in [
            ("contact.given_name", &contact.given_name),
            ("contact.family_name", &contact.family_name),
            ("contact.company", &contact.company),
        ] {
            if let Some(text) = value {
                check_text(path, text, MAX_NAME_CHARS)?;
            }
        }
        if let Some(phone) = &contact.phone {
            check_phone(phone)?;
        }
        if let Some(reason) = &contact.opt_in_reason {
            check_text("contact.opt_in_reason", reason, MAX_OPT_IN_REASON_CHARS)?;
        }
        for (path, id) in [
            ("contact.lead_source_id", contact.lead_source_id),
            ("contact.owner_id", contact.owner_id),
        ] {
            if id.is_some_and(|id| id <= 0) {
                return Err(invalid(format!("{path} must be a positive integer")));
            }
        }
        if let Some(address) = &mut contact.address {
            address.validate()?;
        }
        self.validate_custom_fields()?;
        self.validate_tags()
    }

    fn validate_custom_fields(&self) -> Result<(), UpsertError> {
        let fields = &self.contact.custom_fields.0;
        if fields.len() > MAX_CUSTOM_FIELDS {
            return Err(invalid(format!(
                "contact.custom_fields has {} entries; at most {MAX_CUSTOM_FIELDS} are accepted",
                fields.len()
            )));
        }
        for (key, value) in fields {
            let path = format!("contact.custom_fields.{}", safe_message(&key.to_string()));
            match value {
                Value::String(text) => {
                    if text.chars().count() > MAX_CUSTOM_FIELD_VALUE_CHARS {
                        return Err(invalid(format!(
                            "{path} is longer than {MAX_CUSTOM_FIELD_VALUE_CHARS} characters"
                        )));
                    }
                }
                Value::Number(_) | Value::Bool(_) | Value::Null => {}
                Value::Array(_) | Value::Object(_) => {
                    return Err(invalid(format!(
                        "{path} must be a string, number, boolean or null"
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_tags(&mut self) -> Result<(), UpsertError> {
        let tags = &mut self.contact.tags;
        if tags.len() > MAX_TAGS {
            return Err(invalid(format!(
                "contact.tags has {} entries; at most {MAX_TAGS} are accepted",
                tags.len()
            )));
        }
        for (index, tag) in tags.iter().enumerate() {
            if let TagRef::Name(name) = tag {
                check_text(&format!("contact.tags[{index}]"), name, MAX_TAG_NAME_CHARS)?;
            }
        }
        // The same tag twice is harmless; apply it once.
        let mut seen = std::collections::HashSet::new();
        tags.retain(|tag| seen.insert(tag.clone()));
        Ok(())
    }
}

impl AddressInput {
    /// Checks every part and normalizes the codes (trimmed, upper case).
    fn validate(&mut self) -> Result<(), UpsertError> {
        let parts = [
            ("line1", &self.line1),
            ("line2", &self.line2),
            ("locality", &self.locality),
            ("region", &self.region),
            ("postal_code", &self.postal_code),
            ("country_code", &self.country_code),
        ];
        if parts.iter().all(|(_, value)| value.is_none()) {
            return Err(invalid(
                "contact.address is empty; leave it out to keep Keap's address".to_owned(),
            ));
        }
        for (name, value) in parts {
            if let Some(text) = value {
                check_text(
                    &format!("contact.address.{name}"),
                    text,
                    MAX_ADDRESS_LINE_CHARS,
                )?;
            }
        }
        let normalize = |code: &mut Option<String>| {
            if let Some(text) = code {
                *text = text.trim().to_ascii_uppercase();
            }
        };
        normalize(&mut self.country_code);
        normalize(&mut self.region);
        if let Some(country) = &self.country_code
            && !(country.len() == 3 && country.chars().all(|c| c.is_ascii_uppercase()))
        {
            return Err(invalid(
                "contact.address.country_code must be an ISO 3166-1 alpha-3 code such as \
                 \"USA\", \"GBR\" or \"DEU\""
                    .to_owned(),
            ));
        }
        if let Some(region) = &self.region {
            if !is_subdivision_code(region) {
                return Err(invalid(
                    "contact.address.region must be an ISO 3166-2 subdivision code such as \
                     \"US-CA\" or \"GB-LND\""
                        .to_owned(),
                ));
            }
            // Keap: "country_code is required if region is specified".
            if self.country_code.is_none() {
                return Err(invalid(
                    "contact.address.region needs contact.address.country_code (Keap requires \
                     the country with a region)"
                        .to_owned(),
                ));
            }
        }
        if let Some(postal) = &mut self.postal_code {
            *postal = postal.trim().to_owned();
            let allowed = |c: char| c.is_ascii_alphanumeric() || c == ' ' || c == '-';
            if postal.chars().count() > MAX_POSTAL_CODE_CHARS || !postal.chars().all(allowed) {
                return Err(invalid(format!(
                    "contact.address.postal_code must be at most {MAX_POSTAL_CODE_CHARS} \
                     letters, digits, spaces or hyphens"
                )));
            }
            if self.country_code.as_deref() == Some("USA") && us_zip(postal).is_none() {
                return Err(invalid(
                    "contact.address.postal_code must be a US ZIP code (\"12345\" or \
                     \"12345-6789\") when country_code is \"USA\""
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// `CC-X`, `CC-XX` or `CC-XXX`: an ISO 3166-1 alpha-2 prefix and a subdivision of 1-3 letters
/// or digits.
fn is_subdivision_code(code: &str) -> bool {
    let Some((country, subdivision)) = code.split_once('-') else {
        return false;
    };
    country.len() == 2
        && country.chars().all(|c| c.is_ascii_uppercase())
        && (1..=3).contains(&subdivision.len())
        && subdivision
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// A US ZIP code as Keap stores it: (`zip_code`, `zip_four`).
pub fn us_zip(postal: &str) -> Option<(&str, Option<&str>)> {
    let (zip, four) = match postal.split_once('-') {
        Some((zip, four)) => (zip, Some(four)),
        None => (postal, None),
    };
    let digits = |text: &str, n: usize| text.len() == n && text.chars().all(|c| c.is_ascii_digit());
    (digits(zip, 5) && four.is_none_or(|four| digits(four, 4))).then_some((zip, four))
}

fn invalid(message: String) -> UpsertError {
    UpsertError::Validation(message)
}

fn check_text(path: &str, text: &str, max_chars: usize) -> Result<(), UpsertError> {
    if text.trim().is_empty() {
        return Err(invalid(format!(
            "{path} is empty; leave the field out to keep Keap's value"
        )));
    }
    if text.chars().count() > max_chars {
        return Err(invalid(format!(
            "{path} is longer than {max_chars} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(format!("{path} contains control characters")));
    }
    Ok(())
}

fn check_phone(phone: &str) -> Result<(), UpsertError> {
    check_text("contact.phone", phone, MAX_PHONE_CHARS)?;
    let allowed = |c: char| c.is_ascii_digit() || " +-().#*/".contains(c) || "xXeEtT".contains(c);
    let digits = phone.chars().filter(char::is_ascii_digit).count();
    if !phone.chars().all(allowed) || digits < MIN_PHONE_DIGITS {
        return Err(invalid(format!(
            "contact.phone is not a phone number: use digits, spaces and + - ( ) (at least \
             {MIN_PHONE_DIGITS} digits), e.g. \"+44 20 7946 0000\""
        )));
    }
    Ok(())
}

/// Why `email` is not an address Keap would store, if it is not.
pub(crate) fn email_problem(email: &str) -> Option<&'static str> {
    if email.is_empty() {
        return Some("it is empty");
    }
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Some("longer than 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it contains whitespace");
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Some("no @");
    };
    if local.contains('@') {
        return Some("more than one @");
    }
    if local.is_empty() || local.chars().count() > MAX_EMAIL_LOCAL_CHARS {
        return Some("the part before @ must be 1-64 characters");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Some("misplaced dot before @");
    }
    if local.chars().any(|c| "\"(),:;<>[\\]`".contains(c)) {
        return Some("characters not allowed before @");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Some("the domain has no dot");
    }
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if !labels.iter().all(label_ok) {
        return Some("the domain is malformed");
    }
    None
}

/// serde accepts a JSON array for a struct (fields by position); a request and its contact
/// must be objects, so `{"contact": ["a@b.co"]}` is refused rather than guessed at.
fn check_objects(raw: &[u8]) -> Result<(), UpsertError> {
    let Ok(value) = serde_json::from_slice::<Value>(raw) else {
        // Not JSON at all: the typed parse names the position.
        return Ok(());
    };
    let Some(request) = value.as_object() else {
        return Err(invalid(format!(
            "the request must be a JSON object, not {}; e.g. {{\"contact\": {{\"email\": \"...\"}}}}",
            json_kind(&value)
        )));
    };
    match request.get("contact") {
        Some(contact) if !contact.is_object() => Err(invalid(format!(
            "contact: must be a JSON object like {{\"email\": \"...\"}}, not {}",
            json_kind(contact)
        ))),
        _ => Ok(()),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A caller-facing description of a deserialization error: the field's path and what was
/// wrong, never the value itself.
fn describe(error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    use serde_json::error::Category;
    let inner = error.inner();
    let position = format!("line {} column {}", inner.line(), inner.column());
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            format!("the request is not valid JSON (at {position})")
        }
        Category::Data => {
            let path = error.path().to_string();
            let message = sanitize(&inner.to_string());
            if path == "." {
                format!("the request: {message}")
            } else {
                format!("{}: {message}", safe_message(&path))
            }
        }
    }
}

/// Removes serde's position suffix and every quoted string value; redacts emails.
fn sanitize(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find("string \"") {
        out.push_str(&rest[..start]);
        out.push_str("a string");
        let quoted = &rest[start + "string \"".len()..];
        let mut escaped = false;
        let mut end = quoted.len();
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = i + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &quoted[end.min(quoted.len())..];
    }
    out.push_str(rest);
    safe_message(&out)
}

impl<'de> Deserialize<'de> for CustomFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;

        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = CustomFields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of custom field label (or id) to value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CustomFields, A::Error> {
                let mut fields: Vec<(FieldKey, Value)> = Vec::new();
                while let Some(raw_key) = map.next_key::<String>()? {
                    let key = field_key(&raw_key).map_err(de::Error::custom)?;
                    if fields.iter().any(|(existing, _)| *existing == key) {
                        return Err(de::Error::custom(format!(
                            "custom field `{key}` is given more than once"
                        )));
                    }
                    fields.push((key, map.next_value()?));
                }
                Ok(CustomFields(fields))
            }
        }

        deserializer.deserialize_map(FieldsVisitor)
    }
}

fn field_key(raw: &str) -> Result<FieldKey, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("a custom field key is empty; use the field's label or id".to_owned());
    }
    if trimmed.chars().count() > MAX_CUSTOM_FIELD_KEY_CHARS {
        return Err(format!(
            "a custom field key is longer than {MAX_CUSTOM_FIELD_KEY_CHARS} characters"
        ));
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return match trimmed.parse::<i64>() {
            Ok(id) if id > 0 => Ok(FieldKey::Id(id)),
            _ => Err(format!("custom field id {trimmed} is not a valid id")),
        };
    }
    Ok(FieldKey::Label(raw.to_owned()))
}

impl<'de> Deserialize<'de> for TagRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TagVisitor;

        impl Visitor<'_> for TagVisitor {
            type Value = TagRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tag name (string) or a tag id (positive integer)")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<TagRef, E> {
                Ok(TagRef::Name(name.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, id: u64) -> Result<TagRef, E> {
                match i64::try_from(id) {
                    Ok(id) if id > 0 => Ok(TagRef::Id(id)),
                    _ => Err(E::custom("a tag id must be a positive integer")),
                }
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TagRef, E> {
                Err(E::custom("a tag id must be a positive integer"))
            }
        }

        deserializer.deserialize_any(TagVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<UpsertRequest, String> {
        UpsertRequest::parse(raw.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_example_parses() {
        let request = parse(
            r#"{ "connection_id": "default",
                 "contact": { "email": " ada@example.com ", "given_name": "Ada",
                              "family_name": "Lovelace", "phone": "+44 20 7946 0000",
                              "company": "Analytical Engines",
                              "custom_fields": { "Favorite Color": "blue", "12": 3 },
                              "tags": ["buttonpushed", 45, "buttonpushed"] },
                 "match_on": "email_and_name" }"#,
        )
        .unwrap();
        assert_eq!(request.contact.email, "ada@example.com");
        assert_eq!(request.match_on, MatchOn::EmailAndName);
        assert_eq!(
            request.contact.custom_fields.0,
            vec![
                (
                    FieldKey::Label("Favorite Color".into()),
                    Value::from("blue")
                ),
                (FieldKey::Id(12), Value::from(3)),
            ]
        );
        assert_eq!(
            request.contact.tags,
            vec![TagRef::Name("buttonpushed".into()), TagRef::Id(45)]
        );
        let minimal = parse(r#"{"contact": {"email": "a@b.co"}}"#).unwrap();
        assert_eq!(minimal.connection_id.as_str(), "default");
        assert_eq!(minimal.match_on, MatchOn::Email);
    }

    #[test]
    fn errors_name_the_field_and_never_the_value() {
        let error = parse(r#"{"contact": {"email": "ada@example.com", "emial": 1}}"#).unwrap_err();
        assert!(
            error.contains("emial") && error.contains("contact"),
            "{error}"
        );

        let error =
            parse(r#"{"contact": {"email": "ada@example.com", "email": "x@y.z"}}"#).unwrap_err();
        assert!(error.contains("duplicate field `email`"), "{error}");

        let error =
            parse(r#"{"contact": {"email": "ada@example.com", "phone": 5551234}}"#).unwrap_err();
        assert!(error.contains("contact.phone"), "{error}");

        let error = parse(r#"{"contact": {"email": ["ada@example.com"]}}"#).unwrap_err();
        assert!(error.contains("contact.email"), "{error}");

        let error =
            parse(r#"{"contact": {"email": "ada@example.com", "given_name": 7}}"#).unwrap_err();
        assert!(error.contains("contact.given_name"), "{error}");

        let error =
            parse(r#"{"contact": {"email": 7}, "match_on": "ada@example.com"}"#).unwrap_err();
        assert!(!error.contains("ada@example.com"), "{error}");

        let error = parse(r#"{"contact": ["ada@example.com"]}"#).unwrap_err();
        assert!(
            error.starts_with("contact: must be a JSON object"),
            "{error}"
        );
        let error = parse(r#"[{"email": "ada@example.com"}]"#).unwrap_err();
        assert!(error.contains("must be a JSON object"), "{error}");

        let error = parse(r#"{"contact": {"email": "ada@@example.com"}}"#).unwrap_err();
        assert!(!error.contains("ada@"), "{error}");

        let error = parse(
            r#"{"contact": {"email": "ada@example.com", "tags": ["a", "ada@example.com", {}]}}"#,
        )
        .unwrap_err();
        assert!(
            error.contains("contact.tags[2]") && !error.contains("ada@"),
            "{error}"
        );
    }

    #[test]
    fn marketing_fields_are_validated_naming_the_field() {
        let request = parse(
            r#"{"contact": {"email": "a@b.co", "opt_in_reason": "Signed up on the form",
                "lead_source_id": 7, "owner_id": 3,
                "address": {"line1": "1 Main St", "locality": "Springfield", "region": "us-il",
                            "postal_code": "62701-1234", "country_code": "usa"}}}"#,
        )
        .unwrap();
        let address = request.contact.address.unwrap();
        assert_eq!(address.region.as_deref(), Some("US-IL"));
        assert_eq!(address.country_code.as_deref(), Some("USA"));
        for (body, field) in [
            (r#""opt_in_reason": """#, "contact.opt_in_reason"),
            (r#""opt_in_reason": 5"#, "contact.opt_in_reason"),
            (r#""lead_source_id": 0"#, "contact.lead_source_id"),
            (r#""lead_source_id": "7""#, "contact.lead_source_id"),
            (r#""owner_id": -2"#, "contact.owner_id"),
            (r#""owner_id": 1.5"#, "contact.owner_id"),
            (r#""address": {}"#, "contact.address"),
            (
                r#""address": {"country_code": "US"}"#,
                "contact.address.country_code",
            ),
            (
                r#""address": {"region": "Illinois", "country_code": "USA"}"#,
                "contact.address.region",
            ),
            (
                r#""address": {"region": "US-IL"}"#,
                "contact.address.region",
            ),
            (
                r#""address": {"postal_code": "6270", "country_code": "USA"}"#,
                "contact.address.postal_code",
            ),
            (
                r#""address": {"postal_code": "<b>"}"#,
                "contact.address.postal_code",
            ),
            (r#""address": {"city": "Springfield"}"#, "contact.address"),
            (r#""address": "1 Main St""#, "contact.address"),
        ] {
            let error =
                parse(&format!(r#"{{"contact": {{"email": "a@b.co", {body}}}}}"#)).unwrap_err();
            assert!(error.contains(field), "{body}: {error}");
        }
        let opt_in = "x".repeat(256);
        let error = parse(&format!(
            r#"{{"contact": {{"email": "a@b.co", "opt_in_reason": "{opt_in}"}}}}"#
        ))
        .unwrap_err();
        assert!(error.contains("contact.opt_in_reason"), "{error}");
    }

    #[test]
    fn sanitize_drops_quoted_values() {
        assert_eq!(
            sanitize(
                r#"invalid type: string "ada \"x\" lovelace", expected u64 at line 1 column 9"#
            ),
            "invalid type: a string, expected u64"
        );
        assert_eq!(
            sanitize("unknown field `ada@example.com`, expected `email`"),
            "unknown field `a***@example.com`, expected `email`"
        );
    }

    #[test]
    fn email_syntax() {
        for good in ["a@b.co", "ada.lovelace+keap@example.co.uk", "x@münchen.de"] {
            assert_eq!(email_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
            "a@b@c.com",
            "a@.example.com",
            "a@example..com",
            "a@-x.com",
            ".a@example.com",
            "a..b@example.com",
            "a(b)@example.com",
        ] {
            assert!(email_problem(bad).is_some(), "{bad}");
        }
        assert!(email_problem(&format!("{}@example.com", "a".repeat(65))).is_some());
    }
}
