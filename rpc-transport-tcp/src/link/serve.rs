//! The Consumer's side of a link: reads request frames, runs each as a call of its own (the
//! same [`Respond`] as the one-line protocol, with the context the frame carried), and writes
//! each reply as soon as it is ready, in whatever order they finish.
//!
//! Bounds: a request frame is at most [`max_request_frame`] bytes, and once its first byte has
//! arrived the rest must follow within [`Limits::with_read_timeout`]; at most
//! [`Limits::with_max_connections`] tasks run at once on one link (more are answered
//! `ERROR overloaded`, which the Producer fails over), and a task holds its place until its
//! reply is queued. The queue of frames to write is bounded too: a frame is taken from the
//! socket only when there is room to queue its answer (a refusal), so a Producer that stops
//! reading stops being read, and holds up its own tasks, not the Consumer's memory; writes are
//! bounded by [`Limits::with_write_timeout`], and a link whose frames cannot be written ends.
//! Any frame that breaks the rules ends the link, a request reusing the id of one still in
//! flight too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{Context, RpcError};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::codec::{self, Frame, RequestFrame};
use super::{max_request_frame, write_frames, READ_CHUNK};
use crate::config::{deadline_after, Limits};
use crate::frame::{self, RequestLine};
use crate::server::Respond;
use crate::Error;

/// The calls running on one link, by request id; cancelled when the link ends (also when the
/// serving task is aborted, as the link's end drops this).
#[derive(Default)]
struct Running {
    by_request: HashMap<u64, Context>,
    by_task: HashMap<tokio::task::Id, u64>,
    /// Set, before the calls are cancelled, when the link is over: a call that ends after it
    /// sends no reply. A call the link's end cancelled would answer `cancelled`, and the
    /// Producer would take that for the task's answer instead of failing the task over to
    /// another Consumer.
    over: Arc<AtomicBool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.over.store(true, Ordering::SeqCst);
        for ctx in self.by_request.values() {
            ctx.cancel();
        }
    }
}

/// Serves a connection that became a link: `stream`, with `rest` the bytes already read after
/// the link request. Returns when the Producer closes it, it breaks, or (after `stop`) its
/// last task is answered.
pub(crate) async fn serve<R: Respond>(
    role: &'static str,
    stream: TcpStream,
    rest: Vec<u8>,
    responder: Arc<R>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    peer: Option<SocketAddr>,
) {
    let max_frame = max_request_frame(&limits);
    let max_in_flight = limits.max_connections.max(1);
    let (mut read, mut write) = stream.into_split();
    // Room for every task's reply, and as many refusals and a GOAWAY besides.
    let capacity = max_in_flight.saturating_mul(2).saturating_add(1).min(tokio::sync::Semaphore::MAX_PERMITS);
    let (out, mut queued) = mpsc::channel::<Vec<u8>>(capacity);
    // A GOAWAY not queued yet (the queue was full when the shutdown came).
    let mut goaway_owed = false;
    let write_timeout = limits.write_timeout;
    let mut writer = tokio::spawn(async move { write_frames(&mut write, &mut queued, write_timeout).await });
    let mut writer_done = false;
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running = Running::default();
    let (mut buf, mut start) = (rest, 0);
    let mut stopping = false;
    // When the first byte of a frame not yet complete arrived.
    let mut frame_started: Option<Instant> = None;
    let ended = loop {
        if !stopping && *stop.borrow() {
            stopping = true;
            goaway_owed = true;
        }
        if goaway_owed && out.try_send(Frame::GoAway.to_bytes()).is_ok() {
            goaway_owed = false;
        }
        let mut broken = None;
        let before = start;
        // Frames wait in `buf` until the queue has room for an answer to one.
        let mut waiting_for_room = false;
        while broken.is_none() {
            // Room for the answer this frame may need, before it is taken.
            let Ok(room) = out.try_reserve() else {
                waiting_for_room = true;
                break;
            };
            let (frame, used) = match codec::decode(&buf[start..], max_frame) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            };
            start += used;
            match frame {
                Frame::Request(request) if running.by_request.contains_key(&request.id) => {
                    broken = Some(format!("request id {} reused while its task runs", request.id));
                }
                Frame::Request(request) => {
                    let full = running.by_request.len() >= max_in_flight;
                    match accept(request, &limits, stopping, full) {
                        Ok((id, line, ctx)) => {
                            let (responder, out, task_ctx) = (Arc::clone(&responder), out.clone(), ctx.clone());
                            let over = Arc::clone(&running.over);
                            let handle = tasks.spawn(async move {
                                let reply = responder.respond(line, peer, task_ctx).await;
                                if !over.load(Ordering::SeqCst) {
                                    // Waits for room: the task keeps its place meanwhile.
                                    let _ = out.send(Frame::Reply { id, bytes: reply }.to_bytes()).await;
                                }
                            });
                            running.by_task.insert(handle.id(), id);
                            running.by_request.insert(id, ctx);
                        }
                        Err((id, reply)) => room.send(Frame::Reply { id, bytes: reply }.to_bytes()),
                    }
                }
                Frame::Cancel { id } => {
                    if let Some(ctx) = running.by_request.get(&id) {
                        tracing::debug!(role, ?peer, id, "the producer cancelled a task");
                        ctx.cancel();
                    }
                }
                Frame::Reply { .. } | Frame::GoAway => broken = Some("a frame only a consumer sends".to_owned()),
            }
        }
        if let Some(reason) = broken {
            break reason;
        }
        if start > before {
            frame_started = None;
        }
        if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        if buf.is_empty() {
            frame_started = None;
        } else if frame_started.is_none() {
            frame_started = Some(Instant::now());
        }
        if stopping && running.by_request.is_empty() {
            break "shut down".to_owned();
        }
        let read_until = frame_started
            .and_then(|t| t.checked_add(limits.read_timeout))
            .unwrap_or_else(|| deadline_after(Duration::MAX));
        buf.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let task = match &done {
                    Ok((task, ())) => *task,
                    Err(e) => e.id(),
                };
                if let Some(id) = running.by_task.remove(&task) {
                    running.by_request.remove(&id);
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {}
            written = &mut writer, if !writer_done => {
                writer_done = true;
                break match written {
                    Ok(Err(reason)) => reason,
                    _ => "its writer ended".to_owned(),
                };
            }
            room = out.reserve(), if waiting_for_room => match room {
                // Frames wait no longer than the queue: the read timeout starts again.
                Ok(_) => frame_started = None,
                Err(_) => break "its writer ended".to_owned(),
            },
            read = tokio::time::timeout_at(read_until, read.read_buf(&mut buf)), if !waiting_for_room => match read {
                Ok(Ok(0)) => break "the producer closed it".to_owned(),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => break format!("it broke: {e}"),
                Err(_) => break "a frame did not arrive in time".to_owned(),
            }
        }
    };
    tracing::debug!(role, ?peer, in_flight = running.by_request.len(), "link ended: {ended}");
    drop(running);
    tasks.shutdown().await;
    drop(out);
    if !writer_done {
        let _ = tokio::time::timeout(limits.write_timeout, writer).await;
    }
}

/// Checks a request frame: its id, request line and context, or its id and the error reply to
/// send.
fn accept(
    request: RequestFrame,
    limits: &Limits,
    stopping: bool,
    full: bool,
) -> Result<(u64, RequestLine, Context), (u64, Vec<u8>)> {
    let id = request.id;
    let refuse = |error: RpcError| (id, frame::encode_error(&error));
    if stopping {
        let target = RequestLine::parse(&request.line).map_or_else(|_| "the consumer".to_owned(), |l| l.target());
        return Err(refuse(RpcError::Unavailable { target, reason: "the consumer is shutting down".to_owned() }));
    }
    if full {
        return Err(refuse(RpcError::Overloaded {
            reason: format!("{} tasks already run on this link (the limit)", limits.max_connections),
        }));
    }
    if request.line.len() > limits.max_line {
        return Err(refuse(Error::TooLong { limit: limits.max_line }.into()));
    }
    let line = RequestLine::parse(&request.line).map_err(|e| refuse(e.into()))?;
    let mut ctx = Context::new();
    if let Some(ms) = request.deadline_ms {
        ctx = ctx.with_deadline(Duration::from_millis(u64::from(ms)));
    }
    if let Some(trace) = request.trace_id {
        if trace.chars().any(char::is_control) {
            return Err(refuse(RpcError::bad_request("the trace id holds a control character")));
        }
        ctx = ctx.with_trace_id(trace);
    }
    for (key, value) in request.metadata {
        ctx.metadata_mut().insert(&key, value).map_err(|e| refuse(RpcError::bad_request(e.to_string())))?;
    }
    Ok((id, line, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Answers once its call is cancelled, without returning to the runtime until then
    /// (`block_in_place`): an abort of its task cannot stop it between the cancellation and
    /// its reply.
    struct AnswersWhenCancelled;

    impl Respond for AnswersWhenCancelled {
        async fn respond(&self, _: RequestLine, _: Option<SocketAddr>, ctx: Context) -> Vec<u8> {
            tokio::task::block_in_place(|| {
                while !ctx.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            frame::encode_error(&RpcError::Cancelled { target: "probe.hold".into() })
        }
    }

    /// A link whose serving task is aborted (its Consumer killed) with a call in flight sends
    /// no reply for it: the Producer sees the link break and fails the task over, where a
    /// `cancelled` reply would read as the task's answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_aborted_with_a_call_in_flight_sends_no_reply_for_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut producer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (_stop, stopped) = watch::channel(false);
        let serving = tokio::spawn(serve(
            "consumer",
            stream,
            Vec::new(),
            Arc::new(AnswersWhenCancelled),
            Limits::default(),
            stopped,
            None,
        ));
        let request = RequestFrame { id: 7, line: b"probe hold".to_vec(), ..RequestFrame::default() };
        producer.write_all(&Frame::Request(request).to_bytes()).await.unwrap();
        // The call is running before the abort.
        tokio::time::sleep(Duration::from_millis(100)).await;
        serving.abort();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), producer.read_to_end(&mut rest))
            .await
            .expect("the link closes")
            .expect("reading the link");
        let mut frames = Vec::new();
        let mut at = 0;
        while let Ok(Some((frame, used))) = codec::decode(&rest[at..], usize::MAX) {
            frames.push(frame);
            at += used;
        }
        assert!(frames.is_empty(), "expected no frame after the abort, got {frames:?}");
    }

    /// Answers at once with a reply of 4 KiB, counting the calls.
    struct Quick(Arc<std::sync::atomic::AtomicUsize>);

    impl Respond for Quick {
        async fn respond(&self, _: RequestLine, _: Option<SocketAddr>, _: Context) -> Vec<u8> {
            self.0.fetch_add(1, Ordering::SeqCst);
            frame::encode_value(&serde_json::Value::String("x".repeat(4096)))
        }
    }

    /// Answers `ok` 200 ms after each call starts.
    struct Slow;

    impl Respond for Slow {
        async fn respond(&self, _: RequestLine, _: Option<SocketAddr>, _: Context) -> Vec<u8> {
            tokio::time::sleep(Duration::from_millis(200)).await;
            frame::encode_value(&serde_json::json!("ok"))
        }
    }

    /// Holds every call until it is cancelled.
    struct Holds;

    impl Respond for Holds {
        async fn respond(&self, _: RequestLine, _: Option<SocketAddr>, ctx: Context) -> Vec<u8> {
            ctx.cancelled().await;
            frame::encode_error(&RpcError::Cancelled { target: "probe.hold".into() })
        }
    }

    fn start<R: Respond>(
        responder: R,
        limits: Limits,
    ) -> (TcpStream, tokio::task::JoinHandle<()>, watch::Sender<bool>) {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        let producer = std::net::TcpStream::connect(addr).unwrap();
        let (stream, _) = std_listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        producer.set_nonblocking(true).unwrap();
        let (stop, stopped) = watch::channel(false);
        let stream = TcpStream::from_std(stream).unwrap();
        let serving = tokio::spawn(serve("consumer", stream, Vec::new(), Arc::new(responder), limits, stopped, None));
        (TcpStream::from_std(producer).unwrap(), serving, stop)
    }

    fn request(id: u64) -> Vec<u8> {
        Frame::Request(RequestFrame { id, line: b"probe hold".to_vec(), ..RequestFrame::default() }).to_bytes()
    }

    /// A Producer that sends requests and never reads the replies: the Consumer queues no more
    /// than its in-flight bound of them and ends the link, instead of queueing every reply
    /// in memory (and keeping the link open after its writer gave up).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_that_never_reads_its_replies_has_its_link_ended_not_its_replies_queued() {
        let limits = Limits::default().with_max_connections(4).with_write_timeout(Duration::from_millis(300));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (producer, serving, _stop) = start(Quick(Arc::clone(&calls)), limits);
        let (_read, mut write) = producer.into_split();
        let sent = async {
            for id in 1..=100_000u64 {
                if write.write_all(&request(id)).await.is_err() {
                    return id;
                }
            }
            u64::MAX
        };
        let ended = tokio::time::timeout(Duration::from_secs(10), serving);
        let (_, ended) = tokio::join!(tokio::time::timeout(Duration::from_secs(10), sent), ended);
        assert!(ended.is_ok(), "the link still runs 10 s later");
        // What was answered is what the socket's buffers and the bounded queue hold, not
        // everything sent.
        let answered = calls.load(Ordering::SeqCst);
        assert!(answered < 20_000, "{answered} calls answered for a producer that reads nothing");
    }

    /// A burst past the in-flight bound from a Producer that reads its replies: the calls in
    /// flight are answered, the rest refused `overloaded`, and the link stays up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_past_the_in_flight_bound_is_refused_and_the_calls_in_flight_are_answered() {
        let (producer, serving, _stop) = start(Slow, Limits::default().with_max_connections(4));
        let (mut read, mut write) = producer.into_split();
        let burst: Vec<u8> = (1..=60u64).flat_map(request).collect();
        write.write_all(&burst).await.unwrap();
        let (mut buf, mut replies) = (Vec::new(), Vec::new());
        while replies.len() < 60 {
            let n = tokio::time::timeout(Duration::from_secs(10), read.read_buf(&mut buf))
                .await
                .expect("replies within 10 s")
                .unwrap();
            assert!(n > 0, "the link closed after {} replies", replies.len());
            while let Some((frame, used)) = codec::decode(&buf, usize::MAX).unwrap() {
                buf.drain(..used);
                let Frame::Reply { bytes, .. } = frame else { panic!("{frame:?}") };
                replies.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        let answered = replies.iter().filter(|r| *r == "ok\n").count();
        let refused = replies.iter().filter(|r| r.starts_with("ERROR overloaded")).count();
        assert_eq!((answered, refused), (4, 56), "{replies:?}");
        assert!(!serving.is_finished(), "the link is still up");
        drop(write);
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the link ends when the producer closes")
            .unwrap();
    }

    /// A request reusing the id of one still in flight breaks the protocol: the link ends, and
    /// the first call is cancelled (not left running untracked).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_reusing_an_id_in_flight_ends_the_link() {
        let (mut producer, serving, _stop) = start(Holds, Limits::default());
        producer.write_all(&request(1)).await.unwrap();
        producer.write_all(&request(1)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), serving).await.expect("the link ends").unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), producer.read_to_end(&mut rest))
            .await
            .expect("the link closes")
            .expect("reading the link");
        assert!(codec::decode(&rest, usize::MAX).unwrap().is_none(), "no reply: the call was cancelled with the link");
    }
}
