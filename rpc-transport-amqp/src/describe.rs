//! "What do you serve" over RabbitMQ: the describe request (`docs/AMQP.md`, "Describe").
//!
//! Servers of one vhost serve different services, so no one server can answer for all: the
//! request is published to the fanout exchange [`wire::DESCRIBE_EXCHANGE`], where every `Rpc`
//! that serves something has bound a queue of its own; each answers with what it serves
//! (its [`Catalog`]), and the caller gathers the answers for a while and merges them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::Consumer;
use rpc_core::{Context, RpcError, ServiceInfo};
use serde_json::{json, Map, Value};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::client::{read_confirmation, Pending};
use crate::link::Link;
use crate::{wire, Codec};

/// The most answers one describe request takes in.
pub(crate) const MAX_ANSWERS: usize = 4096;

/// What an `Rpc` serves: the services given to `serve` and every registered name.
#[derive(Default)]
pub(crate) struct Catalog {
    services: Mutex<Vec<&'static ServiceInfo>>,
    names: Mutex<BTreeSet<String>>,
}

impl Catalog {
    pub(crate) fn add_service(&self, info: &'static ServiceInfo) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if !services.iter().any(|s| std::ptr::eq(*s, info)) {
            services.push(info);
        }
    }

    pub(crate) fn add_name(&self, name: &str) {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned());
    }

    pub(crate) fn remove_name(&self, name: &str) {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// `{"services": [...], "definitions": {...}, "methods": [...]}`: each service with the
    /// methods registered now (as `ServiceInfo::describe_with` renders them, schemas sharing
    /// `definitions`), and every registered name, those of plain handlers included.
    pub(crate) fn describe(&self) -> Value {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut generator = rpc_core::service::generator();
        let mut described = Vec::new();
        for info in services {
            let mut service = info.describe_with(&mut generator);
            if let Some(Value::Array(methods)) = service.get_mut("methods") {
                methods.retain(|m| m["target"].as_str().is_some_and(|t| names.contains(t)));
                if methods.is_empty() {
                    continue;
                }
            }
            described.push(service);
        }
        json!({
            "services": described,
            "definitions": rpc_core::service::definitions(&mut generator),
            "methods": names.into_iter().collect::<Vec<_>>(),
        })
    }
}

/// Answers the describe requests that reach `link`'s describe queue with `catalog`, until the
/// consumer ends (the link dies or the `Rpc` closes).
pub(crate) async fn serve_describe(catalog: Arc<Catalog>, link: Arc<Link>, mut requests: Consumer) {
    while let Some(Ok(delivery)) = requests.next().await {
        // A no-ack delivery on the serving channel: it still takes a delivery tag.
        link.acks.skip(delivery.delivery_tag);
        let props = &delivery.properties;
        let Some(reply_to) = props.reply_to().clone() else {
            debug!("describe request without reply_to dropped");
            continue;
        };
        let body = match Codec::Json.encode(&catalog.describe()) {
            Ok(body) => body,
            Err(e) => {
                warn!(error = %e, "cannot encode the description");
                continue;
            }
        };
        let properties =
            wire::reply_properties(Codec::Json, props.correlation_id().as_ref(), wire::TYPE_RESULT, wire::TRANSIENT);
        // The confirm is read too (the serving channel confirms when it is a caller's channel
        // shared with the calling side): lapin keeps one dropped unread, and it may carry a
        // call's returned request.
        let published = async {
            link.server
                .basic_publish("".into(), reply_to, BasicPublishOptions::default(), &body, properties)
                .await?
                .await
        }
        .await;
        match published {
            Ok(confirmation) => {
                if link.nacked(confirmation) {
                    debug!("the broker nacked a describe answer");
                }
            }
            Err(e) => {
                debug!(error = %e, "answering a describe request");
                return;
            }
        }
    }
}

/// Publishes a describe request on `link` and gathers the answers that come within `wait`;
/// merges them: `{"servers": n, "services": [...], "definitions": {...}, "methods": [...]}`,
/// services told apart by name (servers of one service describe it alike; the first answer's
/// description is kept).
///
/// The request is published like a call (on the request channel, `mandatory`) and its return
/// is read like a call's: watched in `pending`, since lapin may hand it to a call's
/// confirmation, and a call's return handed to this request's confirmation fails that call.
///
/// Bounded: the answers taken in are at most `max_body` bytes in all and [`MAX_ANSWERS`] in
/// number; past either, later answers are dropped (logged at WARN) and the merge is of those
/// taken in.
pub(crate) async fn describe(
    link: Result<Arc<Link>, RpcError>,
    pending: &Arc<Pending>,
    wait: Duration,
    max_body: usize,
) -> Result<Value, RpcError> {
    let link = link?;
    let channel = &link.client;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker("declaring a queue for the answers", e))?;
    let queue = queue.name().clone();
    let mut answers = channel
        .basic_consume(
            queue.clone(),
            "".into(),
            BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker("consuming the answers", e))?;
    let id = Uuid::new_v4().to_string();
    let (_watched, returned) = pending.watch(&id, wire::DESCRIBE_EXCHANGE, wait);
    // Fused: polled again after it has ended (its sender gone), it stays pending.
    let mut returned = returned.fuse();
    let until = tokio::time::Instant::now() + wait;
    let deadline_ms = wire::now_ms().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
    let properties = wire::request_properties(Codec::Json, &id, &queue, wait, deadline_ms, &Context::default());
    let gathered = async {
        // Published and confirmed in a task of its own, like a call's request: a describe
        // request dropped meanwhile still reads its confirm, which may carry another call's
        // returned request (lapin keeps a confirm dropped unread, publish future included).
        let confirmed = tokio::spawn({
            let (link, pending, own) = (Arc::clone(&link), Arc::clone(pending), id.clone());
            async move {
                let requests = link.requests();
                let published = async {
                    requests
                        .basic_publish(
                            wire::DESCRIBE_EXCHANGE.into(),
                            "".into(),
                            BasicPublishOptions { mandatory: true, ..Default::default() },
                            b"{}",
                            properties,
                        )
                        .await?
                        .await
                }
                .await;
                let confirmation = published.map_err(|e| {
                    link.publish_failed(&requests, &e);
                    broker("publishing the request", e)
                })?;
                // Refused: returned (no server binds to the exchange) or nacked (said as such).
                let nacked = confirmation.is_nack();
                read_confirmation(&link, &requests, &pending, wire::DESCRIBE_EXCHANGE, &own, confirmation)
                    .map_err(|e| if nacked { e } else { unserved() })
            }
        });
        tokio::select! {
            joined = confirmed => joined.map_err(|_| RpcError::Closed)??,
            Ok(failed) = &mut returned => return Err(why_returned(failed)),
            () = tokio::time::sleep_until(until) => {
                return Err(nobody(format!("the broker did not confirm the describe request within {} ms", wait.as_millis())));
            }
        }
        let (mut replies, mut taken, mut dropped) = (Vec::new(), 0usize, 0usize);
        loop {
            let delivery = tokio::select! {
                // Returned, with its return handed to another publish's confirmation (or, with
                // publisher confirms off, collected by the link's return loop); or the link lost.
                Ok(failed) = &mut returned => return Err(why_returned(failed)),
                next = tokio::time::timeout_at(until, answers.next()) => match next {
                    Ok(Some(Ok(delivery))) => delivery,
                    _ => break,
                },
            };
            if delivery.properties.correlation_id().as_ref().is_some_and(|c| c.as_str() == id) {
                if replies.len() >= MAX_ANSWERS || taken.saturating_add(delivery.data.len()) > max_body {
                    dropped += 1;
                    continue;
                }
                taken += delivery.data.len();
                match Codec::Json.decode(&delivery.data) {
                    Ok(value) => replies.push(value),
                    Err(e) => debug!(error = %e, "undecodable describe answer dropped"),
                }
            }
        }
        if dropped > 0 {
            warn!(
                dropped,
                taken = replies.len(),
                max_body,
                "describe answers past {MAX_ANSWERS} answers or max_body_size bytes in all dropped"
            );
        }
        Ok(replies)
    };
    let outcome = gathered.await;
    let _ = channel.basic_cancel(answers.tag(), BasicCancelOptions::default()).await;
    let _ = channel.queue_delete(queue, QueueDeleteOptions::default()).await;
    let replies = outcome?;
    if replies.is_empty() {
        return Err(nobody(format!("no server answered the describe request within {} ms", wait.as_millis())));
    }
    Ok(merge(replies))
}

fn broker(what: &str, e: lapin::Error) -> RpcError {
    RpcError::transport(format!("describe: {what}: {e}"), e)
}

fn unserved() -> RpcError {
    nobody("no server of this vhost answers describe requests (none serves anything)".into())
}

/// The error for a describe request failed through [`Pending::watch`]: returned, or the link
/// lost.
fn why_returned(failed: Result<rpc_core::Reply, RpcError>) -> RpcError {
    match failed {
        Err(RpcError::Unavailable { .. }) | Ok(_) => unserved(),
        Err(e) => e,
    }
}

fn nobody(reason: String) -> RpcError {
    RpcError::Unavailable { target: wire::DESCRIBE_EXCHANGE.into(), reason }
}

/// One description out of several servers' answers.
fn merge(replies: Vec<Value>) -> Value {
    let servers = replies.len();
    let mut services: Vec<Value> = Vec::new();
    let mut definitions = Map::new();
    let mut methods = BTreeSet::new();
    for mut reply in replies {
        if let Some(Value::Array(list)) = reply.get_mut("services").map(Value::take) {
            for service in list {
                if !services.iter().any(|s| s["name"] == service["name"]) {
                    services.push(service);
                }
            }
        }
        if let Some(Value::Object(defs)) = reply.get_mut("definitions").map(Value::take) {
            for (name, schema) in defs {
                definitions.entry(name).or_insert(schema);
            }
        }
        if let Some(Value::Array(names)) = reply.get("methods") {
            methods.extend(names.iter().filter_map(|n| n.as_str().map(str::to_owned)));
        }
    }
    services.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({"servers": servers, "services": services, "definitions": definitions, "methods": methods})
}
