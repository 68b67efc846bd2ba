//! [`Link`]: one live connection's worth of broker state (channels, reply queue, consumers).
//! A reconnection builds a new `Link`; nothing survives from the old one.

use std::collections::HashMap;
use std::sync::Mutex;

use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use crate::error::ScrubbedError;
use crate::{wire, Error, RpcConfig};

/// Broker state of one connection.
pub(crate) struct Link {
    /// Counts links of one `Rpc`; replies and consumers are tied to theirs.
    pub(crate) generation: u64,
    /// The connection, when the `Rpc` opened it itself (and so closes and reopens it).
    connection: Option<Connection>,
    /// Publishes requests (with confirms), consumes replies.
    pub(crate) client: Channel,
    /// Consumes method queues (with prefetch), publishes replies (confirmed only when it is
    /// also the client channel). The same channel as `client` for an `Rpc` created on a
    /// channel.
    pub(crate) server: Channel,
    /// This link's server-named reply queue.
    pub(crate) reply_queue: ShortString,
    reply_tag: ShortString,
    /// Method name -> consumer tag on `server`.
    consumers: Mutex<HashMap<String, ShortString>>,
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
    /// Connects to `url` and sets up two channels. Returns the reply consumer too.
    pub(crate) async fn connect(
        url: &str,
        properties: ConnectionProperties,
        config: &RpcConfig,
        generation: u64,
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
        Self::setup(Some(connection), client, server, config, generation).await
    }

    /// Sets up on a channel the caller owns.
    pub(crate) async fn on_channel(
        channel: Channel,
        config: &RpcConfig,
        generation: u64,
    ) -> Result<(Link, Consumer), Error> {
        Self::setup(None, channel.clone(), channel, config, generation).await
    }

    async fn setup(
        connection: Option<Connection>,
        client: Channel,
        server: Channel,
        config: &RpcConfig,
        generation: u64,
    ) -> Result<(Link, Consumer), Error> {
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
        bind_to_dlx(connection.as_ref(), &client, &reply_queue).await?;
        let consumer = client
            .basic_consume(
                reply_queue.clone(),
                "".into(),
                BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker("consuming the reply queue", e))?;
        let link = Link {
            generation,
            connection,
            client,
            server,
            reply_queue,
            reply_tag: consumer.tag(),
            consumers: Mutex::new(HashMap::new()),
        };
        Ok((link, consumer))
    }

    /// Whether the `Rpc` owns this link's connection.
    pub(crate) fn owns_connection(&self) -> bool {
        self.connection.is_some()
    }

    /// Declares method queue `name` (aio-pika's arguments) and starts consuming it.
    pub(crate) async fn consume_method(&self, name: &ShortString) -> Result<Consumer, Error> {
        let options =
            QueueDeclareOptions { durable: false, exclusive: false, auto_delete: false, ..Default::default() };
        // A declaration the broker refuses (an existing queue with other arguments) closes the
        // channel it was made on. On our own connection it is made on a throwaway channel, so
        // the refusal cannot take the live channels down with it.
        match &self.connection {
            Some(connection) => {
                let scratch = connection.create_channel().await.map_err(|e| Error::broker("opening a channel", e))?;
                scratch
                    .queue_declare(name.clone(), options, wire::method_queue_arguments())
                    .await
                    .map_err(|e| Error::broker(format!("declaring queue '{name}'"), e))?;
                let _ = scratch.close(200, "OK".into()).await;
            }
            None => {
                self.server
                    .queue_declare(name.clone(), options, wire::method_queue_arguments())
                    .await
                    .map_err(|e| Error::broker(format!("declaring queue '{name}'"), e))?;
            }
        }
        let consumer = self
            .server
            .basic_consume(name.clone(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|e| Error::broker(format!("consuming queue '{name}'"), e))?;
        self.consumers.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), consumer.tag());
        Ok(consumer)
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

    /// Stops consuming method queue `name`; its consumer stream ends after the deliveries it
    /// already holds.
    pub(crate) async fn cancel_method(&self, name: &str) -> Result<(), Error> {
        let tag = self.consumers.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        if let Some(tag) = tag {
            self.server
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
                .map_err(|e| Error::broker(format!("cancelling the consumer of '{name}'"), e))?;
        }
        Ok(())
    }

    /// Whether `name` is consumed on this link.
    pub(crate) fn consumes(&self, name: &str) -> bool {
        self.consumers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }

    /// Method names consumed on this link.
    pub(crate) fn consumed(&self) -> Vec<String> {
        self.consumers.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
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
