//! The API's one error shape: `{"error": message, "kind": …, "position"?: {line, column}}`
//! with a status that says whose fault it was (4xx: the request; 5xx: Sluice or a
//! system behind it). Internal causes are logged, and shown only as "internal error".

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{Error, Position};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    position: Option<Position>,
    /// Seconds after which the request may be tried again (`Retry-After`).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            position: None,
            retry_after: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", m)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs Authorization: Bearer <token>",
        )
    }
    pub fn unsupported_media_type(m: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            m,
        )
    }
    pub fn internal(m: impl Into<String>) -> Self {
        let m = m.into();
        tracing::error!("internal error: {m}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (logged)",
        )
    }
    /// The server is busy with other work of this kind: 503, to be tried again after
    /// `retry_after`.
    pub fn busy(m: impl Into<String>, retry_after: std::time::Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after.as_secs().max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", m)
        }
    }
    /// A rejection from an axum extractor (body too large, bad content type, …).
    pub fn from_rejection(status: StatusCode, m: String) -> Self {
        let kind = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid",
        };
        Self::new(status, kind, m)
    }
    /// For requests that were well-formed but clash with the current state (drop
    /// something in use, ingest into a stopped stream): 409 instead of 400.
    pub fn conflict_if_user(e: Error) -> Self {
        match e {
            Error::User { message, position } => ApiError {
                status: StatusCode::CONFLICT,
                kind: "conflict",
                message,
                position,
                retry_after: None,
            },
            other => other.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::User { message, position } => ApiError {
                status: StatusCode::BAD_REQUEST,
                kind: "invalid",
                message,
                position,
                retry_after: None,
            },
            Error::Conflict { message, position } => ApiError {
                status: StatusCode::CONFLICT,
                kind: "conflict",
                message,
                position,
                retry_after: None,
            },
            Error::External(m) => {
                tracing::warn!("external failure: {m}");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            Error::Internal(m) => Self::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message, "kind": self.kind });
        if let Some(p) = self.position {
            body["position"] = json!({ "line": p.line, "column": p.column });
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
