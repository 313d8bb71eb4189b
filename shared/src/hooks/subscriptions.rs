//! The operator's REST Hook commands (docs/events.md, "Keap changes"): `subscribe_hooks`,
//! `list_hooks`, `unsubscribe_hooks`, reaching Keap only through keap-proxy.
//!
//! A subscription's item is written **before** Keap is asked: Keap verifies the URL during its
//! create call, and keap-hooks echoes the handshake only for a token it can find. A create that
//! fails leaves no item behind; an unsubscribe forgets the token first (deliveries then get 410)
//! and deletes at Keap second.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};
use url::Url;

use super::via_proxy::{KeapViaProxy, PROXY_READ_TIMEOUT, ViaProxyError};
use crate::clock::now_epoch_secs;
use crate::connection_id::ConnectionId;
use crate::deadline::Deadline;
use crate::token_store::{DynamoDbTokenStore, HookSubscription, HookToken, StoreError};

/// A proxy call (a create, a delete, the final listing) is not started with less time left:
/// its read timeout and a few item writes.
pub(super) const TIME_PER_PROXY_CALL: Duration =
    Duration::from_secs(PROXY_READ_TIMEOUT.as_secs() + 5);
/// An item without a Keap key younger than this may belong to a create still running (the
/// operator's Timeout is 90 s): it is left alone.
const CREATE_MAY_STILL_RUN_SECS: i64 = 120;

/// Keap's event keys are short dotted names (`contact.add`, `invoice.payment.add`).
const MAX_EVENT_KEY_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HooksCommandError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    KeapRejected(String),
    #[error("{0}")]
    Configuration(String),
}

impl From<StoreError> for HooksCommandError {
    fn from(error: StoreError) -> Self {
        if error.is_retryable() {
            Self::Unavailable(error.to_string())
        } else {
            Self::Configuration(error.to_string())
        }
    }
}

impl From<ViaProxyError> for HooksCommandError {
    fn from(error: ViaProxyError) -> Self {
        match &error {
            ViaProxyError::Proxy { error_type, .. } if error_type == "ValidationError" => {
                Self::Validation(error.to_string())
            }
            ViaProxyError::Proxy { error_type, .. }
                if error_type == "NotAuthorized" || error_type == "KeapRejected" =>
            {
                Self::KeapRejected(error.to_string())
            }
            _ => Self::Unavailable(error.to_string()),
        }
    }
}

/// One subscription as a command answers it: never the token, only the start of its hash.
#[derive(Debug, Serialize)]
pub struct HookView {
    pub event_key: String,
    pub keap_hook_key: Option<String>,
    /// Keap's status (`Verified`, `Unverified`, `Inactive`), `null` when Keap does not list it.
    pub status: Option<String>,
    pub token: String,
    pub created_at: i64,
    /// This call created it (`subscribe_hooks`); `false`: it existed already.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct HookListing {
    pub connection_id: String,
    pub hooks: Vec<HookView>,
    /// Hooks of the Keap account whose URL is not under this stage's base: counted, never shown
    /// (their URLs may hold another integration's secret).
    pub other_hooks_at_keap: usize,
    /// `subscribe_hooks` ran out of time before these: send the command again (it is
    /// idempotent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_started_for_lack_of_time: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Unsubscribed {
    pub connection_id: String,
    pub removed: Vec<String>,
    /// Forgotten here, but Keap's delete failed: Keap's deliveries get 410 and Keap drops the
    /// hook itself.
    pub keap_delete_failed: Vec<String>,
}

/// Subscriptions [`HookSubscriptions::forget_all`] removed.
#[derive(Debug, Default, Serialize)]
pub struct Forgotten {
    /// The event key of each subscription forgotten (deliveries to it get 410 from now on).
    pub event_keys: Vec<String>,
    /// Event keys whose hook Keap did not delete (Keap drops them itself after a 410).
    pub keap_delete_failed: Vec<String>,
}

/// What the operator needs for the hook commands (`KEAPALIVE_HOOKS_BASE_URL`,
/// `KEAPALIVE_PROXY_FUNCTION`).
#[derive(Clone)]
pub struct HookSubscriptions {
    store: DynamoDbTokenStore,
    keap: KeapViaProxy,
    /// `https://<api>/keap/hooks`: a hook URL is this, `/`, the token.
    base_url: Url,
}

/// Keap's view of one hook (`GET /v1/hooks`).
struct KeapHook {
    key: String,
    event_key: String,
    hook_url: String,
    status: Option<String>,
}

impl HookSubscriptions {
    pub fn new(store: DynamoDbTokenStore, keap: KeapViaProxy, base_url: Url) -> Self {
        Self {
            store,
            keap,
            base_url,
        }
    }

    fn hook_url(&self, token: &HookToken) -> String {
        format!(
            "{}/{}",
            self.base_url.as_str().trim_end_matches('/'),
            token.expose_secret()
        )
    }

    fn is_ours(&self, hook_url: &str) -> bool {
        let base = format!("{}/", self.base_url.as_str().trim_end_matches('/'));
        hook_url.starts_with(&base)
    }

    pub async fn subscribe(
        &self,
        id: &ConnectionId,
        event_keys: &[String],
        deadline: Deadline,
    ) -> Result<HookListing, HooksCommandError> {
        check_event_keys(event_keys)?;
        let mut event_keys = event_keys.to_vec();
        event_keys.sort();
        event_keys.dedup();
        self.check_known_to_keap(id, &event_keys).await?;
        let existing: Vec<HookSubscription> = self
            .store
            .hooks_of(id)
            .await?
            .into_iter()
            .filter(|hook| event_keys.contains(&hook.event_key))
            .collect();
        let settled = self.settle(id, &existing).await?;
        let mut created = Vec::new();
        let mut not_started = Vec::new();
        for event_key in &event_keys {
            if settled.contains(event_key) {
                continue;
            }
            // Stopped here rather than cut off by Lambda mid-create (which leaves an item whose
            // Keap key was never noted); a second call finishes the rest.
            if deadline.remaining() < TIME_PER_PROXY_CALL {
                not_started.push(event_key.clone());
                continue;
            }
            created.push(self.create(id, event_key).await?);
        }
        // Keap's statuses only while a proxy call still fits: an answer Lambda cuts off is lost
        // although the work is done.
        let mut listing = if deadline.remaining() < TIME_PER_PROXY_CALL {
            self.listing(id, None).await?
        } else {
            self.list(id).await?
        };
        for view in &mut listing.hooks {
            if event_keys.contains(&view.event_key) {
                view.created = Some(created.contains(&view.token));
            }
        }
        listing.not_started_for_lack_of_time = not_started;
        Ok(listing)
    }

    /// The event keys among `existing` that Keap serves at this account: an item counts only
    /// when Keap lists a hook for its event at its token's URL (whose key it notes, if it was
    /// never noted: Keap's answer lost, or the invocation ended mid-create). An item Keap does
    /// not list — deleted at Keap, or created at the account the connection left — is
    /// forgotten (its deliveries get 410), so the caller creates a fresh one instead of
    /// answering "subscribed" for a feed that no longer comes; unless it is young enough to
    /// belong to a create still running.
    async fn settle(
        &self,
        id: &ConnectionId,
        existing: &[HookSubscription],
    ) -> Result<Vec<String>, HooksCommandError> {
        if existing.is_empty() {
            return Ok(Vec::new());
        }
        let at_keap = self.keap_hooks(id).await?;
        let mut settled = Vec::new();
        for hook in existing {
            let listed = at_keap
                .iter()
                .find(|k| k.event_key == hook.event_key && hook.token_hash.is_of_url(&k.hook_url));
            match listed {
                Some(listed) if hook.keap_hook_key.as_deref() == Some(listed.key.as_str()) => {
                    settled.push(hook.event_key.clone());
                }
                Some(listed) => {
                    if self
                        .store
                        .record_keap_hook_key(&hook.token_hash, &listed.key)
                        .await?
                    {
                        info!(connection = %id, event_key = %hook.event_key, hook = %hook.token_hash.masked(), "adopted Keap's hook at the subscription's URL");
                        settled.push(hook.event_key.clone());
                    }
                }
                // No key yet: perhaps a create still running (Keap's answer on its way).
                None if hook.keap_hook_key.is_none()
                    && now_epoch_secs() - hook.created_at < CREATE_MAY_STILL_RUN_SECS =>
                {
                    settled.push(hook.event_key.clone());
                }
                None => {
                    self.store.delete_hook(&hook.token_hash).await?;
                    info!(connection = %id, event_key = %hook.event_key, hook = %hook.token_hash.masked(), "forgot a subscription Keap does not list at this account");
                }
            }
        }
        Ok(settled)
    }

    /// One subscription: the item, then Keap's create (which verifies through keap-hooks).
    async fn create(
        &self,
        id: &ConnectionId,
        event_key: &str,
    ) -> Result<String, HooksCommandError> {
        let token = HookToken::generate()
            .map_err(|e| HooksCommandError::Unavailable(format!("no random token: {e}")))?;
        let hash = token.hash();
        if !self
            .store
            .put_hook(&hash, id, event_key, now_epoch_secs())
            .await?
        {
            return Err(HooksCommandError::Unavailable(
                "a subscription item could not be written; try again".to_owned(),
            ));
        }
        // A removal that read the subscriptions before this item landed would miss it: once the
        // item is written, the connection must still be there. A removal racing this very moment
        // can still miss it in the (eventually consistent) index; `check_hooks` forgets it then.
        if self.store.read_authorization(id).await?.is_none() {
            self.store.delete_hook(&hash).await?;
            return Err(HooksCommandError::Validation(format!(
                "connection {id} does not exist (it was removed): nothing was subscribed"
            )));
        }
        let body = json!({"eventKey": event_key, "hookUrl": self.hook_url(&token)});
        let answer = match self.keap.request(id, "POST", "/v1/hooks", Some(body)).await {
            Ok(answer) if answer.is_success() => answer,
            failed => {
                // Nothing at Keap to deliver to it (or Keap's state unknown: its deliveries,
                // if any, get 410 and Keap drops the hook).
                if let Err(e) = self.store.delete_hook(&hash).await {
                    warn!(connection = %id, event_key, error = %e, "a failed subscription's item could not be deleted; deliveries to it get 410");
                }
                return Err(match failed {
                    Ok(answer) => HooksCommandError::KeapRejected(format!(
                        "Keap answered {} to the subscription for {event_key}",
                        answer.status
                    )),
                    Err(e) => e.into(),
                });
            }
        };
        let Some(key) = keap_key(&answer.body) else {
            return Err(HooksCommandError::Unavailable(format!(
                "Keap's answer to the subscription for {event_key} names no hook key"
            )));
        };
        if !self.store.record_keap_hook_key(&hash, &key).await? {
            warn!(connection = %id, event_key, "the subscription was removed while Keap created it");
        }
        info!(connection = %id, event_key, hook = %hash.masked(), "subscribed");
        Ok(hash.masked())
    }

    pub async fn list(&self, id: &ConnectionId) -> Result<HookListing, HooksCommandError> {
        let keap = self.keap_hooks(id).await?;
        self.listing(id, Some(keap)).await
    }

    /// keapalive's subscriptions beside Keap's view of them; `None`: Keap was not asked (every
    /// status `null`, `other_hooks_at_keap` 0).
    async fn listing(
        &self,
        id: &ConnectionId,
        keap: Option<Vec<KeapHook>>,
    ) -> Result<HookListing, HooksCommandError> {
        let ours = self.store.hooks_of(id).await?;
        let keap = keap.unwrap_or_default();
        let other_hooks_at_keap = keap.iter().filter(|h| !self.is_ours(&h.hook_url)).count();
        let hooks = ours
            .into_iter()
            .map(|hook| {
                let status = hook.keap_hook_key.as_ref().and_then(|key| {
                    keap.iter()
                        .find(|k| &k.key == key && k.event_key == hook.event_key)
                        .and_then(|k| k.status.clone())
                });
                view(hook, status)
            })
            .collect();
        Ok(HookListing {
            connection_id: id.as_str().to_owned(),
            hooks,
            other_hooks_at_keap,
            not_started_for_lack_of_time: Vec::new(),
        })
    }

    pub async fn unsubscribe(
        &self,
        id: &ConnectionId,
        event_keys: &[String],
    ) -> Result<Unsubscribed, HooksCommandError> {
        check_event_keys(event_keys)?;
        let mut removed = Vec::new();
        let mut keap_delete_failed = Vec::new();
        for hook in self.store.hooks_of(id).await? {
            if !event_keys.contains(&hook.event_key) {
                continue;
            }
            // Forgotten first: from now on its deliveries get 410.
            self.store.delete_hook(&hook.token_hash).await?;
            if !self.delete_at_keap(id, &hook).await {
                keap_delete_failed.push(hook.event_key.clone());
            }
            removed.push(hook.event_key);
        }
        Ok(Unsubscribed {
            connection_id: id.as_str().to_owned(),
            removed,
            keap_delete_failed,
        })
    }

    /// Every subscription of a connection being removed or moved to another Keap account: the
    /// items first (deliveries get 410 from then on), then Keap's hooks, best-effort, while the
    /// connection still reaches its account (keap-proxy needs its credential).
    pub async fn forget_all(
        &self,
        id: &ConnectionId,
        deadline: Deadline,
    ) -> Result<Forgotten, HooksCommandError> {
        let hooks = self.store.hooks_of(id).await?;
        for hook in &hooks {
            self.store.delete_hook(&hook.token_hash).await?;
        }
        // A Keap delete that no longer fits is listed as failed: its hook gets 410s and Keap
        // drops it, and the caller still answers (with the keys to subscribe again).
        let mut keap_delete_failed = Vec::new();
        for hook in &hooks {
            if deadline.remaining() < TIME_PER_PROXY_CALL || !self.delete_at_keap(id, hook).await {
                keap_delete_failed.push(hook.event_key.clone());
            }
        }
        Ok(Forgotten {
            event_keys: hooks.into_iter().map(|hook| hook.event_key).collect(),
            keap_delete_failed,
        })
    }

    /// Subscriptions the (eventually consistent) index shows only once the connection is gone:
    /// one written a moment before the removal. Forgotten here (their deliveries get 410 and
    /// Keap drops the hook); Keap cannot be asked any more, the credential is gone.
    pub async fn forget_stragglers(&self, id: &ConnectionId) -> Result<usize, HooksCommandError> {
        let hooks = self.store.hooks_of(id).await?;
        for hook in &hooks {
            self.store.delete_hook(&hook.token_hash).await?;
        }
        if !hooks.is_empty() {
            warn!(connection = %id, forgotten = hooks.len(), "subscriptions written during the removal were forgotten; Keap drops their hooks after a 410");
        }
        Ok(hooks.len())
    }

    /// Deletes the hook at Keap (best-effort: its item is gone already, so a hook Keap keeps
    /// earns a 410 and Keap drops it). `false` when Keap or the proxy refused; a hook Keap never
    /// created, or no longer has, is done.
    async fn delete_at_keap(&self, id: &ConnectionId, hook: &HookSubscription) -> bool {
        let Some(key) = &hook.keap_hook_key else {
            return true;
        };
        let path = format!("/v1/hooks/{key}");
        match self.keap.request(id, "DELETE", &path, None).await {
            Ok(answer) if answer.is_success() || answer.status == 404 => true,
            other => {
                warn!(connection = %id, event_key = %hook.event_key, ok = other.is_ok(), "Keap's delete of a hook failed; its deliveries get 410");
                false
            }
        }
    }

    async fn check_known_to_keap(
        &self,
        id: &ConnectionId,
        event_keys: &[String],
    ) -> Result<(), HooksCommandError> {
        let answer = self
            .keap
            .request(id, "GET", "/v1/hooks/event_keys", None)
            .await?;
        if !answer.is_success() {
            return Err(HooksCommandError::KeapRejected(format!(
                "Keap answered {} to GET /v1/hooks/event_keys",
                answer.status
            )));
        }
        let known: Vec<&str> = answer
            .body
            .as_array()
            .map(|keys| keys.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let unknown: Vec<&str> = event_keys
            .iter()
            .map(String::as_str)
            .filter(|key| !known.contains(key))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(HooksCommandError::Validation(format!(
                "Keap knows no event key {}; GET /v1/hooks/event_keys (through keap-proxy) lists them",
                unknown.join(", ")
            )))
        }
    }

    async fn keap_hooks(&self, id: &ConnectionId) -> Result<Vec<KeapHook>, HooksCommandError> {
        let answer = self.keap.request(id, "GET", "/v1/hooks", None).await?;
        if !answer.is_success() {
            return Err(HooksCommandError::KeapRejected(format!(
                "Keap answered {} to GET /v1/hooks",
                answer.status
            )));
        }
        let Some(hooks) = answer.body.as_array() else {
            return Err(HooksCommandError::Unavailable(
                "Keap's answer to GET /v1/hooks is not a list of hooks".to_owned(),
            ));
        };
        Ok(hooks
            .iter()
            .filter_map(|hook| {
                Some(KeapHook {
                    key: keap_key(hook)?,
                    event_key: hook.get("eventKey")?.as_str()?.to_owned(),
                    hook_url: hook.get("hookUrl")?.as_str()?.to_owned(),
                    status: hook
                        .get("status")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                })
            })
            .collect())
    }
}

/// Keap's hook key: a number or a string in its answers.
pub(super) fn keap_key(hook: &Value) -> Option<String> {
    match hook.get("key")? {
        Value::String(key) if !key.is_empty() => Some(key.clone()),
        Value::Number(key) => Some(key.to_string()),
        _ => None,
    }
}

fn view(hook: HookSubscription, status: Option<String>) -> HookView {
    HookView {
        event_key: hook.event_key,
        keap_hook_key: hook.keap_hook_key,
        status,
        token: hook.token_hash.masked(),
        created_at: hook.created_at,
        created: None,
    }
}

fn check_event_keys(event_keys: &[String]) -> Result<(), HooksCommandError> {
    if event_keys.is_empty() {
        return Err(HooksCommandError::Validation(
            "event_keys must name at least one Keap event key, e.g. [\"contact.add\"]".to_owned(),
        ));
    }
    let well_formed = |key: &String| {
        !key.is_empty()
            && key.len() <= MAX_EVENT_KEY_CHARS
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    };
    if event_keys.iter().all(well_formed) {
        Ok(())
    } else {
        Err(HooksCommandError::Validation(
            "event_keys: each is a Keap event key such as contact.add (letters, digits, dots)"
                .to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_are_checked_before_any_call() {
        assert!(check_event_keys(&[]).is_err());
        assert!(check_event_keys(&["contact.add".into(), "invoice.payment.add".into()]).is_ok());
        for bad in ["", "contact add", "../x", &"a".repeat(65)] {
            assert!(check_event_keys(&[bad.to_owned()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keap_keys_are_numbers_or_strings() {
        assert_eq!(keap_key(&json!({"key": 71})), Some("71".to_owned()));
        assert_eq!(keap_key(&json!({"key": "h71"})), Some("h71".to_owned()));
        assert_eq!(keap_key(&json!({"key": ""})), None);
        assert_eq!(keap_key(&json!({})), None);
    }
}
