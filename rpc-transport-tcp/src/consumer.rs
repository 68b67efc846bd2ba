//! [`Consumer`]: the design document's synchronous server. It serves a [`Registry`] on a listener the
//! caller owns, one task per connection, until the caller's shutdown signal.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rpc_core::layer::{self, RegistryService, ServerStack};
use rpc_core::{Context, Registry, Request, RpcError};
use serde_json::Value;
use tokio::net::TcpListener;
use tower::{Layer, Service};

use crate::config::ConsumerConfig;
use crate::frame::{self, RequestLine};
use crate::server::{self, Respond};
use crate::system;

/// A TCP server for the services of a [`Registry`].
///
/// Requests in the reserved `_rpc` namespace about itself (`_rpc health`) it answers itself,
/// without the registry; `_rpc describe` its registry answers: see [`system`].
///
/// Synchronous handlers run on the registry's bounded [`rpc_core::BlockingPool`] (size it with
/// [`Registry::with_blocking_pool`]), so a burst of heavy calls queues there while the accept
/// loop and async handlers keep going.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use rpc_core::Registry;
/// # use rpc_transport_tcp::{Consumer, ConsumerConfig};
/// # async fn run(registry: Registry) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
/// let consumer = Consumer::new(Arc::new(registry), ConsumerConfig::default());
/// consumer.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Consumer {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    config: ConsumerConfig,
    /// Every call goes through it: layers around [`RegistryService`].
    stack: ServerStack,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("registry", &self.registry)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer for `registry`'s services.
    pub fn new(registry: Arc<Registry>, config: ConsumerConfig) -> Self {
        let stack = RegistryService::stack(Arc::clone(&registry));
        Consumer { inner: Arc::new(Inner { registry, config, stack }) }
    }

    /// Runs every call through `layer` (a tower layer over [`ServerStack`], such as
    /// [`rpc_core::layer::trace::TraceLayer`]); the last layer added runs first. Requests the
    /// consumer answers itself (`_rpc health`) do not go through it.
    #[must_use]
    pub fn layer<L, S>(self, layer: L) -> Self
    where
        L: Layer<ServerStack, Service = S>,
        S: Service<Request, Response = Value, Error = RpcError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let Inner { registry, config, stack } = &*self.inner;
        let stack = layer::wrap(stack.clone(), layer);
        Consumer { inner: Arc::new(Inner { registry: Arc::clone(registry), config: config.clone(), stack }) }
    }

    /// The registry it serves.
    #[doc(hidden)]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// Its settings.
    #[doc(hidden)]
    pub fn config(&self) -> &ConsumerConfig {
        &self.inner.config
    }

    /// Serves connections from `listener` until `shutdown` resolves.
    ///
    /// Then it stops accepting (the listener is dropped), tells clients that have not finished
    /// sending their request `ERROR unavailable: ...`, lets requests already read run to
    /// their reply (for at most [`Limits::with_shutdown_grace`](crate::Limits::with_shutdown_grace)),
    /// and returns.
    ///
    /// # Errors
    /// Only when the listener's address cannot be read; failures of single connections are
    /// logged and never end the loop.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future) -> io::Result<()> {
        let limits = self.inner.config.limits.clone();
        server::serve("consumer", listener, limits, Arc::clone(&self.inner), shutdown).await
    }
}

impl Respond for Inner {
    const LINKS: bool = true;

    async fn respond(&self, line: RequestLine, peer: Option<SocketAddr>, ctx: Context) -> Vec<u8> {
        if system::is_reserved(&line.service) {
            let route = system::route(&line, || {
                system::consumer_health(self.registry.services().map(|s| s.name.to_owned()).collect())
            });
            if let system::Route::Answer(reply) = route {
                tracing::debug!(service = %line.service, method = %line.method, ?peer, "answered by the consumer itself");
                return reply;
            }
        }
        let started = Instant::now();
        let (service, method) = (line.service.clone(), line.method.clone());
        let request = line.into_request().with_context(ctx.with_deadline(self.config.max_deadline));
        let result = layer::call(&self.stack, request).await;
        let elapsed = started.elapsed();
        match result {
            Ok(value) => {
                tracing::debug!(%service, %method, ?peer, ?elapsed, outcome = "ok", "call");
                frame::encode_value(&value)
            }
            Err(error) => {
                tracing::debug!(%service, %method, ?peer, ?elapsed, outcome = error.kind(), %error, "call");
                frame::encode_error(&error)
            }
        }
    }
}
