//! Hostile input and faults against a real broker: bad requests, no `reply_to`, a server
//! dying mid-call, a connection dropped under pending calls, broker-side connection close
//! and reconnection, registrations racing reconnections.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{broker_connections, queue_state, raw_reply_queue, rpc, timed, unique};
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use rpc_core::{kwargs, HandlerError, RpcError};
use rpc_transport_amqp::{codec, Codec, Rpc};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Notify;

#[derive(Deserialize)]
struct T {
    t: f64,
}

#[derive(Deserialize)]
struct Nothing {}

fn call_props(reply_to: &str, id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_reply_to(reply_to.into())
        .with_correlation_id(id.into())
        .with_type("call".into())
        .with_content_type("application/msgpack".into())
}

#[tokio::test]
async fn bad_requests_get_error_replies_the_server_keeps_serving_and_nothing_stays_unacked() {
    let (_c1, channel) = common::channel().await;
    let server = Rpc::builder().with_max_body_size(64 * 1024).create(channel).await.unwrap();
    let name = unique("picky");
    server.register_async(&name, |a: T| async move { Ok::<_, HandlerError>(a.t * 2.0) }).await.unwrap();

    let (_c2, raw) = common::channel().await;
    let (reply_queue, mut replies) = raw_reply_queue(&raw).await;
    let msgpack = |v: Value| Codec::MsgPack.encode(&v).unwrap();
    let cases: Vec<(&str, BasicProperties, Vec<u8>, &str)> = vec![
        ("garbage", call_props(&reply_queue, "garbage"), b"\xc1\xc1\xc1 not msgpack".to_vec(), "bad_request"),
        (
            "json-garbage",
            call_props(&reply_queue, "json-garbage").with_content_type("application/json".into()),
            b"{not json".to_vec(),
            "bad_request",
        ),
        (
            "pickle",
            call_props(&reply_queue, "pickle").with_content_type("application/python-pickle".into()),
            b"\x80\x04K\x01.".to_vec(),
            "bad_request",
        ),
        ("array", call_props(&reply_queue, "array"), msgpack(json!([1, 2])), "bad_request"),
        ("missing", call_props(&reply_queue, "missing"), msgpack(json!({})), "invalid_argument"),
        ("wrong-type", call_props(&reply_queue, "wrong-type"), msgpack(json!({"t": "two"})), "invalid_argument"),
        (
            "banana",
            call_props(&reply_queue, "banana").with_type("banana".into()),
            msgpack(json!({"t": 1})),
            "bad_request",
        ),
        ("huge", call_props(&reply_queue, "huge"), vec![0xc0; 100 * 1024], "bad_request"),
        (
            "late",
            call_props(&reply_queue, "late").with_headers({
                let mut h = lapin::types::FieldTable::default();
                h.insert("x-deadline-ms".into(), lapin::types::AMQPValue::LongLongInt(1));
                h
            }),
            msgpack(json!({"t": 1})),
            "deadline_exceeded",
        ),
        (
            "deep",
            call_props(&reply_queue, "deep"),
            [vec![0x81, 0xa1, b't'], vec![0x91; 100_000], vec![0xc0]].concat(),
            "bad_request",
        ),
        ("ok", call_props(&reply_queue, "ok"), msgpack(json!({"t": 1.5})), ""),
        (
            "ok-json",
            call_props(&reply_queue, "ok-json").with_content_type("application/json".into()),
            br#"{"t": 2}"#.to_vec(),
            "",
        ),
    ];
    for (_, props, body, _) in &cases {
        raw.basic_publish("".into(), name.as_str().into(), BasicPublishOptions::default(), body, props.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A request without correlation id is answered without one.
    let no_id = BasicProperties::default()
        .with_reply_to(reply_queue.as_str().into())
        .with_content_type("application/msgpack".into());
    raw.basic_publish(
        "".into(),
        name.as_str().into(),
        BasicPublishOptions::default(),
        &msgpack(json!({"t": 1})),
        no_id,
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let mut seen = std::collections::HashMap::new();
    let mut anonymous = None;
    while seen.len() < cases.len() || anonymous.is_none() {
        let reply =
            tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("a reply").unwrap().unwrap();
        let props = reply.properties.clone();
        let kind = props.kind().as_ref().unwrap().to_string();
        let codec = Codec::from_content_type(props.content_type().as_ref().unwrap().as_str()).unwrap();
        let body = codec.decode(&reply.data).unwrap();
        if props
            .correlation_id()
            .as_ref()
            .is_some_and(|id| id.as_str().starts_with("json-") || id.as_str() == "ok-json" || id.as_str() == "pickle")
        {
            assert_eq!(codec, Codec::Json, "JSON (and unreadable) requests are answered in JSON");
        } else {
            assert_eq!(codec, Codec::MsgPack);
        }
        match props.correlation_id() {
            Some(id) => seen.insert(id.to_string(), (kind, body)),
            None => anonymous.replace((kind, body)),
        };
    }
    for (id, _, _, expected_kind) in &cases {
        let (kind, body) = &seen[*id];
        if expected_kind.is_empty() {
            assert_eq!(kind, "result", "{id}");
            assert!(body == &json!(3.0) || body == &json!(4.0), "{id}: {body}");
        } else {
            assert_eq!(kind, "error", "{id}: {body}");
            assert_eq!(body["error"]["kind"], *expected_kind, "{id}: {body}");
            assert!(body["error"]["message"].as_str().unwrap().contains(&name) || *id == "late", "{id}: {body}");
        }
    }
    let (kind, body) = anonymous.unwrap();
    assert_eq!(kind, "error");
    assert!(body["error"]["message"].as_str().unwrap().contains("no correlation_id"), "{body}");
    // The pickle request is answered in JSON: the one codec every peer reads.
    let error = codec::parse_error_body(seen["pickle"].1.clone(), &name);
    assert!(error.to_string().contains("unsupported content type 'application/python-pickle'"), "{error}");

    // Still serving through the normal client path.
    let (_c3, client) = rpc().await;
    assert_eq!(client.call::<f64>(&name, kwargs! { "t" => 4 }).await.unwrap(), 8.0);
    // Closing the server's channel would requeue anything left unacked: nothing is.
    server.close().await.unwrap();
    drop(_c1);
    assert_eq!(queue_state(&name).await, (0, 0));
}

#[tokio::test]
async fn sixteen_megabyte_request_gets_a_bad_request_reply_under_the_default_limit() {
    let (_c1, server) = rpc().await;
    let name = unique("huge");
    server.register_async(&name, |a: T| async move { Ok::<_, HandlerError>(a.t) }).await.unwrap();
    let (_c2, raw) = common::channel().await;
    let (reply_queue, mut replies) = raw_reply_queue(&raw).await;
    let body = vec![b' '; 16_000_000];
    raw.basic_publish(
        "".into(),
        name.as_str().into(),
        BasicPublishOptions::default(),
        &body,
        call_props(&reply_queue, "huge"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.next()).await.expect("a reply").unwrap().unwrap();
    assert_eq!(reply.properties.kind().as_ref().unwrap().as_str(), "error");
    let error = codec::parse_error_body(Codec::MsgPack.decode(&reply.data).unwrap(), &name);
    assert!(
        matches!(&error, RpcError::BadRequest { reason } if reason.contains("16000000 bytes exceeds the limit of 8388608 bytes")),
        "{error:?}"
    );
    let (_c3, client) = rpc().await;
    assert_eq!(client.call::<f64>(&name, kwargs! { "t" => 1 }).await.unwrap(), 1.0);
}

#[tokio::test]
async fn request_without_reply_to_is_acked_and_dropped_and_the_consumer_keeps_serving() {
    let (c1, channel) = common::channel().await;
    // A clone stays here so the channel outlives the Rpc and the connection closes cleanly.
    let server = Rpc::create(channel.clone()).await.unwrap();
    let name = unique("noreply");
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    server
        .register_async(&name, move |a: T| {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok::<_, HandlerError>(a.t) }
        })
        .await
        .unwrap();
    let (_c2, raw) = common::channel().await;
    let body = Codec::MsgPack.encode(&json!({"t": 1})).unwrap();
    for _ in 0..3 {
        let props = BasicProperties::default().with_correlation_id("x".into()).with_type("call".into());
        raw.basic_publish("".into(), name.as_str().into(), BasicPublishOptions::default(), &body, props)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (_c3, client) = rpc().await;
    assert_eq!(client.call::<f64>(&name, kwargs! { "t" => 2 }).await.unwrap(), 2.0);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1, "requests without reply_to are not run");
    // Graceful close waits for the requests taken; closing the channel then would requeue
    // anything left unacked.
    server.close().await.unwrap();
    c1.close(200, "OK".into()).await.unwrap();
    assert_eq!(queue_state(&name).await, (0, 0), "nothing requeued: all were acked");
}

#[tokio::test]
async fn request_of_a_server_killed_mid_call_is_redelivered_to_the_other_server() {
    let (conn_a, a) = rpc().await;
    let (_cb, b) = rpc().await;
    let (_cc, client) = rpc().await;
    let name = unique("redeliver");
    let started = Arc::new(Notify::new());
    let s = Arc::clone(&started);
    a.register_async(&name, move |_: Nothing| {
        let s = Arc::clone(&s);
        async move {
            s.notify_one();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, HandlerError>("a")
        }
    })
    .await
    .unwrap();
    let call = {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move { client.call::<String>(&name, kwargs! {}).await })
    };
    started.notified().await;
    b.register_async(&name, |_: Nothing| async { Ok::<_, HandlerError>("b") }).await.unwrap();
    // Server A dies with the request unacked: the broker hands it to B.
    conn_a.close(320, "killed by the test".into()).await.unwrap();
    let served_by =
        tokio::time::timeout(Duration::from_secs(10), call).await.expect("redelivered in time").unwrap().unwrap();
    assert_eq!(served_by, "b");
    drop(a);
}

#[tokio::test]
async fn losing_the_connection_fails_pending_calls_at_once_with_a_transport_error() {
    let (_c1, server) = rpc().await;
    let (client_conn, client) = rpc().await;
    let name = unique("stuck");
    let started = Arc::new(Notify::new());
    let s = Arc::clone(&started);
    server
        .register_async(&name, move |_: Nothing| {
            let s = Arc::clone(&s);
            async move {
                s.notify_one();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, HandlerError>(1)
            }
        })
        .await
        .unwrap();
    let call = {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move {
            timed(client.call_with::<u8>(
                &name,
                kwargs! {},
                rpc_transport_amqp::CallOptions::new().with_deadline(Duration::from_secs(30)),
            ))
            .await
        })
    };
    started.notified().await;
    client_conn.close(320, "dropped by the test".into()).await.unwrap();
    let closed_at = std::time::Instant::now();
    let (result, _) = call.await.unwrap();
    assert!(
        matches!(result, Err(RpcError::Transport { .. })),
        "expected Err(RpcError::Transport {{ .. }}), got {result:?}"
    );
    assert!(closed_at.elapsed() < Duration::from_secs(2), "{:?}", closed_at.elapsed());
    // An Rpc on a caller's channel does not reconnect: later calls fail at once, clearly.
    let (later, took) = timed(client.call::<u8>(&name, kwargs! {})).await;
    assert!(
        matches!(&later, Err(RpcError::Transport { message, .. }) if message.contains("lost")),
        "expected Err(RpcError::Transport {{ message, .. }}) if message.contains(\"lost\"), got {later:?}"
    );
    assert!(took < Duration::from_secs(1));
    assert!(!client.is_connected());
}

#[tokio::test]
async fn rpc_that_owns_its_connection_reconnects_after_the_broker_closes_it() {
    let connection_name = unique("rpc-test-reconnect");
    let rpc = Rpc::builder()
        .with_connection_name(&connection_name)
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .with_shutdown_grace(Duration::from_secs(1))
        .connect(&common::url())
        .await
        .unwrap();
    let echo = unique("echo");
    let slow = unique("slow");
    rpc.register_async(&echo, |a: T| async move { Ok::<_, HandlerError>(a.t) }).await.unwrap();
    let started = Arc::new(Notify::new());
    let s = Arc::clone(&started);
    rpc.register_async(&slow, move |_: Nothing| {
        let s = Arc::clone(&s);
        async move {
            s.notify_one();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, HandlerError>(0)
        }
    })
    .await
    .unwrap();
    assert_eq!(rpc.call::<f64>(&echo, kwargs! { "t" => 1 }).await.unwrap(), 1.0);
    let old_reply_queue = rpc.reply_queue().unwrap();

    let pending = {
        let rpc = rpc.clone();
        let slow = slow.clone();
        tokio::spawn(async move { timed(rpc.call::<u8>(&slow, kwargs! {})).await })
    };
    started.notified().await;
    let pids = broker_connections(&connection_name);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let status = Command::new("rabbitmqctl")
        .args(["close_connection", &pids[0], "closed by the reconnect test"])
        .status()
        .unwrap();
    assert!(status.success());
    let closed_at = std::time::Instant::now();

    let (result, _) = pending.await.unwrap();
    assert!(
        matches!(result, Err(RpcError::Transport { .. })),
        "expected Err(RpcError::Transport {{ .. }}), got {result:?}"
    );
    let waited = closed_at.elapsed();
    assert!(waited < Duration::from_secs(3), "the pending call failed {waited:?} after the close");

    assert!(rpc.wait_connected(Duration::from_secs(30)).await, "reconnected");
    assert_ne!(rpc.reply_queue().unwrap(), old_reply_queue);
    // Server side consumed again, client side has a new reply queue: calls work.
    assert_eq!(rpc.call::<f64>(&echo, kwargs! { "t" => 2 }).await.unwrap(), 2.0);
    assert_eq!(broker_connections(&connection_name).len(), 1);
    rpc.close().await.unwrap();
}

#[tokio::test]
async fn connect_errors_never_show_the_password() {
    let secret = "s3cr3t-pa55word";
    let url = format!("amqp://guest:{secret}@127.0.0.1:5672/%2f");
    let err = Rpc::connect(&url).await.unwrap_err();
    let shown = format!("{err} / {err:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("guest:***@127.0.0.1"), "{shown}");
    let rpc_error: RpcError = err.into();
    assert!(!format!("{rpc_error} {rpc_error:?}").contains(secret));
}

/// Calls `method` every 100 ms until it answers, at most `limit`; the first answer and when
/// it came, or the last error.
async fn answered_within(client: &Rpc, method: &str, limit: Duration) -> Result<(f64, Duration), RpcError> {
    let started = std::time::Instant::now();
    loop {
        let options = rpc_transport_amqp::CallOptions::new().with_deadline(Duration::from_secs(2));
        match client.call_with::<f64>(method, kwargs! { "t" => 7 }, options).await {
            Ok(value) => return Ok((value, started.elapsed())),
            Err(e) if started.elapsed() >= limit => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn a_method_queue_deleted_under_a_running_server_is_declared_again_and_served_within_seconds() {
    let (_c1, client) = rpc().await;
    let (_c2, raw) = common::channel().await;
    // Both kinds of server: on its own connection (declares on a throwaway channel) and on a
    // caller's channel (declares on the serving channel).
    let (_c3, on_channel) = rpc().await;
    let owning = Rpc::builder()
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .connect(&common::url())
        .await
        .unwrap();
    for (kind, server) in [("own connection", &owning), ("caller's channel", &on_channel)] {
        let name = unique("deleted");
        server.register_async(&name, |a: T| async move { Ok::<_, HandlerError>(a.t) }).await.unwrap();
        assert_eq!(client.call::<f64>(&name, kwargs! { "t" => 1 }).await.unwrap(), 1.0, "{kind}");
        let reply_queue = server.reply_queue();

        // An operator (or a policy) deletes the queue under the running server.
        raw.queue_delete(name.as_str().into(), Default::default()).await.unwrap();
        let answered = answered_within(&client, &name, Duration::from_secs(5)).await;
        let (value, took) = answered.unwrap_or_else(|e| panic!("{kind}: not served again within 5 s: {e:?}"));
        assert_eq!(value, 7.0, "{kind}");
        println!("{kind}: served again {took:?} after the queue was deleted");
        assert_eq!(server.reply_queue(), reply_queue, "{kind}: the server kept its link (no reconnection)");
        assert_eq!(queue_state(&name).await, (0, 1), "{kind}: one consumer on the new queue, nothing waiting");

        // Unregistered, it stays unserved even when the queue goes away again.
        server.unregister(&name).await.unwrap();
        raw.queue_delete(name.as_str().into(), Default::default()).await.unwrap();
        let unserved = client.call::<f64>(&name, kwargs! { "t" => 1 }).await;
        assert!(matches!(unserved, Err(RpcError::Unavailable { .. })), "{kind}: {unserved:?}");
    }
    owning.close().await.unwrap();
}

#[tokio::test]
async fn a_request_in_flight_at_two_losses_of_the_servers_link_is_answered_poison_and_not_run_a_third_time() {
    let connection_name = unique("rpc-test-poison");
    let server = Rpc::builder()
        .with_connection_name(&connection_name)
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .with_shutdown_grace(Duration::from_millis(200))
        .connect(&common::url())
        .await
        .unwrap();
    let name = unique("poison");
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let (r, s) = (Arc::clone(&runs), Arc::clone(&started));
    server
        .register_async(&name, move |_: Nothing| {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let s = Arc::clone(&s);
            async move {
                s.notify_one();
                // Holds the request until the link under it dies.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, HandlerError>(0)
            }
        })
        .await
        .unwrap();
    let (_c, client) = rpc().await;
    let call = {
        let (client, name) = (client.clone(), name.clone());
        let options = rpc_transport_amqp::CallOptions::new().with_deadline(Duration::from_secs(60));
        tokio::spawn(async move { client.call_with::<u8>(&name, kwargs! {}, options).await })
    };
    for loss in 1..=2 {
        tokio::time::timeout(Duration::from_secs(20), started.notified())
            .await
            .unwrap_or_else(|_| panic!("run {loss} did not start"));
        // The broker requeues the request and, once the server is back, redelivers it.
        common::close_broker_connection(&connection_name, "killed by the poison test");
    }
    let (outcome, took) = timed(call).await;
    let outcome = outcome.unwrap();
    match &outcome {
        Err(RpcError::Handler { code: Some(code), message, .. }) if code == "poison" => {
            assert!(message.contains("not run again"), "{message}");
        }
        other => panic!("expected a poison error, got {other:?}"),
    }
    assert!(took < Duration::from_secs(20), "answered {took:?} after the second loss");
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "run once, again after the first loss, never a third time"
    );
    assert!(server.wait_connected(Duration::from_secs(20)).await);
    assert_eq!(queue_state(&name).await, (0, 1), "acked: nothing requeued");
    server.close().await.unwrap();
}

/// `(ready messages, consumers)` of each queue in `names`, by passive declares on one channel.
async fn queue_states(names: &[String]) -> Vec<(u32, u32)> {
    let (conn, channel) = common::channel().await;
    let mut states = Vec::with_capacity(names.len());
    for name in names {
        let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel
            .queue_declare(name.as_str().into(), options, Default::default())
            .await
            .unwrap_or_else(|e| panic!("queue {name} should exist: {e}"));
        states.push((queue.message_count(), queue.consumer_count()));
    }
    let _ = conn.close(200, "OK".into()).await;
    states
}

/// Waits until `rpc` is connected on a new link (a reply queue other than `old`), at most
/// `limit`; whether it is.
async fn reconnected(rpc: &Rpc, old: &str, limit: Duration) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if rpc.reply_queue().is_some_and(|queue| queue != old) && rpc.is_connected() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn methods_registered_again_while_reconnections_reinstall_them_end_with_exactly_one_consumer_each() {
    let connection_name = unique("rpc-test-register-race");
    let server = Rpc::builder()
        .with_connection_name(&connection_name)
        .with_reconnect_delay(Duration::from_millis(5), Duration::from_millis(20))
        .with_shutdown_grace(Duration::from_secs(1))
        .connect(&common::url())
        .await
        .unwrap();
    /// Registers `name` answering `version`, again a little later when the link dies under it.
    async fn register(server: &Rpc, name: &str, version: u64) {
        let mut failures = Vec::new();
        while let Err(e) =
            server.register_async(name, move |_: Nothing| async move { Ok::<_, HandlerError>(version) }).await
        {
            failures.push(e.to_string());
            assert!(failures.len() < 200, "{name}: registration keeps failing: {failures:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let names: Vec<String> = (0..64).map(|_| unique("race")).collect();
    for name in &names {
        register(&server, name, 0).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Each method is unregistered and registered again, over and over, while the connection is
    // closed and re-established: registrations land while the new link re-installs the
    // methods, some of them the very method being installed.
    let churning: Vec<_> = names
        .chunks(16)
        .map(|chunk| {
            let (server, stop, chunk) = (server.clone(), Arc::clone(&stop), chunk.to_vec());
            tokio::spawn(async move {
                let mut versions = vec![0; chunk.len()];
                let mut round = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    round += 1;
                    for (name, version) in chunk.iter().zip(versions.iter_mut()) {
                        server.unregister(name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
                        register(&server, name, round).await;
                        *version = round;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                chunk.into_iter().zip(versions).collect::<Vec<_>>()
            })
        })
        .collect();
    for round in 0..3 {
        assert!(server.wait_connected(Duration::from_secs(20)).await, "round {round}: not connected");
        let old = server.reply_queue().expect("a reply queue while connected");
        common::close_broker_connection(&connection_name, "closed by the register race test");
        let closed_at = std::time::Instant::now();
        assert!(reconnected(&server, &old, Duration::from_secs(20)).await, "round {round}: no reconnection");
        println!("round {round}: reconnected {:?} after the close", closed_at.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut latest = Vec::new();
    for task in churning {
        latest.extend(task.await.unwrap());
    }
    let rounds = latest.iter().map(|(_, version)| *version).min().unwrap_or(0);
    println!("every method registered again at least {rounds} times");
    assert!(server.wait_connected(Duration::from_secs(20)).await, "connected after the last registration");
    let states = queue_states(&names).await;
    let wrong: Vec<(&String, (u32, u32))> = names.iter().zip(states).filter(|(_, state)| *state != (0, 1)).collect();
    assert_eq!(wrong, Vec::new(), "each of the {} method queues should have one consumer and no message", names.len());
    // The one consumer is the latest registration's.
    let (_c, client) = rpc().await;
    for (name, version) in &latest {
        let answered = client.call::<u64>(name, kwargs! {}).await;
        assert_eq!(answered.ok(), Some(*version), "{name}: answered by registration {version}");
    }
    server.close().await.unwrap();
    let (conn, channel) = common::channel().await;
    for name in &names {
        let _ = channel.queue_delete(name.as_str().into(), Default::default()).await;
    }
    let _ = conn.close(200, "OK".into()).await;
}
