//! Call Rust services on other machines, over TCP, HTTP or RabbitMQ.
//!
//! This facade re-exports the workspace's crates under one name:
//! - [`core`] (`rpc-core`): services, arguments, errors, the `Transport` trait;
//! - [`rpc_service`] (`rpc-macros`): the attribute that turns an `impl` block into a service
//!   and a typed client;
//! - [`tcp`] (`rpc-transport-tcp`): the text protocol over TCP, Consumers and the Producer;
//! - [`amqp`] (`rpc-transport-amqp`): request/reply over RabbitMQ;
//! - [`http`] (`rpc-http`): the HTTP/JSON front over any transport.
//!
//! The rest of this page is the README. Its links to the repository's documents go, from this
//! page (`target/doc/rpc/index.html`), three directories up to the workspace root: the
//! definitions below come before the README's own, and the first definition of a name wins.
//!
//! [design-doc]: ../../../docs/DESIGN.md
//! [protocol-doc]: ../../../docs/PROTOCOL.md
//! [amqp-doc]: ../../../docs/AMQP.md
//! [testing-doc]: ../../../docs/TESTING.md
//! [http-doc]: ../../../docs/HTTP.md
//! [benchmarks]: ../../../BENCHMARKS.md
//! [reliability]: ../../../RELIABILITY.md
#![deny(missing_docs)]
// The README's examples are compiled (and the TCP one run) as this crate's doctests.
#![doc = include_str!("../README.md")]

pub use rpc_core as core;
pub use rpc_core::{kwargs, Args, Registry, Reply, Request, RpcError, Service, Transport};
pub use rpc_http as http;
pub use rpc_macros::rpc_service;
pub use rpc_transport_amqp as amqp;
pub use rpc_transport_tcp as tcp;
