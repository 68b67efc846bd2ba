//! HTTP scenarios, HTTP/1.1 keep-alive (each client holds one connection): (e) the HTTP/JSON
//! front through the Producer to two Consumers, `POST /rpc/calculator/calculate` with
//! `{"a":2,"op":"+","b":2}`; (e′) the same front over the registry in process (what the front
//! itself costs, without the Producer's hop); (f) the floor: a minimal axum server answering
//! the same route with a constant.
//!
//! Both are driven by the same hyper client, so the differences are the servers'.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rpc_transport_tcp::{Producer, ProducerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::load::closed_loop;
use crate::stats::{Run, Summary};
use crate::tcp::Servers;
use crate::Settings;

const PATH: &str = "/rpc/calculator/calculate";
const BODY: &str = r#"{"a":2,"op":"+","b":2}"#;
const ANSWER: &[u8] = b"4.0";

/// One client's keep-alive connection, opened on first use.
type Slot = Mutex<Option<SendRequest<Full<Bytes>>>>;

impl Servers {
    /// The HTTP front over a Producer to `consumers`.
    pub fn http_front(&self, consumers: Vec<SocketAddr>) -> SocketAddr {
        let shutdown = self.shutdown();
        self.runtime().block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let producer = Producer::new(consumers, ProducerConfig::default().with_limits(Self::limits()));
            producer.probe_all().await;
            let limits = rpc_http::Limits::default().with_max_connections(4096);
            let gateway =
                rpc_http::Gateway::builder(producer.clone()).with_backends(producer).with_limits(limits).build();
            tokio::spawn(async move { gateway.serve(listener, shutdown).await });
            addr
        })
    }

    /// The HTTP front over the `Calculator` in process.
    pub fn http_in_process(&self) -> SocketAddr {
        let shutdown = self.shutdown();
        self.runtime().block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let registry = rpc_core::Registry::new()
                .with(rpc_testkit::services::Calculator)
                .expect("distinct, unreserved service names");
            let limits = rpc_http::Limits::default().with_max_connections(4096);
            let gateway =
                rpc_http::Gateway::builder(rpc_core::MemoryTransport::new(registry)).with_limits(limits).build();
            tokio::spawn(async move { gateway.serve(listener, shutdown).await });
            addr
        })
    }

    /// A minimal axum server answering the route with a constant.
    pub fn http_floor(&self) -> SocketAddr {
        let shutdown = self.shutdown();
        self.runtime().block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let app = axum::Router::new()
                .route(PATH, post(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], ANSWER) }));
            tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(shutdown).await });
            addr
        })
    }
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// One call on the worker's own keep-alive connection (opened on first use, and again after
/// a failure).
async fn one_call(addr: SocketAddr, slot: &Slot) -> bool {
    let mut slot = slot.lock().await;
    if slot.is_none() {
        *slot = connect(addr).await;
    }
    let Some(sender) = slot.as_mut() else { return false };
    let request = axum::http::Request::post(PATH)
        .header(axum::http::header::HOST, "bench")
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .expect("request");
    let ok = async {
        sender.ready().await.ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(status == 200 && body.as_ref() == ANSWER)
    }
    .await;
    if ok.is_none() {
        *slot = None;
    }
    ok == Some(true)
}

fn measure(addr: SocketAddr, concurrency: usize, settings: &Settings) -> Run {
    let (warmup, duration) = (settings.warmup, settings.duration);
    let slots: Arc<Vec<Slot>> = Arc::new((0..concurrency).map(|_| Mutex::new(None)).collect());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .expect("client runtime")
        .block_on(closed_loop(concurrency, warmup, duration, move |w, _| {
            let slots = Arc::clone(&slots);
            async move { one_call(addr, &slots[w]).await }
        }))
}

/// Every HTTP scenario with 1 and 32 clients, `settings.reps` times, interleaved.
pub fn run(settings: &Settings) -> Vec<Summary> {
    let servers = Servers::new();
    let consumers = vec![servers.consumer(), servers.consumer()];
    let front = servers.http_front(consumers);
    let floor = servers.http_floor();
    let in_process = servers.http_in_process();
    let scenarios = [
        ("(f) axum floor, constant", floor),
        ("(e) HTTP front → producer → 2 consumers", front),
        ("(e′) HTTP front → registry in process", in_process),
    ];
    let mut out = Vec::new();
    for &concurrency in &[1usize, 32] {
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
