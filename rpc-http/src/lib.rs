//! An HTTP/JSON front for RPC services: a gateway over any [`rpc_core::Transport`] (the TCP
//! Producer, a RabbitMQ client, an in-process registry).
//!
//! - `POST /rpc/{service}/{method}` with a JSON object (named arguments) or array
//!   (positional) calls the method: `200` and the JSON result, or an error envelope
//!   `{"error": {"code", "message", "data"}}` with the status that fits ([`status::status_of`]).
//!   Header `x-rpc-deadline-ms` sets the call's deadline (capped by the server),
//!   `x-rpc-meta-<key>` headers its metadata, `x-rpc-trace-id` its trace id: handlers read
//!   them from their `Context`.
//! - `GET /rpc`: the services' descriptions; `GET /openapi.json`: an OpenAPI 3.1 document
//!   derived from them.
//! - `GET /healthz` (the process is up), `GET /readyz` (a backend is up), `GET /metrics`
//!   (Prometheus text), `GET /` (a console for people).
//!
//! Layout: [`gateway`] (routes, limits, headers), `catalog` (descriptions, arguments from
//! JSON), [`client`] ([`HttpTransport`], calling a front from Rust), [`status`] (errors as
//! HTTP), [`openapi`], [`metrics`], [`backends`], `serve` (the listener loop and graceful
//! shutdown), `write_timeout` (a bound on clients that do not read), `console`. Like the
//! other transports, nothing here binds a port or installs a signal handler: the caller passes
//! a listener and a shutdown future.
//!
//! ```
//! use rpc_core::{MemoryTransport, Registry};
//! use rpc_http::Gateway;
//! use rpc_macros::rpc_service;
//!
//! pub struct Greeter;
//!
//! #[rpc_service]
//! impl Greeter {
//!     /// Says hello.
//!     fn hello(name: String) -> String {
//!         format!("hello {name}")
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Gateway::new(MemoryTransport::new(Registry::new().with(Greeter)?));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! // curl -d '{"name": "you"}' -H 'content-type: application/json' http://ADDR/rpc/greeter/hello
//! gateway.serve(listener, async {}).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod backends;
mod catalog;
pub mod client;
mod console;
pub mod gateway;
pub mod metrics;
pub mod openapi;
mod serve;
pub mod status;
mod write_timeout;

pub use backends::{BackendStatus, Backends};
pub use client::HttpTransport;
pub use gateway::{Gateway, GatewayBuilder, Limits};
