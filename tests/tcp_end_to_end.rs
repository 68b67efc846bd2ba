//! End to end through the facade crate: the example services behind real Consumers and a
//! Producer on loopback, called by typed clients and by the `calculator` example itself.
//!
//! The example is tested by calling its `run`/`demo` functions in process (the example file
//! is included as a module): `cargo test` then always tests the current source, without
//! depending on a previously built binary or nesting a second `cargo` under the build lock.
//! CI additionally runs `cargo run --example calculator` as a user does.

#[allow(dead_code)]
#[path = "../examples/calculator.rs"]
mod calculator_example;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rpc::core::{Args, Request, RpcError, Transport};
use rpc::tcp::{Consumer, ConsumerConfig, Producer, ProducerConfig, TcpTransport};
use rpc_testkit::services::{self, CalculatorClient, NeuralNetClient};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}

async fn consumer(pool: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let consumer = Consumer::new(Arc::new(services::registry(Some(pool))), ConsumerConfig::default());
    let handle = tokio::spawn(async move { consumer.serve(listener, stopped).await });
    Server { addr, stop, handle }
}

async fn producer(producer: Producer) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move { producer.serve(listener, stopped).await });
    Server { addr, stop, handle }
}

fn text_request(line: &str) -> Request {
    let mut tokens = line.split(' ').map(str::to_owned);
    let (service, method) = (tokens.next().unwrap(), tokens.next().unwrap());
    Request::new(service, method, Args::Text(tokens.collect()))
}

#[tokio::test]
async fn typed_clients_reach_the_example_services_through_the_producer_and_directly() {
    let (c1, c2) = (consumer(2).await, consumer(2).await);
    let p = Producer::new(vec![c1.addr, c2.addr], ProducerConfig::default());
    let gateway = producer(p.clone()).await;

    let calc_in_process = CalculatorClient::new(p.clone());
    let calc_over_tcp = CalculatorClient::new(TcpTransport::new(gateway.addr));
    let calc_direct = CalculatorClient::new(TcpTransport::new(c2.addr));
    assert_eq!(calc_in_process.calculate(2.0, "+".into(), 2.0).await.unwrap(), 4.0);
    assert_eq!(calc_over_tcp.calculate(9.0, "/".into(), 4.0).await.unwrap(), 2.25);
    assert_eq!(calc_direct.calculate(-1.5, "*".into(), 2.0).await.unwrap(), -3.0);
    match calc_over_tcp.calculate(1.0, "/".into(), 0.0).await.unwrap_err() {
        RpcError::Handler { target, code, message, .. } => {
            assert_eq!(target, "calculator.calculate");
            assert_eq!(code.as_deref(), Some("division_by_zero"));
            assert_eq!(message, "division by zero");
        }
        other => panic!("{other:?}"),
    }

    let nn = NeuralNetClient::new(TcpTransport::new(gateway.addr));
    for (x1, x2, class) in [(0.0, 0.0, 0), (0.0, 1.0, 1), (1.0, 0.0, 1), (1.0, 1.0, 0)] {
        let prediction = nn.predict(vec![x1, x2]).await.unwrap();
        assert_eq!(prediction.class, class, "{x1} xor {x2}: {prediction:?}");
    }
    assert_eq!(nn.architecture().await.unwrap().layers, [2, 16, 16, 1]);

    gateway.stop().await;
    c1.stop().await;
    c2.stop().await;
}

#[tokio::test]
async fn a_burst_of_heavy_calls_queues_on_the_pool_while_the_server_keeps_answering() {
    let c = consumer(1).await;
    let client = TcpTransport::new(c.addr);
    let burst: Vec<_> = (0..60)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call(text_request("neural_net predict 1 0")).await })
        })
        .collect();
    // Errors found before a handler runs never wait for the pool.
    let error = client.call(text_request("nosuch method")).await.unwrap_err();
    assert!(matches!(error, RpcError::UnknownService { .. }), "{error}");
    let still_queued = burst.iter().filter(|task| !task.is_finished()).count();
    assert!(still_queued > 0, "the whole burst finished before a trivial reply");
    for task in burst {
        let prediction: services::Prediction = task.await.unwrap().unwrap().decode("neural_net.predict").unwrap();
        assert_eq!(prediction.class, 1);
    }
    c.stop().await;
}

#[tokio::test]
async fn the_calculator_example_runs_its_crowd_and_every_task_gets_its_expected_answer() {
    let mut printed = Vec::new();
    let summary =
        tokio::time::timeout(Duration::from_secs(120), calculator_example::demo(2, 40, |line| printed.push(line)))
            .await
            .expect("the demo finished")
            .unwrap();
    assert_eq!(summary.tasks, 40);
    assert_eq!(printed.len(), 40);
    assert!(summary.unexpected.is_empty(), "{}", summary.render());
    assert!(summary.errors >= 5, "the crowd provokes errors on purpose: {}", summary.render());
    assert_eq!(summary.consumers.len(), 2);
    assert_eq!(summary.consumers.iter().map(|c| c.served).sum::<u64>(), 40);
    assert!(summary.consumers.iter().all(|c| c.served > 0), "{}", summary.render());
    let rendered = summary.render();
    assert!(rendered.starts_with("summary: 40 tasks, "), "{rendered}");
    assert!(rendered.contains("consumer 2 at 127.0.0.1:"), "{rendered}");
}

#[tokio::test]
async fn the_calculator_example_exits_0_over_tcp() {
    use calculator_example::{run, Cli, TransportKind};
    let ok = run(Cli { transport: TransportKind::Tcp, tasks: 16, consumers: 2, clients: None }).await;
    assert_eq!(ok, ExitCode::SUCCESS);
}
