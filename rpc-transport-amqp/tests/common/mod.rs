//! Helpers shared by the broker tests. Each test process works in a vhost of its own
//! (`rpc_testkit::url`) and every test uses its own queue names (uuid suffix), so the tests run
//! in parallel against a broker other programs use too. Without a broker they fail, loudly.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::time::Duration;

use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use rpc_transport_amqp::Rpc;

pub use rpc_testkit::{unique, url};

pub async fn connect() -> Connection {
    match Connection::connect(&url(), ConnectionProperties::default()).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "no RabbitMQ broker at {} ({e}); start one with scripts/ensure-rabbitmq.sh",
            rpc_transport_amqp::wire::redact_url(&url())
        ),
    }
}

pub async fn channel() -> (Connection, Channel) {
    let conn = connect().await;
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// An `Rpc` on a fresh connection of its own (returned, so a test can kill it).
pub async fn rpc() -> (Connection, Rpc) {
    let (conn, channel) = channel().await;
    let rpc = Rpc::create(channel).await.expect("Rpc::create");
    (conn, rpc)
}

/// `(ready messages, consumers)` of queue `name`, by a passive declare on a fresh connection.
pub async fn queue_state(name: &str) -> (u32, u32) {
    let (conn, channel) = channel().await;
    let queue = channel
        .queue_declare(name.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("passive declare");
    let _ = conn.close(200, "OK".into()).await;
    (queue.message_count(), queue.consumer_count())
}

/// A private reply queue for raw-protocol tests, and its consumer.
pub async fn raw_reply_queue(channel: &Channel) -> (String, Consumer) {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("reply queue");
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("consume reply queue");
    (queue.name().to_string(), consumer)
}

/// Answers `request` as a hand-written server: a `result` with `body` in `content_type`, to
/// its `reply_to`, under its correlation id.
pub async fn answer(channel: &Channel, request: &lapin::message::Delivery, content_type: &str, body: &[u8]) {
    let props = &request.properties;
    let reply = lapin::BasicProperties::default()
        .with_type("result".into())
        .with_content_type(content_type.into())
        .with_correlation_id(props.correlation_id().clone().expect("correlation id"));
    channel
        .basic_publish(
            "".into(),
            props.reply_to().clone().expect("reply_to"),
            lapin::options::BasicPublishOptions::default(),
            body,
            reply,
        )
        .await
        .expect("answer");
}

/// Pids of the broker connections whose client-provided name is `name` (from `rabbitmqctl`,
/// which the tests run next to the broker).
pub fn broker_connections(name: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "--no-table-headers", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl (needed to close a connection from the broker side)");
    assert!(out.status.success(), "rabbitmqctl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Closes, from the broker's side, the one connection named `name`.
pub fn close_broker_connection(name: &str, reason: &str) {
    let pids = broker_connections(name);
    assert_eq!(pids.len(), 1, "expected one connection named {name}, found {pids:?}");
    let out = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", &pids[0], reason])
        .output()
        .expect("rabbitmqctl close_connection");
    assert!(out.status.success(), "rabbitmqctl close_connection failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `f` and returns its output with the time it took.
pub async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let started = std::time::Instant::now();
    let out = f.await;
    (out, started.elapsed())
}
