//! A Keap REST Hook delivery turned into EventBridge events (docs/events.md, "Keap changes").
//!
//! Keap POSTs `{event_key, object_type, object_keys: [{id, apiUrl, timestamp}]}` with up to
//! 1,000 objects (developer.keap.com, "REST Hooks"; `../shared/DESIGN.md`, "Events out"). One
//! delivery becomes one event, `keap.<event_key>`, unless that entry would pass EventBridge's
//! 256 KB entry limit; then it is split into parts of whole objects. The objects are sorted
//! first, so a retried delivery (Keap retries up to four times) gives the same `delivery_id`
//! and the same parts: consumers dedupe on (`delivery_id`, `part`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::connection_id::ConnectionId;

/// `Source` of every event keapalive puts on its bus.
pub const HOOK_EVENT_SOURCE: &str = "keapalive";
/// A Keap change's `DetailType` is this followed by Keap's event key (`keap.contact.add`).
pub const HOOK_DETAIL_TYPE_PREFIX: &str = "keap.";
/// EventBridge's limit on one entry and on one `PutEvents` request, by its own formula
/// (docs.aws.amazon.com, "Calculating PutEvents event entry size").
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// What the `Time` parameter counts in that formula.
const TIME_BYTES: usize = 14;
/// Keap's documented maximum per delivery.
const MAX_OBJECTS: usize = 1_000;
/// The longest `object_type`, object id or timestamp taken (Keap's are tens of bytes).
const MAX_FIELD_BYTES: usize = 1_024;

/// A delivery Keap POSTed, as far as keapalive reads it.
#[derive(Debug, Deserialize)]
pub struct Delivery {
    pub event_key: String,
    pub object_type: String,
    pub object_keys: Vec<ObjectKey>,
}

/// One changed object: its id and when it changed (Keap's `apiUrl` is left out: it is the
/// object's REST path, which the id and `object_type` already name).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ObjectKey {
    pub id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MalformedDelivery {
    #[error("the body is not a Keap REST Hook delivery ({0})")]
    Shape(&'static str),
    #[error("the delivery holds {0} objects; Keap sends at most 1,000")]
    TooManyObjects(usize),
}

impl Delivery {
    pub fn parse(body: &[u8]) -> Result<Self, MalformedDelivery> {
        let delivery: Delivery = serde_json::from_slice(body).map_err(|e| {
            MalformedDelivery::Shape(match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "not JSON"
                }
                _ => "missing or mistyped fields",
            })
        })?;
        if delivery.event_key.is_empty() || delivery.event_key.len() > 100 {
            return Err(MalformedDelivery::Shape("event_key"));
        }
        if delivery.object_keys.len() > MAX_OBJECTS {
            return Err(MalformedDelivery::TooManyObjects(
                delivery.object_keys.len(),
            ));
        }
        if delivery
            .object_keys
            .iter()
            .any(|key| !(key.id.is_u64() || key.id.is_i64() || key.id.is_string()))
        {
            return Err(MalformedDelivery::Shape(
                "an object id is not a number or string",
            ));
        }
        // Keap's ids and timestamps are short; bounding them keeps any delivery splittable into
        // entries EventBridge takes (else it would be refused, answered 503, retried forever).
        let oversized = |text: &str| text.len() > MAX_FIELD_BYTES;
        if oversized(&delivery.object_type)
            || delivery.object_keys.iter().any(|key| {
                key.id.as_str().is_some_and(oversized)
                    || key.timestamp.as_deref().is_some_and(oversized)
            })
        {
            return Err(MalformedDelivery::Shape(
                "an object field is implausibly long",
            ));
        }
        Ok(delivery)
    }
}

/// The `Detail` of one event.
#[derive(Debug, Serialize)]
struct HookDetail<'a> {
    connection_id: &'a str,
    event_key: &'a str,
    object_type: &'a str,
    object_keys: &'a [ObjectKey],
    delivery_id: &'a str,
    /// From 1.
    part: usize,
    parts: usize,
}

/// One event ready for `PutEvents`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    pub detail_type: String,
    pub detail: String,
}

impl HookEvent {
    /// Its size by EventBridge's formula (with `Time` set).
    pub fn entry_bytes(&self) -> usize {
        entry_bytes(&self.detail_type, &self.detail)
    }
}

fn entry_bytes(detail_type: &str, detail: &str) -> usize {
    TIME_BYTES + HOOK_EVENT_SOURCE.len() + detail_type.len() + detail.len()
}

/// Stable across Keap's retries of one delivery: SHA-256 of the connection id, the event key
/// and the sorted objects with their timestamps (identical objects and timestamps are the
/// same change).
fn delivery_id(connection_id: &ConnectionId, event_key: &str, sorted: &[ObjectKey]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(connection_id.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(event_key.as_bytes());
    for key in sorted {
        hasher.update(b"\n");
        hasher.update(key.id.to_string().as_bytes());
        hasher.update(b"\t");
        hasher.update(key.timestamp.as_deref().unwrap_or_default().as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sort_key(key: &ObjectKey) -> (String, String) {
    (
        key.id.to_string(),
        key.timestamp.clone().unwrap_or_default(),
    )
}

/// The events of `delivery` for `connection_id`: one, or as many parts of whole objects as it
/// takes to keep each entry within [`MAX_ENTRY_BYTES`].
pub fn events_of(connection_id: &ConnectionId, delivery: &Delivery) -> Vec<HookEvent> {
    let mut objects = delivery.object_keys.clone();
    objects.sort_by_key(sort_key);
    objects.dedup();
    let id = delivery_id(connection_id, &delivery.event_key, &objects);
    let detail_type = format!("{HOOK_DETAIL_TYPE_PREFIX}{}", delivery.event_key);
    let render = |chunk: &[ObjectKey], part: usize, parts: usize| HookEvent {
        detail_type: detail_type.clone(),
        detail: serde_json::to_string(&HookDetail {
            connection_id: connection_id.as_str(),
            event_key: &delivery.event_key,
            object_type: &delivery.object_type,
            object_keys: chunk,
            delivery_id: &id,
            part,
            parts,
        })
        .unwrap_or_default(),
    };
    // The fewest equal parts that fit: sizes vary little between objects, and `parts` must be
    // known before any part is rendered.
    let mut parts = 1;
    loop {
        let per_part = objects.len().div_ceil(parts).max(1);
        let chunks: Vec<&[ObjectKey]> = if objects.is_empty() {
            vec![&objects[..]]
        } else {
            objects.chunks(per_part).collect()
        };
        let events: Vec<HookEvent> = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| render(chunk, i + 1, chunks.len()))
            .collect();
        if events.iter().all(|e| e.entry_bytes() <= MAX_ENTRY_BYTES) || per_part == 1 {
            return events;
        }
        parts += 1;
    }
}

/// `events` grouped into `PutEvents` requests: at most 10 entries and [`MAX_ENTRY_BYTES`] each.
pub fn requests_of(events: &[HookEvent]) -> Vec<Vec<HookEvent>> {
    let mut requests: Vec<Vec<HookEvent>> = Vec::new();
    let mut size = 0;
    for event in events {
        let bytes = event.entry_bytes();
        match requests.last_mut() {
            Some(request) if request.len() < 10 && size + bytes <= MAX_ENTRY_BYTES => {
                request.push(event.clone());
                size += bytes;
            }
            _ => {
                requests.push(vec![event.clone()]);
                size = bytes;
            }
        }
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delivery(objects: usize, timestamp_len: usize) -> Delivery {
        let keys: Vec<Value> = (0..objects)
            .map(|i| {
                json!({"id": i, "apiUrl": format!("https://api.infusionsoft.com/crm/rest/v1/contacts/{i}"),
                       "timestamp": "2".repeat(timestamp_len)})
            })
            .collect();
        Delivery::parse(
            json!({"event_key": "contact.add", "object_type": "contact", "object_keys": keys})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    fn id() -> ConnectionId {
        ConnectionId::parse("default").unwrap()
    }

    #[test]
    fn a_delivery_is_one_event_with_its_ids_and_a_stable_id() {
        let body = json!({"event_key": "contact.add", "object_type": "contact", "object_keys": [
            {"id": 3, "apiUrl": "", "timestamp": "2026-12-05T10:00:00Z"},
            {"id": 1, "apiUrl": "", "timestamp": "2026-12-05T10:00:00Z"}]});
        let events = events_of(
            &id(),
            &Delivery::parse(body.to_string().as_bytes()).unwrap(),
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].detail_type, "keap.contact.add");
        let detail: Value = serde_json::from_str(&events[0].detail).unwrap();
        assert_eq!(detail["object_keys"][0]["id"], 1);
        assert_eq!(detail["object_keys"][1]["id"], 3);
        assert_eq!(
            (detail["part"].clone(), detail["parts"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(detail["connection_id"], "default");

        // Keap's retry, objects in another order: the same delivery.
        let retried = json!({"event_key": "contact.add", "object_type": "contact", "object_keys": [
            {"id": 1, "apiUrl": "", "timestamp": "2026-12-05T10:00:00Z"},
            {"id": 3, "apiUrl": "", "timestamp": "2026-12-05T10:00:00Z"}]});
        let again = events_of(
            &id(),
            &Delivery::parse(retried.to_string().as_bytes()).unwrap(),
        );
        assert_eq!(again, events);
        // A later change of the same objects is another delivery.
        let later = json!({"event_key": "contact.add", "object_type": "contact", "object_keys": [
            {"id": 1, "apiUrl": "", "timestamp": "2026-12-05T10:00:01Z"},
            {"id": 3, "apiUrl": "", "timestamp": "2026-12-05T10:00:00Z"}]});
        let other = events_of(
            &id(),
            &Delivery::parse(later.to_string().as_bytes()).unwrap(),
        );
        let other: Value = serde_json::from_str(&other[0].detail).unwrap();
        assert_ne!(other["delivery_id"], detail["delivery_id"]);
    }

    #[test]
    fn a_delivery_too_large_for_one_entry_is_split_into_numbered_parts() {
        // 1,000 objects with 400-byte timestamps: ~420 KB, over one entry's 256 KB.
        let events = events_of(&id(), &delivery(1_000, 400));
        assert_eq!(events.len(), 2);
        let mut ids = Vec::new();
        for (i, event) in events.iter().enumerate() {
            assert!(
                event.entry_bytes() <= MAX_ENTRY_BYTES,
                "{}",
                event.entry_bytes()
            );
            let detail: Value = serde_json::from_str(&event.detail).unwrap();
            assert_eq!(detail["part"], i + 1);
            assert_eq!(detail["parts"], 2);
            ids.extend(
                detail["object_keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k["id"].clone()),
            );
        }
        assert_eq!(ids.len(), 1_000);
        // Each part goes in a request of its own: two would pass the request limit.
        assert_eq!(requests_of(&events).len(), 2);
        // Keap's usual 1,000 small objects fit one entry.
        assert_eq!(events_of(&id(), &delivery(1_000, 20)).len(), 1);
    }

    #[test]
    fn requests_hold_at_most_ten_entries() {
        let small = HookEvent {
            detail_type: "keap.contact.add".into(),
            detail: "{}".into(),
        };
        let requests = requests_of(&vec![small; 25]);
        let sizes: Vec<usize> = requests.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
    }

    #[test]
    fn anything_but_keaps_shape_is_malformed() {
        for bad in [
            &b"not json"[..],
            br#"{"event_key": "contact.add"}"#,
            br#"{"event_key": "", "object_type": "contact", "object_keys": []}"#,
            br#"{"event_key": "contact.add", "object_type": "contact", "object_keys": [{"id": {"x": 1}}]}"#,
            br#"[]"#,
        ] {
            assert!(Delivery::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let huge = json!({"event_key": "contact.add", "object_type": "contact",
                          "object_keys": [{"id": 1, "timestamp": "9".repeat(300_000)}]});
        assert!(
            Delivery::parse(huge.to_string().as_bytes()).is_err(),
            "an unsplittable object"
        );
        let too_many: Vec<Value> = (0..1_001).map(|i| json!({"id": i})).collect();
        let body =
            json!({"event_key": "contact.add", "object_type": "contact", "object_keys": too_many});
        assert_eq!(
            Delivery::parse(body.to_string().as_bytes()).unwrap_err(),
            MalformedDelivery::TooManyObjects(1_001)
        );
    }
}
