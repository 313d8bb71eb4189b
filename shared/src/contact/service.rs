//! The upsert itself: resolve custom fields and tags, `PUT /v1/contacts`, apply tags.
//!
//! Everything that can make the request invalid (an unknown custom field, an unknown tag id, an
//! unknown tag name when tags are not created) is checked before the `PUT`, so a
//! `ValidationError` means Keap was not changed. After the `PUT`, the tag-apply answer is read:
//! only `SUCCESS`/`DUPLICATE` count as applied, a cached name whose id is gone is resolved once
//! more, and anything still not applied is an error carrying `contact_id=<id>`. Custom-field models and tag ids are cached per warm container for
//! `KEAPALIVE_MODEL_CACHE_SECS`, so a warm upsert costs one Keap request, plus one to apply tags.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::error::UpsertError;
use super::keap_session::{KeapAccess, KeapSession};
use super::lazy_sqs::LazySqs;
use super::request::{TagRef, UpsertRequest};
use super::response::UpsertResponse;
use super::translate::{keap_body, resolve_custom_fields};
use crate::config::Config;
use crate::deadline::{Deadline, DeadlinePolicy};
use crate::keap::RestClient;
use crate::keap::contacts::{CustomFieldValue, UpsertedContact};
use crate::keap::model::ContactModel;
use crate::keap::rest::{KeapError, safe_message};
use crate::keap::tags::{self, ApplyOutcome};
use crate::redact;
use crate::refresh::OnDemandRefresher;
use crate::secrets::SecretsSource;
use crate::telemetry::MetricSink;
use crate::ttl_cache::TtlCache;

/// A cached model that misses a field is fetched again only if it is at least this old, so a
/// stream of requests naming a field that does not exist cannot turn into a stream of model
/// requests.
const MODEL_REFETCH_MIN_AGE: Duration = Duration::from_secs(30);
/// Records of one SQS batch upserted at once (the container's Keap limiter still applies).
pub(crate) const DEFAULT_BATCH_CONCURRENCY: usize = 4;

#[derive(Debug, Clone)]
pub struct UpsertSettings {
    pub create_missing_tags: bool,
    pub model_cache_ttl: Duration,
    /// Metric dimension.
    pub stage: String,
    pub dead_letter_queue_url: Option<String>,
    pub batch_concurrency: usize,
    /// What an invocation's deadline is taken to be when the one it carries has already passed
    /// (a local emulator's).
    pub function_timeout: Duration,
}

impl UpsertSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            create_missing_tags: config.create_missing_tags,
            model_cache_ttl: config.model_cache_ttl,
            stage: config.stage.clone(),
            dead_letter_queue_url: config.dead_letter_queue_url.clone(),
            batch_concurrency: DEFAULT_BATCH_CONCURRENCY,
            function_timeout: config.function_timeout,
        }
    }
}

/// Built once per container; every field is shared by concurrent upserts.
pub struct UpsertService {
    pub(super) keap: KeapAccess,
    pub(crate) sqs: LazySqs,
    pub(crate) settings: UpsertSettings,
    pub(crate) deadlines: DeadlinePolicy,
    models: TtlCache<(Instant, Arc<ContactModel>)>,
    tag_ids: TtlCache<i64>,
}

impl UpsertService {
    pub fn new(
        rest: RestClient,
        grants: Arc<OnDemandRefresher>,
        secrets: Arc<SecretsSource>,
        sqs: LazySqs,
        settings: UpsertSettings,
    ) -> Self {
        Self {
            models: TtlCache::new(settings.model_cache_ttl),
            tag_ids: TtlCache::new(settings.model_cache_ttl),
            keap: KeapAccess::new(rest, grants, secrets, settings.stage.clone()),
            sqs,
            deadlines: DeadlinePolicy::new(settings.function_timeout),
            settings,
        }
    }

    pub fn with_metric_sink(mut self, sink: MetricSink) -> Self {
        self.keap.metrics = sink;
        self
    }

    /// Creates or updates one contact and applies its tags.
    pub(crate) async fn upsert(
        &self,
        request: &UpsertRequest,
        deadline: Deadline,
    ) -> Result<UpsertResponse, UpsertError> {
        let mut keap = KeapSession::open(&self.keap, &request.connection_id, deadline).await?;
        let custom_fields = self.custom_fields(&mut keap, request).await?;
        let tags = self.resolve_tags(&mut keap, &request.contact.tags).await?;

        let response = keap
            .send(&keap_body(request, custom_fields).request())
            .await?;
        let contact = UpsertedContact::from_response(&response).map_err(unexpected)?;
        let created = was_created(&contact);

        let tags_applied = self.apply_tags(&mut keap, contact.id, &tags).await?;
        info!(
            connection = %request.connection_id,
            contact_id = contact.id,
            created,
            email = %redact::email(&request.contact.email),
            tags = tags_applied.len(),
            "contact upserted"
        );
        Ok(UpsertResponse {
            contact_id: contact.id,
            created,
            tags_applied,
        })
    }

    async fn custom_fields(
        &self,
        keap: &mut KeapSession<'_>,
        request: &UpsertRequest,
    ) -> Result<Vec<CustomFieldValue>, UpsertError> {
        let fields = &request.contact.custom_fields.0;
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let (fetched_at, model) = self.model(keap, false).await?;
        match resolve_custom_fields(fields, &model) {
            // A field created in Keap after the model was cached: look once more.
            Err(UpsertError::Validation(_)) if fetched_at.elapsed() >= MODEL_REFETCH_MIN_AGE => {
                let (_, model) = self.model(keap, true).await?;
                resolve_custom_fields(fields, &model)
            }
            resolved => resolved,
        }
    }

    async fn model(
        &self,
        keap: &mut KeapSession<'_>,
        refetch: bool,
    ) -> Result<(Instant, Arc<ContactModel>), UpsertError> {
        let key = keap.account_scope();
        if refetch {
            self.models.invalidate(&key);
        }
        self.models
            .get_or_try_fill(&key, || async {
                let response = keap.send(&ContactModel::request()).await?;
                let model = ContactModel::from_response(&response).map_err(unexpected)?;
                Ok((Instant::now(), Arc::new(model)))
            })
            .await
    }

    /// Tags in request order, without repeats: names resolved (and created if configured), ids
    /// checked to exist, so that an unknown tag is a `ValidationError` before anything is written.
    async fn resolve_tags(
        &self,
        keap: &mut KeapSession<'_>,
        requested: &[TagRef],
    ) -> Result<Vec<TagToApply>, UpsertError> {
        let mut tags: Vec<TagToApply> = Vec::with_capacity(requested.len());
        for tag in requested {
            let resolved = match tag {
                TagRef::Id(id) => TagToApply {
                    id: self.existing_tag_id(keap, *id).await?,
                    name: None,
                },
                TagRef::Name(name) => TagToApply {
                    id: self.tag_id(keap, name).await?,
                    name: Some(name.clone()),
                },
            };
            if !tags.iter().any(|known| known.id == resolved.id) {
                tags.push(resolved);
            }
        }
        Ok(tags)
    }

    async fn tag_id(&self, keap: &mut KeapSession<'_>, name: &str) -> Result<i64, UpsertError> {
        let key = tag_name_key(&keap.account_scope(), name);
        self.tag_ids
            .get_or_try_fill(&key, || self.find_or_create_tag(keap, name))
            .await
    }

    /// `id` once Keap has confirmed a tag with it exists (cached like names).
    async fn existing_tag_id(
        &self,
        keap: &mut KeapSession<'_>,
        id: i64,
    ) -> Result<i64, UpsertError> {
        let key = tag_id_key(&keap.account_scope(), id);
        self.tag_ids
            .get_or_try_fill(&key, || async move {
                match keap.find(&tags::find_by_id(id)).await? {
                    Some(_) => Ok(id),
                    None => Err(UpsertError::Validation(format!(
                        "contact.tags: no tag has id {id} in this Keap account; use the id of \
                         an existing tag, or its name"
                    ))),
                }
            })
            .await
    }

    /// Applies `tags` to the upserted contact and returns the ids Keap reports applied. A cached
    /// name whose id Keap no longer knows (the tag was deleted, perhaps re-created) is resolved
    /// again and applied once more; whatever is still not applied is an error that names the
    /// tags and carries the contact id ([`not_applied`]).
    async fn apply_tags(
        &self,
        keap: &mut KeapSession<'_>,
        contact_id: i64,
        tags: &[TagToApply],
    ) -> Result<Vec<i64>, UpsertError> {
        let ids: Vec<i64> = tags.iter().map(|tag| tag.id).collect();
        let mut outcomes = self
            .send_applies(keap, contact_id, &ids)
            .await
            .map_err(|e| after_write(contact_id, e))?;

        let mut again: Vec<(usize, i64)> = Vec::new();
        for (index, tag) in tags.iter().enumerate() {
            if outcomes[index].1 != ApplyOutcome::TagIdNotFound {
                continue;
            }
            let Some(name) = &tag.name else {
                // Checked a moment ago, gone now: the next request checks again.
                self.tag_ids
                    .invalidate(&tag_id_key(&keap.account_scope(), tag.id));
                continue;
            };
            self.tag_ids
                .invalidate(&tag_name_key(&keap.account_scope(), name));
            match self.tag_id(keap, name).await {
                Ok(fresh) if fresh != tag.id && !ids.contains(&fresh) => {
                    info!(connection = %keap.connection(), stale = tag.id, fresh, "cached tag id was gone; applying the tag's current id");
                    again.push((index, fresh));
                }
                // Gone for good (or the same id again): reported below.
                Ok(_) | Err(UpsertError::Validation(_)) => {}
                Err(other) => return Err(after_write(contact_id, other)),
            }
        }
        if !again.is_empty() {
            let fresh: Vec<i64> = again.iter().map(|(_, id)| *id).collect();
            let retried = self
                .send_applies(keap, contact_id, &fresh)
                .await
                .map_err(|e| after_write(contact_id, e))?;
            for ((index, _), outcome) in again.iter().zip(retried) {
                outcomes[*index] = outcome;
            }
        }

        let applied: Vec<i64> = outcomes
            .iter()
            .filter(|(_, outcome)| outcome.is_applied())
            .map(|(id, _)| *id)
            .collect();
        if applied.len() == outcomes.len() {
            return Ok(applied);
        }
        Err(not_applied(contact_id, tags, &outcomes, &applied))
    }

    async fn send_applies(
        &self,
        keap: &mut KeapSession<'_>,
        contact_id: i64,
        ids: &[i64],
    ) -> Result<Vec<(i64, ApplyOutcome)>, UpsertError> {
        let mut outcomes = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(tags::MAX_TAGS_PER_APPLY) {
            for apply in tags::apply(contact_id, chunk) {
                let response = keap.send(&apply).await?;
                outcomes.extend(tags::apply_outcomes(&response, chunk).map_err(unexpected)?);
            }
        }
        Ok(outcomes)
    }

    async fn find_or_create_tag(
        &self,
        keap: &mut KeapSession<'_>,
        name: &str,
    ) -> Result<i64, UpsertError> {
        let found = keap.send(&tags::find_by_name(name)).await?;
        match tags::id_named(&found, name).map_err(unexpected)? {
            Some(id) => Ok(id),
            None if self.settings.create_missing_tags => self.create_tag(keap, name).await,
            None => Err(UpsertError::Validation(format!(
                "contact.tags: no tag named `{}` exists in this Keap account; create it in \
                 Keap, use its id, or set KEAPALIVE_CREATE_MISSING_TAGS=true",
                safe_message(name)
            ))),
        }
    }

    async fn create_tag(&self, keap: &mut KeapSession<'_>, name: &str) -> Result<i64, UpsertError> {
        match keap.send(&tags::create(name)).await {
            Ok(created) => {
                let id = tags::created_id(&created).map_err(unexpected)?;
                info!(connection = %keap.connection(), tag_id = id, "created missing tag");
                Ok(id)
            }
            // Another upsert may have created it a moment ago.
            Err(refused @ UpsertError::KeapRejected(_)) => {
                let found = keap.send(&tags::find_by_name(name)).await?;
                tags::id_named(&found, name)
                    .map_err(unexpected)?
                    .ok_or(refused)
            }
            Err(other) => Err(other),
        }
    }
}

/// The status decides (201 created, 200 updated, per Keap's generated docs); the timestamps
/// only raise a warning when they disagree, so a wrong assumption shows up in the logs.
fn was_created(contact: &UpsertedContact) -> bool {
    let by_status = contact.status == 201;
    if let Some(by_timestamps) = contact.timestamps_say_created()
        && by_timestamps != by_status
    {
        warn!(
            contact_id = contact.id,
            status = contact.status,
            "Keap's status and the contact's date_created/last_updated disagree on whether it \
             was created; trusting the status"
        );
    }
    by_status
}

/// A tag to apply, and the name it was resolved from (so that a stale cached id can be resolved
/// again).
#[derive(Debug, Clone)]
struct TagToApply {
    id: i64,
    name: Option<String>,
}

/// The unit separator cannot occur in a scope's parts, nor (validated) in a tag name; a
/// doubled one keys ids apart from names.
fn tag_name_key(scope: &str, name: &str) -> String {
    format!("{scope}\u{1f}{name}")
}

fn tag_id_key(scope: &str, id: i64) -> String {
    format!("{scope}\u{1f}\u{1f}{id}")
}

/// The documented marker of an error raised after the contact was written: callers find the
/// contact by `contact_id=<digits>` (docs/calling.md, "Errors").
pub const CONTACT_ID_MARKER: &str = "contact_id=";

/// An error after the `PUT` succeeded: it says so, and which contact, so the caller knows the
/// contact exists (and that retrying is still safe: the upsert matches it again).
fn after_write(contact_id: i64, error: UpsertError) -> UpsertError {
    let note = |message: String| {
        format!("{message} (after the contact was upserted: {CONTACT_ID_MARKER}{contact_id})")
    };
    match error {
        UpsertError::Validation(m) | UpsertError::KeapRejected(m) => {
            UpsertError::KeapRejected(note(m))
        }
        UpsertError::NotAuthorized(m) => UpsertError::NotAuthorized(note(m)),
        UpsertError::RateLimited(m) => UpsertError::RateLimited(note(m)),
        UpsertError::Unavailable(m) => UpsertError::Unavailable(note(m)),
    }
}

/// Tags Keap did not apply: `KeapRejected` when retrying cannot help (the tag does not exist,
/// the connection's user may not apply it), `Unavailable` otherwise (`FAILURE`,
/// `CONTACT_NOT_FOUND` right after the upsert, no outcome reported).
fn not_applied(
    contact_id: i64,
    tags: &[TagToApply],
    outcomes: &[(i64, ApplyOutcome)],
    applied: &[i64],
) -> UpsertError {
    let failed: Vec<String> = tags
        .iter()
        .zip(outcomes)
        .filter(|(_, (_, outcome))| !outcome.is_applied())
        .map(|(tag, (id, outcome))| match &tag.name {
            Some(name) => format!("tag {id} `{}`: {}", safe_message(name), outcome.as_str()),
            None => format!("tag {id}: {}", outcome.as_str()),
        })
        .collect();
    let permanent = outcomes.iter().any(|(_, outcome)| {
        matches!(
            outcome,
            ApplyOutcome::TagIdNotFound | ApplyOutcome::NoPermission
        )
    });
    let message = format!(
        "Keap did not apply {} of {} tags to {CONTACT_ID_MARKER}{contact_id} (the contact itself \
         was upserted): {}; applied: {applied:?}",
        failed.len(),
        outcomes.len(),
        failed.join(", ")
    );
    if permanent {
        UpsertError::KeapRejected(format!(
            "{message}. TAG_ID_NOT_FOUND: the tag no longer exists in Keap; NO_PERMISSION: the \
             connection's Keap user may not apply it"
        ))
    } else {
        UpsertError::Unavailable(format!("{message}. Retrying the request is safe"))
    }
}

fn unexpected(error: KeapError) -> UpsertError {
    UpsertError::Unavailable(format!("{error}; retry later"))
}
