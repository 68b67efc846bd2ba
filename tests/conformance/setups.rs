//! The transport configurations: each builds a server serving [`Conformance`] and a client
//! [`Transport`] to it, and says how the transport legitimately differs ([`Traits`]).

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rpc::amqp::{CallOptions, Codec, Rpc};
use rpc::core::{Handler, MemoryTransport, MethodHandler};
use rpc::http::{Gateway, HttpTransport};
use rpc::tcp::{Consumer, ConsumerConfig, Producer, ProducerConfig, TcpTransport};
use rpc::{Registry, Reply, Request, RpcError, Transport};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::service::Conformance;

/// How a transport differs from the in-memory reference, where it legitimately does.
#[derive(Debug, Clone, Copy)]
pub struct Traits {
    /// The handler error's own value (`RpcError::Handler::data`) reaches the caller.
    pub error_data: bool,
    /// Results arrive as text (`Reply::Text`), rendered by the server and parsed by the
    /// client, instead of as structured values.
    pub text_replies: bool,
    /// The call's metadata reaches the handler.
    pub metadata: bool,
    /// The error a call to a service nobody serves gets (`RpcError::kind`).
    pub unknown_service: &'static str,
    /// Dropping the call's future ends the handler's work on the server (not only the
    /// deadline does).
    pub cancel_on_drop: bool,
}

/// A client transport to a running server, and what keeps the server running.
pub struct Fixture<T> {
    /// The client side.
    pub transport: T,
    /// How this transport differs.
    pub traits: Traits,
    /// Dropped at the end of the test: the servers' stop signals and handles.
    _servers: Vec<Box<dyn Any + Send>>,
}

const REFERENCE: Traits = Traits {
    error_data: true,
    text_replies: false,
    metadata: true,
    unknown_service: "unknown_service",
    cancel_on_drop: true,
};

/// The one-line TCP protocol: results travel as text, and the line has no room for metadata
/// (the deadline is the client's own; a client that leaves closes the connection).
const TEXT_LINE: Traits = Traits { text_replies: true, metadata: false, ..REFERENCE };

fn registry() -> Registry {
    Registry::new().with(Conformance).expect("an unreserved service name")
}

/// Serves `serve` on a fresh loopback port until the returned sender drops.
async fn listen<F, Fut>(serve: F) -> (SocketAddr, Box<dyn Any + Send>)
where
    F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, stopped));
    (addr, Box::new(stop))
}

async fn consumer() -> (SocketAddr, Box<dyn Any + Send>) {
    let consumer = Consumer::new(Arc::new(registry()), ConsumerConfig::default());
    listen(|listener, stopped| async move { consumer.serve(listener, stopped).await }).await
}

/// In process, no sockets: the reference every other transport is held to.
pub async fn memory() -> Fixture<MemoryTransport> {
    Fixture { transport: MemoryTransport::new(registry()), traits: REFERENCE, _servers: Vec::new() }
}

/// A TCP Consumer, called over the one-line text protocol.
pub async fn tcp_consumer() -> Fixture<TcpTransport> {
    let (addr, server) = consumer().await;
    // The error line carries the error's JSON, handler data included.
    Fixture { transport: TcpTransport::new(addr), traits: TEXT_LINE, _servers: vec![server] }
}

/// The TCP Producer in front of two Consumers, called over TCP.
pub async fn tcp_producer() -> Fixture<TcpTransport> {
    let (a, server_a) = consumer().await;
    let (b, server_b) = consumer().await;
    let producer = Producer::new(vec![a, b], ProducerConfig::default());
    let (addr, front) = listen(|listener, stopped| async move { producer.serve(listener, stopped).await }).await;
    Fixture { transport: TcpTransport::new(addr), traits: TEXT_LINE, _servers: vec![front, server_a, server_b] }
}

/// RabbitMQ, the caller and the server on connections of their own, with `codec`.
///
/// The fixture's server takes the service's queues under a name of its own (`conformance-<uuid>`,
/// and [`Renamed`] points the client there): the tests of this binary run in parallel in one
/// vhost, and a server that stops with its test would otherwise hand a running call of
/// another test back to the broker, to be run again elsewhere.
async fn amqp(codec: Codec) -> Fixture<Renamed<Rpc>> {
    let url = rpc_testkit::url();
    let service = rpc_testkit::unique("conformance");
    let server = Rpc::connect(&url).await.expect("a broker (scripts/ensure-rabbitmq.sh)");
    for handler in MethodHandler::all(Arc::new(Conformance)) {
        let method = Handler::target(&handler).rsplit('.').next().unwrap().to_owned();
        server.register(&format!("{service}.{method}"), handler).await.unwrap();
    }
    let client = Rpc::connect(&url).await.unwrap().with_options(CallOptions::new().with_codec(codec));
    // Without a queue bound to the routing key, the broker returns the request: the caller
    // learns at once that nobody serves it, but not whether the service or the method is
    // unknown (the routing key names both).
    let traits = Traits { unknown_service: "unavailable", cancel_on_drop: false, ..REFERENCE };
    Fixture { transport: Renamed { inner: client, service }, traits, _servers: vec![Box::new(server)] }
}

/// Sends the calls to service `conformance` to the service named `service` instead.
pub struct Renamed<T> {
    inner: T,
    service: String,
}

impl<T: Transport> Transport for Renamed<T> {
    async fn call(&self, mut request: Request) -> Result<Reply, RpcError> {
        if request.service == "conformance" {
            request.service.clone_from(&self.service);
        }
        self.inner.call(request).await
    }
}

/// RabbitMQ with MessagePack bodies.
pub async fn amqp_msgpack() -> Fixture<Renamed<Rpc>> {
    amqp(Codec::MsgPack).await
}

/// RabbitMQ with JSON bodies.
pub async fn amqp_json() -> Fixture<Renamed<Rpc>> {
    amqp(Codec::Json).await
}

/// The HTTP front over the in-memory transport, called by `HttpTransport`.
pub async fn http() -> Fixture<HttpTransport> {
    let gateway = Gateway::new(MemoryTransport::new(registry()));
    let (addr, server) = listen(|listener, stopped| async move { gateway.serve(listener, stopped).await }).await;
    Fixture { transport: HttpTransport::from_addr(addr), traits: REFERENCE, _servers: vec![server] }
}

/// How long the cases wait for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);
