//! [`Registry`]: many services behind one endpoint, dispatched by service name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::args::clip;
use crate::run::{effective_context, run};
use crate::service::{DESCRIBE, RESERVED_PREFIX};
use crate::{BlockingPool, Request, RpcError, Service, ServiceInfo};

/// Why a service could not be added to a [`Registry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// A service with this wire name is already registered.
    #[error("a service named '{name}' is already registered")]
    Duplicate {
        /// The service's wire name.
        name: String,
    },
    /// The name starts with `_rpc`, the prefix of the framework's own requests.
    #[error("service names starting with '{RESERVED_PREFIX}' are reserved for the framework: '{name}'")]
    Reserved {
        /// The service's wire name.
        name: String,
    },
}

/// A router from service names to services, with the pool their synchronous methods run on and
/// the longest a call may run.
///
/// A server that routes by service name (the TCP Consumer, the HTTP front, [`MemoryTransport`](crate::MemoryTransport))
/// holds one behind an `Arc` and calls [`Registry::dispatch`]; one queue per method (RabbitMQ)
/// uses each method's [`MethodHandler`](crate::MethodHandler) under the same
/// [run policy](crate::run).
#[derive(Clone, Default)]
pub struct Registry {
    services: BTreeMap<&'static str, Arc<dyn Service>>,
    pool: BlockingPool,
    max_deadline: Option<Duration>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("pool", &self.pool)
            .field("max_deadline", &self.max_deadline)
            .finish()
    }
}

impl Registry {
    /// An empty registry whose blocking pool is sized for this machine, with no cap on how
    /// long a call runs beyond its caller's deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service (builder style): `Registry::new().with(Calculator)?.with(NeuralNet)?`.
    ///
    /// # Errors
    /// [`RegisterError::Duplicate`] when a service with the same wire name is already
    /// registered, [`RegisterError::Reserved`] when its name starts with `_rpc` (the
    /// framework's own requests).
    pub fn with<S: Service>(mut self, service: S) -> Result<Self, RegisterError> {
        self.register(service)?;
        Ok(self)
    }

    /// Adds a service.
    ///
    /// # Errors
    /// As [`Registry::with`].
    pub fn register<S: Service>(&mut self, service: S) -> Result<&mut Self, RegisterError> {
        self.register_arc(Arc::new(service))
    }

    /// Adds a service that is already shared.
    ///
    /// # Errors
    /// As [`Registry::with`].
    #[doc(hidden)]
    pub fn register_arc(&mut self, service: Arc<dyn Service>) -> Result<&mut Self, RegisterError> {
        let name = service.info().name;
        if name.starts_with(RESERVED_PREFIX) {
            return Err(RegisterError::Reserved { name: name.to_owned() });
        }
        if self.services.contains_key(name) {
            return Err(RegisterError::Duplicate { name: name.to_owned() });
        }
        self.services.insert(name, service);
        Ok(self)
    }

    /// Uses `pool` for synchronous handlers.
    #[must_use]
    pub fn with_blocking_pool(mut self, pool: BlockingPool) -> Self {
        self.pool = pool;
        self
    }

    /// No call runs longer than `max_deadline`, whatever deadline its caller sent; a call that
    /// sent none gets this one.
    #[must_use]
    pub fn with_max_deadline(mut self, max_deadline: Duration) -> Self {
        self.max_deadline = Some(max_deadline);
        self
    }

    /// The cap set by [`Registry::with_max_deadline`].
    #[doc(hidden)]
    pub fn max_deadline(&self) -> Option<Duration> {
        self.max_deadline
    }

    /// The pool synchronous handlers run on.
    #[doc(hidden)]
    pub fn blocking_pool(&self) -> &BlockingPool {
        &self.pool
    }

    /// The service named `name`.
    #[doc(hidden)]
    pub fn service(&self, name: &str) -> Option<&Arc<dyn Service>> {
        self.services.get(name)
    }

    /// Every registered service, ordered by name.
    pub fn services(&self) -> impl Iterator<Item = &'static ServiceInfo> + '_ {
        self.services.values().map(|s| s.info())
    }

    /// Every registered service's description, as one JSON document:
    /// `{"services": [..each ServiceInfo::describe_with..], "definitions": {..}}`.
    pub fn describe(&self) -> Value {
        let mut generator = crate::service::generator();
        let services: Vec<Value> = self.services().map(|s| s.describe_with(&mut generator)).collect();
        serde_json::json!({"services": services, "definitions": crate::service::definitions(&mut generator)})
    }

    /// Calls `request.method` on `request.service` under the [run policy](crate::run): the
    /// request's context, deadline capped by [`Registry::with_max_deadline`], reaches the
    /// handler; a panicking handler yields [`RpcError::Panic`] and the registry keeps serving;
    /// cancelling the request's context ends the call with [`RpcError::Cancelled`].
    ///
    /// The reserved request `_rpc describe` ([`RESERVED_PREFIX`], [`DESCRIBE`]) answers
    /// [`Registry::describe`], so every transport in front of a registry can say what it serves.
    ///
    /// # Errors
    /// [`RpcError::UnknownService`], and whatever [`Service::call`] or the handler returns.
    pub async fn dispatch(&self, request: Request) -> Result<Value, RpcError> {
        let Request { service, method, args, context, .. } = request;
        if service == RESERVED_PREFIX && method == DESCRIBE {
            return Ok(self.describe());
        }
        let svc = self.services.get(service.as_str()).ok_or_else(|| RpcError::UnknownService {
            service: clip(&service),
            known: self.services.keys().map(|k| (*k).to_owned()).collect(),
        })?;
        let info = svc.info();
        let target = info
            .method(&method)
            .map_or_else(|| format!("{}.{}", clip(&service), clip(&method)), |m| m.target.to_owned());
        let ctx = effective_context(context, self.max_deadline);
        // Decoding and the handler both run under the policy, so a panicking Deserialize impl
        // is caught too.
        let call = async { Arc::clone(svc).call(&method, args, &ctx, &self.pool)?.await };
        run(&target, &ctx, call).await
    }
}
