//! API errors: one enum, rendered as `{"error": {"code", "message", "details"}}`
//! with the status the contract names. Internal causes are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::{FieldError, FieldErrors};
use crate::store::StoreError;

/// An error answered by the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or a query parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or an unknown one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: exists already, stale `resourceVersion`, still referenced, domain taken.
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
        /// Field or referrer details.
        details: Vec<FieldError>,
    },
    /// 413: body over the limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 422: fields that fail validation.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// Every bad field.
        details: Vec<FieldError>,
    },
    /// 503: the store can't be reached.
    #[error("the store is unavailable; retry later")]
    Unavailable,
    /// 503: something this request needs is not ready yet (the message says what).
    #[error("{0}")]
    NotReady(String),
    /// 500: a bug; the cause is logged.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 422 for one field.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        errors.into()
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::Unavailable | ApiError::NotReady(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<FieldErrors> for ApiError {
    fn from(errors: FieldErrors) -> Self {
        let message = match errors.0.as_slice() {
            [one] => format!("invalid {}: {}", one.field, one.message),
            many => format!("{} invalid fields: {}", many.len(), errors),
        };
        ApiError::Invalid {
            message,
            details: errors.0,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound(_) => ApiError::NotFound(message),
            StoreError::AlreadyExists(_) | StoreError::Conflict { .. } => ApiError::Conflict {
                message,
                details: vec![],
            },
            StoreError::Referenced { referrers, .. } => ApiError::Conflict {
                message,
                details: referrers
                    .into_iter()
                    .map(|r| FieldError {
                        field: "referrers".into(),
                        message: r,
                    })
                    .collect(),
            },
            StoreError::DomainTaken { .. } => ApiError::Conflict {
                details: vec![FieldError {
                    field: "domain".into(),
                    message: message.clone(),
                }],
                message,
            },
            StoreError::MissingCluster { field, cluster } => {
                ApiError::invalid_field(field, format!("cluster {cluster} does not exist"))
            }
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                ApiError::Unavailable
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Error fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code: bad_request, unauthorized, forbidden, not_found, conflict, payload_too_large, invalid, unavailable, internal.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Per-field details (for `invalid`), or referrers (for `conflict`).
    pub details: Vec<FieldError>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let details = match &self {
            ApiError::Invalid { details, .. } | ApiError::Conflict { details, .. } => {
                details.clone()
            }
            _ => vec![],
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                details,
            },
        };
        (status, Json(body)).into_response()
    }
}
