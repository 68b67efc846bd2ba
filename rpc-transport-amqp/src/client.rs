//! The calling side: publish a request, wait for the reply with the same correlation id.
//!
//! The reply loop and the return loop read from one [`Link`] and report its death to it
//! ([`Link::report_lost`]); they know nothing of the session that owns the link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::{BasicReturnMessage, Delivery};
use lapin::options::BasicPublishOptions;
use lapin::Consumer;
use rpc_core::{Args, Context, Reply, RpcError};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, field, Instrument};
use uuid::Uuid;

use crate::codec::parse_error_body;
use crate::config::RETURN_POLL;
use crate::link::{Link, ReturnSink};
use crate::{wire, Codec};

type Outcome = Result<Reply, RpcError>;

/// How long after its publish a call waits for its reply before it reads its publisher
/// confirm (see `publish_and_wait`): a returned or nacked request fails no sooner.
pub(crate) const CONFIRM_GRACE: Duration = Duration::from_millis(5);

/// Stands in for deadlines too far away to represent.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// One call waiting for its reply.
struct Waiter {
    tx: oneshot::Sender<Outcome>,
    deadline: Instant,
    timeout: Duration,
    target: String,
    codec: Codec,
}

/// Calls waiting for replies, by correlation id. The lock is never held across an await.
#[derive(Default)]
pub(crate) struct Pending {
    waiters: Mutex<HashMap<String, Waiter>>,
}

/// Removes its call from [`Pending`] when the call ends, however it ends (cancelled too).
pub(crate) struct Entry<'a> {
    pending: &'a Pending,
    id: String,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, id: String, waiter: Waiter) -> Entry<'_> {
        self.lock().insert(id.clone(), waiter);
        Entry { pending: self, id }
    }

    /// Registers a mandatory publish that is not a call (a describe request) under `id`, for
    /// as long as the entry lives: lapin may hand its return to any confirmation of the
    /// channel, a call's included, and the call's reader then fails it here. The receiver gets
    /// that failure; nothing else is sent to it (its answers do not come to the reply queue).
    pub(crate) fn watch(&self, id: &str, target: &str, wait: Duration) -> (Entry<'_>, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now().checked_add(wait).unwrap_or_else(|| Instant::now() + FAR_FUTURE);
        let waiter = Waiter { tx, deadline, timeout: wait, target: target.to_owned(), codec: Codec::Json };
        (self.insert(id.to_owned(), waiter), rx)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Fails the call waiting under `id`, if it is still waiting.
    fn fail(&self, id: &str, error: RpcError) {
        let waiter = self.lock().remove(id);
        if let Some(waiter) = waiter {
            let _ = waiter.tx.send(Err(error));
        }
    }

    /// Fails every waiting call with `error()`.
    pub(crate) fn fail_all(&self, error: impl Fn() -> RpcError) {
        let waiters: Vec<Waiter> = self.lock().drain().map(|(_, w)| w).collect();
        for waiter in waiters {
            let _ = waiter.tx.send(Err(error()));
        }
    }

    /// Hands a reply to its call. The first reply wins; duplicates, unknown ids and replies
    /// past the deadline are dropped. A reply over `max_body` bytes fails its call undecoded
    /// (a JSON body decodes into several times its size).
    fn on_reply(&self, delivery: &Delivery, max_body: usize) {
        let props = &delivery.properties;
        let Some(id) = props.correlation_id() else {
            debug!("reply without correlation id dropped");
            return;
        };
        let Some(waiter) = self.lock().remove(id.as_str()) else {
            debug!(correlation_id = %id, "reply to an unknown or finished call dropped (duplicate or late)");
            return;
        };
        let Waiter { tx, deadline, timeout, target, codec } = waiter;
        if Instant::now() >= deadline {
            debug!(correlation_id = %id, "reply after the deadline dropped");
            let _ = tx.send(Err(RpcError::deadline(&target, timeout)));
            return;
        }
        if delivery.data.len() > max_body {
            let reason = format!(
                "{target}: reply of {} bytes exceeds the limit of {max_body} bytes (max_body_size)",
                delivery.data.len()
            );
            let _ = tx.send(Err(RpcError::protocol(reason)));
            return;
        }
        // A reply without a content type is read in the call's codec; one in a content type we
        // do not speak is refused rather than guessed at (a guess can yield a wrong value).
        let codec = match props.content_type().as_ref() {
            None => codec,
            Some(ct) => match Codec::from_content_type(ct.as_str()) {
                Some(codec) => codec,
                None => {
                    let reason = format!("{target}: reply in unsupported content type '{ct}'");
                    let _ = tx.send(Err(RpcError::protocol(reason)));
                    return;
                }
            },
        };
        let body = || {
            codec.decode(&delivery.data).map_err(|e| RpcError::protocol(format!("{target}: undecodable reply: {e}")))
        };
        let outcome = match props.kind().as_ref().map(|k| k.as_str()) {
            Some(wire::TYPE_RESULT) => body().map(Reply::Value),
            Some(wire::TYPE_ERROR) => Err(body().map_or_else(|e| e, |v| parse_error_body(v, &target))),
            // Our own request, dead-lettered back through rpc.dlx.
            Some(wire::TYPE_CALL) => Err(match wire::death_reason(props).as_deref() {
                None | Some("expired") => RpcError::deadline(&target, timeout),
                Some(reason) => RpcError::Unavailable {
                    target: target.clone(),
                    reason: format!("the request was dead-lettered ({reason})"),
                },
            }),
            other => Err(RpcError::protocol(format!("{target}: reply of unknown type {other:?}"))),
        };
        let _ = tx.send(outcome);
    }
}

/// Reads the reply queue until the link dies or the `Rpc` closes, then reports why it ended.
/// Replies over `max_body` bytes fail their call.
pub(crate) async fn reply_loop(link: Arc<Link>, pending: Arc<Pending>, mut replies: Consumer, max_body: usize) {
    let reason = loop {
        match replies.next().await {
            Some(Ok(delivery)) => pending.on_reply(&delivery, max_body),
            Some(Err(e)) => break e.to_string(),
            None => break "the reply consumer was cancelled".to_owned(),
        }
    };
    link.report_lost(reason);
}

/// lapin keeps, until `wait_for_confirms` drains them, the returned messages of a channel
/// without publisher confirms and those carried by confirms dropped unread (a call cancelled,
/// or out of time, while its publish was being written drops its confirm with the publish
/// future). So the link polls it, confirms or not; each returned request fails its own call,
/// found by its correlation id.
pub(crate) async fn return_loop(link: Arc<Link>, pending: Arc<Pending>) {
    let mut tick = tokio::time::interval(RETURN_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !link.is_live() {
            return;
        }
        // A dead channel is noticed (and reported) by the reply loop.
        let Ok(returned) = link.requests().wait_for_confirms().await else { return };
        for message in returned {
            pending.returned(message);
        }
    }
}

impl ReturnSink for Pending {
    /// Fails the call a returned request belongs to, found by its correlation id.
    fn returned(&self, message: BasicReturnMessage) {
        match message.delivery.properties.correlation_id() {
            Some(id) => self.fail(id.as_str(), unroutable(&message)),
            None => {
                debug!(routing_key = %message.delivery.routing_key, "returned message without correlation id dropped")
            }
        }
    }
}

/// One call to publish.
pub(crate) struct Call<'a> {
    /// The routing key.
    pub(crate) method: &'a str,
    pub(crate) args: Args,
    /// The call's trace id and metadata, sent in headers.
    pub(crate) context: Context,
    /// How long the caller waits (sent as the deadline).
    pub(crate) timeout: Duration,
    pub(crate) codec: Codec,
}

/// Publishes `call` on `link` (or fails with why there is none) and waits for its reply in
/// `pending`. No body over `body_limit` is sent.
pub(crate) async fn call(
    link: Result<Arc<Link>, RpcError>,
    pending: &Arc<Pending>,
    body_limit: usize,
    call: Call<'_>,
) -> Result<Reply, RpcError> {
    let correlation_id = Uuid::new_v4().to_string();
    let span = tracing::info_span!(
        "rpc.call",
        method = %call.method,
        correlation_id = %correlation_id,
        duration_ms = field::Empty,
        outcome = field::Empty,
    );
    let started = std::time::Instant::now();
    let outcome = publish_and_wait(link, pending, body_limit, call, &correlation_id).instrument(span.clone()).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let kind = outcome.as_ref().map_or_else(RpcError::kind, |_| "ok");
    span.record("duration_ms", duration_ms);
    span.record("outcome", kind);
    debug!(parent: &span, duration_ms, outcome = kind, "call finished");
    outcome
}

async fn publish_and_wait(
    link: Result<Arc<Link>, RpcError>,
    pending: &Arc<Pending>,
    body_limit: usize,
    call: Call<'_>,
    correlation_id: &str,
) -> Result<Reply, RpcError> {
    let Call { method, args, context, timeout, codec } = call;
    // `Duration::MAX` means "no deadline"; a year is as good and cannot overflow.
    let deadline = Instant::now().checked_add(timeout).unwrap_or_else(|| Instant::now() + FAR_FUTURE);
    let key = wire::short(method).map_err(|reason| RpcError::bad_request(format!("method name: {reason}")))?;
    let Args::Named(map) = args else {
        return Err(RpcError::bad_request(format!(
            "{method}: AMQP calls take named arguments (kwargs!), not text tokens"
        )));
    };
    let body = codec.encode(&Value::Object(map)).map_err(|e| RpcError::bad_request(format!("{method}: {e}")))?;
    if body.len() > body_limit {
        return Err(RpcError::bad_request(format!(
            "{method}: request body of {} bytes exceeds the limit of {body_limit} bytes",
            body.len()
        )));
    }
    let link = link?;
    let (tx, mut rx) = oneshot::channel();
    let waiter = Waiter { tx, deadline, timeout, target: method.to_owned(), codec };
    let _entry = pending.insert(correlation_id.to_owned(), waiter);
    // The session fails every waiting call when it learns the link died; a link that died
    // before this call waited would never fail it.
    if !link.is_live() {
        return Err(RpcError::Transport { message: "the link to the broker was lost".into(), source: None });
    }
    let deadline_ms = wire::now_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    let properties = wire::request_properties(codec, correlation_id, &link.reply_queue, timeout, deadline_ms, &context);
    // Held until the confirm comes: a channel the link has replaced meanwhile stays open for it.
    let channel = link.requests();
    let sent = channel.basic_publish(
        "".into(),
        key,
        BasicPublishOptions { mandatory: true, ..Default::default() },
        &body,
        properties,
    );
    let confirm = match tokio::time::timeout_at(deadline, sent).await {
        Err(_) => return Err(RpcError::deadline(method, timeout)),
        Ok(Err(e)) => return Err(publish_failed(&link, &channel, method, e)),
        Ok(Ok(confirm)) => confirm,
    };
    // However this call ends from here (answered, failed, timed out, cancelled), its confirm
    // is read: it may carry another call's returned request.
    let mut unread = Unread { link: &link, pending, method, correlation_id, confirm: Some((confirm, channel)) };
    if link.confirms() {
        // A reply means the broker took the request, so the confirm is read only when no reply
        // has come `CONFIRM_GRACE` after the publish: an answered call is not woken for its
        // confirm, and a returned or nacked request fails that long after the publish (or when
        // its confirm comes, if later).
        let grace = tokio::time::sleep_until((Instant::now() + CONFIRM_GRACE).min(deadline));
        tokio::select! {
            biased;
            outcome = &mut rx => return outcome.unwrap_or(Err(RpcError::Closed)),
            () = grace => {}
        }
    }
    if let Some((confirm, _)) = unread.confirm.as_mut() {
        let confirmed = tokio::select! {
            biased;
            outcome = &mut rx => return outcome.unwrap_or(Err(RpcError::Closed)),
            confirmed = tokio::time::timeout_at(deadline, confirm) => confirmed,
        };
        let Some((_, channel)) = unread.confirm.take() else { unreachable!("the confirm was just read") };
        match confirmed {
            Err(_) => return Err(RpcError::deadline(method, timeout)),
            Ok(Err(e)) => return Err(publish_failed(&link, &channel, method, e)),
            Ok(Ok(confirmation)) => read_confirmation(&link, &channel, pending, method, correlation_id, confirmation)?,
        }
    }
    match tokio::time::timeout_at(deadline, rx).await {
        Err(_) => Err(RpcError::deadline(method, timeout)),
        Ok(Ok(outcome)) => outcome,
        // The waiter went away unanswered: only when the `Rpc` is torn down.
        Ok(Err(_)) => Err(RpcError::Closed),
    }
}

/// A call's publisher confirm not read yet, with the channel it was published on (held until
/// the confirm comes: a replaced request channel stays open for it). Dropped unread, it reads
/// the confirm at once if it has come, or from a task of its own: lapin keeps a confirm
/// dropped unread until `wait_for_confirms`, which a confirming channel never calls, and what
/// it carries (another call's returned request, a nack) must still reach its call.
struct Unread<'a> {
    link: &'a Arc<Link>,
    pending: &'a Arc<Pending>,
    method: &'a str,
    correlation_id: &'a str,
    confirm: Option<(lapin::PublisherConfirm, lapin::Channel)>,
}

impl Drop for Unread<'_> {
    fn drop(&mut self) {
        let Some((mut confirm, channel)) = self.confirm.take() else { return };
        let (link, pending, method, id) = (self.link, self.pending, self.method, self.correlation_id);
        match (&mut confirm).now_or_never() {
            Some(confirmed) => read_late(link, &channel, pending, method, id, confirmed),
            None => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
                let (link, pending) = (Arc::clone(link), Arc::clone(pending));
                let (method, id) = (method.to_owned(), id.to_owned());
                runtime.spawn(async move {
                    let confirmed = confirm.await;
                    read_late(&link, &channel, &pending, &method, &id, confirmed);
                });
            }
        }
    }
}

/// Takes in the confirm of a call that has ended: a returned request of another call fails
/// that call, a nack renews the request channel, a failed channel is reported.
fn read_late(
    link: &Arc<Link>,
    channel: &lapin::Channel,
    pending: &Pending,
    method: &str,
    correlation_id: &str,
    confirmed: Result<lapin::Confirmation, lapin::Error>,
) {
    match confirmed {
        Ok(confirmation) => drop(read_confirmation(link, channel, pending, method, correlation_id, confirmation)),
        Err(e) => link.publish_failed(channel, &e),
    }
}

/// What the broker's confirmation of call `correlation_id`'s request says: the call's own
/// failure, if any. A nack makes later requests go out on a fresh channel; a returned request
/// of another call, which lapin may hand to this confirmation when the broker confirms several
/// publishes at once, fails that call (or the describe request [`Pending::watch`]es it).
pub(crate) fn read_confirmation(
    link: &Arc<Link>,
    channel: &lapin::Channel,
    pending: &Pending,
    method: &str,
    correlation_id: &str,
    confirmation: lapin::Confirmation,
) -> Result<(), RpcError> {
    let nack = confirmation.is_nack();
    if let Some(returned) = confirmation.take_message() {
        let own =
            returned.delivery.properties.correlation_id().as_ref().map_or(true, |id| id.as_str() == correlation_id);
        if own {
            return Err(unroutable(&returned));
        }
        pending.returned(returned);
    }
    if nack {
        // The nack fails this call only; the channel may be what refuses (see
        // `link::Requests`), so later calls go out on a fresh one.
        let (link, channel) = (Arc::clone(link), channel.clone());
        tokio::spawn(async move { link.renew_requests(&channel).await });
        return Err(RpcError::Unavailable {
            target: method.to_owned(),
            reason: "the broker refused the request (nack)".into(),
        });
    }
    Ok(())
}

/// The error for a request lapin could not publish (or whose confirm failed) on `channel`.
fn publish_failed(link: &Link, channel: &lapin::Channel, method: &str, e: lapin::Error) -> RpcError {
    link.publish_failed(channel, &e);
    RpcError::transport(format!("{method}: publishing the request: {e}"), e)
}

/// The error for a request the broker returned (`mandatory` and no queue bound).
fn unroutable(returned: &BasicReturnMessage) -> RpcError {
    let key = returned.delivery.routing_key.as_str();
    RpcError::Unavailable {
        target: key.to_owned(),
        reason: format!(
            "no queue is bound to routing key '{key}' (the broker returned the request: {} {})",
            returned.reply_code, returned.reply_text
        ),
    }
}
