//! Request bodies: size limit (413), JSON syntax (400), server-set fields, and
//! typed deserialization whose errors name the field (422).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::ApiError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Fields the server sets; accepted on input (so a GET can be edited and PUT
/// back) and ignored, except `resourceVersion`, which becomes the precondition.
const SERVER_SET_FIELDS: [&str; 4] = ["resourceVersion", "status", "createdAt", "updatedAt"];

/// A request body parsed as a JSON object.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(MAX_BODY_BYTES)
            } else {
                ApiError::BadRequest(format!("could not read the request body: {rejection}"))
            }
        })?;
        // An empty body is an empty object (POSTs whose fields are all optional).
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonObject(Map::new()));
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => Ok(JsonObject(map)),
            _ => Err(ApiError::invalid_field(
                "",
                "request body must be a JSON object",
            )),
        }
    }
}

impl JsonObject {
    /// Removes the server-set fields and returns the client's `resourceVersion`, if any.
    pub fn take_resource_version(&mut self) -> Result<Option<u64>, ApiError> {
        let rv = self.0.remove("resourceVersion");
        for field in SERVER_SET_FIELDS {
            self.0.remove(field);
        }
        match rv {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
                ApiError::invalid_field(
                    "resourceVersion",
                    "must be a resourceVersion returned by the server",
                )
            }),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                ApiError::invalid_field(
                    "resourceVersion",
                    "must be a resourceVersion returned by the server",
                )
            }),
            Some(_) => Err(ApiError::invalid_field(
                "resourceVersion",
                "must be a string",
            )),
        }
    }

    /// Deserializes into `T`, reporting the path of the first bad field.
    pub fn into_typed<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        parse_typed(Value::Object(self.0))
    }
}

/// Deserializes `value` into `T`; errors name the failing field.
pub fn parse_typed<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let inner = e.into_inner().to_string();
        // serde reports a missing field at its parent's path.
        let named = inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'));
        let field = match named {
            Some((name, _)) if field.is_empty() => name.to_owned(),
            Some((name, _)) => format!("{field}.{name}"),
            None => field,
        };
        ApiError::invalid_field(field, inner)
    })
}
