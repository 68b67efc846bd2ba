//! Server-side tower layers on an `Rpc` (`RpcBuilder::layer`): every request it serves goes
//! through them, typed service methods and plain registered names alike, with the context the
//! caller sent; the shipped auth and trace layers work over RabbitMQ.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use common::{rpc, unique};
use rpc_core::layer::auth::AuthLayer;
use rpc_core::layer::trace::TraceLayer;
use rpc_core::{kwargs, Context, HandlerError, Request, RpcError};
use rpc_macros::rpc_service;
use rpc_transport_amqp::Rpc;
use serde_json::Value;
use tower::{Layer, Service};

/// What a layer saw of one request: its service, method, tenant and trace id.
type Sighting = (String, String, Option<String>, Option<String>);

/// Records every request that passes.
#[derive(Clone, Default)]
struct Record {
    seen: Arc<Mutex<Vec<Sighting>>>,
}

impl<S> Layer<S> for Record {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded { inner, seen: Arc::clone(&self.seen) }
    }
}

#[derive(Clone)]
struct Recorded<S> {
    inner: S,
    seen: Arc<Mutex<Vec<Sighting>>>,
}

impl<S: Service<Request, Response = Value, Error = RpcError>> Service<Request> for Recorded<S> {
    type Response = Value;
    type Error = RpcError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), RpcError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> S::Future {
        let ctx = &request.context;
        let sighting = (
            request.service.clone(),
            request.method.clone(),
            ctx.metadata().get("tenant").map(str::to_owned),
            ctx.trace_id().map(str::to_owned),
        );
        self.seen.lock().unwrap().push(sighting);
        self.inner.call(request)
    }
}

/// Counts the calls its handlers ran.
pub struct Greeter {
    ran: Arc<AtomicUsize>,
}

#[rpc_service(name = "amqp_layers_greeter")]
impl Greeter {
    /// `hello <name>`.
    pub async fn hello(&self, name: String) -> String {
        self.ran.fetch_add(1, Ordering::SeqCst);
        format!("hello {name}")
    }

    /// Always fails.
    pub async fn fail(&self) -> Result<u8, HandlerError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::new("nope", "it fails"))
    }
}

#[tokio::test]
async fn a_layer_sees_every_request_the_rpc_serves_with_the_callers_context() {
    let record = Record::default();
    let (_c1, channel) = common::channel().await;
    let server = Rpc::builder().layer(record.clone()).create(channel).await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    server.serve(Greeter { ran: Arc::clone(&ran) }).await.unwrap();
    let plain = unique("layers-plain");
    server.register_async(&plain, |_: Value| async move { Ok::<_, HandlerError>(7) }).await.unwrap();

    let (_c2, client_rpc) = rpc().await;
    let client = GreeterClient::new(client_rpc.clone())
        .with_metadata("tenant", "acme")
        .unwrap()
        .with_context(Context::new().with_trace_id("t-layers"));
    for i in 0..5 {
        assert_eq!(client.hello(format!("n{i}")).await.unwrap(), format!("hello n{i}"));
    }
    let err = client.fail().await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Handler { code: Some(c), .. } if c == "nope"),
        "expected RpcError::Handler {{ code: Some(c), .. }} if c == \"nope\", got {err:?}"
    );
    let seven: u8 = client_rpc.call(&plain, kwargs! {}).await.unwrap();
    assert_eq!(seven, 7);

    let seen = record.seen.lock().unwrap().clone();
    let greeter = |method: &str| {
        ("amqp_layers_greeter".to_owned(), method.to_owned(), Some("acme".to_owned()), Some("t-layers".to_owned()))
    };
    let mut expected: Vec<Sighting> = (0..5).map(|_| greeter("hello")).collect();
    expected.push(greeter("fail"));
    expected.push((String::new(), plain.clone(), None, None));
    assert_eq!(seen, expected, "the layer should see every served request, in order, with its context");
    assert_eq!(ran.load(Ordering::SeqCst), 6, "every request the layer saw reached its handler");
    server.close().await.unwrap();
}

#[tokio::test]
async fn the_auth_layer_refuses_calls_without_the_token_before_the_handler_runs_over_rabbitmq() {
    let server = Rpc::builder()
        .layer(AuthLayer::new("authorization", |token: &str| token == "Bearer good"))
        .connect(&common::url())
        .await
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    // Its own method name: another test's server of the same service has no auth layer.
    let name = unique("layers-auth");
    let counted = Arc::clone(&ran);
    server
        .register_async(&name, move |_: Value| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, HandlerError>(1) }
        })
        .await
        .unwrap();
    let (_c, client) = rpc().await;
    let anonymous = client.call::<u8>(&name, kwargs! {}).await.unwrap_err();
    assert!(
        matches!(&anonymous, RpcError::Unauthenticated { reason, .. } if reason.contains("no 'authorization'")),
        "expected unauthenticated, got {anonymous:?}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the handler never ran for a refused call");
    let request = |token: &str| {
        let ctx = Context::new().with_metadata("authorization", token).unwrap();
        Request::new("", name.clone(), kwargs! {}).with_context(ctx)
    };
    let wrong = rpc_core::Transport::call(&client, request("Bearer bad")).await.unwrap_err();
    assert_eq!(wrong.kind(), "unauthenticated", "{wrong:?}");
    assert!(!wrong.to_string().contains("Bearer bad"), "the credential is never echoed: {wrong}");
    let good = rpc_core::Transport::call(&client, request("Bearer good")).await.unwrap();
    assert_eq!(good.decode::<u8>(&name).unwrap(), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    server.close().await.unwrap();
}

#[tokio::test]
async fn the_trace_layer_gives_a_call_without_a_trace_id_one_the_handler_sees() {
    let (_c1, channel) = common::channel().await;
    let server = Rpc::builder().layer(TraceLayer::new()).create(channel).await.unwrap();
    let name = unique("layers-trace");
    server
        .register_async(&name, |_: Value| async move {
            Ok::<_, HandlerError>(Context::current().and_then(|ctx| ctx.trace_id().map(str::to_owned)))
        })
        .await
        .unwrap();
    let (_c2, client) = rpc().await;
    let assigned: Option<String> = client.call(&name, kwargs! {}).await.unwrap();
    let assigned = assigned.expect("the trace layer assigns a trace id");
    assert_eq!(assigned.len(), 32, "a new trace id is 32 hex digits, got {assigned:?}");
    let ctx = Context::new().with_trace_id("t-kept");
    let kept = rpc_core::Transport::call(&client, Request::new("", name.clone(), kwargs! {}).with_context(ctx)).await;
    assert_eq!(kept.unwrap().decode::<Option<String>>(&name).unwrap().as_deref(), Some("t-kept"));
    server.close().await.unwrap();
}
