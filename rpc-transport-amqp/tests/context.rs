//! The call context over RabbitMQ: metadata, trace id and deadline travel in message headers
//! from a typed client to a handler taking `ctx: &Context`, follow the nested calls it makes,
//! and the deadline ends the handler's work on the server (not only the caller's wait).
//!
//! Each test serves a service of its own (its wire name), so tests running in parallel never
//! answer each other's calls.

mod common;

use std::time::Duration;

use common::{raw_reply_queue, rpc, unique};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rpc_core::{kwargs, Context, HandlerError, RpcError};
use rpc_macros::rpc_service;
use rpc_testkit::services::counter::{AsyncCounter, AsyncCounterClient, Progress, SyncCounter, SyncCounterClient};
use rpc_transport_amqp::{codec, wire, Codec, Rpc};
use serde_json::Value;

/// What a handler saw of its call.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Seen {
    token: Option<String>,
    tenant: Option<String>,
    trace: Option<String>,
    /// What was left of the deadline when the handler started, in milliseconds.
    remaining_ms: Option<u64>,
}

impl Seen {
    fn of(ctx: &Context) -> Seen {
        Seen {
            token: ctx.metadata().get("authorization").map(str::to_owned),
            tenant: ctx.metadata().get("tenant").map(str::to_owned),
            trace: ctx.trace_id().map(str::to_owned),
            remaining_ms: ctx.remaining().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// Reports what its callers sent; `relay` calls `whoami` again over RabbitMQ.
pub struct Whoami {
    rpc: Rpc,
}

#[rpc_service(name = "amqp_context_whoami")]
impl Whoami {
    /// The token, tenant, trace id and deadline of this call.
    pub async fn whoami(ctx: &Context) -> Seen {
        Seen::of(ctx)
    }

    /// What this call saw, and what a call it makes to `whoami` saw.
    pub async fn relay(&self, ctx: &Context) -> Result<(Seen, Seen), RpcError> {
        let mine = Seen::of(ctx);
        let nested = WhoamiClient::new(self.rpc.clone()).whoami().await?;
        Ok((mine, nested))
    }
}

#[tokio::test]
async fn a_handler_reads_the_token_trace_id_and_deadline_its_typed_caller_sent_over_rabbitmq() {
    let (_c1, server) = rpc().await;
    server.serve(Whoami { rpc: server.clone() }).await.unwrap();
    let (_c2, client_rpc) = rpc().await;
    for codec in [Codec::MsgPack, Codec::Json] {
        let client =
            WhoamiClient::new(client_rpc.with_options(rpc_transport_amqp::CallOptions::new().with_codec(codec)));
        let plain = client.whoami().await.unwrap();
        assert_eq!((plain.token, plain.tenant, plain.trace), (None, None, None), "{codec:?}: nothing was sent");
        let client = client
            .with_metadata("Authorization", "Bearer t0k3n")
            .unwrap()
            .with_metadata("tenant", "acme")
            .unwrap()
            .with_deadline(Duration::from_secs(5))
            .with_context(Context::new().with_trace_id("trace-42"));
        let seen = client.whoami().await.unwrap();
        assert_eq!(seen.token.as_deref(), Some("Bearer t0k3n"), "{codec:?}: {seen:?}");
        assert_eq!(seen.tenant.as_deref(), Some("acme"), "{codec:?}: {seen:?}");
        assert_eq!(seen.trace.as_deref(), Some("trace-42"), "{codec:?}: {seen:?}");
        let left = seen.remaining_ms.expect("the handler sees a deadline");
        assert!(
            (3_000..=5_000).contains(&left),
            "{codec:?}: expected the caller's 5 s deadline, minus transit; saw {left} ms left"
        );
    }
    server.close().await.unwrap();
}

#[tokio::test]
async fn the_server_caps_the_callers_deadline_at_its_max_run() {
    let (_c1, channel) = common::channel().await;
    let server = Rpc::builder().with_max_deadline(Duration::from_secs(1)).create(channel).await.unwrap();
    let name = unique("ctx-cap");
    // A plain handler reads the call's context as the current one.
    server
        .register_async(&name, |_: Value| async move {
            Ok::<_, HandlerError>(Context::current().and_then(|ctx| ctx.remaining()).map(|d| d.as_millis() as u64))
        })
        .await
        .unwrap();
    let (_c2, client) = rpc().await;
    let options = rpc_transport_amqp::CallOptions::new().with_deadline(Duration::from_secs(60));
    let left: Option<u64> = client.call_with(&name, kwargs! {}, options).await.unwrap();
    let left = left.expect("a deadline");
    assert!(left <= 1_000, "expected the server's 1 s cap to win over the caller's 60 s; saw {left} ms left");
    assert!(left >= 500, "expected close to the 1 s cap; saw {left} ms left");
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_nested_call_inherits_the_trace_id_metadata_and_what_is_left_of_the_deadline() {
    let (_c1, server) = rpc().await;
    server.serve(Whoami { rpc: server.clone() }).await.unwrap();
    let (_c2, client_rpc) = rpc().await;
    let client = WhoamiClient::new(client_rpc)
        .with_metadata("authorization", "Bearer nested")
        .unwrap()
        .with_deadline(Duration::from_secs(3))
        .with_context(Context::new().with_trace_id("trace-7"));
    let (mine, nested) = client.relay().await.unwrap();
    assert_eq!(mine.trace.as_deref(), Some("trace-7"), "{mine:?}");
    assert_eq!(nested.trace, mine.trace, "the nested call carries the handler's trace id");
    assert_eq!(nested.token.as_deref(), Some("Bearer nested"), "the nested call carries the handler's metadata");
    let (parent, child) = (mine.remaining_ms.unwrap(), nested.remaining_ms.unwrap());
    assert!(parent <= 3_000, "the handler's deadline is its caller's 3 s: {parent} ms");
    // The deadline travels as an instant in milliseconds: the nested call may see one more.
    assert!(child <= parent + 1, "the nested call ends by its parent's deadline: {child} ms left, parent had {parent}");
    assert!(child + 1_000 >= parent, "the nested call gets what is left, not less: {child} ms, parent had {parent}");
    server.close().await.unwrap();
}

/// Each counter's step.
const STEP: Duration = Duration::from_millis(100);

/// Waits for a counting handler's end signal, at most 10 s; how many steps it did.
async fn steps_when_ended(progress: &Progress) -> u32 {
    tokio::time::timeout(Duration::from_secs(10), progress.ended())
        .await
        .expect("the handler's work ended within 10 s of its 600 ms deadline");
    progress.steps()
}

#[tokio::test]
async fn an_async_handler_is_dropped_at_its_callers_deadline_and_does_no_more_steps() {
    let progress = Progress::new(STEP);
    let (_c1, server) = rpc().await;
    server.serve(AsyncCounter::new(&progress)).await.unwrap();
    let (_c2, client_rpc) = rpc().await;
    let client = AsyncCounterClient::new(client_rpc).with_deadline(Duration::from_millis(600));
    let err = client.count(50).await.unwrap_err();
    assert!(matches!(err, RpcError::DeadlineExceeded { .. }), "expected deadline_exceeded, got {err:?}");
    let done = steps_when_ended(&progress).await;
    println!("async handler: dropped after {done} of 50 steps");
    // 50 steps would take 5 s; at most 6 fit in the 600 ms the caller gave.
    assert!((1..=6).contains(&done), "the handler did {done} steps of 100 ms under a 600 ms deadline");
    server.close().await.unwrap();
    assert_eq!(progress.steps(), done, "no step after the handler was dropped");
}

#[tokio::test]
async fn a_synchronous_handler_sees_its_callers_deadline_as_cancellation_and_stops() {
    let progress = Progress::new(STEP);
    let (_c1, server) = rpc().await;
    server.serve(SyncCounter::new(&progress)).await.unwrap();
    let (_c2, client_rpc) = rpc().await;
    let client = SyncCounterClient::new(client_rpc).with_deadline(Duration::from_millis(600));
    let err = client.count(50).await.unwrap_err();
    assert!(matches!(err, RpcError::DeadlineExceeded { .. }), "expected deadline_exceeded, got {err:?}");
    let done = steps_when_ended(&progress).await;
    println!("synchronous handler: returned after {done} of 50 steps");
    // It checks between steps: the step running at the deadline still completes.
    assert!((1..=7).contains(&done), "the handler did {done} steps of 100 ms under a 600 ms deadline");
    server.close().await.unwrap();
    assert_eq!(progress.steps(), done, "no step after the handler returned");
}

#[tokio::test]
async fn a_typed_call_sends_its_context_as_headers_an_aio_pika_peer_can_read() {
    let (_c, client_rpc) = rpc().await;
    let (_c2, raw) = common::channel().await;
    // A queue standing in for a method, read raw to see what the client sent.
    let method = unique("ctx-wire");
    raw.queue_declare(method.as_str().into(), Default::default(), wire::method_queue_arguments()).await.unwrap();
    let mut requests = raw
        .basic_consume(
            method.as_str().into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ctx = Context::new().with_trace_id("trace-wire").with_metadata("authorization", "Bearer w").unwrap();
    let request =
        rpc_core::Request::new("", method.clone(), kwargs! {}).with_context(ctx.with_deadline(Duration::from_secs(2)));
    let call = tokio::spawn(async move { rpc_core::Transport::call(&client_rpc, request).await });
    let delivery = tokio::time::timeout(Duration::from_secs(10), requests.next()).await.unwrap().unwrap().unwrap();
    let headers = delivery.properties.headers().clone().unwrap();
    let header = |name: &str| headers.inner().get(name).cloned();
    assert_eq!(header("x-rpc-trace-id"), Some(AMQPValue::LongString("trace-wire".into())));
    assert_eq!(header("x-rpc-meta-authorization"), Some(AMQPValue::LongString("Bearer w".into())));
    let deadline = wire::deadline_ms(&delivery.properties).expect("x-deadline-ms");
    let left = deadline.saturating_sub(wire::now_ms());
    assert!((1_000..=2_000).contains(&left), "x-deadline-ms is the 2 s deadline: {left} ms left");
    call.abort();
    let _ = raw.queue_delete(method.as_str().into(), Default::default()).await;
}

/// Publishes a raw JSON request with no arguments to `method`, with `headers`.
async fn raw_call(channel: &lapin::Channel, reply_to: &str, method: &str, id: &str, headers: FieldTable) {
    let props = BasicProperties::default()
        .with_reply_to(reply_to.into())
        .with_correlation_id(id.into())
        .with_type("call".into())
        .with_content_type("application/json".into())
        .with_headers(headers);
    channel
        .basic_publish("".into(), method.into(), BasicPublishOptions::default(), b"{}", props)
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn context_headers_a_server_cannot_take_in_get_a_bad_request_reply_and_the_server_keeps_serving() {
    let (_c1, server) = rpc().await;
    server.serve(Whoami { rpc: server.clone() }).await.unwrap();
    let (_c2, channel) = common::channel().await;
    let (reply_to, mut replies) = raw_reply_queue(&channel).await;
    let long = |s: String| AMQPValue::LongString(s.into());
    let table = |entries: Vec<(String, AMQPValue)>| {
        let mut headers = FieldTable::default();
        for (name, value) in entries {
            headers.insert(name.into(), value);
        }
        headers
    };
    let too_many = (0..40).map(|i| (format!("x-rpc-meta-k{i}"), long("v".into()))).collect();
    let cases: Vec<(&str, FieldTable, Option<&str>)> = vec![
        ("bad-key", table(vec![("x-rpc-meta-bad key!".into(), long("v".into()))]), Some("x-rpc-meta-bad key!")),
        (
            "long-value",
            table(vec![("x-rpc-meta-authorization".into(), long("v".repeat(10_000)))]),
            Some("x-rpc-meta-authorization"),
        ),
        ("not-a-string", table(vec![("x-rpc-meta-n".into(), AMQPValue::LongLongInt(7))]), Some("must be strings")),
        ("too-many", table(too_many), Some("metadata full")),
        ("long-trace", table(vec![("x-rpc-trace-id".into(), long("t".repeat(1_000)))]), Some("trace id")),
        // aio-pika sends none of these headers: served as before.
        ("foreign", FieldTable::default(), None),
    ];
    let method = "amqp_context_whoami.whoami";
    for (id, headers, _) in &cases {
        raw_call(&channel, &reply_to, method, id, headers.clone()).await;
    }
    let mut answers = std::collections::HashMap::new();
    while answers.len() < cases.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("a reply within 10 s")
            .unwrap()
            .unwrap();
        let id = delivery.properties.correlation_id().as_ref().unwrap().to_string();
        let kind = delivery.properties.kind().as_ref().unwrap().to_string();
        let body = Codec::Json.decode(&delivery.data).unwrap();
        answers.insert(id, (kind, body));
    }
    for (id, _, expected) in &cases {
        let (kind, body) = &answers[*id];
        match expected {
            Some(fragment) => {
                let error = codec::parse_error_body(body.clone(), method);
                let text = error.to_string();
                assert!(
                    matches!(error, RpcError::BadRequest { .. }) && text.contains(fragment),
                    "{id}: expected bad_request mentioning {fragment:?}, got {kind} {text}"
                );
                assert!(text.len() < 1_000, "{id}: a short error, got {} bytes", text.len());
            }
            None => {
                assert_eq!(kind, "result", "{id}: {body}");
                assert_eq!(body["token"], Value::Null, "{id}: {body}");
                assert!(
                    body["remaining_ms"].as_u64().is_some_and(|ms| ms <= 30_000),
                    "{id}: the default deadline: {body}"
                );
            }
        }
    }
    // Still serving.
    let (_c3, client) = rpc().await;
    let seen = WhoamiClient::new(client).with_metadata("authorization", "ok").unwrap().whoami().await.unwrap();
    assert_eq!(seen.token.as_deref(), Some("ok"));
    server.close().await.unwrap();
}
