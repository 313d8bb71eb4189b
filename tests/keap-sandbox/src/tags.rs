//! Keap v1 tags: list/find, create, and apply to a contact.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::api::{Tenant, contact_not_found, invalid_contact_id};
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
    let exists = sandbox
        .app(&tenant.app)
        .is_some_and(|d| d.contacts.contains_key(&contact_id));
    if !exists {
        return contact_not_found(contact_id);
    }
    let unknown = tag_ids.iter().find(|id| {
        !sandbox
            .app(&tenant.app)
            .is_some_and(|d| d.tags.contains_key(id))
    });
    if let Some(unknown) = unknown {
        return message(
            StatusCode::BAD_REQUEST,
            &format!("Tag with id {unknown} does not exist"),
        );
    }
    let timestamp = sandbox.next_timestamp();
    let data = sandbox.app_mut(&tenant.app);
    let Some(contact) = data.contacts.get_mut(&contact_id) else {
        return contact_not_found(contact_id);
    };
    contact.tag_ids.extend(tag_ids.iter().copied());
    contact.last_updated = timestamp;
    let entries: Vec<Value> = tag_ids
        .iter()
        .map(|id| json!({"key": id.to_string(), "value": "SUCCESS"}))
        .collect();
    json_response(StatusCode::OK, Value::Array(entries))
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
