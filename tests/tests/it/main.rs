//! keapalive's integration tests: one binary, one module per area, one emulator per process.
//!
//! Every test builds a world of its own (`Fixture::new()`: sandbox, table, client secret), so
//! tests run in parallel against the shared emulator; anything global there (faults, request
//! counts) is scoped by table or resource. Scheduled-run summaries count the whole table: a
//! test that runs a scheduled refresh owns its table.

mod support;

mod access_token;
mod contact_upsert;
mod containment;
mod docs_examples;
mod docs_truth;
mod fault_model;
mod function_init;
mod harness;
mod hook_store;
mod keap_hooks;
mod keap_proxy;
mod key_rejection;
mod lifecycle_events;
mod local_flow;
mod log_cap;
mod oauth_callback;
mod oauth_callback_binary;
mod oauth_callback_keys;
mod oauth_callback_races;
mod redirects;
mod refresh_presentation;
mod refresh_protocol;
mod refresh_race;
mod refresh_scale;
mod rehearsal_walk;
mod service_account_key;
mod soak;
