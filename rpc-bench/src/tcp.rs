//! TCP scenarios, one connection per request as the design document's protocol says:
//! (a) straight to one Consumer, (b) through the Producer to two Consumers, (c) the raw floor:
//! a minimal tokio server that accepts, reads one line, writes a fixed reply and closes.
//!
//! All three are driven by the same raw client, so the differences are the servers'.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{BlockingPool, Registry};
use rpc_transport_tcp::{Consumer, ConsumerConfig, Limits, Producer, ProducerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::load::closed_loop;
use crate::stats::{Run, Summary};
use crate::Settings;
use rpc_testkit::services::Calculator;

const REQUEST: &[u8] = b"calculator calculate 2 + 2\n";

/// The shipped `Calculator` runs `calculate` inline (`#[rpc(inline)]`); this is the same
/// method as a plain synchronous handler, on the blocking pool, to show what the pool costs.
struct PooledCalculator;

#[rpc_macros::rpc_service(name = "calculator")]
impl PooledCalculator {
    fn calculate(a: f64, op: String, b: f64) -> Result<f64, rpc_core::HandlerError> {
        Calculator::calculate(a, op, b)
    }
}

/// Servers run on their own runtime, so client and server threads are the same in every
/// scenario.
pub struct Servers {
    rt: Runtime,
    stop: watch::Sender<bool>,
}

impl Servers {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-server")
            .enable_all()
            .build()
            .expect("server runtime");
        Servers { rt, stop: watch::channel(false).0 }
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.rt
    }

    pub(crate) fn shutdown(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    pub(crate) fn limits() -> Limits {
        // The benchmark's own clients are the only ones; lift the connection cap so 32
        // clients plus the producer's hop never meet it.
        Limits::default().with_max_connections(4096)
    }

    pub fn consumer(&self) -> SocketAddr {
        self.consumer_of(Registry::new().with(Calculator).expect("distinct, unreserved service names"))
    }

    pub fn consumer_of(&self, registry: Registry) -> SocketAddr {
        let shutdown = self.shutdown();
        self.rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let registry = registry.with_blocking_pool(BlockingPool::for_machine());
            let consumer = Consumer::new(Arc::new(registry), ConsumerConfig::default().with_limits(Self::limits()));
            tokio::spawn(async move { consumer.serve(listener, shutdown).await });
            addr
        })
    }

    pub fn producer(&self, consumers: Vec<SocketAddr>) -> SocketAddr {
        let shutdown = self.shutdown();
        self.rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let producer = Producer::new(consumers, ProducerConfig::default().with_limits(Self::limits()));
            tokio::spawn(async move { producer.serve(listener, shutdown).await });
            addr
        })
    }

    pub fn raw_floor(&self) -> SocketAddr {
        let mut shutdown = self.stop.subscribe();
        self.rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            tokio::spawn(raw_serve(stream));
                        }
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                }
            });
            addr
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn raw_serve(stream: TcpStream) {
    let mut reader = BufReader::with_capacity(1024, stream);
    let mut line = Vec::with_capacity(64);
    if reader.read_until(b'\n', &mut line).await.is_err() {
        return;
    }
    let mut stream = reader.into_inner();
    let _ = stream.write_all(b"4\n").await;
    let _ = stream.shutdown().await;
}

/// One request as the design document's client sends it: connect, write, read to EOF.
async fn one_request(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else { return false };
    let _ = stream.set_nodelay(true);
    if stream.write_all(REQUEST).await.is_err() {
        return false;
    }
    let mut reply = Vec::with_capacity(16);
    stream.read_to_end(&mut reply).await.is_ok() && reply == b"4\n"
}

fn measure(addr: SocketAddr, concurrency: usize, settings: &Settings) -> Run {
    let (warmup, duration) = (settings.warmup, settings.duration);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .expect("client runtime")
        .block_on(closed_loop(concurrency, warmup, duration, move |_, _| one_request(addr)))
}

/// Which of [`run`]'s scenarios run (all by default).
#[derive(Default)]
pub struct Pick {
    /// Only the scenarios whose name contains this.
    pub only: Option<String>,
    /// Only this many clients.
    pub clients: Option<usize>,
}

/// Every TCP scenario `pick` names at each concurrency, `settings.reps` times, interleaved so
/// drift on a noisy machine hits all scenarios alike.
pub fn run(settings: &Settings, pick: &Pick) -> Vec<Summary> {
    let servers = Servers::new();
    let direct = servers.consumer();
    let consumers = vec![servers.consumer(), servers.consumer()];
    let gateway = servers.producer(consumers);
    let floor = servers.raw_floor();
    let pooled =
        servers.consumer_of(Registry::new().with(PooledCalculator).expect("distinct, unreserved service names"));
    let scenarios: Vec<_> = [
        ("(c) raw floor", floor),
        ("(a) consumer", direct),
        ("(b) producer → 2 consumers", gateway),
        ("(a′) consumer, calculate on the blocking pool", pooled),
    ]
    .into_iter()
    .filter(|(name, _)| pick.only.as_ref().map_or(true, |only| name.contains(only.as_str())))
    .collect();
    let mut out = Vec::new();
    for concurrency in [1usize, 32].into_iter().filter(|c| pick.clients.map_or(true, |p| p == *c)) {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); scenarios.len()];
        for _ in 0..settings.reps {
            for (i, (_, addr)) in scenarios.iter().enumerate() {
                let run = measure(*addr, concurrency, settings);
                runs[i].push(run);
                // Let TIME_WAIT sockets and the server settle between runs.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for (i, (name, _)) in scenarios.iter().enumerate() {
            out.push(Summary::of(name, concurrency, &runs[i]));
        }
    }
    out
}

/// Producer throughput at 32 clients with 2, 4 and 8 consumers, beside the raw floor: what
/// grows with the number of consumers (one link and one health probe each) and what stays flat
/// (the machine's two cores are shared by every process in the run).
pub fn scale(settings: &Settings) -> Vec<Summary> {
    let servers = Servers::new();
    let floor = servers.raw_floor();
    let mut scenarios = vec![("(c) raw floor".to_owned(), floor)];
    for n in [2usize, 4, 8] {
        let consumers = (0..n).map(|_| servers.consumer()).collect();
        scenarios.push((format!("producer → {n} consumers"), servers.producer(consumers)));
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); scenarios.len()];
    for _ in 0..settings.reps {
        for (i, (_, addr)) in scenarios.iter().enumerate() {
            runs[i].push(measure(*addr, 32, settings));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    scenarios.iter().zip(&runs).map(|((name, _), runs)| Summary::of(name, 32, runs)).collect()
}

/// A process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The child side of [`idle_connections`]: a Consumer that takes `count` idle connections,
/// printing its address, until its stdin closes.
pub fn hold_idle(count: usize) {
    let servers = Servers::new();
    let shutdown = servers.shutdown();
    let addr = servers.rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits::default().with_max_connections(count + 64).with_read_timeout(Duration::from_secs(600));
        let consumer = Consumer::new(
            Arc::new(Registry::new().with(Calculator).expect("distinct, unreserved service names")),
            ConsumerConfig::default().with_limits(limits),
        );
        tokio::spawn(async move { consumer.serve(listener, shutdown).await });
        addr
    });
    println!("{addr}");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Starts a Consumer in a child process, opens `count` idle connections to it (no request
/// sent), and reports the growth of the child's RSS per connection. Each process needs `count`
/// file descriptors plus a few (`ulimit -n`).
pub fn idle_connections(count: usize) -> Result<f64, String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .args(["hold-idle", "--count", &count.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line).map_err(|e| e.to_string())?;
    let addr: SocketAddr = line.trim().parse().map_err(|e| format!("child said {line:?}: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let result = rt.block_on(async {
        // One request warms up the server's paths.
        one_request(addr).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_kib(pid);
        let mut held = Vec::with_capacity(count);
        for i in 0..count {
            match TcpStream::connect(addr).await {
                Ok(s) => held.push(s),
                Err(e) => return Err(format!("connection {i}: {e} (raise the file descriptor limit: ulimit -n)")),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(pid);
        let ok = one_request(addr).await;
        drop(held);
        if !ok {
            return Err("the consumer did not answer beside the idle connections".to_owned());
        }
        Ok(after.saturating_sub(before) as f64 / count as f64)
    });
    drop(child.stdin.take());
    let _ = child.wait();
    result
}

/// The floor, the Consumer and the Producer at 1 to 256 clients, for the pictures.
pub fn sweep(settings: &Settings, clients: &[usize]) -> Vec<Summary> {
    let servers = Servers::new();
    let scenarios = [
        ("raw floor", servers.raw_floor()),
        ("consumer", servers.consumer()),
        ("producer → 2 consumers", servers.producer(vec![servers.consumer(), servers.consumer()])),
    ];
    let mut out = Vec::new();
    for &concurrency in clients {
        eprintln!("sweep: {concurrency} clients");
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); scenarios.len()];
        for _ in 0..settings.reps {
            for (i, (_, addr)) in scenarios.iter().enumerate() {
                runs[i].push(measure(*addr, concurrency, settings));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for (i, (name, _)) in scenarios.iter().enumerate() {
            out.push(Summary::of(name, concurrency, &runs[i]));
        }
    }
    out
}
