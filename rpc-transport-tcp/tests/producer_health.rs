//! The reserved `_rpc` namespace and the Producer's health probes: who answers `_rpc health`,
//! peers that are not Consumers (an HTTP server, a Producer, the producer itself), malformed
//! replies, and the ejection of a consumer that takes tasks and never answers them.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{consumer, producer, raw_text, registry, within, CalculatorClient};
use rpc_core::{Args, Request, RpcError, Transport};
use rpc_transport_tcp::system::{self, ProbeError, Role};
use rpc_transport_tcp::{ConsumerConfig, ConsumerState, Producer, ProducerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a [`Peer`] answers each request line it reads.
#[derive(Clone, Copy)]
enum Behaviour {
    /// An HTTP server: an HTML error page for any line.
    Http,
    /// A consumer's health answer to `_rpc health`; for tasks, bytes that are not a reply of
    /// the protocol (an `ERROR` line without its JSON line).
    MalformedTasks,
    /// A consumer's health answer to `_rpc health`; tasks are read and never answered.
    SilentTasks,
}

/// A hand-made peer on loopback that records every request line it reads, with when.
struct Peer {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    task: JoinHandle<()>,
}

impl Peer {
    async fn start(behaviour: Behaviour) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&lines);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end().to_owned();
                    seen.lock().unwrap().push((Instant::now(), line.clone()));
                    let health = line == "_rpc health";
                    let reply: Vec<u8> = match behaviour {
                        Behaviour::Http => b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<html><body><h1>400 Bad Request</h1></body></html>\n".to_vec(),
                        _ if health => b"{\"role\":\"consumer\",\"protocol\":1,\"services\":[\"calculator\"]}\n".to_vec(),
                        Behaviour::MalformedTasks => b"ERROR handler: no json line follows\n".to_vec(),
                        Behaviour::SilentTasks => {
                            // Hold the connection open without a word, as a hung consumer does.
                            std::future::pending::<()>().await;
                            return;
                        }
                    };
                    let _ = stream.get_mut().write_all(&reply).await;
                    let _ = stream.get_mut().shutdown().await;
                });
            }
        });
        Peer { addr, lines, task }
    }

    /// The request lines it read, in order.
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
    }

    /// When it read each line that was not a health probe or a link request (which it refuses,
    /// as a consumer that takes no links does).
    fn task_times(&self) -> Vec<Instant> {
        let tasks = self.lines.lock().unwrap();
        tasks.iter().filter(|(_, l)| l != "_rpc health" && l != "_rpc link 1").map(|(t, _)| *t).collect()
    }

    /// When it read each line that was not a health probe: tasks, and link requests (a peer
    /// that never answers one is asked again on each attempt).
    fn attempt_times(&self) -> Vec<Instant> {
        self.lines.lock().unwrap().iter().filter(|(_, l)| l != "_rpc health").map(|(t, _)| *t).collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn health_json(reply: &str) -> Value {
    let line = reply.strip_suffix('\n').unwrap_or_else(|| panic!("no final newline in {reply:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{reply:?} is not JSON: {e}"))
}

/// Polls `producer`'s stats until `ok` holds for consumer `index`, for at most 10 s.
async fn wait_for_state(producer: &Producer, index: usize, want: ConsumerState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = producer.stats();
        if stats[index].state == want {
            return;
        }
        assert!(Instant::now() < deadline, "consumer {index} never became {want:?}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_consumer_answers_rpc_health_itself_as_a_consumer_of_protocol_1_listing_its_services() {
    let (r, _) = registry();
    let c = consumer(r, ConsumerConfig::default()).await;
    let reply = raw_text(c.addr, "_rpc health\n").await;
    assert_eq!(health_json(&reply), json!({"role": "consumer", "protocol": 1, "services": ["calculator", "lab"]}));

    // What is served, its registry answers; the rest of the namespace the consumer answers.
    let described = raw_text(c.addr, "_rpc describe\n").await;
    let described: Value = serde_json::from_str(described.trim_end()).unwrap_or_else(|e| panic!("{described:?}: {e}"));
    assert_eq!(described, registry().0.describe(), "`_rpc describe` is the registry's description");
    let reply = raw_text(c.addr, "_rpc status\n").await;
    assert!(
        reply.starts_with("ERROR unknown_method: _rpc: unknown method 'status' (known: describe, health)\n"),
        "{reply:?}"
    );
    let reply = raw_text(c.addr, "_rpc_admin reset\n").await;
    assert!(reply.starts_with("ERROR unknown_service: unknown service '_rpc_admin' (known: _rpc)\n"), "{reply:?}");

    let health = within(10, system::probe(c.addr, Duration::from_secs(1), Duration::from_secs(2))).await.unwrap();
    assert_eq!((health.role, health.protocol, health.instance), (Role::Consumer, 1, None));
    c.stop().await;
}

#[tokio::test]
async fn the_producer_answers_rpc_health_itself_as_a_producer_and_never_forwards_it_but_forwards_describe() {
    let (r, _) = registry();
    let c = consumer(r, ConsumerConfig::default()).await;
    let p = Producer::new(vec![c.addr], ProducerConfig::default());
    let gateway = producer(p.clone()).await;
    wait_for_state(&p, 0, ConsumerState::Up).await;

    let health = health_json(&raw_text(gateway.addr, "_rpc health\n").await);
    assert_eq!(health["role"], "producer", "{health}");
    assert_eq!(
        (health["protocol"].as_u64(), health["consumers"].as_u64(), health["up"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    assert!(health["instance"].as_str().is_some_and(|i| !i.is_empty()), "{health}");
    let reply = raw_text(gateway.addr, "_rpc status\n").await;
    assert!(reply.starts_with("ERROR unknown_method: _rpc: unknown method 'status'"), "{reply:?}");
    // In process too, as a Transport.
    let reply = p.call(Request::new("_rpc", "health", Args::Text(vec![]))).await.unwrap().into_text();
    assert_eq!(health_json(&format!("{reply}\n"))["role"], "producer");
    assert_eq!(p.stats()[0].served, 0, "a `_rpc` request reached the consumer: {:?}", p.stats());
    // What it serves is what its consumers serve: `_rpc describe` is forwarded, like a task.
    let direct = raw_text(c.addr, "_rpc describe\n").await;
    assert_eq!(raw_text(gateway.addr, "_rpc describe\n").await, direct);
    assert_eq!(p.stats()[0].served, 1, "{:?}", p.stats());

    // With no consumer at all, it still answers for itself.
    let alone = producer(Producer::new(vec![], ProducerConfig::default())).await;
    let health = health_json(&raw_text(alone.addr, "_rpc health\n").await);
    assert_eq!((health["role"].as_str(), health["consumers"].as_u64()), (Some("producer"), Some(0)));
    alone.stop().await;
    gateway.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn an_http_server_given_as_a_consumer_is_never_relayed_a_task_and_its_answer_never_reaches_a_client() {
    let http = Peer::start(Behaviour::Http).await;
    let gateway_alone = Producer::new(vec![http.addr], ProducerConfig::default());
    let alone = producer(gateway_alone.clone()).await;
    let reply = within(10, raw_text(alone.addr, "calculator calculate 2 + 2\n")).await;
    assert!(
        reply.starts_with("ERROR unavailable: no server is serving 'calculator.calculate': every consumer failed: "),
        "{reply:?}"
    );
    assert!(
        reply.contains("does not speak this protocol: it answered the health probe with \\\"HTTP/1.1 400 Bad Request"),
        "{reply:?}"
    );
    assert!(!reply.contains("<html>"), "the HTML page was relayed: {reply:?}");
    let typed = CalculatorClient::new(gateway_alone.clone()).calculate(2.0, "+".into(), 2.0).await.unwrap_err();
    assert!(matches!(typed, RpcError::Unavailable { .. }), "{typed:?}");

    // Beside a real consumer, every task goes to the consumer.
    let (r, _) = registry();
    let c = consumer(r, ConsumerConfig::default()).await;
    let p = Producer::new(vec![http.addr, c.addr], ProducerConfig::default());
    let gateway = producer(p.clone()).await;
    for i in 0..10 {
        assert_eq!(within(10, raw_text(gateway.addr, &format!("lab add {i} 1\n"))).await, format!("{}\n", i + 1));
    }
    let stats = p.stats();
    assert_eq!((stats[0].served, stats[0].state, stats[1].served), (0, ConsumerState::Down, 10), "{stats:?}");
    assert!(stats[0].reason.as_ref().is_some_and(|r| r.contains("does not speak this protocol")), "{stats:?}");
    // The HTTP server only ever saw health probes.
    let lines = http.lines();
    assert!(!lines.is_empty() && lines.iter().all(|l| l == "_rpc health"), "{lines:?}");
    gateway.stop().await;
    alone.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_producer_given_itself_as_a_consumer_recognises_itself_and_never_forwards_to_itself() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = listener.local_addr().unwrap();
    let (r, _) = registry();
    let c = consumer(r, ConsumerConfig::default()).await;
    let p = Producer::new(vec![own, c.addr], ProducerConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = p.clone();
    let server = tokio::spawn(async move { serving.serve(listener, stopped).await });
    wait_for_state(&p, 0, ConsumerState::Itself).await;
    for i in 0..10 {
        assert_eq!(within(10, raw_text(own, &format!("lab add {i} {i}\n"))).await, format!("{}\n", 2 * i));
    }
    let stats = p.stats();
    assert_eq!((stats[0].served, stats[0].down, stats[1].served), (0, true, 10), "{stats:?}");
    assert!(stats[0].reason.as_ref().is_some_and(|r| r.contains("is this producer itself")), "{stats:?}");
    let _ = stop.send(());
    within(10, server).await.unwrap().unwrap();
    c.stop().await;
}

#[tokio::test]
async fn two_producers_pointing_at_each_other_fail_a_task_at_once_instead_of_recursing() {
    let (l1, l2) = (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let (p1, p2) =
        (Producer::new(vec![a2], ProducerConfig::default()), Producer::new(vec![a1], ProducerConfig::default()));
    let (s1, s2) = (p1.clone(), p2.clone());
    let h1 = tokio::spawn(async move { s1.serve(l1, std::future::pending::<()>()).await });
    let h2 = tokio::spawn(async move { s2.serve(l2, std::future::pending::<()>()).await });
    let started = Instant::now();
    let reply = within(10, raw_text(a1, "calculator calculate 2 + 2\n")).await;
    assert!(reply.starts_with("ERROR unavailable: "), "{reply:?}");
    assert!(reply.contains("answered as a producer, not a consumer"), "{reply:?}");
    assert!(reply.len() < 1024, "a {}-byte reply: nested errors? {reply:?}", reply.len());
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(p1.stats()[0].state, ConsumerState::Producer, "{:?}", p1.stats());
    h1.abort();
    h2.abort();
}

#[tokio::test]
async fn a_consumer_whose_task_reply_is_not_of_this_protocol_is_marked_down_and_the_task_fails_over() {
    let bad = Peer::start(Behaviour::MalformedTasks).await;
    let (r, _) = registry();
    let c = consumer(r, ConsumerConfig::default()).await;
    let p = Producer::new(vec![bad.addr, c.addr], ProducerConfig::default().with_backoff(Duration::from_secs(60)));
    let gateway = producer(p.clone()).await;
    wait_for_state(&p, 0, ConsumerState::Up).await;
    for i in 0..6 {
        assert_eq!(within(10, raw_text(gateway.addr, &format!("lab add {i} 0\n"))).await, format!("{i}\n"));
    }
    let stats = p.stats();
    assert_eq!((stats[0].served, stats[0].failures, stats[0].state), (0, 1, ConsumerState::Down), "{stats:?}");
    assert!(stats[0].reason.as_ref().is_some_and(|r| r.contains("not a reply of this protocol")), "{stats:?}");
    assert_eq!(stats[1].served, 6, "{stats:?}");
    assert_eq!(bad.task_times().len(), 1, "tasks sent to the bad consumer: {:?}", bad.lines());
    gateway.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_peer_that_accepts_and_never_answers_fails_its_probe_and_never_gets_a_task() {
    // Accepts connections and holds them without reading a byte.
    let black_hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = black_hole.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = black_hole.accept().await {
            held.push(stream);
        }
    });
    let (r, _) = registry();
    let c = consumer(r, ConsumerConfig::default()).await;
    let p = Producer::new(vec![hole, c.addr], ProducerConfig::default().with_probe_timeout(Duration::from_millis(300)));
    let gateway = producer(p.clone()).await;
    for _ in 0..4 {
        assert_eq!(within(10, raw_text(gateway.addr, "calculator calculate 3 * 3\n")).await, "9\n");
    }
    wait_for_state(&p, 0, ConsumerState::Down).await;
    let stats = p.stats();
    assert_eq!((stats[0].served, stats[0].outstanding, stats[1].served), (0, 0, 4), "{stats:?}");
    assert!(
        stats[0].reason.as_ref().is_some_and(|r| r.contains("no answer to the health probe within 300 ms")),
        "{stats:?}"
    );
    let probed = within(10, system::probe(hole, Duration::from_secs(1), Duration::from_millis(200))).await;
    assert!(matches!(probed, Err(ProbeError::Timeout(_))), "{probed:?}");
    gateway.stop().await;
    c.stop().await;
    holder.abort();
}

#[tokio::test]
async fn a_consumer_that_takes_tasks_and_never_answers_is_ejected_for_longer_after_each_timeout() {
    // It answers its health probes, so only its tasks show it is stuck.
    let stuck = Peer::start(Behaviour::SilentTasks).await;
    let (r, _) = registry();
    let c = consumer(r, ConsumerConfig::default()).await;
    let config = ProducerConfig::default()
        .with_attempt_timeout(Duration::from_millis(100))
        .with_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(60));
    let p = Producer::new(vec![stuck.addr, c.addr], config);
    let gateway = producer(p.clone()).await;
    wait_for_state(&p, 0, ConsumerState::Up).await;
    // Tasks back to back for 3.5 s: every one is answered (by the good consumer, after a
    // failover when the stuck one was tried).
    let until = Instant::now() + Duration::from_millis(3500);
    let mut answered = 0u64;
    while Instant::now() < until {
        assert_eq!(within(10, raw_text(gateway.addr, "calculator calculate 1 + 1\n")).await, "2\n");
        answered += 1;
    }
    let tried = stuck.attempt_times();
    let gaps: Vec<Duration> = tried.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("the stuck consumer was given {} of {answered} tasks; gaps between them: {gaps:?}", tried.len());
    // Down 100 ms, 200 ms, 400 ms, 800 ms, 1.6 s after each timeout (plus the 100 ms attempt):
    // 4 or 5 tasks in 3.5 s, each gap about twice the one before.
    assert!((3..=6).contains(&tried.len()), "the stuck consumer was tried {} times: gaps {gaps:?}", tried.len());
    for pair in gaps.windows(2) {
        assert!(pair[1] > pair[0] + pair[0] / 3, "the backoff did not grow: gaps {gaps:?}");
    }
    let stats = p.stats();
    assert_eq!(stats[0].failures, tried.len() as u64, "{stats:?}");
    assert_eq!(stats[1].served, answered, "{stats:?}");
    gateway.stop().await;
    c.stop().await;
}
