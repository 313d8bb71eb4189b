//! [`TokenStore`] on DynamoDB: one table, partition key `pk`, conditional writes as the only
//! concurrency control.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use secrecy::ExposeSecret;

use super::model::{
    CONNECTION_PREFIX, Item, connection_key, number, parse_connection, parse_state, state_key,
    string, unsigned,
};
use super::{
    AuthorizeOutcome, CommitOutcome, Connection, LeaseOutcome, MarkGuard, MarkOutcome,
    PendingAuthorization, StateOutcome, StoreError, TokenStore,
};
use crate::connection_id::ConnectionId;
use crate::keap::{IssuedTokens, TokenPair};

#[derive(Clone)]
pub struct DynamoDbTokenStore {
    client: Client,
    table: String,
}

impl DynamoDbTokenStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn update(&self, key: AttributeValue) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", key)
    }
}

/// Whether an SDK error is DynamoDB's "condition failed"; everything else is a [`StoreError`].
fn conditional<E, R>(error: SdkError<E, R>, is_condition: impl Fn(&E) -> bool) -> Outcome
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    match error.as_service_error() {
        Some(service) if is_condition(service) => Outcome::ConditionFailed,
        _ => Outcome::Failed(StoreError::from_sdk(error)),
    }
}

enum Outcome {
    ConditionFailed,
    Failed(StoreError),
}

fn pair_values(pair: &TokenPair) -> [(&'static str, AttributeValue); 3] {
    [
        (":access", string(pair.access_token.expose_secret())),
        (":refresh", string(pair.refresh_token.expose_secret())),
        (":expires", number(pair.access_expires_at)),
    ]
}

fn generation_of(attributes: Option<&Item>) -> Option<u64> {
    match attributes?.get("generation")? {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}

impl TokenStore for DynamoDbTokenStore {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
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

    async fn list_connections(&self) -> Result<Vec<Connection>, StoreError> {
        let mut connections = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("begins_with(pk, :prefix)")
                .expression_attribute_values(":prefix", string(CONNECTION_PREFIX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(StoreError::from_sdk)?;
            for item in page.items() {
                connections.push(parse_connection(item)?);
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(connections)
    }

    async fn authorize(
        &self,
        id: &ConnectionId,
        issued: &IssuedTokens,
        replace_account: bool,
        now: i64,
    ) -> Result<AuthorizeOutcome, StoreError> {
        let mut set = vec![
            "access_token = :access",
            "refresh_token = :refresh",
            "access_expires_at = :expires",
            "#status = :active",
            "#kind = :oauth",
            "authorized_at = :now",
            "updated_at = :now",
        ];
        let mut request = self
            .update(connection_key(id))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_values(":active", string("active"))
            .expression_attribute_values(":oauth", string("oauth"))
            .expression_attribute_values(":now", number(now))
            .expression_attribute_values(":one", unsigned(1))
            .return_values(ReturnValue::UpdatedNew);
        for (name, value) in pair_values(&issued.pair) {
            request = request.expression_attribute_values(name, value);
        }
        if let Some(scope) = &issued.scope {
            set.push("keap_scope = :scope");
            request = request.expression_attribute_values(":scope", string(scope));
        }
        if let Some(app) = &issued.keap_app {
            set.push("keap_app = :app");
            request = request.expression_attribute_values(":app", string(app));
            if !replace_account {
                request = request
                    .condition_expression("attribute_not_exists(keap_app) OR keap_app = :app");
            }
        }
        let expression = format!(
            "SET {} ADD generation :one REMOVE lease_owner, lease_until, orphan_pair, last_error, key_secret_id",
            set.join(", ")
        );
        match request.update_expression(expression).send().await {
            Ok(output) => {
                let generation = generation_of(output.attributes.as_ref()).ok_or_else(|| {
                    StoreError::Malformed {
                        pk: format!("{CONNECTION_PREFIX}{id}"),
                        reason: "update returned no generation".to_owned(),
                    }
                })?;
                Ok(AuthorizeOutcome::Authorized { generation })
            }
            Err(error) => match conditional(error, |e| e.is_conditional_check_failed_exception()) {
                Outcome::ConditionFailed => {
                    let existing_app = self
                        .get(id)
                        .await?
                        .and_then(|c| c.keap_app)
                        .unwrap_or_else(|| "<unknown>".to_owned());
                    Ok(AuthorizeOutcome::AccountMismatch { existing_app })
                }
                Outcome::Failed(e) => Err(e),
            },
        }
    }

    async fn take_lease(
        &self,
        id: &ConnectionId,
        generation: u64,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<LeaseOutcome, StoreError> {
        let result = self
            .update(connection_key(id))
            .update_expression("SET lease_owner = :owner, lease_until = :until")
            .condition_expression(
                "generation = :g AND #status = :active \
                 AND (attribute_not_exists(#kind) OR #kind = :oauth) \
                 AND (attribute_not_exists(lease_until) OR lease_until < :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_values(":owner", string(owner))
            .expression_attribute_values(":until", number(until))
            .expression_attribute_values(":g", unsigned(generation))
            .expression_attribute_values(":active", string("active"))
            .expression_attribute_values(":oauth", string("oauth"))
            .expression_attribute_values(":now", number(now))
            .send()
            .await;
        match result {
            Ok(_) => Ok(LeaseOutcome::Acquired { until }),
            Err(error) => match conditional(error, |e| e.is_conditional_check_failed_exception()) {
                Outcome::Failed(e) => Err(e),
                // Only losers pay for this read, to tell the caller why it lost.
                Outcome::ConditionFailed => Ok(match self.get(id).await? {
                    Some(c) if c.generation != generation => LeaseOutcome::GenerationMoved,
                    Some(c)
                        if c.status == super::ConnectionStatus::Active
                            && c.kind == super::ConnectionKind::OAuth =>
                    {
                        LeaseOutcome::Held
                    }
                    _ => LeaseOutcome::NotActive,
                }),
            },
        }
    }

    async fn commit_refresh(
        &self,
        id: &ConnectionId,
        generation: u64,
        issued: &IssuedTokens,
        now: i64,
    ) -> Result<CommitOutcome, StoreError> {
        let mut set = vec![
            "access_token = :access",
            "refresh_token = :refresh",
            "access_expires_at = :expires",
            "generation = :next",
            "#status = :active",
            "refreshed_at = :now",
            "updated_at = :now",
        ];
        let next = generation + 1;
        let mut request = self
            .update(connection_key(id))
            .condition_expression("generation = :g")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":g", unsigned(generation))
            .expression_attribute_values(":next", unsigned(next))
            .expression_attribute_values(":active", string("active"))
            .expression_attribute_values(":now", number(now));
        for (name, value) in pair_values(&issued.pair) {
            request = request.expression_attribute_values(name, value);
        }
        if let Some(scope) = &issued.scope {
            set.push("keap_scope = :scope");
            request = request.expression_attribute_values(":scope", string(scope));
        }
        let expression = format!(
            "SET {} REMOVE lease_owner, lease_until, last_error",
            set.join(", ")
        );
        match request.update_expression(expression).send().await {
            Ok(_) => Ok(CommitOutcome::Committed { generation: next }),
            Err(error) => match conditional(error, |e| e.is_conditional_check_failed_exception()) {
                Outcome::ConditionFailed => Ok(CommitOutcome::GenerationMoved),
                Outcome::Failed(e) => Err(e),
            },
        }
    }

    async fn release_lease(
        &self,
        id: &ConnectionId,
        generation: u64,
        owner: &str,
        last_error: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut request = self
            .update(connection_key(id))
            .condition_expression("generation = :g AND lease_owner = :owner")
            .expression_attribute_values(":g", unsigned(generation))
            .expression_attribute_values(":owner", string(owner))
            .expression_attribute_values(":now", number(now));
        let expression = match last_error {
            Some(error) => {
                request = request.expression_attribute_values(":error", string(error));
                "SET updated_at = :now, last_error = :error REMOVE lease_owner, lease_until"
            }
            None => "SET updated_at = :now REMOVE lease_owner, lease_until",
        };
        match request.update_expression(expression).send().await {
            Ok(_) => Ok(()),
            Err(error) => match conditional(error, |e| e.is_conditional_check_failed_exception()) {
                // Someone else's lease or generation now: nothing of ours to release.
                Outcome::ConditionFailed => Ok(()),
                Outcome::Failed(e) => Err(e),
            },
        }
    }

    async fn mark_needs_reauthorization(
        &self,
        id: &ConnectionId,
        generation: u64,
        guard: MarkGuard<'_>,
        reason: &str,
        now: i64,
    ) -> Result<MarkOutcome, StoreError> {
        let mut request = self
            .update(connection_key(id))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":g", unsigned(generation))
            .expression_attribute_values(":dead", string("needs_reauthorization"))
            .expression_attribute_values(":reason", string(reason))
            .expression_attribute_values(":now", number(now))
            .update_expression(
                "SET #status = :dead, last_error = :reason, updated_at = :now \
                 REMOVE lease_owner, lease_until",
            );
        request = match guard {
            MarkGuard::LeaseOwner(owner) => request
                .condition_expression("generation = :g AND lease_owner = :owner")
                .expression_attribute_values(":owner", string(owner)),
            MarkGuard::GenerationOnly => request.condition_expression("generation = :g"),
        };
        match request.send().await {
            Ok(_) => Ok(MarkOutcome::Marked),
            Err(error) => match conditional(error, |e| e.is_conditional_check_failed_exception()) {
                Outcome::ConditionFailed => Ok(MarkOutcome::NotMarked),
                Outcome::Failed(e) => Err(e),
            },
        }
    }

    async fn store_orphan_pair(
        &self,
        id: &ConnectionId,
        orphan_generation: u64,
        pair: &TokenPair,
        now: i64,
    ) -> Result<(), StoreError> {
        let orphan = HashMap::from([
            ("generation".to_owned(), unsigned(orphan_generation)),
            (
                "access_token".to_owned(),
                string(pair.access_token.expose_secret()),
            ),
            (
                "refresh_token".to_owned(),
                string(pair.refresh_token.expose_secret()),
            ),
            (
                "access_expires_at".to_owned(),
                number(pair.access_expires_at),
            ),
            ("stored_at".to_owned(), number(now)),
        ]);
        self.update(connection_key(id))
            .update_expression("SET orphan_pair = :orphan, updated_at = :now")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":orphan", AttributeValue::M(orphan))
            .expression_attribute_values(":now", number(now))
            .send()
            .await
            .map(|_| ())
            .or_else(|error| {
                match conditional(error, |e| e.is_conditional_check_failed_exception()) {
                    // The connection was removed meanwhile: nothing to attach the orphan to.
                    Outcome::ConditionFailed => Ok(()),
                    Outcome::Failed(e) => Err(e),
                }
            })
    }

    async fn put_state(
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

    async fn consume_state(&self, nonce: &str, now: i64) -> Result<StateOutcome, StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", state_key(nonce))
            .condition_expression("attribute_exists(pk) AND expires_at > :now")
            .expression_attribute_values(":now", number(now))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => match output.attributes {
                Some(item) => Ok(StateOutcome::Consumed(parse_state(&item)?)),
                None => Ok(StateOutcome::Unknown),
            },
            Err(error) => match conditional(error, |e| e.is_conditional_check_failed_exception()) {
                Outcome::Failed(e) => Err(e),
                Outcome::ConditionFailed => {
                    let still_there = self
                        .client
                        .get_item()
                        .table_name(&self.table)
                        .key("pk", state_key(nonce))
                        .consistent_read(true)
                        .send()
                        .await
                        .map_err(StoreError::from_sdk)?
                        .item
                        .is_some();
                    Ok(if still_there {
                        StateOutcome::Expired
                    } else {
                        StateOutcome::Unknown
                    })
                }
            },
        }
    }

    async fn register_service_account_key(
        &self,
        id: &ConnectionId,
        key_secret_id: &str,
        keap_app: Option<&str>,
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut request = self
            .update(connection_key(id))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_values(":active", string("active"))
            .expression_attribute_values(":key_kind", string("service_account_key"))
            .expression_attribute_values(":secret", string(key_secret_id))
            .expression_attribute_values(":now", number(now))
            .expression_attribute_values(":one", unsigned(1))
            .return_values(ReturnValue::UpdatedNew);
        let mut set = vec![
            "#status = :active",
            "#kind = :key_kind",
            "key_secret_id = :secret",
            "authorized_at = :now",
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
        ];
        match keap_app {
            Some(app) => {
                set.push("keap_app = :app");
                request = request.expression_attribute_values(":app", string(app));
            }
            None => remove.push("keap_app"),
        }
        let output = request
            .update_expression(format!(
                "SET {} ADD generation :one REMOVE {}",
                set.join(", "),
                remove.join(", ")
            ))
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        generation_of(output.attributes.as_ref()).ok_or_else(|| StoreError::Malformed {
            pk: format!("{CONNECTION_PREFIX}{id}"),
            reason: "update returned no generation".to_owned(),
        })
    }

    async fn delete_connection(&self, id: &ConnectionId) -> Result<bool, StoreError> {
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", connection_key(id))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        Ok(output.attributes.is_some_and(|a| !a.is_empty()))
    }
}
