//! The accept loop shared by the Consumer and the Producer: connection cap, one task per
//! connection, the read limits, graceful shutdown. What to answer is the [`Respond`]er's job.
//!
//! At the connection cap a new connection waits briefly for a slot, and makes room by evicting
//! the connection that has waited longest for its request line, provided it has held its slot for
//! at least [`EVICT_MIN_AGE`] (sending nothing, or trickling bytes): a flood of idle connections then cannot keep working clients
//! out for longer than about that.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rpc_core::{Context, RpcError};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};

use crate::config::Limits;
use crate::connection::{Connection, Departure};
use crate::error::fmt_duration;
use crate::frame::{self, RequestLine};
use crate::link;
use tokio::io::AsyncWriteExt;

/// Connections beyond the cap that may wait for a slot at once: as many as the cap, and at
/// least this many. Past that they are closed without a word (the server is then being
/// flooded, and words cost memory).
const MIN_PENDING_SLOTS: usize = 64;

/// How long a connection beyond the cap waits for a slot before `ERROR overloaded`.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// How often a waiting connection retries eviction.
const SLOT_POLL: Duration = Duration::from_millis(100);

/// A connection that has held its slot for less than this is never evicted (capped at the read
/// timeout).
pub(crate) const EVICT_MIN_AGE: Duration = Duration::from_secs(1);

/// Longest linger, and longest write, for a connection turned away.
const REJECT_LINGER: Duration = Duration::from_millis(500);

/// How long a request still runs after its client closed the connection, before it is
/// cancelled. A client that only closed its sending side (and waits for the reply) cannot be
/// told from one that left; a short call still gets its reply to such a client.
pub(crate) const DEPARTURE_GRACE: Duration = Duration::from_millis(500);

/// What a server answers to one request line.
pub(crate) trait Respond: Send + Sync + 'static {
    /// Whether it takes links (`_rpc link 1`): Consumers do, the Producer does not.
    const LINKS: bool = false;

    /// The complete reply bytes for `line` (success or error form). `ctx` is cancelled when the
    /// client leaves; the reply then comes soon (it is written if the client still reads).
    fn respond(
        &self,
        line: RequestLine,
        peer: Option<SocketAddr>,
        ctx: Context,
    ) -> impl Future<Output = Vec<u8>> + Send;
}

/// Connections still waiting for their request line, oldest first, each with a way to evict
/// it.
#[derive(Default)]
struct Idle {
    next_id: u64,
    waiting: BTreeMap<u64, (Instant, oneshot::Sender<()>)>,
}

/// State every connection task shares.
struct Shared<R> {
    role: &'static str,
    local: SocketAddr,
    limits: Limits,
    responder: Arc<R>,
    slots: Arc<Semaphore>,
    /// Links served at once ([`Limits::with_max_links`]); a link gives back its connection slot.
    links: Arc<Semaphore>,
    idle: Mutex<Idle>,
    stop: watch::Receiver<bool>,
}

/// Removes a connection from the idle set when it stops waiting for its request, whatever
/// the reason.
struct IdleEntry<'a> {
    idle: &'a Mutex<Idle>,
    id: u64,
}

impl Drop for IdleEntry<'_> {
    fn drop(&mut self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.waiting.remove(&self.id);
        }
    }
}

impl<R: Respond> Shared<R> {
    fn register_idle(&self) -> (IdleEntry<'_>, oneshot::Receiver<()>) {
        let (evict, evicted) = oneshot::channel();
        let mut id = 0;
        if let Ok(mut idle) = self.idle.lock() {
            id = idle.next_id;
            idle.next_id += 1;
            idle.waiting.insert(id, (Instant::now(), evict));
        }
        (IdleEntry { idle: &self.idle, id }, evicted)
    }

    /// Evicts the connection that has waited longest for its request, if it has waited at
    /// least [`EVICT_MIN_AGE`].
    fn evict_oldest(&self) {
        let min_age = EVICT_MIN_AGE.min(self.limits.read_timeout);
        let Ok(mut idle) = self.idle.lock() else { return };
        let Some(entry) = idle.waiting.first_entry() else { return };
        if entry.get().0.elapsed() >= min_age {
            let (_, evict) = entry.remove();
            let _ = evict.send(());
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn shutting_down(&self) -> RpcError {
        RpcError::Unavailable { target: self.local.to_string(), reason: format!("the {} is shutting down", self.role) }
    }
}

/// Serves `listener` until `shutdown` resolves, then drains (see [`Limits::with_shutdown_grace`]).
pub(crate) async fn serve<R: Respond>(
    role: &'static str,
    listener: TcpListener,
    limits: Limits,
    responder: Arc<R>,
    shutdown: impl Future,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(role, %local, max_connections = limits.max_connections, "serving");
    let (stop_tx, stop_rx) = watch::channel(false);
    // `usize::MAX` means "no cap"; a semaphore holds at most `MAX_PERMITS` (and panics beyond).
    let cap = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let shared = Arc::new(Shared {
        role,
        local,
        slots: Arc::new(Semaphore::new(cap)),
        links: Arc::new(Semaphore::new(limits.max_links.clamp(1, Semaphore::MAX_PERMITS))),
        limits,
        responder,
        idle: Mutex::new(Idle::default()),
        stop: stop_rx,
    });
    let pending = Arc::new(Semaphore::new(cap.max(MIN_PENDING_SLOTS)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(role, &e).await;
                    continue;
                }
            },
        };
        while let Some(done) = tasks.try_join_next() {
            log_join(role, done);
        }
        let shared = Arc::clone(&shared);
        if let Ok(permit) = Arc::clone(&shared.slots).try_acquire_owned() {
            tasks.spawn(async move { handle(Connection::accepted(stream, Some(peer)), permit, &shared).await });
        } else if let Ok(waiting) = Arc::clone(&pending).try_acquire_owned() {
            tracing::debug!(role, %peer, "connection limit reached; waiting for a slot");
            tasks.spawn(async move {
                let slot = wait_for_slot(&shared).await;
                drop(waiting);
                match slot {
                    Some(permit) => handle(Connection::accepted(stream, Some(peer)), permit, &shared).await,
                    None => reject(Connection::accepted(stream, Some(peer)), &shared).await,
                }
            });
        } else {
            tracing::debug!(role, %peer, "connection limit reached and too many waiting; closing");
            drop(stream);
        }
    }

    // Stop accepting: from here new connections are refused by the kernel.
    drop(listener);
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.try_join_next() {
        log_join(role, done);
    }
    tracing::info!(role, %local, in_flight = tasks.len(), "shutting down");
    let grace = shared.limits.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = tasks.join_next().await {
            log_join(role, done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(role, %local, left = tasks.len(), grace = %fmt_duration(grace),
            "requests still running after the shutdown grace period; dropping them");
        tasks.shutdown().await;
    }
    tracing::info!(role, %local, "stopped");
    Ok(())
}

/// Waits up to [`SLOT_WAIT`] for a connection slot, evicting idle connections to make room.
async fn wait_for_slot<R: Respond>(shared: &Shared<R>) -> Option<OwnedSemaphorePermit> {
    let deadline = Instant::now() + SLOT_WAIT;
    while Instant::now() < deadline && !shared.stopping() {
        shared.evict_oldest();
        if let Ok(Ok(permit)) = tokio::time::timeout(SLOT_POLL, Arc::clone(&shared.slots).acquire_owned()).await {
            return Some(permit);
        }
    }
    None
}

/// Why reading a request ended.
enum Read {
    Done(Result<RequestLine, crate::Error>),
    Stopping,
    Evicted,
}

/// Serves one connection; `permit` is its slot, held until the socket is closed.
async fn handle<R: Respond>(mut conn: Connection, permit: OwnedSemaphorePermit, shared: &Shared<R>) {
    let (role, limits) = (shared.role, &shared.limits);
    let peer = conn.peer();
    let mut stop = shared.stop.clone();
    let read = {
        let (_entry, evicted) = shared.register_idle();
        tokio::select! {
            // A request that is complete is served, whatever else happened meanwhile.
            biased;
            read = conn.read_request(limits.max_line, limits.read_timeout) => Read::Done(read),
            _ = stop.wait_for(|stopping| *stopping) => Read::Stopping,
            Ok(()) = evicted => Read::Evicted,
        }
    };
    let read = match read {
        // Shutting down: one last look at what has already arrived, without waiting (a zero
        // timeout still polls the read once). The read is cancel safe.
        Read::Stopping => {
            match tokio::time::timeout(Duration::ZERO, conn.read_request(limits.max_line, limits.read_timeout)).await {
                Ok(read) => Read::Done(read),
                Err(_) => Read::Stopping,
            }
        }
        other => other,
    };
    let line = match read {
        Read::Done(Ok(line)) => line,
        Read::Done(Err(e)) if e.is_client_error() => {
            tracing::debug!(role, ?peer, error = %e, "bad request");
            let reply = frame::encode_error(&RpcError::from(e));
            if conn.write_reply(&reply, limits.write_timeout).await.is_ok() {
                conn.linger(limits.linger).await;
            }
            return;
        }
        Read::Done(Err(e)) => {
            tracing::debug!(role, ?peer, error = %e, "connection failed before a request arrived");
            return;
        }
        Read::Stopping => {
            let error = shared.shutting_down();
            if conn.write_reply(&frame::encode_error(&error), limits.write_timeout.min(REJECT_LINGER)).await.is_ok() {
                conn.linger(limits.linger.min(REJECT_LINGER)).await;
            }
            return;
        }
        Read::Evicted => {
            tracing::debug!(role, ?peer, "evicted an idle connection to make room");
            let error = RpcError::Overloaded {
                reason: format!(
                    "connection limit ({}) reached and this connection sent no complete request; closed to make room",
                    limits.max_connections
                ),
            };
            // The slot goes to the waiting connection at once; whatever this client sent was
            // read, so closing now is clean.
            let _ = conn.write_reply(&frame::encode_error(&error), limits.write_timeout.min(REJECT_LINGER)).await;
            drop(permit);
            return;
        }
    };
    if R::LINKS && link::is_link_request(&line) {
        // Boxed: a link's state is large and rare, and every connection's task would carry
        // its size (3.2 KB instead of 2 KB), copied on spawn and held while idle.
        return Box::pin(serve_link(conn, &line, permit, shared)).await;
    }
    let ctx = Context::new();
    let respond = shared.responder.respond(line, peer, ctx.clone());
    tokio::pin!(respond);
    let departure = tokio::select! {
        // A reply that is ready is written, whatever else happened meanwhile.
        biased;
        reply = &mut respond => Ok(reply),
        departure = conn.departed() => Err(departure),
    };
    let reply = match departure {
        Ok(reply) => reply,
        Err(departure) => {
            let reply = match departure {
                Departure::Closed => tokio::time::timeout(DEPARTURE_GRACE, &mut respond).await.ok(),
                _ => None,
            };
            match reply {
                Some(reply) => reply,
                None => {
                    tracing::debug!(role, ?peer, ?departure, "the client left; cancelling its request");
                    ctx.cancel();
                    if departure != Departure::Closed {
                        return;
                    }
                    // It may still read: tell it why there is no result.
                    let Ok(reply) = tokio::time::timeout(REJECT_LINGER, &mut respond).await else { return };
                    let _ = conn.write_reply(&reply, limits.write_timeout.min(REJECT_LINGER)).await;
                    return;
                }
            }
        }
    };
    match conn.write_reply(&reply, limits.write_timeout).await {
        Ok(()) if conn.has_unread() => conn.linger(limits.linger).await,
        Ok(()) => {}
        Err(e) => tracing::debug!(role, ?peer, error = %e, "could not write the reply"),
    }
    drop(permit);
}

/// Turns the connection into a link, if `line` asks for a version this server speaks and a
/// link slot is free, and serves it; `permit`, its connection slot, is given back once it is a
/// link (it holds a link slot instead), so links never keep one-line clients out.
async fn serve_link<R: Respond>(
    mut conn: Connection,
    line: &RequestLine,
    permit: OwnedSemaphorePermit,
    shared: &Shared<R>,
) {
    let (role, limits, peer) = (shared.role, &shared.limits, conn.peer());
    if line.args != [link::VERSION.to_string()] {
        let error = RpcError::bad_request(format!(
            "{}: this server speaks link version {} only (asked for {:?})",
            line.target(),
            link::VERSION,
            line.args
        ));
        if conn.write_reply(&frame::encode_error(&error), limits.write_timeout).await.is_ok() {
            conn.linger(limits.linger).await;
        }
        return;
    }
    let Ok(link_slot) = Arc::clone(&shared.links).try_acquire_owned() else {
        tracing::debug!(role, ?peer, "link limit reached; link refused");
        let error = RpcError::Overloaded {
            reason: format!("too many links (limit {}); send tasks on connections of their own", limits.max_links),
        };
        if conn.write_reply(&frame::encode_error(&error), limits.write_timeout).await.is_ok() {
            conn.linger(limits.linger).await;
        }
        return;
    };
    drop(permit);
    let (mut stream, rest) = conn.into_parts();
    // Frames follow one another on a link: Nagle's algorithm would hold one back while an
    // earlier one is unacknowledged.
    let _ = stream.set_nodelay(true);
    let hello = link::hello_answer(link::max_request_frame(limits));
    match tokio::time::timeout(limits.write_timeout, stream.write_all(&hello)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    tracing::debug!(role, ?peer, "link opened");
    let responder = Arc::clone(&shared.responder);
    link::serve::serve(role, stream, rest, responder, limits.clone(), shared.stop.clone(), peer).await;
    drop(link_slot);
}

/// Turns away a connection that found no slot.
async fn reject<R: Respond>(mut conn: Connection, shared: &Shared<R>) {
    let error = if shared.stopping() {
        shared.shutting_down()
    } else {
        RpcError::Overloaded {
            reason: format!("too many connections (limit {}); try again later", shared.limits.max_connections),
        }
    };
    if conn.write_reply(&frame::encode_error(&error), shared.limits.write_timeout.min(REJECT_LINGER)).await.is_ok() {
        conn.linger(shared.limits.linger.min(REJECT_LINGER)).await;
    }
}

async fn accept_failed(role: &'static str, error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    if matches!(error.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
        tracing::debug!(role, %error, "accept failed");
    } else {
        // Out of file descriptors or memory: back off instead of spinning on accept.
        tracing::warn!(role, %error, "accept failed; pausing for 100 ms");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_join(role: &'static str, done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(
                role,
                "a connection task panicked: {}",
                rpc_core::run::panic_message(e.into_panic().as_ref())
            );
        }
    }
}
