//! The long-running examples, run as built binaries, stop gracefully on SIGTERM as on Ctrl-C:
//! they stop accepting work, answer what is in flight, and exit 0.
//!
//! A request is held in flight deterministically: the consumer runs with one blocking slot
//! (`--pool 1`), so a queue of `neural_net predict` calls (about 15 ms each in a debug build)
//! waits behind one another. Connections are accepted in order, so once a later, inline
//! request (`calculator calculate`) has been answered, every earlier connection has been
//! accepted and its request read; the signal is sent then. The AMQP case waits until the
//! broker says every request was delivered to the consumer.

mod common_cli;

use std::net::SocketAddr;
use std::time::Duration;

use common_cli::spawn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Requests held in flight behind one blocking slot: about 1.5 s of work in a debug build.
const IN_FLIGHT: usize = 100;

/// Sends `line` on a new connection, then (on its own task) reads the whole reply: the reply
/// and when it was complete.
async fn send(addr: SocketAddr, line: &str) -> JoinHandle<(String, Instant)> {
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.write_all(line.as_bytes()).await.expect("sending the request");
    tokio::spawn(async move {
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply).await;
        (String::from_utf8_lossy(&reply).into_owned(), Instant::now())
    })
}

/// Queues [`IN_FLIGHT`] predictions at `addr`, then proves with an inline request that every
/// one of them was accepted.
async fn hold_requests_in_flight(addr: SocketAddr) -> Vec<JoinHandle<(String, Instant)>> {
    let mut held = Vec::new();
    for _ in 0..IN_FLIGHT {
        held.push(send(addr, "neural_net predict 1 0\n").await);
    }
    let (marker, _) = send(addr, "calculator calculate 2 + 2\n").await.await.unwrap();
    assert_eq!(marker, "4\n", "the inline request behind the queue");
    held
}

/// Every held request got a full prediction, and some of them only after `signalled`.
async fn assert_all_answered(held: Vec<JoinHandle<(String, Instant)>>, signalled: Instant) {
    let mut after = 0;
    for (i, task) in held.into_iter().enumerate() {
        let (reply, at) = tokio::time::timeout(Duration::from_secs(60), task).await.expect("reply in time").unwrap();
        assert!(reply.starts_with("{\"class\":1,\"probability\":") && reply.ends_with("}\n"), "request {i}: {reply:?}");
        after += usize::from(at > signalled);
    }
    assert!(after > 0, "every request was answered before the signal: nothing was in flight to test");
    eprintln!("{after} of {IN_FLIGHT} requests were answered after the signal");
}

#[tokio::test]
async fn the_tcp_consumer_on_sigterm_answers_every_request_in_flight_and_exits_0() {
    let mut consumer = spawn("consumer", &["--listen", "127.0.0.1:0", "--pool", "1"], &[]);
    let addr = consumer.ready_addr("consumer: serving").await;
    let held = hold_requests_in_flight(addr).await;
    consumer.signal("TERM");
    let signalled = Instant::now();
    consumer.stderr_line("consumer: SIGTERM: stopping; finishing requests in flight", Duration::from_secs(10)).await;
    assert_all_answered(held, signalled).await;
    let (status, _, stderr) = consumer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM; stderr: {stderr}");
}

#[tokio::test]
async fn the_tcp_consumer_on_ctrl_c_behaves_the_same() {
    let mut consumer = spawn("consumer", &["--listen", "127.0.0.1:0", "--pool", "1"], &[]);
    let addr = consumer.ready_addr("consumer: serving").await;
    let held = hold_requests_in_flight(addr).await;
    consumer.signal("INT");
    let signalled = Instant::now();
    assert_all_answered(held, signalled).await;
    let (status, _, stderr) = consumer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGINT; stderr: {stderr}");
    assert!(stderr.contains("consumer: Ctrl-C: stopping"), "{stderr}");
}

#[tokio::test]
async fn the_producer_on_sigterm_relays_every_task_in_flight_and_exits_0() {
    let mut consumer = spawn("consumer", &["--listen", "127.0.0.1:0", "--pool", "1"], &[]);
    let consumer_addr = consumer.ready_addr("consumer: serving").await.to_string();
    let mut producer = spawn("producer", &["--listen", "127.0.0.1:0", "--consumer", &consumer_addr], &[]);
    let gateway = producer.ready_addr("producer: listening on").await;
    let held = hold_requests_in_flight(gateway).await;
    producer.signal("TERM");
    let signalled = Instant::now();
    assert_all_answered(held, signalled).await;
    let (status, _, stderr) = producer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "producer exit status after SIGTERM; stderr: {stderr}");
    assert!(stderr.contains("producer: SIGTERM: stopping; finishing tasks in flight"), "{stderr}");
    assert!(stderr.contains(&format!("consumer {consumer_addr}: {} tasks served", IN_FLIGHT + 1)), "{stderr}");

    consumer.signal("TERM");
    let (status, _, stderr) = consumer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "consumer exit status after SIGTERM; stderr: {stderr}");
}

#[tokio::test]
async fn the_amqp_consumer_on_sigterm_answers_every_request_it_took_and_exits_0() {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::BasicProperties;

    let url = rpc_testkit::url();
    let mut consumer =
        spawn("consumer", &["--amqp", "--pool", "1", "--prefetch", "64"], &[("RABBITMQ_URL", url.as_str())]);
    consumer.stderr_line("consumer: serving", Duration::from_secs(60)).await;

    // Requests published by hand, each confirmed by the broker, to a private reply queue.
    let conn = rpc::amqp::Connection::connect(&url, rpc::amqp::ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let private = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let reply_queue = channel.queue_declare("".into(), private, FieldTable::default()).await.unwrap();
    let reply_to = reply_queue.name().to_string();
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut replies =
        channel.basic_consume(reply_to.as_str().into(), "".into(), no_ack, FieldTable::default()).await.unwrap();
    let calls = 40;
    for i in 0..calls {
        let props = BasicProperties::default()
            .with_reply_to(reply_to.as_str().into())
            .with_correlation_id(format!("held-{i}").into())
            .with_type("call".into())
            .with_content_type("application/json".into());
        let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
        let body = br#"{"inputs":[1,0]}"#;
        let confirm = channel.basic_publish("".into(), "neural_net.predict".into(), mandatory, body, props).await;
        confirm.expect("publish").await.expect("the broker confirmed the request");
    }
    // Every request has left the queue for the consumer (40 < prefetch 64): all in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel.queue_declare("neural_net.predict".into(), passive, FieldTable::default()).await.unwrap();
        if queue.message_count() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "requests still waiting in the queue: {}", queue.message_count());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    consumer.signal("TERM");
    let signalled = Instant::now();
    let (mut answered, mut after) = (std::collections::BTreeSet::new(), 0);
    while answered.len() < calls {
        let delivery = tokio::time::timeout(Duration::from_secs(60), replies.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {calls} replies: {answered:?}", answered.len()))
            .expect("reply stream open")
            .expect("a reply");
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).expect("a JSON reply");
        let kind = delivery.properties.kind().as_ref().map(ToString::to_string);
        assert_eq!((kind.as_deref(), &body["class"]), (Some("result"), &serde_json::json!(1)), "{body}");
        let id = delivery.properties.correlation_id().as_ref().map(ToString::to_string).expect("a correlation id");
        assert!(answered.insert(id.clone()), "{id} answered twice");
        after += usize::from(Instant::now() > signalled);
    }
    assert!(after > 0, "every call was answered before the signal: nothing was in flight to test");
    let (status, _, stderr) = consumer.finish(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM; stderr: {stderr}");
    assert!(stderr.contains("consumer: SIGTERM: stopping; finishing requests in flight"), "{stderr}");
    let _ = conn.close(200, "OK".into()).await;
}

#[tokio::test]
async fn the_calculator_demo_on_sigterm_sends_no_new_task_finishes_those_in_flight_and_exits_0() {
    let tasks = 1_000_000;
    let mut calculator = spawn("calculator", &["--tasks", &tasks.to_string(), "--clients", "4"], &[]);
    // Drained on a task of its own: a full pipe would block the demo's prints.
    let mut stdout = calculator.stdout.take().expect("piped stdout");
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut lines = Vec::new();
        let mut first = Some(first_tx);
        while let Ok(Some(line)) = stdout.next_line().await {
            if line.starts_with("task ") {
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
            }
            lines.push(line);
        }
        lines
    });
    tokio::time::timeout(Duration::from_secs(60), first_rx).await.expect("a first task in time").unwrap();
    calculator.signal("TERM");
    let (status, _, stderr) = calculator.finish(Duration::from_secs(60)).await;
    let lines = reader.await.unwrap();
    let summary = lines.iter().find(|l| l.starts_with("summary: ")).unwrap_or_else(|| panic!("no summary: {stderr}"));
    let stopped =
        lines.iter().find(|l| l.contains("stopped by SIGTERM: ")).unwrap_or_else(|| panic!("{summary}\n{stderr}"));
    let sent: usize =
        stopped.split_whitespace().find_map(|w| w.parse().ok()).unwrap_or_else(|| panic!("no count in {stopped:?}"));
    assert_eq!(stopped.trim(), format!("stopped by SIGTERM: {sent} of {tasks} tasks sent, every one answered"));
    assert!(sent < tasks, "{stopped}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("task ")).count(), sent, "{summary}");
    assert!(summary.starts_with(&format!("summary: {sent} tasks, ")) && summary.contains(" 0 unexpected"), "{summary}");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM; stderr: {stderr}");
}
