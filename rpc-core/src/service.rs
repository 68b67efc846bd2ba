//! The [`Service`] trait and the metadata that describes a service's methods.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::{Args, CallContext, RpcError};

/// A service: a named set of methods callable by name with [`Args`].
///
/// You normally get this from `#[rpc_service]` on an inherent `impl` block; implementing it by
/// hand is possible (see the crate tests) but rarely needed.
pub trait Service: Send + Sync + 'static {
    /// The service's wire name and its methods.
    fn info(&self) -> &'static ServiceInfo;

    /// Calls `method` with `args`.
    ///
    /// Arguments are decoded before the returned future is created, so a malformed call fails
    /// without touching the blocking pool. Synchronous methods run on `ctx`'s blocking pool.
    ///
    /// # Errors
    /// [`RpcError::UnknownMethod`], an argument error, or the handler's own error. Panics and
    /// deadlines are handled by the caller of this method ([`guard`](crate::guard::guard)).
    fn call(
        self: Arc<Self>,
        method: &str,
        args: Args,
        ctx: &CallContext,
    ) -> Result<BoxFuture<'static, Result<Value, RpcError>>, RpcError>;
}

/// Describes a service: its wire name and its methods.
#[derive(Debug)]
pub struct ServiceInfo {
    /// Wire name, e.g. `calculator`.
    pub name: &'static str,
    /// The doc comment of the `impl` block, if any.
    pub doc: &'static str,
    /// The RPC methods, in declaration order.
    pub methods: &'static [MethodInfo],
}

impl ServiceInfo {
    /// Builds the metadata (used by the generated code).
    pub const fn new(name: &'static str, doc: &'static str, methods: &'static [MethodInfo]) -> Self {
        ServiceInfo { name, doc, methods }
    }

    /// The method with wire name `name`.
    pub fn method(&self, name: &str) -> Option<&'static MethodInfo> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The wire names of all methods.
    pub fn method_names(&self) -> Vec<String> {
        self.methods.iter().map(|m| m.name.to_owned()).collect()
    }
}

/// Describes one method: how to call it, and what it returns.
#[derive(Debug)]
pub struct MethodInfo {
    /// Wire name, e.g. `calculate`.
    pub name: &'static str,
    /// `service.method`, used in error messages and logs.
    pub target: &'static str,
    /// The parameters, in order.
    pub params: &'static [ParamInfo],
    /// Whether the last parameter collects all remaining positional tokens.
    pub variadic: bool,
    /// The return type as written in the source (`Result<f64, CalcError>`).
    pub returns: &'static str,
    /// Whether the method runs on the blocking pool (synchronous and not `#[rpc(inline)]`).
    pub blocking: bool,
    /// The method's doc comment.
    pub doc: &'static str,
}

impl MethodInfo {
    /// Builds the metadata (used by the generated code).
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        name: &'static str,
        target: &'static str,
        params: &'static [ParamInfo],
        variadic: bool,
        returns: &'static str,
        blocking: bool,
        doc: &'static str,
    ) -> Self {
        MethodInfo { name, target, params, variadic, returns, blocking, doc }
    }

    /// The parameters as `name: Type`, for error messages.
    pub fn param_list(&self) -> Vec<String> {
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let rest = if self.variadic && i + 1 == self.params.len() { "..." } else { "" };
                format!("{}{rest}: {}", p.name, p.ty)
            })
            .collect()
    }

    /// A one-line signature: `calculate(a: f64, op: String, b: f64) -> Result<f64, CalcError>`.
    pub fn signature(&self) -> String {
        format!("{}({}) -> {}", self.name, self.param_list().join(", "), self.returns)
    }
}

/// Describes one parameter.
#[derive(Debug)]
pub struct ParamInfo {
    /// The parameter's name, which is also its key in named-argument calls.
    pub name: &'static str,
    /// Its Rust type as written in the source.
    pub ty: &'static str,
}

impl ParamInfo {
    /// Builds the metadata (used by the generated code).
    pub const fn new(name: &'static str, ty: &'static str) -> Self {
        ParamInfo { name, ty }
    }
}
