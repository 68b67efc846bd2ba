//! [`Registry`]: many services behind one endpoint, dispatched by service name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::{guard, BlockingPool, CallContext, Request, RpcError, Service, ServiceInfo};

/// A router from service names to services, with the pool their synchronous methods run on.
///
/// A server that routes by service name (the TCP Consumer) holds one behind an `Arc` and calls
/// [`Registry::dispatch`]; one queue per method (RabbitMQ) uses each method's
/// [`MethodHandler`](crate::MethodHandler) instead.
#[derive(Clone, Default)]
pub struct Registry {
    services: BTreeMap<&'static str, Arc<dyn Service>>,
    ctx: CallContext,
    max_timeout: Option<Duration>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("ctx", &self.ctx)
            .field("max_timeout", &self.max_timeout)
            .finish()
    }
}

impl Registry {
    /// An empty registry whose blocking pool is sized for this machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service (builder style).
    ///
    /// # Panics
    /// When a service with the same wire name is already registered: that is a programming
    /// error caught at start-up, like a duplicate route.
    pub fn with<S: Service>(mut self, service: S) -> Self {
        self.register(service);
        self
    }

    /// Adds a service.
    ///
    /// # Panics
    /// As [`Registry::with`].
    pub fn register<S: Service>(&mut self, service: S) -> &mut Self {
        self.register_arc(Arc::new(service))
    }

    /// Adds a service that is already shared.
    ///
    /// # Panics
    /// As [`Registry::with`].
    pub fn register_arc(&mut self, service: Arc<dyn Service>) -> &mut Self {
        let name = service.info().name;
        assert!(self.services.insert(name, service).is_none(), "a service named '{name}' is already registered");
        self
    }

    /// Uses `pool` for synchronous handlers.
    pub fn with_blocking_pool(mut self, pool: BlockingPool) -> Self {
        self.ctx.pool = pool;
        self
    }

    /// Caps every call's run time at `limit`, whatever the request asks for.
    pub fn with_max_timeout(mut self, limit: Duration) -> Self {
        self.max_timeout = Some(limit);
        self
    }

    /// The pool synchronous handlers run on.
    pub fn blocking_pool(&self) -> &BlockingPool {
        &self.ctx.pool
    }

    /// The context handed to handlers.
    pub fn context(&self) -> &CallContext {
        &self.ctx
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<dyn Service>> {
        self.services.get(name)
    }

    /// Every registered service, ordered by name.
    pub fn services(&self) -> impl Iterator<Item = &'static ServiceInfo> + '_ {
        self.services.values().map(|s| s.info())
    }

    /// Calls `request.method` on `request.service`.
    ///
    /// The call's run time is bounded by the request's timeout and by
    /// [`Registry::with_max_timeout`], whichever is shorter. A panicking handler yields
    /// [`RpcError::Panic`]; the registry keeps serving.
    ///
    /// # Errors
    /// [`RpcError::UnknownService`], and whatever [`Service::call`] or the handler returns.
    pub async fn dispatch(&self, request: Request) -> Result<Value, RpcError> {
        let Request { service, method, args, timeout, .. } = request;
        let svc = self.services.get(service.as_str()).ok_or_else(|| RpcError::UnknownService {
            service: service.clone(),
            known: self.services.keys().map(|k| (*k).to_owned()).collect(),
        })?;
        let info = svc.info();
        let target = info.method(&method).map_or_else(|| format!("{service}.{method}"), |m| m.target.to_owned());
        let timeout = match (timeout, self.max_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Decoding and the handler both run inside the guard, so a panicking Deserialize impl
        // is caught too.
        guard(&target, timeout, async move { Arc::clone(svc).call(&method, args, &self.ctx)?.await }).await
    }
}
