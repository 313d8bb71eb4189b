//! The AWS side of a deployment, in the emulator: the connections table (as the SAM template
//! declares it) and the client secret (as an operator stores it after deploying).

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use secrecy::{ExposeSecret, SecretString};

use crate::emulator::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};

pub const TABLE: &str = "keapalive-local-connections";
pub const CLIENT_SECRET_ID: &str = "keapalive/local/keap-client";

/// The environment a function or tool needs to reach the emulator.
pub fn aws_env(endpoint_url: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint_url),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The connections table as the SAM template declares it ([`crate::aws::create_connections_table`]).
pub async fn create_table(sdk: &SdkConfig) -> Result<(), String> {
    crate::aws::create_connections_table(sdk, TABLE).await
}

/// `{"client_id", "client_secret"}` under [`CLIENT_SECRET_ID`], exactly what docs/deploy.md tells
/// an operator to store in the stack's secret.
pub async fn store_client_secret(
    sdk: &SdkConfig,
    client_id: &str,
    client_secret: &SecretString,
) -> Result<(), String> {
    let value = serde_json::json!({
        "client_id": client_id,
        "client_secret": client_secret.expose_secret(),
    });
    aws_sdk_secretsmanager::Client::new(sdk)
        .create_secret()
        .name(CLIENT_SECRET_ID)
        .secret_string(value.to_string())
        .send()
        .await
        .map_err(|e| {
            format!(
                "create secret {CLIENT_SECRET_ID}: {}",
                DisplayErrorContext(&e)
            )
        })?;
    Ok(())
}
