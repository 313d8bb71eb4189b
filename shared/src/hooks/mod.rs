//! Keap REST Hooks into EventBridge (docs/events.md, "Keap changes"): the `keap-hooks`
//! receiver turns each delivery Keap POSTs to `…/keap/hooks/<token>` into events on the
//! `keapalive-<stage>` bus.

pub mod delivery;
pub mod receiver;

pub use receiver::HooksReceiver;
