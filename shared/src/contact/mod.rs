//! contact-upsert: the call other services make to create or update a Keap contact.
//!
//! - [`request`]: the public request schema, parsed strictly and validated before any network
//!   call (a `ValidationError` never costs a Keap request).
//! - [`translate`]: the request as Keap v1's `PUT /contacts` body, labels resolved to ids.
//! - [`service`]: the upsert (resolve custom fields and tags, `PUT`, apply tags), with the
//!   per-container caches.
//! - `keap_session`: credentials and retries for one invocation (401, 429, 5xx).
//! - `batch`: SQS batches, dead-lettering and `batchItemFailures`.
//! - [`error`]: the five `errorType`s a caller branches on.

mod batch;
mod error;
mod invocation;
mod keap_session;
mod key_vouch;
mod lazy_sqs;
mod request;
mod response;
mod service;
mod translate;

pub use error::UpsertError;
pub(crate) use keap_session::{DEADLINE_MARGIN, KeapAccess, KeapSession, grant_error};
pub use keap_session::{
    METRIC_NEEDS_REAUTHORIZATION, METRIC_SPURIOUS_UNAUTHORIZED, METRIC_UNAUTHORIZED_INCIDENT,
    REASON_KEY_REJECTED,
};
pub use lazy_sqs::LazySqs;
pub use response::UpsertResponse;
pub use service::{UpsertService, UpsertSettings};
