//! What an [`RpcError`] looks like over HTTP: its status code and the JSON error envelope.
//!
//! The envelope is `{"error": {"code": <kind>, "message": <text>, "data": <wire form>}}`:
//! `code` is the error's stable kind (`unknown_method`, `handler`, ...), `message` the whole
//! human-readable text, and `data` the error's wire form ([`RpcError::to_wire`]), from which a
//! Rust client rebuilds the same variant with [`RpcError::from_wire`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rpc_core::RpcError;
use serde_json::{json, Value};

/// The status a client closed request gets in logs and metrics (the client is gone, so nobody
/// reads it): 499, as Connect and nginx use it.
pub const CLIENT_CLOSED: u16 = 499;

/// The HTTP status that fits `error`.
///
/// | kind | status |
/// | --- | --- |
/// | `unknown_service`, `unknown_method` | 404 |
/// | `argument_count`, `missing_argument`, `unexpected_argument`, `invalid_argument`, `bad_request` | 400 |
/// | `non_finite` in an argument | 400; in the result: 500 |
/// | `unauthenticated` | 401 |
/// | `handler` | 422 |
/// | `cancelled` | 499 |
/// | `panic`, `internal` | 500 |
/// | `protocol`, `decode` (the backend answered something unreadable) | 502 |
/// | `unavailable`, `overloaded`, `transport`, `closed` | 503 |
/// | `deadline_exceeded` | 504 |
pub fn status_of(error: &RpcError) -> StatusCode {
    match error {
        RpcError::UnknownService { .. } | RpcError::UnknownMethod { .. } => StatusCode::NOT_FOUND,
        RpcError::ArgumentCount { .. }
        | RpcError::MissingArgument { .. }
        | RpcError::UnexpectedArgument { .. }
        | RpcError::InvalidArgument { .. }
        | RpcError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        RpcError::NonFinite { path, .. } if path.starts_with("result") => StatusCode::INTERNAL_SERVER_ERROR,
        RpcError::NonFinite { .. } => StatusCode::BAD_REQUEST,
        RpcError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        RpcError::Handler { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        RpcError::Cancelled { .. } => StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST),
        RpcError::Panic { .. } | RpcError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        RpcError::Protocol { .. } | RpcError::Decode { .. } => StatusCode::BAD_GATEWAY,
        RpcError::Unavailable { .. } | RpcError::Overloaded { .. } | RpcError::Transport { .. } | RpcError::Closed => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RpcError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
        // A kind added later: the server's fault until it has a row of its own.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error envelope of `error`.
pub fn envelope(error: &RpcError) -> Value {
    let data = error.to_wire();
    let message = data.get("message").cloned().unwrap_or_else(|| Value::from(error.to_string()));
    json!({"error": {"code": error.kind(), "message": message, "data": data}})
}

/// An error response for a failure of the HTTP request itself, before any call (wrong
/// content type, a body too large or too slow, no such route): `code` names it.
pub(crate) fn http_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_response(status, &http_envelope(code, &message.into()))
}

/// The envelope of a failure of the HTTP request itself: `code` names it, and `data` is a
/// `bad_request` wire form, since no call was made: a Rust client reads it as
/// [`RpcError::BadRequest`] with `message` as its reason.
pub(crate) fn http_envelope(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "data": {"kind": "bad_request", "reason": message}}})
}

/// `value` as an `application/json` response with `status`.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The response for a failed call.
pub(crate) fn error_response(error: &RpcError) -> Response {
    json_response(status_of(error), &envelope(error))
}
