//! The client side of every transport: [`Transport`], plus [`MemoryTransport`], which calls a
//! [`Registry`] in the same process.

use std::future::Future;
use std::sync::Arc;

use crate::{Registry, Reply, Request, RpcError};

/// Sends one request and waits for its result.
///
/// Implementations enforce `request.timeout` (or their own default) and return
/// [`RpcError::DeadlineExceeded`] when it runs out. Generated typed clients are generic over
/// this trait.
pub trait Transport: Send + Sync {
    /// Sends `request` and returns its result or its error.
    fn call(&self, request: Request) -> impl Future<Output = Result<Reply, RpcError>> + Send;
}

impl<T: Transport + ?Sized> Transport for &T {
    fn call(&self, request: Request) -> impl Future<Output = Result<Reply, RpcError>> + Send {
        (**self).call(request)
    }
}

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn call(&self, request: Request) -> impl Future<Output = Result<Reply, RpcError>> + Send {
        (**self).call(request)
    }
}

/// Calls services in this process, with no sockets.
///
/// In [`MemoryTransport::text`] mode it goes through the same text shapes a TCP call does
/// (arguments rendered to tokens, the result rendered to text), so services and typed clients
/// can be tested for both wire shapes without a network.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    registry: Arc<Registry>,
    text: bool,
}

impl MemoryTransport {
    /// Named arguments in, structured values out (the shape of binary transports).
    pub fn new(registry: impl Into<Arc<Registry>>) -> Self {
        MemoryTransport { registry: registry.into(), text: false }
    }

    /// Text tokens in, text out (the shape of the TCP protocol).
    pub fn text(registry: impl Into<Arc<Registry>>) -> Self {
        MemoryTransport { registry: registry.into(), text: true }
    }

    /// The registry calls go to.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl Transport for MemoryTransport {
    async fn call(&self, mut request: Request) -> Result<Reply, RpcError> {
        if self.text {
            let args = std::mem::replace(&mut request.args, crate::Args::Text(Vec::new()));
            request.args = crate::Args::Text(args.into_tokens(request.ordered, request.variadic)?);
            let value = self.registry.dispatch(request).await?;
            Ok(Reply::Text(crate::text::render(&value)))
        } else {
            self.registry.dispatch(request).await.map(Reply::Value)
        }
    }
}
