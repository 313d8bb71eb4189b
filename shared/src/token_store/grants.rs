//! The writes that give a connection a new grant — the pair of a code exchange, a key
//! registration — and the removal that ends one (docs/design.md, "OAuth authorization" and
//! "Data model").
//!
//! A grant write is decided on what a consistent, projected read saw before the code exchange
//! (or the key probe): it applies only if the connection is the same incarnation and either
//! nobody authorized it since (`authorized_by` as read) or the grant there came from an earlier
//! exchange (`exchanged_at`). The latest exchange wins — Keap retires the earlier grant of the
//! same user — and the retry of an older write, whose first attempt landed before a newer one,
//! fails. Generation is not in the condition, so a refresh commit never blocks it. Every such
//! write returns nothing (`ReturnValues` NONE, nothing on a failed condition): the callback's
//! and the operator's roles may not read tokens, so they learn the outcome from a projected
//! read ([`CALLBACK_READABLE_ATTRIBUTES`](super::CALLBACK_READABLE_ATTRIBUTES)).
//!
//! A removal deletes the connection and puts its tombstone `tomb#<connection_id>` in one
//! transaction; a pair write from a link started at or before the removal fails on the
//! tombstone, so a link the pending index did not show cannot bring the connection back.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem, Update,
};
use secrecy::ExposeSecret;

use super::dynamodb::{
    AuthorizationView, DynamoDbTokenStore, Written, malformed_write, send_update,
};
use super::model::{
    PENDING_EVENTS, Recorded, TOMBSTONE_PENDING_STATUS, connection_key, empty_list, number,
    parse_pending, string, tombstone_key, unsigned,
};
use super::write_id::new_write_id;
use super::{AuthorizeOutcome, ConnectionKind, ConnectionStatus, StoreError};
use crate::clock::{now_epoch_millis, now_epoch_secs};
use crate::connection_id::ConnectionId;
use crate::events::Change;
use crate::keap::IssuedTokens;

/// A tombstone outlives every authorize link that could have been started before its removal
/// (a link lives 10 minutes): its TTL is at least `removed_at` + this.
pub const TOMBSTONE_MIN_TTL_SECS: i64 = 660;
/// A removal whose item changes between its read and its transaction reads again, this often.
const REMOVE_ATTEMPTS: usize = 4;

/// When DynamoDB's TTL may delete the tombstone of a removal at `removed_at`.
///
/// Without lifecycle events it is set when the tombstone is written; with them, only once no
/// event is pending on the tombstone (then from that time: never earlier than this).
pub fn tombstone_expires_at(removed_at: i64) -> i64 {
    removed_at + TOMBSTONE_MIN_TTL_SECS
}

/// What a grant write was decided on: the connection item as a consistent projected read saw
/// it before the code exchange or the key probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizationBasis {
    /// `None`: there was no connection item.
    existing: Option<ExistingGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ExistingGrant {
    incarnation: Option<String>,
    authorized_by: Option<String>,
}

impl AuthorizationBasis {
    pub fn of(view: Option<&AuthorizationView>) -> Self {
        Self {
            existing: view.map(|view| ExistingGrant {
                incarnation: view.incarnation.clone(),
                authorized_by: view.authorized_by.clone(),
            }),
        }
    }
}

/// One grant write's expression attribute names and values.
#[derive(Default)]
struct Expression {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expression {
    fn name(&mut self, alias: &str, name: &str) {
        self.names.insert(alias.to_owned(), name.to_owned());
    }

    fn value(&mut self, placeholder: &str, value: AttributeValue) {
        self.values.insert(placeholder.to_owned(), value);
    }

    /// Appends `recorded` to the item's pending events in this write (the outbox).
    fn record(&mut self, set: &mut Vec<&'static str>, recorded: &Recorded) {
        self.name("#pe", PENDING_EVENTS);
        self.value(":nil", empty_list());
        self.value(":event", recorded.as_list());
        set.push("#pe = list_append(if_not_exists(#pe, :nil), :event)");
    }

    /// `incarnation = :read_inc AND (authorized_by = :read_by OR exchanged_at < :mine)` as read
    /// (or no item at all, or an item from an earlier exchange).
    fn grant_condition(&mut self, basis: &AuthorizationBasis, exchanged_at_ms: i64) -> String {
        self.value(":mine", number(exchanged_at_ms));
        let Some(existing) = &basis.existing else {
            return "(attribute_not_exists(pk) OR exchanged_at < :mine)".to_owned();
        };
        let incarnation = match &existing.incarnation {
            Some(incarnation) => {
                self.value(":read_inc", string(incarnation));
                "incarnation = :read_inc"
            }
            None => "attribute_not_exists(incarnation)",
        };
        let authorized_by = match &existing.authorized_by {
            Some(by) => {
                self.value(":read_by", string(by));
                "authorized_by = :read_by"
            }
            None => "attribute_not_exists(authorized_by)",
        };
        format!(
            "attribute_exists(pk) AND {incarnation} AND ({authorized_by} OR exchanged_at < :mine)"
        )
    }
}

/// An authorization's pair, as the callback stores it.
#[derive(Debug, Clone, Copy)]
pub struct PairWrite<'a> {
    pub issued: &'a IssuedTokens,
    /// The link allowed the connection to move to another Keap account.
    pub replace_account: bool,
    pub basis: &'a AuthorizationBasis,
    /// The same for every attempt: how a retry recognises its own landed write.
    pub write_id: &'a str,
    /// Epoch milliseconds just before the code was presented: what "latest exchange" compares.
    pub exchanged_at_ms: i64,
    /// When the link was started (epoch seconds); `Some`: the write fails if the connection was
    /// removed at or after that (its tombstone). `None` only for tools that seed a connection.
    pub link_started_at: Option<i64>,
    pub now: i64,
}

/// How a key registration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    Registered {
        generation: u64,
    },
    /// Another authorization of the connection landed after the read this one was decided on,
    /// from a later exchange or probe: nothing was written.
    Superseded,
}

/// Why a transaction's items were cancelled, by item.
struct Cancelled {
    /// Per item: its condition failed.
    condition_failed: Vec<bool>,
}

/// Sends a transaction; `Ok(None)` when applied, `Ok(Some(_))` when cancelled by a condition.
async fn send_transaction(
    store: &DynamoDbTokenStore,
    items: Vec<TransactWriteItem>,
) -> Result<Option<Cancelled>, StoreError> {
    let result = store
        .client
        .transact_write_items()
        .set_transact_items(Some(items))
        .send()
        .await;
    let error = match result {
        Ok(_) => return Ok(None),
        Err(error) => error,
    };
    if let SdkError::ServiceError(service) = &error {
        match service.err() {
            TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                let codes: Vec<&str> = cancelled
                    .cancellation_reasons()
                    .iter()
                    .map(|reason| reason.code().unwrap_or("None"))
                    .collect();
                // Cancelled for another reason than a condition (a conflicting transaction,
                // throttling): nothing applied, worth a retry.
                if let Some(other) = codes
                    .iter()
                    .find(|code| !matches!(**code, "None" | "ConditionalCheckFailed"))
                {
                    return Err(StoreError::Unavailable {
                        reason: format!("transaction cancelled: {other}"),
                    });
                }
                return Ok(Some(Cancelled {
                    condition_failed: codes
                        .iter()
                        .map(|code| *code == "ConditionalCheckFailed")
                        .collect(),
                }));
            }
            TransactWriteItemsError::TransactionInProgressException(_) => {
                return Err(StoreError::Unavailable {
                    reason: "transaction conflict".to_owned(),
                });
            }
            _ => {}
        }
    }
    // A conflict with another transaction on the same item: nothing applied, worth a retry.
    if error.code() == Some("TransactionConflictException") {
        return Err(StoreError::Unavailable {
            reason: "transaction conflict".to_owned(),
        });
    }
    Err(StoreError::from_sdk(error))
}

impl DynamoDbTokenStore {
    /// Stores the pair of a code exchange as a new generation, `active`, clearing lease, orphan
    /// pair, last error and key reference, conditional on [`PairWrite::basis`] (module docs).
    /// Returns nothing from the write itself; a projected read tells the outcome.
    pub async fn store_authorized_pair(
        &self,
        id: &ConnectionId,
        write: &PairWrite<'_>,
    ) -> Result<AuthorizeOutcome, StoreError> {
        let mut expression = Expression::default();
        expression.name("#status", "status");
        expression.name("#kind", "kind");
        let mut set = vec![
            "access_token = :access",
            "refresh_token = :refresh",
            "access_expires_at = :expires",
            "#status = :active",
            "#kind = :oauth",
            "authorized_at = :now",
            "authorized_by = :wid",
            "exchanged_at = :mine",
            "incarnation = if_not_exists(incarnation, :inc)",
            "updated_at = :now",
        ];
        let pair = &write.issued.pair;
        expression.value(":access", string(pair.access_token.expose_secret()));
        expression.value(":refresh", string(pair.refresh_token.expose_secret()));
        expression.value(":expires", number(pair.access_expires_at));
        expression.value(":active", string(ConnectionStatus::Active.as_str()));
        expression.value(":oauth", string(ConnectionKind::OAuth.as_str()));
        expression.value(":now", number(write.now));
        expression.value(":one", unsigned(1));
        expression.value(":wid", string(write.write_id));
        expression.value(":inc", string(new_write_id()));
        let mut condition = expression.grant_condition(write.basis, write.exchanged_at_ms);
        let recorded = Recorded {
            change: Change::Authorized,
            kind: Some(ConnectionKind::OAuth),
            generation: None,
            event_id: write.write_id.to_owned(),
            occurred_at: write.now,
            reason: None,
        };
        if self.events.is_some() {
            expression.record(&mut set, &recorded);
        }
        if let Some(scope) = &write.issued.scope {
            set.push("keap_scope = :scope");
            expression.value(":scope", string(scope));
        }
        if let Some(app) = &write.issued.keap_app {
            set.push("keap_app = :app");
            expression.value(":app", string(app));
            if !write.replace_account {
                condition.push_str(" AND (attribute_not_exists(keap_app) OR keap_app = :app)");
            }
        }
        let update_expression = format!(
            "SET {} ADD generation :one REMOVE lease_owner, lease_until, orphan_pair, last_error, key_secret_id, lost_responses, unauthorized_rotation_at",
            set.join(", ")
        );

        let (applied, removed) = match write.link_started_at {
            None => {
                let request = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", connection_key(id))
                    .update_expression(update_expression)
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(expression.names))
                    .set_expression_attribute_values(Some(expression.values));
                (
                    matches!(send_update(request).await?, Written::Applied(_)),
                    false,
                )
            }
            Some(started_at) => {
                let update = Update::builder()
                    .table_name(&self.table)
                    .key("pk", connection_key(id))
                    .update_expression(update_expression)
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(expression.names))
                    .set_expression_attribute_values(Some(expression.values))
                    .build()
                    .map_err(|e| build_error(id, &e))?;
                let tombstone = ConditionCheck::builder()
                    .table_name(&self.table)
                    .key("pk", tombstone_key(id))
                    .condition_expression("attribute_not_exists(pk) OR removed_at < :started")
                    .expression_attribute_values(":started", number(started_at))
                    .build()
                    .map_err(|e| build_error(id, &e))?;
                let items = vec![
                    TransactWriteItem::builder().update(update).build(),
                    TransactWriteItem::builder()
                        .condition_check(tombstone)
                        .build(),
                ];
                match send_transaction(self, items).await? {
                    None => (true, false),
                    Some(cancelled) => (
                        false,
                        cancelled.condition_failed.get(1).copied().unwrap_or(false),
                    ),
                }
            }
        };

        let view = self.read_authorization(id).await?;
        let Some(view) = view else {
            return Ok(AuthorizeOutcome::Removed);
        };
        if applied || view.authorized_by.as_deref() == Some(write.write_id) {
            // A refresh may already have committed on top of our pair (one generation higher).
            let generation = view.generation.ok_or_else(|| StoreError::Malformed {
                pk: format!("conn#{id}"),
                reason: "stored item has no generation".to_owned(),
            })?;
            if self.events.is_some() {
                let event = recorded.event(id, ConnectionKind::OAuth, generation);
                self.deliver(&connection_key(id), &[event]).await;
            }
            return Ok(AuthorizeOutcome::Authorized { generation });
        }
        if removed {
            return Ok(AuthorizeOutcome::Removed);
        }
        let mismatch = match (&write.issued.keap_app, &view.keap_app) {
            (Some(offered), Some(existing)) => !write.replace_account && offered != existing,
            _ => false,
        };
        if mismatch {
            return Ok(AuthorizeOutcome::AccountMismatch {
                existing_app: view.keap_app.unwrap_or_else(|| "<unknown>".to_owned()),
            });
        }
        Ok(AuthorizeOutcome::Superseded)
    }

    /// Creates or replaces a service-account-key connection (a new generation, `active`),
    /// conditional on `basis` like a pair write; nothing comes back from the write (a projected
    /// read tells the generation, and whether a failed condition was our own landed attempt).
    #[allow(clippy::too_many_arguments)]
    pub async fn register_key(
        &self,
        id: &ConnectionId,
        key_secret_id: &str,
        keap_app: Option<&str>,
        basis: &AuthorizationBasis,
        write_id: &str,
        probed_at_ms: i64,
        now: i64,
    ) -> Result<RegisterOutcome, StoreError> {
        let mut expression = Expression::default();
        expression.name("#status", "status");
        expression.name("#kind", "kind");
        expression.value(":active", string(ConnectionStatus::Active.as_str()));
        expression.value(
            ":key_kind",
            string(ConnectionKind::ServiceAccountKey.as_str()),
        );
        expression.value(":secret", string(key_secret_id));
        expression.value(":now", number(now));
        expression.value(":one", unsigned(1));
        expression.value(":wid", string(write_id));
        expression.value(":inc", string(new_write_id()));
        let condition = expression.grant_condition(basis, probed_at_ms);
        let recorded = Recorded {
            change: Change::KeyRegistered,
            kind: Some(ConnectionKind::ServiceAccountKey),
            generation: None,
            event_id: write_id.to_owned(),
            occurred_at: now,
            reason: None,
        };
        let mut set = vec![
            "#status = :active",
            "#kind = :key_kind",
            "key_secret_id = :secret",
            "authorized_at = :now",
            "authorized_by = :wid",
            "exchanged_at = :mine",
            "incarnation = if_not_exists(incarnation, :inc)",
            "updated_at = :now",
        ];
        let mut remove = vec![
            "access_token",
            "refresh_token",
            "access_expires_at",
            "lease_owner",
            "lease_until",
            "orphan_pair",
            "last_error",
            "keap_scope",
            "refreshed_at",
            "lost_responses",
            "unauthorized_rotation_at",
            "key_rejected_since",
            "key_accepted_at",
        ];
        if self.events.is_some() {
            expression.record(&mut set, &recorded);
        }
        match keap_app {
            Some(app) => {
                set.push("keap_app = :app");
                expression.value(":app", string(app));
            }
            None => remove.push("keap_app"),
        }
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", connection_key(id))
            .update_expression(format!(
                "SET {} ADD generation :one REMOVE {}",
                set.join(", "),
                remove.join(", ")
            ))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(expression.names))
            .set_expression_attribute_values(Some(expression.values));
        let applied = matches!(send_update(request).await?, Written::Applied(_));
        let view = self.read_authorization(id).await?;
        match view {
            Some(view) if applied || view.authorized_by.as_deref() == Some(write_id) => {
                let generation = view.generation.ok_or_else(|| StoreError::Malformed {
                    pk: format!("conn#{id}"),
                    reason: "stored item has no generation".to_owned(),
                })?;
                if self.events.is_some() {
                    let event = recorded.event(id, ConnectionKind::ServiceAccountKey, generation);
                    self.deliver(&connection_key(id), &[event]).await;
                }
                Ok(RegisterOutcome::Registered { generation })
            }
            // Gone since our write (a removal), or someone else's newer grant.
            _ => Ok(RegisterOutcome::Superseded),
        }
    }

    /// Removes a connection: deletes its item and writes its tombstone (`removed_at`) in one
    /// transaction, so no link started at or before `now` can store a pair for it afterwards.
    /// `true` when an item existed (a projected read before: the transaction returns nothing,
    /// and its retry is idempotent).
    ///
    /// With lifecycle events on, the delete is conditional on the item's pending events being
    /// those read, and the tombstone gets them and the `removed` event (its TTL is set only
    /// once they are published, `status = removed` until then); a change that lands between the
    /// read and the transaction makes it read again.
    pub async fn remove_connection(&self, id: &ConnectionId, now: i64) -> Result<bool, StoreError> {
        if self.events.is_none() {
            return self.remove_without_events(id, now).await;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let view = self.read_authorization(id).await?;
            let write_id = new_write_id();
            let mut delete = Delete::builder()
                .table_name(&self.table)
                .key("pk", connection_key(id));
            let mut carried = Vec::new();
            let mut events = Vec::new();
            match &view {
                None => delete = delete.condition_expression("attribute_not_exists(pk)"),
                Some(view) => {
                    let kind = match view.kind.as_deref() {
                        Some("service_account_key") => ConnectionKind::ServiceAccountKey,
                        _ => ConnectionKind::OAuth,
                    };
                    let generation = view.generation.unwrap_or(0);
                    let mut item = std::collections::HashMap::new();
                    if let Some(pending) = &view.pending_events {
                        item.insert(PENDING_EVENTS.to_owned(), pending.clone());
                    }
                    let mut recorded = parse_pending(&item);
                    recorded.push(Recorded {
                        change: Change::Removed,
                        kind: Some(kind),
                        generation: Some(generation),
                        event_id: write_id.clone(),
                        occurred_at: now,
                        reason: None,
                    });
                    for mut one in recorded {
                        // The tombstone knows neither kind nor generation: fill them in.
                        one.kind = Some(one.kind.unwrap_or(kind));
                        one.generation = Some(one.generation.unwrap_or(generation));
                        carried.push(one.as_value());
                        events.push(one.event(id, kind, generation));
                    }
                    delete = delete.expression_attribute_names("#pe", PENDING_EVENTS);
                    delete = match &view.pending_events {
                        Some(pending) => delete
                            .condition_expression("#pe = :read_pe")
                            .expression_attribute_values(":read_pe", pending.clone()),
                        None => delete.condition_expression(
                            "attribute_exists(pk) AND attribute_not_exists(#pe)",
                        ),
                    };
                }
            }
            let delete = delete.build().map_err(|e| build_error(id, &e))?;
            let tombstone = Update::builder()
                .table_name(&self.table)
                .key("pk", tombstone_key(id))
                .update_expression(
                    "SET removed_at = :now, removed_by = :wid, #status = :removed, \
                     #pe = list_append(if_not_exists(#pe, :nil), :events) REMOVE expires_at",
                )
                .expression_attribute_names("#status", "status")
                .expression_attribute_names("#pe", PENDING_EVENTS)
                .expression_attribute_values(":now", number(now))
                .expression_attribute_values(":wid", string(&write_id))
                .expression_attribute_values(":removed", string(TOMBSTONE_PENDING_STATUS))
                .expression_attribute_values(":nil", empty_list())
                .expression_attribute_values(":events", AttributeValue::L(carried))
                .build()
                .map_err(|e| build_error(id, &e))?;
            let items = vec![
                TransactWriteItem::builder().delete(delete).build(),
                TransactWriteItem::builder().update(tombstone).build(),
            ];
            match send_transaction(self, items).await? {
                None => {
                    self.deliver(&tombstone_key(id), &events).await;
                    if let Err(error) = self.finish_tombstone(id).await {
                        tracing::warn!(connection = %id, error = %error,
                            "the tombstone's TTL is not set yet; the next scheduled refresher run sets it");
                    }
                    return Ok(view.is_some());
                }
                // The item changed since the read (a change recorded an event, or it was
                // created or removed meanwhile): read again.
                Some(_) if attempts < REMOVE_ATTEMPTS => continue,
                Some(_) => {
                    return Err(StoreError::Unavailable {
                        reason: "the connection kept changing during its removal; retry".to_owned(),
                    });
                }
            }
        }
    }

    /// The removal when no lifecycle event is recorded: the tombstone gets its TTL at once.
    async fn remove_without_events(&self, id: &ConnectionId, now: i64) -> Result<bool, StoreError> {
        let existed = self.read_authorization(id).await?.is_some();
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("pk", connection_key(id))
            .build()
            .map_err(|e| build_error(id, &e))?;
        // No `status`, no `connection_id`: the tombstone is in neither sparse index.
        let tombstone = Put::builder()
            .table_name(&self.table)
            .item("pk", tombstone_key(id))
            .item("removed_at", number(now))
            .item("expires_at", number(tombstone_expires_at(now)))
            .build()
            .map_err(|e| build_error(id, &e))?;
        let items = vec![
            TransactWriteItem::builder().delete(delete).build(),
            TransactWriteItem::builder().put(tombstone).build(),
        ];
        match send_transaction(self, items).await? {
            None => Ok(existed),
            // Neither item has a condition.
            Some(_) => Err(StoreError::Unavailable {
                reason: "the removal's transaction was cancelled".to_owned(),
            }),
        }
    }
}

/// Seeding and tool entry points: decided on a projected read made now.
impl DynamoDbTokenStore {
    /// Stores a pair as a new generation, `active` (tools and tests seeding a connection; the
    /// callback uses [`DynamoDbTokenStore::store_authorized_pair`]): decided on a projected read
    /// made now, exchanged now, with no link (so no tombstone check). `write_id` is the same for
    /// every retry of this authorization.
    pub async fn authorize(
        &self,
        id: &ConnectionId,
        issued: &IssuedTokens,
        replace_account: bool,
        write_id: &str,
        now: i64,
    ) -> Result<AuthorizeOutcome, StoreError> {
        let basis = AuthorizationBasis::of(self.read_authorization(id).await?.as_ref());
        let write = PairWrite {
            issued,
            replace_account,
            basis: &basis,
            write_id,
            exchanged_at_ms: now_epoch_millis(),
            link_started_at: None,
            now,
        };
        self.store_authorized_pair(id, &write).await
    }

    /// Creates or replaces a service-account-key connection (tools and tests: the operator uses
    /// [`DynamoDbTokenStore::register_key`]), decided on a projected read made now.
    pub async fn register_service_account_key(
        &self,
        id: &ConnectionId,
        key_secret_id: &str,
        keap_app: Option<&str>,
        now: i64,
    ) -> Result<u64, StoreError> {
        let basis = AuthorizationBasis::of(self.read_authorization(id).await?.as_ref());
        let outcome = self
            .register_key(
                id,
                key_secret_id,
                keap_app,
                &basis,
                &new_write_id(),
                now_epoch_millis(),
                now,
            )
            .await?;
        match outcome {
            RegisterOutcome::Registered { generation } => Ok(generation),
            RegisterOutcome::Superseded => Err(malformed_write(
                id,
                "another authorization landed while the key was being registered",
            )),
        }
    }

    /// Removes a connection item and leaves its tombstone
    /// ([`DynamoDbTokenStore::remove_connection`]); `true` when one existed.
    pub async fn delete_connection(&self, id: &ConnectionId) -> Result<bool, StoreError> {
        self.remove_connection(id, now_epoch_secs()).await
    }
}

fn build_error(id: &ConnectionId, error: &dyn std::fmt::Display) -> StoreError {
    StoreError::Malformed {
        pk: format!("conn#{id}"),
        reason: format!("could not build the request: {error}"),
    }
}
