//! [`Handler`]: one callable method, whether a plain function registered by name (the
//! aio-pika `rpc.register("foo", foo)` shape) or one method of a [`Service`].

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::handler_error;
use crate::{text, Args, BlockingPool, Context, RpcError, Service};

/// One method, callable with [`Args`].
pub trait Handler: Send + Sync + 'static {
    /// `service.method` or the registered name, for errors and logs.
    fn target(&self) -> &str;

    /// Decodes `args` and starts the call; a synchronous handler runs on `pool`.
    ///
    /// # Errors
    /// An argument error before the call starts; the handler's error from the future.
    fn call(
        &self,
        args: Args,
        ctx: &Context,
        pool: &BlockingPool,
    ) -> Result<BoxFuture<'static, Result<Value, RpcError>>, RpcError>;
}

/// A handler from an async function taking one `Deserialize` struct of named arguments.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Sleep { t: f64 }
/// let handler = rpc_core::handler::from_async("sleep", |a: Sleep| async move {
///     Ok::<_, std::convert::Infallible>(a.t)
/// });
/// # let _ = handler;
/// ```
///
/// Named arguments map onto the struct's fields; positional text tokens fill its fields in
/// order.
pub fn from_async<F, A, Fut, T, E>(name: impl Into<String>, f: F) -> impl Handler
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize,
    E: std::fmt::Display + 'static,
{
    FnHandler { target: name.into(), f: Arc::new(f), _marker: PhantomData::<fn(A) -> Async> }
}

/// A handler from a synchronous (presumed heavy) function; it runs on the blocking pool.
pub fn from_blocking<F, A, T, E>(name: impl Into<String>, f: F) -> impl Handler
where
    F: Fn(A) -> Result<T, E> + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    FnHandler { target: name.into(), f: Arc::new(f), _marker: PhantomData::<fn(A) -> Blocking> }
}

struct Async;
struct Blocking;

struct FnHandler<F, M> {
    target: String,
    f: Arc<F>,
    // The argument type and the sync/async flavour; `fn` keeps the handler Send + Sync.
    _marker: PhantomData<M>,
}

fn decode_args<A: DeserializeOwned>(target: &str, args: Args) -> Result<A, RpcError> {
    let invalid = |value: String, reason: String| RpcError::InvalidArgument {
        target: target.to_owned(),
        param: "kwargs".to_owned(),
        ty: std::any::type_name::<A>().to_owned(),
        reason: crate::args::bound_reason(reason, value.len()),
        value: crate::args::clip(&value),
    };
    match args {
        Args::Text(tokens) => text::from_tokens(&tokens).map_err(|e| invalid(tokens.join(" "), e.to_string())),
        Args::Named(map) => {
            if map.is_empty() {
                if let Ok(a) = A::deserialize(Value::Null) {
                    return Ok(a);
                }
            }
            let value = Value::Object(map);
            A::deserialize(&value).map_err(|e| invalid(value.to_string(), e.to_string()))
        }
    }
}

/// Serializes a handler's result.
///
/// # Errors
/// [`RpcError::NonFinite`] when it holds a NaN or an infinity (JSON would turn it into a wrong
/// `null`); [`RpcError::Internal`] when it does not serialize (a map with non-string keys).
pub fn encode_result<T: Serialize + ?Sized>(target: &str, value: &T) -> Result<Value, RpcError> {
    if let Some((path, found)) = crate::finite::find_non_finite(value) {
        return Err(RpcError::NonFinite { target: target.to_owned(), path: format!("the result{path}"), value: found });
    }
    serde_json::to_value(value)
        .map_err(|e| RpcError::Internal { message: format!("{target}: result does not serialize: {e}") })
}

/// Serializes an argument for sending (the typed client does, for each parameter).
///
/// # Errors
/// [`RpcError::NonFinite`] for a NaN or an infinity; [`RpcError::BadRequest`] when the value
/// does not serialize.
pub fn encode_arg<T: Serialize + ?Sized>(target: &str, name: &str, value: &T) -> Result<Value, RpcError> {
    if let Some((path, found)) = crate::finite::find_non_finite(value) {
        return Err(RpcError::NonFinite {
            target: target.to_owned(),
            path: format!("argument '{name}'{path}"),
            value: found,
        });
    }
    serde_json::to_value(value)
        .map_err(|e| RpcError::bad_request(format!("{target}: argument '{name}' does not serialize: {e}")))
}

impl<F, A, Fut, T, E> Handler for FnHandler<F, fn(A) -> Async>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize,
    E: std::fmt::Display + 'static,
{
    fn target(&self) -> &str {
        &self.target
    }

    fn call(
        &self,
        args: Args,
        _ctx: &Context,
        _pool: &BlockingPool,
    ) -> Result<BoxFuture<'static, Result<Value, RpcError>>, RpcError> {
        let a = decode_args::<A>(&self.target, args)?;
        let target = self.target.clone();
        let fut = (self.f)(a);
        Ok(async move {
            match fut.await {
                Ok(v) => encode_result(&target, &v),
                Err(e) => Err(handler_error(&target, e, None)),
            }
        }
        .boxed())
    }
}

impl<F, A, T, E> Handler for FnHandler<F, fn(A) -> Blocking>
where
    F: Fn(A) -> Result<T, E> + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    fn target(&self) -> &str {
        &self.target
    }

    fn call(
        &self,
        args: Args,
        _ctx: &Context,
        pool: &BlockingPool,
    ) -> Result<BoxFuture<'static, Result<Value, RpcError>>, RpcError> {
        let a = decode_args::<A>(&self.target, args)?;
        let target = self.target.clone();
        let f = Arc::clone(&self.f);
        let pool = pool.clone();
        Ok(async move {
            match pool.run(&target, move || f(a)).await? {
                Ok(v) => encode_result(&target, &v),
                Err(e) => Err(handler_error(&target, e, None)),
            }
        }
        .boxed())
    }
}

/// One method of a service, as a [`Handler`] (how a message-queue transport gives each method
/// its own queue).
pub struct MethodHandler {
    service: Arc<dyn Service>,
    method: &'static str,
    target: &'static str,
}

impl MethodHandler {
    /// A handler for every method of `service`, in declaration order.
    pub fn all(service: Arc<dyn Service>) -> Vec<MethodHandler> {
        service
            .info()
            .methods
            .iter()
            .map(|m| MethodHandler { service: Arc::clone(&service), method: m.name, target: m.target })
            .collect()
    }
}

impl Handler for MethodHandler {
    fn target(&self) -> &str {
        self.target
    }

    fn call(
        &self,
        args: Args,
        ctx: &Context,
        pool: &BlockingPool,
    ) -> Result<BoxFuture<'static, Result<Value, RpcError>>, RpcError> {
        Arc::clone(&self.service).call(self.method, args, ctx, pool)
    }
}
