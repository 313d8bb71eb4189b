//! v1 tags: find by name (`GET /v1/tags?name=`, a full-string match), create (`POST /v1/tags`),
//! apply to a contact (`POST /v1/contacts/{id}/tags`, at most 100 ids per call).

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
    fn picks_the_exact_name() {
        let response = RestResponse {
            status: 200,
            body: br#"{"tags":[{"id":9,"name":"vip"},{"id":4,"name":"vip"},{"id":2,"name":"VIP"}],"count":3}"#.to_vec(),
        };
        assert_eq!(id_named(&response, "vip").unwrap(), Some(4));
        assert_eq!(id_named(&response, "other").unwrap(), None);
    }
}
