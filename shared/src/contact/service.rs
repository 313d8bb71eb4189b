//! The upsert itself: resolve custom fields and tags, `PUT /v1/contacts`, apply tags.
//!
//! Everything that can make the request invalid (an unknown custom field, an unknown tag when
//! tags are not created) is checked before the `PUT`, so a `ValidationError` means Keap was not
//! changed. Custom-field models and tag ids are cached per warm container for
//! `KEAPALIVE_MODEL_CACHE_SECS`, so a warm upsert costs one Keap request, plus one to apply tags.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::error::UpsertError;
use super::keap_session::KeapSession;
use super::request::{TagRef, UpsertRequest};
use super::response::UpsertResponse;
use super::translate::{keap_body, resolve_custom_fields};
use crate::config::Config;
use crate::keap::RestClient;
use crate::keap::contacts::{CustomFieldValue, UpsertedContact};
use crate::keap::model::ContactModel;
use crate::keap::rest::{KeapError, safe_message};
use crate::keap::tags;
use crate::redact;
use crate::refresh::{Deadline, OnDemandRefresher};
use crate::secrets::SecretsSource;
use crate::telemetry::Metrics;
use crate::token_store::{DynamoDbTokenStore, TokenStore};
use crate::ttl_cache::TtlCache;
use crate::wiring::Clients;

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
}

impl UpsertSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            create_missing_tags: config.create_missing_tags,
            model_cache_ttl: config.model_cache_ttl,
            stage: config.stage.clone(),
            dead_letter_queue_url: config.dead_letter_queue_url.clone(),
            batch_concurrency: DEFAULT_BATCH_CONCURRENCY,
        }
    }
}

/// Where EMF metric lines go: stdout in Lambda (CloudWatch reads them), a closure in tests.
#[derive(Clone)]
pub struct MetricSink(Arc<EmitMetrics>);

/// Receives the metrics and the stage (their dimension).
type EmitMetrics = dyn Fn(&Metrics, &str) + Send + Sync;

impl MetricSink {
    pub fn stdout() -> Self {
        Self(Arc::new(|metrics: &Metrics, stage: &str| {
            metrics.emit(stage)
        }))
    }

    pub fn new(sink: impl Fn(&Metrics, &str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(sink))
    }

    pub fn emit(&self, metrics: &Metrics, stage: &str) {
        (self.0)(metrics, stage);
    }
}

/// Built once per container; every field is shared by concurrent upserts.
pub struct UpsertService<S> {
    pub(crate) rest: RestClient,
    pub(crate) grants: Arc<OnDemandRefresher<S>>,
    pub(crate) secrets: Arc<SecretsSource>,
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) settings: UpsertSettings,
    pub(crate) metrics: MetricSink,
    models: TtlCache<(Instant, Arc<ContactModel>)>,
    tag_ids: TtlCache<i64>,
}

impl UpsertService<DynamoDbTokenStore> {
    pub fn from_clients(clients: &Clients) -> Self {
        Self::new(
            clients.rest.clone(),
            Arc::new(clients.on_demand()),
            clients.secrets.clone(),
            clients.sqs.clone(),
            UpsertSettings::from_config(&clients.config),
        )
    }
}

impl<S: TokenStore> UpsertService<S> {
    pub fn new(
        rest: RestClient,
        grants: Arc<OnDemandRefresher<S>>,
        secrets: Arc<SecretsSource>,
        sqs: aws_sdk_sqs::Client,
        settings: UpsertSettings,
    ) -> Self {
        Self {
            models: TtlCache::new(settings.model_cache_ttl),
            tag_ids: TtlCache::new(settings.model_cache_ttl),
            rest,
            grants,
            secrets,
            sqs,
            settings,
            metrics: MetricSink::stdout(),
        }
    }

    pub fn with_metric_sink(mut self, sink: MetricSink) -> Self {
        self.metrics = sink;
        self
    }

    pub fn settings(&self) -> &UpsertSettings {
        &self.settings
    }

    /// Creates or updates one contact and applies its tags.
    pub(crate) async fn upsert(
        &self,
        request: &UpsertRequest,
        deadline: Deadline,
    ) -> Result<UpsertResponse, UpsertError> {
        let mut keap = KeapSession::open(self, &request.connection_id, deadline).await?;
        let custom_fields = self.custom_fields(&mut keap, request).await?;
        let tag_ids = self.tag_ids(&mut keap, &request.contact.tags).await?;

        let response = keap
            .send(&keap_body(request, custom_fields).request())
            .await?;
        let contact = UpsertedContact::from_response(&response).map_err(unexpected)?;
        let created = was_created(&contact);

        for apply in tags::apply(contact.id, &tag_ids) {
            keap.send(&apply).await?;
        }
        info!(
            connection = %request.connection_id,
            contact_id = contact.id,
            created,
            email = %redact::email(&request.contact.email),
            tags = tag_ids.len(),
            "contact upserted"
        );
        Ok(UpsertResponse {
            contact_id: contact.id,
            created,
            tags_applied: tag_ids,
        })
    }

    async fn custom_fields(
        &self,
        keap: &mut KeapSession<'_, S>,
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
        keap: &mut KeapSession<'_, S>,
        refetch: bool,
    ) -> Result<(Instant, Arc<ContactModel>), UpsertError> {
        let key = keap.connection().as_str().to_owned();
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

    /// Tag ids in request order, without repeats; names resolved (and created if configured).
    async fn tag_ids(
        &self,
        keap: &mut KeapSession<'_, S>,
        requested: &[TagRef],
    ) -> Result<Vec<i64>, UpsertError> {
        let mut ids: Vec<i64> = Vec::with_capacity(requested.len());
        for tag in requested {
            let id = match tag {
                TagRef::Id(id) => *id,
                TagRef::Name(name) => self.tag_id(keap, name).await?,
            };
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    async fn tag_id(&self, keap: &mut KeapSession<'_, S>, name: &str) -> Result<i64, UpsertError> {
        // The unit separator cannot occur in a connection id.
        let key = format!("{}\u{1f}{name}", keap.connection());
        self.tag_ids
            .get_or_try_fill(&key, || self.find_or_create_tag(keap, name))
            .await
    }

    async fn find_or_create_tag(
        &self,
        keap: &mut KeapSession<'_, S>,
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

    async fn create_tag(
        &self,
        keap: &mut KeapSession<'_, S>,
        name: &str,
    ) -> Result<i64, UpsertError> {
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

fn unexpected(error: KeapError) -> UpsertError {
    UpsertError::Unavailable(format!("{error}; retry later"))
}
