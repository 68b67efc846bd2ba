//! Middleware as tower layers, the same for every transport.
//!
//! A server runs every call it takes through a *stack*: a [`tower::Service`] from [`Request`] to
//! the result's [`Value`], whose innermost service dispatches under the
//! [run policy](crate::run) ([`RegistryService`]). Any tower [`Layer`] whose
//! service speaks that type wraps it: `MemoryTransport::new(registry).layer(TraceLayer::new())`,
//! and the same on the TCP Consumer, the RabbitMQ `Rpc` and the HTTP front.
//!
//! A client wraps its transport the same way: [`LayeredTransport`] runs each call through a
//! stack whose innermost service is the transport ([`TransportService`]), and is itself a
//! [`Transport`], so typed clients use it unchanged.
//!
//! Three layers ship here, each generic over the response type so it works on both sides:
//! - [`TraceLayer`]: a `tracing` span per call with its target and trace id (a server
//!   gives calls that arrive without a trace id a new one, which nested calls inherit);
//! - [`MetricsLayer`]: call counts by outcome and a latency histogram, through the
//!   `metrics` facade (the HTTP front exports them as Prometheus text);
//! - [`AuthLayer`]: refuses calls whose metadata lacks an accepted credential.
//!
//! Writing one: implement `tower::Service<Request>` for your wrapper with
//! `Error = RpcError`, and a `Layer` that builds it; see `auth.rs` for a small example.

#[doc(hidden)]
pub mod auth;
#[doc(hidden)]
pub mod metrics;
#[doc(hidden)]
pub mod trace;

pub use auth::AuthLayer;
pub use metrics::MetricsLayer;
pub use trace::TraceLayer;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::{Registry, Reply, Request, RpcError, Transport};

/// A server's stack, boxed: every call a server takes goes through one.
#[doc(hidden)]
pub type ServerStack = BoxCloneSyncService<Request, Value, RpcError>;

/// A client's stack, boxed.
#[doc(hidden)]
pub type ClientStack = BoxCloneSyncService<Request, Reply, RpcError>;

/// Wraps `stack` in `layer`, boxed again; what every server's `layer` method does.
#[doc(hidden)]
pub fn wrap<L, S, R>(
    stack: BoxCloneSyncService<Request, R, RpcError>,
    layer: L,
) -> BoxCloneSyncService<Request, R, RpcError>
where
    L: Layer<BoxCloneSyncService<Request, R, RpcError>, Service = S>,
    S: Service<Request, Response = R, Error = RpcError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    R: 'static,
{
    BoxCloneSyncService::new(layer.layer(stack))
}

/// Calls `request` through `stack` (waiting until it is ready).
///
/// # Errors
/// Whatever the stack returns.
#[doc(hidden)]
pub fn call<R: Send + 'static>(
    stack: &BoxCloneSyncService<Request, R, RpcError>,
    request: Request,
) -> impl Future<Output = Result<R, RpcError>> + Send + 'static {
    stack.clone().oneshot(request)
}

/// The innermost server service: [`Registry::dispatch`].
#[derive(Debug, Clone)]
#[doc(hidden)]
pub struct RegistryService {
    registry: Arc<Registry>,
}

impl RegistryService {
    /// Dispatches to `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        RegistryService { registry }
    }

    /// The service boxed as the bottom of a [`ServerStack`].
    pub fn stack(registry: Arc<Registry>) -> ServerStack {
        BoxCloneSyncService::new(RegistryService::new(registry))
    }
}

impl Service<Request> for RegistryService {
    type Response = Value;
    type Error = RpcError;
    type Future = BoxFuture<'static, Result<Value, RpcError>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), RpcError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let registry = Arc::clone(&self.registry);
        async move { registry.dispatch(request).await }.boxed()
    }
}

/// The innermost client service: one call through a [`Transport`].
#[derive(Debug)]
#[doc(hidden)]
pub struct TransportService<T> {
    transport: Arc<T>,
}

impl<T> Clone for TransportService<T> {
    fn clone(&self) -> Self {
        TransportService { transport: Arc::clone(&self.transport) }
    }
}

impl<T: Transport + 'static> Service<Request> for TransportService<T> {
    type Response = Reply;
    type Error = RpcError;
    type Future = BoxFuture<'static, Result<Reply, RpcError>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), RpcError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let transport = Arc::clone(&self.transport);
        async move { transport.call(request).await }.boxed()
    }
}

/// A [`Transport`] whose calls go through client-side layers.
///
/// ```
/// use rpc_core::layer::{trace::TraceLayer, LayeredTransport};
/// use rpc_core::{MemoryTransport, Registry};
/// let transport = LayeredTransport::new(MemoryTransport::new(Registry::new())).layer(TraceLayer::client());
/// # let _ = transport;
/// ```
#[derive(Clone)]
pub struct LayeredTransport {
    stack: ClientStack,
}

impl std::fmt::Debug for LayeredTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayeredTransport").finish_non_exhaustive()
    }
}

impl LayeredTransport {
    /// `transport` with no layers yet.
    pub fn new<T: Transport + 'static>(transport: T) -> Self {
        LayeredTransport { stack: BoxCloneSyncService::new(TransportService { transport: Arc::new(transport) }) }
    }

    /// Wraps every call in `layer` (the last layer added runs first).
    #[must_use]
    pub fn layer<L, S>(self, layer: L) -> Self
    where
        L: Layer<ClientStack, Service = S>,
        S: Service<Request, Response = Reply, Error = RpcError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        LayeredTransport { stack: wrap(self.stack, layer) }
    }
}

impl Transport for LayeredTransport {
    fn call(&self, request: Request) -> impl Future<Output = Result<Reply, RpcError>> + Send {
        call(&self.stack, request)
    }
}
