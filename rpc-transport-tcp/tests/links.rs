//! The Producer's persistent links to its Consumers: negotiated, many tasks at once on one
//! connection, the call's context carried to the handler, failover when a link dies, graceful
//! shutdown with tasks in flight, the frame limits, and consumers that take no links.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{consumer, raw_text, registry, within, LabClient};
use rpc_core::layer::auth::AuthLayer;
use rpc_core::{Context, Registry, RpcError};
use rpc_macros::rpc_service;
use rpc_transport_tcp::{Consumer, ConsumerConfig, Limits, Producer, ProducerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy in front of a server: counts the connections made through it and can cut them
/// all, as a network failure or a killed process does.
struct Proxy {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (count, held) = (Arc::clone(&accepted), Arc::clone(&links));
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy { addr, accepted, links, task }
    }

    /// Drops every connection through it: both ends see them break.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// What a handler saw of its call.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Seen {
    token: Option<String>,
    trace: Option<String>,
    remaining_ms: Option<u64>,
}

/// Reports the context its calls carry.
pub struct Whoami;

#[rpc_service(name = "whoami")]
impl Whoami {
    /// The token, trace id and what was left of the deadline of this call.
    pub async fn seen(ctx: &Context) -> Seen {
        Seen {
            token: ctx.metadata().get("authorization").map(str::to_owned),
            trace: ctx.trace_id().map(str::to_owned),
            remaining_ms: ctx.remaining().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// A producer with short timeouts for tests, links on (the default).
fn producer_of(consumers: Vec<SocketAddr>) -> Producer {
    Producer::new(
        consumers,
        ProducerConfig::default().with_attempt_timeout(Duration::from_secs(5)).with_backoff(Duration::from_secs(60)),
    )
}

#[tokio::test]
async fn the_calls_context_reaches_the_handler_over_a_link_and_auth_layers_see_it() {
    let registry = Arc::new(Registry::new().with(Whoami).expect("distinct, unreserved service names"));
    let guarded =
        Consumer::new(registry, ConsumerConfig::default()).layer(AuthLayer::new("authorization", |t| t == "Bearer ok"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { guarded.serve(listener, std::future::pending::<()>()).await });

    let client = WhoamiClient::new(producer_of(vec![addr]));
    let refused = within(10, client.seen()).await.unwrap_err();
    assert!(matches!(refused, RpcError::Unauthenticated { .. }), "{refused:?}");
    let client = client
        .with_metadata("Authorization", "Bearer ok")
        .unwrap()
        .with_deadline(Duration::from_secs(7))
        .with_context(Context::new().with_trace_id("trace-7"));
    let seen = within(10, client.seen()).await.unwrap();
    assert_eq!(seen.token.as_deref(), Some("Bearer ok"));
    assert_eq!(seen.trace.as_deref(), Some("trace-7"));
    let remaining = seen.remaining_ms.unwrap();
    assert!((5_000..=7_001).contains(&remaining), "the handler had {remaining} ms of a 7 s deadline");
    // The one-line protocol carries no metadata: the same call straight to the consumer is
    // refused.
    assert!(raw_text(addr, "whoami seen\n").await.starts_with("ERROR unauthenticated: "));
    server.abort();
}

#[tokio::test]
async fn many_tasks_share_one_link() {
    let (r, _) = registry();
    let c = consumer(r, ConsumerConfig::default()).await;
    let proxy = Proxy::start(c.addr).await;
    let p = producer_of(vec![proxy.addr]);
    let started = Instant::now();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let lab = LabClient::new(p.clone());
            tokio::spawn(async move { lab.slow(300 + i).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(within(10, call).await.unwrap().unwrap(), 300 + i as u64);
    }
    // One health probe, one link: not one connection per task.
    let connections = proxy.accepted.load(Ordering::SeqCst);
    assert!(connections <= 3, "{connections} connections for 40 tasks");
    assert!(started.elapsed() < Duration::from_secs(5), "40 tasks of 300 ms took {:?}", started.elapsed());
    c.stop().await;
}

#[tokio::test]
async fn a_link_that_dies_mid_task_fails_its_tasks_over_to_another_consumer() {
    let (r1, mut started1) = registry();
    let (r2, _) = registry();
    let (c1, c2) = (consumer(r1, ConsumerConfig::default()).await, consumer(r2, ConsumerConfig::default()).await);
    let proxy = Proxy::start(c1.addr).await;
    let p = producer_of(vec![proxy.addr, c2.addr]);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let lab = LabClient::new(p.clone());
            tokio::spawn(async move { lab.slow(1000).await })
        })
        .collect();
    within(10, started1.recv()).await.unwrap();
    proxy.cut();
    for call in calls {
        assert_eq!(within(10, call).await.unwrap().unwrap(), 1000);
    }
    let stats = p.stats();
    assert!(stats[0].failures >= 1, "{stats:?}");
    assert_eq!(stats[1].served, 10, "every task ended on the other consumer: {stats:?}");
    c1.stop().await;
    c2.stop().await;
}

#[tokio::test]
async fn a_consumer_shutting_down_answers_the_tasks_on_its_link_and_new_ones_go_elsewhere() {
    let (r1, mut started1) = registry();
    let (r2, _) = registry();
    let (c1, c2) = (consumer(r1, ConsumerConfig::default()).await, consumer(r2, ConsumerConfig::default()).await);
    let p = producer_of(vec![c1.addr]);
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let lab = LabClient::new(p.clone());
            tokio::spawn(async move { lab.slow(800).await })
        })
        .collect();
    for _ in 0..5 {
        within(10, started1.recv()).await.unwrap();
    }
    let c1_addr = c1.addr;
    let stopping = tokio::spawn(c1.stop());
    for call in calls {
        assert_eq!(within(10, call).await.unwrap().unwrap(), 800, "a task in flight was answered");
    }
    within(10, stopping).await.unwrap();
    // The stopped consumer refuses connections: the task goes to the other.
    let p = producer_of(vec![c1_addr, c2.addr]);
    assert_eq!(within(10, LabClient::new(p).add(2, 3)).await.unwrap(), 5);
    c2.stop().await;
}

/// Opens a link by hand: sends the link request and reads the consumer's answer line.
async fn open_link(addr: SocketAddr) -> (BufReader<TcpStream>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"_rpc link 1\n").await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut hello = String::new();
    within(5, stream.read_line(&mut hello)).await.unwrap();
    (stream, hello)
}

#[tokio::test]
async fn a_huge_or_unfinished_frame_ends_the_link_and_the_consumer_keeps_serving() {
    let (r, _) = registry();
    let limits = Limits::default().with_read_timeout(Duration::from_millis(300));
    let c = consumer(r, ConsumerConfig::default().with_limits(limits)).await;
    let (mut link, hello) = open_link(c.addr).await;
    assert!(hello.starts_with("{\"link\":1,\"max_frame\":"), "{hello:?}");
    // A frame announcing 4 GiB: closed from its header alone, nothing buffered.
    link.get_mut().write_all(&[0xff, 0xff, 0xff, 0xf0, 1]).await.unwrap();
    let mut rest = Vec::new();
    within(5, link.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // A frame begun and never finished: closed after the read timeout.
    let (mut link, _) = open_link(c.addr).await;
    link.get_mut().write_all(&[0, 0, 0, 40, 1, 0]).await.unwrap();
    let begun = Instant::now();
    within(5, link.read_to_end(&mut rest)).await.unwrap();
    assert!(begun.elapsed() >= Duration::from_millis(250), "closed after {:?}", begun.elapsed());
    // Another version is refused in the one-line protocol's error form.
    let refused = raw_text(c.addr, "_rpc link 2\n").await;
    assert!(refused.starts_with("ERROR bad_request: "), "{refused}");
    assert!(refused.contains("_rpc.link: this server speaks link version 1 only"), "{refused}");
    assert_eq!(raw_text(c.addr, "calculator calculate 2 + 2\n").await, "4\n");
    c.stop().await;
}

#[tokio::test]
async fn a_reply_over_the_producers_limit_fails_the_task_over() {
    let (r, _) = registry();
    let c = consumer(r, ConsumerConfig::default()).await;
    let p = Producer::new(vec![c.addr], ProducerConfig::default().with_max_reply(100));
    let long = "x".repeat(200);
    let err = within(10, LabClient::new(p.clone()).echo(long)).await.unwrap_err();
    assert!(err.to_string().contains("reply larger than 100 bytes"), "{err}");
    c.stop().await;
}

/// A consumer of the one-request-per-connection protocol only: it answers `_rpc link 1` as
/// any unknown method, and closes every connection after one reply.
async fn legacy_consumer() -> (SocketAddr, Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
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
                seen.lock().unwrap().push(line.clone());
                let reply: &[u8] = match line.as_str() {
                    "_rpc health" => b"{\"role\":\"consumer\",\"protocol\":1,\"services\":[\"lab\"]}\n",
                    "_rpc link 1" => b"ERROR unknown_method: _rpc: unknown method 'link' (known: describe, health)\n{\"kind\":\"unknown_method\",\"service\":\"_rpc\",\"method\":\"link\",\"known\":[\"describe\",\"health\"]}\n",
                    _ => b"5\n",
                };
                let _ = stream.get_mut().write_all(reply).await;
                let _ = stream.get_mut().shutdown().await;
            });
        }
    });
    (addr, lines, task)
}

#[tokio::test]
async fn a_consumer_that_takes_no_links_gets_one_connection_per_task() {
    let (addr, lines, task) = legacy_consumer().await;
    let p = producer_of(vec![addr]);
    for _ in 0..3 {
        assert_eq!(within(10, LabClient::new(p.clone()).add(2, 3)).await.unwrap(), 5);
    }
    let lines = lines.lock().unwrap().clone();
    let asked = lines.iter().filter(|l| *l == "_rpc link 1").count();
    assert_eq!(asked, 1, "the producer asks once: {lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("lab add")).count(), 3, "{lines:?}");
    task.abort();
}

/// A task whose frame is larger than a consumer takes on a link (its `max_frame`, from its
/// `max_line`) is not sent on the link, which would end it and fail every task on it: it goes
/// on a connection of its own, where the consumer refuses it as it refuses any long line, and
/// the tasks on the link are answered.
#[tokio::test]
async fn a_request_over_the_consumers_frame_limit_is_refused_alone_and_the_link_keeps_its_tasks() {
    let (r, mut started) = registry();
    let config = ConsumerConfig::default().with_limits(Limits::default().with_max_line(100));
    let c = consumer(r, config).await;
    let p = producer_of(vec![c.addr]);
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let lab = LabClient::new(p.clone());
            tokio::spawn(async move { lab.slow(1500).await })
        })
        .collect();
    within(10, started.recv()).await.unwrap();
    let long = "x".repeat(30_000);
    let err = within(10, LabClient::new(p.clone()).echo(long)).await.unwrap_err();
    assert!(matches!(err, RpcError::BadRequest { .. }), "{err}");
    assert!(err.to_string().contains("longer than 100 bytes"), "{err}");
    for call in slow {
        assert_eq!(within(10, call).await.unwrap().unwrap(), 1500);
    }
    let stats = p.stats();
    assert_eq!(stats[0].failures, 0, "the consumer was not blamed: {stats:?}");
    c.stop().await;
}

/// Links, idle or busy, hold no connection slot: with every slot's worth of idle links open,
/// one-line clients and health probes are still served; links past `max_links` are refused
/// `overloaded`, and a Producer refused a link sends its tasks on connections of their own.
#[tokio::test]
async fn idle_links_keep_no_client_out_and_links_past_the_limit_are_refused() {
    let (r, _) = registry();
    let limits = Limits::default().with_max_connections(2).with_max_links(2);
    let c = consumer(r, ConsumerConfig::default().with_limits(limits)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (stream, hello) = open_link(c.addr).await;
        assert!(hello.contains("\"link\":1"), "{hello}");
        held.push(stream);
    }
    let (_refused, answer) = open_link(c.addr).await;
    assert!(answer.starts_with("ERROR overloaded: ") && answer.contains("too many links (limit 2)"), "{answer}");
    // The two idle links hold no connection slot: a client is served at once.
    let started = Instant::now();
    assert_eq!(raw_text(c.addr, "calculator calculate 2 + 2\n").await, "4\n");
    assert!(raw_text(c.addr, "_rpc health\n").await.starts_with("{\"role\":\"consumer\""));
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?} for a slot", started.elapsed());
    // A Producer finds no link slot: its tasks go on connections of their own.
    let p = producer_of(vec![c.addr]);
    for i in 0..3 {
        assert_eq!(within(10, LabClient::new(p.clone()).slow(10 + i)).await.unwrap(), 10 + i);
    }
    // Asked again a backoff later: an unbounded backoff is a setting like any other.
    let unbounded = Producer::new(vec![c.addr], ProducerConfig::default().with_backoff(Duration::MAX));
    assert_eq!(within(10, LabClient::new(unbounded).slow(5)).await.unwrap(), 5);
    drop(held);
    c.stop().await;
}
