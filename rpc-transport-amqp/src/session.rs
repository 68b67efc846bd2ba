//! [`Session`]: the one owner of an `Rpc`'s link to the broker, and the state its handles
//! share (pending calls, registered methods, what the serving loops share).
//!
//! The link's life is one loop ([`Session::run`]): install a link (its reply loop, its return
//! loop, a serving loop per registered method), wait until it is lost, then, for an `Rpc` that
//! owns its connection, connect again with backoff and install the new link. The loops that
//! read from a link report its death through the link ([`Link::report_lost`]) and know nothing
//! of the session; only the session changes the state, fails pending calls and reconnects.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::{Channel, ConnectionProperties, Consumer};
use rpc_core::{Handler, RpcError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{self, Pending};
use crate::config::BodyLimit;
use crate::describe::{self, Catalog};
use crate::link::{Link, LinkLost, Reports};
use crate::server::{self, Registration, Serving, WrapStack};
use crate::{wire, Error, RpcConfig};

/// How long a close waits for the serving channel's last acks to be written.
const ACK_FLUSH: Duration = Duration::from_secs(1);

enum State {
    Up(Arc<Link>),
    Down,
    /// Keeps the last link: dropping the last clone of a caller's channel makes lapin close
    /// it in the background, which would race the caller's own `Connection::close`.
    Closed(#[allow(dead_code)] Option<Arc<Link>>),
}

/// The brokers an `Rpc` that owns its connection connects to, and where the next attempt
/// starts.
///
/// The order is the list's: the first connection goes to the first broker that answers; after
/// a loss, the attempts start at the broker after the one that was lost and go round the list
/// (the lost one last), so the clients of a dead node spread over the next ones in the
/// order each was given. A full round that fails waits the backoff delay before the next.
pub(crate) struct Brokers {
    urls: Vec<String>,
    properties: ConnectionProperties,
    /// Index of the broker the next round starts at.
    next: AtomicUsize,
}

impl Brokers {
    /// The brokers of `urls`; refuses an empty list and URLs that do not parse.
    pub(crate) fn new(urls: Vec<String>, properties: ConnectionProperties) -> Result<Brokers, Error> {
        if urls.is_empty() {
            return Err(Error::InvalidUrl { url: String::new(), reason: "no broker URL given".into() });
        }
        for url in &urls {
            Link::check_url(url)?;
        }
        Ok(Brokers { urls, properties, next: AtomicUsize::new(0) })
    }
}

/// What the handles of one `Rpc` share, and the owner of its link.
pub(crate) struct Session {
    pub(crate) config: Arc<RpcConfig>,
    /// Where to reconnect to; `None` for an `Rpc` on a caller's channel.
    reconnect: Option<Brokers>,
    state: Mutex<State>,
    pending: Arc<Pending>,
    handlers: Mutex<BTreeMap<String, Registration>>,
    limit: Arc<BodyLimit>,
    serving: Arc<Serving>,
    /// Generation of the live link, 0 while down.
    connected: watch::Sender<u64>,
    /// Set once by `close`, under the state lock (see `install`).
    closing: AtomicBool,
    /// Fires when `close` starts: ends the session loop and every registration.
    shutdown: CancellationToken,
    generations: AtomicU64,
    /// Handed to every link, for the loops reading from it.
    reports: Reports,
    /// What describe requests are answered with.
    pub(crate) catalog: Arc<Catalog>,
}

impl Session {
    fn new(
        config: RpcConfig,
        layers: &[WrapStack],
        reconnect: Option<Brokers>,
    ) -> (Arc<Session>, mpsc::UnboundedReceiver<LinkLost>) {
        let config = Arc::new(config);
        let limit = Arc::new(BodyLimit::new(config.max_body_size));
        let (reports, losses) = mpsc::unbounded_channel();
        let session = Session {
            serving: Arc::new(Serving::new(Arc::clone(&config), Arc::clone(&limit), layers)),
            config,
            reconnect,
            state: Mutex::new(State::Down),
            pending: Arc::new(Pending::default()),
            handlers: Mutex::new(BTreeMap::new()),
            limit,
            connected: watch::Sender::new(0),
            closing: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            generations: AtomicU64::new(0),
            reports,
            catalog: Arc::default(),
        };
        (Arc::new(session), losses)
    }

    /// A session on a channel the caller owns: no reconnection. Requests served go through
    /// `layers`.
    pub(crate) async fn create(
        config: RpcConfig,
        layers: &[WrapStack],
        channel: Channel,
    ) -> Result<Arc<Session>, Error> {
        let (session, losses) = Session::new(config, layers, None);
        let generation = session.next_generation();
        let (link, replies) =
            Link::on_channel(channel, &session.config, generation, session.reports.clone(), session.returns()).await?;
        let link = session.install(link, replies).await?;
        tokio::spawn(Arc::clone(&session).run(link, losses));
        Ok(session)
    }

    /// A session that opens its own connection to one of `brokers`, and reconnects. Requests
    /// served go through `layers`.
    pub(crate) async fn connect(
        config: RpcConfig,
        layers: &[WrapStack],
        brokers: Brokers,
    ) -> Result<Arc<Session>, Error> {
        let (session, losses) = Session::new(config, layers, Some(brokers));
        let link = session.open().await?;
        tokio::spawn(Arc::clone(&session).run(link, losses));
        Ok(session)
    }

    /// The one loop owning the link's life: wait until the live link is lost, take the loss
    /// in, and (owning the connection) connect and install a new link, with backoff; until
    /// the `Rpc` closes.
    async fn run(self: Arc<Self>, mut link: Arc<Link>, mut losses: mpsc::UnboundedReceiver<LinkLost>) {
        loop {
            let reason = tokio::select! {
                () = self.shutdown.cancelled() => return,
                reason = next_loss(&mut losses, link.generation) => match reason {
                    Some(reason) => reason,
                    None => return,
                },
            };
            self.lose(&link, &reason);
            if self.reconnect.is_none() {
                return;
            }
            // The old connection may be half alive (a cancelled consumer): let it go.
            link.close_connection().await;
            link = match self.reconnect().await {
                Some(link) => link,
                None => return,
            };
        }
    }

    /// Connects and installs a new link, at once and then with backoff (`reconnect_delay`),
    /// until it works; `None` once the `Rpc` closes.
    async fn reconnect(&self) -> Option<Arc<Link>> {
        let mut delay = self.config.reconnect_delay;
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            match self.open().await {
                Ok(link) => return Some(link),
                Err(Error::Closed) => return None,
                Err(e) => warn!(
                    error = %e,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "reconnecting to the broker failed"
                ),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = delay.saturating_mul(2).min(self.config.reconnect_max_delay);
        }
    }

    /// Connects to the first broker that answers, in the order of [`Brokers`], and installs
    /// the link; every broker's error when none does.
    async fn open(&self) -> Result<Arc<Link>, Error> {
        let Some(brokers) = &self.reconnect else { return Err(Error::NotConnected) };
        let count = brokers.urls.len();
        let first = brokers.next.load(Ordering::Relaxed) % count;
        let mut errors = Vec::new();
        for index in (first..count).chain(0..first) {
            let url = &brokers.urls[index];
            let generation = self.next_generation();
            let opened = async {
                let (link, replies) = Link::connect(
                    url,
                    brokers.properties.clone(),
                    &self.config,
                    generation,
                    self.reports.clone(),
                    self.returns(),
                )
                .await?;
                self.install(link, replies).await
            };
            match opened.await {
                Ok(link) => {
                    brokers.next.store((index + 1) % count, Ordering::Relaxed);
                    if count > 1 {
                        info!(broker = %wire::redact_url(url), generation, "connected to the broker");
                    }
                    return Ok(link);
                }
                Err(Error::Closed) => return Err(Error::Closed),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            1 => Err(errors.remove(0)),
            _ => Err(Error::NoBroker(errors)),
        }
    }

    /// The URL (password redacted) of the broker the live link is connected to.
    pub(crate) fn broker(&self) -> Option<String> {
        self.current().and_then(|link| link.broker.clone())
    }

    /// Makes `link` the live link and starts its reply loop, its return loop and one serving
    /// loop per registered method. On failure the link is taken down (its connection closed).
    async fn install(&self, link: Link, replies: Consumer) -> Result<Arc<Link>, Error> {
        let link = Arc::new(link);
        let closing = {
            let mut state = self.lock_state();
            let closing = self.closing.load(Ordering::Acquire);
            if !closing {
                *state = State::Up(Arc::clone(&link));
            }
            closing
        };
        if closing {
            link.retire();
            link.close_connection().await;
            return Err(Error::Closed);
        }
        // Up before the reply loop starts, so a link dying at once is seen as lost.
        tokio::spawn(client::reply_loop(
            Arc::clone(&link),
            Arc::clone(&self.pending),
            replies,
            self.config.max_body_size,
        ));
        tokio::spawn(client::return_loop(Arc::clone(&link), Arc::clone(&self.pending)));
        for (name, registration) in self.registrations() {
            if let Err(e) = self.start_serving(&link, &name, &registration).await {
                warn!(method = %name, error = %e, "cannot consume a method queue after (re)connecting");
                self.lose(&link, &format!("consuming '{name}': {e}"));
                link.close_connection().await;
                return Err(e);
            }
        }
        self.connected.send_replace(link.generation);
        if link.generation > 1 {
            info!(generation = link.generation, "reconnected to the broker");
        }
        Ok(link)
    }

    /// Takes in the loss of `link`: the state goes down, every pending call fails at once, the
    /// requests it held get a strike, and a size limit named in `reason` is learnt.
    fn lose(&self, link: &Link, reason: &str) {
        link.retire();
        {
            let mut state = self.lock_state();
            match &*state {
                State::Up(live) if live.generation == link.generation => *state = State::Down,
                _ => return,
            }
        }
        self.connected.send_replace(0);
        let broker = link.broker.as_deref().unwrap_or("(a caller's channel)");
        warn!(generation = link.generation, broker, reason = %reason, "lost the link to the broker; failing pending calls");
        self.serving.casualties.link_lost(link.generation, reason);
        self.limit.learn(reason);
        let message = format!("connection to the broker lost: {reason}");
        self.pending.fail_all(|| RpcError::Transport { message: message.clone(), source: None });
    }

    /// Consumes method `name` on `link`, unless it is consumed (or being started) there
    /// already.
    async fn start_serving(&self, link: &Arc<Link>, name: &str, registration: &Registration) -> Result<(), Error> {
        let key = wire::short(name).map_err(|reason| Error::invalid_name(name, reason))?;
        let mut registration = registration.clone();
        loop {
            // Claimed before the awaits: a registration and a re-installation racing on one
            // link must not both consume the queue.
            let Some(claim) = link.claim(name) else { return Ok(()) };
            let consumer = link.consume_method(&key).await?;
            if registration.is_active() && claim.fill(consumer.tag()) {
                let serving = Arc::clone(&self.serving);
                tokio::spawn(server::serve_queue(serving, Arc::clone(link), name.to_owned(), registration, consumer));
                break;
            }
            // Unregistered (or closing) meanwhile: the consumer must not outlive the
            // registration.
            link.withdraw(consumer, false).await;
            // A registration of the name made meanwhile found it claimed by this one and left
            // it to it: its turn now (the claim is released at the end of this pass).
            match self.lock_handlers().get(name) {
                Some(current) if current.is_active() && !current.is(&registration) => registration = current.clone(),
                _ => return Ok(()),
            }
        }
        if let Err(e) = self.start_describing(link).await {
            warn!(error = %e, "cannot answer describe requests on this link");
        }
        Ok(())
    }

    /// Answers describe requests on `link`, unless it does already.
    async fn start_describing(&self, link: &Arc<Link>) -> Result<(), Error> {
        let Some(claim) = link.claim(wire::DESCRIBE_EXCHANGE) else { return Ok(()) };
        let consumer = link.consume_describe().await?;
        if claim.fill(consumer.tag()) {
            tokio::spawn(describe::serve_describe(Arc::clone(&self.catalog), Arc::clone(link), consumer));
        } else {
            link.withdraw(consumer, true).await;
        }
        Ok(())
    }

    pub(crate) async fn register(&self, name: &str, handler: Arc<dyn Handler>) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::invalid_name(name, "empty (the broker would name the queue itself)"));
        }
        wire::short(name).map_err(|reason| Error::invalid_name(name, reason))?;
        if name.starts_with(rpc_core::service::RESERVED_PREFIX) {
            let reason = format!("names starting with '{}' are the framework's", rpc_core::service::RESERVED_PREFIX);
            return Err(Error::invalid_name(name, reason));
        }
        if self.is_closing() {
            return Err(Error::Closed);
        }
        let registration = Registration::new(handler, &self.shutdown);
        {
            let mut handlers = self.lock_handlers();
            if handlers.contains_key(name) {
                return Err(Error::AlreadyRegistered(name.to_owned()));
            }
            handlers.insert(name.to_owned(), registration.clone());
        }
        self.catalog.add_name(name);
        let outcome = match self.link() {
            Ok(link) => match self.start_serving(&link, name, &registration).await {
                // The link died under the registration: the next link consumes the method.
                Err(_) if self.reconnect.is_some() && !link.is_live() => Ok(()),
                other => other,
            },
            // Consumed as soon as the link is back.
            Err(RpcError::Transport { .. }) if self.reconnect.is_some() => Ok(()),
            Err(RpcError::Closed) => Err(Error::Closed),
            Err(_) => Err(Error::NotConnected),
        };
        if outcome.is_err() {
            let mut handlers = self.lock_handlers();
            if handlers.get(name).is_some_and(|r| r.is(&registration)) {
                handlers.remove(name);
                self.catalog.remove_name(name);
            }
            registration.end();
        }
        outcome
    }

    pub(crate) async fn unregister(&self, name: &str) -> Result<(), Error> {
        let Some(registration) = self.lock_handlers().remove(name) else {
            return Err(Error::NotRegistered(name.to_owned()));
        };
        self.catalog.remove_name(name);
        registration.end();
        match self.current() {
            Some(link) => link.cancel_method(name).await,
            None => Ok(()),
        }
    }

    /// The live link, for a call; why there is none otherwise.
    pub(crate) fn link(&self) -> Result<Arc<Link>, RpcError> {
        match &*self.lock_state() {
            State::Up(link) if link.is_live() => Ok(Arc::clone(link)),
            State::Closed(_) => Err(RpcError::Closed),
            _ if self.reconnect.is_some() => {
                Err(RpcError::Transport { message: "not connected to the broker (reconnecting)".into(), source: None })
            }
            _ => Err(RpcError::Transport { message: "the channel to the broker was lost".into(), source: None }),
        }
    }

    /// The live link, if there is one.
    pub(crate) fn current(&self) -> Option<Arc<Link>> {
        self.link().ok()
    }

    /// Where a link hands returned requests it finds on other publishes' confirmations.
    fn returns(&self) -> Arc<dyn crate::link::ReturnSink> {
        Arc::clone(&self.pending) as Arc<dyn crate::link::ReturnSink>
    }

    /// Calls waiting for their reply (and describe requests, [`Pending::watch`]).
    pub(crate) fn pending(&self) -> &Arc<Pending> {
        &self.pending
    }

    /// The largest body sent now.
    pub(crate) fn body_limit(&self) -> usize {
        self.limit.get()
    }

    /// The registered method names.
    pub(crate) fn registered(&self) -> Vec<String> {
        self.lock_handlers().keys().cloned().collect()
    }

    /// Waits until a link is up, at most `timeout`; whether one is.
    pub(crate) async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|generation| *generation != 0)).await.is_ok_and(|r| r.is_ok())
    }

    /// Stops consuming, waits for requests in flight (up to `shutdown_grace`), fails pending
    /// calls, deletes the reply queue and closes the connection when it is ours.
    pub(crate) async fn close(&self) {
        // Set under the state lock: an `install` either sees it or leaves an `Up` link that
        // this close then takes down.
        let link = {
            let state = self.lock_state();
            if self.closing.swap(true, Ordering::AcqRel) {
                return;
            }
            match &*state {
                State::Up(link) => Some(Arc::clone(link)),
                _ => None,
            }
        };
        self.shutdown.cancel();
        if let Some(link) = &link {
            for name in link.consumed() {
                if let Err(e) = link.cancel_method(&name).await {
                    warn!(method = %name, error = %e, "cancelling a consumer during close");
                }
            }
        }
        if let Err(left) = self.serving.drained(self.config.shutdown_grace).await {
            warn!(in_flight = left, "closing with requests still in flight after the grace period");
        }
        *self.lock_state() = State::Closed(link.clone());
        self.connected.send_replace(0);
        self.pending.fail_all(|| RpcError::Closed);
        if let Some(link) = link {
            link.retire();
            // The acks of the requests waited for above go out before the connection closes.
            link.acks.flushed(ACK_FLUSH).await;
            if link.owns_connection() {
                link.close_connection().await;
            } else {
                link.close_reply_queue().await;
            }
        }
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_handlers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Registration>> {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn registrations(&self) -> Vec<(String, Registration)> {
        self.lock_handlers().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The reason of the next loss reported for link `generation` (reports of older links are
/// stale); `None` when no link can report any more.
async fn next_loss(losses: &mut mpsc::UnboundedReceiver<LinkLost>, generation: u64) -> Option<String> {
    loop {
        let lost = losses.recv().await?;
        if lost.generation == generation {
            return Some(lost.reason);
        }
    }
}
