//! Helpers shared by the wire tests: test services, servers on 127.0.0.1:0 that stop when told,
//! and a raw byte client.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{HandlerError, Registry};
use rpc_macros::rpc_service;
use rpc_transport_tcp::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The seed's calculator, reduced to what the wire tests need.
pub struct Calculator;

#[rpc_service]
impl Calculator {
    /// `calculator calculate 2 + 2` answers `4`.
    pub fn calculate(a: f64, op: String, b: f64) -> Result<f64, HandlerError> {
        match op.as_str() {
            "+" => Ok(a + b),
            "-" => Ok(a - b),
            "*" => Ok(a * b),
            "/" if b == 0.0 => Err(HandlerError::new("division_by_zero", "division by zero")),
            "/" => Ok(a / b),
            other => Err(HandlerError::new("unknown_operator", format!("unknown operator {other:?}"))),
        }
    }
}

/// Methods that exercise every outcome.
pub struct Lab {
    /// Told each time `slow` starts, so a test knows a request is in flight.
    pub started: mpsc::UnboundedSender<u64>,
}

#[rpc_service]
impl Lab {
    /// Returns its argument verbatim.
    pub fn echo(text: String) -> String {
        text
    }

    /// Adds two integers.
    pub async fn add(a: i64, b: i64) -> i64 {
        a + b
    }

    /// Always panics.
    pub fn boom() -> u32 {
        panic!("boom on purpose")
    }

    /// Sleeps `ms` milliseconds, asynchronously.
    pub async fn slow(&self, ms: u64) -> u64 {
        let _ = self.started.send(ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    /// Blocks its thread for `ms` milliseconds (a synchronous handler, on the blocking pool).
    pub fn busy(&self, ms: u64) -> u64 {
        let _ = self.started.send(ms);
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

/// A registry with both test services, and the receiver of `Lab`'s start notices.
pub fn registry() -> (Registry, mpsc::UnboundedReceiver<u64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let registry = Registry::new().with(Calculator).and_then(|r| r.with(Lab { started: tx }));
    (registry.expect("distinct, unreserved service names"), rx)
}

/// A server running in a task until [`TestServer::stop`] or drop.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task panicked").expect("serve failed");
        }
    }

    /// Aborts the server task: its listener and every connection vanish at once, as when the
    /// process is killed.
    pub async fn kill(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Starts a consumer for `registry` on a free loopback port.
pub async fn consumer(registry: Registry, config: ConsumerConfig) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let consumer = Consumer::new(Arc::new(registry), config);
    let handle = tokio::spawn(async move { consumer.serve(listener, stopped).await });
    TestServer { addr, stop: Some(stop), handle: Some(handle) }
}

/// Starts `producer` on a free loopback port.
pub async fn producer(producer: Producer) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move { producer.serve(listener, stopped).await });
    TestServer { addr, stop: Some(stop), handle: Some(handle) }
}

/// A producer over `consumers` with short timeouts for tests.
pub fn test_producer(consumers: Vec<SocketAddr>) -> Producer {
    Producer::new(
        consumers,
        ProducerConfig::default().with_attempt_timeout(Duration::from_secs(5)).with_backoff(Duration::from_secs(60)),
    )
}

/// Sends `bytes` (writing and reading concurrently, so large inputs cannot deadlock) and
/// returns everything the server sent until it closed.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    exchange(addr, bytes, false).await
}

/// [`raw`], then closes the sending side (end of stream ends the request).
pub async fn raw_then_eof(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    exchange(addr, bytes, true).await
}

async fn exchange(addr: SocketAddr, bytes: &[u8], eof: bool) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        // The server may close before taking everything (that is the point of some tests).
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

/// [`raw`] as text.
pub async fn raw_text(addr: SocketAddr, line: &str) -> String {
    String::from_utf8(raw(addr, line.as_bytes()).await).expect("reply is UTF-8")
}

/// Bounds a test step so a hang fails the test instead of stalling CI.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test step timed out")
}
