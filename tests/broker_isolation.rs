//! The suite shares its broker politely: a foreign server attached to the example services'
//! fixed queue name on the shared vhost (`/` by default) takes none of the suite's calls,
//! because every test process works in a vhost of its own (`rpc_testkit::broker`).
//!
//! Needs a broker at `$RABBITMQ_URL` and `rabbitmqctl` next to it; fails without them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rpc::amqp::{CallOptions, Rpc};
use rpc::kwargs;
use rpc_testkit::broker::{shared_url, url, vhost_of};
use rpc_testkit::services::Calculator;

const QUEUE: &str = "calculator.calculate";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_server_on_the_shared_vhosts_calculator_queue_takes_none_of_the_suites_calls() {
    let (isolated, shared) = (url(), shared_url());
    assert_ne!(
        vhost_of(&isolated),
        vhost_of(&shared),
        "expected this test process on a vhost of its own, got the shared one"
    );

    // The foreign server: a raw consumer on `calculator.calculate` of the shared vhost, where
    // `consumer --amqp` or an aio-pika server would be, answering `-1` to everything.
    let foreign = Connection::connect(&shared, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("expected a broker at {}, got {e}", rpc::amqp::wire::redact_url(&shared)));
    let probe = foreign.create_channel().await.expect("probe channel");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    // A passive declare of a missing queue closes its channel: a channel of its own.
    let existed = probe.queue_declare(QUEUE.into(), passive, FieldTable::default()).await.is_ok();
    let channel = foreign.create_channel().await.expect("foreign channel");
    if !existed {
        channel
            .queue_declare(QUEUE.into(), QueueDeclareOptions::default(), rpc::amqp::wire::method_queue_arguments())
            .await
            .expect("declare calculator.calculate on the shared vhost");
    }
    let mut requests = channel
        .basic_consume(QUEUE.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume calculator.calculate on the shared vhost");
    let taken = Arc::new(AtomicUsize::new(0));
    let server = {
        let (channel, taken) = (channel.clone(), Arc::clone(&taken));
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                taken.fetch_add(1, Ordering::SeqCst);
                if let Some(reply_to) = request.properties.reply_to().clone() {
                    let mut props = BasicProperties::default().with_content_type("application/json".into());
                    if let Some(id) = request.properties.correlation_id().clone() {
                        props = props.with_correlation_id(id);
                    }
                    let _ =
                        channel.basic_publish("".into(), reply_to, BasicPublishOptions::default(), b"-1", props).await;
                }
                let _ = request.ack(BasicAckOptions::default()).await;
            }
        })
    };

    // The foreign server is really there: calls on the shared vhost reach it (another server
    // on that queue, e.g. a running `consumer --amqp`, may take some of them in turn).
    let outsider = Rpc::connect(&shared).await.expect("a client on the shared vhost connects");
    for _ in 0..20 {
        let options = CallOptions::new().with_deadline(Duration::from_secs(2));
        let _ = outsider.call_with::<f64>(QUEUE, kwargs! { "a" => 1, "op" => "+", "b" => 1 }, options).await;
        if taken.load(Ordering::SeqCst) > 0 {
            break;
        }
    }
    outsider.close().await.expect("the shared-vhost client closes");
    let before = taken.load(Ordering::SeqCst);
    assert!(before > 0, "expected the foreign server to take calls on the shared vhost, got none of 20");

    // The suite's own calculator, on the same queue name in this process's vhost.
    let ours = Rpc::connect(&isolated).await.expect("server connects");
    ours.serve(Calculator).await.expect("serve the calculator");
    let client = Rpc::connect(&isolated).await.expect("client connects");
    for a in 0..50 {
        let got = client.call::<f64>(QUEUE, kwargs! { "a" => a, "op" => "+", "b" => 2 }).await;
        let expected = f64::from(a) + 2.0;
        assert!(
            matches!(got, Ok(v) if v == expected),
            "expected {a} + 2 = {expected} from our calculator, got {got:?}"
        );
    }
    let after = taken.load(Ordering::SeqCst);
    assert_eq!(after, before, "expected the foreign server to take none of our 50 calls, it took {}", after - before);

    client.close().await.expect("client closes");
    ours.close().await.expect("server closes");
    server.abort();
    let _ = foreign.close(200, "OK".into()).await;
    if !existed {
        // Ours, unless someone attached to it meanwhile (then it is theirs).
        let cleanup = Connection::connect(&shared, ConnectionProperties::default()).await.expect("reconnect");
        let channel = cleanup.create_channel().await.expect("channel");
        let _ = channel.queue_delete(QUEUE.into(), QueueDeleteOptions { if_unused: true, ..Default::default() }).await;
        let _ = cleanup.close(200, "OK".into()).await;
    }
}

/// Every test and the benchmark reach the broker through `rpc_testkit::broker` (`url()`, or a
/// program started by `common_cli::spawn`, which passes it on), never by reading
/// `$RABBITMQ_URL` themselves: that URL names the shared vhost, where the user's own examples
/// serve the same queue names and where anything a test declares is left behind.
#[test]
fn no_test_reads_the_shared_broker_url_itself() {
    fn sources(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["tests", "rpc-core/tests", "rpc-transport-tcp/tests", "rpc-transport-amqp/tests", "rpc-http/tests"] {
        if root.join(dir).is_dir() {
            sources(&root.join(dir), &mut files);
        }
    }
    sources(&root.join("rpc-bench/src"), &mut files);
    assert!(files.len() > 20, "expected the suite's sources, found {files:?}");
    let needle = ["var(\"RABBITMQ", "_URL\")"].concat();
    let readers: Vec<_> = files
        .iter()
        .filter(|path| std::fs::read_to_string(path).is_ok_and(|text| text.contains(&needle)))
        .map(|path| path.strip_prefix(root).unwrap_or(path).display().to_string())
        .collect();
    assert!(
        readers.is_empty(),
        "expected every test to take its broker URL from rpc_testkit, these read it: {readers:?}"
    );
}
