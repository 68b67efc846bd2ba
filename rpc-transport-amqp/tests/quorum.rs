//! Quorum method queues (`RpcBuilder::with_quorum_queues`): declared durable with
//! `x-queue-type: quorum`, served and called like classic ones, refused when the other kind is
//! declared first; and the broker's `x-delivery-limit` sends an over-delivered request back to
//! its caller. The survival of waiting requests when a node dies is in `tests/cluster.rs`.

mod common;

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use rpc_core::RpcError;
use rpc_transport_amqp::{kwargs, Error, Rpc};

/// `(type, durable)` of queue `name`, as the broker lists it.
fn queue_kind(name: &str) -> Option<(String, String)> {
    let uri: lapin::uri::AMQPUri = common::url().parse().expect("RABBITMQ_URL parses");
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "-p", &uri.vhost, "name", "type", "durable"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
        let fields: Vec<&str> = line.split('\t').collect();
        (fields.first() == Some(&name)).then(|| (fields[1].to_owned(), fields[2].to_owned()))
    })
}

async fn delete_queue(name: &str) {
    let (conn, channel) = common::channel().await;
    let _ = channel.queue_delete(name.into(), QueueDeleteOptions::default()).await;
    let _ = conn.close(200, "OK".into()).await;
}

async fn echo(rpc: &Rpc, method: &str) -> Result<(), Error> {
    rpc.register_async(method, |a: serde_json::Value| async move { Ok::<_, std::convert::Infallible>(a) }).await
}

#[tokio::test]
async fn a_quorum_method_queue_is_durable_and_serves_calls() {
    let method = common::unique("quorum-serve");
    let server = Rpc::builder().with_quorum_queues(true).connect(&common::url()).await.expect("connect");
    echo(&server, &method).await.expect("register on a quorum queue");
    assert_eq!(queue_kind(&method), Some(("quorum".into(), "true".into())));
    // A client needs no option: it publishes to the queue whatever its kind.
    let client = Rpc::connect(&common::url()).await.expect("connect");
    for n in 0..20 {
        let echoed: serde_json::Value = client.call(&method, kwargs! { "n" => n }).await.expect("call");
        assert_eq!(echoed["n"], n);
    }
    client.close().await.unwrap();
    server.close().await.unwrap();
    // Durable: it outlives its servers until deleted.
    assert!(queue_kind(&method).is_some(), "the quorum queue stays after the server closes");
    delete_queue(&method).await;
}

/// A classic server (or aio-pika's `JsonRPC.register`) and a quorum server of one method
/// cannot both declare its queue: whoever comes second is refused with `PRECONDITION_FAILED`,
/// and the first keeps serving.
#[tokio::test]
async fn classic_and_quorum_servers_of_one_method_refuse_each_other() {
    for quorum_first in [false, true] {
        let method = common::unique("quorum-clash");
        let first = Rpc::builder().with_quorum_queues(quorum_first).connect(&common::url()).await.expect("connect");
        echo(&first, &method).await.expect("the first declaration wins");
        let second = Rpc::builder().with_quorum_queues(!quorum_first).connect(&common::url()).await.expect("connect");
        let err = echo(&second, &method).await.expect_err("the other kind is refused");
        let text = err.to_string();
        assert!(matches!(err, Error::Broker { .. }), "{err:?}");
        assert!(text.contains("PRECONDITION_FAILED"), "{text}");
        assert!(text.contains(&format!("declaring queue '{method}'")), "{text}");
        println!("quorum first: {quorum_first}: {text}");
        // The refusal cost the second `Rpc` a scratch channel only: the first still serves.
        let echoed: serde_json::Value = second.call(&method, kwargs! { "ok" => true }).await.expect("call");
        assert_eq!(echoed["ok"], true);
        second.close().await.unwrap();
        first.close().await.unwrap();
        delete_queue(&method).await;
    }
}

/// With `x-delivery-limit` (here from a policy), a request whose deliveries all end with its
/// server's link lost is dead-lettered by the broker to `rpc.dlx`, which routes it back to its
/// caller: the call fails with `Unavailable` naming `delivery_limit`, without waiting for
/// its deadline.
#[tokio::test]
async fn past_the_delivery_limit_the_caller_gets_the_request_back() {
    let uri: lapin::uri::AMQPUri = common::url().parse().expect("RABBITMQ_URL parses");
    let method = common::unique("quorum-limit");
    let policy = common::unique("rpc-test-limit");
    let set = std::process::Command::new("rabbitmqctl")
        .args(["-q", "set_policy", "-p", &uri.vhost, "--apply-to", "queues", &policy])
        .arg(format!("^{method}$"))
        .arg(r#"{"delivery-limit": 1}"#)
        .output()
        .expect("rabbitmqctl runs");
    assert!(set.status.success(), "set_policy: {}", String::from_utf8_lossy(&set.stderr));

    // A server whose handler takes its own link down: every delivery ends unacked.
    let server = Rpc::builder()
        .with_quorum_queues(true)
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .with_connection_name(method.clone())
        .with_shutdown_grace(Duration::from_millis(100))
        .connect(&common::url())
        .await
        .expect("connect");
    let name = method.clone();
    server
        .register_async(&method, move |_: serde_json::Value| {
            let name = name.clone();
            async move {
                for pid in common::broker_connections(&name) {
                    let _ = std::process::Command::new("rabbitmqctl")
                        .args(["-q", "close_connection", &pid, "test: the handler drops its link"])
                        .output();
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, std::convert::Infallible>(0)
            }
        })
        .await
        .expect("register");
    let client = Rpc::connect(&common::url()).await.expect("connect");
    let started = std::time::Instant::now();
    let outcome = client.call_with::<serde_json::Value>(
        &method,
        kwargs! {},
        rpc_transport_amqp::CallOptions::new().with_deadline(Duration::from_secs(40)),
    );
    let err = outcome.await.expect_err("never answered");
    println!("after {} ms: {err}", started.elapsed().as_millis());
    assert!(
        matches!(&err, RpcError::Unavailable { reason, .. } if reason.contains("delivery_limit")),
        "expected the request dead-lettered for its delivery limit, got {err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "well before the deadline");
    client.close().await.unwrap();
    server.close().await.unwrap();
    let _ = std::process::Command::new("rabbitmqctl").args(["-q", "clear_policy", "-p", &uri.vhost, &policy]).output();
    delete_queue(&method).await;
}

/// Channel numbers the broker lists for the connections named `name`.
fn channel_numbers(name: &str) -> Vec<u32> {
    let pids = common::broker_connections(name);
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_channels", "--no-table-headers", "connection", "number"])
        .output()
        .expect("rabbitmqctl runs");
    let mut numbers: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (connection, number) = line.split_once('\t')?;
            pids.iter().any(|pid| pid == connection).then(|| number.trim().parse().ok())?
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

/// A quorum queue that refuses publishes (full, `overflow: reject-publish`) nacks requests: each
/// fails its own call at once with `Unavailable`, the link then publishes on a fresh channel
/// (one more at most: the reply and serving channels stay), and neither a call waiting for its
/// reply meanwhile nor the calls after the refusal are disturbed by it.
#[tokio::test]
async fn a_nacked_request_fails_only_its_call_and_later_calls_go_out_on_a_fresh_channel() {
    let uri: lapin::uri::AMQPUri = common::url().parse().expect("RABBITMQ_URL parses");
    let method = common::unique("quorum-nack");
    let slow = common::unique("quorum-nack-slow");
    let policy = common::unique("rpc-test-full");
    let server = Rpc::builder().with_quorum_queues(true).connect(&common::url()).await.expect("connect");
    echo(&server, &method).await.expect("register");
    server.unregister(&method).await.expect("unregister: the queue stays, nobody consumes it");
    server
        .register_async(&slow, |a: serde_json::Value| async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok::<_, std::convert::Infallible>(a)
        })
        .await
        .expect("register");
    let set = std::process::Command::new("rabbitmqctl")
        .args(["-q", "set_policy", "-p", &uri.vhost, "--apply-to", "queues", &policy])
        .arg(format!("^{method}$"))
        .arg(r#"{"max-length": 1, "overflow": "reject-publish"}"#)
        .output()
        .expect("rabbitmqctl runs");
    assert!(set.status.success(), "set_policy: {}", String::from_utf8_lossy(&set.stderr));
    // Filled past its limit (the broker refuses publishes over it, not at it) from another
    // connection: the client's first publish to it is refused.
    let (conn, channel) = common::channel().await;
    for _ in 0..2 {
        channel
            .basic_publish(
                "".into(),
                method.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                b"{}",
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish");
    }
    while common::queue_state(&method).await.0 < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = conn.close(200, "OK".into()).await;

    let client = Rpc::builder()
        .with_connection_name(method.clone())
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .connect(&common::url())
        .await
        .expect("connect");
    let before = channel_numbers(&method);
    let waiting = {
        let (client, slow) = (client.clone(), slow.clone());
        tokio::spawn(async move { client.call::<serde_json::Value>(&slow, kwargs! { "n" => 0 }).await })
    };
    for n in 1..=10 {
        let started = std::time::Instant::now();
        let err = client.call::<serde_json::Value>(&method, kwargs! { "n" => n }).await.expect_err("the queue is full");
        assert!(
            matches!(&err, RpcError::Unavailable { reason, .. } if reason.contains("nack")),
            "expected a nack, got {err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "a nack fails the call at once");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let after = channel_numbers(&method);
    println!("the client's channels before the nacks: {before:?}, after: {after:?}");
    assert!(before.iter().all(|n| after.contains(n)), "the reply and serving channels stay: {before:?} -> {after:?}");
    assert_eq!(after.len(), before.len() + 1, "one fresh request channel, the replaced ones closed: {after:?}");
    assert!(!waiting.is_finished(), "the slow call is still waiting for its reply");
    let answered = waiting.await.expect("task").expect("the slow call is answered across the nacks");
    assert_eq!(answered["n"], 0);

    let cleared =
        std::process::Command::new("rabbitmqctl").args(["-q", "clear_policy", "-p", &uri.vhost, &policy]).output();
    assert!(cleared.is_ok_and(|o| o.status.success()), "clear_policy");
    echo(&server, &method).await.expect("register again");
    // The two requests without `reply_to` are acked and dropped.
    while common::queue_state(&method).await.0 > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 11..21 {
        let echoed: serde_json::Value = client.call(&method, kwargs! { "n" => n }).await.expect("call after the nacks");
        assert_eq!(echoed["n"], n);
    }
    client.close().await.unwrap();
    server.close().await.unwrap();
    delete_queue(&method).await;
    delete_queue(&slow).await;
}
