//! The transport-independent heart of the RPC framework.
//!
//! A *service* is a plain Rust type whose methods are callable by name; `#[rpc_service]`
//! (crate `rpc-macros`) implements [`Service`] for it and generates a typed client. This crate
//! has no network code: transports (`rpc-transport-tcp`, `rpc-transport-amqp`, `rpc-http`)
//! move a [`Request`] one way and a [`Reply`] or [`RpcError`] the other.
//!
//! Layout (one file per concern):
//! - `service.rs`: the [`Service`] trait and its compile-time description ([`ServiceInfo`],
//!   [`MethodInfo`], [`ParamInfo`], [`TypeInfo`] with JSON Schemas);
//! - `registry.rs`: [`Registry`], many services behind one endpoint, dispatched by name;
//! - `run.rs`: the server-side run policy (deadline cap, panics, cancellation) every
//!   server applies around a handler;
//! - `context.rs`: [`Context`] (deadline, [`Metadata`], trace id, cancellation), what travels
//!   with every call;
//! - `request.rs`: [`Request`] and [`Reply`];
//! - `args.rs`: [`Args`], positional text tokens or named values;
//! - `text.rs`: the text shape of values (token decoding, result rendering);
//! - `handler.rs`: [`Handler`], one callable method (plain functions or service methods);
//! - `blocking.rs`: [`BlockingPool`], where synchronous handlers run;
//! - `transport.rs`: the client-side [`Transport`] trait; `memory.rs`: [`MemoryTransport`];
//! - [`layer`]: middleware as tower layers (tracing, metrics, auth), the same for every
//!   transport;
//! - `error.rs`: [`RpcError`] and its wire form.
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
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::new().with(Calculator)?;
//! let client = CalculatorClient::new(MemoryTransport::new(registry));
//! assert_eq!(client.add(2.0, 2.0).await?, 4.0);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(unreachable_pub)]

// The modules are the crate's layout; users reach their types from the root, and the
// transport crates (which share these internals) through the hidden module paths.
#[doc(hidden)]
pub mod args;
#[doc(hidden)]
pub mod blocking;
#[doc(hidden)]
pub mod context;
#[doc(hidden)]
pub mod error;
mod finite;
#[doc(hidden)]
pub mod handler;
pub mod layer;
#[doc(hidden)]
pub mod memory;
#[doc(hidden)]
pub mod registry;
#[doc(hidden)]
pub mod request;
#[doc(hidden)]
pub mod run;
#[doc(hidden)]
pub mod service;
#[doc(hidden)]
pub mod text;
#[doc(hidden)]
pub mod transport;

pub use args::Args;
pub use blocking::BlockingPool;
pub use context::{Context, Metadata, MetadataError};
pub use error::{HandlerError, RpcError};
pub use handler::Handler;
#[doc(hidden)]
pub use handler::MethodHandler;
pub use memory::MemoryTransport;
pub use registry::{RegisterError, Registry};
pub use request::{Reply, Request, DEFAULT_DEADLINE};
pub use service::{MethodInfo, ParamInfo, Service, ServiceInfo, TypeInfo};
pub use transport::Transport;

/// Re-exports for generated code and `kwargs!`; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::args::ArgReader;
    pub use crate::error::{handler_error, ErrorData, NoData, ViaSerialize};
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
