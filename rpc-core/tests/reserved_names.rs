//! The reserved `_rpc` namespace: a registry refuses a service named in it.

use std::sync::Arc;

use rpc_core::service::RESERVED_PREFIX;
use rpc_core::{Args, BlockingPool, Context, RegisterError, Registry, RpcError, Service, ServiceInfo};
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

#[test]
fn registering_a_service_in_the_reserved_namespace_is_refused_naming_the_prefix() {
    for info in [&RPC, &RPC_ADMIN] {
        let refused = Registry::new().with(Named(info)).expect_err("a reserved name must be refused");
        assert_eq!(refused, RegisterError::Reserved { name: info.name.to_owned() });
        assert_eq!(
            refused.to_string(),
            format!("service names starting with '{RESERVED_PREFIX}' are reserved for the framework: '{}'", info.name)
        );
    }
    // An underscore alone reserves nothing.
    let registry = Registry::new().with(Named(&UNDERSCORED)).expect("'_private' is not reserved");
    assert_eq!(registry.services().map(|s| s.name).collect::<Vec<_>>(), ["_private"]);
}

#[test]
fn registering_a_second_service_with_the_same_name_is_an_error_not_a_panic() {
    let registry = Registry::new().with(Named(&UNDERSCORED)).expect("the first one registers");
    let refused = registry.with(Named(&UNDERSCORED)).expect_err("a duplicate must be refused");
    assert_eq!(refused, RegisterError::Duplicate { name: "_private".to_owned() });
    assert_eq!(refused.to_string(), "a service named '_private' is already registered");
}
