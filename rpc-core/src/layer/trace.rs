//! [`TraceLayer`]: one `tracing` span per call, carrying its target and trace id.

use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use futures_util::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{Request, RpcError};

/// Which side of a call a layer sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Side {
    /// Around a server's dispatch.
    Server,
    /// Around a client's transport.
    Client,
}

impl Side {
    /// `server` or `client`, as spans and metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// Runs every call in an `rpc` span (`side`, `target`, `trace_id`) and, when it ends, logs its
/// outcome and duration at DEBUG inside that span (`outcome` is `ok` or the error's kind).
///
/// On the server side a call that arrives without a trace id is given a new one before the
/// handler runs, so the handler's logs and every call it makes share it.
#[derive(Debug, Clone, Copy)]
pub struct TraceLayer {
    side: Side,
}

impl TraceLayer {
    /// For a server's stack.
    pub fn new() -> Self {
        TraceLayer { side: Side::Server }
    }

    /// For a client's stack ([`LayeredTransport`](super::LayeredTransport)).
    pub fn client() -> Self {
        TraceLayer { side: Side::Client }
    }
}

impl Default for TraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner, side: self.side }
    }
}

/// The service [`TraceLayer`] builds.
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    side: Side,
}

/// A new trace id: 16 random bytes as 32 hex digits (the W3C trace-id form).
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl<S, R> Service<Request> for Trace<S>
where
    S: Service<Request, Response = R, Error = RpcError>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = RpcError;
    type Future = BoxFuture<'static, Result<R, RpcError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), RpcError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if self.side == Side::Server && request.context.trace_id().is_none() {
            request.context = request.context.clone().with_trace_id(new_trace_id());
        }
        let span = tracing::info_span!(
            "rpc",
            side = self.side.as_str(),
            target = %request.target(),
            trace_id = request.context.trace_id().unwrap_or(""),
        );
        let started = Instant::now();
        let future = self.inner.call(request);
        async move {
            let outcome = future.await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            match &outcome {
                Ok(_) => tracing::debug!(outcome = "ok", ms, "call finished"),
                Err(error) => tracing::debug!(outcome = error.kind(), ms, %error, "call finished"),
            }
            outcome
        }
        .instrument(span)
        .boxed()
    }
}
