//! Keap REST Hook subscriptions (docs/design.md, "Data model"): one item per subscription,
//! `hook#<hex SHA-256 of its URL token>`.
//!
//! Keap signs no delivery: the only proof that a POST to `…/keap/hooks/<token>` comes from Keap
//! is a token nobody else knows. It is 256 random bits, handed to Keap once inside the hook URL
//! and stored only as its hash, so the table (a backup, an export, a role that reads it) never
//! holds a usable URL. Hook items carry `hook_connection_id`, the key of their own sparse index
//! ([`HOOK_INDEX`]), and no `status` or `connection_id`: they are in neither of the other
//! indexes, so the refresher and the removal of links never see them.

use aws_sdk_dynamodb::types::AttributeValue;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::dynamodb::{Written, send_update};
use super::model::{Item, number, string};
use super::{DynamoDbTokenStore, StoreError};
use crate::connection_id::ConnectionId;

pub(crate) const HOOK_PREFIX: &str = "hook#";
/// Sparse global secondary index on `hook_connection_id` (hash key): hook items only, keys
/// only. Listing is eventually consistent; every decision re-reads the item consistently.
pub const HOOK_INDEX: &str = "hooks-by-connection";

const TOKEN_BYTES: usize = 32;
const TOKEN_HEX_LEN: usize = TOKEN_BYTES * 2;

/// Starts the hash that keap-proxy shows in place of a hook URL's token.
pub const HASHED_TOKEN_PREFIX: &str = "sha256-";

/// The secret segment of a hook URL: 256 random bits as lower-case hex.
pub struct HookToken(SecretString);

impl HookToken {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(SecretString::from(hex_of(&bytes))))
    }

    /// A URL path segment that can be a token; anything else was never issued and is refused
    /// without a DynamoDB call.
    pub fn from_path_segment(segment: &str) -> Option<Self> {
        let well_formed = segment.len() == TOKEN_HEX_LEN
            && segment
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| Self(SecretString::from(segment.to_owned())))
    }

    pub fn hash(&self) -> HookTokenHash {
        HookTokenHash(hex_of(&Sha256::digest(self.0.expose_secret().as_bytes())))
    }

    /// For the hook URL given to Keap, and nothing else.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

/// The stored form of a [`HookToken`]. Not a secret (the token cannot be derived from it), but
/// shown masked all the same: it names a subscription and need not be read in full.
#[derive(Clone, PartialEq, Eq)]
pub struct HookTokenHash(String);

impl HookTokenHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 8 hex digits, for logs and `list_hooks`.
    pub fn masked(&self) -> String {
        format!("{}…", &self.0[..8.min(self.0.len())])
    }

    /// The hash of a hook URL's token segment, whatever it holds (keap-proxy shows its
    /// callers this instead of the token: [`HookTokenHash::in_url`]).
    pub fn of_segment(segment: &str) -> Self {
        Self(hex_of(&Sha256::digest(segment.as_bytes())))
    }

    /// What stands for the token in a hook URL keap-proxy answers with: enough for keapalive
    /// to recognise its subscription, nothing to deliver with.
    pub fn in_url(&self) -> String {
        format!("{HASHED_TOKEN_PREFIX}{}", self.0)
    }

    /// `hook_url` ends in the token this is the hash of (as Keap lists it), or in
    /// [`HookTokenHash::in_url`] (as keap-proxy answers): the hook at Keap is this
    /// subscription's. A URL names its token; the token is 256 random bits.
    pub fn is_of_url(&self, hook_url: &str) -> bool {
        let Some(segment) = hook_url.rsplit('/').next() else {
            return false;
        };
        match segment.strip_prefix(HASHED_TOKEN_PREFIX) {
            Some(hash) => self.matches(hash),
            None => HookToken::from_path_segment(segment)
                .is_some_and(|token| self.matches(token.hash().as_str())),
        }
    }

    /// Compared in constant time: how long a comparison takes says nothing about the token.
    fn matches(&self, stored: &str) -> bool {
        self.0.as_bytes().ct_eq(stored.as_bytes()).into()
    }
}

impl std::fmt::Debug for HookTokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

/// One Keap REST Hook keapalive subscribed: which connection and event key its deliveries are
/// for, and Keap's key for it once Keap created it.
#[derive(Debug, Clone)]
pub struct HookSubscription {
    pub token_hash: HookTokenHash,
    pub connection_id: ConnectionId,
    pub event_key: String,
    /// Keap's key of the hook (`None` until Keap answered the create call).
    pub keap_hook_key: Option<String>,
    pub created_at: i64,
    /// When keapalive first saw the hook Inactive at Keap; cleared only once the gap event
    /// was published.
    pub inactive_since: Option<i64>,
}

fn hook_key(hash: &HookTokenHash) -> AttributeValue {
    string(format!("{HOOK_PREFIX}{}", hash.as_str()))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hook(item: &Item) -> Result<HookSubscription, StoreError> {
    let text = |name: &str| match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value.clone()),
        _ => None,
    };
    let integer = |name: &str| match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse::<i64>().ok(),
        _ => None,
    };
    let pk = text("pk").unwrap_or_default();
    let malformed = |reason: &str| StoreError::Malformed {
        pk: HookTokenHash(pk.trim_start_matches(HOOK_PREFIX).to_owned()).masked(),
        reason: reason.to_owned(),
    };
    let hash = pk
        .strip_prefix(HOOK_PREFIX)
        .ok_or_else(|| malformed("not a hook item"))?;
    let connection_id = text("hook_connection_id")
        .and_then(|id| ConnectionId::parse(&id).ok())
        .ok_or_else(|| malformed("hook_connection_id is missing or invalid"))?;
    Ok(HookSubscription {
        token_hash: HookTokenHash(hash.to_owned()),
        connection_id,
        event_key: text("event_key").ok_or_else(|| malformed("event_key is missing"))?,
        keap_hook_key: text("keap_hook_key"),
        created_at: integer("created_at").ok_or_else(|| malformed("created_at is missing"))?,
        inactive_since: integer("inactive_since"),
    })
}

impl DynamoDbTokenStore {
    /// Stores a new subscription before Keap is asked for it (Keap verifies the URL during its
    /// create call, so the item must already answer). `false`: an item with this hash exists.
    pub async fn put_hook(
        &self,
        hash: &HookTokenHash,
        connection_id: &ConnectionId,
        event_key: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let request = self
            .update(hook_key(hash))
            .update_expression(
                "SET hook_connection_id = :connection, event_key = :event_key, created_at = :now",
            )
            .condition_expression("attribute_not_exists(pk)")
            .expression_attribute_values(":connection", string(connection_id.as_str()))
            .expression_attribute_values(":event_key", string(event_key))
            .expression_attribute_values(":now", number(now));
        Ok(match send_update(request).await? {
            Written::Applied(_) => true,
            // A retry of our own landed write finds exactly what it wrote.
            Written::ConditionFailed(Some(old)) => parse_hook(&old).is_ok_and(|existing| {
                existing.connection_id == *connection_id
                    && existing.event_key == event_key
                    && existing.created_at == now
            }),
            Written::ConditionFailed(None) => false,
        })
    }

    /// The subscription a delivery's token names (a consistent read). `None` means the item
    /// is definitely absent: only then may a receiver answer Keap 410.
    pub async fn hook(&self, hash: &HookTokenHash) -> Result<Option<HookSubscription>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", hook_key(hash))
            .consistent_read(true)
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        let Some(item) = output.item else {
            return Ok(None);
        };
        let hook = parse_hook(&item)?;
        Ok(hash.matches(hook.token_hash.as_str()).then_some(hook))
    }

    /// Every subscription of `connection_id`: candidates from [`HOOK_INDEX`], each re-read
    /// consistently (one removed meanwhile is left out).
    pub async fn hooks_of(
        &self,
        connection_id: &ConnectionId,
    ) -> Result<Vec<HookSubscription>, StoreError> {
        let mut hooks = Vec::new();
        for pk in self
            .sparse_index_keys(
                HOOK_INDEX,
                "hook_connection_id",
                connection_id.as_str(),
                HOOK_PREFIX,
            )
            .await?
        {
            let hash = HookTokenHash(pk[HOOK_PREFIX.len()..].to_owned());
            if let Some(hook) = self.hook(&hash).await?
                && hook.connection_id == *connection_id
            {
                hooks.push(hook);
            }
        }
        hooks.sort_by(|a, b| (&a.event_key, a.created_at).cmp(&(&b.event_key, b.created_at)));
        Ok(hooks)
    }

    /// Every subscription's hash with the connection id it names: a scan of the keys-only
    /// sparse [`HOOK_INDEX`], which holds hook items and nothing else (how the scheduled check
    /// finds subscriptions whose connection is gone).
    pub async fn every_hook_owner(&self) -> Result<Vec<(HookTokenHash, String)>, StoreError> {
        let mut owners = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .index_name(HOOK_INDEX)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page.map_err(StoreError::from_sdk)?.items() {
                if let (Some(AttributeValue::S(pk)), Some(AttributeValue::S(connection))) =
                    (item.get("pk"), item.get("hook_connection_id"))
                    && let Some(hash) = pk.strip_prefix(HOOK_PREFIX)
                {
                    owners.push((HookTokenHash(hash.to_owned()), connection.clone()));
                }
            }
        }
        Ok(owners)
    }

    /// Notes Keap's key for the hook. `false`: the subscription was removed meanwhile.
    pub async fn record_keap_hook_key(
        &self,
        hash: &HookTokenHash,
        keap_hook_key: &str,
    ) -> Result<bool, StoreError> {
        let request = self
            .update(hook_key(hash))
            .update_expression("SET keap_hook_key = :key")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":key", string(keap_hook_key));
        Ok(match send_update(request).await? {
            Written::Applied(_) => true,
            Written::ConditionFailed(_) => false,
        })
    }

    /// Keeps the first time the hook was seen Inactive (a later sighting changes nothing).
    pub async fn note_hook_inactive(
        &self,
        hash: &HookTokenHash,
        seen_at: i64,
    ) -> Result<Option<i64>, StoreError> {
        let request = self
            .update(hook_key(hash))
            .update_expression("SET inactive_since = if_not_exists(inactive_since, :seen)")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":seen", number(seen_at))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew);
        Ok(match send_update(request).await? {
            Written::Applied(Some(updated)) => match updated.get("inactive_since") {
                Some(AttributeValue::N(value)) => value.parse().ok(),
                _ => None,
            },
            Written::Applied(None) | Written::ConditionFailed(_) => None,
        })
    }

    /// Clears `inactive_since` once the gap event for that sighting was accepted; a newer
    /// sighting (another value) is left for the next check.
    pub async fn clear_hook_inactive(
        &self,
        hash: &HookTokenHash,
        inactive_since: i64,
    ) -> Result<(), StoreError> {
        let request = self
            .update(hook_key(hash))
            .update_expression("REMOVE inactive_since")
            .condition_expression("inactive_since = :since")
            .expression_attribute_values(":since", number(inactive_since));
        send_update(request).await.map(|_| ())
    }

    /// Forgets the subscription: deliveries for its token get 410 from now on.
    pub async fn delete_hook(&self, hash: &HookTokenHash) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", hook_key(hash))
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_random_bits_and_only_their_hash_is_kept() {
        let a = HookToken::generate().unwrap();
        let b = HookToken::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 64);
        let parsed = HookToken::from_path_segment(a.expose_secret()).unwrap();
        assert!(parsed.hash() == a.hash());
        assert!(!a.hash().as_str().contains(a.expose_secret()));
        assert_eq!(a.hash().as_str().len(), 64);
        assert!(!format!("{:?}", a.hash()).contains(a.hash().as_str()));
    }

    #[test]
    fn a_segment_that_was_never_issued_is_refused_before_any_lookup() {
        for bad in [
            "",
            "abc",
            &"A".repeat(64),
            &"g".repeat(64),
            &"a".repeat(65),
            "../x",
        ] {
            assert!(HookToken::from_path_segment(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_hook_url_is_recognised_by_the_token_it_ends_in() {
        let token = HookToken::generate().unwrap();
        let other = HookToken::generate().unwrap();
        let url =
            |t: &HookToken| format!("https://api.example/prod/keap/hooks/{}", t.expose_secret());
        assert!(token.hash().is_of_url(&url(&token)));
        assert!(!token.hash().is_of_url(&url(&other)));
        assert!(!token.hash().is_of_url(&format!("{}/", url(&token))));
        assert!(!token.hash().is_of_url(token.hash().as_str()));
        let proxied = format!(
            "https://api.example/prod/keap/hooks/{}",
            token.hash().in_url()
        );
        assert!(token.hash().is_of_url(&proxied));
        assert!(!other.hash().is_of_url(&proxied));
        assert!(HookTokenHash::of_segment(token.expose_secret()) == token.hash());
    }

    #[test]
    fn hashes_compare_by_content() {
        let hash = HookToken::generate().unwrap().hash();
        assert!(hash.matches(hash.as_str()));
        assert!(!hash.matches(&hash.as_str()[1..]));
        assert!(!hash.matches(&"0".repeat(64)));
    }
}
