//! The transport-independent heart of the RPC framework.
//!
//! A *service* is a plain Rust type whose methods are callable by name; `#[rpc_service]`
//! (crate `rpc-macros`) implements [`Service`] for it and generates a typed client. This crate
//! has no network code: transports (`rpc-transport-tcp`, `rpc-transport-amqp`) move a
//! [`Request`] one way and a [`Reply`] or [`RpcError`] the other.
//!
//! Layout:
//! - [`service`]: the [`Service`] trait and method metadata ([`ServiceInfo`], [`MethodInfo`]);
//! - [`registry`]: [`Registry`], many services behind one endpoint, dispatched by name;
//! - [`args`]: [`Args`] (positional text tokens or named values) and [`ArgReader`];
//! - [`text`]: the text shape of values (token decoding, result rendering);
//! - [`handler`]: [`Handler`], one callable method (plain functions or service methods);
//! - [`blocking`]: [`BlockingPool`], where synchronous handlers run;
//! - [`guard`](mod@guard): panics and deadlines around every handler;
//! - [`request`]: [`Request`] and [`Reply`];
//! - [`transport`]: the client-side [`Transport`] trait and [`MemoryTransport`];
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
pub mod error;
pub mod guard;
pub mod handler;
pub mod registry;
pub mod request;
pub mod service;
pub mod text;
pub mod transport;

pub use args::{ArgReader, Args};
pub use blocking::{BlockingPool, CallContext};
pub use error::{handler_error, HandlerError, RpcError};
pub use guard::guard;
pub use handler::{Handler, MethodHandler};
pub use registry::Registry;
pub use request::{Reply, Request, DEFAULT_TIMEOUT};
pub use service::{MethodInfo, ParamInfo, Service, ServiceInfo};
pub use transport::{MemoryTransport, Transport};

/// Re-exports for generated code and `kwargs!`; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::encode;
    pub use futures_util::future::BoxFuture;
    pub use futures_util::FutureExt;
    pub use serde_json;
}
