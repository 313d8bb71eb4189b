//! What the sandbox remembers about REST Hooks: the subscriptions of every app, the log of what
//! was POSTed to their URLs, and the timing scale. Lives inside [`crate::state::State`], so it is
//! read and changed under the sandbox's one lock; nothing here awaits.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::task::AbortHandle;

use crate::types::{Hook, HookAttempt, HookStatus};

pub(crate) struct StoredHook {
    app: String,
    event_key: String,
    hook_url: String,
    status: HookStatus,
    /// The `X-Hook-Secret` of the latest handshake: what `delayedVerify` must present.
    secret: Option<String>,
}

/// How `delayedVerify` went.
pub(crate) enum DelayedVerify {
    Verified(Hook),
    NotFound,
    WrongSecret,
}

pub(crate) struct HookStore {
    /// By key. Keys are numbers, unique across apps, as Keap's are (`"key": "7"`).
    hooks: BTreeMap<u64, StoredHook>,
    next_key: u64,
    attempts: Vec<HookAttempt>,
    next_delivery: u64,
    /// Multiplies Keap's retry delays (1.0: 30–60 s, 30–60 s, 5 min, 30 min).
    pub delay_scale: f64,
    /// Multiplies the 30 s Keap waits for an answer (deliveries and handshakes).
    pub timeout_scale: f64,
    /// Deliveries (each up to four attempts) not finished yet.
    in_flight: usize,
    /// The background delivery tasks, aborted when the sandbox stops.
    tasks: Vec<AbortHandle>,
}

impl Default for HookStore {
    fn default() -> Self {
        HookStore {
            hooks: BTreeMap::new(),
            next_key: 1,
            attempts: Vec::new(),
            next_delivery: 1,
            delay_scale: 1.0,
            timeout_scale: 1.0,
            in_flight: 0,
            tasks: Vec::new(),
        }
    }
}

impl StoredHook {
    fn to_hook(&self, key: u64) -> Hook {
        Hook {
            key: key.to_string(),
            event_key: self.event_key.clone(),
            hook_url: self.hook_url.clone(),
            status: self.status,
        }
    }
}

/// Keap's `RestHook` model.
pub(crate) fn hook_json(hook: &Hook) -> Value {
    json!({
        "key": hook.key,
        "eventKey": hook.event_key,
        "hookUrl": hook.hook_url,
        "status": hook.status.as_str(),
    })
}

impl HookStore {
    fn find(&self, app: Option<&str>, key: &str) -> Option<(u64, &StoredHook)> {
        let id = key.parse::<u64>().ok()?;
        self.hooks
            .get(&id)
            .filter(|hook| app.is_none_or(|app| hook.app == app))
            .map(|hook| (id, hook))
    }

    fn find_mut(&mut self, app: Option<&str>, key: &str) -> Option<(u64, &mut StoredHook)> {
        let id = key.parse::<u64>().ok()?;
        self.hooks
            .get_mut(&id)
            .filter(|hook| app.is_none_or(|app| hook.app == app))
            .map(|hook| (id, hook))
    }

    /// A new subscription starts `Unverified`; the create call's handshake may verify it.
    pub(crate) fn create(&mut self, app: &str, event_key: &str, hook_url: &str) -> Hook {
        let id = self.next_key;
        self.next_key += 1;
        let hook = StoredHook {
            app: app.to_owned(),
            event_key: event_key.to_owned(),
            hook_url: hook_url.to_owned(),
            status: HookStatus::Unverified,
            secret: None,
        };
        let answer = hook.to_hook(id);
        self.hooks.insert(id, hook);
        answer
    }

    /// `app`'s hook `key`; another app's key is as unknown as a key never issued.
    pub(crate) fn get(&self, app: &str, key: &str) -> Option<Hook> {
        self.find(Some(app), key).map(|(id, hook)| hook.to_hook(id))
    }

    pub(crate) fn list(&self, app: &str) -> Vec<Hook> {
        self.hooks
            .iter()
            .filter(|(_, hook)| hook.app == app)
            .map(|(id, hook)| hook.to_hook(*id))
            .collect()
    }

    pub(crate) fn delete(&mut self, app: &str, key: &str) -> bool {
        match self.find(Some(app), key) {
            Some((id, _)) => self.hooks.remove(&id).is_some(),
            None => false,
        }
    }

    /// Starts a handshake: remembers its secret (replacing any earlier one) and answers where
    /// to send it, with the hook's app and event key for the log.
    pub(crate) fn begin_handshake(
        &mut self,
        app: &str,
        key: &str,
        secret: &str,
    ) -> Option<(String, String)> {
        let (_, hook) = self.find_mut(Some(app), key)?;
        hook.secret = Some(secret.to_owned());
        Some((hook.hook_url.clone(), hook.event_key.clone()))
    }

    /// Ends the handshake that sent `secret`. An echo verifies (re-activating an `Inactive`
    /// hook: Keap's `verify` is how one is reactivated). A failed handshake leaves an
    /// `Inactive` hook `Inactive` and makes any other `Unverified`. A hook deleted meanwhile,
    /// or whose newer handshake superseded this one, is left alone.
    pub(crate) fn end_handshake(&mut self, key: &str, secret: &str, echoed: bool) -> Option<Hook> {
        let (id, hook) = self.find_mut(None, key)?;
        if hook.secret.as_deref() == Some(secret) {
            hook.status = match (echoed, hook.status) {
                (true, _) => HookStatus::Verified,
                (false, HookStatus::Inactive) => HookStatus::Inactive,
                (false, _) => HookStatus::Unverified,
            };
        }
        Some(hook.to_hook(id))
    }

    /// Keap's delayed confirmation: the receiver presents the latest handshake's secret.
    pub(crate) fn delayed_verify(&mut self, app: &str, key: &str, secret: &str) -> DelayedVerify {
        let Some((id, hook)) = self.find_mut(Some(app), key) else {
            return DelayedVerify::NotFound;
        };
        if hook.secret.as_deref() != Some(secret) {
            return DelayedVerify::WrongSecret;
        }
        hook.status = HookStatus::Verified;
        DelayedVerify::Verified(hook.to_hook(id))
    }

    /// Any app's hook, for the control API. False for an unknown key.
    pub(crate) fn set_status(&mut self, key: &str, status: HookStatus) -> bool {
        match self.find_mut(None, key) {
            Some((_, hook)) => {
                hook.status = status;
                true
            }
            None => false,
        }
    }

    /// The `(key, hookUrl)` of `app`'s `Verified` hooks for `event_key`: Keap sends events only
    /// to verified subscriptions.
    pub(crate) fn verified_for(&self, app: &str, event_key: &str) -> Vec<(String, String)> {
        self.hooks
            .iter()
            .filter(|(_, h)| {
                h.app == app && h.event_key == event_key && h.status == HookStatus::Verified
            })
            .map(|(id, h)| (id.to_string(), h.hook_url.clone()))
            .collect()
    }

    /// The URL to deliver to now, if the hook still exists and is still `Verified` (a hook made
    /// `Inactive` or deleted between attempts gets no more).
    pub(crate) fn deliverable(&self, key: &str) -> Option<String> {
        self.find(None, key)
            .filter(|(_, hook)| hook.status == HookStatus::Verified)
            .map(|(_, hook)| hook.hook_url.clone())
    }

    pub(crate) fn next_delivery(&mut self) -> u64 {
        let delivery = self.next_delivery;
        self.next_delivery += 1;
        delivery
    }

    /// Counted before its task is spawned, so a fast task cannot finish before it is counted.
    pub(crate) fn delivery_started(&mut self) {
        self.in_flight += 1;
    }

    pub(crate) fn track(&mut self, task: AbortHandle) {
        self.tasks.retain(|task| !task.is_finished());
        self.tasks.push(task);
    }

    pub(crate) fn delivery_finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn abort_deliveries(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.in_flight = 0;
    }

    pub(crate) fn record(&mut self, attempt: HookAttempt) {
        self.attempts.push(attempt);
    }

    pub(crate) fn attempts(&self) -> Vec<HookAttempt> {
        self.attempts.clone()
    }

    pub(crate) fn clear_attempts(&mut self) {
        self.attempts.clear();
    }
}
