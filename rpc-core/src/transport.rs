//! The client side of every transport: [`Transport`].

use std::future::Future;
use std::sync::Arc;

use crate::{Reply, Request, RpcError};

/// Sends one request and waits for its result.
///
/// Implementations end the call with [`RpcError::DeadlineExceeded`] when the request's
/// context's deadline (or their own default) passes, and carry what they can of the context
/// (deadline, metadata, trace id) to the server. Dropping the returned future abandons the
/// call. Generated typed clients are generic over this trait.
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
