//! The knobs: limits every server applies to its connections ([`Limits`]), and the settings of
//! the [`Consumer`](crate::Consumer), the [`Producer`](crate::Producer) and the client
//! ([`TcpTransport`](crate::TcpTransport)). Every setting is a `with_*` setter on a `Default` value; each default is documented
//! on its setter and in `docs/PROTOCOL.md`.

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
    pub(crate) max_line: usize,
    /// How long a client has, from connecting, to send its whole request line. Default 10 s.
    /// A client that is late gets the line `ERROR bad_request: bad request: no complete request
    /// within 10 s`, then the error as JSON (`docs/PROTOCOL.md`).
    pub(crate) read_timeout: Duration,
    /// How long writing the reply may take. Default 10 s; then the connection is dropped.
    pub(crate) write_timeout: Duration,
    /// Connections served at once. Default 1024.
    ///
    /// A connection beyond it is accepted and waits up to 2 s for a slot. To make room, the
    /// connection that has waited longest for its request line is evicted, if it has held its
    /// slot for at least 1 s without completing a request (it is answered `ERROR overloaded: ... closed to make room`), so
    /// a flood of idle connections cannot keep working clients out. When no slot frees in
    /// time the newcomer is answered `ERROR overloaded: ... too many connections` and closed.
    /// At most as many connections as this limit (and at least 64) wait at once; beyond that
    /// they are closed without a reply.
    pub(crate) max_connections: usize,
    /// Links served at once (Consumers only). Default 64. A link holds no connection slot, so
    /// links, busy or idle, never keep one-line clients or health probes out; a link request
    /// beyond it is answered `ERROR overloaded: ... too many links`, and the Producer sends
    /// that consumer's tasks on connections of their own until it asks again.
    pub(crate) max_links: usize,
    /// How long the server keeps reading (and discarding) after an error reply, so the
    /// client's unread bytes do not turn the close into a reset that would destroy the reply.
    /// Default 2 s.
    pub(crate) linger: Duration,
    /// After the shutdown signal, how long in-flight requests may take to finish before their
    /// connections are dropped. Default 30 s.
    pub(crate) shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: DEFAULT_MAX_LINE,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_links: 64,
            linger: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Longest request line, in bytes before the `\n`. Default 64 KiB. Memory per connection
    /// stays below this plus one 8 KiB read chunk.
    #[must_use]
    pub fn with_max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes;
        self
    }

    /// How long a client has, from connecting, to send its whole request line. Default 10 s.
    /// A client that is late gets the line `ERROR bad_request: bad request: no complete request
    /// within 10 s`, then the error as JSON (`docs/PROTOCOL.md`).
    #[must_use]
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// How long writing the reply may take. Default 10 s; then the connection is dropped.
    #[must_use]
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Connections served at once (at least one). Default 1024. On a Consumer it is also the
    /// bound of tasks at once on each link ([`Limits::with_max_links`]).
    ///
    /// A connection beyond it is accepted and waits up to 2 s for a slot. To make room, the
    /// connection that has waited longest for its request line is evicted, if it has held its
    /// slot for at least 1 s without completing a request (it is answered `ERROR overloaded: ... closed to make room`), so
    /// a flood of idle connections cannot keep working clients out. When no slot frees in
    /// time the newcomer is answered `ERROR overloaded: ... too many connections` and closed.
    /// At most as many connections as this limit (and at least 64) wait at once; beyond that
    /// they are closed without a reply.
    #[must_use]
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Links served at once (Consumers only; at least one). Default 64. A link holds no
    /// connection slot, so links, busy or idle, never keep one-line clients or health probes
    /// out; a link request beyond it is answered `ERROR overloaded: ... too many links`, and
    /// the Producer sends that consumer's tasks on connections of their own until it asks
    /// again.
    #[must_use]
    pub fn with_max_links(mut self, links: usize) -> Self {
        self.max_links = links.max(1);
        self
    }

    /// How long the server keeps reading (and discarding) after an error reply, so the
    /// client's unread bytes do not turn the close into a reset that would destroy the reply.
    /// Default 2 s.
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// After the shutdown signal, how long in-flight requests may take to finish before their
    /// connections are dropped. Default 30 s.
    #[must_use]
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
    pub(crate) limits: Limits,
    /// The deadline of each call's handler. Default 30 s; a registry's
    /// [`with_max_deadline`](rpc_core::Registry::with_max_deadline) can only shorten it.
    /// A late handler gets `ERROR deadline_exceeded: ...`.
    pub(crate) max_deadline: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig { limits: Limits::default(), max_deadline: rpc_core::DEFAULT_DEADLINE }
    }
}

impl ConsumerConfig {
    /// Connection limits (see [`Limits`]).
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The deadline of each call's handler. Default 30 s; a registry's
    /// [`with_max_deadline`](rpc_core::Registry::with_max_deadline) can only shorten it.
    /// A late handler gets `ERROR deadline_exceeded: ...`.
    #[must_use]
    pub fn with_max_deadline(mut self, timeout: Duration) -> Self {
        self.max_deadline = timeout;
        self
    }
}

/// Settings of the [`Producer`](crate::Producer).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// Limits on external clients' connections.
    pub(crate) limits: Limits,
    /// Each task's deadline, from the moment its line is read to the reply, retries included.
    /// Default 30 s. A typed call's own shorter timeout wins.
    pub(crate) max_deadline: Duration,
    /// How long connecting to a consumer may take before it counts as down. Default 1 s.
    pub(crate) connect_timeout: Duration,
    /// How long one attempt on one consumer may take before the task moves on. Default 30 s,
    /// the task's whole deadline: a slow task is not a dead consumer (a dead one refuses or
    /// breaks the connection, which fails over at once), and a shorter attempt would run a
    /// legitimately slow task on every consumer in turn. Lower it to fail over from consumers
    /// that hang; it is always cut to what is left of the task's deadline.
    pub(crate) attempt_timeout: Duration,
    /// How long a consumer is avoided after a failed task or health probe. Default 2 s. It
    /// doubles with each consecutive failure (2 s, 4 s, 8 s, ...) up to
    /// [`ProducerConfig::with_max_backoff`], and starts over once the consumer answers a task. A
    /// consumer is given tasks again only after its backoff and a health probe it answered.
    pub(crate) backoff: Duration,
    /// The longest a consumer is avoided after consecutive failures. Default 60 s.
    pub(crate) max_backoff: Duration,
    /// How often [`Producer::serve`](crate::Producer::serve) sends `_rpc health` to every
    /// consumer that is up or whose backoff is over. Default 5 s (at least 10 ms).
    pub(crate) probe_interval: Duration,
    /// How long a health probe may take, connecting included, before the consumer counts as
    /// down. Default 2 s.
    pub(crate) probe_timeout: Duration,
    /// Largest reply accepted from a consumer. Default 16 MiB.
    pub(crate) max_reply: usize,
    /// Whether tasks travel on persistent links to consumers that take them. Default on.
    ///
    /// The producer asks each consumer once for a link (`_rpc link 1`); a consumer that takes
    /// it is sent many tasks at once on that one connection, each with its deadline, metadata
    /// and trace id; one that answers anything else is sent one task per connection, as with
    /// this off. See `docs/PROTOCOL.md`.
    pub(crate) links: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            limits: Limits::default(),
            max_deadline: rpc_core::DEFAULT_DEADLINE,
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
    /// Whether tasks travel on persistent links to consumers that take them. Default on.
    ///
    /// The producer asks each consumer once for a link (`_rpc link 1`); a consumer that takes
    /// it is sent many tasks at once on that one connection, each with its deadline, metadata
    /// and trace id; one that answers anything else is sent one task per connection, as with
    /// this off. See `docs/PROTOCOL.md`.
    #[must_use]
    pub fn with_links(mut self, links: bool) -> Self {
        self.links = links;
        self
    }

    /// Limits on external clients' connections (see [`Limits`]).
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Each task's deadline, from the moment its line is read to the reply, retries included.
    /// Default 30 s. A typed call's own shorter timeout wins.
    #[must_use]
    pub fn with_max_deadline(mut self, timeout: Duration) -> Self {
        self.max_deadline = timeout;
        self
    }

    /// How long connecting to a consumer may take before it counts as down. Default 1 s.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one attempt on one consumer may take before the task moves on. Default 30 s,
    /// the task's whole deadline: a slow task is not a dead consumer (a dead one refuses or
    /// breaks the connection, which fails over at once), and a shorter attempt would run a
    /// legitimately slow task on every consumer in turn. Lower it to fail over from consumers
    /// that hang; it is always cut to what is left of the task's deadline.
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How long a consumer is avoided after a failed task or health probe. Default 2 s. It
    /// doubles with each consecutive failure (2 s, 4 s, 8 s, ...) up to
    /// [`ProducerConfig::with_max_backoff`], and starts over once the consumer answers a task. A
    /// consumer is given tasks again only after its backoff and a health probe it answered.
    /// A consumer that refuses a link for now (`overloaded`) is asked again this long later
    /// (at least 1 s); its tasks go one per connection meanwhile.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest a consumer is avoided after consecutive failures. Default 60 s.
    #[must_use]
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// How often [`Producer::serve`](crate::Producer::serve) sends `_rpc health` to every
    /// consumer that is up or whose backoff is over. Default 5 s (at least 10 ms).
    #[must_use]
    pub fn with_probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// How long a health probe may take, connecting included, before the consumer counts as
    /// down. Default 2 s.
    #[must_use]
    pub fn with_probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Largest reply accepted from a consumer. Default 16 MiB.
    #[must_use]
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
    pub(crate) connect_timeout: Duration,
    /// The deadline of a call whose request sets none. Default 30 s.
    pub(crate) deadline: Duration,
    /// Largest reply accepted. Default 16 MiB.
    pub(crate) max_reply: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            deadline: rpc_core::DEFAULT_DEADLINE,
            max_reply: 16 * 1024 * 1024,
        }
    }
}

impl ClientConfig {
    /// How long connecting may take. Default 5 s (within the call's deadline).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The deadline of a call whose request sets none. Default 30 s.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Largest reply accepted. Default 16 MiB.
    #[must_use]
    pub fn with_max_reply(mut self, bytes: usize) -> Self {
        self.max_reply = bytes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `10 s`, `250 ms`, as PROTOCOL.md writes durations.
    fn doc_duration(d: Duration) -> String {
        if d.subsec_millis() == 0 {
            format!("{} s", d.as_secs())
        } else {
            format!("{} ms", d.as_millis())
        }
    }

    /// `64 KiB`, `16 MiB`, as PROTOCOL.md writes sizes.
    fn doc_bytes(n: usize) -> String {
        if n % (1 << 20) == 0 {
            format!("{} MiB", n >> 20)
        } else {
            format!("{} KiB", n >> 10)
        }
    }

    #[test]
    fn every_limit_is_configurable_and_documented_in_protocol_md_with_its_real_default() {
        let protocol = include_str!("../../docs/PROTOCOL.md");
        let rows: Vec<Vec<&str>> = protocol
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("|---"))
            .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
            .collect();
        let (limits, consumer, producer, client) =
            (Limits::default(), ConsumerConfig::default(), ProducerConfig::default(), ClientConfig::default());
        // (who, knob, its default in the code): each must have a row naming it, with that default.
        let knobs = [
            ("", "max_line", doc_bytes(limits.max_line)),
            ("", "read_timeout", doc_duration(limits.read_timeout)),
            ("", "max_connections", limits.max_connections.to_string()),
            ("", "max_links", limits.max_links.to_string()),
            ("", "write_timeout", doc_duration(limits.write_timeout)),
            ("", "linger", doc_duration(limits.linger)),
            ("", "shutdown_grace", doc_duration(limits.shutdown_grace)),
            ("", "max_deadline", doc_duration(consumer.max_deadline)),
            ("Producer", "max_deadline", doc_duration(producer.max_deadline)),
            ("Producer", "attempt_timeout", doc_duration(producer.attempt_timeout)),
            ("Producer", "connect_timeout", doc_duration(producer.connect_timeout)),
            ("Producer", "backoff", doc_duration(producer.backoff)),
            ("Producer", "max_backoff", doc_duration(producer.max_backoff)),
            ("Producer", "probe_interval", doc_duration(producer.probe_interval)),
            ("Producer", "probe_timeout", doc_duration(producer.probe_timeout)),
            ("Producer", "max_reply", doc_bytes(producer.max_reply)),
            ("client", "connect_timeout", doc_duration(client.connect_timeout)),
            ("client", "deadline", doc_duration(client.deadline)),
            ("client", "max_reply", doc_bytes(client.max_reply)),
        ];
        for (who, knob, default) in &knobs {
            let row = rows
                .iter()
                .find(|r| r[0].contains(&format!("(`{knob}`")) && r[0].contains(who))
                .unwrap_or_else(|| panic!("PROTOCOL.md's limits table has no row for {who} `{knob}`"));
            assert!(
                row[1].starts_with(default.as_str()),
                "PROTOCOL.md gives {who} `{knob}` default {:?}, the code {default:?}",
                row[1]
            );
        }
        // Concurrency of synchronous handlers: the blocking pool, one slot per CPU by default.
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        assert_eq!(rpc_core::Registry::new().blocking_pool().size(), cpus);
        assert!(rows.iter().any(|r| r[0].contains("BlockingPool") && r[1] == "one per CPU"), "no BlockingPool row");

        // Every knob has a setter, and it takes.
        let d = Duration::from_millis(1234);
        let set = Limits::default()
            .with_max_line(10)
            .with_read_timeout(d)
            .with_write_timeout(d)
            .with_max_connections(3)
            .with_linger(d)
            .with_shutdown_grace(d);
        assert_eq!((set.max_line, set.max_connections), (10, 3));
        assert!([set.read_timeout, set.write_timeout, set.linger, set.shutdown_grace].iter().all(|t| *t == d));
        assert_eq!(ConsumerConfig::default().with_limits(set.clone()).with_max_deadline(d).max_deadline, d);
        let p = ProducerConfig::default()
            .with_limits(set)
            .with_max_deadline(d)
            .with_attempt_timeout(d)
            .with_connect_timeout(d)
            .with_backoff(d)
            .with_max_reply(5);
        assert_eq!(
            (p.limits.max_line, p.max_deadline, p.attempt_timeout, p.connect_timeout, p.backoff, p.max_reply),
            (10, d, d, d, d, 5)
        );
        let c = ClientConfig::default().with_connect_timeout(d).with_deadline(d).with_max_reply(5);
        assert_eq!((c.connect_timeout, c.deadline, c.max_reply), (d, d, 5));
    }
}
