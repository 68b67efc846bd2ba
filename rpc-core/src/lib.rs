//! The transport-independent heart of the RPC framework.
//!
//! A *service* is a plain Rust type whose methods are callable by name; `#[rpc_service]`
//! (crate `rpc-macros`) implements [`Service`] for it and generates a typed client. This crate
//! has no network code: transports (`rpc-transport-tcp`, `rpc-transport-amqp`, `rpc-http`)
//! move a [`Request`] one way and a [`Reply`] or [`RpcError`] the other.
//!
//! Layout:
//! - [`service`]: the [`Service`] trait and its compile-time description ([`ServiceInfo`],
//!   [`MethodInfo`], [`ParamInfo`], [`TypeInfo`] with JSON Schemas);
//! - [`registry`]: [`Registry`], many services behind one endpoint, dispatched by name;
//! - [`run`](mod@run): the server-side run policy (deadline cap, panics, cancellation) every
//!   server applies around a handler;
//! - [`context`]: [`Context`] (deadline, [`Metadata`], trace id, cancellation), what travels
//!   with every call;
//! - [`request`]: [`Request`] and [`Reply`];
//! - [`args`]: [`Args`], positional text tokens or named values;
//! - [`text`]: the text shape of values (token decoding, result rendering);
//! - [`handler`]: [`Handler`], one callable method (plain functions or service methods);
//! - [`blocking`]: [`BlockingPool`], where synchronous handlers run;
//! - [`transport`]: the client-side [`Transport`] trait; [`memory`]: [`MemoryTransport`];
//! - [`layer`]: middleware as tower layers (tracing, metrics, auth), the same for every
//!   transport;
//! - [`error`]: [`RpcError`] and its wire form.
//!
//! ```
//! use rpc_core::{MemoryTransport, Registry, RpcError};
//! use rpc_macros::rpc_service;
//!
//! pub struct Calculator;
//!
//! #[rpc_service]
//! impl Calculator {
//!     /// Adds two numbers.
//!     fn add(a: f64, b: f64) -> f64 {
//!         a + b
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), RpcError> {
//! let registry = Registry::new().with(Calculator);
//! let client = CalculatorClient::new(MemoryTransport::new(registry));
//! assert_eq!(client.add(2.0, 2.0).await?, 4.0);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod args;
pub mod blocking;
pub mod context;
pub mod error;
mod finite;
pub mod handler;
pub mod layer;
pub mod memory;
pub mod registry;
pub mod request;
pub mod run;
pub mod service;
pub mod text;
pub mod transport;

pub use args::Args;
pub use blocking::BlockingPool;
pub use context::{Context, Metadata, MetadataError};
pub use error::{handler_error, HandlerError, RpcError};
pub use handler::{Handler, MethodHandler};
pub use memory::MemoryTransport;
pub use registry::Registry;
pub use request::{Reply, Request, DEFAULT_DEADLINE};
pub use service::{MethodInfo, ParamInfo, Service, ServiceInfo, TypeInfo};
pub use transport::Transport;

/// Re-exports for generated code and `kwargs!`; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::args::ArgReader;
    pub use crate::handler::{encode_arg, encode_result};
    pub use crate::request::ClientDefaults;
    pub use crate::service::probe::{Fallback, SchemaProbe, ViaJsonSchema};
    pub use futures_util::future::BoxFuture;
    pub use futures_util::FutureExt;
    pub use schemars::{Schema, SchemaGenerator};
    pub use serde_json;

    /// The error for a method `service` does not have (`method` shown bounded).
    pub fn unknown_method(service: &str, method: &str, known: &[&str]) -> crate::RpcError {
        crate::RpcError::UnknownMethod {
            service: service.to_owned(),
            method: crate::args::clip(method),
            known: known.iter().map(|k| (*k).to_owned()).collect(),
        }
    }
}
