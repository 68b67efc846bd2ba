//! The Producer's side of a link: one connection to a Consumer carrying many tasks at once,
//! matched by id. A writer task sends frames (several per write when they queue up), a reader
//! task hands each reply to the task waiting for it. When the connection breaks, every task
//! waiting on it fails at once, with the reason, and moves on to another consumer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, Frame, RequestFrame, HEADER};
use super::{hello_request, parse_hello, write_frames, READ_CHUNK};
use crate::client::{connect, ExchangeError};

/// Longest answer to `_rpc link` a producer reads.
const MAX_HELLO: usize = 4096;

/// What a consumer answered to `_rpc link`.
pub(crate) enum Opened {
    /// It speaks links: here is one.
    Link(Arc<Link>),
    /// It answered something else: it speaks only the one-request-per-connection protocol.
    Legacy(String),
}

/// An open link to one consumer.
#[derive(Debug)]
pub(crate) struct Link {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// The largest request frame the consumer takes (what it said when the link opened).
    max_frame: usize,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
    next_id: AtomicU64,
    /// Broken: no task goes on it.
    closed: AtomicBool,
    /// The consumer said it is shutting down: no new task goes on it.
    going_away: AtomicBool,
    /// Why it broke.
    reason: Mutex<Option<String>>,
}

impl Shared {
    /// Marks the link broken for `reason` and fails every task waiting on it.
    fn close(&self, reason: String) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.closed.store(true, Ordering::Release);
        let waiting = self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        drop(waiting);
    }

    fn reason(&self) -> String {
        self.reason.lock().ok().and_then(|r| r.clone()).unwrap_or_else(|| "the link closed".to_owned())
    }
}

/// Why a task on a link got no reply.
#[derive(Debug)]
pub(crate) enum LinkFailed {
    /// The link broke before the reply, for this reason.
    Broken(String),
    /// The task's frame is larger than the consumer takes on a link; it was not sent (on its
    /// own connection, the consumer answers it as it answers any request over its limits).
    TooLarge,
}

impl Link {
    /// Connects to `addr` and asks to upgrade the connection to a link, within `timeout`
    /// (connecting within `connect_timeout`). Replies larger than `max_reply` break the link.
    ///
    /// # Errors
    /// Connecting failed, or the consumer broke the connection or said nothing in time; a
    /// consumer that answers anything else gives [`Opened::Legacy`].
    pub(crate) async fn open(
        addr: SocketAddr,
        connect_timeout: Duration,
        timeout: Duration,
        write_timeout: Duration,
        max_reply: usize,
    ) -> Result<Opened, ExchangeError> {
        let handshake = async {
            let mut stream = connect(addr, connect_timeout.min(timeout)).await?;
            stream.write_all(&hello_request()).await.map_err(|e| ExchangeError::Io(addr, e))?;
            let mut buf = Vec::with_capacity(256);
            let newline = loop {
                if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    break Some(i);
                }
                if buf.len() > MAX_HELLO {
                    break None;
                }
                buf.reserve(READ_CHUNK);
                let n = (&mut stream)
                    .take(READ_CHUNK as u64)
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| ExchangeError::Io(addr, e))?;
                if n == 0 {
                    break None;
                }
            };
            Ok::<_, ExchangeError>((stream, buf, newline))
        };
        let (stream, mut buf, newline) = match tokio::time::timeout(timeout, handshake).await {
            Ok(result) => result?,
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to the link request in time");
                return Err(ExchangeError::Io(addr, e));
            }
        };
        let Some((newline, max_frame)) = newline.and_then(|i| Some((i, parse_hello(&buf[..i])?))) else {
            let answer = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
            return Ok(Opened::Legacy(answer));
        };
        let rest = buf.split_off(newline + 1);
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared::default());
        let (out, queued) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(write, queued, Arc::clone(&shared), write_timeout));
        // A frame's length counts its kind, id and body, not the 4 bytes that carry it.
        tokio::spawn(read_loop(read, rest, Arc::clone(&shared), max_reply.saturating_add(HEADER - 4), addr));
        Ok(Opened::Link(Arc::new(Link { shared, out, max_frame })))
    }

    /// Whether a new task may go on it.
    ///
    /// A link whose writer is gone (the runtime that opened it shut down) is not.
    pub(crate) fn usable(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
            && !self.shared.going_away.load(Ordering::Acquire)
            && !self.out.is_closed()
    }

    /// Sends `request` (its id is set here) and waits for its reply. When the returned future
    /// is dropped first, the consumer is told to cancel the task.
    ///
    /// # Errors
    /// [`LinkFailed::Broken`] with the reason when the link broke before the reply;
    /// [`LinkFailed::TooLarge`] when the request's frame is larger than the consumer takes
    /// (sent, it would make the consumer end the link, failing every task on it).
    pub(crate) async fn call(&self, mut request: RequestFrame) -> Result<Vec<u8>, LinkFailed> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        let bytes = Frame::Request(request).to_bytes();
        // A frame's length counts all but the 4 bytes that carry it.
        if bytes.len() - 4 > self.max_frame {
            return Err(LinkFailed::TooLarge);
        }
        let broken = || LinkFailed::Broken(self.shared.reason());
        let (tx, rx) = oneshot::channel();
        {
            let Ok(mut pending) = self.shared.pending.lock() else { return Err(broken()) };
            // Checked under the lock `close` takes, so no task is left waiting on a closed link.
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(broken());
            }
            pending.insert(id, tx);
        }
        let mut guard = CancelOnDrop { link: self, id, armed: true };
        if self.out.send(bytes).is_err() {
            guard.armed = false;
            return Err(broken());
        }
        let reply = rx.await;
        guard.armed = false;
        reply.map_err(|_| broken())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The writer ends when its queue does; marking it closed keeps late callers off it.
        self.shared.closed.store(true, Ordering::Release);
    }
}

/// Tells the consumer to cancel a task whose caller stopped waiting.
struct CancelOnDrop<'a> {
    link: &'a Link,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let waiting = self.link.shared.pending.lock().ok().and_then(|mut p| p.remove(&self.id));
        if waiting.is_some() {
            let _ = self.link.out.send(Frame::Cancel { id: self.id }.to_bytes());
        }
    }
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queued: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
    write_timeout: Duration,
) {
    // When the producer lets go of the link, the queue closes and the consumer sees the end of
    // stream and closes its side.
    if let Err(reason) = write_frames(&mut write, &mut queued, write_timeout).await {
        shared.close(reason);
    }
}

async fn read_loop(mut read: OwnedReadHalf, mut buf: Vec<u8>, shared: Arc<Shared>, max_frame: usize, addr: SocketAddr) {
    let mut start = 0;
    let reason = loop {
        match codec::decode(&buf[start..], max_frame) {
            Ok(Some((frame, used))) => {
                start += used;
                match frame {
                    Frame::Reply { id, bytes } => {
                        let waiting = shared.pending.lock().ok().and_then(|mut p| p.remove(&id));
                        if let Some(tx) = waiting {
                            let _ = tx.send(bytes);
                        }
                    }
                    Frame::GoAway => {
                        tracing::debug!(consumer = %addr, "the consumer is shutting down; no new task goes on its link");
                        shared.going_away.store(true, Ordering::Release);
                    }
                    Frame::Request(_) | Frame::Cancel { .. } => {
                        break "the consumer sent a frame only a producer sends".to_owned()
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(codec::CodecError::TooLarge { limit, .. }) => {
                break format!("reply larger than {} bytes", limit.saturating_sub(HEADER - 4))
            }
            Err(e) => break e.to_string(),
        }
        // Keep the unread tail at the front; the buffer grows only to the frame being read.
        if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        buf.reserve(READ_CHUNK);
        match read.read_buf(&mut buf).await {
            Ok(0) => break "the consumer closed the link".to_owned(),
            Ok(_) => {}
            Err(e) => break format!("the link broke: {e}"),
        }
    };
    tracing::debug!(consumer = %addr, %reason, "link closed");
    shared.close(format!("{addr}: {reason}"));
}
