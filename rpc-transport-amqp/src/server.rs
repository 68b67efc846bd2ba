//! The serving side: one consumer per method queue, one task per request, reply then ack.
//!
//! What must stay true: every delivery is acked (or rejected) exactly once, whatever it
//! carries, and nothing a request contains can end the consumer loop.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::Consumer;
use rpc_core::{run, Args, Context, Handler, RpcError};
use serde_json::{Map, Value};
use tracing::{debug, error, warn};

use crate::codec::error_body;
use crate::link::Link;
use crate::rpc::Shared;
use crate::{wire, Codec};

/// Consumes method queue `name` until cancelled or the link dies.
pub(crate) async fn serve_queue(
    shared: Arc<Shared>,
    link: Arc<Link>,
    name: String,
    handler: Arc<dyn Handler>,
    mut consumer: Consumer,
) {
    // `close` waits for this loop too: deliveries it still holds get answered.
    let _alive = shared.inflight_guard();
    while let Some(item) = consumer.next().await {
        match item {
            Ok(delivery) => {
                let guard = shared.inflight_guard();
                let (shared, link, handler) = (Arc::clone(&shared), Arc::clone(&link), Arc::clone(&handler));
                tokio::spawn(async move {
                    handle(&shared, &link, handler.as_ref(), delivery).await;
                    drop(guard);
                });
            }
            Err(e) => {
                warn!(method = %name, error = %e, "method consumer failed");
                shared.link_lost(link.generation, e.to_string());
                return;
            }
        }
    }
    if !shared.is_closing() && shared.is_registered(&name) && link.consumes(&name) {
        warn!(method = %name, "the broker cancelled the consumer (queue deleted?); no longer serving it");
    }
}

/// Answers one request, then acks it.
async fn handle(shared: &Shared, link: &Link, handler: &dyn Handler, delivery: Delivery) {
    let target = handler.target();
    let props = &delivery.properties;
    let Some(reply_to) = props.reply_to().clone() else {
        // Nobody could read an answer; running it anyway would be work for no one. aio-pika
        // does the same: log, ack, drop.
        warn!(method = %target, "request without reply_to dropped (acked, not run)");
        ack(&delivery, target).await;
        return;
    };
    let (codec, outcome) = evaluate(shared, handler, &delivery).await;
    let (kind, body) = encode_outcome(codec, outcome, target, shared.config.max_body_size);
    let properties = wire::reply_properties(
        codec,
        props.correlation_id().as_ref(),
        kind,
        props.delivery_mode().unwrap_or(wire::TRANSIENT),
    );
    let published = async {
        link.server
            .basic_publish("".into(), reply_to.clone(), BasicPublishOptions::default(), &body, properties)
            .await?
            .await
    }
    .await;
    match published {
        Ok(confirmation) if !confirmation.is_nack() => ack(&delivery, target).await,
        outcome => {
            // As aio-pika: reject without requeue, so the request is dead-lettered back to the
            // caller (who sees it as expired) rather than looping. When the channel itself is
            // gone this fails too and the broker requeues the request for another server.
            warn!(method = %target, reply_to = %reply_to, ?outcome, "publishing the reply failed; rejecting the request");
            if let Err(e) = delivery.reject(BasicRejectOptions { requeue: false }).await {
                debug!(method = %target, error = %e, "reject failed (channel gone; the broker requeues)");
            }
        }
    }
}

async fn ack(delivery: &Delivery, target: &str) {
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        debug!(method = %target, error = %e, "ack failed (channel gone; the broker requeues)");
    }
}

/// Decodes and runs a request: the codec to answer in, and the result.
async fn evaluate(shared: &Shared, handler: &dyn Handler, delivery: &Delivery) -> (Codec, Result<Value, RpcError>) {
    let props = &delivery.properties;
    let target = handler.target();
    let codec = match props.content_type() {
        Some(ct) => match Codec::from_content_type(ct.as_str()) {
            Some(codec) => codec,
            None => {
                let reason = format!(
                    "{target}: unsupported content type '{ct}' (expected {} or {})",
                    crate::codec::MSGPACK,
                    crate::codec::JSON
                );
                return (Codec::Json, Err(RpcError::bad_request(reason)));
            }
        },
        // No content type: JSON when it looks like a JSON object, MessagePack otherwise.
        None if delivery.data.trim_ascii_start().first() == Some(&b'{') => Codec::Json,
        None => Codec::MsgPack,
    };
    (codec, run(shared, handler, delivery, codec).await)
}

async fn run(shared: &Shared, handler: &dyn Handler, delivery: &Delivery, codec: Codec) -> Result<Value, RpcError> {
    let props = &delivery.properties;
    let target = handler.target();
    if let Some(kind) = props.kind().as_ref().map(|k| k.as_str()).filter(|k| *k != wire::TYPE_CALL) {
        return Err(RpcError::bad_request(format!("{target}: message type '{kind}' is not a call")));
    }
    if props.correlation_id().is_none() {
        return Err(RpcError::bad_request(format!("{target}: request has no correlation_id")));
    }
    let size = delivery.data.len();
    if size > shared.config.max_body_size {
        return Err(RpcError::bad_request(format!(
            "{target}: request body of {size} bytes exceeds the limit of {} bytes",
            shared.config.max_body_size
        )));
    }
    let now = wire::now_ms();
    let limit = match wire::deadline_ms(props) {
        Some(deadline) if deadline <= now => {
            debug!(method = %target, late_ms = now - deadline, "request skipped: its caller's deadline has passed");
            return Err(RpcError::deadline(target, wire::expiration(props).unwrap_or_default()));
        }
        Some(deadline) => Duration::from_millis(deadline - now),
        // A foreign caller: its TTL, or our default, bounds the run.
        None => wire::expiration(props).unwrap_or(shared.config.timeout),
    }
    .min(shared.config.max_run);
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
    let ctx = Context::new().with_deadline(limit);
    let pool = &shared.config.blocking_pool;
    let outcome = run::run(target, &ctx, async { handler.call(args, &ctx, pool)?.await }).await;
    match &outcome {
        Err(e @ RpcError::Panic { .. }) => warn!(method = %target, error = %e, "handler panicked"),
        Err(e @ RpcError::Internal { .. }) => error!(method = %target, error = %e, "handler failed"),
        Err(e) => debug!(method = %target, error = %e, "handler returned an error"),
        Ok(_) => {}
    }
    outcome
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

/// The reply's `type` and body.
fn encode_outcome(codec: Codec, outcome: Result<Value, RpcError>, target: &str, max: usize) -> (&'static str, Vec<u8>) {
    let error = match outcome.map(|value| codec.encode(&value)) {
        Ok(Ok(body)) if body.len() <= max => return (wire::TYPE_RESULT, body),
        Ok(Ok(body)) => RpcError::Internal {
            message: format!("{target}: result of {} bytes exceeds the limit of {max} bytes", body.len()),
        },
        Ok(Err(e)) => RpcError::Internal { message: format!("{target}: result does not encode: {e}") },
        Err(e) => e,
    };
    let envelope = error_body(&error);
    // Error envelopes are small JSON-compatible maps; both codecs encode them.
    let body = codec.encode(&envelope).or_else(|_| Codec::Json.encode(&envelope)).unwrap_or_default();
    (wire::TYPE_ERROR, body)
}
