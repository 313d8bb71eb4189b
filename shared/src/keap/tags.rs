//! v1 tags: find by name (`GET /v1/tags?name=`, a full-string match), find by id
//! (`GET /v1/tags/{id}`), create (`POST /v1/tags`), apply to a contact
//! (`POST /v1/contacts/{id}/tags`, at most 100 ids per call).
//!
//! Applying answers 200 whatever happened, with one outcome per id (Keap's v1 OpenAPI,
//! `applyTagsToContactId` → `Entry<long,string>`; a Keap-integration write-up quotes the body
//! `{"1831":"TAG_ID_NOT_FOUND"}`): the body must be read, only `SUCCESS` and `DUPLICATE` mean
//! the tag is on the contact.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::rest::{KeapError, RestRequest, RestResponse};

/// infusionsoft-php: "A maximum of 100 tag ids can be added at once".
pub const MAX_TAGS_PER_APPLY: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Tag {
    pub id: i64,
    #[serde(default)]
    pub name: String,
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Vec<Tag>,
}

pub fn find_by_name(name: &str) -> RestRequest {
    RestRequest::get("tags").query("name", name)
}

/// The id of the tag named exactly `name` in a `GET /tags?name=` answer; the lowest id when
/// Keap has several (tags of the same name in different categories).
pub fn id_named(response: &RestResponse, name: &str) -> Result<Option<i64>, KeapError> {
    let list: TagList = response.json()?;
    Ok(list
        .tags
        .iter()
        .filter(|tag| tag.name == name)
        .map(|tag| tag.id)
        .min())
}

/// `GET /v1/tags/{id}`: 200 with the tag, 404 when no tag has that id (the 404 is what REST v1
/// answers for a missing resource; unverified for tags specifically).
pub fn find_by_id(id: i64) -> RestRequest {
    RestRequest::get(format!("tags/{id}"))
}

/// What Keap did with one tag id of an apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    Success,
    /// Already on the contact: applied.
    Duplicate,
    TagIdNotFound,
    ContactNotFound,
    Failure,
    NoPermission,
    /// Keap listed no outcome for the id (or one this version does not know): not applied.
    Unreported(String),
}

impl ApplyOutcome {
    fn parse(text: &str) -> Self {
        match text {
            "SUCCESS" => Self::Success,
            "DUPLICATE" => Self::Duplicate,
            "TAG_ID_NOT_FOUND" => Self::TagIdNotFound,
            "CONTACT_NOT_FOUND" => Self::ContactNotFound,
            "FAILURE" => Self::Failure,
            "NO_PERMISSION" => Self::NoPermission,
            other => Self::Unreported(other.chars().take(40).collect()),
        }
    }

    pub fn is_applied(&self) -> bool {
        matches!(self, Self::Success | Self::Duplicate)
    }

    /// Keap's word for it, as error messages quote it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Success => "SUCCESS",
            Self::Duplicate => "DUPLICATE",
            Self::TagIdNotFound => "TAG_ID_NOT_FOUND",
            Self::ContactNotFound => "CONTACT_NOT_FOUND",
            Self::Failure => "FAILURE",
            Self::NoPermission => "NO_PERMISSION",
            Self::Unreported(text) if text.is_empty() => "no outcome reported",
            Self::Unreported(text) => text,
        }
    }
}

/// The outcome of each id in `sent`, in `sent`'s order. Keap's body is an object
/// `{"<id>": "<OUTCOME>"}`; the list of `{"key", "value"}` entries the generated v1 schema
/// describes is read too.
pub fn apply_outcomes(
    response: &RestResponse,
    sent: &[i64],
) -> Result<Vec<(i64, ApplyOutcome)>, KeapError> {
    let unexpected = KeapError::UnexpectedResponse {
        status: response.status,
        reason: "the tag-apply answer is not a map of tag id to outcome",
    };
    let body: serde_json::Value = response.json()?;
    let mut reported: Vec<(i64, String)> = Vec::new();
    let id_of = |key: &serde_json::Value| match key {
        serde_json::Value::String(text) => text.trim().parse::<i64>().ok(),
        other => other.as_i64(),
    };
    match &body {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let id = id_of(&serde_json::Value::String(key.clone()))
                    .ok_or_else(|| unexpected.clone())?;
                let outcome = value.as_str().ok_or_else(|| unexpected.clone())?;
                reported.push((id, outcome.to_owned()));
            }
        }
        serde_json::Value::Array(entries) => {
            for entry in entries {
                let id = entry
                    .get("key")
                    .and_then(id_of)
                    .ok_or_else(|| unexpected.clone())?;
                let outcome = entry
                    .get("value")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| unexpected.clone())?;
                reported.push((id, outcome.to_owned()));
            }
        }
        _ => return Err(unexpected),
    }
    Ok(sent
        .iter()
        .map(|id| {
            let outcome = reported
                .iter()
                .find(|(reported_id, _)| reported_id == id)
                .map(|(_, text)| ApplyOutcome::parse(text))
                .unwrap_or(ApplyOutcome::Unreported(String::new()));
            (*id, outcome)
        })
        .collect())
}

/// The body shape is unverified against Keap (infusionsoft-php has no create method).
pub fn create(name: &str) -> RestRequest {
    RestRequest::with_body(Method::POST, "tags", json!({ "name": name }))
}

pub fn created_id(response: &RestResponse) -> Result<i64, KeapError> {
    Ok(response.json::<Tag>()?.id)
}

/// One request per chunk of at most [`MAX_TAGS_PER_APPLY`] ids.
pub fn apply(contact_id: i64, tag_ids: &[i64]) -> Vec<RestRequest> {
    tag_ids
        .chunks(MAX_TAGS_PER_APPLY)
        .map(|chunk| {
            RestRequest::with_body(
                Method::POST,
                format!("contacts/{contact_id}/tags"),
                json!({ "tagIds": chunk }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_in_chunks_of_one_hundred() {
        let ids: Vec<i64> = (1..=250).collect();
        let requests = apply(7, &ids);
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[0].path, "contacts/7/tags");
        assert_eq!(
            requests[0].body.as_ref().unwrap()["tagIds"]
                .as_array()
                .unwrap()
                .len(),
            100
        );
        assert_eq!(
            requests[2].body.as_ref().unwrap()["tagIds"]
                .as_array()
                .unwrap()
                .len(),
            50
        );
    }

    #[test]
    fn reads_one_outcome_per_id_in_either_shape() {
        let map = RestResponse {
            status: 200,
            body: br#"{"90":"SUCCESS","91":"DUPLICATE","1831":"TAG_ID_NOT_FOUND"}"#.to_vec(),
        };
        let outcomes = apply_outcomes(&map, &[90, 91, 1831, 7]).unwrap();
        assert_eq!(
            outcomes,
            vec![
                (90, ApplyOutcome::Success),
                (91, ApplyOutcome::Duplicate),
                (1831, ApplyOutcome::TagIdNotFound),
                (7, ApplyOutcome::Unreported(String::new())),
            ]
        );
        assert!(outcomes[1].1.is_applied() && !outcomes[2].1.is_applied());
        let entries = RestResponse {
            status: 200,
            body: br#"[{"key":"90","value":"NO_PERMISSION"},{"key":91,"value":"FAILURE"}]"#
                .to_vec(),
        };
        assert_eq!(
            apply_outcomes(&entries, &[90, 91]).unwrap(),
            vec![
                (90, ApplyOutcome::NoPermission),
                (91, ApplyOutcome::Failure)
            ]
        );
        let odd = RestResponse {
            status: 200,
            body: br#"{"x":"SUCCESS"}"#.to_vec(),
        };
        assert!(apply_outcomes(&odd, &[90]).is_err());
    }

    #[test]
    fn picks_the_exact_name() {
        let response = RestResponse {
            status: 200,
            body: br#"{"tags":[{"id":9,"name":"vip"},{"id":4,"name":"vip"},{"id":2,"name":"VIP"}],"count":3}"#.to_vec(),
        };
        assert_eq!(id_named(&response, "vip").unwrap(), Some(4));
        assert_eq!(id_named(&response, "other").unwrap(), None);
    }
}
