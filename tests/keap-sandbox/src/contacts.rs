//! Keap v1 contacts: the strict request-shape checks of `PUT /contacts`, duplicate matching,
//! merge-on-update, and the JSON Keap returns for a contact.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::state::{AppData, State};

/// Keap's exact message when the body does not deserialize into its request type.
pub(crate) const SHAPE_ERROR_MESSAGE: &str = "Input could not be converted to a valid request";
const MAX_NAME_CHARS: usize = 255;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Answered with [`SHAPE_ERROR_MESSAGE`].
    Shape,
    /// A well-formed request that Keap refuses, with its own message.
    Semantic(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DuplicateOption {
    Email,
    EmailAndName,
    EmailAndNameAndCompany,
}

const STRING_PROPERTIES: &[&str] = &[
    "given_name",
    "family_name",
    "middle_name",
    "job_title",
    "notes",
    "opt_in_reason",
    "preferred_locale",
    "preferred_name",
    "prefix",
    "suffix",
    "time_zone",
    "website",
    "birthday",
    "contact_type",
];
const INTEGER_PROPERTIES: &[&str] = &["owner_id", "lead_source_id"];
const SOURCE_TYPES: &[&str] = &[
    "WEBFORM",
    "LANDINGPAGE",
    "IMPORT",
    "MANUAL",
    "API",
    "OTHER",
    "UNKNOWN",
];
const EMAIL_FIELDS: &[&str] = &["EMAIL1", "EMAIL2", "EMAIL3"];
const PHONE_FIELDS: &[&str] = &["PHONE1", "PHONE2", "PHONE3", "PHONE4", "PHONE5"];
const FAX_FIELDS: &[&str] = &["FAX1", "FAX2"];
const ADDRESS_FIELDS: &[&str] = &["BILLING", "SHIPPING", "OTHER"];
const ADDRESS_PROPERTIES: &[&str] = &[
    "field",
    "line1",
    "line2",
    "locality",
    "region",
    "postal_code",
    "zip_code",
    "zip_four",
    "country_code",
];

/// A validated `PUT /contacts` body.
pub(crate) struct Upsert {
    duplicate_option: Option<DuplicateOption>,
    given_name: Option<String>,
    family_name: Option<String>,
    email_addresses: Vec<(String, Value)>,
    phone_numbers: Vec<(String, Value)>,
    fax_numbers: Vec<(String, Value)>,
    addresses: Vec<(String, Value)>,
    custom_fields: Vec<(i64, Value)>,
    company: Option<Value>,
    /// Other known properties, stored and returned verbatim.
    other: Map<String, Value>,
}

pub(crate) struct Contact {
    pub id: i64,
    given_name: Option<String>,
    family_name: Option<String>,
    email_addresses: BTreeMap<String, Value>,
    phone_numbers: BTreeMap<String, Value>,
    fax_numbers: BTreeMap<String, Value>,
    addresses: BTreeMap<String, Value>,
    custom_fields: BTreeMap<i64, Value>,
    pub tag_ids: BTreeSet<i64>,
    company: Option<Value>,
    other: Map<String, Value>,
    date_created: String,
    pub last_updated: String,
}

impl Contact {
    fn email1(&self) -> Option<&str> {
        self.email_addresses
            .get("EMAIL1")
            .and_then(|e| e.get("email"))
            .and_then(Value::as_str)
    }

    fn company_name(&self) -> Option<&str> {
        company_name(self.company.as_ref())
    }

    /// Keap leaves custom fields out of `GET /contacts/{id}` unless asked for them.
    pub(crate) fn to_json(&self, with_custom_fields: bool) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        if let Some(name) = &self.given_name {
            out.insert("given_name".into(), json!(name));
        }
        if let Some(name) = &self.family_name {
            out.insert("family_name".into(), json!(name));
        }
        out.insert(
            "email_addresses".into(),
            Value::Array(self.email_addresses.values().cloned().collect()),
        );
        out.insert(
            "phone_numbers".into(),
            Value::Array(self.phone_numbers.values().cloned().collect()),
        );
        if !self.fax_numbers.is_empty() {
            out.insert(
                "fax_numbers".into(),
                Value::Array(self.fax_numbers.values().cloned().collect()),
            );
        }
        out.insert(
            "addresses".into(),
            Value::Array(self.addresses.values().cloned().collect()),
        );
        if with_custom_fields {
            out.insert(
                "custom_fields".into(),
                Value::Array(
                    self.custom_fields
                        .iter()
                        .map(|(id, content)| json!({"id": id, "content": content}))
                        .collect(),
                ),
            );
        }
        out.insert("tag_ids".into(), json!(self.tag_ids));
        if let Some(company) = &self.company {
            out.insert("company".into(), company.clone());
        }
        for (key, value) in &self.other {
            out.insert(key.clone(), value.clone());
        }
        out.insert("date_created".into(), json!(self.date_created));
        out.insert("last_updated".into(), json!(self.last_updated));
        Value::Object(out)
    }
}

fn company_name(company: Option<&Value>) -> Option<&str> {
    company
        .and_then(|c| c.get("company_name"))
        .and_then(Value::as_str)
}

// ---- Parsing ----

pub(crate) fn parse_upsert(body: &[u8]) -> Result<Upsert, Rejection> {
    let value: Value = serde_json::from_slice(body).map_err(|_| Rejection::Shape)?;
    let Value::Object(fields) = value else {
        return Err(Rejection::Shape);
    };
    let mut upsert = Upsert {
        duplicate_option: None,
        given_name: None,
        family_name: None,
        email_addresses: Vec::new(),
        phone_numbers: Vec::new(),
        fax_numbers: Vec::new(),
        addresses: Vec::new(),
        custom_fields: Vec::new(),
        company: None,
        other: Map::new(),
    };
    for (key, value) in fields {
        // Jackson treats an explicit null like an absent property.
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "given_name" => upsert.given_name = Some(name(&key, value)?),
            "family_name" => upsert.family_name = Some(name(&key, value)?),
            "duplicate_option" => upsert.duplicate_option = Some(duplicate_option(&value)?),
            "email_addresses" => {
                upsert.email_addresses = slotted(
                    &value,
                    EMAIL_FIELDS,
                    &["email", "field"],
                    &["email"],
                    "email",
                )?;
                for (_, entry) in &upsert.email_addresses {
                    let email = entry.get("email").and_then(Value::as_str).unwrap_or("");
                    if !plausible_email(email) {
                        return Err(Rejection::Semantic("Email address is invalid".into()));
                    }
                }
            }
            "phone_numbers" => {
                upsert.phone_numbers = slotted(
                    &value,
                    PHONE_FIELDS,
                    &["number", "field", "type", "extension"],
                    &["number"],
                    "number",
                )?
            }
            "fax_numbers" => {
                upsert.fax_numbers = slotted(
                    &value,
                    FAX_FIELDS,
                    &["number", "field", "type"],
                    &["number"],
                    "number",
                )?
            }
            "addresses" => {
                upsert.addresses = slotted(&value, ADDRESS_FIELDS, ADDRESS_PROPERTIES, &[], "")?;
                for (_, address) in &upsert.addresses {
                    if address.get("region").is_some() && address.get("country_code").is_none() {
                        return Err(Rejection::Semantic(
                            "country_code is required if region is specified".into(),
                        ));
                    }
                }
            }
            "custom_fields" => upsert.custom_fields = custom_fields(&value)?,
            "company" => upsert.company = Some(company(value)?),
            "source_type" => {
                let text = value.as_str().ok_or(Rejection::Shape)?;
                if !SOURCE_TYPES.contains(&text) {
                    return Err(Rejection::Shape);
                }
                upsert.other.insert(key, value);
            }
            "relationships" => {
                relationships(&value)?;
                upsert.other.insert(key, value);
            }
            // Part of Keap's request model; whether PUT honours it is unverified, so the sandbox
            // accepts and ignores it: tags are applied through POST /contacts/{id}/tags.
            "tag_ids" => {
                let ids = value.as_array().ok_or(Rejection::Shape)?;
                if ids.iter().any(|id| id.as_i64().is_none()) {
                    return Err(Rejection::Shape);
                }
            }
            k if STRING_PROPERTIES.contains(&k) => {
                if !value.is_string() {
                    return Err(Rejection::Shape);
                }
                upsert.other.insert(key, value);
            }
            k if INTEGER_PROPERTIES.contains(&k) => {
                if value.as_i64().is_none() {
                    return Err(Rejection::Shape);
                }
                upsert.other.insert(key, value);
            }
            _ => return Err(Rejection::Shape),
        }
    }
    Ok(upsert)
}

fn name(key: &str, value: Value) -> Result<String, Rejection> {
    let Value::String(text) = value else {
        return Err(Rejection::Shape);
    };
    if text.chars().count() > MAX_NAME_CHARS {
        return Err(Rejection::Semantic(format!(
            "{key} must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(text)
}

fn duplicate_option(value: &Value) -> Result<DuplicateOption, Rejection> {
    match value.as_str() {
        Some("Email") => Ok(DuplicateOption::Email),
        Some("EmailAndName") => Ok(DuplicateOption::EmailAndName),
        Some("EmailAndNameAndCompany") => Ok(DuplicateOption::EmailAndNameAndCompany),
        _ => Err(Rejection::Shape),
    }
}

/// Lists whose entries occupy a named slot (`EMAIL1`, `PHONE2`, `BILLING`, ...). Every property is
/// a string; `field` and the `required` ones must be present; a slot may appear once.
fn slotted(
    value: &Value,
    slots: &[&str],
    allowed: &[&str],
    required: &[&str],
    non_empty: &str,
) -> Result<Vec<(String, Value)>, Rejection> {
    let entries = value.as_array().ok_or(Rejection::Shape)?;
    let mut out: Vec<(String, Value)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let object = entry.as_object().ok_or(Rejection::Shape)?;
        let mut cleaned = Map::new();
        for (key, value) in object {
            if !allowed.contains(&key.as_str()) {
                return Err(Rejection::Shape);
            }
            match value {
                Value::Null => {}
                Value::String(_) => {
                    cleaned.insert(key.clone(), value.clone());
                }
                _ => return Err(Rejection::Shape),
            }
        }
        let slot = cleaned
            .get("field")
            .and_then(Value::as_str)
            .ok_or(Rejection::Shape)?
            .to_owned();
        if !slots.contains(&slot.as_str()) {
            return Err(Rejection::Shape);
        }
        if required.iter().any(|r| !cleaned.contains_key(*r)) {
            return Err(Rejection::Shape);
        }
        if !non_empty.is_empty()
            && cleaned
                .get(non_empty)
                .and_then(Value::as_str)
                .is_some_and(|s| s.trim().is_empty())
        {
            return Err(Rejection::Semantic(format!(
                "{non_empty} must not be empty"
            )));
        }
        if out.iter().any(|(existing, _)| *existing == slot) {
            return Err(Rejection::Semantic(format!(
                "Field {slot} is given more than once"
            )));
        }
        out.push((slot, Value::Object(cleaned)));
    }
    Ok(out)
}

fn plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(char::is_whitespace)
        && email.len() <= 254
}

fn custom_fields(value: &Value) -> Result<Vec<(i64, Value)>, Rejection> {
    let entries = value.as_array().ok_or(Rejection::Shape)?;
    let mut out: Vec<(i64, Value)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let object = entry.as_object().ok_or(Rejection::Shape)?;
        if object.keys().any(|k| k != "id" && k != "content") {
            return Err(Rejection::Shape);
        }
        // A JSON integer only: "12" or 12.0 is a client bug the sandbox must surface.
        let id = object
            .get("id")
            .and_then(Value::as_i64)
            .ok_or(Rejection::Shape)?;
        if out.iter().any(|(existing, _)| *existing == id) {
            return Err(Rejection::Semantic(format!(
                "Custom field {id} is given more than once"
            )));
        }
        out.push((id, object.get("content").cloned().unwrap_or(Value::Null)));
    }
    Ok(out)
}

fn company(value: Value) -> Result<Value, Rejection> {
    let Value::Object(object) = value else {
        return Err(Rejection::Shape);
    };
    let mut cleaned = Map::new();
    for (key, value) in object {
        match (key.as_str(), &value) {
            (_, Value::Null) => {}
            ("id", v) if v.as_i64().is_some() => {
                cleaned.insert(key, value);
            }
            ("company_name", Value::String(_)) => {
                cleaned.insert(key, value);
            }
            _ => return Err(Rejection::Shape),
        }
    }
    Ok(Value::Object(cleaned))
}

fn relationships(value: &Value) -> Result<(), Rejection> {
    let entries = value.as_array().ok_or(Rejection::Shape)?;
    for entry in entries {
        let object = entry.as_object().ok_or(Rejection::Shape)?;
        for (key, value) in object {
            let known = matches!(
                key.as_str(),
                "id" | "linked_contact_id" | "relationship_type_id"
            );
            if !known || !(value.is_null() || value.as_i64().is_some()) {
                return Err(Rejection::Shape);
            }
        }
    }
    Ok(())
}

// ---- Applying ----

/// Create or update; `Ok((created, contact_json))`.
pub(crate) fn upsert(
    state: &mut State,
    app: &str,
    request: Upsert,
) -> Result<(bool, Value), Rejection> {
    if let Some(unknown) = request.custom_fields.iter().find(|(id, _)| {
        !state
            .app(app)
            .is_some_and(|data| data.custom_fields.iter().any(|f| f.id == *id))
    }) {
        return Err(Rejection::Semantic(format!(
            "Custom field with id {} does not exist",
            unknown.0
        )));
    }
    let existing = match request.duplicate_option {
        Some(option) => state
            .app(app)
            .and_then(|data| find_duplicate(data, &request, option)),
        None => None,
    };
    if existing.is_none() && request.email_addresses.is_empty() && request.phone_numbers.is_empty()
    {
        return Err(Rejection::Semantic(
            "New contacts must contain at least one item in email_addresses or phone_numbers"
                .into(),
        ));
    }
    let timestamp = state.next_timestamp();
    let data = state.app_mut(app);
    let (created, id) = match existing {
        Some(id) => (false, id),
        None => {
            let id = data.next_contact_id;
            data.next_contact_id += 1;
            data.contacts.insert(
                id,
                Contact {
                    id,
                    given_name: None,
                    family_name: None,
                    email_addresses: BTreeMap::new(),
                    phone_numbers: BTreeMap::new(),
                    fax_numbers: BTreeMap::new(),
                    addresses: BTreeMap::new(),
                    custom_fields: BTreeMap::new(),
                    tag_ids: BTreeSet::new(),
                    company: None,
                    other: Map::new(),
                    date_created: timestamp.clone(),
                    last_updated: timestamp.clone(),
                },
            );
            (true, id)
        }
    };
    let Some(contact) = data.contacts.get_mut(&id) else {
        return Err(Rejection::Semantic("Contact vanished".into()));
    };
    merge(contact, request);
    contact.last_updated = timestamp;
    Ok((created, contact.to_json(true)))
}

/// Only the values present in the request change.
fn merge(contact: &mut Contact, request: Upsert) {
    if request.given_name.is_some() {
        contact.given_name = request.given_name;
    }
    if request.family_name.is_some() {
        contact.family_name = request.family_name;
    }
    contact.email_addresses.extend(request.email_addresses);
    contact.phone_numbers.extend(request.phone_numbers);
    contact.fax_numbers.extend(request.fax_numbers);
    contact.addresses.extend(request.addresses);
    contact.custom_fields.extend(request.custom_fields);
    if request.company.is_some() {
        contact.company = request.company;
    }
    contact.other.extend(request.other);
}

fn find_duplicate(data: &AppData, request: &Upsert, option: DuplicateOption) -> Option<i64> {
    let email = request
        .email_addresses
        .iter()
        .find(|(slot, _)| slot == "EMAIL1")
        .and_then(|(_, entry)| entry.get("email"))
        .and_then(Value::as_str)?;
    let same_text = |a: Option<&str>, b: Option<&str>| {
        a.unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(b.unwrap_or("").trim())
    };
    data.contacts
        .values()
        .find(|contact| {
            let email_matches = contact
                .email1()
                .is_some_and(|e| e.eq_ignore_ascii_case(email));
            let name_matches = || {
                same_text(contact.given_name.as_deref(), request.given_name.as_deref())
                    && same_text(
                        contact.family_name.as_deref(),
                        request.family_name.as_deref(),
                    )
            };
            let company_matches = || {
                same_text(
                    contact.company_name(),
                    company_name(request.company.as_ref()),
                )
            };
            match option {
                DuplicateOption::Email => email_matches,
                DuplicateOption::EmailAndName => email_matches && name_matches(),
                DuplicateOption::EmailAndNameAndCompany => {
                    email_matches && name_matches() && company_matches()
                }
            }
        })
        .map(|contact| contact.id)
}

#[cfg(test)]
mod tests {
    use super::{Rejection, parse_upsert};

    fn shape(body: &str) {
        assert_eq!(
            parse_upsert(body.as_bytes()).err(),
            Some(Rejection::Shape),
            "{body}"
        );
    }

    #[test]
    fn rejects_the_shapes_real_clients_get_wrong() {
        shape(r#"[]"#);
        shape(r#"{"email": "a@example.com"}"#);
        shape(r#"{"email_addresses": "a@example.com"}"#);
        shape(r#"{"email_addresses": ["a@example.com"]}"#);
        shape(r#"{"email_addresses": [{"email": "a@example.com"}]}"#);
        shape(r#"{"email_addresses": [{"email": "a@example.com", "field": "EMAIL4"}]}"#);
        shape(r#"{"email_addresses": [{"email": "a@example.com", "field": "email1"}]}"#);
        shape(r#"{"email_addresses": [{"email": "a@example.com", "field": "EMAIL1", "x": 1}]}"#);
        shape(r#"{"phone_numbers": [{"number": 5551234, "field": "PHONE1"}]}"#);
        shape(r#"{"custom_fields": [{"id": "12", "content": "x"}]}"#);
        shape(r#"{"custom_fields": [{"id": 12.5, "content": "x"}]}"#);
        shape(r#"{"custom_fields": {"12": "x"}}"#);
        shape(r#"{"custom_fields": [{"label": "Color", "content": "x"}]}"#);
        shape(r#"{"duplicate_option": "email"}"#);
        shape(r#"{"company": "Analytical Engines"}"#);
        shape(r#"{"company": {"name": "Analytical Engines"}}"#);
        shape(r#"{"given_name": 7}"#);
        shape(r#"{"source_type": "SOMETHING"}"#);
        shape(r#"{"givenName": "Ada"}"#);
        shape("not json");
    }

    #[test]
    fn accepts_the_documented_example() {
        let body = r#"{"given_name":"Jane","source_type":"API","opt_in_reason":"form",
            "duplicate_option":"Email",
            "email_addresses":[{"email":"jane@example.com","field":"EMAIL1"}],
            "phone_numbers":[{"number":"5551234","field":"PHONE1"}],
            "custom_fields":[{"id":228,"content":"12.00"}],
            "company":{"company_name":"Acme"}}"#;
        assert!(parse_upsert(body.as_bytes()).is_ok());
    }

    #[test]
    fn long_names_and_bad_emails_are_semantic_errors() {
        let long = "x".repeat(256);
        let body = format!(r#"{{"given_name":"{long}"}}"#);
        assert!(matches!(
            parse_upsert(body.as_bytes()),
            Err(Rejection::Semantic(_))
        ));
        let body = r#"{"email_addresses":[{"email":"not-an-email","field":"EMAIL1"}]}"#;
        assert!(matches!(
            parse_upsert(body.as_bytes()),
            Err(Rejection::Semantic(_))
        ));
    }
}
