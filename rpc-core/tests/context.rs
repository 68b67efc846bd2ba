//! The call context end to end in memory: metadata, deadlines and trace ids reach handlers
//! that take `ctx: &Context`, cancellation stops their work, and nested calls inherit it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{Context, HandlerError, MemoryTransport, Registry, RpcError};
use rpc_macros::rpc_service;

/// Counts how far the slow methods got.
#[derive(Default)]
pub struct Steps {
    done: AtomicUsize,
}

pub struct Probe {
    steps: Arc<Steps>,
}

#[rpc_service]
impl Probe {
    /// What the handler sees of its call.
    pub async fn whoami(ctx: &Context, greeting: String) -> Result<String, HandlerError> {
        let token = ctx.metadata().get("authorization").unwrap_or("none");
        let remaining =
            ctx.remaining()
                .map_or("none".to_owned(), |d| if d > Duration::ZERO { "some".into() } else { "zero".into() });
        Ok(format!("{greeting} token={token} deadline={remaining} trace={}", ctx.trace_id().unwrap_or("none")))
    }

    /// Refuses callers without the right token.
    pub fn guarded(&self, ctx: &Context) -> Result<u8, HandlerError> {
        match ctx.metadata().get("authorization") {
            Some("Bearer good") => Ok(1),
            _ => Err(HandlerError::new("unauthenticated", "missing or wrong token")),
        }
    }

    /// Ten steps of 100 ms each, counted.
    pub async fn slow_async(&self) -> usize {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.steps.done.fetch_add(1, Ordering::SeqCst);
        }
        10
    }

    /// Ten steps of 100 ms each on the blocking pool, stopping when the call is cancelled.
    pub fn slow_sync(&self, ctx: &Context) -> usize {
        for step in 0..10 {
            if ctx.is_cancelled() {
                return step;
            }
            std::thread::sleep(Duration::from_millis(100));
            self.steps.done.fetch_add(1, Ordering::SeqCst);
        }
        10
    }

    /// Calls `whoami` through a client of its own: the nested call inherits this call's
    /// context.
    pub async fn relay(&self) -> Result<String, RpcError> {
        let registry =
            Registry::new().with(Probe { steps: Arc::clone(&self.steps) }).expect("distinct, unreserved service names");
        ProbeClient::new(MemoryTransport::new(registry)).whoami("nested".into()).await
    }
}

fn probe() -> (Arc<Steps>, ProbeClient<MemoryTransport>) {
    let steps = Arc::new(Steps::default());
    let registry =
        Registry::new().with(Probe { steps: Arc::clone(&steps) }).expect("distinct, unreserved service names");
    (steps, ProbeClient::new(MemoryTransport::new(registry)))
}

#[tokio::test]
async fn a_handler_reads_the_metadata_and_deadline_its_caller_sent() {
    let (_, client) = probe();
    let plain = client.whoami("hi".into()).await.unwrap();
    assert_eq!(plain, "hi token=none deadline=none trace=none");
    let client = client
        .with_metadata("Authorization", "Bearer abc")
        .unwrap()
        .with_deadline(Duration::from_secs(5))
        .with_context(Context::new().with_trace_id("trace-7"));
    assert_eq!(client.whoami("hi".into()).await.unwrap(), "hi token=Bearer abc deadline=some trace=trace-7");
}

#[tokio::test]
async fn the_context_parameter_is_not_an_argument_on_the_wire() {
    let (_, client) = probe();
    let info = client.transport().registry().service("probe").unwrap().info();
    let whoami = info.method("whoami").unwrap();
    assert_eq!(whoami.signature(), "whoami(greeting: String) -> Result<String, HandlerError>");
    assert!(whoami.takes_context);
    assert!(!info.method("slow_async").unwrap().takes_context);
}

#[tokio::test]
async fn an_async_handler_stops_at_its_deadline() {
    let (steps, client) = probe();
    let err = client.with_deadline(Duration::from_millis(250)).slow_async().await.unwrap_err();
    assert!(matches!(err, RpcError::DeadlineExceeded { .. }), "expected deadline_exceeded, got {err:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let done = steps.done.load(Ordering::SeqCst);
    assert_eq!(done, 2, "the handler ran {done} steps of 100 ms under a 250 ms deadline; expected it to stop after 2");
}

#[tokio::test]
async fn a_synchronous_handler_sees_its_cancellation_and_stops() {
    let (steps, client) = probe();
    let err = client.with_deadline(Duration::from_millis(250)).slow_sync().await.unwrap_err();
    assert!(matches!(err, RpcError::DeadlineExceeded { .. }), "expected deadline_exceeded, got {err:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let done = steps.done.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&done),
        "the handler ran {done} steps after its deadline; expected it to stop after 2 or 3"
    );
}

#[tokio::test]
async fn a_nested_call_inherits_the_handlers_metadata_trace_id_and_deadline() {
    let (_, client) = probe();
    let client = client.with_metadata("authorization", "Bearer abc").unwrap().with_deadline(Duration::from_secs(5));
    let client = client.with_context(Context::new().with_trace_id("t-1"));
    assert_eq!(client.relay().await.unwrap(), "nested token=Bearer abc deadline=some trace=t-1");
}

#[tokio::test]
async fn metadata_can_carry_an_auth_check() {
    let (_, client) = probe();
    let err = client.guarded().await.unwrap_err();
    assert!(matches!(&err, RpcError::Handler { code: Some(c), .. } if c == "unauthenticated"), "{err:?}");
    let ok = client.with_metadata("authorization", "Bearer good").unwrap().guarded().await;
    assert_eq!(ok.unwrap(), 1);
}
