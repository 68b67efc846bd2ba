//! The knobs: limits every server applies to its connections ([`Limits`]), and the settings of
//! the [`Consumer`](crate::Consumer), the [`Producer`](crate::Producer) and the client
//! ([`TcpTransport`](crate::TcpTransport)). Every default is documented on its field and in
//! `docs/PROTOCOL.md`.

use std::time::Duration;

use tokio::time::Instant;

use crate::frame::DEFAULT_MAX_LINE;

/// The instant `duration` from now. A duration too long to represent (`Duration::MAX`, meaning
/// "no limit") gives an instant decades away instead of panicking.
pub(crate) fn deadline_after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration).unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}

/// Limits a server applies to every connection, the same for Consumers and the Producer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Longest request line, in bytes before the `\n`. Default 64 KiB. Memory per connection
    /// stays below this plus one 8 KiB read chunk.
    pub max_line: usize,
    /// How long a client has, from connecting, to send its whole request line. Default 10 s.
    /// A client that is late gets the line `ERROR bad_request: bad request: no complete request
    /// within 10 s`, then the error as JSON (`docs/PROTOCOL.md`).
    pub read_timeout: Duration,
    /// How long writing the reply may take. Default 10 s; then the connection is dropped.
    pub write_timeout: Duration,
    /// Connections served at once. Default 1024.
    ///
    /// A connection beyond it is accepted and waits up to 2 s for a slot. To make room, the
    /// connection that has waited longest for its request line is evicted, if it has held its
    /// slot for at least 1 s without completing a request (it is answered `ERROR overloaded: ... closed to make room`), so
    /// a flood of idle connections cannot keep working clients out. When no slot frees in
    /// time the newcomer is answered `ERROR overloaded: ... too many connections` and closed.
    /// At most as many connections as this limit (and at least 64) wait at once; beyond that
    /// they are closed without a reply.
    pub max_connections: usize,
    /// How long the server keeps reading (and discarding) after an error reply, so the
    /// client's unread bytes do not turn the close into a reset that would destroy the reply.
    /// Default 2 s.
    pub linger: Duration,
    /// After the shutdown signal, how long in-flight requests may take to finish before their
    /// connections are dropped. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: DEFAULT_MAX_LINE,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 1024,
            linger: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_line`].
    pub fn with_max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes;
        self
    }

    /// Sets [`Limits::read_timeout`].
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Sets [`Limits::write_timeout`].
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets [`Limits::max_connections`] (at least one).
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Sets [`Limits::linger`].
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets [`Limits::shutdown_grace`].
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
}

/// Settings of a [`Consumer`](crate::Consumer).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// Connection limits.
    pub limits: Limits,
    /// The deadline of each call's handler. Default 30 s; a registry's
    /// [`with_max_deadline`](rpc_core::Registry::with_max_deadline) can only shorten it.
    /// A late handler gets `ERROR deadline_exceeded: ...`.
    pub request_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig { limits: Limits::default(), request_timeout: rpc_core::DEFAULT_DEADLINE }
    }
}

impl ConsumerConfig {
    /// Sets the connection limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`ConsumerConfig::request_timeout`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

/// Settings of the [`Producer`](crate::Producer).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// Limits on external clients' connections.
    pub limits: Limits,
    /// Each task's deadline, from the moment its line is read to the reply, retries included.
    /// Default 30 s. A typed call's own shorter timeout wins.
    pub task_timeout: Duration,
    /// How long connecting to a consumer may take before it counts as down. Default 1 s.
    pub connect_timeout: Duration,
    /// How long one attempt on one consumer may take before the task moves on. Default 30 s,
    /// the task's whole deadline: a slow task is not a dead consumer (a dead one refuses or
    /// breaks the connection, which fails over at once), and a shorter attempt would run a
    /// legitimately slow task on every consumer in turn. Lower it to fail over from consumers
    /// that hang; it is always cut to what is left of the task's deadline.
    pub attempt_timeout: Duration,
    /// How long a consumer is avoided after a failed task or health probe. Default 2 s. It
    /// doubles with each consecutive failure (2 s, 4 s, 8 s, ...) up to
    /// [`ProducerConfig::max_backoff`], and starts over once the consumer answers a task. A
    /// consumer is given tasks again only after its backoff and a health probe it answered.
    pub backoff: Duration,
    /// The longest a consumer is avoided after consecutive failures. Default 60 s.
    pub max_backoff: Duration,
    /// How often [`Producer::serve`](crate::Producer::serve) sends `_rpc health` to every
    /// consumer that is up or whose backoff is over. Default 5 s (at least 10 ms).
    pub probe_interval: Duration,
    /// How long a health probe may take, connecting included, before the consumer counts as
    /// down. Default 2 s.
    pub probe_timeout: Duration,
    /// Largest reply accepted from a consumer. Default 16 MiB.
    pub max_reply: usize,
    /// Whether tasks travel on persistent links to consumers that take them. Default on.
    ///
    /// The producer asks each consumer once for a link (`_rpc link 1`); a consumer that takes
    /// it is sent many tasks at once on that one connection, each with its deadline, metadata
    /// and trace id; one that answers anything else is sent one task per connection, as with
    /// this off. See `docs/PROTOCOL.md`.
    pub links: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            limits: Limits::default(),
            task_timeout: rpc_core::DEFAULT_DEADLINE,
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(30),
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(2),
            max_reply: 16 * 1024 * 1024,
            links: true,
        }
    }
}

impl ProducerConfig {
    /// Sets [`ProducerConfig::links`].
    pub fn with_links(mut self, links: bool) -> Self {
        self.links = links;
        self
    }

    /// Sets the limits on external clients' connections.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`ProducerConfig::task_timeout`].
    pub fn with_task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = timeout;
        self
    }

    /// Sets [`ProducerConfig::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ProducerConfig::attempt_timeout`].
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets [`ProducerConfig::backoff`].
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`ProducerConfig::max_backoff`].
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets [`ProducerConfig::probe_interval`].
    pub fn with_probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Sets [`ProducerConfig::probe_timeout`].
    pub fn with_probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Sets [`ProducerConfig::max_reply`].
    pub fn with_max_reply(mut self, bytes: usize) -> Self {
        self.max_reply = bytes;
        self
    }
}

/// Settings of a [`TcpTransport`](crate::TcpTransport).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long connecting may take. Default 5 s (within the call's deadline).
    pub connect_timeout: Duration,
    /// The deadline of a call whose request sets none. Default 30 s.
    pub timeout: Duration,
    /// Largest reply accepted. Default 16 MiB.
    pub max_reply: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            timeout: rpc_core::DEFAULT_DEADLINE,
            max_reply: 16 * 1024 * 1024,
        }
    }
}

impl ClientConfig {
    /// Sets [`ClientConfig::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::max_reply`].
    pub fn with_max_reply(mut self, bytes: usize) -> Self {
        self.max_reply = bytes;
        self
    }
}
