//! The wrapper every server puts around a handler's future: panics become
//! [`RpcError::Panic`] and a deadline becomes [`RpcError::DeadlineExceeded`].

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;

use crate::RpcError;

/// Runs a handler's future, catching panics and enforcing `timeout` when given.
///
/// # Errors
/// The handler's error, [`RpcError::Panic`] or [`RpcError::DeadlineExceeded`].
pub async fn guard<F>(target: &str, timeout: Option<Duration>, future: F) -> Result<Value, RpcError>
where
    F: Future<Output = Result<Value, RpcError>>,
{
    // The handler is never touched again after a panic, so unwind safety is not at stake.
    let caught = AssertUnwindSafe(future).catch_unwind();
    let outcome = match timeout {
        Some(limit) => match tokio::time::timeout(limit, caught).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(RpcError::deadline(target, limit)),
        },
        None => caught.await,
    };
    outcome.unwrap_or_else(|payload| {
        Err(RpcError::Panic { target: target.to_owned(), message: panic_message(payload.as_ref()) })
    })
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
