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
}

impl std::fmt::Debug for AuthorizationStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationStarted")
            .field("authorize_url", &"[REDACTED]")
            .field("state_expires_at", &self.state_expires_at)
            .field("connection_id", &self.connection_id)
            .finish()
    }
}

pub async fn start_authorization(
    service: &AuthorizationService,
    request: &StartAuthorization,
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
        .map_err(CommandError::from_store)?;
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
    })
}
