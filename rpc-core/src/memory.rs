//! [`MemoryTransport`]: calls a [`Registry`] in the same process, with no sockets.

use std::sync::Arc;

use tower::{Layer, Service};

use crate::layer::{self, RegistryService, ServerStack};
use crate::{Registry, Reply, Request, RpcError, Transport};

/// Calls services in this process: named arguments in, structured values out, the context
/// (deadline, metadata, trace id) handed to the handler as it is.
///
/// The server side runs exactly as behind a network transport: the registry's run policy,
/// deadline cap and blocking pool apply, and so do server-side layers added with
/// [`MemoryTransport::layer`]. Useful for tests, and for calling a service in process through
/// the same typed client.
#[derive(Clone)]
pub struct MemoryTransport {
    registry: Arc<Registry>,
    stack: ServerStack,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport").field("registry", &self.registry).finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// A transport calling `registry`'s services.
    pub fn new(registry: impl Into<Arc<Registry>>) -> Self {
        let registry = registry.into();
        MemoryTransport { stack: RegistryService::stack(Arc::clone(&registry)), registry }
    }

    /// Runs every call through `layer` on the server side (the last layer added runs first).
    #[must_use]
    pub fn layer<L, S>(self, layer: L) -> Self
    where
        L: Layer<ServerStack, Service = S>,
        S: Service<Request, Response = serde_json::Value, Error = RpcError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        MemoryTransport { stack: layer::wrap(self.stack, layer), registry: self.registry }
    }

    /// The registry calls go to.
    #[doc(hidden)]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl Transport for MemoryTransport {
    async fn call(&self, mut request: Request) -> Result<Reply, RpcError> {
        // The server's context is its own: cancelling the call there (its deadline) does not
        // cancel the caller's.
        request.context = request.context.child();
        layer::call(&self.stack, request).await.map(Reply::Value)
    }
}
