//! The public upsert response.

use serde::{Deserialize, Serialize};

/// `{"contact_id": 123, "created": true, "tags_applied": [45]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertResponse {
    /// Keap's contact id.
    pub contact_id: i64,
    /// Whether Keap created the contact (HTTP 201) rather than updated one (200).
    pub created: bool,
    /// Ids of the tags applied, in request order (names resolved).
    pub tags_applied: Vec<i64>,
}
