//! Keap REST Hooks into EventBridge (docs/events.md, "Keap changes"): the `keap-hooks`
//! receiver turns each delivery Keap POSTs to `…/keap/hooks/<token>` into events on the
//! `keapalive-<stage>` bus.

pub mod check;
pub mod delivery;
pub mod receiver;
pub mod subscriptions;
pub mod via_proxy;

pub use check::{HookCheck, HookCheckSummary};
pub use receiver::HooksReceiver;
pub use subscriptions::{HookSubscriptions, HooksCommandError};
pub use via_proxy::{KeapViaProxy, PROXY_READ_TIMEOUT};
