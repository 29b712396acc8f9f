//! The `user` section: a header set by a trusted front proxy that names
//! the user, for `user`-keyed rate limits on routes without credentials.

use crate::core::config_error::{err, is_header_name, ConfigError};
use crate::core::request::{Facts, HeaderMap};
use serde::Deserialize;
use std::borrow::Cow;

/// The header whose value is the `user` rate-limit key.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::core::config_error::HEADER_NAME_PATTERN)))]
    header: String,
}

/// The lower-cased header name, if the section is present.
pub fn compile(raw: Option<RawUser>) -> Result<Option<String>, ConfigError> {
    let Some(user) = raw else {
        return Ok(None);
    };
    if !is_header_name(&user.header) {
        return Err(err(
            "user.header",
            format!("`{}` is not a valid HTTP header name", user.header),
        ));
    }
    Ok(Some(user.header.to_ascii_lowercase()))
}

/// The classify stage's user step: the configured header names the user
/// (an authenticated subject replaces it later).
pub fn identify<'h>(header: Option<&str>, headers: &HeaderMap<'h>, facts: &mut Facts<'h>) {
    facts.user = header.and_then(|h| headers.get(h)).map(Cow::Borrowed);
}
