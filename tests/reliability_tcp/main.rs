//! The TCP half of the reliability suite: hostile input, a consumer killed under load, load
//! with every answer checked, and the security promises. Each test states what it tried in its
//! name and asserts the outcome; measurements are printed to stderr (run with
//! `-- --nocapture` to see them). One module per concern:
//!
//! - [`hostile_input`]: one table of cases, run against a Consumer and against the Producer
//!   (in front of two consumers). After every case the endpoint must still answer
//!   `calculator calculate 2 + 2` with `4`.
//! - [`parser`]: a property over the whole server path (bytes → line → registry → reply),
//!   beside the pure ones in `rpc-transport-tcp/tests/frame_props.rs`.
//! - [`load`]: a consumer aborted mid-run while 64 clients keep sending; 100,000 tasks
//!   through the Producer from 64 clients, each with its own argument and its own expected
//!   answer (about 15 s in a debug build on two idle cores, 35 s on two busy ones).
//!   `RPC_LOAD_TASKS` sets another count: `RPC_LOAD_TASKS=5000 cargo test --test
//!   reliability_tcp -- --nocapture one_hundred_thousand` for a quick look, or a million in a
//!   release build for a long soak.
//! - [`security`]: loopback defaults in the examples, only registered methods reachable,
//!   every limit configurable and documented with its default in `docs/PROTOCOL.md`.
//!
//! This file holds what the modules share: the probe service, the server harness, raw
//! exchanges and memory readings.
//!
//! Tests that measure memory or open thousands of sockets take [`HEAVY`] first, so that within
//! this binary they never overlap and the peak-RSS numbers are their own.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rpc::core::Registry;
use rpc::rpc_service;
use rpc::tcp::frame::{self, ParsedReply, RequestLine};
use rpc::tcp::{Consumer, ConsumerConfig, Limits, Producer, ProducerConfig};
use rpc_testkit::services;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::{JoinHandle, JoinSet};

/// Tasks in the load test when `RPC_LOAD_TASKS` is not set.
const DEFAULT_LOAD_TASKS: usize = 100_000;

/// Clients sending at once in the load and failover tests.
const CLIENTS: usize = 64;

/// Held by the tests that measure memory or open thousands of sockets.
static HEAVY: Mutex<()> = Mutex::const_new(());

/// The read timeout of the endpoints the bad-input table runs against: long enough that only
/// eviction (after 1 s without a complete request) can free a slot before a waiting client's
/// 2 s are up, short enough that silent clients do not make the suite slow.
const TABLE_READ_TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// A service with the shapes the cases need: a slow call, a skipped helper, inherent functions.

/// What `probe slow` tells the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    /// A call started: it is in flight now.
    Started(u64),
    /// A call ran to its end (its reply is being written).
    Finished(u64),
}

/// Test-only methods served beside the example services.
pub struct Probe {
    /// Told each time `slow` starts and ends.
    notices: mpsc::UnboundedSender<Notice>,
    /// Set if `helper` ever runs: it must not be reachable over the wire.
    helper_ran: Arc<AtomicBool>,
}

#[rpc_service]
impl Probe {
    /// Sleeps `ms` milliseconds, then answers `ms`.
    pub async fn slow(&self, ms: u64) -> u64 {
        let _ = self.notices.send(Notice::Started(ms));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let _ = self.notices.send(Notice::Finished(ms));
        ms
    }

    /// Sleeps `ms` milliseconds, then answers `id`: a task that is surely in flight for a
    /// while, with an answer of its own.
    pub async fn hold(id: u64, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        id
    }

    /// Not part of the RPC surface.
    #[rpc(skip)]
    pub fn helper(&self) -> u64 {
        self.helper_ran.store(true, Ordering::SeqCst);
        7
    }
}

impl Probe {
    /// An inherent function outside the `#[rpc_service]` block: not reachable either.
    pub fn internal(&self) -> u64 {
        self.helper_ran.store(true, Ordering::SeqCst);
        8
    }
}

/// The example services plus [`Probe`], with a blocking pool of two slots.
fn registry(notices: mpsc::UnboundedSender<Notice>, helper_ran: Arc<AtomicBool>) -> Registry {
    services::registry(Some(2)).with(Probe { notices, helper_ran }).expect("distinct, unreserved service names")
}

// ---------------------------------------------------------------------------------------------
// Servers and clients.

/// A Consumer or Producer serving in a task, on 127.0.0.1:0.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn consumer(registry: Registry, config: ConsumerConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let consumer = Consumer::new(Arc::new(registry), config);
        Server::spawn(listener, move |l, stopped| async move { consumer.serve(l, stopped).await })
    }

    async fn producer(producer: Producer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::spawn(listener, move |l, stopped| async move { producer.serve(l, stopped).await })
    }

    fn spawn<F, Fut>(listener: TcpListener, serve: F) -> Server
    where
        F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let handle = tokio::spawn(serve(listener, stopped));
        Server { addr, stop: Some(stop), handle: Some(handle) }
    }

    /// Graceful shutdown; `serve` must return `Ok` within the bound.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            within(40, handle).await.expect("server task panicked").expect("serve failed");
        }
    }

    /// Aborts the serve task: the listener and every connection vanish at once, as when the
    /// process dies.
    async fn kill(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Bounds a step so a hang fails the test instead of stalling CI.
async fn within<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test step timed out")
}

/// Sends `bytes` (reading concurrently, so nothing deadlocks on full buffers), closes the
/// sending side if `eof`, and returns everything the server sent until it closed.
async fn exchange(addr: SocketAddr, bytes: &[u8], eof: bool) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        // The server may close before taking everything; that is what some cases are about.
        let _ = write.write_all(&bytes).await;
        if eof {
            let _ = write.shutdown().await;
        }
        write
    });
    let mut reply = Vec::new();
    let _ = read.read_to_end(&mut reply).await;
    drop(writer.await.unwrap());
    reply
}

/// One request line, its reply as text (bounded in time).
async fn ask(addr: SocketAddr, line: &str) -> String {
    let reply = within(30, exchange(addr, line.as_bytes(), false)).await;
    String::from_utf8(reply).expect("the reply is UTF-8")
}

/// Asserts `reply` is a well-formed error reply of `kind` whose first line contains `says`, and
/// returns its JSON line.
#[track_caller]
fn assert_error(reply: &[u8], kind: &str, says: &str) -> Value {
    let text = std::str::from_utf8(reply).unwrap_or_else(|_| panic!("reply is not UTF-8: {reply:?}"));
    let mut lines = text.split_terminator('\n');
    let (Some(human), Some(json), None) = (lines.next(), lines.next(), lines.next()) else {
        panic!("not an error reply (two lines): {text:?}")
    };
    assert!(text.ends_with('\n'), "{text:?}");
    assert!(human.starts_with(&format!("ERROR {kind}: ")), "expected {kind}: {text:?}");
    assert!(human.contains(says), "expected {says:?} in {text:?}");
    let json: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("second line is not JSON ({e}): {text:?}"));
    assert_eq!(json["kind"], kind, "{text:?}");
    json
}

/// Makes the next close send a reset (SO_LINGER 0) instead of a FIN.
#[allow(deprecated)]
fn reset_on_close(stream: &TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
}

/// A field of `/proc/self/status`, in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// The process's RSS once the allocator has handed its free pages back to the kernel: close
/// to the memory really in use.
fn live_rss_kib() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: glibc's malloc_trim only releases free memory, and is thread safe.
        unsafe { malloc_trim(0) };
    }
    status_kib("VmRSS")
}

/// Peak-RSS bookkeeping for one measured step.
struct Memory {
    base_kib: u64,
}

impl Memory {
    /// Resets the process's peak RSS (`echo 5 > /proc/self/clear_refs`) to its [live
    /// RSS](live_rss_kib) (so that memory earlier tests freed cannot hide this step's growth),
    /// and remembers it.
    fn start() -> Memory {
        let base_kib = live_rss_kib();
        std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
        Memory { base_kib }
    }

    /// How far the peak rose above the start, in KiB.
    fn peak_growth_kib(&self) -> u64 {
        status_kib("VmHWM").saturating_sub(self.base_kib)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Which server a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Consumer,
    Producer,
}

/// What a case runs against: one consumer, or a producer in front of two.
struct Endpoint {
    kind: Kind,
    /// Where clients connect.
    addr: SocketAddr,
    /// `probe slow` notices from every consumer.
    notices: Mutex<mpsc::UnboundedReceiver<Notice>>,
    helper_ran: Arc<AtomicBool>,
    producer: Option<Producer>,
    servers: std::sync::Mutex<Vec<Server>>,
}

impl Endpoint {
    /// An endpoint with the table's limits.
    async fn start(kind: Kind) -> Endpoint {
        Endpoint::with_limits(kind, Limits::default().with_read_timeout(TABLE_READ_TIMEOUT)).await
    }

    /// An endpoint whose client-facing server applies `limits`.
    async fn with_limits(kind: Kind, limits: Limits) -> Endpoint {
        let (tx, rx) = mpsc::unbounded_channel();
        let helper_ran = Arc::new(AtomicBool::new(false));
        let mut servers = Vec::new();
        let (addr, producer) = match kind {
            Kind::Consumer => {
                let config = ConsumerConfig::default().with_limits(limits);
                let server = Server::consumer(registry(tx, Arc::clone(&helper_ran)), config).await;
                let addr = server.addr;
                servers.push(server);
                (addr, None)
            }
            Kind::Producer => {
                for _ in 0..2 {
                    let registry = registry(tx.clone(), Arc::clone(&helper_ran));
                    servers.push(Server::consumer(registry, ConsumerConfig::default()).await);
                }
                let consumers = servers.iter().map(|s| s.addr).collect();
                let producer = Producer::new(consumers, ProducerConfig::default().with_limits(limits));
                let server = Server::producer(producer.clone()).await;
                let addr = server.addr;
                servers.push(server);
                (addr, Some(producer))
            }
        };
        Endpoint { kind, addr, notices: Mutex::new(rx), helper_ran, producer, servers: std::sync::Mutex::new(servers) }
    }

    /// Waits (bounded) for the next `probe slow` notice.
    async fn notice(&self) -> Notice {
        within(10, self.notices.lock().await.recv()).await.expect("probe sender alive")
    }

    /// Waits (bounded) until the producer has no task in flight to any consumer.
    async fn producer_settled(&self) {
        let Some(producer) = &self.producer else { return };
        let deadline = Instant::now() + Duration::from_secs(20);
        while producer.stats().iter().any(|s| s.outstanding > 0) {
            assert!(Instant::now() < deadline, "tasks stuck in flight: {:?}", producer.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the producer first, then the consumers; each must stop gracefully.
    async fn stop(&self) {
        let servers = std::mem::take(&mut *self.servers.lock().unwrap());
        for server in servers.into_iter().rev() {
            server.stop().await;
        }
    }
}

mod hostile_input;
mod load;
mod parser;
mod security;
