//! [`Link`]: one live connection's worth of broker state (channels, reply queue, consumers).
//! A reconnection builds a new `Link`; nothing survives from the old one.
//!
//! A link knows whom to tell when it dies: the loops that read from it (replies, returned
//! requests, method queues) call [`Link::report_lost`], which marks it dead and sends one
//! [`LinkLost`] to the session that owns the link's life.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::BasicReturnMessage;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::acks::{Acks, Settle};
use crate::error::ScrubbedError;
use crate::{wire, Error, RpcConfig};

/// How long [`Link::withdraw`] waits for each delivery a cancelled consumer still holds
/// (they are all there once the cancel is confirmed; this bounds a channel that fails meanwhile).
const WITHDRAW_LIMIT: Duration = Duration::from_secs(5);

/// The death of a link, as reported by the first loop that saw it.
#[derive(Debug)]
pub(crate) struct LinkLost {
    /// The link's generation.
    pub(crate) generation: u64,
    /// What the loop saw (lapin's error, a cancelled consumer).
    pub(crate) reason: String,
}

/// Where a link's death is reported: the session owning it.
pub(crate) type Reports = mpsc::UnboundedSender<LinkLost>;

/// Where a returned request goes when lapin hands it to the confirmation of a publish that is
/// not its call's (lapin hands a return to any confirmation of a batch the broker confirms at
/// once): the calls waiting for replies, which fail its call by correlation id.
pub(crate) trait ReturnSink: Send + Sync {
    fn returned(&self, message: BasicReturnMessage);
}

/// A method queue's entry in [`Link::consumers`].
#[derive(Debug)]
enum Slot {
    /// Claimed by a [`Claim`] whose consumer is being started (the number tells claims apart).
    Starting(u64),
    /// Consumed under this consumer tag.
    Consuming(ShortString),
}

/// Broker state of one connection.
pub(crate) struct Link {
    /// Counts links of one `Rpc`; replies and consumers are tied to theirs.
    pub(crate) generation: u64,
    /// The connection, when the `Rpc` opened it itself (and so closes and reopens it).
    connection: Option<Connection>,
    /// Consumes replies; requests go out on [`Link::requests`], this channel until the broker
    /// nacks one.
    pub(crate) client: Channel,
    /// Consumes method queues (with prefetch), publishes replies (confirmed only when it is
    /// also the client channel). The same channel as `client` for an `Rpc` created on a
    /// channel.
    pub(crate) server: Channel,
    /// This link's server-named reply queue.
    pub(crate) reply_queue: ShortString,
    /// The broker's URL, password redacted, when the `Rpc` opened the connection itself.
    pub(crate) broker: Option<String>,
    /// Whether method queues are declared as quorum queues.
    quorum: bool,
    reply_tag: ShortString,
    /// Method name -> its consumer on `server`, or the claim of the one being started.
    consumers: Mutex<HashMap<String, Slot>>,
    /// Numbers the claims.
    claims: AtomicU64,
    /// Set once the link is known dead.
    dead: AtomicBool,
    reports: Reports,
    /// Where returned requests found on other publishes' confirmations go.
    returns: Arc<dyn ReturnSink>,
    /// The channel requests are published on.
    requests: Mutex<Requests>,
    /// Whether request channels are in confirm mode.
    confirms: bool,
    /// The least time between two replacements of the request channel.
    renew_spacing: Duration,
    /// Settles the requests taken on `server`; coalesces acks when the channel is ours alone.
    pub(crate) acks: Arc<Acks>,
}

/// The channel requests are published on, and when its last replacement was started.
///
/// RabbitMQ keeps, per channel and quorum queue, whom it sends publishes to. A channel whose
/// first publish to a quorum queue comes while the queue's metadata still names a leader on a
/// dead node (a client reconnected to another node within a few hundred milliseconds of that
/// node's death, before the new leader is recorded) is refused there, and every later publish
/// on it to that queue is refused (nacked) too until the channel closes or that node is back:
/// the broker (3.10's `rabbit_fifo_client`) asks only the dead node again. A fresh channel reads
/// the metadata again, so a nack makes the link publish on a fresh channel
/// ([`Link::renew_requests`]).
struct Requests {
    channel: Channel,
    /// When the last replacement started; `None` before the first.
    renewed: Option<Instant>,
}

/// The claim on a method queue of a link, taken before the awaits that start its consumer, so
/// that two tasks starting the same method on one link (a registration and a re-installation
/// after a reconnection) cannot both consume it. Dropped unfilled, it releases the name.
pub(crate) struct Claim<'a> {
    link: &'a Link,
    name: String,
    id: u64,
    filled: bool,
}

impl Claim<'_> {
    /// Records `tag` as the method's consumer. `false` when the claim was withdrawn meanwhile
    /// ([`Link::cancel_method`]): the caller then withdraws the consumer it started
    /// ([`Link::withdraw`]).
    pub(crate) fn fill(mut self, tag: ShortString) -> bool {
        let mut consumers = self.link.lock_consumers();
        let Some(slot) = consumers.get_mut(&self.name) else { return false };
        if !matches!(slot, Slot::Starting(id) if *id == self.id) {
            return false;
        }
        *slot = Slot::Consuming(tag);
        self.filled = true;
        true
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.filled {
            return;
        }
        let mut consumers = self.link.lock_consumers();
        if matches!(consumers.get(&self.name), Some(Slot::Starting(id)) if *id == self.id) {
            consumers.remove(&self.name);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.acks.end();
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("generation", &self.generation)
            .field("owned", &self.connection.is_some())
            .field("reply_queue", &self.reply_queue)
            .finish_non_exhaustive()
    }
}

/// Declares `rpc.dlx` and binds the reply queue to it.
///
/// `rpc.dlx` is auto-delete (as aio-pika declares it): when another client removes the last
/// binding between our declare and our bind, the broker deletes it and refuses the bind with
/// `NOT_FOUND`, which closes the channel. On our own connection this runs on a throwaway
/// channel and is retried. On a caller's channel the declare is pipelined (`nowait`) with the
/// bind, which shrinks that window from a network round trip to the broker's handling of two
/// consecutive frames.
async fn bind_to_dlx(
    connection: Option<&Connection>,
    client: &Channel,
    reply_queue: &ShortString,
) -> Result<(), Error> {
    let declare = |channel: Channel, nowait: bool| async move {
        channel
            .exchange_declare(
                wire::DLX_EXCHANGE.into(),
                ExchangeKind::Headers,
                ExchangeDeclareOptions { auto_delete: true, durable: false, nowait, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker(format!("declaring exchange '{}'", wire::DLX_EXCHANGE), e))?;
        channel
            .queue_bind(
                reply_queue.clone(),
                wire::DLX_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                wire::reply_binding_arguments(reply_queue.as_str()),
            )
            .await
            .map_err(|e| Error::broker("binding the reply queue to the dead-letter exchange", e))
    };
    let Some(connection) = connection else {
        return declare(client.clone(), true).await;
    };
    let mut attempt = 0;
    loop {
        let scratch = connection.create_channel().await.map_err(|e| Error::broker("opening a channel", e))?;
        let outcome = declare(scratch.clone(), false).await;
        if outcome.is_ok() {
            let _ = scratch.close(200, "OK".into()).await;
        }
        match outcome {
            Err(Error::Broker { source, .. }) if attempt < 5 && source.is_amqp_soft_error() => attempt += 1,
            other => return other,
        }
    }
}

impl Link {
    /// Connects to `url` and sets up two channels. Returns the reply consumer too. The link's
    /// death goes to `reports`.
    pub(crate) async fn connect(
        url: &str,
        properties: ConnectionProperties,
        config: &RpcConfig,
        generation: u64,
        reports: Reports,
        returns: Arc<dyn ReturnSink>,
    ) -> Result<(Link, Consumer), Error> {
        let redacted = wire::redact_url(url);
        let properties = match &config.connection_name {
            Some(name) => properties.with_connection_name(name.as_str().into()),
            None => properties,
        };
        // lapin has no handshake timeout: a peer that accepts TCP and stays silent would hold
        // `connect`, and with it the reconnection loop, forever. (lapin's I/O thread for the
        // abandoned attempt ends when that peer closes the socket.)
        // Parsed here rather than by lapin, whose parse errors quote the whole URL.
        let uri: AMQPUri = url.parse().map_err(|reason: String| Error::InvalidUrl {
            url: redacted.clone(),
            reason: wire::redact_text(&reason, url),
        })?;
        let connecting = tokio::time::timeout(config.connect_timeout, Connection::connect_uri(uri, properties));
        let connection = match connecting.await {
            Ok(connected) => connected
                .map_err(|source| Error::Connect { url: redacted.clone(), source: ScrubbedError::new(&source, url) })?,
            Err(_) => return Err(Error::ConnectTimeout { url: redacted, timeout: config.connect_timeout }),
        };
        let client = connection.create_channel().await.map_err(|e| Error::broker("opening a channel", e))?;
        let server = connection.create_channel().await.map_err(|e| Error::broker("opening a channel", e))?;
        let (mut link, consumer) =
            Self::setup(Some(connection), client, server, config, generation, (reports, returns)).await?;
        link.broker = Some(redacted);
        Ok((link, consumer))
    }

    /// Refuses a URL that does not parse, before any connection is tried.
    pub(crate) fn check_url(url: &str) -> Result<(), Error> {
        url.parse::<AMQPUri>().map(drop).map_err(|reason: String| Error::InvalidUrl {
            url: wire::redact_url(url),
            reason: wire::redact_text(&reason, url),
        })
    }

    /// Sets up on a channel the caller owns.
    pub(crate) async fn on_channel(
        channel: Channel,
        config: &RpcConfig,
        generation: u64,
        reports: Reports,
        returns: Arc<dyn ReturnSink>,
    ) -> Result<(Link, Consumer), Error> {
        Self::setup(None, channel.clone(), channel, config, generation, (reports, returns)).await
    }

    async fn setup(
        connection: Option<Connection>,
        client: Channel,
        server: Channel,
        config: &RpcConfig,
        generation: u64,
        (reports, returns): (Reports, Arc<dyn ReturnSink>),
    ) -> Result<(Link, Consumer), Error> {
        let (reply_queue, consumer) = Self::declare(connection.as_ref(), &client, &server, config).await?;
        let acks = Acks::start(server.clone(), connection.is_some());
        let link = Link {
            acks,
            generation,
            connection,
            requests: Mutex::new(Requests { channel: client.clone(), renewed: None }),
            confirms: config.publisher_confirms,
            renew_spacing: config.reconnect_delay,
            client,
            server,
            reply_queue,
            broker: None,
            quorum: config.quorum_queues,
            reply_tag: consumer.tag(),
            consumers: Mutex::new(HashMap::new()),
            claims: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            reports,
            returns,
        };
        Ok((link, consumer))
    }

    /// Sets up the channels and the reply queue; returns the reply queue and its consumer.
    async fn declare(
        connection: Option<&Connection>,
        client: &Channel,
        server: &Channel,
        config: &RpcConfig,
    ) -> Result<(ShortString, Consumer), Error> {
        if config.publisher_confirms {
            client
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| Error::broker("enabling publisher confirms", e))?;
        }
        // The serving channel of `connect` publishes replies without confirms: the broker
        // handles a channel's frames in order, so the ack that follows a reply still means
        // "the reply was routed first", and the broker saves a confirm per call. A channel
        // shared with the calling side (`create`) has them anyway.
        // Per consumer (global = false): RabbitMQ deprecates global QoS; each method queue gets
        // `prefetch` unacked requests. The no-ack reply consumer is not limited by it.
        server
            .basic_qos(config.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| Error::broker("setting prefetch", e))?;

        let reply = client
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, durable: false, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker("declaring the reply queue", e))?;
        let reply_queue = reply.name().clone();
        bind_to_dlx(connection, client, &reply_queue).await?;
        let consumer = client
            .basic_consume(
                reply_queue.clone(),
                "".into(),
                BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker("consuming the reply queue", e))?;
        Ok((reply_queue, consumer))
    }

    fn lock_consumers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.consumers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether requests are published with publisher confirms.
    pub(crate) fn confirms(&self) -> bool {
        self.confirms
    }

    /// The channel to publish requests on. Calls hold it until their request is confirmed: a
    /// replaced channel closes when its last holder drops it.
    pub(crate) fn requests(&self) -> Channel {
        self.lock_requests().channel.clone()
    }

    /// After the broker nacked a request published on `nacked`: requests go out on a fresh
    /// channel from now on, unless `nacked` has been replaced already, or a replacement started
    /// less than `reconnect_delay` ago (a nack that means what it says, a queue refusing
    /// publishes, does not churn channels). Does nothing on a caller's channel (no connection to
    /// open one on). A failure to open the channel is left to the loops that watch the link.
    pub(crate) async fn renew_requests(&self, nacked: &Channel) {
        let Some(connection) = &self.connection else { return };
        {
            let mut requests = self.lock_requests();
            if requests.channel.id() != nacked.id()
                || requests.renewed.is_some_and(|at| at.elapsed() < self.renew_spacing)
            {
                return;
            }
            requests.renewed = Some(Instant::now());
        }
        let opened = async {
            let channel = connection.create_channel().await?;
            if self.confirms {
                channel.confirm_select(ConfirmSelectOptions::default()).await?;
            }
            Ok::<_, lapin::Error>(channel)
        };
        match opened.await {
            Ok(channel) => {
                info!(
                    generation = self.generation,
                    "the broker nacked a request: publishing requests on a fresh channel"
                );
                self.lock_requests().channel = channel;
            }
            Err(e) => debug!(error = %e, "opening a fresh request channel failed"),
        }
    }

    /// A publish on `channel` failed with `error`. A request channel of its own that the broker
    /// closed takes the link down, as the client channel closing does (the reply loop reports
    /// that one, from its consumer).
    pub(crate) fn publish_failed(&self, channel: &Channel, error: &lapin::Error) {
        if channel.id() != self.client.id() && !channel.status().connected() {
            self.report_lost(error.to_string());
        }
    }

    fn lock_requests(&self) -> std::sync::MutexGuard<'_, Requests> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the broker nacked a publish that is not a request (a reply, a describe answer)
    /// on a channel that may carry requests too (an `Rpc` on a caller's channel); a returned
    /// request the confirmation carries goes to its call.
    pub(crate) fn nacked(&self, confirmation: Confirmation) -> bool {
        let nack = confirmation.is_nack();
        if let Some(returned) = confirmation.take_message() {
            self.returns.returned(returned);
        }
        nack
    }

    /// Marks the link dead and tells the session why; only the first report is sent.
    pub(crate) fn report_lost(&self, reason: impl Into<String>) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            let _ = self.reports.send(LinkLost { generation: self.generation, reason: reason.into() });
        }
    }

    /// Marks the link dead without reporting it (the session retiring it itself). Settlements
    /// are still written while the serving channel lives, from now on one frame each.
    pub(crate) fn retire(&self) {
        self.dead.store(true, Ordering::Release);
        self.acks.shut();
    }

    /// Whether the link is alive: not reported dead, and its channels open as far as lapin
    /// knows (a connection the broker closed is seen here before any loop reports it).
    pub(crate) fn is_live(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
            && self.client.status().connected()
            && self.server.status().connected()
            && self.connection.as_ref().map_or(true, |c| c.status().connected())
    }

    /// Whether the `Rpc` owns this link's connection.
    pub(crate) fn owns_connection(&self) -> bool {
        self.connection.is_some()
    }

    /// Claims method queue `name` on this link before its consumer is started; `None` when it
    /// is consumed, or being started, already.
    pub(crate) fn claim(&self, name: &str) -> Option<Claim<'_>> {
        let mut consumers = self.lock_consumers();
        if consumers.contains_key(name) {
            return None;
        }
        let id = self.claims.fetch_add(1, Ordering::Relaxed);
        consumers.insert(name.to_owned(), Slot::Starting(id));
        Some(Claim { link: self, name: name.to_owned(), id, filled: false })
    }

    /// Records `tag` as the consumer of method `name` in place of the one the broker cancelled;
    /// `false` when the method is no longer consumed here ([`Link::cancel_method`]).
    pub(crate) fn replace_consumer(&self, name: &str, tag: ShortString) -> bool {
        match self.lock_consumers().get_mut(name) {
            Some(slot @ Slot::Consuming(_)) => {
                *slot = Slot::Consuming(tag);
                true
            }
            _ => false,
        }
    }

    /// Declares method queue `name` (aio-pika's arguments, or a durable quorum queue) and
    /// starts consuming it. The caller records the consumer ([`Claim::fill`],
    /// [`Link::replace_consumer`]).
    pub(crate) async fn consume_method(&self, name: &ShortString) -> Result<Consumer, Error> {
        let options =
            QueueDeclareOptions { durable: self.quorum, exclusive: false, auto_delete: false, ..Default::default() };
        let arguments =
            if self.quorum { wire::quorum_method_queue_arguments() } else { wire::method_queue_arguments() };
        // A declaration the broker refuses (an existing queue with other arguments) closes the
        // channel it was made on. On our own connection it is made on a throwaway channel, so
        // the refusal cannot take the live channels down with it.
        match &self.connection {
            Some(connection) => {
                let scratch = connection.create_channel().await.map_err(|e| Error::broker("opening a channel", e))?;
                scratch
                    .queue_declare(name.clone(), options, arguments)
                    .await
                    .map_err(|e| Error::broker(format!("declaring queue '{name}'"), e))?;
                let _ = scratch.close(200, "OK".into()).await;
            }
            None => {
                self.server
                    .queue_declare(name.clone(), options, arguments)
                    .await
                    .map_err(|e| Error::broker(format!("declaring queue '{name}'"), e))?;
            }
        }
        let consumer = self
            .server
            .basic_consume(name.clone(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|e| Error::broker(format!("consuming queue '{name}'"), e))?;
        Ok(consumer)
    }

    /// Declares the describe exchange, binds a queue of this link's own to it and consumes it
    /// (no ack) on the serving channel. The caller records the consumer ([`Claim::fill`]).
    pub(crate) async fn consume_describe(&self) -> Result<Consumer, Error> {
        let exchange = wire::DESCRIBE_EXCHANGE;
        self.server
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions { durable: false, auto_delete: false, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker(format!("declaring exchange '{exchange}'"), e))?;
        let queue = self
            .server
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker("declaring the describe queue", e))?;
        let queue = queue.name().clone();
        self.server
            .queue_bind(queue.clone(), exchange.into(), "".into(), QueueBindOptions::default(), FieldTable::default())
            .await
            .map_err(|e| Error::broker(format!("binding the describe queue to '{exchange}'"), e))?;
        self.server
            .basic_consume(
                queue,
                "".into(),
                BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker("consuming the describe queue", e))
    }

    /// Publishes one message to the default exchange on a channel opened for it alone, and
    /// waits for the broker's confirm; `None` when the link has no connection of its own (an
    /// `Rpc` on a caller's channel). A broker that refuses the message closes only that
    /// channel: the error says why.
    pub(crate) async fn publish_apart(
        &self,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> Option<Result<Confirmation, lapin::Error>> {
        let connection = self.connection.as_ref()?;
        let published = async {
            let channel = connection.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            let confirmation = channel
                .basic_publish("".into(), routing_key, BasicPublishOptions::default(), body, properties)
                .await?
                .await?;
            let _ = channel.close(200, "OK".into()).await;
            Ok(confirmation)
        };
        Some(published.await)
    }

    /// Stops consuming method queue `name` (withdrawing a claim on it, whose claimant then
    /// withdraws the consumer it started, [`Link::withdraw`]); its consumer stream ends after
    /// the deliveries it already holds.
    pub(crate) async fn cancel_method(&self, name: &str) -> Result<(), Error> {
        let slot = self.lock_consumers().remove(name);
        if let Some(Slot::Consuming(tag)) = slot {
            self.cancel_consumer(tag)
                .await
                .map_err(|e| Error::broker(format!("cancelling the consumer of '{name}'"), e))?;
        }
        Ok(())
    }

    /// Cancels one consumer on the serving channel.
    pub(crate) async fn cancel_consumer(&self, tag: ShortString) -> Result<(), lapin::Error> {
        self.server.basic_cancel(tag, BasicCancelOptions::default()).await
    }

    /// Cancels `consumer`, which nothing is going to read (its method was unregistered, or the
    /// `Rpc` began to close, while it was being started), and settles what the broker
    /// delivered to it before the cancel took effect: requests go back to their queue for
    /// another server (rejected with requeue); a no-ack consumer's deliveries are recorded as
    /// owed no frame. Dropped unread, requests would stay unacked on the serving channel until
    /// it closes, and stop the run of acks the channel coalesces.
    pub(crate) async fn withdraw(&self, mut consumer: Consumer, no_ack: bool) {
        if self.cancel_consumer(consumer.tag()).await.is_err() {
            // The channel is gone: the broker requeues what it delivered on it.
            return;
        }
        // After the broker's cancel-ok the stream yields what came before it, then ends.
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(WITHDRAW_LIMIT, consumer.next()).await {
            if no_ack {
                self.acks.skip(delivery.delivery_tag);
            } else {
                self.acks.settle(delivery.delivery_tag, Settle::Requeue, Box::new(()));
            }
        }
    }

    /// Whether `name` is consumed (or being started) on this link.
    pub(crate) fn consumes(&self, name: &str) -> bool {
        self.lock_consumers().contains_key(name)
    }

    /// Method names consumed (or being started) on this link.
    pub(crate) fn consumed(&self) -> Vec<String> {
        self.lock_consumers().keys().cloned().collect()
    }

    /// Stops the reply consumer and deletes the reply queue (the reply loop then ends).
    pub(crate) async fn close_reply_queue(&self) {
        let _ = self.client.basic_cancel(self.reply_tag.clone(), BasicCancelOptions::default()).await;
        let _ = self.client.queue_delete(self.reply_queue.clone(), QueueDeleteOptions::default()).await;
    }

    /// Closes the connection, when it is ours.
    pub(crate) async fn close_connection(&self) {
        if let Some(connection) = &self.connection {
            let _ = connection.close(200, "OK".into()).await;
        }
    }
}
