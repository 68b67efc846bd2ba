//! [`MetricsLayer`]: call counts by outcome and a latency histogram, through the `metrics`
//! facade. Whatever recorder the program installs receives them (the HTTP front installs a
//! Prometheus one and serves it at `/metrics`); without one they cost next to nothing.
//!
//! Recorded per call:
//! - `rpc_calls_total{side, target, outcome}` (counter; `outcome` is `ok` or the error's kind);
//! - `rpc_call_duration_seconds{side, target}` (histogram);
//! - `rpc_calls_in_flight{side}` (gauge).
//!
//! `target` is `service.method` for calls the server knows; calls to a service or method it
//! does not serve are counted under `target="unknown"`, so a caller cannot grow the number of
//! series without bound.

use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use futures_util::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};

use super::trace::Side;
use crate::{Request, RpcError};

/// Counts calls, their outcomes and their latency; see the module docs for the names.
#[derive(Debug, Clone, Copy)]
pub struct MetricsLayer {
    side: Side,
}

impl MetricsLayer {
    /// For a server's stack.
    pub fn new() -> Self {
        MetricsLayer { side: Side::Server }
    }

    /// For a client's stack.
    pub fn client() -> Self {
        MetricsLayer { side: Side::Client }
    }
}

impl Default for MetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics { inner, side: self.side }
    }
}

/// The service [`MetricsLayer`] builds.
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    side: Side,
}

/// Decrements the in-flight gauge however the call ends (dropped too).
struct InFlight(&'static str);

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("rpc_calls_in_flight", "side" => self.0).decrement(1.0);
    }
}

impl<S, R> Service<Request> for Metrics<S>
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

    fn call(&mut self, request: Request) -> Self::Future {
        let side = self.side.as_str();
        let target = request.target();
        metrics::gauge!("rpc_calls_in_flight", "side" => side).increment(1.0);
        let in_flight = InFlight(side);
        let started = Instant::now();
        let future = self.inner.call(request);
        async move {
            let outcome = future.await;
            drop(in_flight);
            let kind = outcome.as_ref().map_or_else(RpcError::kind, |_| "ok");
            let target =
                if matches!(kind, "unknown_service" | "unknown_method") { "unknown".to_owned() } else { target };
            metrics::counter!("rpc_calls_total", "side" => side, "target" => target.clone(), "outcome" => kind)
                .increment(1);
            metrics::histogram!("rpc_call_duration_seconds", "side" => side, "target" => target)
                .record(started.elapsed().as_secs_f64());
            outcome
        }
        .boxed()
    }
}
