//! Request/reply RPC over RabbitMQ, on lapin and tokio, wire-compatible with aio-pika's
//! `patterns.JsonRPC`.
//!
//! A method is a queue named after it on the default exchange; a call publishes the named
//! arguments there (MessagePack by default, JSON on request) with a `reply_to` queue and a
//! `correlation_id`, and waits for the reply, at most until its deadline. The full wire format,
//! delivery semantics and limits are in `docs/AMQP.md`.
//!
//! Layout:
//! - [`Rpc`] (`rpc.rs`): the handle: `create`/`connect`, `register`/`serve`/`unregister`,
//!   `call`, `close`; it implements [`rpc_core::Transport`] for `#[rpc_service]` clients;
//! - `session.rs`: the one owner of the link's life (connect, install, wait for the loss,
//!   back off, reconnect, as one loop) and of what the handles share;
//! - `client.rs`: publishing requests, matching replies to pending calls (the reply loop);
//! - `describe.rs`: the describe request ("what do you serve"), both sides;
//! - `server.rs`: consuming method queues, running requests through the server stack (the
//!   layers of [`RpcBuilder::layer`], then the handler under the run policy), replying,
//!   settling (the serving loops);
//! - `acks.rs`: settling requests on the serving channel, acks coalesced into `multiple` acks
//!   where the delivery tags allow it;
//! - `link.rs`: one connection's channels, reply queue and consumers (rebuilt on reconnect);
//!   the loops above report its death through it, to the session;
//! - `codec.rs`: message bodies (MessagePack/JSON) and the error envelope; pure;
//! - `wire.rs`: names, message properties, queue arguments; pure;
//! - `config.rs`: the `Rpc`'s settings (set through [`RpcBuilder`]) and [`CallOptions`];
//! - `error.rs`: [`Error`], for set-up operations (calls return [`RpcError`]).
//!
//! ```no_run
//! use lapin::{Connection, ConnectionProperties};
//! use rpc_core::kwargs;
//! use rpc_transport_amqp::Rpc;
//!
//! #[derive(serde::Deserialize)]
//! struct Sleep {
//!     t: f64,
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
//! let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
//! let channel = conn.create_channel().await?;
//! let rpc = Rpc::create(channel).await?;
//! rpc.register_async("sleep", |a: Sleep| async move {
//!     tokio::time::sleep(std::time::Duration::from_secs_f64(a.t)).await;
//!     Ok::<_, std::convert::Infallible>(a.t)
//! })
//! .await?;
//! let slept: f64 = rpc.call("sleep", kwargs! { "t" => 3 }).await?;
//! assert_eq!(slept, 3.0);
//! rpc.close().await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod acks;
mod client;
// `codec`, `config` and `wire` stay reachable for this crate's tests and benchmarks, hidden
// from the documented API; users reach the types they need from the root.
#[doc(hidden)]
pub mod codec;
#[doc(hidden)]
pub mod config;
mod describe;
#[doc(hidden)]
pub mod error;
mod link;
mod rpc;
mod server;
mod session;
#[doc(hidden)]
pub mod wire;

pub use codec::Codec;
pub use config::CallOptions;
#[doc(hidden)]
pub use config::RpcConfig;
pub use error::{Error, ScrubbedError};
pub use rpc::{Rpc, RpcBuilder};

/// The AMQP client this crate is built on, for the types a caller hands over
/// ([`Rpc::create`] takes a `lapin::Channel`; [`RpcBuilder::with_connection_properties`]
/// takes `lapin::ConnectionProperties`), so lapin's major version is visible in the path.
pub use lapin;
#[doc(hidden)]
pub use lapin::{Channel, Connection, ConnectionProperties};
pub use rpc_core::{kwargs, RpcError};
