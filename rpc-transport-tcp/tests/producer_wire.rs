//! The Producer over real sockets: spreading, failover, deadlines, and relaying replies
//! verbatim.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{consumer, producer, raw, raw_text, registry, test_producer, within, CalculatorClient};
use rpc_core::RpcError;
use rpc_transport_tcp::{ConsumerConfig, ConsumerState, Limits, Producer, ProducerConfig, TcpTransport};
use tokio::net::{TcpListener, TcpStream};

/// An address where nothing listens (bound, then released).
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn the_seed_request_through_the_producer_gets_4_and_the_connection_closes() {
    let (r1, _) = registry();
    let (r2, _) = registry();
    let c1 = consumer(r1, ConsumerConfig::default()).await;
    let c2 = consumer(r2, ConsumerConfig::default()).await;
    let gateway = producer(test_producer(vec![c1.addr, c2.addr])).await;
    assert_eq!(within(10, raw(gateway.addr, b"calculator calculate 2 + 2\n")).await, b"4\n");
    gateway.stop().await;
    c1.stop().await;
    c2.stop().await;
}

#[tokio::test]
async fn both_consumers_receive_work() {
    let (r1, _) = registry();
    let (r2, _) = registry();
    let c1 = consumer(r1, ConsumerConfig::default()).await;
    let c2 = consumer(r2, ConsumerConfig::default()).await;
    let p = test_producer(vec![c1.addr, c2.addr]);
    let gateway = producer(p.clone()).await;
    for i in 0..20 {
        assert_eq!(raw_text(gateway.addr, &format!("lab add {i} 0\n")).await, format!("{i}\n"));
    }
    let addr = gateway.addr;
    let concurrent: Vec<_> =
        (0..40).map(|i| tokio::spawn(async move { raw_text(addr, &format!("lab add {i} 1\n")).await })).collect();
    for (i, task) in concurrent.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), format!("{}\n", i + 1));
    }
    let stats = p.stats();
    assert_eq!(stats.iter().map(|s| s.served).sum::<u64>(), 60);
    // Sequential tasks alternate (round-robin among equally idle consumers).
    assert!(stats.iter().all(|s| s.served >= 10), "{stats:?}");
    assert!(stats.iter().all(|s| s.failures == 0 && s.outstanding == 0), "{stats:?}");
    gateway.stop().await;
    c1.stop().await;
    c2.stop().await;
}

#[tokio::test]
async fn the_least_busy_consumer_gets_the_next_task() {
    let (r1, mut started1) = registry();
    let (r2, mut started2) = registry();
    let c1 = consumer(r1, ConsumerConfig::default()).await;
    let c2 = consumer(r2, ConsumerConfig::default()).await;
    let p = test_producer(vec![c1.addr, c2.addr]);
    let gateway = producer(p.clone()).await;
    let addr = gateway.addr;
    let slow = tokio::spawn(async move { raw_text(addr, "lab slow 3000\n").await });
    let busy = within(10, async {
        tokio::select! {
            _ = started1.recv() => 0,
            _ = started2.recv() => 1,
        }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(raw_text(addr, "calculator calculate 1 + 1\n").await, "2\n");
    }
    let stats = p.stats();
    assert_eq!(stats[busy].served, 0, "{stats:?}");
    assert_eq!(stats[busy].outstanding, 1, "{stats:?}");
    assert_eq!(stats[1 - busy].served, 5, "{stats:?}");
    assert_eq!(slow.await.unwrap(), "3000\n");
    gateway.stop().await;
    c1.stop().await;
    c2.stop().await;
}

#[tokio::test]
async fn error_replies_are_relayed_byte_for_byte() {
    let (r1, _) = registry();
    let c1 = consumer(r1, ConsumerConfig::default()).await;
    let gateway = producer(test_producer(vec![c1.addr])).await;
    for line in ["calculator calculate 1 / 0\n", "calculator nosuch\n", "lab boom\n", "lab echo ERROR\n"] {
        let direct = raw(c1.addr, line.as_bytes()).await;
        let relayed = raw(gateway.addr, line.as_bytes()).await;
        assert_eq!(relayed, direct, "{line}");
    }
    gateway.stop().await;
    c1.stop().await;
}

#[tokio::test]
async fn a_consumer_killed_mid_run_is_skipped_and_every_later_task_succeeds() {
    let (r1, mut started1) = registry();
    let (r2, _) = registry();
    let c1 = consumer(r1, ConsumerConfig::default()).await;
    let c2 = consumer(r2, ConsumerConfig::default()).await;
    let p = test_producer(vec![c1.addr, c2.addr]);
    let gateway = producer(p.clone()).await;
    let addr = gateway.addr;
    // Tasks in flight on both consumers when the first one dies.
    let in_flight: Vec<_> =
        (0..6).map(|_| tokio::spawn(async move { raw_text(addr, "lab slow 400\n").await })).collect();
    within(10, started1.recv()).await;
    c1.kill().await;
    for task in in_flight {
        // Retried on the survivor: at-least-once.
        assert_eq!(within(20, task).await.unwrap(), "400\n");
    }
    let later: Vec<_> =
        (0..30).map(|i| tokio::spawn(async move { raw_text(addr, &format!("lab add {i} {i}\n")).await })).collect();
    for (i, task) in later.into_iter().enumerate() {
        assert_eq!(within(20, task).await.unwrap(), format!("{}\n", 2 * i));
    }
    let stats = p.stats();
    assert!(stats[0].failures >= 1, "{stats:?}");
    assert!(stats[0].down, "{stats:?}");
    assert!(stats[1].served >= 30, "{stats:?}");
    gateway.stop().await;
    c2.stop().await;
}

#[tokio::test]
async fn when_every_consumer_is_down_the_task_fails_with_unavailable_naming_each() {
    let (a, b) = (dead_addr().await, dead_addr().await);
    let p = test_producer(vec![a, b]);
    let gateway = producer(p.clone()).await;
    let reply = within(10, raw_text(gateway.addr, "calculator calculate 2 + 2\n")).await;
    assert!(
        reply.starts_with("ERROR unavailable: no server is serving 'calculator.calculate': every consumer failed"),
        "{reply:?}"
    );
    assert!(reply.contains(&a.to_string()) && reply.contains(&b.to_string()), "{reply:?}");
    let error =
        CalculatorClient::new(TcpTransport::new(gateway.addr)).calculate(2.0, "+".into(), 2.0).await.unwrap_err();
    assert!(matches!(error, RpcError::Unavailable { .. }), "{error}");
    let error = CalculatorClient::new(p.clone()).calculate(2.0, "+".into(), 2.0).await.unwrap_err();
    assert!(matches!(error, RpcError::Unavailable { .. }), "{error}");
    // Each failed one probe (or attempt), then was left alone for its backoff (60 s here):
    // later tasks fail at once, naming why.
    let stats = p.stats();
    assert!(stats.iter().all(|s| s.failures == 1 && s.down && s.state == ConsumerState::Down), "{stats:?}");
    assert!(stats.iter().all(|s| s.reason.as_ref().is_some_and(|r| r.contains("refused"))), "{stats:?}");
    let reply = within(10, raw_text(gateway.addr, "calculator calculate 2 + 2\n")).await;
    assert!(reply.contains(&format!("{a}: down (")) && reply.contains("next health probe in "), "{reply:?}");
    gateway.stop().await;

    let none = Producer::new(vec![], ProducerConfig::default());
    let error = CalculatorClient::new(none).calculate(2.0, "+".into(), 2.0).await.unwrap_err();
    assert!(error.to_string().contains("no consumers are configured"), "{error}");
}

#[tokio::test]
async fn an_overloaded_consumer_is_skipped() {
    let (r1, mut started) = registry();
    let (r2, _) = registry();
    let full = consumer(r1, ConsumerConfig::default().with_limits(Limits::default().with_max_connections(1))).await;
    let full_addr = full.addr;
    let occupant = tokio::spawn(async move { raw_text(full_addr, "lab slow 8000\n").await });
    within(10, started.recv()).await;
    let c2 = consumer(r2, ConsumerConfig::default()).await;
    let p = test_producer(vec![full.addr, c2.addr]);
    let gateway = producer(p.clone()).await;
    for _ in 0..4 {
        assert_eq!(within(10, raw_text(gateway.addr, "calculator calculate 8 / 2\n")).await, "4\n");
    }
    let stats = p.stats();
    assert_eq!((stats[0].served, stats[0].failures), (0, 1), "{stats:?}");
    assert_eq!(stats[1].served, 4, "{stats:?}");
    gateway.stop().await;
    c2.stop().await;
    occupant.abort();
}

#[tokio::test]
async fn every_task_has_a_deadline() {
    let (r1, _) = registry();
    let c1 = consumer(r1, ConsumerConfig::default()).await;
    let p = Producer::new(vec![c1.addr], ProducerConfig::default().with_max_deadline(Duration::from_millis(300)));
    let gateway = producer(p).await;
    let reply = within(10, raw_text(gateway.addr, "lab slow 5000\n")).await;
    assert!(reply.starts_with("ERROR deadline_exceeded: lab.slow: deadline of 300 ms exceeded"), "{reply:?}");
    gateway.stop().await;
    c1.stop().await;
}

#[tokio::test]
async fn the_producer_checks_lines_with_the_same_limits() {
    let (r1, _) = registry();
    let c1 = consumer(r1, ConsumerConfig::default()).await;
    let config = ProducerConfig::default().with_limits(Limits::default().with_max_line(100));
    let gateway = producer(Producer::new(vec![c1.addr], config)).await;
    let reply = String::from_utf8(within(10, raw(gateway.addr, &[b'x'; 100_000])).await).unwrap();
    assert!(reply.starts_with("ERROR bad_request: bad request: request line longer than 100 bytes"), "{reply:?}");
    let reply = raw_text(gateway.addr, "   \n").await;
    assert!(reply.starts_with("ERROR bad_request: bad request: empty request"), "{reply:?}");
    assert_eq!(raw_text(gateway.addr, "calculator   calculate 2 + 2\r\n").await, "4\n");
    gateway.stop().await;
    c1.stop().await;
}

#[tokio::test]
async fn a_typed_client_works_through_the_producer_and_straight_to_a_consumer() {
    let (r1, _) = registry();
    let (r2, _) = registry();
    let c1 = consumer(r1, ConsumerConfig::default()).await;
    let c2 = consumer(r2, ConsumerConfig::default()).await;
    let p = test_producer(vec![c1.addr, c2.addr]);
    let gateway = producer(p.clone()).await;

    let in_process = CalculatorClient::new(p.clone());
    let over_tcp = CalculatorClient::new(TcpTransport::new(gateway.addr));
    let direct = CalculatorClient::new(TcpTransport::new(c1.addr));
    assert_eq!(in_process.calculate(2.0, "+".into(), 2.0).await.unwrap(), 4.0);
    assert_eq!(over_tcp.calculate(7.0, "-".into(), 10.0).await.unwrap(), -3.0);
    assert_eq!(direct.calculate(0.5, "*".into(), 0.25).await.unwrap(), 0.125);
    for client_error in [
        in_process.calculate(1.0, "/".into(), 0.0).await.unwrap_err(),
        over_tcp.calculate(1.0, "/".into(), 0.0).await.unwrap_err(),
        direct.calculate(1.0, "/".into(), 0.0).await.unwrap_err(),
    ] {
        match client_error {
            RpcError::Handler { code, .. } => assert_eq!(code.as_deref(), Some("division_by_zero")),
            other => panic!("{other:?}"),
        }
    }
    gateway.stop().await;
    c1.stop().await;
    c2.stop().await;
}

#[tokio::test]
async fn producer_shutdown_finishes_in_flight_tasks() {
    let (r1, mut started) = registry();
    let c1 = consumer(r1, ConsumerConfig::default()).await;
    let gateway = producer(test_producer(vec![c1.addr])).await;
    let addr = gateway.addr;
    let task = tokio::spawn(async move { raw_text(addr, "lab slow 500\n").await });
    within(10, started.recv()).await;
    within(10, gateway.stop()).await;
    assert_eq!(task.await.unwrap(), "500\n");
    assert!(TcpStream::connect(addr).await.is_err());
    c1.stop().await;
}
