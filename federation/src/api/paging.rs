//! `?limit=` and `?continue=` on list endpoints. Continue tokens are opaque
//! (base64url of the last key of the previous page).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::ApiError;
use crate::store::PageRequest;

/// Largest accepted `limit`.
pub const MAX_LIMIT: u32 = 1000;

/// Reads `limit` and `continue` from the query string.
pub fn page_request(query: &HashMap<String, String>) -> Result<PageRequest, ApiError> {
    let limit = match query.get("limit") {
        None => None,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
            _ => {
                return Err(ApiError::invalid_field(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let after = match query.get("continue").filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => {
            let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| {
                ApiError::invalid_field("continue", "not a continue token from this server")
            })?;
            Some(String::from_utf8(bytes).map_err(|_| {
                ApiError::invalid_field("continue", "not a continue token from this server")
            })?)
        }
    };
    Ok(PageRequest { limit, after })
}

/// The continue token for the key `after`.
pub fn continue_token(after: Option<String>) -> Option<String> {
    after.map(|a| URL_SAFE_NO_PAD.encode(a.as_bytes()))
}
