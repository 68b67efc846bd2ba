//! [`Rpc`]: the handle users hold, and the state its clones and background tasks share.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::{Channel, ConnectionProperties, Consumer};
use rpc_core::handler::{from_async, from_blocking};
use rpc_core::{Args, BlockingPool, Handler, MethodHandler, Reply, Request, RpcError, Service, Transport};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::client::{self, Pending};
use crate::link::Link;
use crate::{server, wire, CallOptions, Codec, Error, RpcConfig};

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
    shared: Arc<Shared>,
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
///     .timeout(Duration::from_secs(5))
///     .prefetch(8)
///     .codec(Codec::Json)
///     .connect("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .await?;
/// # let _ = rpc; Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct RpcBuilder {
    config: RpcConfig,
    properties: ConnectionProperties,
}

impl RpcBuilder {
    /// Replaces every setting at once.
    pub fn config(mut self, config: RpcConfig) -> Self {
        self.config = config;
        self
    }

    /// Default deadline of calls (30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Unacknowledged requests taken per method queue (32).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.config.prefetch = prefetch;
        self
    }

    /// Default codec of calls (MessagePack).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// Largest request body accepted or sent (8 MiB).
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config.max_body_size = bytes;
        self
    }

    /// Pool for synchronous handlers.
    pub fn blocking_pool(mut self, pool: BlockingPool) -> Self {
        self.config.blocking_pool = pool;
        self
    }

    /// The longest a server runs one request, whatever the caller's deadline
    /// ([`RpcConfig::max_run`], 5 min).
    pub fn max_run(mut self, limit: Duration) -> Self {
        self.config.max_run = limit;
        self
    }

    /// How long [`Rpc::close`] waits for in-flight requests (30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Delays between reconnection attempts: `first`, doubling up to `max`.
    pub fn reconnect_delay(mut self, first: Duration, max: Duration) -> Self {
        self.config.reconnect_delay = first;
        self.config.reconnect_max_delay = max;
        self
    }

    /// Whether calls use publisher confirms ([`RpcConfig::publisher_confirms`], on by default).
    pub fn publisher_confirms(mut self, on: bool) -> Self {
        self.config.publisher_confirms = on;
        self
    }

    /// Longest time opening a connection may take, for [`RpcBuilder::connect`] and every
    /// reconnection (30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Connection name shown by the broker, for [`RpcBuilder::connect`].
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.config.connection_name = Some(name.into());
        self
    }

    /// lapin connection properties for [`RpcBuilder::connect`] (TLS is chosen by the URL's
    /// `amqps://` scheme). Do not enable lapin's own auto-recovery: the `Rpc` reconnects by
    /// itself.
    pub fn connection_properties(mut self, properties: ConnectionProperties) -> Self {
        self.properties = properties;
        self
    }

    /// An `Rpc` on a channel the caller owns; see [`Rpc::create`].
    ///
    /// # Errors
    /// [`Error::Broker`] when the broker refuses the set-up.
    pub async fn create(self, channel: Channel) -> Result<Rpc, Error> {
        let shared = Shared::new(self.config, None);
        let generation = shared.next_generation();
        let (link, consumer) = Link::on_channel(channel, &shared.config, generation).await?;
        shared.install(link, consumer).await?;
        Ok(Rpc { shared, defaults: CallOptions::default() })
    }

    /// An `Rpc` that opens and owns its connection; see [`Rpc::connect`].
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], [`Error::Connect`] or [`Error::ConnectTimeout`] (password
    /// redacted), or [`Error::Broker`].
    pub async fn connect(self, url: &str) -> Result<Rpc, Error> {
        let shared = Shared::new(self.config, Some((url.to_owned(), self.properties)));
        let generation = shared.next_generation();
        let (link, consumer) = Link::connect(url, shared.reconnect_properties(), &shared.config, generation).await?;
        shared.install(link, consumer).await?;
        Ok(Rpc { shared, defaults: CallOptions::default() })
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
    /// for serving) and reconnects by itself when it is lost.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], [`Error::Connect`] or [`Error::ConnectTimeout`] (password
    /// redacted), or [`Error::Broker`].
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
        self.shared.register(name, Arc::new(handler)).await
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
        let mut done: Vec<String> = Vec::new();
        for handler in MethodHandler::all(Arc::new(service)) {
            let name = String::from(Handler::target(&handler));
            if let Err(e) = self.shared.register(&name, Arc::new(handler)).await {
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
        self.shared.unregister(name).await
    }

    /// Calls `method` (the routing key) with named arguments and decodes the result as `T`.
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
        let reply = client::call(&self.shared, method, args, options.or(self.defaults)).await?;
        reply.decode(method)
    }

    /// A handle sharing this `Rpc` whose calls (including through [`Transport`]) use
    /// `options` unless a call says otherwise, e.g. JSON for a typed client talking to
    /// aio-pika.
    pub fn with_options(&self, options: CallOptions) -> Rpc {
        Rpc { shared: Arc::clone(&self.shared), defaults: options.or(self.defaults) }
    }

    /// The current reply queue's name, while connected.
    pub fn reply_queue(&self) -> Option<String> {
        self.shared.current().map(|link| link.reply_queue.to_string())
    }

    /// Whether the link to the broker is up.
    pub fn is_connected(&self) -> bool {
        self.shared.current().is_some()
    }

    /// Waits until the link to the broker is up (after a reconnection), at most `timeout`.
    /// Returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|generation| *generation != 0)).await.is_ok_and(|r| r.is_ok())
    }

    /// How many calls are waiting for their reply.
    pub fn pending_calls(&self) -> usize {
        self.shared.pending.len()
    }

    /// The names this `Rpc` serves.
    pub fn registered(&self) -> Vec<String> {
        self.shared.handlers().into_iter().map(|(name, _)| name).collect()
    }

    /// The settings.
    pub fn config(&self) -> &RpcConfig {
        &self.shared.config
    }

    /// Shuts down gracefully: stops consuming, waits (up to
    /// [`RpcConfig::shutdown_grace`]) until every request taken is answered, fails pending
    /// calls with [`RpcError::Closed`], deletes the reply queue, and closes the connection
    /// if the `Rpc` opened it. Closing twice is a no-op.
    ///
    /// # Errors
    /// None at present; the signature leaves room for a broker refusing the close.
    pub async fn close(&self) -> Result<(), Error> {
        self.shared.close().await;
        Ok(())
    }
}

impl Transport for Rpc {
    /// Routing key `service.method` (just `method` when `service` is empty).
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        let key = if request.service.is_empty() { request.method.clone() } else { request.target() };
        let options = CallOptions { timeout: request.context.remaining(), codec: None }.or(self.defaults);
        client::call(&self.shared, &key, request.args, options).await
    }
}

enum State {
    Up(Arc<Link>),
    Down,
    /// Keeps the last link: dropping the last clone of a caller's channel makes lapin close
    /// it in the background, which would race the caller's own `Connection::close`.
    Closed(#[allow(dead_code)] Option<Arc<Link>>),
}

/// What the handles and the background tasks of one `Rpc` share.
pub(crate) struct Shared {
    pub(crate) config: RpcConfig,
    /// Where to reconnect to; `None` for an `Rpc` on a caller's channel.
    reconnect: Option<(String, ConnectionProperties)>,
    state: Mutex<State>,
    pub(crate) pending: Pending,
    handlers: Mutex<BTreeMap<String, Arc<dyn Handler>>>,
    /// Requests being handled plus consumer loops alive: `close` waits for zero.
    inflight: watch::Sender<usize>,
    /// Generation of the live link, 0 while down.
    connected: watch::Sender<u64>,
    closing: AtomicBool,
    generations: AtomicU64,
    /// The broker's `max_message_size`, once a refusal has named it (`usize::MAX` until then).
    broker_limit: AtomicUsize,
    /// What the server remembers to recognise poison requests.
    pub(crate) casualties: server::Casualties,
}

/// Counts one unit of work in [`Shared::inflight`] while alive.
pub(crate) struct InflightGuard(Arc<Shared>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Shared {
    fn new(config: RpcConfig, reconnect: Option<(String, ConnectionProperties)>) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            reconnect,
            state: Mutex::new(State::Down),
            pending: Pending::default(),
            handlers: Mutex::new(BTreeMap::new()),
            inflight: watch::Sender::new(0),
            connected: watch::Sender::new(0),
            closing: AtomicBool::new(false),
            generations: AtomicU64::new(0),
            broker_limit: AtomicUsize::new(usize::MAX),
            casualties: server::Casualties::default(),
        })
    }

    /// The largest body sent, request or reply: `max_body_size`, or the broker's own limit
    /// once known.
    pub(crate) fn body_limit(&self) -> usize {
        self.config.max_body_size.min(self.broker_limit.load(Ordering::Relaxed))
    }

    /// Remembers the broker's size limit when `reason` (a refusal, a channel closed by the
    /// broker) names it.
    pub(crate) fn learn_broker_limit(&self, reason: &str) {
        if let Some(limit) = wire::refused_size_limit(reason) {
            if self.broker_limit.fetch_min(limit, Ordering::Relaxed) > limit {
                warn!(
                    max_message_size = limit,
                    "the broker refuses messages over {limit} bytes; bodies are bounded by it from now on"
                );
            }
        }
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn reconnect_properties(&self) -> ConnectionProperties {
        self.reconnect.as_ref().map(|(_, p)| p.clone()).unwrap_or_default()
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(crate) fn inflight_guard(self: &Arc<Self>) -> InflightGuard {
        self.inflight.send_modify(|n| *n += 1);
        InflightGuard(Arc::clone(self))
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> Option<Arc<Link>> {
        match &*self.lock_state() {
            State::Up(link) => Some(Arc::clone(link)),
            _ => None,
        }
    }

    /// The live link, for a call.
    /// Whether `generation` is the live link.
    pub(crate) fn is_live(&self, generation: u64) -> bool {
        matches!(&*self.lock_state(), State::Up(link) if link.generation == generation)
    }

    pub(crate) fn link(&self) -> Result<Arc<Link>, RpcError> {
        match &*self.lock_state() {
            State::Up(link) => Ok(Arc::clone(link)),
            State::Closed(_) => Err(RpcError::Closed),
            State::Down if self.reconnect.is_some() => {
                Err(RpcError::Transport { message: "not connected to the broker (reconnecting)".into(), source: None })
            }
            State::Down => {
                Err(RpcError::Transport { message: "the channel to the broker was lost".into(), source: None })
            }
        }
    }

    fn handlers(&self) -> Vec<(String, Arc<dyn Handler>)> {
        let handlers = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
        handlers.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect()
    }

    pub(crate) fn is_registered(&self, name: &str) -> bool {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }

    /// Makes `link` the live link and starts its reply loop and one consumer per handler.
    async fn install(self: &Arc<Self>, link: Link, replies: Consumer) -> Result<(), Error> {
        let link = Arc::new(link);
        let closed = {
            let mut state = self.lock_state();
            let closed = matches!(*state, State::Closed(_));
            if !closed {
                *state = State::Up(Arc::clone(&link));
            }
            closed
        };
        if closed {
            link.close_connection().await;
            return Err(Error::Closed);
        }
        // Up before the reply loop starts, so a link dying at once is seen as lost.
        tokio::spawn(client::reply_loop(Arc::clone(self), Arc::clone(&link), replies));
        if !self.config.publisher_confirms {
            tokio::spawn(client::return_loop(Arc::clone(self), Arc::clone(&link)));
        }
        for (name, handler) in self.handlers() {
            if let Err(e) = self.start_serving(&link, &name, handler).await {
                warn!(method = %name, error = %e, "cannot consume a method queue after (re)connecting");
                self.link_lost(link.generation, format!("consuming '{name}': {e}"));
                return Err(e);
            }
        }
        self.connected.send_replace(link.generation);
        if link.generation > 1 {
            info!(generation = link.generation, "reconnected to the broker");
        }
        Ok(())
    }

    async fn start_serving(
        self: &Arc<Self>,
        link: &Arc<Link>,
        name: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<(), Error> {
        let key = wire::short(name).map_err(|reason| Error::invalid_name(name, reason))?;
        if link.consumes(name) {
            return Ok(());
        }
        let consumer = link.consume_method(&key).await?;
        tokio::spawn(server::serve_queue(Arc::clone(self), Arc::clone(link), name.to_owned(), handler, consumer));
        Ok(())
    }

    async fn register(self: &Arc<Self>, name: &str, handler: Arc<dyn Handler>) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::invalid_name(name, "empty (the broker would name the queue itself)"));
        }
        wire::short(name).map_err(|reason| Error::invalid_name(name, reason))?;
        if self.is_closing() {
            return Err(Error::Closed);
        }
        {
            let mut handlers = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
            if handlers.contains_key(name) {
                return Err(Error::AlreadyRegistered(name.to_owned()));
            }
            handlers.insert(name.to_owned(), Arc::clone(&handler));
        }
        let outcome = match self.link() {
            Ok(link) => self.start_serving(&link, name, handler).await,
            // Consumed as soon as the link is back.
            Err(RpcError::Transport { .. }) if self.reconnect.is_some() => Ok(()),
            Err(RpcError::Closed) => Err(Error::Closed),
            Err(_) => Err(Error::NotConnected),
        };
        if outcome.is_err() {
            self.handlers.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        }
        outcome
    }

    async fn unregister(&self, name: &str) -> Result<(), Error> {
        if self.handlers.lock().unwrap_or_else(|e| e.into_inner()).remove(name).is_none() {
            return Err(Error::NotRegistered(name.to_owned()));
        }
        match self.current() {
            Some(link) => link.cancel_method(name).await,
            None => Ok(()),
        }
    }

    /// The link of `generation` died: fail every pending call at once and, for an `Rpc`
    /// that owns its connection, reconnect in the background.
    pub(crate) fn link_lost(self: &Arc<Self>, generation: u64, reason: String) {
        let old = {
            let mut state = self.lock_state();
            match &*state {
                State::Up(link) if link.generation == generation => {
                    let old = Arc::clone(link);
                    *state = State::Down;
                    old
                }
                _ => return,
            }
        };
        self.connected.send_replace(0);
        warn!(generation, reason = %reason, "lost the link to the broker; failing pending calls");
        self.casualties.link_lost(generation, &reason);
        self.learn_broker_limit(&reason);
        let message = format!("connection to the broker lost: {reason}");
        self.pending.fail_all(|| RpcError::Transport { message: message.clone(), source: None });
        if self.reconnect.is_some() && !self.is_closing() {
            let shared = Arc::clone(self);
            tokio::spawn(async move {
                // The old connection may be half alive (a cancelled consumer): let it go.
                old.close_connection().await;
                shared.reconnect_loop().await;
            });
        }
    }

    async fn reconnect_loop(self: Arc<Self>) {
        let Some((url, _)) = &self.reconnect else { return };
        let mut delay = self.config.reconnect_delay;
        loop {
            if self.is_closing() {
                return;
            }
            let generation = self.next_generation();
            match Link::connect(url, self.reconnect_properties(), &self.config, generation).await {
                Ok((link, replies)) => match self.install(link, replies).await {
                    Ok(()) | Err(Error::Closed) => return,
                    // `install` reported the loss itself, which started a new loop.
                    Err(_) => return,
                },
                Err(e) => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "reconnecting to the broker failed")
                }
            }
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(self.config.reconnect_max_delay);
        }
    }

    async fn close(self: &Arc<Self>) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = self.current();
        if let Some(link) = &link {
            for name in link.consumed() {
                if let Err(e) = link.cancel_method(&name).await {
                    warn!(method = %name, error = %e, "cancelling a consumer during close");
                }
            }
        }
        let mut inflight = self.inflight.subscribe();
        if tokio::time::timeout(self.config.shutdown_grace, inflight.wait_for(|n| *n == 0)).await.is_err() {
            warn!(in_flight = *inflight.borrow(), "closing with requests still in flight after the grace period");
        }
        *self.lock_state() = State::Closed(link.clone());
        self.connected.send_replace(0);
        self.pending.fail_all(|| RpcError::Closed);
        if let Some(link) = link {
            if link.owns_connection() {
                link.close_connection().await;
            } else {
                link.close_reply_queue().await;
            }
        }
    }
}
