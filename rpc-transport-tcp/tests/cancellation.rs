//! A client that leaves ends the work on the server: the Consumer watches the client's socket
//! while the handler runs, and so does the Producer for the task it forwards. Handlers here
//! count how far they got, so the tests prove the work stopped, not only that the client
//! stopped waiting. Also the Consumer's server-side layers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{consumer, producer, raw_text, raw_then_eof, registry, test_producer, within};
use rpc_core::layer::auth::AuthLayer;
use rpc_core::layer::trace::TraceLayer;
use rpc_core::{Context, Registry};
use rpc_macros::rpc_service;
use rpc_testkit::services::counter::{AsyncCounter, AsyncCounterClient, Progress, SyncCounter, SyncCounterClient};
use rpc_transport_tcp::{Consumer, ConsumerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Reports the trace id its call carries.
pub struct Tracer;

#[rpc_service(name = "tracer")]
impl Tracer {
    /// The call's trace id, or `none`.
    pub async fn id(ctx: &Context) -> String {
        ctx.trace_id().unwrap_or("none").to_owned()
    }
}

/// Each counter's step.
const STEP: Duration = Duration::from_millis(50);

fn counters() -> (Registry, Arc<Progress>, Arc<Progress>) {
    let (a, s) = (Progress::new(STEP), Progress::new(STEP));
    let registry = Registry::new()
        .with(AsyncCounter::new(&a))
        .and_then(|r| r.with(SyncCounter::new(&s)))
        .expect("distinct, unreserved service names");
    (registry, a, s)
}

/// Sends `line`, waits until the handler counted two steps, then leaves: closes the
/// connection, or resets it when `reset`.
async fn call_and_leave(addr: SocketAddr, line: &str, progress: &Progress, reset: bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(line.as_bytes()).await.unwrap();
    within(10, progress.reached(2)).await;
    if reset {
        // Linger zero: the close sends a reset instead of an end of stream (and never blocks,
        // which is what the deprecation warns about).
        #[allow(deprecated)]
        stream.set_linger(Some(Duration::ZERO)).unwrap();
    }
    drop(stream);
}

/// Waits for the handler's end, then checks it counted far fewer than its 100 steps and
/// counts no more.
async fn assert_stopped(progress: &Progress) {
    within(10, progress.ended()).await;
    let at_end = progress.steps();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = progress.steps();
    assert_eq!(at_end, later, "the handler kept counting after its end");
    assert!(later < 60, "the handler ran {later} of 100 steps: it was not stopped");
}

#[tokio::test]
async fn a_client_that_closes_its_connection_drops_the_async_handler() {
    let (registry, progress, _) = counters();
    let server = consumer(registry, ConsumerConfig::default()).await;
    call_and_leave(server.addr, "async_counter count 100\n", &progress, false).await;
    assert_stopped(&progress).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_resets_its_connection_drops_the_async_handler_at_once() {
    let (registry, progress, _) = counters();
    let server = consumer(registry, ConsumerConfig::default()).await;
    call_and_leave(server.addr, "async_counter count 100\n", &progress, true).await;
    assert_stopped(&progress).await;
    server.stop().await;
}

#[tokio::test]
async fn a_synchronous_handler_sees_the_cancellation_through_its_context() {
    let (registry, _, progress) = counters();
    let server = consumer(registry, ConsumerConfig::default()).await;
    call_and_leave(server.addr, "sync_counter count 100\n", &progress, false).await;
    assert_stopped(&progress).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_the_producer_cancels_the_forwarded_task_on_the_consumer() {
    let (registry, a, s) = counters();
    let backend = consumer(registry, ConsumerConfig::default()).await;
    let gateway = producer(test_producer(vec![backend.addr])).await;
    call_and_leave(gateway.addr, "async_counter count 100\n", &a, false).await;
    assert_stopped(&a).await;
    call_and_leave(gateway.addr, "sync_counter count 100\n", &s, true).await;
    assert_stopped(&s).await;
    gateway.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn a_client_that_only_closes_its_sending_side_still_gets_a_short_calls_reply() {
    let (registry, _) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    let reply = within(10, raw_then_eof(server.addr, b"lab slow 100\n")).await;
    assert_eq!(reply, b"100\n");
    let reply = within(10, raw_then_eof(server.addr, b"lab busy 100\n")).await;
    assert_eq!(reply, b"100\n");
    server.stop().await;
}

/// Serves `consumer` on a free port; the handle ends the server when dropped.
async fn serve(consumer: Consumer) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, tokio::spawn(async move { consumer.serve(listener, std::future::pending::<()>()).await }))
}

#[tokio::test]
async fn every_call_goes_through_the_consumers_layers() {
    let registry = Arc::new(Registry::new().with(Tracer).expect("distinct, unreserved service names"));
    let traced = Consumer::new(Arc::clone(&registry), ConsumerConfig::default()).layer(TraceLayer::new());
    let (addr, server) = serve(traced).await;
    let id = raw_text(addr, "tracer id\n").await;
    assert_eq!(id.trim_end().len(), 32, "the trace layer gives an untraced call a trace id: {id:?}");
    server.abort();

    let plain = Consumer::new(Arc::clone(&registry), ConsumerConfig::default());
    let (addr, server) = serve(plain).await;
    assert_eq!(raw_text(addr, "tracer id\n").await, "none\n");
    server.abort();

    // The one-line protocol carries no metadata, so no credential can arrive that way.
    let guarded = Consumer::new(registry, ConsumerConfig::default()).layer(AuthLayer::new("authorization", |_| true));
    let (addr, server) = serve(guarded).await;
    let reply = raw_text(addr, "tracer id\n").await;
    assert!(reply.starts_with("ERROR unauthenticated: "), "{reply}");
    // What the consumer answers itself does not go through the stack.
    assert!(raw_text(addr, "_rpc health\n").await.starts_with("{\"role\":\"consumer\""));
    server.abort();
}

#[tokio::test]
async fn a_callers_deadline_travels_on_the_link_and_ends_the_handlers_work_on_the_consumer() {
    let (registry, a, s) = counters();
    let backend = consumer(registry, ConsumerConfig::default()).await;
    let gateway = test_producer(vec![backend.addr]);
    // The producer's own wait ends at the deadline too; the point is the consumer's work.
    let client = AsyncCounterClient::new(gateway.clone()).with_deadline(Duration::from_millis(300));
    let err = within(10, client.count(100)).await.unwrap_err();
    assert!(matches!(err, rpc_core::RpcError::DeadlineExceeded { .. }), "{err:?}");
    assert_stopped(&a).await;
    let client = SyncCounterClient::new(gateway).with_deadline(Duration::from_millis(300));
    let err = within(10, client.count(100)).await.unwrap_err();
    assert!(matches!(err, rpc_core::RpcError::DeadlineExceeded { .. }), "{err:?}");
    assert_stopped(&s).await;
    backend.stop().await;
}

#[tokio::test]
async fn an_attempt_that_times_out_on_a_link_cancels_the_task_on_the_consumer() {
    let (registry, a, _) = counters();
    let backend = consumer(registry, ConsumerConfig::default()).await;
    let config = rpc_transport_tcp::ProducerConfig::default().with_attempt_timeout(Duration::from_millis(300));
    let gateway = rpc_transport_tcp::Producer::new(vec![backend.addr], config);
    let err = within(10, AsyncCounterClient::new(gateway).count(100)).await.unwrap_err();
    assert!(matches!(err, rpc_core::RpcError::Unavailable { .. }), "{err:?}");
    assert_stopped(&a).await;
    backend.stop().await;
}
