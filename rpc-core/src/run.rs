//! The server-side run policy, the one place every server (the TCP Consumer, the RabbitMQ
//! server, the HTTP front through a registry) runs a handler:
//!
//! - the call's deadline is the caller's, capped by the server's `max_deadline`
//!   ([`effective_context`]); a call with no deadline of its own gets the cap;
//! - a panic becomes [`RpcError::Panic`] and the server keeps serving;
//! - when the deadline passes, the call is cancelled ([`Context::cancel`]) and answered
//!   [`RpcError::DeadlineExceeded`]; when the caller goes away (the transport cancels the
//!   context), it ends with [`RpcError::Cancelled`]. Either way an async handler's future is
//!   dropped at its next `.await`, and a synchronous one sees [`Context::is_cancelled`];
//! - while the handler runs, its context is [`Context::current`], so the calls it makes
//!   inherit its deadline, metadata and trace id.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::{Context, RpcError};

/// `ctx` with its deadline capped at `max_deadline` from now (a context without a deadline gets
/// the cap; `None` means no cap).
pub fn effective_context(ctx: Context, max_deadline: Option<Duration>) -> Context {
    match max_deadline {
        Some(cap) => ctx.with_deadline(cap),
        None => ctx,
    }
}

/// Runs a handler's future under the policy above. `ctx` is the call's effective context
/// (see [`effective_context`]).
///
/// # Errors
/// The handler's error, [`RpcError::Panic`], [`RpcError::DeadlineExceeded`] or
/// [`RpcError::Cancelled`].
pub async fn run<F>(target: &str, ctx: &Context, future: F) -> Result<Value, RpcError>
where
    F: Future<Output = Result<Value, RpcError>>,
{
    let started = Instant::now();
    // The handler is never touched again after a panic, so unwind safety is not at stake.
    let caught = AssertUnwindSafe(ctx.clone().scope(future)).catch_unwind();
    let expired = async {
        match ctx.deadline() {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        // An outcome that is ready wins over a deadline or a cancellation that is also ready.
        biased;
        outcome = caught => outcome.unwrap_or_else(|payload| {
            Err(RpcError::Panic { target: target.to_owned(), message: panic_message(payload.as_ref()) })
        }),
        () = expired => {
            ctx.cancel();
            let limit = ctx.deadline().map_or(Duration::ZERO, |d| d.saturating_duration_since(started));
            Err(RpcError::deadline(target, limit))
        }
        () = ctx.cancelled() => Err(RpcError::Cancelled { target: target.to_owned() }),
    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_the_callers_capped_by_the_server() {
        let caller = Context::new().with_deadline(Duration::from_secs(60));
        let ctx = effective_context(caller, Some(Duration::from_secs(5)));
        assert_eq!(ctx.remaining(), Some(Duration::from_secs(5)));
        let short =
            effective_context(Context::new().with_deadline(Duration::from_secs(1)), Some(Duration::from_secs(5)));
        assert_eq!(short.remaining(), Some(Duration::from_secs(1)));
        assert_eq!(effective_context(Context::new(), None).remaining(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_drops_the_handler_at_its_next_await_and_cancels_the_context() {
        let steps = Arc::new(AtomicUsize::new(0));
        let ctx = Context::new().with_deadline(Duration::from_millis(250));
        let counted = Arc::clone(&steps);
        let outcome = run("s.m", &ctx, async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                counted.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Value::Null)
        })
        .await;
        assert!(matches!(outcome, Err(RpcError::DeadlineExceeded { timeout_ms: 250, .. })), "{outcome:?}");
        assert!(ctx.is_cancelled(), "the handler's context is cancelled at the deadline");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 2, "the handler stopped at the deadline");
    }

    #[tokio::test]
    async fn a_cancelled_call_ends_at_once_with_cancelled() {
        let ctx = Context::new();
        let canceller = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            canceller.cancel();
        });
        let outcome = run("s.m", &ctx, std::future::pending()).await;
        assert!(matches!(outcome, Err(RpcError::Cancelled { .. })), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_panic_becomes_an_error() {
        let outcome = run("s.m", &Context::new(), async { panic!("boom") }).await;
        assert!(matches!(&outcome, Err(RpcError::Panic { message, .. }) if message == "boom"), "{outcome:?}");
    }

    #[tokio::test]
    async fn the_handler_runs_with_its_context_current() {
        let ctx = Context::new().with_trace_id("t-9");
        let seen = run("s.m", &ctx, async {
            Ok(Value::from(Context::current().and_then(|c| c.trace_id().map(str::to_owned))))
        })
        .await
        .unwrap();
        assert_eq!(seen, Value::from("t-9"));
    }
}
