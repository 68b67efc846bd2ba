//! [`TcpTransport`]: the client side, one connection per call, pointed at a Consumer or at the
//! Producer (they speak the same protocol).

use std::net::SocketAddr;
use std::time::Duration;

use rpc_core::{Reply, Request, RpcError, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::ClientConfig;
use crate::error::fmt_duration;
use crate::frame::{self, RequestLine};

/// A [`Transport`] that sends each call as one text line over a fresh TCP connection.
///
/// ```no_run
/// use rpc_core::{Args, Request, Transport};
/// use rpc_transport_tcp::TcpTransport;
///
/// # async fn run() -> Result<(), rpc_core::RpcError> {
/// let transport = TcpTransport::new("127.0.0.1:9000".parse().unwrap());
/// let args = Args::Text(vec!["2".into(), "+".into(), "2".into()]);
/// let reply = transport.call(Request::new("calculator", "calculate", args)).await?;
/// assert_eq!(reply.into_text(), "4");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TcpTransport {
    addr: SocketAddr,
    config: ClientConfig,
}

impl TcpTransport {
    /// A transport calling the server at `addr`, with default settings.
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_config(addr, ClientConfig::default())
    }

    /// A transport calling the server at `addr`.
    pub fn with_config(addr: SocketAddr, config: ClientConfig) -> Self {
        TcpTransport { addr, config }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Transport for TcpTransport {
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        let target = request.target();
        let deadline = request.remaining_or(self.config.deadline);
        let line = RequestLine::from_request(request)?;
        let bytes = line.encode();
        let exchange = exchange(self.addr, &bytes, self.config.connect_timeout, self.config.max_reply);
        match tokio::time::timeout(deadline, exchange).await {
            Ok(Ok(bytes)) => frame::decode_reply(&bytes, &target),
            Ok(Err(e)) => Err(e.into_rpc(&target)),
            Err(_) => Err(RpcError::deadline(target, deadline)),
        }
    }
}

/// Why one request/reply exchange with a server failed before a reply was read.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    Connect(SocketAddr, std::io::Error),
    ConnectTimeout(SocketAddr, Duration),
    Io(SocketAddr, std::io::Error),
    TooLarge(SocketAddr, usize),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Connect(addr, e) => write!(f, "connect to {addr}: {e}"),
            ExchangeError::ConnectTimeout(addr, d) => {
                write!(f, "connect to {addr}: no answer within {}", fmt_duration(*d))
            }
            ExchangeError::Io(addr, e) => write!(f, "{addr}: {e}"),
            ExchangeError::TooLarge(addr, limit) => write!(f, "{addr}: reply larger than {limit} bytes"),
        }
    }
}

impl ExchangeError {
    pub(crate) fn into_rpc(self, target: &str) -> RpcError {
        let message = format!("{target}: {self}");
        match self {
            ExchangeError::Connect(_, e) | ExchangeError::Io(_, e) => RpcError::transport(message, e),
            ExchangeError::ConnectTimeout(..) => RpcError::Transport { message, source: None },
            ExchangeError::TooLarge(..) => RpcError::protocol(message),
        }
    }
}

/// Connects to `addr`, sends `line` (which ends in `\n`), and reads the reply to end of
/// stream, at most `max_reply` bytes.
pub(crate) async fn exchange(
    addr: SocketAddr,
    line: &[u8],
    connect_timeout: Duration,
    max_reply: usize,
) -> Result<Vec<u8>, ExchangeError> {
    let mut stream = connect(addr, connect_timeout).await?;
    stream.write_all(line).await.map_err(|e| ExchangeError::Io(addr, e))?;
    let mut reply = Vec::new();
    // One byte over the limit tells "exactly at the limit" from "too large".
    let limit = u64::try_from(max_reply).unwrap_or(u64::MAX).saturating_add(1);
    (&mut stream).take(limit).read_to_end(&mut reply).await.map_err(|e| ExchangeError::Io(addr, e))?;
    if reply.len() > max_reply {
        return Err(ExchangeError::TooLarge(addr, max_reply));
    }
    Ok(reply)
}

/// Connects to `addr` within `connect_timeout`, with Nagle off.
pub(crate) async fn connect(addr: SocketAddr, connect_timeout: Duration) -> Result<TcpStream, ExchangeError> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ExchangeError::Connect(addr, e)),
        Err(_) => return Err(ExchangeError::ConnectTimeout(addr, connect_timeout)),
    };
    if connected_to_itself(&stream, addr) {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connected to itself: nothing listens there");
        return Err(ExchangeError::Connect(addr, refused));
    }
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Whether connecting to `addr` connected the socket to itself.
///
/// When nothing listens on a loopback port inside the ephemeral range (a consumer that died,
/// bound to port 0), the kernel can pick that very port as the source and complete a TCP
/// simultaneous open with itself. The socket then reads back its own request and never sees an
/// end of stream: the call would hang to its deadline instead of failing over at once.
fn connected_to_itself(stream: &TcpStream, addr: SocketAddr) -> bool {
    stream.local_addr().is_ok_and(|local| local == addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_connected_to_itself_is_recognised() {
        // Bind, then connect to the bound address: a TCP simultaneous open with itself.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let stream = socket.connect(addr).await.unwrap();
        assert!(connected_to_itself(&stream, addr));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        assert!(!connected_to_itself(&other, listener.local_addr().unwrap()));
    }
}
