//! The connection store on DynamoDB: one table, partition key `pk`, conditional writes as the only
//! concurrency control, and own-write recognition on every decisive write.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use secrecy::ExposeSecret;
use tracing::warn;

use super::model::{
    CONNECTION_PREFIX, Item, PENDING_EVENTS, PENDING_INDEX, Recorded, STATE_PREFIX, STATUS_INDEX,
    connection_key, empty_list, number, parse_connection, parse_state, state_consumed_by,
    state_key, string, unsigned,
};
use super::write_id::new_write_id;
use super::{
    CommitOutcome, Connection, ConnectionKind, ConnectionScan, ConnectionStatus, LeaseOutcome,
    MarkGuard, MarkOutcome, PendingAuthorization, RotationCause, StateOutcome, StoreError, Version,
};
use crate::connection_id::ConnectionId;
use crate::events::{Change, EventBus};
use crate::keap::{IssuedTokens, SHORT_EXPIRES_IN_SECS, TokenPair};

#[derive(Clone)]
pub struct DynamoDbTokenStore {
    pub(super) client: Client,
    pub(super) table: String,
    /// Where lifecycle events go; `None`: none is recorded (the outbox, `outbox.rs`).
    pub(super) events: Option<EventBus>,
}

impl DynamoDbTokenStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            events: None,
        }
    }

    /// The same store, recording every lifecycle change in its write and publishing it on `bus`.
    pub fn with_events(mut self, bus: EventBus) -> Self {
        self.events = Some(bus);
        self
    }

    /// The bus lifecycle events go to (`KEAPALIVE_EVENT_BUS`), if one is configured.
    pub fn event_bus(&self) -> Option<&EventBus> {
        self.events.as_ref()
    }

    /// An `UpdateItem` on `key` that, when its condition fails, returns the item that failed it.
    pub(super) fn update(&self, key: AttributeValue) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", key)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }
}

/// How a conditional `UpdateItem` ended.
pub(super) enum Written {
    /// Applied; the attributes asked for with `ReturnValues`.
    Applied(Option<Item>),
    /// The condition failed; the old item (`None`: there is none, or DynamoDB did not say).
    ConditionFailed(Option<Item>),
}

pub(super) async fn send_update(request: UpdateItemFluentBuilder) -> Result<Written, StoreError> {
    match request.send().await {
        Ok(output) => Ok(Written::Applied(output.attributes)),
        Err(SdkError::ServiceError(service)) => match service.err() {
            UpdateItemError::ConditionalCheckFailedException(failed) => Ok(
                Written::ConditionFailed(failed.item.clone().filter(|item| !item.is_empty())),
            ),
            _ => Err(StoreError::from_sdk(SdkError::ServiceError(service))),
        },
        Err(other) => Err(StoreError::from_sdk(other)),
    }
}

fn pair_values(pair: &TokenPair) -> [(&'static str, AttributeValue); 3] {
    [
        (":access", string(pair.access_token.expose_secret())),
        (":refresh", string(pair.refresh_token.expose_secret())),
        (":expires", number(pair.access_expires_at)),
    ]
}

/// The grant an orphaned pair was issued for: its incarnation and account, and the
/// generation the pair would have had.
#[derive(Debug, Clone, Copy)]
pub struct OrphanOwner<'a> {
    pub generation: u64,
    pub incarnation: Option<&'a str>,
    pub keap_app: Option<&'a str>,
}

/// What [`DynamoDbTokenStore::store_orphan_pair`] left on the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanKept {
    /// The pair, on the grant it belongs to.
    Pair,
    /// Fingerprints, generation and times only: the item is another grant now.
    DiagnosisOnly,
    /// The connection is gone.
    Nothing,
}

/// An `orphan_pair` map that holds no token: what diagnosis needs to recognise the pair.
fn orphan_diagnosis(generation: u64, pair: &TokenPair, now: i64) -> Item {
    HashMap::from([
        ("generation".to_owned(), unsigned(generation)),
        (
            "access_fingerprint".to_owned(),
            string(token_fingerprint(pair.access_token.expose_secret())),
        ),
        (
            "refresh_fingerprint".to_owned(),
            string(token_fingerprint(pair.refresh_token.expose_secret())),
        ),
        (
            "access_expires_at".to_owned(),
            number(pair.access_expires_at),
        ),
        ("stored_at".to_owned(), number(now)),
    ])
}

/// The first 16 hex digits of a token's SHA-256: tells two tokens apart, gives nothing away.
pub(crate) fn token_fingerprint(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn generation_of(attributes: Option<&Item>) -> Option<u64> {
    match attributes?.get("generation")? {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}

fn attribute_is(item: &Item, name: &str, expected: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::S(s)) if s == expected)
}

/// Adds `generation = :g` and the incarnation (or its absence, for items older than
/// incarnations) to a condition: every decision names both (no ABA).
fn with_version(
    request: UpdateItemFluentBuilder,
    condition: &str,
    version: &Version,
) -> UpdateItemFluentBuilder {
    let request = request.expression_attribute_values(":g", unsigned(version.generation));
    match &version.incarnation {
        Some(incarnation) => request
            .condition_expression(format!(
                "generation = :g AND incarnation = :inc AND ({condition})"
            ))
            .expression_attribute_values(":inc", string(incarnation)),
        None => request.condition_expression(format!(
            "generation = :g AND attribute_not_exists(incarnation) AND ({condition})"
        )),
    }
}

pub(super) fn malformed_write(id: &ConnectionId, reason: &str) -> StoreError {
    StoreError::Malformed {
        pk: format!("{CONNECTION_PREFIX}{id}"),
        reason: reason.to_owned(),
    }
}

/// Parses a page of connection items into `scan`; a malformed one is named and skipped.
fn collect_connections(scan: &mut ConnectionScan, items: &[Item]) -> Result<(), StoreError> {
    for item in items {
        match parse_connection(item) {
            Ok(connection) => scan.connections.push(connection),
            Err(StoreError::Malformed { pk, reason }) => {
                warn!(item = %pk, reason = %reason, "skipping a malformed connection item");
                scan.malformed.push((pk, reason));
            }
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// What the callback and the operator may read of a connection item: no token, no key
/// reference (the template's `dynamodb:Attributes` condition on their GetItem lists exactly
/// these).
pub const CALLBACK_READABLE_ATTRIBUTES: [&str; 8] = [
    "pk",
    "generation",
    "authorized_by",
    "keap_app",
    "incarnation",
    "exchanged_at",
    "kind",
    "pending_events",
];

/// The non-secret view of a connection item: what an authorization reads before its exchange
/// (or key probe) to condition its write on, and after it to learn the outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationView {
    pub generation: Option<u64>,
    pub authorized_by: Option<String>,
    pub keap_app: Option<String>,
    pub incarnation: Option<String>,
    /// Epoch milliseconds of the exchange (or key probe) that made the current grant.
    pub exchanged_at: Option<i64>,
    /// `oauth` or `service_account_key`.
    pub kind: Option<String>,
    /// The item's `pending_events` as stored (lifecycle events not yet known to be published):
    /// a removal carries them to the tombstone, conditional on them being exactly this.
    pub(crate) pending_events: Option<AttributeValue>,
}

impl DynamoDbTokenStore {
    /// Every item whose key is a connection key, malformed ones (whatever their `status`)
    /// included: for operators (`keapalive-admin status`), whose credentials may scan. The
    /// functions never scan.
    pub async fn scan_connections(&self) -> Result<ConnectionScan, StoreError> {
        let mut scan = ConnectionScan::default();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .filter_expression("begins_with(pk, :prefix)")
            .expression_attribute_values(":prefix", string(CONNECTION_PREFIX))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            collect_connections(&mut scan, page.map_err(StoreError::from_sdk)?.items())?;
        }
        Ok(scan)
    }

    /// A consistent read of only [`CALLBACK_READABLE_ATTRIBUTES`]: how the callback and the
    /// operator learn what an authorization is decided on, the generation they stored, or
    /// recognise their own landed write, without ever reading a token. `None`: no such item.
    pub async fn read_authorization(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<AuthorizationView>, StoreError> {
        let mut request = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", connection_key(id))
            .consistent_read(true);
        // Aliases for every name: some (`generation`) are DynamoDB reserved words.
        let mut projection = Vec::new();
        for (i, name) in CALLBACK_READABLE_ATTRIBUTES.iter().enumerate() {
            let alias = format!("#a{i}");
            request = request.expression_attribute_names(&alias, *name);
            projection.push(alias);
        }
        let output = request
            .projection_expression(projection.join(", "))
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        Ok(output.item.filter(|item| !item.is_empty()).map(|item| {
            let text = |name: &str| match item.get(name) {
                Some(AttributeValue::S(value)) => Some(value.clone()),
                _ => None,
            };
            AuthorizationView {
                generation: generation_of(Some(&item)),
                authorized_by: text("authorized_by"),
                keap_app: text("keap_app"),
                incarnation: text("incarnation"),
                exchanged_at: match item.get("exchanged_at") {
                    Some(AttributeValue::N(n)) => n.parse().ok(),
                    _ => None,
                },
                kind: text("kind"),
                pending_events: item.get(PENDING_EVENTS).cloned(),
            }
        }))
    }

    /// Deletes a consumed state. Housekeeping only, done after the pair is stored: the decision
    /// was the consume, and a state left behind (this delete failed) is unusable and expires
    /// by TTL.
    pub async fn retire_state(&self, nonce: &str) {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", state_key(nonce))
            .condition_expression("attribute_exists(consumed_by)")
            .send()
            .await;
        if let Err(e) = result {
            let e = StoreError::from_sdk(e);
            warn!(error = %e, "a consumed authorization state was left for TTL to remove");
        }
    }
}

impl DynamoDbTokenStore {
    /// Consistent read of one connection.
    pub async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", connection_key(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        output.item.as_ref().map(parse_connection).transpose()
    }

    /// Every connection item whose status is `active` or `needs_reauthorization`, from the
    /// sparse status index ([`STATUS_INDEX`]; eventually consistent: the list is only
    /// candidates, every decision re-reads or conditions on the item). A malformed item is
    /// listed in [`ConnectionScan::malformed`], never an error of the listing.
    pub async fn list_connections(&self) -> Result<ConnectionScan, StoreError> {
        // The sparse status index holds connection items only (state items have no `status`),
        // so the refresher, which may read nothing else, finds every connection without a scan.
        let mut scan = ConnectionScan::default();
        for status in [
            ConnectionStatus::Active,
            ConnectionStatus::NeedsReauthorization,
        ] {
            let mut pages = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(STATUS_INDEX)
                .key_condition_expression("#status = :status")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", string(status.as_str()))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                collect_connections(&mut scan, page.map_err(StoreError::from_sdk)?.items())?;
            }
        }
        Ok(scan)
    }

    /// `owner` is this attempt's write id; `until` must outlive the holder's invocation.
    pub async fn take_lease(
        &self,
        id: &ConnectionId,
        version: &Version,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<LeaseOutcome, StoreError> {
        self.take_lease_for(id, version, owner, now, until, None)
            .await
    }

    /// [`DynamoDbTokenStore::take_lease`] for an expiry-driven rotation when
    /// `expiry_rotated_before` is set: the lease is granted only if the last expiry-driven
    /// rotation (`expiry_rotation_at`) is absent or not later than it, so across every
    /// container a connection rotates for expiry at most once per interval
    /// ([`LeaseOutcome::RotationLimited`] otherwise).
    pub async fn take_lease_for(
        &self,
        id: &ConnectionId,
        version: &Version,
        owner: &str,
        now: i64,
        until: i64,
        expiry_rotated_before: Option<i64>,
    ) -> Result<LeaseOutcome, StoreError> {
        let mut condition =
            "#status = :active AND (attribute_not_exists(#kind) OR #kind = :oauth) \
             AND (attribute_not_exists(lease_until) OR lease_until < :now)"
                .to_owned();
        let mut request = self
            .update(connection_key(id))
            .update_expression("SET lease_owner = :owner, lease_until = :until")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_values(":owner", string(owner))
            .expression_attribute_values(":until", number(until))
            .expression_attribute_values(":active", string(ConnectionStatus::Active.as_str()))
            .expression_attribute_values(":oauth", string(ConnectionKind::OAuth.as_str()))
            .expression_attribute_values(":now", number(now))
            .return_values(ReturnValue::AllNew);
        if let Some(limit) = expiry_rotated_before {
            condition.push_str(
                " AND (attribute_not_exists(expiry_rotation_at) OR expiry_rotation_at <= :rotation_limit)",
            );
            request = request.expression_attribute_values(":rotation_limit", number(limit));
        }
        let request = with_version(request, &condition, version);
        match send_update(request).await? {
            Written::Applied(Some(item)) => Ok(LeaseOutcome::Acquired {
                until,
                connection: Box::new(parse_connection(&item)?),
            }),
            Written::Applied(None) => Err(malformed_write(id, "lease write returned no item")),
            // A retried lease whose first attempt landed: the lease is ours.
            Written::ConditionFailed(Some(old))
                if attribute_is(&old, "lease_owner", owner)
                    && generation_of(Some(&old)) == Some(version.generation) =>
            {
                Ok(LeaseOutcome::Acquired {
                    until,
                    connection: Box::new(parse_connection(&old)?),
                })
            }
            Written::ConditionFailed(Some(old)) => {
                let current = parse_connection(&old)?;
                let lease_free = current.lease.as_ref().is_none_or(|lease| lease.until < now);
                Ok(if current.version() != *version {
                    LeaseOutcome::GenerationMoved
                } else if current.status == ConnectionStatus::Active
                    && current.kind == ConnectionKind::OAuth
                {
                    match (expiry_rotated_before, current.expiry_rotation_at) {
                        (Some(limit), Some(rotated_at)) if lease_free && rotated_at > limit => {
                            LeaseOutcome::RotationLimited { rotated_at }
                        }
                        _ => LeaseOutcome::Held,
                    }
                } else {
                    LeaseOutcome::NotActive
                })
            }
            Written::ConditionFailed(None) => Ok(LeaseOutcome::NotActive),
        }
    }

    /// Writes the refreshed pair as `generation + 1`, conditional on generation and
    /// incarnation only (a lapsed lease does not stop it). `write_id` is the same for every
    /// retry of this commit. A rotation for a 401 records `unauthorized_rotation_at`; a pair
    /// that lives less than [`SHORT_EXPIRES_IN_SECS`] records `expiry_rotation_at` (any other
    /// pair removes it).
    pub async fn commit_refresh(
        &self,
        id: &ConnectionId,
        version: &Version,
        write_id: &str,
        issued: &IssuedTokens,
        cause: RotationCause,
        now: i64,
    ) -> Result<CommitOutcome, StoreError> {
        let mut set = vec![
            "access_token = :access",
            "refresh_token = :refresh",
            "access_expires_at = :expires",
            "generation = :next",
            "#status = :active",
            "refreshed_at = :now",
            "committed_by = :wid",
            "updated_at = :now",
        ];
        let next = version.generation + 1;
        let mut request = self
            .update(connection_key(id))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":next", unsigned(next))
            .expression_attribute_values(":active", string(ConnectionStatus::Active.as_str()))
            .expression_attribute_values(":wid", string(write_id))
            .expression_attribute_values(":now", number(now));
        for (name, value) in pair_values(&issued.pair) {
            request = request.expression_attribute_values(name, value);
        }
        if let Some(scope) = &issued.scope {
            set.push("keap_scope = :scope");
            request = request.expression_attribute_values(":scope", string(scope));
        }
        if cause == RotationCause::Unauthorized {
            set.push("unauthorized_rotation_at = :now");
        }
        // A pair Keap issued short-lived arms the limit on expiry-driven rotations (checked in
        // the next lease); a normal one disarms it.
        let mut remove = vec!["lease_owner", "lease_until", "last_error", "lost_responses"];
        if issued.pair.access_expires_at - now < SHORT_EXPIRES_IN_SECS {
            set.push("expiry_rotation_at = :now");
        } else {
            remove.push("expiry_rotation_at");
        }
        let expression = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
        let request = with_version(
            request.update_expression(expression),
            "attribute_exists(pk)",
            version,
        );
        Ok(match send_update(request).await? {
            Written::Applied(_) => CommitOutcome::Committed {
                generation: next,
                recognised: false,
            },
            Written::ConditionFailed(Some(old)) if attribute_is(&old, "committed_by", write_id) => {
                CommitOutcome::Committed {
                    generation: next,
                    recognised: true,
                }
            }
            Written::ConditionFailed(Some(old)) => match parse_connection(&old) {
                Ok(current) => CommitOutcome::Superseded {
                    current: Box::new(current),
                },
                Err(e) => CommitOutcome::Unknown {
                    reason: e.to_string(),
                },
            },
            // No old item: either there is none, or DynamoDB did not return it. A read tells.
            Written::ConditionFailed(None) => match self.get(id).await {
                Ok(None) => CommitOutcome::Removed,
                Ok(Some(current)) if current.committed_by.as_deref() == Some(write_id) => {
                    CommitOutcome::Committed {
                        generation: next,
                        recognised: true,
                    }
                }
                Ok(Some(current)) => CommitOutcome::Superseded {
                    current: Box::new(current),
                },
                Err(e) => CommitOutcome::Unknown {
                    reason: e.to_string(),
                },
            },
        })
    }

    /// Frees the lease if `owner` still holds it at `version`; otherwise does nothing (a retry
    /// of a release that landed finds nothing left to release). `uncount` is the write id of a
    /// presentation that consumed nothing (a non-2xx status, a connect failure, a refused time
    /// check): it leaves `lost_responses` in the same write.
    pub async fn release_lease(
        &self,
        id: &ConnectionId,
        version: &Version,
        owner: &str,
        last_error: Option<&str>,
        uncount: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut request = self
            .update(connection_key(id))
            .expression_attribute_values(":owner", string(owner))
            .expression_attribute_values(":now", number(now));
        let mut expression = "SET updated_at = :now".to_owned();
        if let Some(error) = last_error {
            request = request.expression_attribute_values(":error", string(error));
            expression.push_str(", last_error = :error");
        }
        expression.push_str(" REMOVE lease_owner, lease_until");
        if let Some(write_id) = uncount {
            request = request.expression_attribute_values(
                ":uncount",
                AttributeValue::Ss(vec![write_id.to_owned()]),
            );
            expression.push_str(" DELETE lost_responses :uncount");
        }
        let request = with_version(
            request.update_expression(expression),
            "lease_owner = :owner",
            version,
        );
        // Condition failed: someone else's lease or version now, or this release already landed.
        // Either way nothing of ours is left to release (a presentation not uncounted because
        // the lease was lost stays counted: the safe side).
        send_update(request).await.map(|_| ())
    }

    /// Marks the connection `needs_reauthorization` for `reason` (conditional on `guard` and
    /// `version`), recording its lifecycle event in the same write and publishing it after.
    pub async fn mark_needs_reauthorization(
        &self,
        id: &ConnectionId,
        version: &Version,
        guard: MarkGuard<'_>,
        reason: &str,
        now: i64,
    ) -> Result<MarkOutcome, StoreError> {
        let write_id = new_write_id();
        let recorded = Recorded {
            change: Change::NeedsReauthorization,
            kind: guard.kind(),
            generation: Some(version.generation),
            event_id: write_id.clone(),
            occurred_at: now,
            reason: Some(reason.to_owned()),
        };
        let mut set =
            "SET #status = :dead, last_error = :reason, updated_at = :now, marked_by = :wid"
                .to_owned();
        let mut request = self
            .update(connection_key(id))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(
                ":dead",
                string(ConnectionStatus::NeedsReauthorization.as_str()),
            )
            .expression_attribute_values(":reason", string(reason))
            .expression_attribute_values(":now", number(now))
            .expression_attribute_values(":wid", string(&write_id));
        if self.events.is_some() {
            set.push_str(", #pe = list_append(if_not_exists(#pe, :nil), :event)");
            request = request
                .expression_attribute_names("#pe", PENDING_EVENTS)
                .expression_attribute_values(":nil", empty_list())
                .expression_attribute_values(":event", recorded.as_list());
        }
        let request = request.update_expression(format!("{set} REMOVE lease_owner, lease_until"));
        let request = match guard {
            MarkGuard::LeaseOwner(owner) => with_version(
                request.expression_attribute_values(":owner", string(owner)),
                "lease_owner = :owner",
                version,
            ),
            MarkGuard::GenerationOnly => with_version(request, "attribute_exists(pk)", version),
            MarkGuard::KeyRejectedSince(since) => with_version(
                request.expression_attribute_values(":since", number(since)),
                "key_rejected_since = :since AND (attribute_not_exists(key_accepted_at) \
                 OR key_accepted_at < key_rejected_since)",
                version,
            ),
        };
        let outcome = match send_update(request).await? {
            Written::Applied(_) => MarkOutcome::Marked,
            Written::ConditionFailed(Some(old)) if attribute_is(&old, "marked_by", &write_id) => {
                MarkOutcome::Marked
            }
            Written::ConditionFailed(_) => MarkOutcome::NotMarked,
        };
        if outcome == MarkOutcome::Marked && self.events.is_some() {
            let kind = match guard.kind() {
                Some(kind) => kind,
                // Only tools mark without a guard that tells the kind: read it.
                None => match self.get(id).await {
                    Ok(Some(current)) => current.kind,
                    _ => ConnectionKind::OAuth,
                },
            };
            let event = recorded.event(id, kind, version.generation);
            self.deliver(&connection_key(id), &[event]).await;
        }
        Ok(outcome)
    }

    /// Records that Keap confirmed a rejection of this key connection's key at `now`, unless a
    /// rejection is already recorded that is newer than `stale_before` and that no success has
    /// answered since (repeated 401s never move the window forward). Returns the
    /// `key_rejected_since` the item holds afterwards, or `None` when the connection moved
    /// (another generation or incarnation, removed).
    pub async fn record_key_rejection(
        &self,
        id: &ConnectionId,
        version: &Version,
        now: i64,
        stale_before: i64,
    ) -> Result<Option<i64>, StoreError> {
        let request = self
            .update(connection_key(id))
            .update_expression("SET key_rejected_since = :now, updated_at = :now")
            .expression_attribute_values(":now", number(now))
            .expression_attribute_values(":stale", number(stale_before));
        let request = with_version(
            request,
            "attribute_not_exists(key_rejected_since) OR key_rejected_since < :stale \
             OR key_accepted_at >= key_rejected_since",
            version,
        );
        Ok(match send_update(request).await? {
            Written::Applied(_) => Some(now),
            Written::ConditionFailed(Some(old)) => match parse_connection(&old) {
                Ok(current) if current.version() == *version => current.key_rejected_since,
                _ => None,
            },
            Written::ConditionFailed(None) => None,
        })
    }

    /// Records that a request with this key connection's key succeeded at `now`
    /// (`key_accepted_at`, never moved backwards). `false` when the connection moved.
    pub async fn record_key_accepted(
        &self,
        id: &ConnectionId,
        version: &Version,
        now: i64,
    ) -> Result<bool, StoreError> {
        let request = self
            .update(connection_key(id))
            .update_expression("SET key_accepted_at = :now")
            .expression_attribute_values(":now", number(now));
        let request = with_version(
            request,
            "attribute_not_exists(key_accepted_at) OR key_accepted_at <= :now",
            version,
        );
        Ok(matches!(send_update(request).await?, Written::Applied(_)))
    }

    /// Counts a presentation of the refresh token before it is made, while `owner` holds the
    /// lease at `version`: `write_id` (this presentation's) joins the `lost_responses` set, and
    /// stays there unless a release takes it back because the presentation consumed nothing.
    /// Returns how many ids the set holds now (idempotent per `write_id`), or `None` when the
    /// lease is no longer ours (nothing may be presented then).
    pub async fn count_presentation(
        &self,
        id: &ConnectionId,
        version: &Version,
        owner: &str,
        write_id: &str,
        now: i64,
    ) -> Result<Option<usize>, StoreError> {
        // A string set: adding the same write id twice (an SDK retry) counts once.
        let request = self
            .update(connection_key(id))
            .update_expression("ADD lost_responses :wid SET updated_at = :now")
            .expression_attribute_values(":wid", AttributeValue::Ss(vec![write_id.to_owned()]))
            .expression_attribute_values(":owner", string(owner))
            .expression_attribute_values(":now", number(now))
            .return_values(ReturnValue::UpdatedNew);
        let request = with_version(request, "lease_owner = :owner", version);
        Ok(match send_update(request).await? {
            Written::Applied(attributes) => Some(
                match attributes.as_ref().and_then(|a| a.get("lost_responses")) {
                    Some(AttributeValue::Ss(set)) => set.len(),
                    _ => 1,
                },
            ),
            Written::ConditionFailed(_) => None,
        })
    }

    /// Keeps what is left of a pair whose commit lost to a re-authorization or a removal.
    ///
    /// The pair itself is kept (for diagnosis only) only on the grant it belongs to: the same
    /// incarnation, account (`keap_app`) and kind, decided by the write's condition. On a
    /// removed and re-created connection, or one re-authorized for another account, the item
    /// gets only fingerprints, the generation and times (a removal or a replaced account must
    /// not keep another grant's live tokens).
    pub async fn store_orphan_pair(
        &self,
        id: &ConnectionId,
        owner: &OrphanOwner<'_>,
        pair: &TokenPair,
        now: i64,
    ) -> Result<OrphanKept, StoreError> {
        let mut full = orphan_diagnosis(owner.generation, pair, now);
        full.insert(
            "access_token".to_owned(),
            string(pair.access_token.expose_secret()),
        );
        full.insert(
            "refresh_token".to_owned(),
            string(pair.refresh_token.expose_secret()),
        );
        let mut same_grant = vec!["(attribute_not_exists(#kind) OR #kind = :oauth)"];
        let mut request = self
            .update(connection_key(id))
            .update_expression("SET orphan_pair = :orphan, updated_at = :now")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_values(":oauth", string(ConnectionKind::OAuth.as_str()))
            .expression_attribute_values(":orphan", AttributeValue::M(full))
            .expression_attribute_values(":now", number(now));
        match owner.incarnation {
            Some(incarnation) => {
                same_grant.push("incarnation = :inc");
                request = request.expression_attribute_values(":inc", string(incarnation));
            }
            None => same_grant.push("attribute_not_exists(incarnation)"),
        }
        match owner.keap_app {
            Some(app) => {
                same_grant.push("keap_app = :app");
                request = request.expression_attribute_values(":app", string(app));
            }
            None => same_grant.push("attribute_not_exists(keap_app)"),
        }
        let request = request.condition_expression(same_grant.join(" AND "));
        if let Written::Applied(_) = send_update(request).await? {
            return Ok(OrphanKept::Pair);
        }
        let request = self
            .update(connection_key(id))
            .update_expression("SET orphan_pair = :orphan, updated_at = :now")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(
                ":orphan",
                AttributeValue::M(orphan_diagnosis(owner.generation, pair, now)),
            )
            .expression_attribute_values(":now", number(now));
        Ok(match send_update(request).await? {
            Written::Applied(_) => OrphanKept::DiagnosisOnly,
            // The connection was removed meanwhile: nothing to attach the orphan to.
            Written::ConditionFailed(_) => OrphanKept::Nothing,
        })
    }

    pub async fn put_state(
        &self,
        nonce: &str,
        pending: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", state_key(nonce))
            .item("connection_id", string(pending.connection_id.as_str()))
            .item("expires_at", number(pending.expires_at))
            .item(
                "replace_account",
                AttributeValue::Bool(pending.replace_account),
            )
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map(|_| ())
            .map_err(StoreError::from_sdk)
    }

    /// Marks the state consumed (`consumed_by`) if it exists, has not expired and was not
    /// consumed; works once, and a retry of a consume that landed is recognised.
    pub async fn consume_state(&self, nonce: &str, now: i64) -> Result<StateOutcome, StoreError> {
        let write_id = new_write_id();
        // An update, not a delete: the `consumed_by` it leaves is how a retry whose first
        // attempt landed recognises its own consume. TTL removes the item later.
        let request = self
            .update(state_key(nonce))
            .update_expression("SET consumed_by = :wid, consumed_at = :now")
            .condition_expression(
                "attribute_exists(pk) AND expires_at > :now AND attribute_not_exists(consumed_by)",
            )
            .expression_attribute_values(":wid", string(&write_id))
            .expression_attribute_values(":now", number(now))
            .return_values(ReturnValue::AllNew);
        let outcome = match send_update(request).await? {
            Written::Applied(Some(item)) => StateOutcome::Consumed(parse_state(&item)?),
            Written::Applied(None) => StateOutcome::Unknown,
            Written::ConditionFailed(Some(old)) => match state_consumed_by(&old) {
                Some(by) if by == write_id => StateOutcome::Consumed(parse_state(&old)?),
                // Consumed by another callback: a replay.
                Some(_) => StateOutcome::Unknown,
                None => StateOutcome::Expired,
            },
            Written::ConditionFailed(None) => StateOutcome::Unknown,
        };
        Ok(outcome)
    }

    /// Deletes every pending authorization (state item) that points at `id`, consumed or not;
    /// returns how many. After it, no authorize link started for `id` can finish.
    /// The `pk`s starting with `prefix` that a keys-only sparse index lists under
    /// `attribute = value`, every page (eventually consistent: candidates only).
    pub(super) async fn sparse_index_keys(
        &self,
        index: &str,
        attribute: &str,
        value: &str,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression("#key = :value")
                .expression_attribute_names("#key", attribute)
                .expression_attribute_values(":value", string(value))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(StoreError::from_sdk)?;
            keys.extend(page.items().iter().filter_map(|item| match item.get("pk") {
                Some(AttributeValue::S(pk)) if pk.starts_with(prefix) => Some(pk.clone()),
                _ => None,
            }));
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(keys),
            }
        }
    }

    pub async fn retire_pending_authorizations(
        &self,
        id: &ConnectionId,
    ) -> Result<usize, StoreError> {
        // The sparse index holds state items only (connection items carry no `connection_id`
        // attribute), keys only.
        let mut retired = 0;
        for pk in self
            .sparse_index_keys(PENDING_INDEX, "connection_id", id.as_str(), STATE_PREFIX)
            .await?
        {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", string(pk))
                .send()
                .await
                .map_err(StoreError::from_sdk)?;
            retired += 1;
        }
        Ok(retired)
    }
}
