//! `start_authorization`: an operator (IAM-authorized direct invocation) asks for an authorize
//! link. Only links started here can finish at the public callback, so nobody can attach their
//! own Keap account to the stack.

use tracing::info;

use super::AuthorizationService;
use super::commands::StartAuthorization;
use super::error::CommandError;
use super::nonce;
use crate::clock::now_epoch_secs;
use crate::connection_id::ConnectionId;
use crate::deadline::Deadline;
use crate::token_store::PendingAuthorization;

/// How long an authorize link works (docs/design.md, "Data model": state items live 10 minutes).
pub(crate) const STATE_TTL_SECS: i64 = 600;

/// The answer to `start_authorization`. `Debug` leaves out the URL: its state is a
/// credential for the next ten minutes.
#[derive(Clone, serde::Serialize)]
pub struct AuthorizationStarted {
    pub authorize_url: String,
    pub state_expires_at: i64,
    pub connection_id: ConnectionId,
    /// Only for `replace_account`: the connection's REST Hook subscriptions belong to the Keap
    /// account it leaves, so they were removed before the link was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksForAnotherAccount>,
}

/// What a `replace_account` start did to the connection's subscriptions, and what is left to do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HooksForAnotherAccount {
    /// Event keys whose subscription was removed (the old account's deliveries get 410).
    pub removed: Vec<String>,
    /// Event keys whose hook the old account did not delete (Keap drops them after a 410).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keap_delete_failed: Vec<String>,
    pub next_step: String,
}

impl std::fmt::Debug for AuthorizationStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationStarted")
            .field("authorize_url", &"[REDACTED]")
            .field("state_expires_at", &self.state_expires_at)
            .field("connection_id", &self.connection_id)
            .field("hooks", &self.hooks)
            .finish()
    }
}

pub async fn start_authorization(
    service: &AuthorizationService,
    request: &StartAuthorization,
) -> Result<AuthorizationStarted, CommandError> {
    let deadline = Deadline::after(service.config.function_timeout);
    start_authorization_until(service, request, deadline).await
}

/// [`start_authorization`] working to `deadline` (the invocation's): a `replace_account`
/// start's Keap deletes are skipped when they no longer fit.
pub async fn start_authorization_until(
    service: &AuthorizationService,
    request: &StartAuthorization,
    deadline: Deadline,
) -> Result<AuthorizationStarted, CommandError> {
    let redirect_uri = service
        .config
        .redirect_uri()
        .map_err(|e| CommandError::Configuration(e.to_string()))?;
    // Read before the state is stored, so a broken secret leaves no state behind.
    let credentials = service
        .secrets
        .client_credentials(&service.config.client_secret_id)
        .await
        .map_err(CommandError::from_client_secret)?;
    let state = nonce::new_nonce().map_err(|_| {
        CommandError::Unavailable("the operating system's random source failed".to_owned())
    })?;
    // Before the link exists: once it is followed, the connection speaks for another account,
    // and a subscription of the old one would publish that account's changes under this id.
    let hooks = if request.replace_account {
        forget_hooks_of_the_old_account(service, &request.connection_id, deadline).await?
    } else {
        None
    };
    let state_expires_at = now_epoch_secs() + STATE_TTL_SECS;
    service
        .store
        .put_state(
            &state,
            &PendingAuthorization {
                connection_id: request.connection_id.clone(),
                expires_at: state_expires_at,
                replace_account: request.replace_account,
            },
        )
        .await
        .map_err(|e| match &hooks {
            Some(hooks) if !hooks.removed.is_empty() => {
                CommandError::from_store(e).noting(&format!(
                    "the old account's REST Hook subscriptions were removed already ({}): send \
                     start_authorization again, then subscribe_hooks for them once it completes",
                    hooks.removed.join(", ")
                ))
            }
            _ => CommandError::from_store(e),
        })?;
    let authorize_url = service
        .oauth
        .authorize_url(&credentials.client_id, redirect_uri, &state);
    info!(
        connection_id = %request.connection_id,
        replace_account = request.replace_account,
        state_expires_at,
        "authorization started"
    );
    Ok(AuthorizationStarted {
        authorize_url: authorize_url.into(),
        state_expires_at,
        connection_id: request.connection_id.clone(),
        hooks,
    })
}

/// `None` when this stage has no hook commands (no `KEAPALIVE_HOOKS_BASE_URL`): nothing can
/// have been subscribed through it.
async fn forget_hooks_of_the_old_account(
    service: &AuthorizationService,
    id: &ConnectionId,
    deadline: Deadline,
) -> Result<Option<HooksForAnotherAccount>, CommandError> {
    let Some(hooks) = &service.hooks else {
        return Ok(None);
    };
    let forgotten = hooks
        .forget_all(id, deadline)
        .await
        .map_err(super::from_hooks)?;
    let next_step = if forgotten.event_keys.is_empty() {
        "the connection had no REST Hook subscriptions".to_owned()
    } else {
        format!(
            "REST Hook subscriptions belong to a Keap account, so the old account's were removed: \
             once this authorization completes, send subscribe_hooks again for {}",
            forgotten.event_keys.join(", ")
        )
    };
    // Event keys are Keap's public names: logged, so they can be found again if the answer
    // is lost.
    info!(
        connection_id = %id,
        hooks_removed = ?forgotten.event_keys,
        "replace_account: the old account's hook subscriptions removed"
    );
    Ok(Some(HooksForAnotherAccount {
        removed: forgotten.event_keys,
        keap_delete_failed: forgotten.keap_delete_failed,
        next_step,
    }))
}
