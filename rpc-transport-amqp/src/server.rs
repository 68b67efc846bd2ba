//! The serving side: one consumer per method queue, one task per request, reply then ack
//! (acks coalesced by the link's [`Acks`](crate::acks::Acks)).
//!
//! What must stay true: every delivery is acked (or rejected) exactly once, whatever it
//! carries; nothing a request contains can end the consumer loop; every reply is made by
//! [`Reply::new`], so none is larger than the limit; and a request that comes back after
//! costing the server its link is answered with a `poison` error, not run forever
//! ([`Casualties`]).
//!
//! The serving loops read from one [`Link`] and report its death to it
//! ([`Link::report_lost`]); what they share with the session is [`Serving`], and each knows
//! its method's [`Registration`], whose signal fires when the method is unregistered or the
//! `Rpc` closes.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Consumer};
use rpc_core::layer::{self, ServerStack};
use rpc_core::{run, Args, Context, Handler, Request, RpcError};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;
use tracing::{debug, error, info, warn};

use crate::acks::Settle;
use crate::codec::error_body;
use crate::config::{BodyLimit, DIRECT_REPLY_MAX};
use crate::link::Link;
use crate::{wire, Codec, RpcConfig};

/// What the serving loops of one `Rpc` share with each other and with its session.
pub(crate) struct Serving {
    pub(crate) config: Arc<RpcConfig>,
    /// The largest reply sent.
    pub(crate) limit: Arc<BodyLimit>,
    /// What the server remembers to recognise poison requests.
    pub(crate) casualties: Casualties,
    /// Requests being handled plus consumer loops alive: `close` waits for zero.
    inflight: watch::Sender<usize>,
    /// Every request served goes through it; its innermost service is [`Dispatch`].
    stack: ServerStack,
    /// The handlers of the requests being served, for [`Dispatch`].
    table: Arc<HandlerTable>,
}

/// Wraps an `Rpc`'s server stack in one layer (`RpcBuilder::layer`).
pub(crate) type WrapStack = Arc<dyn Fn(ServerStack) -> ServerStack + Send + Sync>;

/// Counts one unit of work in [`Serving::inflight`] while alive.
struct InflightGuard(Arc<Serving>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Serving {
    /// The serving state of an `Rpc` whose server stack is [`Dispatch`] wrapped in `layers`
    /// (the last one outermost).
    pub(crate) fn new(config: Arc<RpcConfig>, limit: Arc<BodyLimit>, layers: &[WrapStack]) -> Self {
        let table = Arc::new(HandlerTable::default());
        let dispatch = Dispatch { table: Arc::clone(&table), config: Arc::clone(&config) };
        let stack = layers.iter().fold(BoxCloneSyncService::new(dispatch), |stack, wrap| wrap(stack));
        Serving { config, limit, casualties: Casualties::default(), inflight: watch::Sender::new(0), stack, table }
    }

    fn inflight_guard(self: &Arc<Self>) -> InflightGuard {
        self.inflight.send_modify(|n| *n += 1);
        InflightGuard(Arc::clone(self))
    }

    /// Waits until no request is being handled and no consumer loop holds deliveries, at most
    /// `grace`; how many are left when it gives up.
    pub(crate) async fn drained(&self, grace: Duration) -> Result<(), usize> {
        let mut inflight = self.inflight.subscribe();
        let drained = tokio::time::timeout(grace, inflight.wait_for(|n| *n == 0)).await.is_ok();
        if drained {
            Ok(())
        } else {
            Err(*inflight.borrow())
        }
    }
}

/// One registered method: its handler, and a signal that fires when it is unregistered or the
/// `Rpc` closes. Clones share the signal.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) handler: Arc<dyn Handler>,
    ended: CancellationToken,
}

impl Registration {
    /// A registration of `handler` that also ends when `parent` fires (the `Rpc` closing).
    pub(crate) fn new(handler: Arc<dyn Handler>, parent: &CancellationToken) -> Self {
        Registration { handler, ended: parent.child_token() }
    }

    /// Whether the method is still registered.
    pub(crate) fn is_active(&self) -> bool {
        !self.ended.is_cancelled()
    }

    /// Ends the registration: its serving loops stop re-declaring the queue.
    pub(crate) fn end(&self) {
        self.ended.cancel();
    }

    /// Whether `other` is this registration (or a clone of it).
    pub(crate) fn is(&self, other: &Registration) -> bool {
        Arc::ptr_eq(&self.handler, &other.handler)
    }
}

/// The handlers of the requests being served, by method queue name: each request holds its
/// handler here while it goes through the stack, so [`Dispatch`] finds the handler of the
/// consumer that took it, even after an `unregister`.
#[derive(Default)]
struct HandlerTable {
    /// Queue name -> the handler, and how many requests hold it.
    entries: Mutex<HashMap<String, TableEntry>>,
}

/// A [`HandlerTable`] entry.
struct TableEntry {
    handler: Arc<dyn Handler>,
    holders: usize,
}

/// A request's hold on its handler in the [`HandlerTable`].
struct Holding<'a> {
    table: &'a HandlerTable,
    name: &'a str,
}

impl HandlerTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TableEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `handler` for queue `name` until the holding drops (the latest holder's handler
    /// answers while requests of two registrations of one name overlap).
    fn hold<'a>(&'a self, name: &'a str, handler: &Arc<dyn Handler>) -> Holding<'a> {
        let mut entries = self.lock();
        let entry =
            entries.entry(name.to_owned()).or_insert_with(|| TableEntry { handler: Arc::clone(handler), holders: 0 });
        entry.handler = Arc::clone(handler);
        entry.holders += 1;
        Holding { table: self, name }
    }

    fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.lock().get(name).map(|held| Arc::clone(&held.handler))
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut entries = self.table.lock();
        if let Some(entry) = entries.get_mut(self.name) {
            entry.holders -= 1;
            if entry.holders == 0 {
                entries.remove(self.name);
            }
        }
    }
}

/// The innermost service of an `Rpc`'s server stack: runs the handler of the request's method
/// queue (`service.method`, or the bare method name) under the run policy, its deadline
/// capped by `max_run`.
#[derive(Clone)]
struct Dispatch {
    table: Arc<HandlerTable>,
    config: Arc<RpcConfig>,
}

impl tower::Service<Request> for Dispatch {
    type Response = Value;
    type Error = RpcError;
    type Future = BoxFuture<'static, Result<Value, RpcError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), RpcError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let name = queue_name(&request);
        let handler = self.table.get(&name);
        let config = Arc::clone(&self.config);
        async move {
            let Some(handler) = handler else {
                return Err(RpcError::Unavailable { target: name, reason: "this server does not serve it".into() });
            };
            let Request { args, context, .. } = request;
            let ctx = run::effective_context(context, Some(config.max_deadline));
            let pool = &config.blocking_pool;
            run::run(handler.target(), &ctx, async { handler.call(args, &ctx, pool)?.await }).await
        }
        .boxed()
    }
}

/// The method queue a request is for: `service.method`, or `method` when the service is empty.
fn queue_name(request: &Request) -> String {
    if request.service.is_empty() {
        request.method.clone()
    } else {
        request.target()
    }
}

/// The request for method queue `name`: `calculator.calculate` is method `calculate` of
/// service `calculator`; a name without a dot is a bare method (`sleep`).
fn request_for(name: &str, args: Args, context: Context) -> Request {
    let (service, method) = name.split_once('.').unwrap_or(("", name));
    Request::new(service, method, args).with_context(context)
}

/// Consumes method queue `name` until cancelled or the link dies. When the broker cancels
/// the consumer while the method is still registered (its queue was deleted), declares the
/// queue again and goes on serving.
pub(crate) async fn serve_queue(
    serving: Arc<Serving>,
    link: Arc<Link>,
    name: String,
    registration: Registration,
    mut consumer: Consumer,
) {
    loop {
        // `close` waits for this loop too: deliveries it still holds get answered.
        let alive = serving.inflight_guard();
        while let Some(item) = consumer.next().await {
            match item {
                Ok(delivery) => {
                    let guard = serving.inflight_guard();
                    let (serving, link, name) = (Arc::clone(&serving), Arc::clone(&link), name.clone());
                    let handler = Arc::clone(&registration.handler);
                    tokio::spawn(async move { handle(&serving, &link, &name, &handler, delivery, guard).await });
                }
                Err(e) => {
                    warn!(method = %name, error = %e, "method consumer failed");
                    link.report_lost(e.to_string());
                    return;
                }
            }
        }
        drop(alive);
        if !still_serving(&registration, &link) || !link.consumes(&name) {
            return;
        }
        warn!(method = %name, "the broker cancelled the consumer (queue deleted?); declaring the queue again");
        match resume(&serving, &link, &name, &registration).await {
            Some(again) => consumer = again,
            None => return,
        }
    }
}

/// Whether the method of `registration` should still be served on `link`.
fn still_serving(registration: &Registration, link: &Link) -> bool {
    registration.is_active() && link.is_live()
}

/// Declares method queue `name` again and consumes it, retrying with backoff
/// (`reconnect_delay`) until it works, the method is unregistered, the link dies or the
/// `Rpc` closes.
async fn resume(serving: &Serving, link: &Link, name: &str, registration: &Registration) -> Option<Consumer> {
    let key = wire::short(name).ok()?;
    let mut delay = serving.config.reconnect_delay;
    loop {
        match link.consume_method(&key).await {
            Ok(consumer) if still_serving(registration, link) && link.replace_consumer(name, consumer.tag()) => {
                info!(method = %name, "method queue declared again; serving it");
                return Some(consumer);
            }
            // Unregistered meanwhile: the new consumer must not outlive the registration.
            Ok(consumer) => {
                link.withdraw(consumer, false).await;
                return None;
            }
            Err(e) => warn!(
                method = %name,
                error = %e,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "cannot declare the method queue again"
            ),
        }
        tokio::time::sleep(delay).await;
        if !still_serving(registration, link) {
            return None;
        }
        delay = delay.saturating_mul(2).min(serving.config.reconnect_max_delay);
    }
}

/// Answers one request taken from method queue `name`, then settles it (acks it, or rejects
/// it when no reply could be published) through the link's [`Acks`]; `guard` is released
/// once that is written.
async fn handle(
    serving: &Serving,
    link: &Link,
    name: &str,
    handler: &Arc<dyn Handler>,
    delivery: Delivery,
    guard: InflightGuard,
) {
    let settle = |how: Settle| link.acks.settle(delivery.delivery_tag, how, Box::new(guard));
    let target = handler.target();
    let props = &delivery.properties;
    let Some(reply_to) = props.reply_to().clone() else {
        // Nobody could read an answer; running it anyway would be work for no one. aio-pika
        // does the same: log, ack, drop.
        warn!(method = %target, "request without reply_to dropped (acked, not run)");
        settle(Settle::Ack);
        return;
    };
    let casualties = &serving.casualties;
    let key = casualties.key(target, &delivery);
    let _held = casualties.hold(link.generation, delivery.delivery_tag, key);
    let verdict = if delivery.redelivered { casualties.verdict(key) } else { None };
    let limit = serving.limit.get();
    let reply = match verdict {
        Some(poison) => {
            warn!(method = %target, "redelivered request refused as poison (acked, not run again)");
            let codec = request_codec(target, &delivery).unwrap_or(Codec::Json);
            Reply::new(codec, Err(poison.error(target)), target, limit)
        }
        None => {
            let (codec, outcome) = evaluate(serving, name, handler, &delivery).await;
            Reply::new(codec, outcome, target, limit)
        }
    };
    let mut published = publish(link, &reply_to, &delivery, &reply).await;
    if let Published::Refused(reason) = &published {
        // The link is intact (a large reply is refused on a channel of its own), so a short
        // error reply (a few hundred bytes, under any broker's limit) still goes out, and the
        // request is acked.
        serving.limit.learn(reason);
        warn!(method = %target, size = reply.body.len(), reason = %reason, "the broker refused a reply; answering with an error");
        let refusal = Reply::new(reply.codec, Err(refused(target, &reply, reason)), target, limit);
        published = publish(link, &reply_to, &delivery, &refusal).await;
    }
    let why = match published {
        Published::Done => {
            casualties.answered(key);
            return settle(Settle::Ack);
        }
        Published::Refused(reason) => reason,
        Published::Failed(e) => e.to_string(),
    };
    // As aio-pika: reject without requeue, so the request is dead-lettered back to the caller
    // (who sees it as expired) rather than looping. When the channel itself is gone the reject
    // fails too and the broker requeues the request for another server.
    warn!(method = %target, reply_to = %reply_to, error = %why, "publishing the reply failed; rejecting the request");
    settle(Settle::Reject);
}

/// What became of a reply.
#[derive(Debug)]
enum Published {
    /// Published (and, where the channel confirms, confirmed).
    Done,
    /// The broker refused it (a nack, or the channel it was sent on alone was closed).
    Refused(String),
    /// The serving channel failed.
    Failed(lapin::Error),
}

/// Publishes `reply` to `reply_to`: on the serving channel when it is small (or the link has no
/// connection of its own); otherwise on a channel of its own with a confirm, so that a broker
/// refusing it (its `max_message_size`) closes only that channel.
async fn publish(link: &Link, reply_to: &ShortString, delivery: &Delivery, reply: &Reply) -> Published {
    let props = &delivery.properties;
    let properties = wire::reply_properties(
        reply.codec,
        props.correlation_id().as_ref(),
        reply.kind,
        props.delivery_mode().unwrap_or(wire::TRANSIENT),
    );
    if reply.body.len() > DIRECT_REPLY_MAX {
        if let Some(apart) = link.publish_apart(reply_to.clone(), &reply.body, properties.clone()).await {
            return match apart {
                Ok(confirmation) if !confirmation.is_nack() => Published::Done,
                Ok(_) => Published::Refused("the broker did not confirm the reply (nack)".into()),
                Err(e) => Published::Refused(e.to_string()),
            };
        }
    }
    let published = async {
        link.server
            .basic_publish("".into(), reply_to.clone(), BasicPublishOptions::default(), &reply.body, properties)
            .await?
            .await
    }
    .await;
    match published.map(|confirmation| link.nacked(confirmation)) {
        Ok(false) => Published::Done,
        Ok(true) => Published::Refused("the broker did not confirm the reply (nack)".into()),
        Err(e) => Published::Failed(e),
    }
}

/// The short error that replaces a reply the broker refused.
fn refused(target: &str, reply: &Reply, reason: &str) -> RpcError {
    let reason: String = reason.chars().take(300).collect();
    let (code, message) = match wire::refused_size_limit(&reason) {
        Some(limit) => (
            REPLY_TOO_LARGE,
            format!(
                "the {} of {} bytes exceeds the broker's max_message_size of {limit} bytes",
                reply.about,
                reply.body.len()
            ),
        ),
        None => {
            (REPLY_REFUSED, format!("the broker refused the {} of {} bytes: {reason}", reply.about, reply.body.len()))
        }
    };
    RpcError::Handler { target: target.to_owned(), code: Some(code.to_owned()), message, data: None }
}

/// Code of the error that replaces a reply larger than the limit.
pub(crate) const REPLY_TOO_LARGE: &str = "reply_too_large";
/// Code of the error that replaces a reply the broker refused for another reason.
pub(crate) const REPLY_REFUSED: &str = "reply_refused";
/// Code of the error that answers a request refused as poison.
pub(crate) const POISON: &str = "poison";

/// A reply ready to publish.
struct Reply {
    codec: Codec,
    /// `result` or `error`.
    kind: &'static str,
    body: Vec<u8>,
    /// What it is, for messages: `result`, `error reply (handler, unknown_operator)`.
    about: String,
}

impl Reply {
    /// The reply to `outcome`, never larger than `limit` bytes: the one bound on what a server
    /// publishes. A larger result or error becomes a `reply_too_large` error of a few hundred
    /// bytes, which is sent whatever the limit.
    fn new(codec: Codec, outcome: Result<Value, RpcError>, target: &str, limit: usize) -> Reply {
        let (about, size) = match Self::encode(codec, outcome, target, limit) {
            Ok(reply) if reply.body.len() <= limit => return reply,
            Ok(reply) => (reply.about, reply.body.len().to_string()),
            Err(over) => over,
        };
        let message = format!("the {about} of {size} bytes exceeds the reply limit of {limit} bytes");
        debug!(method = %target, %message, "reply replaced by reply_too_large");
        let error =
            RpcError::Handler { target: target.to_owned(), code: Some(REPLY_TOO_LARGE.into()), message, data: None };
        Self::encode_error(codec, &error, "error reply (reply_too_large)".into())
    }

    /// The reply as it would be published; `Err((what it is, its size))` for an error whose
    /// text alone makes the reply larger than `limit`, which is then never built.
    fn encode(
        codec: Codec,
        outcome: Result<Value, RpcError>,
        target: &str,
        limit: usize,
    ) -> Result<Reply, (String, String)> {
        let error = match outcome.map(|value| codec.encode(&value)) {
            Ok(Ok(body)) => return Ok(Reply { codec, kind: wire::TYPE_RESULT, body, about: "result".into() }),
            Ok(Err(e)) => RpcError::Internal { message: format!("{target}: result does not encode: {e}") },
            Err(e) => e,
        };
        let about = match &error {
            RpcError::Handler { code: Some(code), .. } => {
                format!("error reply ({}, {})", error.kind(), code.chars().take(64).collect::<String>())
            }
            other => format!("error reply ({})", other.kind()),
        };
        // The envelope holds the error's text twice (`message`, `args`): one quoting a huge
        // argument is refused from its length, before copies of it are made.
        let text = display_len(&error).saturating_mul(2);
        if text > limit {
            return Err((about, format!("at least {text}")));
        }
        Ok(Self::encode_error(codec, &error, about))
    }

    fn encode_error(codec: Codec, error: &RpcError, about: String) -> Reply {
        let envelope = error_body(error);
        // Error envelopes are small JSON-compatible maps; both codecs encode them.
        let body = codec.encode(&envelope).or_else(|_| Codec::Json.encode(&envelope)).unwrap_or_default();
        Reply { codec, kind: wire::TYPE_ERROR, body, about }
    }
}

/// The length of `error`'s text, counted without writing it out.
fn display_len(error: &RpcError) -> usize {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 = self.0.saturating_add(s.len());
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = std::fmt::Write::write_fmt(&mut count, format_args!("{error}"));
    count.0
}

/// The codec a request is answered in, or why it cannot be read.
fn request_codec(target: &str, delivery: &Delivery) -> Result<Codec, RpcError> {
    match delivery.properties.content_type() {
        Some(ct) => Codec::from_content_type(ct.as_str()).ok_or_else(|| {
            RpcError::bad_request(format!(
                "{target}: unsupported content type '{ct}' (expected {} or {})",
                crate::codec::MSGPACK,
                crate::codec::JSON
            ))
        }),
        // No content type: JSON when it looks like a JSON object, MessagePack otherwise.
        None if delivery.data.trim_ascii_start().first() == Some(&b'{') => Ok(Codec::Json),
        None => Ok(Codec::MsgPack),
    }
}

/// Decodes and runs a request: the codec to answer in, and the result.
async fn evaluate(
    serving: &Serving,
    name: &str,
    handler: &Arc<dyn Handler>,
    delivery: &Delivery,
) -> (Codec, Result<Value, RpcError>) {
    match request_codec(handler.target(), delivery) {
        Ok(codec) => (codec, serve(serving, name, handler, delivery, codec).await),
        // A content type we do not read is answered in JSON, which every peer reads.
        Err(e) => (Codec::Json, Err(e)),
    }
}

/// Checks and decodes a request, and runs it through the server stack.
async fn serve(
    serving: &Serving,
    name: &str,
    handler: &Arc<dyn Handler>,
    delivery: &Delivery,
    codec: Codec,
) -> Result<Value, RpcError> {
    let config = &serving.config;
    let props = &delivery.properties;
    let target = handler.target();
    if let Some(kind) = props.kind().as_ref().map(|k| k.as_str()).filter(|k| *k != wire::TYPE_CALL) {
        return Err(RpcError::bad_request(format!("{target}: message type '{kind}' is not a call")));
    }
    if props.correlation_id().is_none() {
        return Err(RpcError::bad_request(format!("{target}: request has no correlation_id")));
    }
    let size = delivery.data.len();
    if size > config.max_body_size {
        return Err(RpcError::bad_request(format!(
            "{target}: request body of {size} bytes exceeds the limit of {} bytes",
            config.max_body_size
        )));
    }
    let ctx = request_context(config, target, props)?;
    let args = match codec.decode(&delivery.data) {
        Ok(Value::Object(map)) => Args::Named(map),
        Ok(Value::Null) => Args::Named(Map::new()),
        Ok(other) => {
            return Err(RpcError::bad_request(format!(
                "{target}: the body must be a map of named arguments, got {}",
                json_type(&other)
            )))
        }
        Err(e) => return Err(RpcError::bad_request(format!("{target}: {e}"))),
    };
    let _holding = serving.table.hold(name, handler);
    let outcome = layer::call(&serving.stack, request_for(name, args, ctx)).await;
    match &outcome {
        Err(e @ RpcError::Panic { .. }) => warn!(method = %target, error = %e, "handler panicked"),
        Err(e @ RpcError::Internal { .. }) => error!(method = %target, error = %e, "handler failed"),
        Err(e) => debug!(method = %target, error = %e, "handler returned an error"),
        Ok(_) => {}
    }
    outcome
}

/// The call's context, rebuilt from the request's headers: the caller's deadline (or, from a
/// foreign caller, its TTL or our default; [`Dispatch`] caps it by `max_run`), its trace id
/// and its metadata, checked by the same rules as the caller's own.
///
/// # Errors
/// [`RpcError::DeadlineExceeded`] when the caller's deadline has passed already;
/// [`RpcError::BadRequest`] naming a header the context cannot take in.
fn request_context(config: &RpcConfig, target: &str, props: &BasicProperties) -> Result<Context, RpcError> {
    let now = wire::now_ms();
    let caller = match wire::deadline_ms(props) {
        Some(deadline) if deadline <= now => {
            debug!(method = %target, late_ms = now - deadline, "request skipped: its caller's deadline has passed");
            return Err(RpcError::deadline(target, wire::expiration(props).unwrap_or_default()));
        }
        Some(deadline) => Duration::from_millis(deadline - now),
        // A foreign caller: its TTL, or our default, bounds the run.
        None => wire::expiration(props).unwrap_or(config.deadline),
    };
    let ctx = wire::request_context(props).map_err(|reason| RpcError::bad_request(format!("{target}: {reason}")))?;
    Ok(ctx.with_deadline(caller))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

/// How many requests a server remembers in each of its poison memories.
const REMEMBERED: usize = 4096;

/// What a server remembers to recognise poison: the requests it holds, those it answered
/// recently, and those it held when it lost its link. Bounded: at most [`REMEMBERED`] of each
/// (oldest forgotten first), 8 bytes a request (a keyed hash of its method, correlation id,
/// reply queue and size).
///
/// A redelivered request is poison when this server already answered it and the broker took
/// the link down (before it saw the ack: the reply itself may be what the broker refused), or
/// when it was being handled at each of two losses of the link. A request merely being handled
/// at one loss (a network cut, a broker closing the connection) runs again, as at-least-once
/// delivery promises; so does an answered one when the link died of an I/O error (its node
/// died, the network failed): its reply most likely died with the connection.
#[derive(Default)]
pub(crate) struct Casualties {
    state: Mutex<CasualtyState>,
    hasher: RandomState,
}

#[derive(Default)]
struct CasualtyState {
    /// Requests being handled: (link generation, delivery tag) -> key.
    held: HashMap<(u64, u64), u64>,
    /// Requests answered recently.
    answered: Remembered,
    /// Requests held at a loss of the link: key -> how many losses.
    struck: Remembered,
    /// Why the link was last lost (cut to 200 characters).
    last_loss: String,
    /// Whether that loss was an I/O error (the peer gone) rather than the broker closing the
    /// link.
    last_loss_io: bool,
}

/// A bounded map that forgets its oldest entries.
#[derive(Default)]
struct Remembered {
    order: VecDeque<u64>,
    values: HashMap<u64, u8>,
}

impl Remembered {
    fn get(&self, key: u64) -> Option<u8> {
        self.values.get(&key).copied()
    }

    fn bump(&mut self, key: u64) {
        match self.values.get_mut(&key) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                self.values.insert(key, 1);
                self.order.push_back(key);
                while self.order.len() > REMEMBERED {
                    if let Some(old) = self.order.pop_front() {
                        self.values.remove(&old);
                    }
                }
            }
        }
    }
}

/// Why a redelivered request is refused.
#[derive(Debug)]
pub(crate) struct Poison {
    answered: bool,
    last_loss: String,
}

impl Poison {
    fn error(&self, target: &str) -> RpcError {
        let message = if self.answered {
            format!(
                "redelivered after this server answered it and lost its link to the broker before the ack \
                 ({}); its reply may be what the broker refused, so it is not run again",
                self.last_loss
            )
        } else {
            format!(
                "it was being handled at each of the last two losses of this server's link to the broker \
                 (last: {}); it is not run again",
                self.last_loss
            )
        };
        RpcError::Handler { target: target.to_owned(), code: Some(POISON.into()), message, data: None }
    }
}

/// Removes a request from [`CasualtyState::held`] when its handling ends.
pub(crate) struct Held<'a> {
    casualties: &'a Casualties,
    id: (u64, u64),
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.casualties.lock().held.remove(&self.id);
    }
}

impl Casualties {
    fn lock(&self) -> std::sync::MutexGuard<'_, CasualtyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of a request: its method, correlation id, reply queue and size.
    fn key(&self, target: &str, delivery: &Delivery) -> u64 {
        let props = &delivery.properties;
        self.hasher.hash_one((
            target,
            props.correlation_id().as_ref().map(ShortString::as_str),
            props.reply_to().as_ref().map(ShortString::as_str),
            delivery.data.len(),
        ))
    }

    fn hold(&self, generation: u64, tag: u64, key: u64) -> Held<'_> {
        self.lock().held.insert((generation, tag), key);
        Held { casualties: self, id: (generation, tag) }
    }

    fn answered(&self, key: u64) {
        self.lock().answered.bump(key);
    }

    /// Whether a redelivered request is poison.
    fn verdict(&self, key: u64) -> Option<Poison> {
        let state = self.lock();
        let answered = state.answered.get(key).is_some() && !state.last_loss_io;
        (answered || state.struck.get(key) >= Some(2)).then(|| Poison { answered, last_loss: state.last_loss.clone() })
    }

    /// The link of `generation` died: every request it held gets a strike.
    pub(crate) fn link_lost(&self, generation: u64, reason: &str) {
        let mut state = self.lock();
        let CasualtyState { held, struck, last_loss, .. } = &mut *state;
        held.retain(|(g, _), key| {
            if *g == generation {
                struck.bump(*key);
            }
            *g != generation
        });
        *last_loss = reason.chars().take(200).collect();
        // lapin's text for a socket error; a close by the broker names its reply code instead.
        state.last_loss_io = reason.starts_with("IO error");
    }
}
