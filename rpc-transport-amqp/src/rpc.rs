//! [`Rpc`]: the handle users hold, and [`RpcBuilder`]. What the handles share, and the
//! link's life, belong to the session (`session.rs`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, ConnectionProperties};
use rpc_core::handler::{from_async, from_blocking};
use rpc_core::layer::{self, ServerStack};
use rpc_core::{Args, BlockingPool, Context, Handler, MethodHandler, Reply, Request, RpcError, Service, Transport};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::client::{self, Call};
use crate::server::WrapStack;
use crate::session::{Brokers, Session};
use crate::{CallOptions, Codec, Error, RpcConfig};

/// Request/reply RPC over RabbitMQ: calls remote methods and serves local ones.
///
/// One `Rpc` is both a client ([`Rpc::call`], and [`Transport`] for `#[rpc_service]` typed
/// clients) and a server ([`Rpc::register`], [`Rpc::serve`]). Clones share everything (the
/// channels, the reply queue, the registered handlers); calls from many tasks run
/// concurrently, matched to their replies by correlation id.
///
/// Made by [`Rpc::create`] on a channel you own (no reconnection: when the channel dies,
/// pending and later calls fail with [`RpcError::Transport`]), or by [`Rpc::connect`], which
/// owns its connection and reconnects by itself, re-declaring its reply queue and consuming
/// every registered method again.
///
/// Background tasks keep serving until [`Rpc::close`]; dropping the handles does not stop
/// them.
#[derive(Clone)]
pub struct Rpc {
    session: Arc<Session>,
    defaults: CallOptions,
}

impl std::fmt::Debug for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpc")
            .field("reply_queue", &self.reply_queue())
            .field("registered", &self.registered())
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Rpc`] with non-default settings.
///
/// ```no_run
/// # async fn run() -> Result<(), rpc_transport_amqp::Error> {
/// use std::time::Duration;
/// use rpc_transport_amqp::{Codec, Rpc};
/// let rpc = Rpc::builder()
///     .with_deadline(Duration::from_secs(5))
///     .with_prefetch(8)
///     .with_codec(Codec::Json)
///     .connect("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .await?;
/// # let _ = rpc; Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct RpcBuilder {
    config: RpcConfig,
    properties: ConnectionProperties,
    layers: Layers,
}

/// The server-side layers of an [`RpcBuilder`], innermost first.
#[derive(Clone, Default)]
struct Layers(Vec<WrapStack>);

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} layer(s)", self.0.len())
    }
}

impl RpcBuilder {
    /// Replaces every setting at once.
    #[doc(hidden)]
    #[must_use]
    pub fn config(mut self, config: RpcConfig) -> Self {
        self.config = config;
        self
    }

    /// The deadline of a call that sets none: how long it waits for its reply unless the call says otherwise
    /// ([`rpc_core::DEFAULT_DEADLINE`], 30 s). Also the longest a server runs a request that
    /// carries no deadline of its own (a foreign client that sets no `expiration`).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = deadline;
        self
    }

    /// How many unacknowledged requests a server takes from each method queue at once
    /// (`basic.qos` prefetch, per consumer): the bound on concurrent requests per method.
    /// Default 32.
    #[must_use]
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.config.prefetch = prefetch;
        self
    }

    /// The codec calls are sent in unless the call says otherwise (MessagePack).
    #[must_use]
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// The largest body a server accepts and a client sends, requests and replies alike
    /// (8 MiB). A larger request gets a `bad_request` error reply; a larger call fails before
    /// it is published; a larger reply, result or error, is replaced by a short
    /// `reply_too_large` error. A client takes in no reply larger than this (from a server that
    /// does not bound its replies: the call fails with a protocol error, undecoded), and a
    /// describe request no more than this in all. Once the broker has refused a message for
    /// its size, its `max_message_size` bounds what is sent too. Keep it at or below the
    /// broker's limit.
    #[must_use]
    pub fn with_max_body_size(mut self, bytes: usize) -> Self {
        self.config.max_body_size = bytes;
        self
    }

    /// Where synchronous handlers run (one slot per CPU by default).
    #[must_use]
    pub fn with_blocking_pool(mut self, pool: BlockingPool) -> Self {
        self.config.blocking_pool = pool;
        self
    }

    /// The longest a server runs one request, whatever deadline the caller sent (5 min): a
    /// caller cannot pin a prefetch slot for longer. The request then gets
    /// `deadline_exceeded`.
    #[must_use]
    pub fn with_max_deadline(mut self, max_deadline: Duration) -> Self {
        self.config.max_deadline = max_deadline;
        self
    }

    /// How long [`Rpc::close`](crate::Rpc::close) waits for in-flight requests to be
    /// answered before closing anyway.
    /// Default 30 s.
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Delays between reconnection attempts: `first` (100 ms), doubling up to `max` (5 s).
    #[must_use]
    pub fn with_reconnect_delay(mut self, first: Duration, max: Duration) -> Self {
        self.config.reconnect_delay = first;
        self.config.reconnect_max_delay = max;
        self
    }

    /// Whether calls are published with publisher confirms (default `true`).
    ///
    /// On: a call counts as sent once the broker confirms it, and a request nobody can
    /// receive (no queue bound: `mandatory` publish returned) fails at once with
    /// `RpcError::Unavailable`, delivered with the confirm. Off: the broker does a confirm's
    /// less work per call (about 30% more calls/s at 64 in flight, BENCHMARKS.md); returned
    /// requests are then collected every 10 ms and still
    /// fail their call with `Unavailable`, but a request the broker loses without returning
    /// it (a nack) is only noticed at the call's deadline.
    #[must_use]
    pub fn with_publisher_confirms(mut self, on: bool) -> Self {
        self.config.publisher_confirms = on;
        self
    }

    /// How long opening a connection (TCP, TLS and the AMQP handshake) may take before the
    /// attempt counts as failed (30 s), for `connect` and every reconnection attempt: a peer
    /// that accepts the TCP connection and then says nothing must not stall it forever.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Whether the method queues this `Rpc` serves are quorum queues (durable, replicated on
    /// the cluster's nodes: requests waiting in them survive the death of a node) instead of
    /// aio-pika's classic ones (off by default). Every server of a method must agree: the
    /// broker refuses a declaration of the other kind (`docs/AMQP.md`, "Quorum method queues").
    #[must_use]
    pub fn with_quorum_queues(mut self, on: bool) -> Self {
        self.config.quorum_queues = on;
        self
    }

    /// The connection name shown by the broker (`rabbitmqctl list_connections
    /// client_properties`), for connections the `Rpc` opens itself.
    #[must_use]
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.config.connection_name = Some(name.into());
        self
    }

    /// lapin connection properties for [`RpcBuilder::connect`] (TLS is chosen by the URL's
    /// `amqps://` scheme). Do not enable lapin's own auto-recovery: the `Rpc` reconnects by
    /// itself, and a channel lapin recovers numbers its deliveries from 1 again, so the
    /// server's coalesced acks (docs/AMQP.md, "Delivery semantics") would settle requests
    /// nobody has answered.
    #[must_use]
    pub fn with_connection_properties(mut self, properties: ConnectionProperties) -> Self {
        self.properties = properties;
        self
    }

    /// Runs every request the `Rpc` serves through `layer` (a tower [`Layer`](tower::Layer)
    /// around the server's dispatch, like `MemoryTransport::layer`); the last layer added runs
    /// first.
    ///
    /// The request a layer sees names the method queue (`service.method`, or `method` for a
    /// plain registered name), carries the decoded named arguments and the context rebuilt
    /// from the message's headers (the caller's deadline, trace id and metadata); below the
    /// layers, the handler runs under the run policy with the deadline capped by `with_max_deadline`.
    /// Requests refused before decoding (bad content type, body too large, bad context
    /// headers, a passed deadline, poison) are answered without reaching the stack.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), rpc_transport_amqp::Error> {
    /// use rpc_core::layer::AuthLayer;
    /// use rpc_transport_amqp::Rpc;
    /// let rpc = Rpc::builder()
    ///     .layer(AuthLayer::new("authorization", |token: &str| token == "Bearer s3cret"))
    ///     .connect("amqp://guest:guest@127.0.0.1:5672/%2f")
    ///     .await?;
    /// # let _ = rpc; Ok(()) }
    /// ```
    #[must_use]
    pub fn layer<L, S>(mut self, layer: L) -> Self
    where
        L: tower::Layer<ServerStack, Service = S> + Send + Sync + 'static,
        S: tower::Service<Request, Response = Value, Error = RpcError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        self.layers.0.push(Arc::new(move |stack| layer::wrap(stack, &layer)));
        self
    }

    /// An `Rpc` on a channel the caller owns; see [`Rpc::create`].
    ///
    /// # Errors
    /// [`Error::Broker`] when the broker refuses the set-up.
    pub async fn create(self, channel: Channel) -> Result<Rpc, Error> {
        let session = Session::create(self.config, &self.layers.0, channel).await?;
        Ok(Rpc { session, defaults: CallOptions::default() })
    }

    /// An `Rpc` that opens and owns its connection; see [`Rpc::connect`]. `url` may name
    /// several brokers, separated by commas ([`wire::broker_urls`](crate::wire::broker_urls)).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], [`Error::Connect`] or [`Error::ConnectTimeout`] (password
    /// redacted), [`Error::NoBroker`] when several were named, or [`Error::Broker`].
    pub async fn connect(self, url: &str) -> Result<Rpc, Error> {
        let urls = crate::wire::broker_urls(url);
        self.connect_any(urls).await
    }

    /// An `Rpc` that opens and owns its connection to the first of `urls` that answers, and
    /// on a loss fails over to the others: after losing a broker, it tries the next ones in
    /// the list's order, the lost one last, then waits the backoff delay
    /// ([`RpcBuilder::with_reconnect_delay`]) before another round. Use it with the nodes of one
    /// RabbitMQ cluster (`docs/AMQP.md`, "Clusters"); give each process the list in its own
    /// order to spread the connections over the nodes.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] (an empty list, or a URL that does not parse; nothing is tried
    /// then), [`Error::NoBroker`] with each broker's error when none answers (the error of
    /// the only one for a list of one), or [`Error::Broker`].
    pub async fn connect_any<I, S>(self, urls: I) -> Result<Rpc, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls = urls.into_iter().map(|u| u.as_ref().trim().to_owned()).collect();
        let brokers = Brokers::new(urls, self.properties)?;
        let session = Session::connect(self.config, &self.layers.0, brokers).await?;
        Ok(Rpc { session, defaults: CallOptions::default() })
    }
}

impl Rpc {
    /// A builder for non-default settings.
    pub fn builder() -> RpcBuilder {
        RpcBuilder::default()
    }

    /// An `Rpc` on `channel` (aio-pika's `RPC.create(channel)`), with default settings.
    ///
    /// It enables publisher confirms on the channel, declares a server-named reply queue
    /// bound to the `rpc.dlx` headers exchange, and consumes it. The channel stays yours:
    /// [`Rpc::close`] does not close it. There is no reconnection; use [`Rpc::connect`] for
    /// that.
    ///
    /// # Errors
    /// [`Error::Broker`] when the broker refuses the set-up.
    pub async fn create(channel: Channel) -> Result<Rpc, Error> {
        Self::builder().create(channel).await
    }

    /// An `Rpc` that connects to `url`, owns the connection (two channels: one for calls, one
    /// for serving) and reconnects by itself when it is lost. `url` may list the nodes of a
    /// cluster, separated by commas: see [`RpcBuilder::connect_any`] for the failover order.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], [`Error::Connect`] or [`Error::ConnectTimeout`] (password
    /// redacted), [`Error::NoBroker`], or [`Error::Broker`].
    pub async fn connect(url: &str) -> Result<Rpc, Error> {
        Self::builder().connect(url).await
    }

    /// Serves `handler` under `name`: declares queue `name` (aio-pika's arguments) and
    /// consumes it. Requests run concurrently up to the prefetch.
    ///
    /// # Errors
    /// [`Error::AlreadyRegistered`], [`Error::InvalidName`], [`Error::Broker`] (e.g. the
    /// queue exists with other arguments), [`Error::NotConnected`] on a lost channel,
    /// [`Error::Closed`].
    pub async fn register(&self, name: &str, handler: impl Handler) -> Result<(), Error> {
        self.session.register(name, Arc::new(handler)).await
    }

    /// Serves an async function taking one `Deserialize` struct of named arguments.
    ///
    /// ```no_run
    /// # async fn run(rpc: rpc_transport_amqp::Rpc) -> Result<(), rpc_transport_amqp::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct Sleep { t: f64 }
    /// rpc.register_async("sleep", |a: Sleep| async move {
    ///     tokio::time::sleep(std::time::Duration::from_secs_f64(a.t)).await;
    ///     Ok::<_, std::convert::Infallible>(a.t)
    /// }).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Rpc::register`].
    pub async fn register_async<F, A, Fut, T, E>(&self, name: &str, f: F) -> Result<(), Error>
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        A: DeserializeOwned + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: std::fmt::Display + 'static,
    {
        self.register(name, from_async(name, f)).await
    }

    /// Serves a synchronous function (run on the blocking pool) taking one `Deserialize`
    /// struct of named arguments.
    ///
    /// # Errors
    /// As [`Rpc::register`].
    pub async fn register_blocking<F, A, T, E>(&self, name: &str, f: F) -> Result<(), Error>
    where
        F: Fn(A) -> Result<T, E> + Send + Sync + 'static,
        A: DeserializeOwned + Send + 'static,
        T: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.register(name, from_blocking(name, f)).await
    }

    /// Serves every method of `service` as `<service>.<method>` (e.g. `calculator.calculate`).
    ///
    /// # Errors
    /// As [`Rpc::register`]; on error, the methods registered by this call are unregistered.
    pub async fn serve<S: Service>(&self, service: S) -> Result<(), Error> {
        self.session.catalog.add_service(service.info());
        let mut done: Vec<String> = Vec::new();
        for handler in MethodHandler::all(Arc::new(service)) {
            let name = String::from(Handler::target(&handler));
            if let Err(e) = self.session.register(&name, Arc::new(handler)).await {
                for name in &done {
                    let _ = self.unregister(name).await;
                }
                return Err(e);
            }
            done.push(name);
        }
        Ok(())
    }

    /// Stops serving `name`. Requests already taken are still answered; the queue stays.
    ///
    /// # Errors
    /// [`Error::NotRegistered`], or [`Error::Broker`] if the cancel fails.
    pub async fn unregister(&self, name: &str) -> Result<(), Error> {
        self.session.unregister(name).await
    }

    /// Calls `method` (the routing key) with named arguments and decodes the result as `T`.
    ///
    /// Made from a handler, the call carries the handler's trace id and metadata and ends by
    /// the handler's deadline ([`Context::for_outgoing_call`]).
    ///
    /// ```no_run
    /// # async fn run(rpc: rpc_transport_amqp::Rpc) -> Result<(), rpc_core::RpcError> {
    /// let slept: f64 = rpc.call("sleep", rpc_core::kwargs! { "t" => 3 }).await?;
    /// # let _ = slept; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RpcError::DeadlineExceeded`] when no reply comes in time; [`RpcError::Unavailable`]
    /// at once when no queue is bound to `method`; the remote error (kind and message) when
    /// the handler failed or panicked; [`RpcError::Decode`] when the result is not a `T`;
    /// [`RpcError::Transport`] when the link to the broker fails; [`RpcError::Closed`].
    pub async fn call<T: DeserializeOwned>(&self, method: &str, args: Args) -> Result<T, RpcError> {
        self.call_with(method, args, CallOptions::default()).await
    }

    /// [`Rpc::call`] with per-call options (deadline, codec).
    ///
    /// # Errors
    /// As [`Rpc::call`].
    pub async fn call_with<T: DeserializeOwned>(
        &self,
        method: &str,
        args: Args,
        options: CallOptions,
    ) -> Result<T, RpcError> {
        let options = options.or(self.defaults);
        // Inside a handler, the call carries the handler's trace id and metadata, and never
        // outlives its deadline.
        let context = Context::for_outgoing_call();
        let timeout = options.deadline.unwrap_or(self.session.config.deadline);
        let timeout = context.remaining().map_or(timeout, |left| left.min(timeout));
        let reply = self.send(Call { method, args, context, timeout, codec: self.codec(options) }).await?;
        reply.decode(method)
    }

    /// A handle sharing this `Rpc` whose calls (including through [`Transport`]) use
    /// `options` unless a call says otherwise, e.g. JSON for a typed client talking to
    /// aio-pika.
    pub fn with_options(&self, options: CallOptions) -> Rpc {
        Rpc { session: Arc::clone(&self.session), defaults: options.or(self.defaults) }
    }

    /// The current reply queue's name, while connected.
    #[doc(hidden)]
    pub fn reply_queue(&self) -> Option<String> {
        self.session.current().map(|link| link.reply_queue.to_string())
    }

    /// Whether the link to the broker is up.
    pub fn is_connected(&self) -> bool {
        self.session.current().is_some()
    }

    /// What the servers of this vhost serve: publishes a describe request, which every `Rpc`
    /// serving something answers with its services (as `rpc_core::ServiceInfo::describe_with`
    /// renders them: methods, parameters with types and JSON Schemas, return types, docs) and
    /// its registered names, and merges the answers that come within `wait` (it always waits
    /// that long: the number of servers is not known; at most 4,096 answers and `max_body_size`
    /// bytes of them are taken in). The shape:
    /// `{"servers": 2, "services": [..], "definitions": {..}, "methods": ["calculator.calculate", ..]}`
    /// (`docs/AMQP.md`, "Describe").
    ///
    /// # Errors
    /// [`RpcError::Unavailable`] when no server serves anything on the vhost, or none answered
    /// within `wait`; [`RpcError::Transport`] without a link.
    pub async fn describe(&self, wait: Duration) -> Result<Value, RpcError> {
        let max_body = self.session.config.max_body_size;
        crate::describe::describe(self.session.link(), self.session.pending(), wait, max_body).await
    }

    /// The broker the `Rpc` is connected to now (its URL, password redacted); `None` while
    /// it reconnects, and for an `Rpc` on a caller's channel.
    pub fn broker(&self) -> Option<String> {
        self.session.broker()
    }

    /// Waits until the link to the broker is up (after a reconnection), at most `timeout`.
    /// Returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.session.wait_connected(timeout).await
    }

    /// How many calls are waiting for their reply (describe requests gathering answers
    /// included).
    #[doc(hidden)]
    pub fn pending_calls(&self) -> usize {
        self.session.pending().len()
    }

    /// The names this `Rpc` serves.
    pub fn registered(&self) -> Vec<String> {
        self.session.registered()
    }

    /// The settings.
    #[doc(hidden)]
    pub fn config(&self) -> &RpcConfig {
        &self.session.config
    }

    /// Shuts down gracefully: stops consuming, waits (up to
    /// [`RpcBuilder::with_shutdown_grace`]) until every request taken is answered, fails pending
    /// calls with [`RpcError::Closed`], deletes the reply queue, and closes the connection
    /// if the `Rpc` opened it. Closing twice is a no-op.
    ///
    /// # Errors
    /// None at present; the signature leaves room for a broker refusing the close.
    pub async fn close(&self) -> Result<(), Error> {
        self.session.close().await;
        Ok(())
    }

    fn codec(&self, options: CallOptions) -> Codec {
        options.codec.unwrap_or(self.session.config.codec)
    }

    /// Publishes `call` on the live link and waits for its reply.
    async fn send(&self, call: Call<'_>) -> Result<Reply, RpcError> {
        let session = &self.session;
        client::call(session.link(), session.pending(), session.body_limit(), call).await
    }
}

impl Transport for Rpc {
    /// Routing key `service.method` (just `method` when `service` is empty); the request's
    /// context travels in headers (deadline, trace id, metadata: `docs/AMQP.md`).
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        let key = if request.service.is_empty() { request.method.clone() } else { request.target() };
        let options = CallOptions { deadline: request.context.remaining(), codec: None }.or(self.defaults);
        let timeout = options.deadline.unwrap_or(self.session.config.deadline);
        let call =
            Call { method: &key, args: request.args, context: request.context, timeout, codec: self.codec(options) };
        self.send(call).await
    }
}
