//! The design document's text-over-TCP protocol: Consumers that serve services, the Producer that spreads
//! tasks over them, and a client [`Transport`](rpc_core::Transport).
//!
//! A request is one line, `service method arg1 arg2 ...\n`; the reply is the result as text,
//! then the server closes the connection. `printf 'calculator calculate 2 + 2\n' | nc -q 2
//! 127.0.0.1 9001` prints `4`. The whole protocol (grammar, limits, error form, escaping) is in
//! `docs/PROTOCOL.md`.
//!
//! Layout, one module (file) per concern:
//! - `frame.rs`: bytes → a request line or an [`Error`]; replies encoded and decoded. Pure.
//! - `connection.rs`: an accepted socket and its bounded read buffer.
//! - `consumer.rs`: [`Consumer`], the server for a [`rpc_core::Registry`].
//! - `producer.rs`: [`Producer`], the gateway: load spreading, failover, health probes and
//!   ejection of failing consumers, deadlines; also a `Transport`.
//! - `system.rs`: the reserved `_rpc` namespace (`_rpc health`), answered by every server
//!   itself; the Producer's health probe.
//! - `client.rs`: [`TcpTransport`], the client `Transport`.
//! - `config.rs`: [`Limits`], [`ConsumerConfig`], [`ProducerConfig`], [`ClientConfig`].
//! - `error.rs`: [`Error`], what can go wrong reading a request.
//! - `link` (private): the Producer's persistent, pipelined links to its Consumers, negotiated
//!   with `_rpc link 1`; the frame codec (pure), the Producer's side and the Consumer's side.
//! - `server` (private): the accept loop both servers share: connection cap and eviction of
//!   idle connections, one task per connection, graceful shutdown.
//!
//! The caller owns the listeners and the shutdown signal; nothing here binds a port, reads the
//! environment or installs a signal handler.
//!
//! ```
//! use std::sync::Arc;
//! use rpc_core::{HandlerError, Registry, RpcError};
//! use rpc_macros::rpc_service;
//! use rpc_transport_tcp::{Consumer, ConsumerConfig, Producer, ProducerConfig, TcpTransport};
//! use tokio::net::TcpListener;
//!
//! pub struct Calculator;
//!
//! #[rpc_service]
//! impl Calculator {
//!     /// `calculator calculate 2 + 2` answers `4`.
//!     pub fn calculate(a: f64, op: String, b: f64) -> Result<f64, HandlerError> {
//!         match op.as_str() {
//!             "+" => Ok(a + b),
//!             other => Err(HandlerError::new("unknown_operator", format!("unknown operator {other:?}"))),
//!         }
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let consumer_addr = listener.local_addr()?;
//! let consumer = Consumer::new(Arc::new(Registry::new().with(Calculator)?), ConsumerConfig::default());
//! let server = tokio::spawn(async move { consumer.serve(listener, stopped).await });
//!
//! // Straight to the consumer, or through a producer: the same typed client.
//! let direct = CalculatorClient::new(TcpTransport::new(consumer_addr));
//! assert_eq!(direct.calculate(2.0, "+".into(), 2.0).await?, 4.0);
//! let gateway = CalculatorClient::new(Producer::new(vec![consumer_addr], ProducerConfig::default()));
//! assert_eq!(gateway.calculate(2.0, "+".into(), 3.0).await?, 5.0);
//! let err = gateway.calculate(2.0, "^".into(), 3.0).await.unwrap_err();
//! assert!(matches!(err, RpcError::Handler { .. }));
//!
//! let _ = stop.send(());
//! server.await??;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(unreachable_pub)]

// The modules are the crate's layout; users reach its types from the root. `frame`,
// `connection` and `system` stay reachable for this crate's tests, benchmarks and fuzzing,
// hidden from the documented API.
#[doc(hidden)]
pub mod client;
#[doc(hidden)]
pub mod config;
#[doc(hidden)]
pub mod connection;
#[doc(hidden)]
pub mod consumer;
#[doc(hidden)]
pub mod error;
#[doc(hidden)]
pub mod frame;
mod link;
#[doc(hidden)]
pub mod producer;
mod server;
#[doc(hidden)]
pub mod system;

pub use client::TcpTransport;
pub use config::{ClientConfig, ConsumerConfig, Limits, ProducerConfig};
pub use consumer::Consumer;
pub use error::Error;
pub use producer::{ConsumerState, ConsumerStats, Producer};
