//! What the HTTP front's tests share: a test service, a front on a free port, and a plain
//! HTTP/1.1 client on a raw socket (so tests can also send what a well-behaved client never
//! would: slow bodies, lies in content-length, half a request).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use rpc_core::{Context, HandlerError, MemoryTransport, Registry, Transport};
use rpc_http::{Gateway, GatewayBuilder, Limits};
use rpc_macros::rpc_service;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A point in the plane.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Point {
    /// Across.
    pub x: f64,
    /// Up.
    pub y: f64,
}

/// A calculator with the methods the tests need.
pub struct Calc;

#[rpc_service]
impl Calc {
    /// Computes `a op b`.
    ///
    /// Errors: `unknown_operator`.
    #[rpc(inline)]
    pub fn calculate(a: f64, op: String, b: f64) -> Result<f64, HandlerError> {
        match op.as_str() {
            "+" => Ok(a + b),
            "*" => Ok(a * b),
            other => Err(HandlerError::new("unknown_operator", format!("unknown operator {other:?}"))),
        }
    }

    /// Greets `name`, politely when asked.
    pub fn greet(name: String, polite: Option<bool>) -> String {
        if polite == Some(true) {
            format!("good day, {name}")
        } else {
            format!("hi {name}")
        }
    }

    /// Adds every number.
    pub fn sum(xs: Vec<f64>) -> f64 {
        xs.iter().sum()
    }

    /// Panics.
    pub fn explode() -> f64 {
        panic!("boom")
    }

    /// Sleeps `ms` milliseconds, then answers `ms`.
    pub async fn nap(ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    /// The point mirrored on the diagonal.
    pub fn mirror(p: Point) -> Point {
        Point { x: p.y, y: p.x }
    }

    /// What the call's context says: the `authorization` metadata, the milliseconds left of
    /// the deadline, the trace id.
    pub async fn whoami(ctx: &Context) -> Value {
        serde_json::json!({
            "authorization": ctx.metadata().get("authorization"),
            "remaining_ms": ctx.remaining().map(|d| d.as_millis() as u64),
            "trace_id": ctx.trace_id(),
        })
    }
}

/// An in-process backend serving [`Calc`].
pub fn memory() -> MemoryTransport {
    MemoryTransport::new(Registry::new().with(Calc).expect("distinct, unreserved service names"))
}

/// A running front and the means to stop it.
pub struct Front {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl Front {
    /// Serves `gateway` on a free port.
    pub async fn start(gateway: Gateway) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move { gateway.serve(listener, stopped).await });
        Front { addr, stop: Some(stop), task }
    }

    /// A front over the in-process [`Calc`] with `limits`.
    pub async fn memory(limits: Limits) -> Front {
        Front::start(Gateway::builder(memory()).with_limits(limits).build()).await
    }

    /// A front over `transport` built by `build`.
    pub async fn with(
        transport: impl Transport + 'static,
        build: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
    ) -> Front {
        Front::start(build(Gateway::builder(transport)).build()).await
    }

    /// Starts the graceful shutdown.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An HTTP response: status, headers (lowercase names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The error envelope's code.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends raw bytes, reads the response until the server closes (requests say
/// `connection: close`).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Reads one whole response from a connection the server closes after it.
pub async fn read_response(stream: &mut TcpStream) -> Response {
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .expect("the response took over 30 s")
        .unwrap();
    parse(&bytes)
}

/// Parses a response (content-length or chunked body).
pub fn parse(bytes: &[u8]) -> Response {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no complete response: {:?}", String::from_utf8_lossy(bytes));
    });
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = bytes[end + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&bytes[line_end + 2..line_end + 2 + size]);
        bytes = &bytes[line_end + 2 + size + 2..];
    }
    out
}

/// `POST path` with a JSON body and extra headers.
pub async fn post(addr: SocketAddr, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    raw(addr, request.as_bytes()).await
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    raw(addr, format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes()).await
}
