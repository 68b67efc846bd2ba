//! [`Producer`]: the design document's asynchronous gateway. External clients send it tasks in the text
//! protocol; it forwards each to one of its Consumers and relays the reply bytes verbatim.
//!
//! - **Health probes**: a peer is given tasks only once it has answered `_rpc health` (see
//!   [`system`]) as a Consumer of this protocol. [`Producer::serve`] probes
//!   every consumer at start and then every [`ProducerConfig::with_probe_interval`]; used only as a
//!   [`Transport`], the producer probes a consumer before its first task. A peer that does not
//!   answer, answers something that is not this protocol (an HTTP server), or answers as a
//!   Producer (another one, or this very one) is never relayed a task; the last two are logged
//!   at ERROR.
//! - **Links**: tasks travel on one persistent connection per consumer, many at once, each
//!   with its deadline, metadata and trace id ([`ProducerConfig::with_links`]); a consumer that
//!   takes no links gets one connection per task. A client that leaves cancels its task.
//! - **Spreading**: each attempt goes to the consumer with the fewest tasks outstanding from
//!   this producer; ties go round-robin.
//! - **Failover**: a consumer that refuses the connection, breaks it, answers something that is
//!   not a reply of this protocol, says it is `overloaded` or `unavailable`, or does not answer
//!   within [`ProducerConfig::with_attempt_timeout`] is skipped and the task is tried on the next
//!   one.
//! - **Ejection**: such a consumer is marked down: no task goes to it until its backoff is over
//!   and it has answered a health probe again. The backoff doubles with each consecutive
//!   failure ([`ProducerConfig::with_backoff`], 2 s, then 4 s, 8 s, ... up to
//!   [`ProducerConfig::with_max_backoff`]) and starts over once it answers a task. So a consumer
//!   that accepts tasks and never answers them, even one that still answers its probes, gets a
//!   task less and less often. Every change of state (up, down, back up, not a consumer) is
//!   logged when it happens: down at WARN, up at INFO.
//! - **Failure**: a task fails when no consumer could take it, with `ERROR unavailable: ...`
//!   naming each consumer and what went wrong, or when its deadline
//!   ([`ProducerConfig::with_max_deadline`]) runs out, with `ERROR deadline_exceeded: ...`.
//! - **At least once**: a consumer that dies (or stalls past the attempt timeout) after it
//!   started a task may have done the work; the retry runs it again elsewhere. Tasks that must
//!   not run twice need an idempotency key of their own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rpc_core::{Context, Reply, Request, RpcError, Transport};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::exchange;
use crate::config::{deadline_after, ProducerConfig};
use crate::error::fmt_duration;
use crate::frame::{self, ParsedReply, RequestLine};
use crate::link::client::{Link, LinkFailed, Opened};
use crate::link::codec::RequestFrame;
use crate::server::{self, Respond};
use crate::system::{self, Health, ProbeError, Role};

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
    /// What this producer answers as `instance` to `_rpc health`: how it recognises itself
    /// among its consumers.
    instance: String,
    /// Itself, for the probes it starts in the background.
    me: Weak<Inner>,
    /// The targets its metrics name: those a consumer has answered as its own.
    labels: Labels,
}

/// How many targets the producer's metrics name; the rest are counted as `unknown`.
const MAX_LABELS: usize = 1024;

/// The targets the producer's metrics name, at most [`MAX_LABELS`]: those a consumer answered
/// with anything but `unknown_service` or `unknown_method`. Only then is a target known to
/// exist; a task that fails on the producer's side (no consumer up, deadline, cancelled) says
/// nothing about its name, which any client picks.
#[derive(Debug, Default)]
struct Labels(Mutex<std::collections::HashSet<String>>);

impl Labels {
    /// The label of `target` for a task that ended with `outcome`, `answered` by a consumer.
    fn of(&self, target: String, outcome: &str, answered: bool) -> String {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let served = answered && !matches!(outcome, "unknown_service" | "unknown_method");
        if known.contains(&target) || (served && known.len() < MAX_LABELS && known.insert(target.clone())) {
            target
        } else {
            "unknown".to_owned()
        }
    }
}

#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    outstanding: AtomicUsize,
    served: AtomicU64,
    failures: AtomicU64,
    status: Mutex<Status>,
    /// Held while probing, so concurrent tasks and the periodic prober probe it once.
    probing: tokio::sync::Mutex<()>,
    /// Whether a background probe is on its way.
    probe_scheduled: AtomicBool,
    /// How tasks reach it: a link, or one connection each.
    link: Mutex<LinkMode>,
    /// Held while asking it for a link, so concurrent tasks ask once.
    opening: tokio::sync::Mutex<()>,
}

/// How tasks reach a consumer.
#[derive(Debug, Clone)]
enum LinkMode {
    /// Not asked yet, or its link closed: ask (again) for a link.
    Unknown,
    /// It answered the link request with something else: one connection per task.
    Legacy,
    /// It refused a link for now (all its link slots taken): one connection per task until
    /// then, when it is asked again.
    Refused(Instant),
    /// A link.
    Open(Arc<Link>),
}

/// Where a consumer stands, as this producer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerState {
    /// Not probed yet: it is probed before its first task.
    Unprobed,
    /// It answered its last health probe as a Consumer, and its last task if any: it is given
    /// tasks.
    Up,
    /// It failed a task or a health probe: no task goes to it until its backoff is over and it
    /// has answered a health probe again.
    Down,
    /// It answered the health probe as a Producer: a producer never forwards to a producer, so
    /// it gets no task (it is probed again every probe interval).
    Producer,
    /// It is this very producer (its own address, or an address that leads back to it): it
    /// gets no task.
    Itself,
}

impl ConsumerState {
    fn as_str(self) -> &'static str {
        match self {
            ConsumerState::Unprobed => "unprobed",
            ConsumerState::Up => "up",
            ConsumerState::Down => "down",
            ConsumerState::Producer => "a producer, not a consumer",
            ConsumerState::Itself => "this producer itself",
        }
    }
}

impl std::fmt::Display for ConsumerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A consumer's health, behind the backend's lock (never held across an await).
#[derive(Debug)]
struct Status {
    state: ConsumerState,
    /// Consecutive failures (tasks and probes) since it last answered a task.
    strikes: u32,
    /// When it may be probed again (and, once it answered, given tasks). In the past for an
    /// unprobed consumer.
    retry_at: Instant,
    /// When `state` last changed.
    since: Instant,
    /// Why it is not up, when it is not.
    reason: Option<String>,
}

/// One consumer's counters, as seen by this producer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// The consumer's address.
    pub addr: SocketAddr,
    /// Tasks it answered (success or an error of the call itself, such as a handler error).
    pub served: u64,
    /// Attempts and health probes that failed on it (refused, broken, timed out, overloaded,
    /// not this protocol).
    pub failures: u64,
    /// Tasks in flight to it right now.
    pub outstanding: usize,
    /// Whether it is currently given no tasks: [`ConsumerState::Down`],
    /// [`ConsumerState::Producer`] or [`ConsumerState::Itself`].
    pub down: bool,
    /// Where it stands.
    pub state: ConsumerState,
    /// Why it is not up, when it is not: the last failure, or what it answered instead of a
    /// Consumer's health answer.
    pub reason: Option<String>,
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
    /// An empty list is allowed; every task then fails with `unavailable`. Nothing is
    /// contacted until [`Producer::serve`] or the first call.
    pub fn new(consumers: Vec<SocketAddr>, config: ProducerConfig) -> Self {
        let now = Instant::now();
        let backends = consumers
            .into_iter()
            .map(|addr| Backend {
                addr,
                outstanding: AtomicUsize::new(0),
                served: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                status: Mutex::new(Status {
                    state: ConsumerState::Unprobed,
                    strikes: 0,
                    retry_at: now,
                    since: now,
                    reason: None,
                }),
                probing: tokio::sync::Mutex::new(()),
                probe_scheduled: AtomicBool::new(false),
                link: Mutex::new(LinkMode::Unknown),
                opening: tokio::sync::Mutex::new(()),
            })
            .collect::<Vec<_>>();
        let inner = Arc::new_cyclic(|me| Inner {
            backends,
            config,
            next: AtomicUsize::new(0),
            instance: instance_id(),
            me: me.clone(),
            labels: Labels::default(),
        });
        Producer { inner }
    }

    /// The consumers' addresses, in configuration order.
    pub fn consumers(&self) -> Vec<SocketAddr> {
        self.inner.backends.iter().map(|b| b.addr).collect()
    }

    /// Its settings.
    #[doc(hidden)]
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Per-consumer counters and state, in configuration order.
    pub fn stats(&self) -> Vec<ConsumerStats> {
        self.inner
            .backends
            .iter()
            .map(|b| {
                let (state, reason) = b.state();
                ConsumerStats {
                    addr: b.addr,
                    served: b.served.load(Ordering::Relaxed),
                    failures: b.failures.load(Ordering::Relaxed),
                    outstanding: b.outstanding.load(Ordering::Relaxed),
                    down: matches!(state, ConsumerState::Down | ConsumerState::Producer | ConsumerState::Itself),
                    state,
                    reason,
                }
            })
            .collect()
    }

    /// Probes every consumer now (concurrently) and returns their stats afterwards: what
    /// [`Producer::serve`] does at start, for a caller that wants to report on its consumers
    /// before serving.
    #[doc(hidden)]
    pub async fn probe_all(&self) -> Vec<ConsumerStats> {
        Arc::clone(&self.inner).probe_round(true).await;
        self.stats()
    }

    /// Serves external clients from `listener` until `shutdown` resolves, then drains like
    /// [`Consumer::serve`](crate::Consumer::serve).
    ///
    /// Meanwhile it probes every consumer at once, then every
    /// [`ProducerConfig::with_probe_interval`].
    ///
    /// # Errors
    /// Only when the listener's address cannot be read.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future) -> io::Result<()> {
        let limits = self.inner.config.limits.clone();
        let serving = server::serve("producer", listener, limits, Arc::clone(&self.inner), shutdown);
        let probing = Arc::clone(&self.inner).probe_periodically();
        tokio::select! {
            served = serving => served,
            never = probing => match never {},
        }
    }
}

impl Transport for Producer {
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        let timeout = request
            .context
            .remaining()
            .map_or(self.inner.config.max_deadline, |t| t.min(self.inner.config.max_deadline));
        let ctx = request.context.clone();
        let line = RequestLine::from_request(request)?;
        let target = line.target();
        if let Some(reply) = self.inner.answer_system(&line) {
            return frame::decode_reply(&reply, &target);
        }
        let forwarded = self.inner.forward(&line, timeout, Some(&ctx)).await?;
        frame::decode_reply(&forwarded.bytes, &target)
    }
}

impl Respond for Inner {
    async fn respond(&self, line: RequestLine, peer: Option<SocketAddr>, ctx: Context) -> Vec<u8> {
        if let Some(reply) = self.answer_system(&line) {
            tracing::debug!(service = %line.service, method = %line.method, ?peer, "answered by the producer itself");
            return reply;
        }
        let started = std::time::Instant::now();
        // A client that leaves cancels its task: the attempt in flight is dropped, and the
        // consumer sees its connection close.
        let result = tokio::select! {
            result = self.forward(&line, self.config.max_deadline, None) => result,
            () = ctx.cancelled() => Err(RpcError::Cancelled { target: line.target() }),
        };
        let elapsed = started.elapsed();
        let target = match &result {
            Ok(forwarded) => self.labels.of(line.target(), forwarded.outcome, true),
            Err(error) => self.labels.of(line.target(), error.kind(), false),
        };
        record_task(target, result.as_ref().map_or_else(RpcError::kind, |f| f.outcome), elapsed);
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

/// Counts a task served over the text protocol, under the names every side of the framework
/// uses (`rpc_core::layer::metrics`): `rpc_calls_total{side="producer", target, outcome}` and
/// `rpc_call_duration_seconds{side="producer", target}`. `target` is the task's target or
/// `unknown` ([`Labels`]), so a client cannot grow the label set.
fn record_task(target: String, outcome: &'static str, elapsed: Duration) {
    metrics::counter!("rpc_calls_total", "side" => "producer", "target" => target.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("rpc_call_duration_seconds", "side" => "producer", "target" => target)
        .record(elapsed.as_secs_f64());
}

/// The least time before a consumer that refused a link (`overloaded`) is asked again.
const LINK_RETRY_MIN: Duration = Duration::from_secs(1);

/// How a consumer can be used for a task right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Usable {
    /// Up: send the task.
    Now,
    /// Unprobed, or its backoff is over: probe it first.
    AfterProbe,
    /// Down within its backoff, or not a consumer.
    No,
}

impl Inner {
    /// The reply to a request in the reserved `_rpc` namespace that is about this producer
    /// (`_rpc health`, never forwarded); `None` for a task, or for `_rpc describe`, which is
    /// forwarded like one (what a consumer serves, the producer serves).
    fn answer_system(&self, line: &RequestLine) -> Option<Vec<u8>> {
        if !system::is_reserved(&line.service) {
            return None;
        }
        let route = system::route(line, || {
            let up = self.backends.iter().filter(|b| b.state().0 == ConsumerState::Up).count();
            system::producer_health(&self.instance, self.backends.len(), up)
        });
        match route {
            system::Route::Answer(reply) => Some(reply),
            system::Route::Serve => None,
        }
    }

    /// Sends `line` to consumers until one answers it, within `timeout`; on links, with the
    /// trace id and metadata of `ctx`.
    async fn forward(
        &self,
        line: &RequestLine,
        timeout: Duration,
        ctx: Option<&Context>,
    ) -> Result<Forwarded, RpcError> {
        let target = line.target();
        let bytes = line.encode();
        let task = Task { line: &bytes, ctx };
        let deadline = deadline_after(timeout);
        let mut tried: Vec<(usize, String)> = Vec::new();
        while let Some((index, usable)) = self.pick(&tried) {
            let backend = &self.backends[index];
            if Instant::now() >= deadline {
                return Err(RpcError::deadline(target, timeout));
            }
            if usable == Usable::AfterProbe {
                match tokio::time::timeout_at(deadline, self.verify(backend)).await {
                    Err(_) => return Err(RpcError::deadline(target, timeout)),
                    Ok(true) => {}
                    Ok(false) => {
                        tried.push((index, backend.describe()));
                        continue;
                    }
                }
            }
            let now = Instant::now();
            let attempt_timeout = self.config.attempt_timeout.min(deadline.saturating_duration_since(now));
            let outcome = {
                let _outstanding = Outstanding::new(&backend.outstanding);
                tokio::time::timeout(attempt_timeout, self.attempt(backend, &task, deadline)).await
            };
            let failure = match outcome {
                Ok(Ok(reply)) => match frame::parse_reply(&reply, &target) {
                    Ok(ParsedReply::Error(e @ (RpcError::Overloaded { .. } | RpcError::Unavailable { .. }))) => {
                        format!("{}: {e}", backend.addr)
                    }
                    Ok(parsed) => {
                        backend.served.fetch_add(1, Ordering::Relaxed);
                        backend.answered();
                        let outcome = match parsed {
                            ParsedReply::Success(_) => "ok",
                            ParsedReply::Error(e) => e.kind(),
                        };
                        let attempts = tried.len() + 1;
                        return Ok(Forwarded { bytes: reply, consumer: backend.addr, attempts, outcome });
                    }
                    Err(e) => format!("{}: not a reply of this protocol: {e}", backend.addr),
                },
                Ok(Err(failure)) => failure,
                // The task's own deadline ran out: the consumer may just have been given a slow
                // task, so it is not held against it.
                Err(_) if Instant::now() >= deadline => return Err(RpcError::deadline(target, timeout)),
                Err(_) => format!("{}: no reply within {}", backend.addr, fmt_duration(attempt_timeout)),
            };
            tracing::debug!(%target, consumer = %backend.addr, %failure, "attempt failed; trying the next consumer");
            backend.failed(&failure, &self.config);
            tried.push((index, failure));
        }
        let reason = if self.backends.is_empty() {
            "no consumers are configured".to_owned()
        } else {
            let what: Vec<String> = (0..self.backends.len())
                .map(|i| match tried.iter().find(|(t, _)| *t == i) {
                    Some((_, why)) => why.clone(),
                    None => self.backends[i].describe(),
                })
                .collect();
            format!("every consumer failed: {}", what.join("; "))
        };
        Err(RpcError::Unavailable { target, reason })
    }

    /// One attempt of `task` on `backend`: on its link, or on a connection of its own.
    ///
    /// # Errors
    /// What went wrong, naming the consumer.
    async fn attempt(&self, backend: &Backend, task: &Task<'_>, deadline: Instant) -> Result<Vec<u8>, String> {
        if self.config.links {
            if let Some(link) = self.link(backend).await? {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let ms = u32::try_from(remaining.as_millis().saturating_add(1)).unwrap_or(u32::MAX);
                let request = RequestFrame {
                    id: 0,
                    deadline_ms: Some(ms),
                    trace_id: task.ctx.and_then(Context::trace_id).map(str::to_owned),
                    metadata: task
                        .ctx
                        .map(|c| c.metadata().iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
                        .unwrap_or_default(),
                    line: task.line[..task.line.len() - 1].to_vec(),
                };
                match link.call(request).await {
                    Ok(reply) => return Ok(reply),
                    Err(LinkFailed::Broken(why)) => return Err(why),
                    // Too large for the consumer's link: on a connection of its own, below,
                    // where the consumer refuses it as it refuses any request over its limits,
                    // and the link stays up for the other tasks.
                    Err(LinkFailed::TooLarge) => {}
                }
            }
        }
        exchange(backend.addr, task.line, self.config.connect_timeout, self.config.max_reply)
            .await
            .map_err(|e| e.to_string())
    }

    /// The link to `backend`, opened if it has none; `None` when it takes no links.
    ///
    /// # Errors
    /// Connecting or asking for the link failed.
    async fn link(&self, backend: &Backend) -> Result<Option<Arc<Link>>, String> {
        if let Some(known) = backend.current_link() {
            return Ok(known);
        }
        let _opening = backend.opening.lock().await;
        if let Some(known) = backend.current_link() {
            return Ok(known);
        }
        let config = &self.config;
        let opened = Link::open(
            backend.addr,
            config.connect_timeout,
            config.probe_timeout,
            config.limits.write_timeout,
            config.max_reply,
        )
        .await
        .map_err(|e| e.to_string())?;
        let (mode, link) = match opened {
            Opened::Link(link) => {
                tracing::debug!(consumer = %backend.addr, "link opened");
                (LinkMode::Open(Arc::clone(&link)), Some(link))
            }
            Opened::Legacy(answer) if answer.starts_with("ERROR overloaded") => {
                // Not at every task: asking costs the task a connection and a round trip.
                let retry = config.backoff.max(LINK_RETRY_MIN);
                tracing::info!(consumer = %backend.addr, %answer, retry_in = %fmt_duration(retry),
                    "consumer {} refuses links for now; it gets one connection per task meanwhile", backend.addr);
                (LinkMode::Refused(deadline_after(retry)), None)
            }
            Opened::Legacy(answer) => {
                tracing::info!(consumer = %backend.addr, %answer,
                    "consumer {} takes no links; it gets one connection per task", backend.addr);
                (LinkMode::Legacy, None)
            }
        };
        if let Ok(mut current) = backend.link.lock() {
            *current = mode;
        }
        Ok(link)
    }

    /// The next consumer for a task that already failed on `tried`: consumers that are up
    /// first, then those to probe; among them the fewest outstanding tasks, then round-robin
    /// order. Consumers within their backoff and peers that are not consumers are never picked.
    ///
    /// When a consumer that is up is picked, those due for a probe (their backoff is over) are
    /// probed in the background, so they come back without making a task wait.
    fn pick(&self, tried: &[(usize, String)]) -> Option<(usize, Usable)> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let mut best: Option<((Usable, usize), usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if tried.iter().any(|(t, _)| *t == i) {
                continue;
            }
            let backend = &self.backends[i];
            let usable = backend.usable(now);
            if usable == Usable::No {
                continue;
            }
            let key = (usable, backend.outstanding.load(Ordering::Relaxed));
            if best.as_ref().map_or(true, |(b, _)| key < *b) {
                best = Some((key, i));
            }
        }
        let ((usable, _), index) = best?;
        if usable == Usable::Now {
            for (i, backend) in self.backends.iter().enumerate() {
                if backend.usable(now) == Usable::AfterProbe {
                    self.probe_in_background(i);
                }
            }
        }
        Some((index, usable))
    }

    /// Probes consumer `index` on a task of its own, unless such a probe is already on its way.
    fn probe_in_background(&self, index: usize) {
        let Some(inner) = self.me.upgrade() else { return };
        if self.backends[index].probe_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            let backend = &inner.backends[index];
            inner.verify(backend).await;
            backend.probe_scheduled.store(false, Ordering::Release);
        });
    }

    /// Probes `backend` unless another task or the prober just did; whether it is up after.
    async fn verify(&self, backend: &Backend) -> bool {
        let _probing = backend.probing.lock().await;
        match backend.usable(Instant::now()) {
            Usable::Now => return true,
            Usable::No => return false,
            Usable::AfterProbe => {}
        }
        let result = system::probe(backend.addr, self.config.connect_timeout, self.config.probe_timeout).await;
        backend.probed(result, &self.config, &self.instance);
        backend.usable(Instant::now()) == Usable::Now
    }

    /// Probes every consumer that is due (all of them when `all`) concurrently.
    async fn probe_round(self: Arc<Self>, all: bool) {
        let mut probes = JoinSet::new();
        let now = Instant::now();
        for index in 0..self.backends.len() {
            if !all && !self.backends[index].due(now) {
                continue;
            }
            let inner = Arc::clone(&self);
            probes.spawn(async move {
                let backend = &inner.backends[index];
                let _probing = backend.probing.lock().await;
                // A task may have probed it (and found it down) while this waited.
                if !backend.due(Instant::now()) {
                    return;
                }
                let result =
                    system::probe(backend.addr, inner.config.connect_timeout, inner.config.probe_timeout).await;
                backend.probed(result, &inner.config, &inner.instance);
            });
        }
        while probes.join_next().await.is_some() {}
    }

    /// Probes every consumer now, then every probe interval, forever (until dropped).
    async fn probe_periodically(self: Arc<Self>) -> std::convert::Infallible {
        // A zero interval would spin.
        let interval = self.config.probe_interval.max(MIN_PROBE_INTERVAL);
        let mut all = true;
        loop {
            Arc::clone(&self).probe_round(all).await;
            all = false;
            tokio::time::sleep_until(deadline_after(interval)).await;
        }
    }
}

/// The shortest probe interval [`Producer::serve`] applies.
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// What an attempt sends: the request line (with its `\n`) and, on links, its context.
struct Task<'a> {
    line: &'a [u8],
    ctx: Option<&'a Context>,
}

impl Backend {
    /// Its link if it has one that takes tasks (`Some(Some)`), `Some(None)` if it takes no
    /// links, `None` when one should be asked for.
    fn current_link(&self) -> Option<Option<Arc<Link>>> {
        match &*self.link.lock().ok()? {
            LinkMode::Open(link) if link.usable() => Some(Some(Arc::clone(link))),
            LinkMode::Legacy => Some(None),
            LinkMode::Refused(until) if Instant::now() < *until => Some(None),
            _ => None,
        }
    }

    fn state(&self) -> (ConsumerState, Option<String>) {
        self.status.lock().map(|s| (s.state, s.reason.clone())).unwrap_or((ConsumerState::Down, None))
    }

    fn usable(&self, now: Instant) -> Usable {
        let Ok(status) = self.status.lock() else { return Usable::No };
        match status.state {
            ConsumerState::Up => Usable::Now,
            ConsumerState::Unprobed => Usable::AfterProbe,
            ConsumerState::Down | ConsumerState::Producer | ConsumerState::Itself if status.retry_at <= now => {
                Usable::AfterProbe
            }
            _ => Usable::No,
        }
    }

    /// Whether the periodic prober should probe it: it is up (still up?) or its backoff is
    /// over.
    fn due(&self, now: Instant) -> bool {
        self.usable(now) != Usable::No
    }

    /// Its state in a few words, for a task's `unavailable` error.
    fn describe(&self) -> String {
        let Ok(status) = self.status.lock() else { return format!("{}: unknown", self.addr) };
        let reason = status.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        match status.state {
            ConsumerState::Down => {
                let wait = status.retry_at.saturating_duration_since(Instant::now());
                format!("{}: down{reason}, next health probe in {}", self.addr, fmt_duration(round_ms(wait)))
            }
            ConsumerState::Producer | ConsumerState::Itself if status.reason.is_some() => {
                format!("{}: {}", self.addr, status.reason.as_deref().unwrap_or_default())
            }
            state => format!("{}: {state}{reason}", self.addr),
        }
    }

    /// It answered a task: it is up, and its backoff starts over.
    fn answered(&self) {
        let Ok(mut status) = self.status.lock() else { return };
        status.strikes = 0;
        if status.state != ConsumerState::Up {
            tracing::info!(consumer = %self.addr, "consumer {} is back up: it answered a task", self.addr);
            self.set(&mut status, ConsumerState::Up, None);
        }
    }

    /// A task or a probe failed on it for `reason`: down for the next backoff.
    fn failed(&self, reason: &str, config: &ProducerConfig) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let Ok(mut status) = self.status.lock() else { return };
        status.strikes = status.strikes.saturating_add(1);
        let backoff = backoff(config, status.strikes);
        status.retry_at = deadline_after(backoff);
        if status.state == ConsumerState::Down {
            tracing::debug!(consumer = %self.addr, %reason, strikes = status.strikes, backoff = %fmt_duration(backoff),
                "consumer still down");
            status.reason = Some(reason.to_owned());
        } else {
            tracing::warn!(consumer = %self.addr, strikes = status.strikes,
                "consumer {} is down: {reason}; no task goes to it for {}, then it is probed again",
                self.addr, fmt_duration(backoff));
            self.set(&mut status, ConsumerState::Down, Some(reason.to_owned()));
        }
    }

    /// Records a health probe's outcome, logging any change of state.
    fn probed(&self, result: Result<Health, ProbeError>, config: &ProducerConfig, instance: &str) {
        let health = match result {
            Ok(health) => health,
            Err(e) => return self.failed(&e.to_string(), config),
        };
        let Ok(mut status) = self.status.lock() else { return };
        let addr = self.addr;
        match health.role {
            Role::Consumer => {
                match status.state {
                    ConsumerState::Up => {}
                    ConsumerState::Unprobed => {
                        let services = health.fields.get("services").map(ToString::to_string).unwrap_or_default();
                        tracing::info!(consumer = %addr, %services, "consumer {addr} is up");
                    }
                    ConsumerState::Down => {
                        tracing::info!(consumer = %addr, down_for = %fmt_duration(round_ms(status.since.elapsed())),
                            "consumer {addr} is back up: it answered its health probe");
                    }
                    ConsumerState::Producer | ConsumerState::Itself => {
                        tracing::info!(consumer = %addr, "consumer {addr} is up: it now answers as a consumer");
                    }
                }
                if status.state != ConsumerState::Up {
                    self.set(&mut status, ConsumerState::Up, None);
                    // It may have been replaced by a version that takes links, or the other way.
                    if let Ok(mut link) = self.link.lock() {
                        *link = LinkMode::Unknown;
                    }
                }
            }
            Role::Producer => {
                let itself = health.instance.as_deref() == Some(instance);
                let (state, reason) = if itself {
                    (ConsumerState::Itself, "is this producer itself; a producer never forwards to itself")
                } else {
                    (
                        ConsumerState::Producer,
                        "answered as a producer, not a consumer; a producer never forwards to a producer",
                    )
                };
                let reason = reason.to_owned();
                if status.state != state {
                    tracing::error!(consumer = %addr, "{addr} {reason}: no task goes to it (check the consumer addresses)");
                    self.set(&mut status, state, Some(reason));
                }
                status.retry_at = deadline_after(config.probe_interval.max(MIN_PROBE_INTERVAL));
            }
        }
    }

    fn set(&self, status: &mut Status, state: ConsumerState, reason: Option<String>) {
        status.state = state;
        status.since = Instant::now();
        status.reason = reason;
    }
}

/// How long a consumer with `strikes` consecutive failures is avoided: the backoff, doubled for
/// each failure after the first, up to the maximum.
fn backoff(config: &ProducerConfig, strikes: u32) -> Duration {
    let factor = 1u32.checked_shl(strikes.saturating_sub(1)).unwrap_or(u32::MAX);
    config.backoff.saturating_mul(factor).min(config.max_backoff.max(config.backoff))
}

/// `d` rounded to whole milliseconds, for messages.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A hard-to-guess id for this producer: the process, the time, and the standard library's
/// per-process random hash keys.
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hash, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    std::process::id().hash(&mut hasher);
    std::time::SystemTime::now().hash(&mut hasher);
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut hasher);
    format!("{:016x}", hasher.finish())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_with_each_consecutive_failure_up_to_the_maximum() {
        let config =
            ProducerConfig::default().with_backoff(Duration::from_secs(2)).with_max_backoff(Duration::from_secs(30));
        let got: Vec<u64> = (1..=7).map(|strikes| backoff(&config, strikes).as_secs()).collect();
        assert_eq!(got, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(&config, u32::MAX), Duration::from_secs(30));
        let unlimited = ProducerConfig::default().with_backoff(Duration::MAX).with_max_backoff(Duration::MAX);
        assert_eq!(backoff(&unlimited, 40), Duration::MAX);
        // A maximum below the backoff does not shorten the first one.
        let odd =
            ProducerConfig::default().with_backoff(Duration::from_secs(5)).with_max_backoff(Duration::from_secs(1));
        assert_eq!(backoff(&odd, 3), Duration::from_secs(5));
    }

    #[test]
    fn instance_ids_differ_between_producers() {
        assert_ne!(instance_id(), instance_id());
    }

    #[test]
    fn metrics_name_only_targets_a_consumer_answered_as_its_own_and_at_most_max_labels() {
        let labels = Labels::default();
        // Any client picks the name; failing on the producer's side says nothing about it.
        for (i, kind) in ["unavailable", "deadline_exceeded", "cancelled", "transport"].into_iter().enumerate() {
            assert_eq!(labels.of(format!("random{i}.m"), kind, false), "unknown");
        }
        assert_eq!(labels.of("calc.nope".into(), "unknown_method", true), "unknown");
        assert_eq!(labels.of("calc.calculate".into(), "handler", true), "calc.calculate");
        // Known from now on, even while no consumer is up.
        assert_eq!(labels.of("calc.calculate".into(), "unavailable", false), "calc.calculate");
        for i in 0..2 * MAX_LABELS {
            labels.of(format!("svc{i}.m"), "ok", true);
        }
        assert_eq!(labels.0.lock().unwrap().len(), MAX_LABELS);
        assert_eq!(labels.of("late.m".into(), "ok", true), "unknown");
    }
}
