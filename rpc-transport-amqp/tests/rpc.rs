//! The API against a real broker: results, deadlines, remote errors, no server, concurrency,
//! competing consumers, duplicates, close. Run `scripts/ensure-rabbitmq.sh` first.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{queue_state, rpc, timed, unique};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rpc_core::{kwargs, HandlerError, RpcError};
use rpc_transport_amqp::{CallOptions, Codec, Rpc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Deserialize)]
struct T {
    t: f64,
}

#[derive(Deserialize)]
struct N {
    n: u64,
}

#[derive(Deserialize)]
struct Nothing {}

async fn register_echo(rpc: &Rpc, name: &str) {
    rpc.register_async(name, |a: T| async move { Ok::<_, HandlerError>(a.t) }).await.unwrap();
}

#[tokio::test]
async fn call_returns_the_remote_result_decoded_into_the_callers_type() {
    let (_conn, rpc) = rpc().await;
    let name = unique("sleep");
    rpc.register_async(&name, |a: T| async move {
        tokio::time::sleep(Duration::from_secs_f64(a.t)).await;
        Ok::<_, HandlerError>(a.t)
    })
    .await
    .unwrap();
    let slept: f64 = rpc.call(&name, kwargs! { "t" => 0.05 }).await.unwrap();
    assert_eq!(slept, 0.05);

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Shape {
        name: String,
        sides: Vec<u8>,
    }
    let shape = unique("shape");
    rpc.register_blocking(&shape, |_: Nothing| {
        Ok::<_, HandlerError>(Shape { name: "tri".into(), sides: vec![3, 4, 5] })
    })
    .await
    .unwrap();
    for codec in [Codec::MsgPack, Codec::Json] {
        let got: Shape = rpc.call_with(&shape, kwargs! {}, CallOptions::new().with_codec(codec)).await.unwrap();
        assert_eq!(got, Shape { name: "tri".into(), sides: vec![3, 4, 5] });
    }
    rpc.close().await.unwrap();
}

#[tokio::test]
async fn result_of_the_wrong_type_is_a_decode_error_not_a_panic() {
    let (_conn, rpc) = rpc().await;
    let name = unique("text");
    rpc.register_async(&name, |_: Nothing| async { Ok::<_, HandlerError>("not a number") }).await.unwrap();
    let err = rpc.call::<u32>(&name, kwargs! {}).await.unwrap_err();
    match err {
        RpcError::Decode { target, ty, reason } => {
            assert_eq!(target, name);
            assert_eq!(ty, "u32");
            assert!(reason.contains("not a number"), "{reason}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[tokio::test]
async fn call_times_out_when_the_queue_exists_but_nobody_consumes_it() {
    let (_conn, rpc) = rpc().await;
    let name = unique("orphan");
    register_echo(&rpc, &name).await;
    rpc.unregister(&name).await.unwrap(); // the queue stays, without a consumer
    let limit = Duration::from_millis(300);
    let (result, took) =
        timed(rpc.call_with::<f64>(&name, kwargs! { "t" => 1 }, CallOptions::new().with_deadline(limit))).await;
    assert!(
        matches!(result, Err(RpcError::DeadlineExceeded { timeout_ms: 300, .. })),
        "expected Err(RpcError::DeadlineExceeded {{ timeout_ms: 300, .. }}), got {result:?}"
    );
    assert!(took >= limit && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(rpc.pending_calls(), 0);
}

#[tokio::test]
async fn call_times_out_when_a_server_took_the_request_and_hangs() {
    let (_conn, server) = rpc().await;
    let (_conn2, client) = rpc().await;
    let name = unique("hang");
    let started = Arc::new(Notify::new());
    let s = Arc::clone(&started);
    server
        .register_async(&name, move |_: Nothing| {
            let s = Arc::clone(&s);
            async move {
                s.notify_one();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, HandlerError>(0)
            }
        })
        .await
        .unwrap();
    let limit = Duration::from_millis(500);
    let call = client.call_with::<u32>(&name, kwargs! {}, CallOptions::new().with_deadline(limit));
    let ((result, took), ()) = tokio::join!(timed(call), started.notified());
    assert!(
        matches!(result, Err(RpcError::DeadlineExceeded { .. })),
        "expected Err(RpcError::DeadlineExceeded {{ .. }}), got {result:?}"
    );
    assert!(took >= limit && took < Duration::from_secs(5), "{took:?}");
    // The server's guard ends the handler at the caller's deadline and acks the request.
    server.close().await.unwrap();
    assert_eq!(queue_state(&name).await, (0, 0));
}

#[tokio::test]
async fn request_carries_expiration_deadline_and_the_aio_pika_properties() {
    let (_conn, rpc) = rpc().await;
    let name = unique("inspect");
    register_echo(&rpc, &name).await;
    rpc.unregister(&name).await.unwrap();
    let before = rpc_transport_amqp::wire::now_ms();
    let call = rpc.call_with::<f64>(
        &name,
        kwargs! { "t" => 2.5 },
        CallOptions::new().with_deadline(Duration::from_millis(1500)),
    );
    let inspect = async {
        let (_c, channel) = common::channel().await;
        loop {
            if let Some(message) =
                channel.basic_get(name.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap()
            {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (result, message) = tokio::join!(call, inspect);
    assert!(matches!(result, Err(RpcError::DeadlineExceeded { .. })));
    let props = &message.delivery.properties;
    assert_eq!(props.expiration().as_ref().map(|s| s.as_str()), Some("1500"));
    assert_eq!(props.kind().as_ref().map(|s| s.as_str()), Some("call"));
    assert_eq!(props.content_type().as_ref().map(|s| s.as_str()), Some("application/msgpack"));
    assert_eq!(*props.delivery_mode(), Some(1));
    assert!(props.correlation_id().is_some());
    let reply_to = props.reply_to().as_ref().unwrap().to_string();
    assert!(reply_to.starts_with("amq.gen-"), "{reply_to}");
    let headers = props.headers().as_ref().unwrap().inner();
    assert_eq!(headers.get("From"), Some(&AMQPValue::LongString(reply_to.as_str().into())));
    let deadline = rpc_transport_amqp::wire::deadline_ms(props).unwrap();
    assert!(deadline >= before + 1500 && deadline <= rpc_transport_amqp::wire::now_ms() + 1500, "{deadline}");
    let body: serde_json::Value = rmp_serde::from_slice(&message.delivery.data).unwrap();
    assert_eq!(body, serde_json::json!({"t": 2.5}));
}

#[tokio::test]
async fn handler_error_reaches_the_caller_with_its_code_and_message_and_the_server_keeps_serving() {
    let (_conn, rpc) = rpc().await;
    let name = unique("div");
    #[derive(Deserialize)]
    struct Div {
        a: f64,
        b: f64,
    }
    rpc.register_blocking(&name, |d: Div| {
        if d.b == 0.0 {
            Err(HandlerError::new("division_by_zero", "division by zero"))
        } else {
            Ok(d.a / d.b)
        }
    })
    .await
    .unwrap();
    for codec in [Codec::MsgPack, Codec::Json] {
        let opts = CallOptions::new().with_codec(codec);
        let err = rpc.call_with::<f64>(&name, kwargs! { "a" => 1, "b" => 0 }, opts).await.unwrap_err();
        match &err {
            RpcError::Handler { target, code, message, .. } => {
                assert_eq!(target, &name);
                assert_eq!(code.as_deref(), Some("division_by_zero"));
                assert_eq!(message, "division by zero");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.to_string(), format!("{name}: [division_by_zero] division by zero"));
        assert_eq!(rpc.call_with::<f64>(&name, kwargs! { "a" => 1, "b" => 4 }, opts).await.unwrap(), 0.25);
    }
    // Argument errors are the handler side's too, with the argument named.
    let err = rpc.call::<f64>(&name, kwargs! { "a" => 1 }).await.unwrap_err();
    assert!(
        matches!(err, RpcError::InvalidArgument { .. }),
        "expected RpcError::InvalidArgument {{ .. }}, got {err:?}"
    );
    assert!(err.to_string().contains("missing field `b`"), "{err}");
}

#[tokio::test]
async fn handler_panic_reaches_the_caller_as_panic_and_the_server_keeps_serving() {
    let (_conn, rpc) = rpc().await;
    let name = unique("panicky");
    rpc.register_async(&name, |n: N| async move {
        if n.n == 0 {
            panic!("zero is not allowed");
        }
        Ok::<_, HandlerError>(n.n)
    })
    .await
    .unwrap();
    let blocking = unique("panicky-sync");
    rpc.register_blocking(&blocking, |_: Nothing| -> Result<u8, HandlerError> { panic!("sync boom") }).await.unwrap();
    let err = rpc.call::<u64>(&name, kwargs! { "n" => 0 }).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Panic { message, .. } if message == "zero is not allowed"),
        "expected RpcError::Panic {{ message, .. }} if message == \"zero is not allowed\", got {err:?}"
    );
    let err = rpc.call::<u8>(&blocking, kwargs! {}).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Panic { message, .. } if message == "sync boom"),
        "expected RpcError::Panic {{ message, .. }} if message == \"sync boom\", got {err:?}"
    );
    assert_eq!(rpc.call::<u64>(&name, kwargs! { "n" => 7 }).await.unwrap(), 7);
}

#[tokio::test]
async fn call_to_a_method_nobody_serves_fails_at_once_with_unavailable() {
    let (_conn, rpc) = rpc().await;
    let name = unique("nobody");
    let opts = CallOptions::new().with_deadline(Duration::from_secs(20));
    let (result, took) = timed(rpc.call_with::<u8>(&name, kwargs! {}, opts)).await;
    match result {
        Err(RpcError::Unavailable { target, reason }) => {
            assert_eq!(target, name);
            assert!(reason.contains("NO_ROUTE"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(2), "took {took:?}, the deadline was 20 s");
    assert_eq!(rpc.pending_calls(), 0);
}

#[tokio::test]
async fn a_server_runs_at_most_prefetch_requests_of_a_method_at_once() {
    let (_c1, channel) = common::channel().await;
    let server = Rpc::builder().with_prefetch(2).create(channel).await.unwrap();
    let (_c2, client) = rpc().await;
    let name = unique("bounded");
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (Arc::clone(&running), Arc::clone(&peak));
    server
        .register_async(&name, move |n: N| {
            let (r, p) = (Arc::clone(&r), Arc::clone(&p));
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(n.n)
            }
        })
        .await
        .unwrap();
    let calls = (0..10u64).map(|n| {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move { client.call::<u64>(&name, kwargs! { "n" => n }).await })
    });
    let results = futures_util::future::join_all(calls).await;
    for (n, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().unwrap(), n as u64);
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn many_tasks_share_one_rpc_and_each_gets_its_own_result() {
    let (_c1, server) = rpc().await;
    let (_c2, client) = rpc().await;
    let name = unique("square");
    server
        .register_async(&name, |n: N| async move {
            tokio::time::sleep(Duration::from_millis(n.n % 7)).await;
            Ok::<_, HandlerError>(n.n * n.n)
        })
        .await
        .unwrap();
    let tasks: Vec<_> = (0..300u64)
        .map(|n| {
            let client = client.clone();
            let name = name.clone();
            tokio::spawn(async move { (n, client.call::<u64>(&name, kwargs! { "n" => n }).await) })
        })
        .collect();
    for task in tasks {
        let (n, result) = task.await.unwrap();
        assert_eq!(result.unwrap(), n * n);
    }
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn two_servers_share_one_methods_requests() {
    let (_c1, a) = rpc().await;
    let (_c2, b) = rpc().await;
    let (_c3, client) = rpc().await;
    let name = unique("shared");
    for (rpc, id) in [(&a, "a"), (&b, "b")] {
        rpc.register_async(&name, move |_: Nothing| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, HandlerError>(id)
        })
        .await
        .unwrap();
    }
    let calls = (0..40).map(|_| client.call::<String>(&name, kwargs! {}));
    let ids: Vec<String> = futures_util::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    let from_a = ids.iter().filter(|id| *id == "a").count();
    assert!(from_a > 0 && from_a < 40, "a served {from_a} of 40");
}

#[tokio::test]
async fn duplicate_and_unknown_replies_are_dropped_and_the_first_reply_wins() {
    let (_c1, client) = rpc().await;
    let (_c2, channel) = common::channel().await;
    let name = unique("twice");
    // A hand-written server that answers every request twice, then once more with a
    // correlation id nobody waits for.
    channel
        .queue_declare(name.as_str().into(), Default::default(), rpc_transport_amqp::wire::method_queue_arguments())
        .await
        .unwrap();
    let mut requests = channel
        .basic_consume(name.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let server = tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let props = &request.properties;
            let reply_to = props.reply_to().clone().unwrap();
            for (value, id) in
                [(1u8, props.correlation_id().clone()), (2, props.correlation_id().clone()), (3, Some("nobody".into()))]
            {
                let mut reply = BasicProperties::default()
                    .with_type("result".into())
                    .with_content_type("application/msgpack".into());
                if let Some(id) = id {
                    reply = reply.with_correlation_id(id);
                }
                let body = rmp_serde::to_vec(&value).unwrap();
                channel
                    .basic_publish("".into(), reply_to.clone(), BasicPublishOptions::default(), &body, reply)
                    .await
                    .unwrap();
            }
            request.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
    for _ in 0..3 {
        assert_eq!(client.call::<u8>(&name, kwargs! {}).await.unwrap(), 1);
    }
    assert_eq!(client.pending_calls(), 0);
    server.abort();
}

#[tokio::test]
async fn close_fails_pending_calls_with_closed_and_later_calls_too() {
    let (_c1, server) = rpc().await;
    let (_c2, client) = rpc().await;
    let name = unique("slow");
    let started = Arc::new(Notify::new());
    let s = Arc::clone(&started);
    server
        .register_async(&name, move |_: Nothing| {
            let s = Arc::clone(&s);
            async move {
                s.notify_one();
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok::<_, HandlerError>(1)
            }
        })
        .await
        .unwrap();
    let call = {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move { timed(client.call::<u8>(&name, kwargs! {})).await })
    };
    started.notified().await;
    client.close().await.unwrap();
    let (result, took) = call.await.unwrap();
    assert!(matches!(result, Err(RpcError::Closed)), "expected Err(RpcError::Closed), got {result:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(matches!(client.call::<u8>(&name, kwargs! {}).await, Err(RpcError::Closed)));
    assert!(matches!(
        client.register_async(&unique("x"), |_: Nothing| async { Ok::<_, HandlerError>(0) }).await,
        Err(rpc_transport_amqp::Error::Closed)
    ));
    client.close().await.unwrap(); // twice is fine
}

#[tokio::test]
async fn graceful_close_answers_requests_in_flight_before_closing() {
    let (_c1, server) = rpc().await;
    let (_c2, client) = rpc().await;
    let name = unique("inflight");
    let started = Arc::new(Notify::new());
    let s = Arc::clone(&started);
    server
        .register_async(&name, move |n: N| {
            let s = Arc::clone(&s);
            async move {
                s.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, HandlerError>(n.n + 1)
            }
        })
        .await
        .unwrap();
    let call = {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move { client.call::<u64>(&name, kwargs! { "n" => 41 }).await })
    };
    started.notified().await;
    let (closed, took) = timed(server.close()).await;
    closed.unwrap();
    assert!(took >= Duration::from_millis(200), "close returned before the request was answered: {took:?}");
    assert_eq!(call.await.unwrap().unwrap(), 42);
    assert_eq!(queue_state(&name).await, (0, 0), "nothing left unacked, no consumer left");
    // Stopped consuming: a new call is not served (the queue stays, so it times out).
    let err = client
        .call_with::<u64>(&name, kwargs! { "n" => 1 }, CallOptions::new().with_deadline(Duration::from_millis(200)))
        .await;
    assert!(
        matches!(err, Err(RpcError::DeadlineExceeded { .. })),
        "expected Err(RpcError::DeadlineExceeded {{ .. }}), got {err:?}"
    );
}

#[tokio::test]
async fn registering_a_name_twice_is_refused_and_unregister_needs_a_registered_name() {
    let (_conn, rpc) = rpc().await;
    let name = unique("dup");
    register_echo(&rpc, &name).await;
    let again = rpc.register_async(&name, |a: T| async move { Ok::<_, HandlerError>(a.t) }).await;
    assert!(matches!(again, Err(rpc_transport_amqp::Error::AlreadyRegistered(ref n)) if *n == name));
    rpc.unregister(&name).await.unwrap();
    assert!(matches!(rpc.unregister(&name).await, Err(rpc_transport_amqp::Error::NotRegistered(_))));
    let long = "x".repeat(300);
    assert!(matches!(
        rpc.register_async(&long, |a: T| async move { Ok::<_, HandlerError>(a.t) }).await,
        Err(rpc_transport_amqp::Error::InvalidName { .. })
    ));
    assert!(matches!(rpc.call::<u8>(&long, kwargs! {}).await, Err(RpcError::BadRequest { .. })));
}

#[tokio::test]
async fn oversized_call_fails_before_publishing() {
    let (_c, channel) = common::channel().await;
    let rpc = Rpc::builder().with_max_body_size(1024).create(channel).await.unwrap();
    let name = unique("big");
    let err = rpc.call::<u8>(&name, kwargs! { "blob" => "x".repeat(2000) }).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::BadRequest { reason } if reason.contains("exceeds the limit of 1024 bytes")),
        "{err:?}"
    );
}
