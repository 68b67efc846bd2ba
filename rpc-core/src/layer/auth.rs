//! [`AuthLayer`]: refuses calls whose metadata does not carry an accepted credential.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};

use crate::{Request, RpcError};

/// Checks metadata entry `key` (e.g. `authorization`) of every call with a predicate; a call
/// without it, or whose value the predicate refuses, fails with
/// [`RpcError::Unauthenticated`] before it reaches the handler.
///
/// ```
/// use rpc_core::layer::auth::AuthLayer;
/// let layer = AuthLayer::new("authorization", |token: &str| token == "Bearer s3cret");
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    key: Arc<str>,
    accept: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").field("key", &self.key).finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// Accepts calls whose metadata `key` satisfies `accept`.
    pub fn new(key: &str, accept: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        AuthLayer { key: key.to_ascii_lowercase().into(), accept: Arc::new(accept) }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, layer: self.clone() }
    }
}

/// The service [`AuthLayer`] builds.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, R> Service<Request> for Auth<S>
where
    S: Service<Request, Response = R, Error = RpcError>,
    S::Future: Send + 'static,
{
    type Response = R;
    type Error = RpcError;
    type Future = BoxFuture<'static, Result<R, RpcError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), RpcError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let refused = match request.context.metadata().get(&self.layer.key) {
            None => Some(format!("no '{}' in the call's metadata", self.layer.key)),
            Some(value) if !(self.layer.accept)(value) => Some(format!("'{}' not accepted", self.layer.key)),
            Some(_) => None,
        };
        match refused {
            Some(reason) => {
                let error = RpcError::Unauthenticated { target: request.target(), reason };
                async move { Err(error) }.boxed()
            }
            None => self.inner.call(request).boxed(),
        }
    }
}
