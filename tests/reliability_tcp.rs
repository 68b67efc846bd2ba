//! The TCP half of the reliability suite (issue 6): hostile input, a consumer killed under
//! load, load with every answer checked, and the security promises. Each test states what it
//! tried in its name and asserts the outcome; measurements are printed to stderr (run with
//! `-- --nocapture` to see them).
//!
//! - **Bad input** (§1): one table of cases, [`CASES`], run against a Consumer and against the
//!   Producer (in front of two consumers). After every case the endpoint must still answer
//!   `calculator calculate 2 + 2` with `4`.
//! - **Parser properties** (§2): a property over the whole server path (bytes → line →
//!   registry → reply), beside the pure ones in `rpc-transport-tcp/tests/frame_props.rs`.
//! - **Faults** (§4): a consumer aborted mid-run while 64 clients keep sending.
//! - **Load** (§5): 100,000 tasks through the Producer from 64 clients, each with its own
//!   argument and its own expected answer (about 15 s in a debug build on two idle cores, 35 s
//!   on two busy ones). `RPC_LOAD_TASKS` sets another count: `RPC_LOAD_TASKS=5000 cargo test
//!   --test reliability_tcp -- --nocapture one_hundred_thousand` for a quick look, or a million in a
//!   release build for a long soak.
//! - **Security** (§6): loopback defaults in the examples, only registered methods reachable,
//!   every limit configurable and documented with its default in `docs/PROTOCOL.md`.
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

/// Tasks in the load test when `RPC_LOAD_TASKS` is not set: the 100,000.
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

// ---------------------------------------------------------------------------------------------
// §1: the endpoints and the table.

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

type CaseFuture = Pin<Box<dyn Future<Output = String> + Send>>;

/// One hostile input: what the client does, and what it must get. `run` asserts and returns a
/// note (measurements) for the report.
struct Case {
    name: &'static str,
    /// Measures memory or opens thousands of sockets: runs holding [`HEAVY`].
    heavy: bool,
    run: fn(Arc<Endpoint>) -> CaseFuture,
}

/// Every §1 case, in one list, for both endpoints.
const CASES: &[Case] = &[
    Case { name: "an empty line", heavy: false, run: |ep| Box::pin(empty_line(ep)) },
    Case { name: "only spaces", heavy: false, run: |ep| Box::pin(only_spaces(ep)) },
    Case { name: "runs of spaces between tokens", heavy: false, run: |ep| Box::pin(runs_of_spaces(ep)) },
    Case { name: "other whitespace between tokens", heavy: false, run: |ep| Box::pin(other_whitespace(ep)) },
    Case { name: "an unknown class or method", heavy: false, run: |ep| Box::pin(unknown_names(ep)) },
    Case { name: "a class name alone", heavy: false, run: |ep| Box::pin(class_alone(ep)) },
    Case { name: "too few or too many arguments", heavy: false, run: |ep| Box::pin(wrong_argument_count(ep)) },
    Case { name: "undecodable arguments", heavy: false, run: |ep| Box::pin(undecodable_arguments(ep)) },
    Case { name: "invalid UTF-8", heavy: false, run: |ep| Box::pin(invalid_utf8(ep)) },
    Case { name: "NUL bytes", heavy: false, run: |ep| Box::pin(nul_bytes(ep)) },
    Case { name: "an HTTP request", heavy: false, run: |ep| Box::pin(http_request(ep)) },
    Case { name: "10 MB without a newline", heavy: true, run: |ep| Box::pin(ten_megabytes_without_newline(ep)) },
    Case { name: "a client that sends nothing", heavy: false, run: |ep| Box::pin(silent_client(ep)) },
    Case { name: "half a line, then a stall", heavy: false, run: |ep| Box::pin(half_line_then_stall(ep)) },
    Case { name: "a line trickled a byte at a time", heavy: false, run: |ep| Box::pin(trickle(ep)) },
    Case { name: "a reset before reading the reply", heavy: false, run: |ep| Box::pin(reset_before_reply(ep)) },
    Case { name: "2,000 idle connections", heavy: true, run: |ep| Box::pin(two_thousand_idle_connections(ep)) },
];

async fn empty_line(ep: Arc<Endpoint>) -> String {
    for bytes in [&b"\n"[..], b"\r\n"] {
        assert_error(&exchange(ep.addr, bytes, false).await, "bad_request", "empty request");
    }
    // A client that connects and closes its sending side at once sent an empty request.
    assert_error(&exchange(ep.addr, b"", true).await, "bad_request", "empty request");
    "bad_request: empty request".into()
}

async fn only_spaces(ep: Arc<Endpoint>) -> String {
    for bytes in [&b" \n"[..], b"          \n", b"   \r\n", b"    "] {
        assert_error(&exchange(ep.addr, bytes, true).await, "bad_request", "empty request");
    }
    "bad_request: empty request".into()
}

async fn runs_of_spaces(ep: Arc<Endpoint>) -> String {
    // PROTOCOL.md: tokens are separated by runs of ASCII spaces; outer spaces are ignored.
    for line in [
        "calculator  calculate 2 + 2\n",
        "   calculator     calculate   2    +     2    \n",
        "calculator calculate 2 + 2   \r\n",
    ] {
        assert_eq!(ask(ep.addr, line).await, "4\n", "{line:?}");
    }
    // A run of spaces is one separator, never an empty argument (`predict` takes them all).
    assert!(ask(ep.addr, "neural_net  predict  1  0  \n").await.starts_with("{\"class\":1,"));
    let wide = format!(
        "calculator{}calculate{}1{}+{}2\n",
        " ".repeat(1000),
        " ".repeat(1000),
        " ".repeat(1000),
        " ".repeat(1000)
    );
    assert_eq!(ask(ep.addr, &wide).await, "3\n");
    "the same request as single spaces".into()
}

async fn other_whitespace(ep: Arc<Endpoint>) -> String {
    // A tab is a control character: refused, not guessed at.
    assert_error(
        &exchange(ep.addr, b"calculator\tcalculate 2 + 2\n", false).await,
        "bad_request",
        "control character 0x09",
    );
    // A lone CR inside the line too.
    assert_error(
        &exchange(ep.addr, b"calculator calculate 2\r+ 2\n", false).await,
        "bad_request",
        "control character 0x0d",
    );
    // A no-break space is an ordinary token character: "2\u{a0}+" is one argument.
    let reply = ask(ep.addr, "calculator calculate 2\u{a0}+ 2\n").await;
    let json = assert_error(reply.as_bytes(), "argument_count", "expected 3 arguments");
    assert_eq!(json["got"], 2, "{reply}");
    "tab and CR: bad_request; U+00A0 is part of a token".into()
}

async fn unknown_names(ep: Arc<Endpoint>) -> String {
    let reply = ask(ep.addr, "nosuch calculate 2 + 2\n").await;
    let json = assert_error(reply.as_bytes(), "unknown_service", "unknown service 'nosuch'");
    assert_eq!(json["known"], serde_json::json!(["calculator", "neural_net", "probe"]), "{reply}");
    let reply = ask(ep.addr, "calculator sqrt 2\n").await;
    let json = assert_error(reply.as_bytes(), "unknown_method", "unknown method 'sqrt'");
    assert_eq!(json["known"], serde_json::json!(["calculate"]), "{reply}");
    // Names are exact: no case folding, no qualified forms.
    for line in ["Calculator calculate 2 + 2\n", "calculator.calculate 2 + 2\n"] {
        assert_error(ask(ep.addr, line).await.as_bytes(), "unknown_service", "unknown service");
    }
    for line in ["calculator Calculate 2 + 2\n", "calculator calculator::calculate 2 + 2\n"] {
        assert_error(ask(ep.addr, line).await.as_bytes(), "unknown_method", "unknown method");
    }
    "unknown_service / unknown_method, listing the known names".into()
}

async fn class_alone(ep: Arc<Endpoint>) -> String {
    assert_error(&exchange(ep.addr, b"calculator\n", false).await, "bad_request", "names no method");
    "bad_request: names no method".into()
}

async fn wrong_argument_count(ep: Arc<Endpoint>) -> String {
    for (line, expected, got) in [
        ("calculator calculate\n", 3, 0),
        ("calculator calculate 2 +\n", 3, 2),
        ("calculator calculate 2 + 2 2\n", 3, 4),
        ("neural_net architecture now\n", 0, 1),
        ("probe slow\n", 1, 0),
    ] {
        let reply = ask(ep.addr, line).await;
        let json = assert_error(reply.as_bytes(), "argument_count", "expected");
        assert_eq!((json["expected"].as_u64(), json["got"].as_u64()), (Some(expected), Some(got)), "{line:?}: {reply}");
    }
    "argument_count with expected and got".into()
}

async fn undecodable_arguments(ep: Arc<Endpoint>) -> String {
    for (line, param) in [
        ("calculator calculate two + 2\n", "a"),
        ("calculator calculate 2 + 0x10\n", "b"),
        ("calculator calculate 2 + [2]\n", "b"),
        ("neural_net predict 1 zero\n", "inputs"),
        ("probe slow -5\n", "ms"),
        ("probe slow 99999999999999999999999\n", "ms"),
        ("probe hold 1 {\"ms\":1}\n", "ms"),
    ] {
        let reply = ask(ep.addr, line).await;
        let json = assert_error(reply.as_bytes(), "invalid_argument", &format!("'{param}'"));
        assert_eq!(json["param"], param, "{line:?}: {reply}");
    }
    // Decodable but outside what the method accepts: its own error, not a crash.
    assert_error(ask(ep.addr, "calculator calculate 1e999 + 1\n").await.as_bytes(), "handler", "non_finite");
    assert_error(ask(ep.addr, "calculator calculate NaN + 1\n").await.as_bytes(), "handler", "non_finite");
    assert_error(ask(ep.addr, "neural_net predict 1 inf\n").await.as_bytes(), "handler", "invalid_input");
    "invalid_argument naming the parameter; handler errors for out-of-range values".into()
}

async fn invalid_utf8(ep: Arc<Endpoint>) -> String {
    for bytes in [
        &b"calculator calculate \xff\xfe + 2\n"[..],
        b"\xc0\xaf\n",                              // an overlong encoding of '/'
        b"calculator calculate \xed\xa0\x80 + 2\n", // a UTF-16 surrogate
        b"calculator calculate 2 + 2\xe2\x82\n",    // truncated at the end of the line
    ] {
        assert_error(&exchange(ep.addr, bytes, false).await, "bad_request", "not valid UTF-8");
    }
    "bad_request: not valid UTF-8 (with the offset)".into()
}

async fn nul_bytes(ep: Arc<Endpoint>) -> String {
    assert_error(
        &exchange(ep.addr, b"calculator calculate 2\0 + 2\n", false).await,
        "bad_request",
        "control character 0x00 at offset 22",
    );
    assert_error(&exchange(ep.addr, b"\0\0\0\0\n", false).await, "bad_request", "control character 0x00 at offset 0");
    assert_error(&exchange(ep.addr, &[0u8; 4096], true).await, "bad_request", "control character 0x00");
    // Bytes after the request line are not part of the request, NULs included.
    assert_eq!(exchange(ep.addr, b"calculator calculate 2 + 2\n\0\0\0\0", false).await, b"4\n");
    "bad_request: control character 0x00".into()
}

async fn http_request(ep: Arc<Endpoint>) -> String {
    let get = exchange(ep.addr, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n", false).await;
    assert_error(&get, "unknown_service", "unknown service 'GET'");
    let post = b"POST /calculator/calculate HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n2 + 2\r\n\r\n";
    assert_error(&exchange(ep.addr, post, false).await, "unknown_service", "unknown service 'POST'");
    // A TLS ClientHello: binary, refused before anything else looks at it.
    let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    assert_error(&exchange(ep.addr, hello, true).await, "bad_request", "not valid UTF-8 (invalid byte at offset 8)");
    "unknown_service 'GET' / 'POST'; TLS hello: bad_request".into()
}

async fn ten_megabytes_without_newline(ep: Arc<Endpoint>) -> String {
    const FLOODS: usize = 8;
    const SIZE: usize = 10 * 1024 * 1024;
    let memory = Memory::start();
    let started = Instant::now();
    let mut floods = JoinSet::new();
    for _ in 0..FLOODS {
        let addr = ep.addr;
        floods.spawn(async move { flood(addr, SIZE).await });
    }
    let mut total = 0;
    while let Some(reply) = floods.join_next().await {
        let (reply, sent) = reply.unwrap();
        assert_error(&reply, "bad_request", "request line longer than 65536 bytes");
        assert!(sent > frame::DEFAULT_MAX_LINE, "only {sent} bytes went out");
        total += sent;
    }
    let elapsed = started.elapsed();
    let growth = memory.peak_growth_kib();
    // Buffering the floods would take 80 MiB; the server keeps at most max_line + 1 bytes and
    // one 8 KiB drain buffer per connection.
    assert!(growth < 12 * 1024, "peak RSS rose by {} during {FLOODS} x 10 MiB floods", mib(growth));
    format!(
        "{FLOODS} concurrent 10 MiB floods ({} MiB sent) answered and drained in {elapsed:.2?}; peak RSS +{} (VmHWM {})",
        total >> 20,
        mib(growth),
        mib(status_kib("VmHWM"))
    )
}

/// Sends `size` bytes of `a` with no newline from one reused 64 KiB chunk (so the client's own
/// memory does not count), then closes its sending side; returns the reply and the bytes that
/// went out.
async fn flood(addr: SocketAddr, size: usize) -> (Vec<u8>, usize) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            let n = chunk.len().min(size - sent);
            if write.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        let _ = write.shutdown().await;
        sent
    });
    let mut reply = Vec::new();
    within(60, read.read_to_end(&mut reply)).await.expect("reading the reply");
    let sent = within(60, writer).await.unwrap();
    (reply, sent)
}

/// The documented answer to a client that did not finish its request in time.
fn assert_read_timeout(reply: &[u8], elapsed: Duration) {
    let secs = TABLE_READ_TIMEOUT.as_secs();
    assert_error(reply, "bad_request", &format!("no complete request within {secs} s"));
    assert!(elapsed >= TABLE_READ_TIMEOUT - Duration::from_millis(100), "answered after {elapsed:?}");
    assert!(elapsed < TABLE_READ_TIMEOUT + Duration::from_secs(10), "answered after {elapsed:?}");
}

async fn silent_client(ep: Arc<Endpoint>) -> String {
    let started = Instant::now();
    let mut stream = TcpStream::connect(ep.addr).await.unwrap();
    let mut reply = Vec::new();
    within(30, stream.read_to_end(&mut reply)).await.unwrap();
    assert_read_timeout(&reply, started.elapsed());
    format!("bad_request after {:.2?}", started.elapsed())
}

async fn half_line_then_stall(ep: Arc<Endpoint>) -> String {
    let started = Instant::now();
    let mut stream = TcpStream::connect(ep.addr).await.unwrap();
    stream.write_all(b"probe slow 1").await.unwrap();
    let mut reply = Vec::new();
    within(30, stream.read_to_end(&mut reply)).await.unwrap();
    assert_read_timeout(&reply, started.elapsed());
    // The partial request never ran.
    assert!(ep.notices.lock().await.try_recv().is_err(), "a partial line was executed");
    format!("bad_request after {:.2?}; nothing ran", started.elapsed())
}

async fn trickle(ep: Arc<Endpoint>) -> String {
    let started = Instant::now();
    let stream = TcpStream::connect(ep.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // One byte every 250 ms: 26 bytes would take 6.5 s, past the 3 s deadline.
        for byte in b"calculator calculate 2 + 2\n" {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        write
    });
    let mut reply = Vec::new();
    within(30, read.read_to_end(&mut reply)).await.unwrap();
    let answered = started.elapsed();
    assert_read_timeout(&reply, answered);
    drop(within(30, writer).await.unwrap());
    format!("bad_request after {answered:.2?}: trickling does not extend the deadline")
}

async fn reset_before_reply(ep: Arc<Endpoint>) -> String {
    // During a call: the reset arrives while the handler runs.
    let mut stream = TcpStream::connect(ep.addr).await.unwrap();
    stream.write_all(b"probe slow 300\n").await.unwrap();
    assert_eq!(ep.notice().await, Notice::Started(300));
    reset_on_close(&stream);
    drop(stream);
    // Right after sending: the reply is not even computed yet.
    for line in [&b"calculator calculate 2 + 2\n"[..], b"neural_net predict 1 0\n", b"calculator calcu"] {
        let mut stream = TcpStream::connect(ep.addr).await.unwrap();
        stream.write_all(line).await.unwrap();
        reset_on_close(&stream);
        drop(stream);
    }
    // A reset with unread request bytes beyond the line.
    let mut stream = TcpStream::connect(ep.addr).await.unwrap();
    stream.write_all(b"calculator calculate 2 + 2\nmore bytes the server never reads").await.unwrap();
    reset_on_close(&stream);
    drop(stream);
    // The reset cancels the call: the handler is dropped before its end (its `Finished`
    // never comes), and nothing stays in flight.
    let finished = tokio::time::timeout(Duration::from_millis(1000), ep.notice()).await;
    assert!(finished.is_err(), "the call ran on after its client reset the connection: {finished:?}");
    ep.producer_settled().await;
    "the call was cancelled, its handler dropped; nothing left in flight".into()
}

async fn two_thousand_idle_connections(ep: Arc<Endpoint>) -> String {
    const IDLE: usize = 2000;
    const NORMAL: usize = 40;
    let memory = Memory::start();
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(within(30, TcpStream::connect(ep.addr)).await.expect("connect"));
    }
    let connected_in = started.elapsed();
    // Normal clients while the 2,000 are still open: 20 one after the other, then 20 at once.
    let mut latencies = Vec::with_capacity(NORMAL);
    for i in 0..NORMAL / 2 {
        let t = Instant::now();
        assert_eq!(ask(ep.addr, &format!("calculator calculate {i} + 0.5\n")).await, format!("{i}.5\n"));
        latencies.push(t.elapsed());
    }
    let mut burst = JoinSet::new();
    for i in NORMAL / 2..NORMAL {
        let addr = ep.addr;
        burst.spawn(async move {
            let t = Instant::now();
            let reply = ask(addr, &format!("calculator calculate {i} + 0.5\n")).await;
            (i, reply, t.elapsed())
        });
    }
    while let Some(done) = burst.join_next().await {
        let (i, reply, latency) = done.unwrap();
        assert_eq!(reply, format!("{i}.5\n"));
        latencies.push(latency);
    }
    latencies.sort();
    let (median, max) = (latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
    // Without eviction every slot stays taken for the 3 s read timeout and a waiting client is
    // turned away after 2 s; with it, a slot frees after about 1 s of silence.
    assert!(max < Duration::from_secs(5), "a normal client waited {max:?}");

    // Every idle connection is answered or closed, none is left hanging.
    let mut outcomes = JoinSet::new();
    for mut stream in idle {
        outcomes.spawn(async move {
            let mut reply = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut reply)).await;
            assert!(read.is_ok(), "an idle connection was never answered nor closed");
            let text = String::from_utf8_lossy(&reply).into_owned();
            if text.contains("closed to make room") {
                "evicted"
            } else if text.contains("too many connections") {
                "turned away"
            } else if text.contains("no complete request") {
                "timed out"
            } else {
                assert!(text.is_empty(), "unexpected reply to an idle connection: {text:?}");
                "closed"
            }
        });
    }
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    while let Some(outcome) = outcomes.join_next().await {
        *counts.entry(outcome.unwrap()).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), IDLE);
    format!(
        "{IDLE} idle connected in {connected_in:.2?}; {NORMAL} normal clients: median {median:.2?}, max {max:.2?}; \
         idle outcomes {counts:?}; peak RSS +{}",
        mib(memory.peak_growth_kib())
    )
}

/// Runs every case against `kind`, checking after each one that the endpoint still answers
/// the seed's request; reports every failing case at once.
async fn run_every_case(kind: Kind) {
    let ep = Arc::new(Endpoint::start(kind).await);
    let mut failures = Vec::new();
    for case in CASES {
        let heavy = if case.heavy { Some(HEAVY.lock().await) } else { None };
        let started = Instant::now();
        match tokio::spawn((case.run)(Arc::clone(&ep))).await {
            Ok(note) => eprintln!("[{kind:?}] {}: {note} ({:.2?})", case.name, started.elapsed()),
            Err(e) => failures.push(format!("{}: {}", case.name, panic_text(e))),
        }
        drop(heavy);
        let reply =
            tokio::time::timeout(Duration::from_secs(30), exchange(ep.addr, b"calculator calculate 2 + 2\n", false))
                .await;
        if !matches!(&reply, Ok(bytes) if bytes == b"4\n") {
            failures.push(format!("{}: afterwards `calculator calculate 2 + 2` got {reply:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "[{kind:?}] failing cases:\n{}", failures.join("\n"));
    assert!(!ep.helper_ran.load(Ordering::SeqCst), "a skipped method ran");
    ep.producer_settled().await;
    if let Some(producer) = &ep.producer {
        // Bad input is the client's fault: no consumer is ever blamed for it.
        let stats = producer.stats();
        assert!(stats.iter().all(|s| s.failures == 0 && !s.down), "{stats:?}");
        assert!(stats.iter().all(|s| s.served > 0), "{stats:?}");
    }
    ep.stop().await;
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => rpc::core::run::panic_message(payload.as_ref()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_documented_answer_from_a_consumer_which_keeps_serving() {
    run_every_case(Kind::Consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_documented_answer_from_the_producer_which_keeps_serving() {
    run_every_case(Kind::Producer).await;
}

// ---------------------------------------------------------------------------------------------
// §2: any bytes, through a real consumer.

/// Request lines aimed at the real methods (and at names that do not exist), with arguments of
/// every shape and count, odd spacing and endings; and raw bytes.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let target = prop_oneof![
        4 => Just(("calculator", "calculate")),
        1 => Just(("neural_net", "predict")),
        1 => Just(("neural_net", "architecture")),
        1 => Just(("probe", "slow")),
        1 => Just(("probe", "hold")),
        1 => Just(("probe", "helper")),
        1 => Just(("calculator", "default")),
    ]
    .prop_map(|(s, m)| (s.to_owned(), m.to_owned()));
    let target = prop_oneof![4 => target, 1 => ("[^ \\x00-\\x1f\\x7f]{1,8}", "[^ \\x00-\\x1f\\x7f]{1,8}")];
    let arg = prop_oneof![
        3 => (-50i64..50).prop_map(|n| n.to_string()),
        2 => prop_oneof![Just("+"), Just("-"), Just("*"), Just("/"), Just("%")].prop_map(str::to_owned),
        1 => any::<f64>().prop_map(|f| f.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop_oneof![Just("null"), Just("[1,2]"), Just("{}"), Just("\"x\""), Just("1e999"), Just("-0"), Just("NaN"), Just("ERROR")]
            .prop_map(str::to_owned),
        1 => "[^ \\x00-\\x1f\\x7f]{1,10}",
    ];
    let separator = prop_oneof![3 => Just(" ".to_owned()), 1 => " {2,5}"];
    let word = (separator, arg);
    // Three arguments half the time: what `calculate` takes, so many calls get to run.
    let args = prop_oneof![proptest::collection::vec(word.clone(), 3..=3), proptest::collection::vec(word, 0..6)];
    let line = (target, args, " {0,3}", prop_oneof![Just("\n"), Just("\r\n"), Just("")]).prop_map(
        |((service, method), args, trailing, end)| {
            let mut line = format!("{service} {method}");
            for (sep, arg) in args {
                line.push_str(&sep);
                line.push_str(&arg);
            }
            line.push_str(&trailing);
            line.push_str(end);
            line.into_bytes()
        },
    );
    let number = prop_oneof![(-1000i64..1000).prop_map(|n| n.to_string()), any::<f64>().prop_map(|f| f.to_string())];
    let operator = prop_oneof![Just("+"), Just("-"), Just("*"), Just("/")];
    let calculation = (number.clone(), operator, number)
        .prop_map(|(a, op, b)| format!("calculator calculate {a} {op} {b}\n").into_bytes());
    prop_oneof![2 => calculation, 4 => line, 1 => proptest::collection::vec(any::<u8>(), 0..200)]
}

/// What `calculator calculate a op b` must answer, computed here, when `bytes` is one.
fn calculation(bytes: &[u8]) -> Option<f64> {
    let line = RequestLine::parse(bytes.strip_suffix(b"\n").unwrap_or(bytes)).ok()?;
    let [a, op, b] = &line.args[..] else { return None };
    if (line.service.as_str(), line.method.as_str()) != ("calculator", "calculate") {
        return None;
    }
    let (a, b): (f64, f64) = (a.parse().ok()?, b.parse().ok()?);
    match op.as_str() {
        "+" => Some(a + b),
        "-" => Some(a - b),
        "*" => Some(a * b),
        "/" => Some(a / b),
        _ => None,
    }
}

#[test]
fn any_bytes_sent_to_a_consumer_get_a_well_formed_reply_and_never_a_panic() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let helper_ran = Arc::new(AtomicBool::new(false));
    // A short handler deadline keeps `probe slow 39` from slowing the run; it is an answer too.
    let config = ConsumerConfig::default().with_max_deadline(Duration::from_millis(20));
    let server = runtime.block_on(Server::consumer(registry(tx, Arc::clone(&helper_ran)), config));
    let addr = server.addr;
    let documented = [
        "bad_request",
        "unknown_service",
        "unknown_method",
        "argument_count",
        "invalid_argument",
        "handler",
        "deadline_exceeded",
    ];
    let kinds = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(1000)
    });
    runner
        .run(&request_bytes(), |bytes| {
            let reply = runtime.block_on(async { within(30, exchange(addr, &bytes, true)).await });
            match frame::parse_reply(&reply, "t") {
                Ok(ParsedReply::Success(text)) => {
                    if let Some(expected) = calculation(&bytes) {
                        prop_assert_eq!(
                            text.parse::<f64>().ok(),
                            Some(expected),
                            "{:?}",
                            String::from_utf8_lossy(&bytes)
                        );
                    }
                    *kinds.lock().unwrap().entry("ok".into()).or_default() += 1;
                }
                Ok(ParsedReply::Error(e)) => {
                    prop_assert!(documented.contains(&e.kind()), "{bytes:?} got {e:?}");
                    *kinds.lock().unwrap().entry(e.kind().into()).or_default() += 1;
                }
                Err(e) => prop_assert!(false, "{bytes:?} got a malformed reply {reply:?}: {e}"),
            }
            Ok(())
        })
        .unwrap();
    let kinds = kinds.into_inner().unwrap();
    eprintln!("reply kinds over the generated requests: {kinds:?}");
    assert!(kinds.get("ok").is_some_and(|&n| n > 0), "no request succeeded: {kinds:?}");
    assert!(!helper_ran.load(Ordering::SeqCst), "a skipped method ran");
    runtime.block_on(server.stop());
}

// ---------------------------------------------------------------------------------------------
// §4 and §5: load, with every answer checked.

/// How the tasks of a run ended.
#[derive(Debug, Default)]
struct Tally {
    /// The task's own answer, byte for byte.
    ok: AtomicUsize,
    /// Another task's answer: the worst outcome.
    crossed: AtomicUsize,
    /// An error reply, a malformed reply, or no reply in 60 s.
    lost: AtomicUsize,
    /// The first few problems, for the failure message.
    samples: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn note(&self, what: String) {
        let mut samples = self.samples.lock().unwrap();
        if samples.len() < 10 {
            samples.push(what);
        }
    }
}

/// Task `i` of a run: `calculator calculate <i> + 0.5` answers `<i>.5`; every `hold_every`-th
/// task is instead `probe hold <i> <ms>` (in flight for `ms`), answering `<i>`.
fn task(i: usize, hold: Option<(usize, u64)>) -> (String, String) {
    match hold {
        Some((every, ms)) if i % every == 0 => (format!("probe hold {i} {ms}\n"), format!("{i}\n")),
        _ => (format!("calculator calculate {i} + 0.5\n"), format!("{i}.5\n")),
    }
}

/// The task index an answer belongs to, if it is any task's answer.
fn owner(reply: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(reply).ok()?.strip_suffix('\n')?;
    text.strip_suffix(".5").unwrap_or(text).parse().ok()
}

/// One exchange that reports failures instead of panicking.
async fn try_exchange(addr: SocketAddr, line: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(line).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(reply)
}

/// `clients` clients take tasks `0..tasks` in turn and send each to `addr`, checking every
/// answer against its own task.
async fn run_tasks(
    addr: SocketAddr,
    tasks: usize,
    clients: usize,
    hold: Option<(usize, u64)>,
    done: Arc<AtomicUsize>,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (tally, next, done) = (Arc::clone(&tally), Arc::clone(&next), Arc::clone(&done));
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    break;
                }
                let (line, expected) = task(i, hold);
                match tokio::time::timeout(Duration::from_secs(60), try_exchange(addr, line.as_bytes())).await {
                    Ok(Ok(reply)) if reply == expected.as_bytes() => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(reply)) if owner(&reply).is_some() => {
                        tally.crossed.fetch_add(1, Ordering::Relaxed);
                        tally.note(format!("task {i} ({line:?}) got {:?}", String::from_utf8_lossy(&reply)));
                    }
                    Ok(Ok(reply)) => {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        tally.note(format!("task {i} ({line:?}) got {:?}", String::from_utf8_lossy(&reply)));
                    }
                    Ok(Err(e)) => {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        tally.note(format!("task {i} ({line:?}): {e}"));
                    }
                    Err(_) => {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        tally.note(format!("task {i} ({line:?}): no reply within 60 s"));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(client) = set.join_next().await {
        client.expect("a client task panicked");
    }
    tally
}

#[track_caller]
fn assert_all_answered(tally: &Tally, tasks: usize) {
    let (ok, crossed, lost) =
        (tally.ok.load(Ordering::Relaxed), tally.crossed.load(Ordering::Relaxed), tally.lost.load(Ordering::Relaxed));
    let samples = tally.samples.lock().unwrap().join("\n");
    assert_eq!((crossed, lost), (0, 0), "{crossed} crossed and {lost} lost of {tasks}:\n{samples}");
    assert_eq!(ok, tasks, "{samples}");
}

async fn start_consumers(n: usize) -> Vec<Server> {
    let mut servers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, _) = mpsc::unbounded_channel();
        servers.push(Server::consumer(registry(tx, Arc::default()), ConsumerConfig::default()).await);
    }
    servers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_aborted_under_load_loses_no_task_and_every_client_gets_its_own_answer() {
    const TASKS: usize = 6_000;
    let _heavy = HEAVY.lock().await;
    let mut consumers = start_consumers(3).await;
    let producer = Producer::new(consumers.iter().map(|c| c.addr).collect(), ProducerConfig::default());
    let gateway = Server::producer(producer.clone()).await;
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // Every 4th task is held 20 ms on its consumer, so the victim surely has tasks in flight.
    let run = tokio::spawn(run_tasks(gateway.addr, TASKS, CLIENTS, Some((4, 20)), Arc::clone(&done)));

    // Once a third of the tasks are answered and the victim has tasks in flight: abort it.
    let (at, in_flight) = within(60, async {
        loop {
            let stats = producer.stats();
            if done.load(Ordering::Relaxed) >= TASKS / 3 && stats[0].outstanding > 0 {
                return (done.load(Ordering::Relaxed), stats[0].outstanding);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let victim = consumers.remove(0);
    let victim_addr = victim.addr;
    victim.kill().await;
    assert!(TcpStream::connect(victim_addr).await.is_err(), "the aborted consumer still accepts");

    let tally = within(120, run).await.unwrap();
    let elapsed = started.elapsed();
    assert_all_answered(&tally, TASKS);
    let stats = producer.stats();
    assert!(at < TASKS, "the consumer was aborted after the run");
    assert!(stats[0].served > 0, "the victim never served: {stats:?}");
    assert!(stats[0].failures >= 1, "no attempt failed over: {stats:?}");
    // Each task is counted once, by the consumer whose answer it got.
    assert_eq!(stats.iter().map(|s| s.served).sum::<u64>(), TASKS as u64, "{stats:?}");
    eprintln!(
        "failover: {TASKS} tasks from {CLIENTS} clients in {elapsed:.2?}; consumer aborted after {at} answers with \
         {in_flight} tasks in flight to it; lost 0, crossed 0; stats {stats:?}"
    );
    gateway.stop().await;
    for consumer in consumers {
        consumer.stop().await;
    }
}

/// `RPC_LOAD_TASKS`, or [`DEFAULT_LOAD_TASKS`].
fn load_tasks() -> usize {
    match std::env::var("RPC_LOAD_TASKS") {
        Ok(n) => n.parse().unwrap_or_else(|_| panic!("RPC_LOAD_TASKS={n:?} is not a count")),
        Err(_) => DEFAULT_LOAD_TASKS,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_thousand_tasks_through_the_producer_from_64_clients_each_get_their_own_answer_in_bounded_memory() {
    let tasks = load_tasks();
    let _heavy = HEAVY.lock().await;
    let consumers = start_consumers(2).await;
    let producer = Producer::new(consumers.iter().map(|c| c.addr).collect(), ProducerConfig::default());
    let gateway = Server::producer(producer.clone()).await;
    let memory = Memory::start();
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn(run_tasks(gateway.addr, tasks, CLIENTS, None, Arc::clone(&done)));
    // Live memory once warmed up (a tenth of the tasks done) and at the end: a leak shows as
    // growth between the two, whatever the allocator kept from earlier tests.
    within(600, async {
        while done.load(Ordering::Relaxed) < tasks / 10 && !run.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let warm = live_rss_kib();
    let tally = within(600, run).await.unwrap();
    let elapsed = started.elapsed();
    let end = live_rss_kib();
    let peak = memory.peak_growth_kib();
    assert_all_answered(&tally, tasks);
    let stats = producer.stats();
    assert_eq!(stats.iter().map(|s| s.served).sum::<u64>(), tasks as u64, "{stats:?}");
    assert!(stats.iter().all(|s| s.served > 0 && s.outstanding == 0), "{stats:?}");
    // 64 tasks in flight hold a few hundred KiB (three sockets and an 8 KiB buffer or two
    // each); a leak of 100 bytes per task would pass 8 MiB at the default count.
    let leaked = end.saturating_sub(warm);
    assert!(leaked < 8 * 1024, "live memory grew by {} over {tasks} tasks", mib(leaked));
    assert!(peak < 32 * 1024, "peak RSS rose by {} over {tasks} tasks", mib(peak));
    eprintln!(
        "load: {tasks} tasks from {CLIENTS} clients in {elapsed:.2?} ({:.0}/s); lost 0, crossed 0; peak RSS +{} \
         over the run (VmHWM {}); live memory after 10% of tasks {}, at the end {}; consumer failures {:?}",
        tasks as f64 / elapsed.as_secs_f64(),
        mib(peak),
        mib(status_kib("VmHWM")),
        mib(warm),
        mib(end),
        stats.iter().map(|s| s.failures).collect::<Vec<_>>()
    );
    gateway.stop().await;
    for consumer in consumers {
        consumer.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// §6: security.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_to_their_extremes_mean_unlimited_and_never_panic_the_server() {
    let unlimited = Limits::default()
        .with_max_line(usize::MAX)
        .with_max_connections(usize::MAX)
        .with_read_timeout(Duration::MAX)
        .with_write_timeout(Duration::MAX)
        .with_linger(Duration::MAX)
        .with_shutdown_grace(Duration::MAX);
    let (tx, _) = mpsc::unbounded_channel();
    let config = ConsumerConfig::default().with_limits(unlimited.clone()).with_max_deadline(Duration::MAX);
    let consumer = Server::consumer(registry(tx, Arc::default()), config).await;
    let producer = Producer::new(
        vec![consumer.addr],
        ProducerConfig::default()
            .with_limits(unlimited)
            .with_max_deadline(Duration::MAX)
            .with_attempt_timeout(Duration::MAX)
            .with_connect_timeout(Duration::MAX)
            .with_backoff(Duration::MAX)
            .with_max_reply(usize::MAX),
    );
    let gateway = Server::producer(producer.clone()).await;
    for addr in [consumer.addr, gateway.addr] {
        assert_eq!(ask(addr, "calculator calculate 2 + 2\n").await, "4\n", "{addr}");
        // The error path lingers: with the client closing, it ends at once.
        assert_error(&within(10, exchange(addr, b"calculator\n", true)).await, "bad_request", "names no method");
        let line = format!("neural_net predict 1 {}0\n", "0".repeat(200_000));
        assert!(ask(addr, &line).await.starts_with("{\"class\":1"), "{addr}");
    }
    gateway.stop().await;
    consumer.stop().await;
}

/// The string literals of Rust source, comments skipped (enough for the examples: no raw
/// strings, no `'"'`).
fn string_literals(source: &str) -> Vec<String> {
    let (mut out, mut chars) = (Vec::new(), source.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                let mut literal = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => literal.extend(chars.next()),
                        '"' => break,
                        c => literal.push(c),
                    }
                }
                out.push(literal);
            }
            _ => {}
        }
    }
    out
}

const EXAMPLES: [(&str, &str); 8] = [
    ("consumer.rs", include_str!("../examples/consumer.rs")),
    ("producer.rs", include_str!("../examples/producer.rs")),
    ("client.rs", include_str!("../examples/client.rs")),
    ("calculator.rs", include_str!("../examples/calculator.rs")),
    ("amqp_rpc.rs", include_str!("../examples/amqp_rpc.rs")),
    ("cli/mod.rs", include_str!("../examples/cli/mod.rs")),
    ("services/calculator.rs", include_str!("../rpc-testkit/src/services/calculator.rs")),
    ("services/neural_net.rs", include_str!("../rpc-testkit/src/services/neural_net.rs")),
];

#[test]
fn the_examples_listen_on_loopback_by_default_and_name_no_wider_address() {
    for (file, source) in EXAMPLES {
        for literal in string_literals(source) {
            let host = literal.rsplit('@').next().unwrap_or(&literal);
            let host = host.split_once("://").map_or(host, |(_, rest)| rest);
            let host = host.split('/').next().unwrap_or(host);
            if let Ok(addr) = host.parse::<SocketAddr>() {
                assert!(addr.ip().is_loopback(), "{file}: {literal:?} is not a loopback address");
            }
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                assert!(ip.is_loopback(), "{file}: {literal:?} is not a loopback address");
            }
            assert!(!literal.contains("0.0.0.0") && !literal.contains("[::]"), "{file}: {literal:?}");
        }
        // Every listener binds a loopback literal or the `--listen` flag, nothing else: the
        // examples bind `--listen` through `cli::bind`, which binds what the flag resolves to.
        for (at, _) in source.match_indices("TcpListener::bind(") {
            let argument = &source[at + "TcpListener::bind(".len()..];
            let argument = &argument[..argument.find(')').unwrap()];
            assert!(
                (file == "cli/mod.rs" && argument == "addr")
                    || argument.trim_matches('"').parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback()),
                "{file}: binds {argument}"
            );
        }
        for (at, _) in source.match_indices("cli::bind(") {
            let argument = &source[at + "cli::bind(".len()..];
            let argument = &argument[..argument.find(')').unwrap()];
            // `--http` has no default: the producer binds it only where the user says.
            let http = file == "producer.rs" && argument == "\"--http\", target";
            assert!(argument == "\"--listen\", &cli.listen" || http, "{file}: binds {argument}");
        }
    }
    // The two servers' `--listen` defaults, as clap shows them in `--help`.
    for (file, port) in [("consumer.rs", 9001), ("producer.rs", 9000)] {
        let source = EXAMPLES.iter().find(|(f, _)| *f == file).unwrap().1;
        let field = source.find("listen: String").unwrap_or_else(|| panic!("{file} has no --listen flag"));
        let attribute = &source[source[..field].rfind("#[arg(").unwrap()..field];
        let default =
            string_literals(attribute).into_iter().next().unwrap_or_else(|| panic!("{file}: no default for --listen"));
        assert!(attribute.contains("default_value = "), "{file}: {attribute}");
        assert_eq!(default.parse::<SocketAddr>().unwrap(), SocketAddr::from(([127, 0, 0, 1], port)), "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_methods_are_reachable_directly_or_through_the_producer() {
    let endpoints = [Endpoint::start(Kind::Consumer).await, Endpoint::start(Kind::Producer).await];
    let known = |service: &str| -> Vec<&str> {
        match service {
            "calculator" => vec!["calculate"],
            "neural_net" => vec!["architecture", "predict"],
            _ => vec!["hold", "slow"],
        }
    };
    for ep in &endpoints {
        for line in [
            // `#[rpc(skip)]`, an inherent fn beside the service, a field.
            "probe helper",
            "probe internal",
            "probe started",
            // Constructors and trait methods of the example services.
            "neural_net new",
            "neural_net shared",
            "neural_net default",
            "neural_net fmt",
            "neural_net clone",
            "calculator default",
            "calculator info",
            "calculator call",
            // Generated client methods are not server methods either.
            "calculator new",
            "calculator with_timeout 1",
            "calculator transport",
        ] {
            let service = line.split(' ').next().unwrap();
            let reply = ask(ep.addr, &format!("{line}\n")).await;
            let json = assert_error(reply.as_bytes(), "unknown_method", "unknown method");
            let mut listed: Vec<&str> = json["known"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
            listed.sort();
            assert_eq!(listed, known(service), "{:?} {line}: {reply}", ep.kind);
        }
        assert!(!ep.helper_ran.load(Ordering::SeqCst), "{:?}: a method outside the RPC surface ran", ep.kind);
        // The registered ones answer.
        assert_eq!(ask(ep.addr, "probe hold 7 0\n").await, "7\n");
        ep.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_holds_its_configured_connection_cap_and_line_limit() {
    let (tx, mut notices) = mpsc::unbounded_channel();
    let consumer = Server::consumer(registry(tx, Arc::default()), ConsumerConfig::default()).await;
    let limits = Limits::default().with_max_connections(2).with_max_line(100);
    let producer = Producer::new(vec![consumer.addr], ProducerConfig::default().with_limits(limits));
    let gateway = Server::producer(producer).await;
    let addr = gateway.addr;
    // Exactly at the line limit is served; one byte more is refused.
    let at_limit = format!("probe hold 1 {}\n", "0".repeat(100 - "probe hold 1 ".len()));
    assert_eq!(ask(addr, &at_limit).await, "1\n");
    let over = format!("probe hold 1 {}\n", "0".repeat(101 - "probe hold 1 ".len()));
    assert_error(ask(addr, &over).await.as_bytes(), "bad_request", "longer than 100 bytes");
    // Two tasks in flight fill the cap; a third client waits 2 s for a slot, then is told.
    let busy: Vec<_> = (0..2).map(|_| tokio::spawn(async move { ask(addr, "probe slow 4000\n").await })).collect();
    for _ in 0..2 {
        assert!(matches!(within(10, notices.recv()).await, Some(Notice::Started(4000))));
    }
    let t = Instant::now();
    assert_error(
        ask(addr, "calculator calculate 2 + 2\n").await.as_bytes(),
        "overloaded",
        "too many connections (limit 2)",
    );
    assert!(t.elapsed() >= Duration::from_millis(1900), "told after {:?}", t.elapsed());
    for task in busy {
        assert_eq!(within(20, task).await.unwrap(), "4000\n");
    }
    assert_eq!(ask(addr, "calculator calculate 2 + 2\n").await, "4\n");
    gateway.stop().await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_client_trickling_its_line_is_evicted_like_a_silent_one() {
    for kind in [Kind::Consumer, Kind::Producer] {
        let ep = Endpoint::with_limits(kind, Limits::default().with_max_connections(1)).await;
        let connected = Instant::now();
        let stream = TcpStream::connect(ep.addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        // One byte every 100 ms: never silent, never done.
        let trickler = tokio::spawn(async move {
            for byte in b"calculator calculate 2 + 2".iter().cycle() {
                if write.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        assert_eq!(ask(ep.addr, "calculator calculate 1 + 0.5\n").await, "1.5\n", "{kind:?}");
        let (waited, held) = (t.elapsed(), connected.elapsed());
        let mut reply = Vec::new();
        let _ = within(10, read.read_to_end(&mut reply)).await;
        assert_error(&reply, "overloaded", "closed to make room");
        // It held the slot for at least 1 s before it could be evicted, and no longer than the
        // newcomer's 2 s wait for a slot.
        assert!(held >= Duration::from_secs(1), "{kind:?}: evicted after {held:?}");
        assert!(waited < Duration::from_secs(5), "{kind:?}: the newcomer waited {waited:?}");
        within(10, trickler).await.unwrap();
        ep.stop().await;
    }
}
