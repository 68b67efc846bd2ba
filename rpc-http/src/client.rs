//! [`HttpTransport`]: a client [`Transport`] that calls a front over HTTP, so typed clients
//! and the command-line client work over HTTP as over TCP or RabbitMQ.
//!
//! Each call is one HTTP/1.1 request on its own connection: `POST /rpc/{service}/{method}`
//! with the arguments as JSON (named: an object; text tokens: an array, each token read as
//! JSON when it is, else as a string), the context as headers. The reserved request
//! `_rpc describe` is `GET /rpc`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Method, Request as HttpRequest};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rpc_core::service::{DESCRIBE, RESERVED_PREFIX};
use rpc_core::{Args, Reply, Request, RpcError, Transport, DEFAULT_DEADLINE};
use serde_json::{Map, Value};

use crate::gateway::{DEADLINE_HEADER, METADATA_PREFIX, TRACE_HEADER};

/// The largest response body read, in bytes.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Calls a front at `http://host:port`.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    host: String,
    port: u16,
}

impl HttpTransport {
    /// A client for the front at `url` (`http://127.0.0.1:8080`, `http://localhost:8080/`).
    ///
    /// # Errors
    /// When `url` is not `http://host:port` (https is not supported).
    pub fn new(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: expected http://host:port"))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(format!("{url}: expected http://host:port, without a path"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !port.contains(']') => {
                (host, port.parse::<u16>().map_err(|_| format!("{url}: bad port {port:?}"))?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(HttpTransport { host: host.trim_start_matches('[').trim_end_matches(']').to_owned(), port })
    }

    /// A client for the front at `addr`.
    pub fn from_addr(addr: SocketAddr) -> Self {
        HttpTransport { host: addr.ip().to_string(), port: addr.port() }
    }

    async fn exchange(&self, request: HttpRequest<Full<Bytes>>) -> Result<(u16, Bytes), RpcError> {
        let target = format!("{}:{}", self.host, self.port);
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| RpcError::transport(format!("cannot connect to {target}"), e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| RpcError::transport(format!("{target}: http handshake failed"), e))?;
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| RpcError::transport(format!("{target}: request failed"), e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| RpcError::protocol(format!("{target}: cannot read the response: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
}

impl Transport for HttpTransport {
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        let target = request.target();
        let timeout = request.context.remaining().unwrap_or(DEFAULT_DEADLINE);
        let authority = format!("{}:{}", self.host, self.port);
        let describe = request.service == RESERVED_PREFIX && request.method == DESCRIBE;
        let builder = HttpRequest::builder().header(header::HOST, authority);
        let http = if describe {
            builder.method(Method::GET).uri("/rpc").body(Full::new(Bytes::new()))
        } else {
            let body = match request.args {
                Args::Named(map) => Value::Object(map),
                Args::Text(tokens) => Value::Array(
                    tokens.into_iter().map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t))).collect(),
                ),
                _ => Value::Object(Map::new()),
            };
            let mut builder = builder
                .method(Method::POST)
                .uri(format!("/rpc/{}/{}", encode(&request.service), encode(&request.method)))
                .header(header::CONTENT_TYPE, "application/json")
                .header(DEADLINE_HEADER, timeout.as_millis().clamp(1, 9_999_999_999).to_string());
            for (key, value) in request.context.metadata().iter() {
                builder = builder.header(format!("{METADATA_PREFIX}{key}"), value);
            }
            if let Some(id) = request.context.trace_id() {
                builder = builder.header(TRACE_HEADER, id);
            }
            builder.body(Full::new(Bytes::from(body.to_string())))
        };
        let http = http.map_err(|e| RpcError::bad_request(format!("{target}: cannot build the request: {e}")))?;
        let (status, body) = match tokio::time::timeout(timeout + Duration::from_secs(1), self.exchange(http)).await {
            Ok(exchanged) => exchanged?,
            Err(_) => return Err(RpcError::deadline(target, timeout)),
        };
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| RpcError::protocol(format!("{target}: the answer (status {status}) is not JSON: {e}")))?;
        if status == 200 {
            return Ok(Reply::Value(value));
        }
        match value.pointer("/error/data") {
            Some(data) => Err(RpcError::from_wire(data, &target)),
            None => Err(RpcError::protocol(format!("{target}: status {status} without an error envelope"))),
        }
    }
}

/// A path segment, percent-encoded where it must be.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
