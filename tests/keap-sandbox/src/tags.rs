//! Keap v1 tags: list/find, get by id, create, and apply to a contact.
//!
//! Applying answers as Keap does: 200 whatever happened, a JSON object with one outcome per
//! id — `SUCCESS`, `DUPLICATE` (already applied), `TAG_ID_NOT_FOUND`, `CONTACT_NOT_FOUND`, or
//! what [`crate::Sandbox::set_tag_apply_outcome`] forces (`NO_PERMISSION`, `FAILURE`). Keap's v1
//! OpenAPI names the outcomes; the object shape is the one a Keap integration quotes
//! (`{"1831":"TAG_ID_NOT_FOUND"}`). Only a malformed request is a 400.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::api::{Tenant, invalid_contact_id};
use crate::contacts::SHAPE_ERROR_MESSAGE;
use crate::credentials;
use crate::respond::{json_response, message};
use crate::state::{Shared, Tag};

const DEFAULT_LIMIT: usize = 1000;
/// infusionsoft-php: "A maximum of 100 tag ids can be added at once".
const MAX_TAGS_PER_APPLY: usize = 100;

pub(crate) fn tag_json(tag: &Tag) -> Value {
    json!({
        "id": tag.id,
        "name": tag.name,
        "description": tag.description,
        "category": tag.category_id.map(|id| json!({"id": id})),
    })
}

/// `(limit, offset)`, or the message for a malformed one.
pub(crate) fn paging(params: &HashMap<String, String>) -> Result<(usize, usize), String> {
    let number = |name: &str, default: usize| match params.get(name) {
        None => Ok(default),
        Some(raw) => raw.parse::<usize>().map_err(|_| format!("Invalid {name}")),
    };
    let limit = number("limit", DEFAULT_LIMIT)?.clamp(1, DEFAULT_LIMIT);
    let offset = number("offset", 0)?;
    Ok((limit, offset))
}

/// `GET /tags?name=&category=&limit=&offset=`; `name` is a full-string match.
pub(crate) async fn list(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(params) = credentials::parse_form(query.unwrap_or_default().as_bytes()) else {
        return message(StatusCode::BAD_REQUEST, "A parameter is repeated");
    };
    let (limit, offset) = match paging(&params) {
        Ok(paging) => paging,
        Err(text) => return message(StatusCode::BAD_REQUEST, &text),
    };
    let category = match params.get("category").map(|c| c.parse::<i64>()) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return message(StatusCode::BAD_REQUEST, "Invalid category"),
    };
    let name = params.get("name");
    let sandbox = shared.lock();
    let matching: Vec<Value> = sandbox
        .app(&tenant.app)
        .map(|data| {
            data.tags
                .values()
                .filter(|t| name.is_none_or(|n| t.name == *n))
                .filter(|t| category.is_none_or(|c| t.category_id == Some(c)))
                .map(tag_json)
                .collect()
        })
        .unwrap_or_default();
    let count = matching.len();
    let page: Vec<Value> = matching.into_iter().skip(offset).take(limit).collect();
    json_response(StatusCode::OK, json!({"tags": page, "count": count}))
}

/// `POST /tags` with `{"name", "description"?, "category"?: {"id"}}`.
pub(crate) async fn create(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !credentials::is_json_content_type(&headers) {
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content type not supported",
        );
    }
    let Some((name, description, category_id)) = parse_new_tag(&body) else {
        return message(StatusCode::BAD_REQUEST, SHAPE_ERROR_MESSAGE);
    };
    if name.trim().is_empty() {
        return message(StatusCode::BAD_REQUEST, "Tag name is required");
    }
    let mut sandbox = shared.lock();
    let data = sandbox.app_mut(&tenant.app);
    if data.tags.values().any(|t| t.name == name) {
        return message(
            StatusCode::BAD_REQUEST,
            "A tag with this name already exists",
        );
    }
    let id = data.next_tag_id;
    data.next_tag_id += 1;
    let tag = Tag {
        id,
        name,
        description,
        category_id,
    };
    let response = json_response(StatusCode::CREATED, tag_json(&tag));
    data.tags.insert(id, tag);
    response
}

fn parse_new_tag(body: &[u8]) -> Option<(String, Option<String>, Option<i64>)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let mut name = None;
    let mut description = None;
    let mut category_id = None;
    for (key, value) in object {
        match (key.as_str(), value) {
            (_, Value::Null) => {}
            ("name", Value::String(text)) => name = Some(text.clone()),
            ("description", Value::String(text)) => description = Some(text.clone()),
            ("category", Value::Object(category)) => {
                if category.keys().any(|k| k != "id") {
                    return None;
                }
                category_id = Some(category.get("id")?.as_i64()?);
            }
            _ => return None,
        }
    }
    Some((name?, description, category_id))
}

/// `POST /contacts/{id}/tags` with `{"tagIds": [...]}`.
pub(crate) async fn apply(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(contact_id) = raw_id.parse::<i64>() else {
        return invalid_contact_id();
    };
    if !credentials::is_json_content_type(&headers) {
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content type not supported",
        );
    }
    let Some(tag_ids) = parse_tag_ids(&body) else {
        return message(StatusCode::BAD_REQUEST, SHAPE_ERROR_MESSAGE);
    };
    if tag_ids.is_empty() {
        return message(StatusCode::BAD_REQUEST, "tagIds must not be empty");
    }
    if tag_ids.len() > MAX_TAGS_PER_APPLY {
        return message(
            StatusCode::BAD_REQUEST,
            "A maximum of 100 tag ids can be added at once",
        );
    }
    let mut sandbox = shared.lock();
    let timestamp = sandbox.next_timestamp();
    let data = sandbox.app_mut(&tenant.app);
    // Keap answers 200 whatever happened, with one outcome per id (module docs).
    let mut outcomes = serde_json::Map::new();
    let mut changed = false;
    for id in &tag_ids {
        let outcome = if !data.contacts.contains_key(&contact_id) {
            "CONTACT_NOT_FOUND"
        } else if !data.tags.contains_key(id) {
            "TAG_ID_NOT_FOUND"
        } else if let Some(forced) = data.tag_apply_outcomes.get(id) {
            forced.as_str()
        } else if data
            .contacts
            .get(&contact_id)
            .is_some_and(|c| c.tag_ids.contains(id))
        {
            "DUPLICATE"
        } else {
            if let Some(contact) = data.contacts.get_mut(&contact_id) {
                contact.tag_ids.insert(*id);
                changed = true;
            }
            "SUCCESS"
        };
        outcomes.insert(id.to_string(), json!(outcome));
    }
    if changed && let Some(contact) = data.contacts.get_mut(&contact_id) {
        contact.last_updated = timestamp;
    }
    json_response(StatusCode::OK, Value::Object(outcomes))
}

/// `GET /tags/{id}`: the tag, or 404 when no tag has that id (the 404 body is unverified).
pub(crate) async fn get(
    tenant: Tenant,
    State(shared): State<Arc<Shared>>,
    Path(raw_id): Path<String>,
) -> Response {
    let Ok(id) = raw_id.parse::<i64>() else {
        return message(StatusCode::BAD_REQUEST, "Invalid tag id");
    };
    let sandbox = shared.lock();
    match sandbox.app(&tenant.app).and_then(|d| d.tags.get(&id)) {
        Some(tag) => json_response(StatusCode::OK, tag_json(tag)),
        None => message(
            StatusCode::NOT_FOUND,
            &format!("Tag with id {id} does not exist"),
        ),
    }
}

fn parse_tag_ids(body: &[u8]) -> Option<Vec<i64>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    if object.keys().any(|k| k != "tagIds") {
        return None;
    }
    object
        .get("tagIds")?
        .as_array()?
        .iter()
        .map(Value::as_i64)
        .collect()
}
