//! `PUT /v1/contacts`: Keap's create-or-update, in the exact wire shapes it accepts.
//!
//! Each shape here is one users got wrong with "Input could not be converted to a valid
//! request": emails and phones are arrays of `{value, field slot}` objects, custom fields are
//! `[{id, content}]` with a numeric id, `duplicate_option` is a body field, and the company is
//! an object.
//!
//! Field names follow Keap's v1 OpenAPI schema `CreateOrPatchContact` / `RestContactBase` /
//! `ContactAddress` (Keap-generated, as stored by api-evangelist/keap,
//! `openapi/_original/keap-v1-openapi.json`): `opt_in_reason`, `lead_source_id`, `owner_id`
//! (int64), `addresses[]` of `{field: BILLING|SHIPPING|OTHER, line1, line2, locality, region,
//! postal_code, zip_code, zip_four, country_code}`. The v1 schema declares `country_code` and
//! `region` as plain strings; the code formats (ISO 3166-1 alpha-3, ISO 3166-2) are those Keap's
//! SDK documents for its v2 `Address` (infusionsoft/keap-sdk) — unverified for v1. "country_code
//! is required if region is specified" is Keap's own v1 upsert description.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::rest::{KeapError, RestRequest, RestResponse};

/// How Keap decides that a contact already exists (v1 `duplicate_option`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DuplicateOption {
    Email,
    EmailAndName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmailAddress {
    pub email: String,
    /// `EMAIL1`..`EMAIL3`.
    pub field: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhoneNumber {
    pub number: String,
    /// `PHONE1`..`PHONE5`.
    pub field: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompanyReference {
    pub company_name: String,
}

/// One entry of v1 `addresses`. US ZIP codes go in `zip_code`/`zip_four`, every other postal
/// code in `postal_code` ("to be used instead of 'postal_code', not in addition to").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContactAddress {
    /// `BILLING`, `SHIPPING` or `OTHER`.
    pub field: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip_four: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomFieldValue {
    pub id: i64,
    pub content: serde_json::Value,
}

/// The body of `PUT /v1/contacts`. Absent values are left out, so Keap keeps what it has.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactUpsert {
    pub duplicate_option: DuplicateOption,
    pub email_addresses: Vec<EmailAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phone_numbers: Vec<PhoneNumber>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company: Option<CompanyReference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_fields: Vec<CustomFieldValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_in_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_source_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<ContactAddress>,
}

impl ContactUpsert {
    pub fn request(&self) -> RestRequest {
        RestRequest::with_body(
            Method::PUT,
            "contacts",
            // A struct of strings, numbers and JSON values always serializes.
            serde_json::to_value(self).unwrap_or_default(),
        )
    }
}

/// What an upsert needs from Keap's answer (the full contact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertedContact {
    pub id: i64,
    /// 201 (created) or 200 (updated), per Keap's generated docs (unverified against Keap).
    pub status: u16,
    pub date_created: Option<String>,
    pub last_updated: Option<String>,
}

#[derive(Deserialize)]
struct ContactBody {
    id: i64,
    #[serde(default)]
    date_created: Option<String>,
    #[serde(default)]
    last_updated: Option<String>,
}

impl UpsertedContact {
    pub fn from_response(response: &RestResponse) -> Result<Self, KeapError> {
        let body: ContactBody = response.json()?;
        Ok(Self {
            id: body.id,
            status: response.status,
            date_created: body.date_created,
            last_updated: body.last_updated,
        })
    }

    /// The second signal: a contact created by this request was not updated since.
    pub fn timestamps_say_created(&self) -> Option<bool> {
        match (&self.date_created, &self.last_updated) {
            (Some(created), Some(updated)) => Some(created == updated),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_has_keaps_exact_shapes() {
        let upsert = ContactUpsert {
            duplicate_option: DuplicateOption::EmailAndName,
            email_addresses: vec![EmailAddress {
                email: "ada@example.com".into(),
                field: "EMAIL1",
            }],
            given_name: Some("Ada".into()),
            family_name: None,
            phone_numbers: vec![PhoneNumber {
                number: "+44 20 7946 0000".into(),
                field: "PHONE1",
            }],
            company: Some(CompanyReference {
                company_name: "Analytical Engines".into(),
            }),
            custom_fields: vec![CustomFieldValue {
                id: 12,
                content: json!("blue"),
            }],
            opt_in_reason: Some("Signed up on the web form".into()),
            lead_source_id: Some(4),
            owner_id: Some(2),
            addresses: vec![ContactAddress {
                field: "BILLING",
                line1: Some("1 Main St".into()),
                region: Some("US-IL".into()),
                zip_code: Some("62701".into()),
                country_code: Some("USA".into()),
                ..ContactAddress::default()
            }],
        };
        let request = upsert.request();
        assert_eq!(request.method, Method::PUT);
        assert_eq!(request.path, "contacts");
        assert_eq!(
            request.body.unwrap(),
            json!({
                "duplicate_option": "EmailAndName",
                "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}],
                "given_name": "Ada",
                "phone_numbers": [{"number": "+44 20 7946 0000", "field": "PHONE1"}],
                "company": {"company_name": "Analytical Engines"},
                "custom_fields": [{"id": 12, "content": "blue"}],
                "opt_in_reason": "Signed up on the web form",
                "lead_source_id": 4,
                "owner_id": 2,
                "addresses": [{"field": "BILLING", "line1": "1 Main St", "region": "US-IL",
                               "zip_code": "62701", "country_code": "USA"}],
            })
        );
    }
}
