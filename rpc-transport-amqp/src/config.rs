//! [`RpcConfig`] (per `Rpc`) and [`CallOptions`] (per call).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rpc_core::BlockingPool;
use tracing::warn;

use crate::{wire, Codec};

/// Default limit on a request or reply body: 8 MiB.
#[doc(hidden)]
pub const DEFAULT_MAX_BODY_SIZE: usize = 8 * 1024 * 1024;
/// Default limit on opening a connection: 30 s.
#[doc(hidden)]
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often returned (unroutable) requests that no confirmation hands to their call are
/// collected: all of them without publisher confirms; with them, those carried by confirms
/// dropped unread.
#[doc(hidden)]
pub const RETURN_POLL: Duration = Duration::from_millis(10);
/// Replies up to this size (128 KiB) are published on the serving channel. A larger one goes
/// out on a channel of its own, confirmed before the request is acked, when the `Rpc` owns its
/// connection: a broker that refuses it (a body over its `max_message_size`) then closes only
/// that channel, and the caller gets a short `reply_too_large` error instead.
#[doc(hidden)]
pub const DIRECT_REPLY_MAX: usize = 128 * 1024;
/// Default number of unacknowledged requests a server takes from each method queue.
#[doc(hidden)]
pub const DEFAULT_PREFETCH: u16 = 32;

/// Settings of one [`Rpc`](crate::Rpc), set through [`Rpc::builder`](crate::Rpc::builder)'s
/// `with_*` setters (each documents its default).
#[doc(hidden)]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcConfig {
    /// How long a call waits for its reply unless the call says otherwise
    /// ([`rpc_core::DEFAULT_DEADLINE`], 30 s). Also the longest a server runs a request that
    /// carries no deadline of its own (a foreign client that sets no `expiration`).
    pub deadline: Duration,
    /// How many unacknowledged requests a server takes from each method queue at once
    /// (`basic.qos` prefetch, per consumer): the bound on concurrent requests per method.
    pub prefetch: u16,
    /// Whether calls are published with publisher confirms (default `true`).
    ///
    /// On: a call counts as sent once the broker confirms it, and a request nobody can
    /// receive (no queue bound: `mandatory` publish returned) fails at once with
    /// `RpcError::Unavailable`, delivered with the confirm. Off: the broker does a confirm's
    /// less work per call (about 30% more calls/s at 64 in flight, BENCHMARKS.md); returned
    /// requests are then collected every 10 ms and still
    /// fail their call with `Unavailable`, but a request the broker loses without returning
    /// it (a nack) is only noticed at the call's deadline.
    pub publisher_confirms: bool,
    /// The codec calls are sent in unless the call says otherwise (MessagePack).
    pub codec: Codec,
    /// The largest body a server accepts and a client sends, requests and replies alike
    /// (8 MiB). A larger request gets a `bad_request` error reply; a larger call fails before
    /// it is published; a larger reply, result or error, is replaced by a short
    /// `reply_too_large` error. A client takes in no reply larger than this (from a server that
    /// does not bound its replies: the call fails with a protocol error, undecoded), and a
    /// describe request no more than this in all. Once the broker has refused a message for
    /// its size, its `max_message_size` bounds what is sent too. Keep it at or below the
    /// broker's limit.
    pub max_body_size: usize,
    /// Where synchronous handlers run (one slot per CPU by default).
    pub blocking_pool: BlockingPool,
    /// First delay between reconnection attempts (doubles up to `reconnect_max_delay`).
    pub reconnect_delay: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max_delay: Duration,
    /// How long opening a connection (TCP, TLS and the AMQP handshake) may take before the
    /// attempt counts as failed (30 s), for `connect` and every reconnection attempt: a peer
    /// that accepts the TCP connection and then says nothing must not stall it forever.
    pub connect_timeout: Duration,
    /// How long [`Rpc::close`](crate::Rpc::close) waits for in-flight requests to be
    /// answered before closing anyway.
    pub shutdown_grace: Duration,
    /// The longest a server runs one request, whatever deadline the caller sent (5 min): a
    /// caller cannot pin a prefetch slot for longer. The request then gets
    /// `deadline_exceeded`.
    pub max_deadline: Duration,
    /// The connection name shown by the broker (`rabbitmqctl list_connections
    /// client_properties`), for connections the `Rpc` opens itself.
    pub connection_name: Option<String>,
    /// Whether the method queues this `Rpc` serves are quorum queues (durable, replicated on
    /// the cluster's nodes: requests waiting in them survive the death of a node) instead of
    /// aio-pika's classic ones (off by default). Every server of a method must agree: the
    /// broker refuses a declaration of the other kind (`docs/AMQP.md`, "Quorum method queues").
    pub quorum_queues: bool,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            deadline: rpc_core::DEFAULT_DEADLINE,
            prefetch: DEFAULT_PREFETCH,
            publisher_confirms: true,
            codec: Codec::default(),
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            blocking_pool: BlockingPool::default(),
            reconnect_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            shutdown_grace: Duration::from_secs(30),
            max_deadline: Duration::from_secs(300),
            connection_name: None,
            quorum_queues: false,
        }
    }
}

/// Per-call overrides of the `Rpc`'s defaults.
///
/// ```
/// use std::time::Duration;
/// use rpc_transport_amqp::{CallOptions, Codec};
/// let options = CallOptions::new().with_deadline(Duration::from_secs(2)).with_codec(Codec::Json);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// The call's deadline; `None` means the `Rpc`'s.
    pub(crate) deadline: Option<Duration>,
    /// The call's codec; `None` means the `Rpc`'s.
    pub(crate) codec: Option<Codec>,
}

impl CallOptions {
    /// No overrides.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The call's deadline, instead of the `Rpc`'s.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The call's codec, instead of the `Rpc`'s.
    #[must_use]
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// `self`, with `other`'s settings where `self` has none.
    pub(crate) fn or(self, other: CallOptions) -> CallOptions {
        CallOptions { deadline: self.deadline.or(other.deadline), codec: self.codec.or(other.codec) }
    }
}

/// The largest body an `Rpc` sends, request or reply: [`RpcBuilder::with_max_body_size`], lowered
/// to the broker's own `max_message_size` once a refusal names it. The calling and the
/// serving side share one.
#[derive(Debug)]
pub(crate) struct BodyLimit {
    configured: usize,
    /// The broker's limit once known (`usize::MAX` until then).
    broker: AtomicUsize,
}

impl BodyLimit {
    pub(crate) fn new(configured: usize) -> Self {
        BodyLimit { configured, broker: AtomicUsize::new(usize::MAX) }
    }

    /// The limit now.
    pub(crate) fn get(&self) -> usize {
        self.configured.min(self.broker.load(Ordering::Relaxed))
    }

    /// Remembers the broker's size limit when `reason` (a refusal, a channel closed by the
    /// broker) names it.
    pub(crate) fn learn(&self, reason: &str) {
        if let Some(limit) = wire::refused_size_limit(reason) {
            if self.broker.fetch_min(limit, Ordering::Relaxed) > limit {
                warn!(
                    max_message_size = limit,
                    "the broker refuses messages over {limit} bytes; bodies are bounded by it from now on"
                );
            }
        }
    }
}
