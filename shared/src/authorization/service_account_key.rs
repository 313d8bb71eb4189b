//! Connections of kind `service_account_key`: registering a key (validated with one cheap read
//! of the account profile before anything is stored) and removing a connection.

use tracing::info;

use super::AuthorizationService;
use super::commands::{RegisterServiceAccountKey, RemoveConnection};
use super::error::CommandError;
use crate::clock::{now_epoch_millis, now_epoch_secs};
use crate::connection_id::ConnectionId;
use crate::deadline::Deadline;
use crate::hooks::subscriptions::Forgotten;
use crate::keap::{AccessCredential, KeapError};
use crate::secrets::SecretsError;
use crate::token_store::{AuthorizationBasis, RegisterOutcome, new_write_id};

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct KeyRegistered {
    pub connection_id: ConnectionId,
    pub kind: &'static str,
    pub generation: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ConnectionRemoved {
    pub connection_id: ConnectionId,
    pub removed: bool,
    /// Authorize links started for the connection and not yet finished, now dead.
    pub pending_authorizations_retired: usize,
    /// Keap REST Hook subscriptions forgotten (their deliveries get 410 from now on).
    pub hooks_forgotten: usize,
    /// Event keys whose hook Keap did not delete (Keap drops them itself after a 410).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keap_hook_delete_failed: Vec<String>,
}

pub async fn register_service_account_key(
    service: &AuthorizationService,
    request: &RegisterServiceAccountKey,
) -> Result<KeyRegistered, CommandError> {
    let secret_id = request.secret_id.as_str();
    if let Some(prefix) = service.config.key_secret_prefix.as_deref()
        && !secret_name(secret_id).starts_with(prefix)
    {
        // The IAM policy only lets the functions read secrets under the prefix; a key elsewhere
        // would validate here only if the policy were wider than the design says.
        return Err(CommandError::NotAuthorized(format!(
            "register_service_account_key.secret_id must name a secret under {prefix} \
             (KEAPALIVE_KEY_SECRET_PREFIX): create the secret there and try again"
        )));
    }
    // What the registration is conditioned on, read before the probe: its retry can never land
    // over an authorization that came after it (docs/design.md, "OAuth authorization").
    let basis = service
        .store
        .read_authorization(&request.connection_id)
        .await
        .map_err(CommandError::from_store)?;
    let basis = AuthorizationBasis::of(basis.as_ref());
    // A re-registration usually follows a rotation: never validate a cached old value.
    service.secrets.invalidate(secret_id);
    let key = service
        .secrets
        .secret_string(secret_id)
        .await
        .map_err(key_secret_error)?;
    let probed_at_ms = now_epoch_millis();
    service
        .rest
        .account_profile(&AccessCredential::ApiKey(key))
        .await
        .map_err(profile_error)?;
    // Keap's account profile does not name the app (tenant), so a key connection starts
    // without `keap_app`. One write id for the store's own retries.
    let outcome = service
        .store
        .register_key(
            &request.connection_id,
            secret_id,
            None,
            &basis,
            &new_write_id(),
            probed_at_ms,
            now_epoch_secs(),
        )
        .await
        .map_err(CommandError::from_store)?;
    let RegisterOutcome::Registered { generation } = outcome else {
        return Err(CommandError::Unavailable(format!(
            "another authorization of connection {} landed while the key was being checked, \
             and it stays; nothing was stored. Check the connection (keapalive-admin status) and \
             send the command again if the key should replace it",
            request.connection_id
        )));
    };
    info!(
        connection_id = %request.connection_id,
        generation,
        "service account key registered"
    );
    Ok(KeyRegistered {
        connection_id: request.connection_id.clone(),
        kind: "service_account_key",
        generation,
    })
}

pub async fn remove_connection(
    service: &AuthorizationService,
    request: &RemoveConnection,
    deadline: Deadline,
) -> Result<ConnectionRemoved, CommandError> {
    // Subscriptions first, while the connection still exists: keap-proxy needs its credential
    // to delete them at Keap (best-effort; a forgotten token's deliveries get 410 anyway). A
    // store error stops the removal, so a retry finds them again.
    let forgotten = match &service.hooks {
        // Only a store error comes back (Keap's refusals are listed, never fatal).
        Some(hooks) => hooks
            .forget_all(&request.connection_id, deadline)
            .await
            .map_err(super::from_hooks)?,
        None => Forgotten::default(),
    };
    // Links next: an authorize link still open after the removal would bring the connection
    // back as soon as someone follows it.
    let pending_authorizations_retired = service
        .store
        .retire_pending_authorizations(&request.connection_id)
        .await
        .map_err(CommandError::from_store)?;
    // The item's delete and its tombstone, in one transaction: a link the (eventually
    // consistent) index did not show fails on the tombstone.
    let removed = service
        .store
        .remove_connection(&request.connection_id, now_epoch_secs())
        .await
        .map_err(CommandError::from_store)?;
    // A subscription written a moment before the removal, which the index did not show yet.
    // The connection is gone either way: a store error here is logged, not answered.
    if let Some(hooks) = &service.hooks
        && let Err(error) = hooks.forget_stragglers(&request.connection_id).await
    {
        tracing::warn!(connection_id = %request.connection_id, error = %error, "could not look for subscriptions written during the removal; their deliveries publish until they are deleted");
    }
    info!(
        connection_id = %request.connection_id,
        removed,
        pending_authorizations_retired,
        "connection removed"
    );
    Ok(ConnectionRemoved {
        connection_id: request.connection_id.clone(),
        removed,
        pending_authorizations_retired,
        hooks_forgotten: forgotten.event_keys.len(),
        keap_hook_delete_failed: forgotten.keap_delete_failed,
    })
}

/// The name part of a Secrets Manager id: an ARN's `secret:` suffix, or the id itself.
fn secret_name(secret_id: &str) -> &str {
    let Some(rest) = secret_id.strip_prefix("arn:") else {
        return secret_id;
    };
    // arn:<partition>:secretsmanager:<region>:<account>:secret:<name>
    let parts: Vec<&str> = rest.splitn(6, ':').collect();
    match parts.as_slice() {
        [_, "secretsmanager", _, _, "secret", name] => name,
        _ => secret_id,
    }
}

/// The key's secret was named by the operator: a missing one is their input error. The id is
/// not repeated (it passed no prefix check when none is configured and could be anything).
fn key_secret_error(error: SecretsError) -> CommandError {
    match error {
        SecretsError::NotFound { .. } => CommandError::Validation(
            "register_service_account_key.secret_id names no secret with a value: put the key \
             into it as the secret string"
                .to_owned(),
        ),
        SecretsError::Malformed { .. } => CommandError::Validation(
            "the secret named by register_service_account_key.secret_id is empty: put the key \
             into it as the secret string"
                .to_owned(),
        ),
        SecretsError::AccessDenied { .. } => CommandError::Configuration(
            "the function may not read the secret named by secret_id: check \
             KEAPALIVE_KEY_SECRET_PREFIX and the function's IAM policy"
                .to_owned(),
        ),
        SecretsError::Unavailable { reason, .. } => {
            CommandError::Unavailable(format!("Secrets Manager is unavailable ({reason})"))
        }
    }
}

fn profile_error(error: KeapError) -> CommandError {
    match error {
        KeapError::Unauthorized { .. } | KeapError::Rejected { status: 403, .. } => {
            CommandError::KeapRejected(
                "Keap rejected the key (it is revoked, mistyped or not a Service Account Key): \
                 nothing was stored"
                    .to_owned(),
            )
        }
        KeapError::Rejected { .. } => {
            CommandError::KeapRejected(format!("{error}: nothing was stored"))
        }
        _ => CommandError::Unavailable(format!(
            "{error}: the key could not be checked and nothing was stored; try again"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_applies_to_the_name_inside_an_arn() {
        assert_eq!(
            secret_name("keapalive/prod/keys/a"),
            "keapalive/prod/keys/a"
        );
        assert_eq!(
            secret_name(
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:keapalive/prod/keys/a-AbC123"
            ),
            "keapalive/prod/keys/a-AbC123"
        );
        assert_eq!(secret_name("arn:aws:s3:::bucket"), "arn:aws:s3:::bucket");
    }
}
