//! Call Rust services on other machines, over TCP or RabbitMQ.
//!
//! This facade re-exports the workspace's crates under one name:
//! - [`core`] (`rpc-core`): services, arguments, errors, the `Transport` trait;
//! - [`rpc_service`] (`rpc-macros`): the attribute that turns an `impl` block into a service
//!   and a typed client;
//! - [`tcp`] (`rpc-transport-tcp`): the seed's text protocol, Consumers and the Producer;
//! - [`amqp`] (`rpc-transport-amqp`): request/reply over RabbitMQ.
#![deny(missing_docs)]
// The README's examples are compiled (and the TCP one run) as this crate's doctests.
#![doc = include_str!("../README.md")]

pub use rpc_core as core;
pub use rpc_core::{kwargs, Args, Registry, Reply, Request, RpcError, Service, Transport};
pub use rpc_http as http;
pub use rpc_macros::rpc_service;
pub use rpc_transport_amqp as amqp;
pub use rpc_transport_tcp as tcp;
