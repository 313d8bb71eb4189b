//! From the public request to Keap's `PUT /v1/contacts` body, once labels are resolved.

use serde_json::Value;

use super::error::UpsertError;
use super::request::{AddressInput, FieldKey, MatchOn, UpsertRequest, us_zip};
use crate::keap::contacts::{
    CompanyReference, ContactAddress, ContactUpsert, CustomFieldValue, DuplicateOption,
    EmailAddress, PhoneNumber,
};
use crate::keap::model::{ContactModel, FieldLookup};
use crate::keap::rest::safe_message;

/// The caller's custom fields as Keap's `[{id, content}]`; every key must name exactly one
/// field of the tenant's model, and no field may be set twice.
pub(crate) fn resolve_custom_fields(
    fields: &[(FieldKey, Value)],
    model: &ContactModel,
) -> Result<Vec<CustomFieldValue>, UpsertError> {
    let mut resolved: Vec<CustomFieldValue> = Vec::with_capacity(fields.len());
    for (key, content) in fields {
        let lookup = match key {
            FieldKey::Id(id) => model.by_id(*id),
            FieldKey::Label(label) => model.by_label(label),
        };
        let id = match lookup {
            FieldLookup::Found(field) => field.id,
            FieldLookup::NotFound => return Err(unknown_field(key)),
            FieldLookup::Ambiguous(ids) => {
                return Err(UpsertError::Validation(format!(
                    "contact.custom_fields: the label `{}` belongs to several Keap custom \
                     fields (ids {ids:?}); use the id as the key instead",
                    safe_message(&key.to_string())
                )));
            }
        };
        if resolved.iter().any(|field| field.id == id) {
            return Err(UpsertError::Validation(format!(
                "contact.custom_fields: `{}` names custom field {id}, which is already set \
                 by another key",
                safe_message(&key.to_string())
            )));
        }
        resolved.push(CustomFieldValue {
            id,
            content: content.clone(),
        });
    }
    Ok(resolved)
}

pub(crate) fn unknown_field(key: &FieldKey) -> UpsertError {
    let what = match key {
        FieldKey::Id(id) => format!("no custom field has id {id}"),
        FieldKey::Label(label) => {
            format!("no custom field is labelled `{}`", safe_message(label))
        }
    };
    UpsertError::Validation(format!(
        "contact.custom_fields: {what} in this Keap account; create it in Keap (Settings → \
         Custom Fields) or fix the key"
    ))
}

pub(crate) fn keap_body(
    request: &UpsertRequest,
    custom_fields: Vec<CustomFieldValue>,
) -> ContactUpsert {
    let contact = &request.contact;
    ContactUpsert {
        duplicate_option: match request.match_on {
            MatchOn::Email => DuplicateOption::Email,
            MatchOn::EmailAndName => DuplicateOption::EmailAndName,
        },
        email_addresses: vec![EmailAddress {
            email: contact.email.clone(),
            field: "EMAIL1",
        }],
        given_name: contact.given_name.clone(),
        family_name: contact.family_name.clone(),
        phone_numbers: contact
            .phone
            .iter()
            .map(|number| PhoneNumber {
                number: number.clone(),
                field: "PHONE1",
            })
            .collect(),
        company: contact.company.as_ref().map(|name| CompanyReference {
            company_name: name.clone(),
        }),
        custom_fields,
        opt_in_reason: contact.opt_in_reason.clone(),
        lead_source_id: contact.lead_source_id,
        owner_id: contact.owner_id,
        addresses: contact.address.iter().map(billing_address).collect(),
    }
}

/// The caller's address as Keap's `BILLING` entry; a US ZIP+4 is split as Keap stores it.
fn billing_address(address: &AddressInput) -> ContactAddress {
    let mut out = ContactAddress {
        field: "BILLING",
        line1: address.line1.clone(),
        line2: address.line2.clone(),
        locality: address.locality.clone(),
        region: address.region.clone(),
        country_code: address.country_code.clone(),
        ..ContactAddress::default()
    };
    match (
        address.country_code.as_deref(),
        address.postal_code.as_deref(),
    ) {
        (Some("USA"), Some(postal)) => {
            if let Some((zip, four)) = us_zip(postal) {
                out.zip_code = Some(zip.to_owned());
                out.zip_four = four.map(str::to_owned);
            }
        }
        (_, postal) => out.postal_code = postal.map(str::to_owned),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keap::model::CustomFieldDefinition;
    use serde_json::json;

    fn model() -> ContactModel {
        ContactModel {
            custom_fields: vec![
                CustomFieldDefinition {
                    id: 7,
                    label: "Favorite Color".into(),
                    field_type: Some("Text".into()),
                },
                CustomFieldDefinition {
                    id: 9,
                    label: "Plan".into(),
                    field_type: None,
                },
            ],
        }
    }

    #[test]
    fn labels_and_ids_become_id_content_pairs() {
        let fields = vec![
            (FieldKey::Label("Favorite Color".into()), json!("blue")),
            (FieldKey::Id(9), json!("pro")),
        ];
        let resolved = resolve_custom_fields(&fields, &model()).unwrap();
        assert_eq!(
            serde_json::to_value(&resolved).unwrap(),
            json!([{"id": 7, "content": "blue"}, {"id": 9, "content": "pro"}])
        );
    }

    #[test]
    fn unknown_and_doubled_fields_are_validation_errors() {
        let unknown = vec![(FieldKey::Label("Shoe Size".into()), json!(42))];
        let error = resolve_custom_fields(&unknown, &model()).unwrap_err();
        assert!(matches!(&error, UpsertError::Validation(m) if m.contains("Shoe Size")));
        let twice = vec![
            (FieldKey::Label("plan".into()), json!("a")),
            (FieldKey::Id(9), json!("b")),
        ];
        assert!(resolve_custom_fields(&twice, &model()).is_err());
        assert!(resolve_custom_fields(&[(FieldKey::Id(8), json!(1))], &model()).is_err());
    }

    #[test]
    fn marketing_fields_and_the_address_take_keaps_names() {
        let request = UpsertRequest::parse(
            br#"{"contact": {"email": "ada@example.com", "opt_in_reason": "web form",
                 "lead_source_id": 5, "owner_id": 9,
                 "address": {"line1": "1 Main St", "locality": "Springfield", "region": "US-IL",
                             "postal_code": "62701-1234", "country_code": "USA"}}}"#,
        )
        .unwrap();
        let body = serde_json::to_value(keap_body(&request, Vec::new())).unwrap();
        assert_eq!(body["opt_in_reason"], "web form");
        assert_eq!(body["lead_source_id"], 5);
        assert_eq!(body["owner_id"], 9);
        assert_eq!(
            body["addresses"],
            json!([{"field": "BILLING", "line1": "1 Main St", "locality": "Springfield",
                    "region": "US-IL", "zip_code": "62701", "zip_four": "1234",
                    "country_code": "USA"}])
        );
        let uk = UpsertRequest::parse(
            br#"{"contact": {"email": "ada@example.com",
                 "address": {"postal_code": "SW1A 1AA", "country_code": "GBR"}}}"#,
        )
        .unwrap();
        let body = serde_json::to_value(keap_body(&uk, Vec::new())).unwrap();
        assert_eq!(
            body["addresses"],
            json!([{"field": "BILLING", "postal_code": "SW1A 1AA", "country_code": "GBR"}])
        );
    }

    #[test]
    fn body_from_request() {
        let request = UpsertRequest::parse(
            br#"{"contact": {"email": "ada@example.com", "phone": "555 1234"}, "match_on": "email_and_name"}"#,
        )
        .unwrap();
        let body = serde_json::to_value(keap_body(&request, Vec::new())).unwrap();
        assert_eq!(
            body,
            json!({
                "duplicate_option": "EmailAndName",
                "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}],
                "phone_numbers": [{"number": "555 1234", "field": "PHONE1"}],
            })
        );
    }
}
