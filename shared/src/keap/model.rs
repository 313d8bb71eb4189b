//! `GET /v1/contacts/model`: the tenant's custom-field definitions, to resolve labels to ids.

use serde::Deserialize;

use super::rest::{KeapError, RestRequest, RestResponse};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CustomFieldDefinition {
    pub id: i64,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub field_type: Option<String>,
}

/// The part of Keap's contact model an upsert needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ContactModel {
    #[serde(default)]
    pub custom_fields: Vec<CustomFieldDefinition>,
}

/// Which definition a caller's key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldLookup<'a> {
    Found(&'a CustomFieldDefinition),
    /// Two or more fields carry this label: the caller must use the id.
    Ambiguous(Vec<i64>),
    NotFound,
}

impl ContactModel {
    pub fn request() -> RestRequest {
        RestRequest::get("contacts/model")
    }

    pub fn from_response(response: &RestResponse) -> Result<Self, KeapError> {
        response.json()
    }

    pub fn by_id(&self, id: i64) -> FieldLookup<'_> {
        match self.custom_fields.iter().find(|f| f.id == id) {
            Some(field) => FieldLookup::Found(field),
            None => FieldLookup::NotFound,
        }
    }

    /// Exact label first; otherwise a label equal ignoring case and surrounding spaces, when
    /// exactly one field has it.
    pub fn by_label(&self, label: &str) -> FieldLookup<'_> {
        let exact: Vec<&CustomFieldDefinition> = self
            .custom_fields
            .iter()
            .filter(|f| f.label == label)
            .collect();
        let candidates = if exact.is_empty() {
            let wanted = label.trim().to_lowercase();
            self.custom_fields
                .iter()
                .filter(|f| f.label.trim().to_lowercase() == wanted)
                .collect()
        } else {
            exact
        };
        match candidates.as_slice() {
            [] => FieldLookup::NotFound,
            [one] => FieldLookup::Found(one),
            many => FieldLookup::Ambiguous(many.iter().map(|f| f.id).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(id: i64, label: &str) -> CustomFieldDefinition {
        CustomFieldDefinition {
            id,
            label: label.into(),
            field_type: None,
        }
    }

    #[test]
    fn labels_resolve_exactly_then_loosely_and_never_ambiguously() {
        let model = ContactModel {
            custom_fields: vec![
                field(1, "Favorite Color"),
                field(2, "favorite color"),
                field(3, "Plan"),
                field(4, "Size"),
                field(5, "size "),
            ],
        };
        assert_eq!(
            model.by_label("Favorite Color"),
            FieldLookup::Found(&model.custom_fields[0])
        );
        assert_eq!(
            model.by_label("plan"),
            FieldLookup::Found(&model.custom_fields[2])
        );
        assert_eq!(model.by_label("SIZE"), FieldLookup::Ambiguous(vec![4, 5]));
        assert_eq!(model.by_label("Shoe"), FieldLookup::NotFound);
        assert_eq!(model.by_id(3), FieldLookup::Found(&model.custom_fields[2]));
        assert_eq!(model.by_id(9), FieldLookup::NotFound);
    }
}
