//! [`MemoryTransport`]: calls a [`Registry`] in the same process, with no sockets.

use std::sync::Arc;

use crate::{Registry, Reply, Request, RpcError, Transport};

/// Calls services in this process: named arguments in, structured values out, the context
/// (deadline, metadata, trace id) handed to the handler as it is.
///
/// The server side runs exactly as behind a network transport: the registry's run policy,
/// deadline cap and blocking pool apply. Useful for tests, and for calling a service in process
/// through the same typed client.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    registry: Arc<Registry>,
}

impl MemoryTransport {
    /// A transport calling `registry`'s services.
    pub fn new(registry: impl Into<Arc<Registry>>) -> Self {
        MemoryTransport { registry: registry.into() }
    }

    /// The registry calls go to.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl Transport for MemoryTransport {
    async fn call(&self, mut request: Request) -> Result<Reply, RpcError> {
        // The server's context is its own: cancelling the call there (its deadline) does not
        // cancel the caller's.
        request.context = request.context.child();
        self.registry.dispatch(request).await.map(Reply::Value)
    }
}
