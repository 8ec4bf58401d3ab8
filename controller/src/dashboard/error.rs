//! How the API answers a failure: an HTTP status and a JSON body
//! `{"error": ..., "code": ..., "leader": ...}`.
//!
//! Why a fixed mapping from gRPC codes: the services already decide what kind
//! of failure something is (a bad argument, an unknown range, a refused
//! operation, a standby); the page and scripts only need that decision in
//! HTTP's terms, and the leader's address when this process is a standby, so
//! they can go there.

use axum::Json;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;

use crate::service::LEADER_METADATA;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (not a number, a missing field, malformed
    /// JSON): nothing was called and nothing changed.
    #[error("{0}")]
    BadRequest(String),
    /// The service refused or failed the call.
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// No such endpoint.
    #[error("no such endpoint: {0}")]
    NoRoute(String),
}

/// The JSON body of every error.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    /// The gRPC code the service answered with (e.g. "NotFound"), or
    /// "BadRequest" for input refused before any call.
    code: String,
    /// The leader's address, when this process is a standby that knows it.
    leader: Option<String>,
}

impl ApiError {
    /// The HTTP status this failure answers with.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::Status(status) => match status.code() {
                Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::FailedPrecondition
                | Code::Aborted
                | Code::AlreadyExists
                | Code::Cancelled => StatusCode::CONFLICT,
                Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The leader a standby named in its answer, if any.
    pub fn leader(&self) -> Option<String> {
        match self {
            ApiError::Status(status) => status
                .metadata()
                .get(LEADER_METADATA)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            _ => None,
        }
    }

    fn code(&self) -> String {
        match self {
            ApiError::BadRequest(_) => "BadRequest".to_owned(),
            ApiError::NoRoute(_) => "NoRoute".to_owned(),
            ApiError::Status(status) => format!("{:?}", status.code()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "dashboard API call failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            code: self.code(),
            leader: self.leader(),
        };
        (status, Json(body)).into_response()
    }
}

/// Any `/api/...` path without an endpoint.
pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}
