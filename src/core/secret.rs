//! Secrets in the configuration: HMAC keys of signatures and of the bot
//! challenge. Errors name where a secret came from, never what it is.

use crate::core::config_error::{env_value, err, ConfigError};
use base64::Engine as _;
use serde::Deserialize;

/// A secret is never written in the policy itself for production: `env`
/// names an environment variable of the wasm VM (Envoy's
/// `vm_config.environment_variables`, fed from a Kubernetes Secret) holding
/// its base64; `base64` inline is for demos and tests.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum RawSecret {
    Base64(String),
    Env(String),
}

/// The secret's bytes; `path` is where it sits in the document.
pub fn decode_secret(secret: &RawSecret, path: &str) -> Result<Vec<u8>, ConfigError> {
    let (text, source) = match secret {
        RawSecret::Base64(text) => (text.clone(), format!("{path}.base64")),
        RawSecret::Env(name) => (env_value(name, path)?, format!("{path}.env")),
    };
    // The error never quotes the secret.
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| err(source, "is not valid standard base64"))
}
