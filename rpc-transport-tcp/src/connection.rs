//! [`Connection`]: one accepted socket and the bytes read from it so far.
//!
//! It reads exactly one request line (bounded in length and in time), writes exactly one
//! reply, and closes; the protocol has no second request on a connection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::config::deadline_after;
use crate::frame::{Decoded, LineDecoder, RequestLine};
use crate::Error;

/// Bytes read from the socket per call: the unit of buffer growth.
const CHUNK: usize = 8 * 1024;

/// A server-side connection: the socket plus its read buffer.
///
/// The buffer never holds more than `max_line + 1` bytes, whatever the client sends.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Bytes of `buffer` that belong to the request line (terminator included).
    consumed: usize,
    /// Whether the client has closed its sending side.
    eof: bool,
    /// Whether bytes sent after the request line were read and dropped while it was served.
    dropped: bool,
    peer: Option<SocketAddr>,
}

/// How a client left while its request was served ([`Connection::departed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Departure {
    /// It closed its connection (end of stream). It may only have closed its sending side and
    /// still wait for the reply; the server cannot tell the two apart.
    Closed,
    /// The connection broke (a reset): nobody reads the reply.
    Broken,
}

impl Connection {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream) -> Self {
        let peer = stream.peer_addr().ok();
        Self::accepted(stream, peer)
    }

    /// Wraps a socket with the client's address `accept` gave (not asked of the socket again).
    ///
    /// On Linux Nagle's algorithm stays on: the one reply leaves with the close, which pushes it
    /// ([`Connection::write_reply`]); a connection that becomes a link turns it off. Elsewhere
    /// the reply is a plain write, so Nagle is turned off here.
    pub fn accepted(stream: TcpStream, peer: Option<SocketAddr>) -> Self {
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        Connection { stream, buffer: Vec::new(), consumed: 0, eof: false, dropped: false, peer }
    }

    /// The client's address, when the socket still knows it.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Reads one request line: up to the first `\n`, or to the client's end of stream.
    ///
    /// The whole line must arrive within `timeout` of this call (a client trickling one byte
    /// at a time does not get to extend it), and be at most `max_line` bytes long.
    ///
    /// Cancel safe: if the future is dropped, the bytes read so far stay buffered and a later
    /// call continues from them.
    ///
    /// # Errors
    /// [`Error::ReadTimeout`], [`Error::TooLong`] as soon as the limit is passed (reading
    /// stops there), the parse errors of [`RequestLine::parse`], and [`Error::Io`].
    pub async fn read_request(&mut self, max_line: usize, timeout: Duration) -> Result<RequestLine, Error> {
        let deadline = deadline_after(timeout);
        let mut decoder = LineDecoder::new(max_line);
        loop {
            if let Decoded::Complete(line) = decoder.decode(&self.buffer, self.eof)? {
                self.consumed = self.buffer.iter().position(|&b| b == b'\n').map_or(self.buffer.len(), |i| i + 1);
                return Ok(line);
            }
            // `decode` returned Incomplete, so the buffer is within the limit and eof is false.
            let want = (max_line.saturating_add(1) - self.buffer.len()).min(CHUNK);
            self.buffer.reserve(want);
            // `read_buf` appends only what was read, so dropping this future loses nothing.
            let mut limited = (&mut self.stream).take(want as u64);
            match timeout_at(deadline, limited.read_buf(&mut self.buffer)).await {
                Ok(Ok(n)) => self.eof = n == 0,
                Ok(Err(e)) => return Err(Error::Io(e)),
                Err(_) => return Err(Error::ReadTimeout(timeout)),
            }
        }
    }

    /// How many bytes are buffered: never more than `max_line + 1` of the last read.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Whether bytes beyond the request line were received, in which case the close should
    /// [`linger`](Connection::linger).
    pub fn has_unread(&self) -> bool {
        self.dropped || self.consumed < self.buffer.len()
    }

    /// Watches the socket while the request is served, and resolves when the client leaves:
    /// end of stream or a broken connection. Bytes the client sends meanwhile are read and
    /// dropped (the protocol has no second request), one small buffer at a time, and make the
    /// close [`linger`](Connection::linger).
    ///
    /// Never resolves when the request itself ended at the client's end of stream: that client
    /// said it was done sending, not that it left.
    ///
    /// Cancel safe.
    pub async fn departed(&mut self) -> Departure {
        if self.eof {
            return std::future::pending().await;
        }
        let mut scratch = [0u8; 512];
        loop {
            match self.stream.read(&mut scratch).await {
                Ok(0) => {
                    self.eof = true;
                    return Departure::Closed;
                }
                Ok(_) => self.dropped = true,
                Err(_) => {
                    self.eof = true;
                    return Departure::Broken;
                }
            }
        }
    }

    /// The socket and the bytes received after the request line, for a connection that leaves
    /// the one-line protocol (a link).
    pub(crate) fn into_parts(mut self) -> (TcpStream, Vec<u8>) {
        let rest = self.buffer.split_off(self.consumed.min(self.buffer.len()));
        (self.stream, rest)
    }

    /// Writes the whole reply and closes the sending side (the client then sees end of
    /// stream).
    ///
    /// # Errors
    /// The socket's error, or [`io::ErrorKind::TimedOut`] after `timeout`.
    pub async fn write_reply(&mut self, reply: &[u8], timeout: Duration) -> io::Result<()> {
        let write = async {
            write_last(&mut self.stream, reply).await?;
            self.stream.shutdown().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "writing the reply timed out")),
        }
    }

    /// Reads and discards whatever the client still sends, until it closes or `duration`
    /// passes, then drops the socket.
    ///
    /// Closing a socket with unread input makes the kernel send a reset, and a reset can
    /// destroy the reply the client has not read yet; draining first lets the reply arrive.
    /// Memory stays at one chunk.
    pub async fn linger(mut self, duration: Duration) {
        let deadline = deadline_after(duration);
        self.buffer.clear();
        self.buffer.resize(CHUNK, 0);
        while let Ok(Ok(n)) = timeout_at(deadline, self.stream.read(&mut self.buffer)).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// Writes `bytes`, the last the socket sends before its close.
///
/// On Linux they are held back for the close (`MSG_MORE`), so the reply and the end of stream
/// leave in one segment, and a peer that has gone raises no SIGPIPE (`MSG_NOSIGNAL`, as std's
/// own writes). Elsewhere it is a plain write, and Nagle's algorithm is off
/// ([`Connection::accepted`]).
#[cfg(target_os = "linux")]
async fn write_last(stream: &mut TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    let socket = socket2::SockRef::from(&*stream);
    while !bytes.is_empty() {
        let send = || socket.send_with_flags(bytes, libc::MSG_MORE | libc::MSG_NOSIGNAL);
        let n = stream.async_io(tokio::io::Interest::WRITABLE, send).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn write_last(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::Connection;

    /// A connection accepted from a client on loopback, with that client.
    async fn pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        (Connection::accepted(stream, Some(peer)), client)
    }

    /// Segments the socket has sent so far (`TCP_INFO`'s `tcpi_segs_out`).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn segments_out(stream: &TcpStream) -> u32 {
        use std::os::fd::AsRawFd;
        // SAFETY: `tcp_info` is plain integers, for which all zeroes is a value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` is a `tcp_info` of `len` bytes, which TCP_INFO fills in.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt(TCP_INFO): {}", std::io::Error::last_os_error());
        info.tcpi_segs_out
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[tokio::test]
    async fn a_reply_and_the_close_leave_in_one_segment() {
        let (mut conn, mut client) = pair().await;
        client.write_all(b"calculator calculate 2 + 2\n").await.unwrap();
        conn.read_request(1024, Duration::from_secs(5)).await.unwrap();
        // Past the longest delayed acknowledgement of the request, which would count too.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let before = segments_out(&conn.stream);
        conn.write_reply(b"4\n", Duration::from_secs(5)).await.unwrap();
        let sent = segments_out(&conn.stream) - before;
        assert_eq!(sent, 1, "the reply and the FIN took {sent} segments");
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"4\n");
    }

    /// A reply far larger than the socket takes at once is written in pieces as the client
    /// reads, whole and in order, then closed.
    #[tokio::test]
    async fn a_reply_larger_than_the_socket_buffer_arrives_whole() {
        let (mut conn, mut client) = pair().await;
        let reply: Vec<u8> = (0..32 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            // Late, so the writer meets a full socket buffer first.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        conn.write_reply(&reply, Duration::from_secs(10)).await.unwrap();
        assert!(reader.await.unwrap() == reply, "the reply arrived altered");
    }
}
