//! [`Producer`]: the seed's asynchronous gateway. External clients send it tasks in the text
//! protocol; it forwards each to one of its Consumers and relays the reply bytes verbatim.
//!
//! - **Spreading**: each attempt goes to the consumer with the fewest tasks outstanding from
//!   this producer; ties go round-robin.
//! - **Failover**: a consumer that refuses the connection, breaks it, answers garbage, says it
//!   is `overloaded` or `unavailable`, or does not answer within
//!   [`ProducerConfig::attempt_timeout`] is skipped and the task is tried on the next one. It
//!   is then marked down for [`ProducerConfig::backoff`]: later tasks try it only after every
//!   other consumer, and once the backoff is over the next task probes it again.
//! - **Failure**: a task fails only when every consumer has failed it, with
//!   `ERROR unavailable: ...` naming each consumer and what went wrong, or when its
//!   deadline ([`ProducerConfig::task_timeout`]) runs out, with `ERROR deadline_exceeded: ...`.
//! - **At least once**: a consumer that dies (or stalls past the attempt timeout) after it
//!   started a task may have done the work; the retry runs it again elsewhere. Tasks that must
//!   not run twice need an idempotency key of their own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_core::{Reply, Request, RpcError, Transport};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::client::exchange;
use crate::config::{deadline_after, ProducerConfig};
use crate::error::fmt_duration;
use crate::frame::{self, ParsedReply, RequestLine};
use crate::server::{self, Respond};

/// The gateway in front of N consumers; also a [`Transport`], so typed clients can call
/// through it in process.
///
/// Cloning is cheap and shares the consumers' state and counters.
///
/// ```no_run
/// # use rpc_transport_tcp::{Producer, ProducerConfig};
/// # async fn run() -> std::io::Result<()> {
/// let consumers = vec!["127.0.0.1:9001".parse().unwrap(), "127.0.0.1:9002".parse().unwrap()];
/// let producer = Producer::new(consumers, ProducerConfig::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
/// producer.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backends: Vec<Backend>,
    config: ProducerConfig,
    /// Round-robin position for breaking ties.
    next: AtomicUsize,
}

#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    outstanding: AtomicUsize,
    served: AtomicU64,
    failures: AtomicU64,
    down_until: Mutex<Option<Instant>>,
}

/// One consumer's counters, as seen by this producer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// The consumer's address.
    pub addr: SocketAddr,
    /// Tasks it answered (success or an error of the call itself, such as a handler error).
    pub served: u64,
    /// Attempts that failed on it (refused, broken, timed out, overloaded) and moved on.
    pub failures: u64,
    /// Tasks in flight to it right now.
    pub outstanding: usize,
    /// Whether it is currently avoided after a failure.
    pub down: bool,
}

/// A task's reply, and who gave it.
#[derive(Debug)]
struct Forwarded {
    bytes: Vec<u8>,
    consumer: SocketAddr,
    attempts: usize,
    /// `ok`, or the kind of the error the consumer answered.
    outcome: &'static str,
}

impl Producer {
    /// A producer spreading tasks over `consumers`.
    ///
    /// An empty list is allowed; every task then fails with `unavailable`.
    pub fn new(consumers: Vec<SocketAddr>, config: ProducerConfig) -> Self {
        let backends = consumers
            .into_iter()
            .map(|addr| Backend {
                addr,
                outstanding: AtomicUsize::new(0),
                served: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                down_until: Mutex::new(None),
            })
            .collect();
        Producer { inner: Arc::new(Inner { backends, config, next: AtomicUsize::new(0) }) }
    }

    /// The consumers' addresses, in configuration order.
    pub fn consumers(&self) -> Vec<SocketAddr> {
        self.inner.backends.iter().map(|b| b.addr).collect()
    }

    /// Its settings.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Per-consumer counters, in configuration order.
    pub fn stats(&self) -> Vec<ConsumerStats> {
        let now = Instant::now();
        self.inner
            .backends
            .iter()
            .map(|b| ConsumerStats {
                addr: b.addr,
                served: b.served.load(Ordering::Relaxed),
                failures: b.failures.load(Ordering::Relaxed),
                outstanding: b.outstanding.load(Ordering::Relaxed),
                down: b.is_down(now),
            })
            .collect()
    }

    /// Serves external clients from `listener` until `shutdown` resolves, then drains like
    /// [`Consumer::serve`](crate::Consumer::serve).
    ///
    /// # Errors
    /// Only when the listener's address cannot be read.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future) -> io::Result<()> {
        let limits = self.inner.config.limits.clone();
        server::serve("producer", listener, limits, Arc::clone(&self.inner), shutdown).await
    }
}

impl Transport for Producer {
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        let timeout = request
            .context
            .remaining()
            .map_or(self.inner.config.task_timeout, |t| t.min(self.inner.config.task_timeout));
        let line = RequestLine::from_request(request)?;
        let target = line.target();
        let forwarded = self.inner.forward(&line, timeout).await?;
        frame::decode_reply(&forwarded.bytes, &target)
    }
}

impl Respond for Inner {
    async fn respond(&self, line: RequestLine, peer: Option<SocketAddr>) -> Vec<u8> {
        let started = std::time::Instant::now();
        let result = self.forward(&line, self.config.task_timeout).await;
        let elapsed = started.elapsed();
        let (service, method) = (&line.service, &line.method);
        match result {
            Ok(f) => {
                tracing::debug!(%service, %method, consumer = %f.consumer, attempts = f.attempts, ?peer, ?elapsed,
                    outcome = f.outcome, "task");
                f.bytes
            }
            Err(error) => {
                tracing::debug!(%service, %method, ?peer, ?elapsed, outcome = error.kind(), %error, "task failed");
                frame::encode_error(&error)
            }
        }
    }
}

impl Inner {
    /// Sends `line` to consumers until one answers it, within `timeout`.
    async fn forward(&self, line: &RequestLine, timeout: Duration) -> Result<Forwarded, RpcError> {
        let target = line.target();
        let bytes = line.encode();
        let deadline = deadline_after(timeout);
        let mut tried: Vec<(usize, String)> = Vec::new();
        while let Some(index) = self.pick(&tried) {
            let backend = &self.backends[index];
            let now = Instant::now();
            if now >= deadline {
                return Err(RpcError::deadline(target, timeout));
            }
            let attempt_timeout = self.config.attempt_timeout.min(deadline - now);
            let outcome = {
                let _outstanding = Outstanding::new(&backend.outstanding);
                let exchange = exchange(backend.addr, &bytes, self.config.connect_timeout, self.config.max_reply);
                tokio::time::timeout(attempt_timeout, exchange).await
            };
            let failure = match outcome {
                Ok(Ok(reply)) => match frame::parse_reply(&reply, &target) {
                    Ok(ParsedReply::Error(e @ (RpcError::Overloaded { .. } | RpcError::Unavailable { .. }))) => {
                        format!("{}: {e}", backend.addr)
                    }
                    Ok(parsed) => {
                        backend.served.fetch_add(1, Ordering::Relaxed);
                        backend.mark_up();
                        let outcome = match parsed {
                            ParsedReply::Success(_) => "ok",
                            ParsedReply::Error(e) => e.kind(),
                        };
                        let attempts = tried.len() + 1;
                        return Ok(Forwarded { bytes: reply, consumer: backend.addr, attempts, outcome });
                    }
                    Err(e) => format!("{}: {e}", backend.addr),
                },
                Ok(Err(e)) => e.to_string(),
                // The task's own deadline ran out: the consumer may just have been given a slow
                // task, so it is not held against it.
                Err(_) if Instant::now() >= deadline => return Err(RpcError::deadline(target, timeout)),
                Err(_) => format!("{}: no reply within {}", backend.addr, fmt_duration(attempt_timeout)),
            };
            tracing::debug!(%target, consumer = %backend.addr, %failure, "attempt failed; trying the next consumer");
            backend.failures.fetch_add(1, Ordering::Relaxed);
            backend.mark_down(self.config.backoff);
            tried.push((index, failure));
        }
        let reason = if self.backends.is_empty() {
            "no consumers are configured".to_owned()
        } else {
            let what: Vec<&str> = tried.iter().map(|(_, why)| why.as_str()).collect();
            format!("every consumer failed: {}", what.join("; "))
        };
        Err(RpcError::Unavailable { target, reason })
    }

    /// The next consumer for a task that already failed on `tried`: consumers not marked
    /// down first, then the fewest outstanding tasks, then round-robin order.
    fn pick(&self, tried: &[(usize, String)]) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let mut best: Option<((bool, usize), usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if tried.iter().any(|(t, _)| *t == i) {
                continue;
            }
            let backend = &self.backends[i];
            let key = (backend.is_down(now), backend.outstanding.load(Ordering::Relaxed));
            if best.as_ref().map_or(true, |(b, _)| key < *b) {
                best = Some((key, i));
            }
        }
        best.map(|(_, i)| i)
    }
}

impl Backend {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until.lock().map(|until| until.is_some_and(|t| t > now)).unwrap_or(false)
    }

    fn mark_down(&self, backoff: Duration) {
        if let Ok(mut until) = self.down_until.lock() {
            *until = Some(deadline_after(backoff));
        }
    }

    fn mark_up(&self) {
        if let Ok(mut until) = self.down_until.lock() {
            *until = None;
        }
    }
}

/// Counts one task in flight to a consumer for as long as it lives (a cancelled task too).
struct Outstanding<'a>(&'a AtomicUsize);

impl<'a> Outstanding<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Outstanding(counter)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
