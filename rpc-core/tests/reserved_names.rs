//! The reserved `_rpc` namespace: a registry refuses a service named in it.

use std::sync::Arc;

use rpc_core::service::RESERVED_PREFIX;
use rpc_core::{Args, BlockingPool, Context, Registry, RpcError, Service, ServiceInfo};
use serde_json::Value;

/// A hand-written service (the macro refuses reserved names) with the name it is given.
struct Named(&'static ServiceInfo);

impl Service for Named {
    fn info(&self) -> &'static ServiceInfo {
        self.0
    }

    fn call(
        self: Arc<Self>,
        method: &str,
        _args: Args,
        _ctx: &Context,
        _pool: &BlockingPool,
    ) -> Result<futures_util::future::BoxFuture<'static, Result<Value, RpcError>>, RpcError> {
        Err(RpcError::UnknownMethod { service: self.0.name.to_owned(), method: method.to_owned(), known: vec![] })
    }
}

static RPC: ServiceInfo = ServiceInfo::new("_rpc", "", &[]);
static RPC_ADMIN: ServiceInfo = ServiceInfo::new("_rpc_admin", "", &[]);
static UNDERSCORED: ServiceInfo = ServiceInfo::new("_private", "", &[]);

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn registering_a_service_in_the_reserved_namespace_panics_naming_the_prefix() {
    for info in [&RPC, &RPC_ADMIN] {
        let refused = std::panic::catch_unwind(|| Registry::new().with(Named(info))).map(|_| ());
        let message = panic_text(refused.expect_err("a reserved name must be refused"));
        assert_eq!(
            message,
            format!("service names starting with '{RESERVED_PREFIX}' are reserved for the framework: '{}'", info.name)
        );
    }
    // An underscore alone reserves nothing.
    let registry = Registry::new().with(Named(&UNDERSCORED));
    assert_eq!(registry.services().map(|s| s.name).collect::<Vec<_>>(), ["_private"]);
}
