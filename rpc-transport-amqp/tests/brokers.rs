//! Several brokers in one URL (or one `connect_any` list): the first that answers is used,
//! a loss fails over to the next, every error names every broker with its password redacted.
//! The "brokers" here are the default broker reached directly and through a TCP relay the test
//! can kill (the node's death as a client sees it); `tests/cluster.rs` kills real nodes.

mod common;

use std::time::{Duration, Instant};

use rpc_transport_amqp::{kwargs, wire, Error, Rpc};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A port where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// `url` with its host and port replaced by `127.0.0.1:port`.
fn via(url: &str, port: u16) -> String {
    let scheme_end = url.find("://").expect("an amqp:// URL") + 3;
    let rest = &url[scheme_end..];
    let host_start = rest.rfind('@').map_or(0, |at| at + 1);
    let host_end = rest[host_start..].find('/').map_or(rest.len(), |slash| host_start + slash);
    format!("{}{}127.0.0.1:{port}{}", &url[..scheme_end], &rest[..host_start], &rest[host_end..])
}

/// A TCP relay to the default broker; dropping (or `kill`ing) it closes every connection
/// through it at once and stops listening, as a node's death looks to its clients.
struct Relay {
    port: u16,
    tasks: JoinSet<()>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let target = {
            let url = common::url();
            let parsed: lapin::uri::AMQPUri = url.parse().expect("RABBITMQ_URL parses");
            format!("{}:{}", parsed.authority.host, parsed.authority.port)
        };
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut links = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                links.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { port, tasks }
    }

    fn kill(&mut self) {
        self.tasks.abort_all();
    }
}

async fn echo_server(url: &str, method: &str) -> Rpc {
    let rpc =
        Rpc::builder().with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(500)).connect(url).await;
    let rpc = rpc.expect("server connects");
    rpc.register_async(method, |a: serde_json::Value| async move { Ok::<_, std::convert::Infallible>(a) })
        .await
        .expect("register");
    rpc
}

#[tokio::test]
async fn the_first_broker_that_answers_is_used() {
    let url = common::url();
    let dead = via(&url, closed_port());
    let list = format!("{dead}, {url}");
    let rpc = Rpc::connect(&list).await.expect("connects to the second broker");
    assert_eq!(rpc.broker(), Some(wire::redact_url(&url)));
    let method = common::unique("brokers-first");
    rpc.register_async(&method, |a: serde_json::Value| async move { Ok::<_, std::convert::Infallible>(a) })
        .await
        .expect("register");
    let echoed: serde_json::Value = rpc.call(&method, kwargs! { "x" => 1 }).await.expect("call");
    assert_eq!(echoed["x"], 1);
    rpc.close().await.expect("close");
    delete_queue(&method).await;

    // The same through the list form of the builder.
    let rpc = Rpc::builder().connect_any([dead.as_str(), url.as_str()]).await.expect("connect_any");
    assert_eq!(rpc.broker(), Some(wire::redact_url(&url)));
    rpc.close().await.expect("close");
}

#[tokio::test]
async fn when_no_broker_answers_the_error_names_each_with_its_password_redacted() {
    let ports = [closed_port(), closed_port(), closed_port()];
    let urls: Vec<String> =
        ports.iter().enumerate().map(|(i, port)| format!("amqp://guest:Secret{i}xyz@127.0.0.1:{port}/%2f")).collect();
    let started = Instant::now();
    let err = Rpc::connect(&urls.join(",")).await.expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(10), "refused connections fail fast");
    let Error::NoBroker(errors) = &err else { panic!("expected NoBroker, got {err:?}") };
    assert_eq!(errors.len(), 3);
    let mut text = format!("{err}\n{err:?}\n");
    text.push_str(&rpc_core::RpcError::from(err).to_wire().to_string());
    for (i, port) in ports.iter().enumerate() {
        assert!(text.contains(&format!("amqp://guest:***@127.0.0.1:{port}/%2f")), "{port} named in:\n{text}");
        assert!(!text.contains(&format!("Secret{i}")), "a password shows in:\n{text}");
    }
    assert!(text.starts_with("cannot connect to any of 3 brokers: "), "{text}");
}

#[tokio::test]
async fn a_list_with_a_bad_url_is_refused_before_any_connection() {
    let url = common::url();
    for list in [format!("{url},amqp://guest:Secret9@127.0.0.1:notaport/%2f"), String::new()] {
        let err = Rpc::connect(&list).await.expect_err("refused");
        assert!(matches!(err, Error::InvalidUrl { .. }), "{list:?}: {err:?}");
        assert!(!err.to_string().contains("Secret9"), "{err}");
    }
    let none: [&str; 0] = [];
    assert!(matches!(Rpc::builder().connect_any(none).await, Err(Error::InvalidUrl { .. })));
}

/// A client and a server connected through a relay each lose it: both fail over to the next
/// broker of their list by themselves, and calls work again within a second or two.
#[tokio::test]
async fn on_a_loss_server_and_client_fail_over_to_the_next_broker() {
    let url = common::url();
    let mut relay = Relay::start().await;
    let relayed = via(&url, relay.port);
    let list = format!("{relayed},{url}");
    let method = common::unique("brokers-failover");
    let server = echo_server(&list, &method).await;
    let client = Rpc::builder()
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .with_deadline(Duration::from_secs(5))
        .connect(&list)
        .await
        .expect("client connects");
    assert_eq!(client.broker(), Some(wire::redact_url(&relayed)), "the first broker of the list");
    assert_eq!(server.broker(), Some(wire::redact_url(&relayed)));
    let _: serde_json::Value = client.call(&method, kwargs! { "n" => 0 }).await.expect("call through the relay");

    relay.kill();
    let killed = Instant::now();
    assert!(client.wait_connected(Duration::from_secs(10)).await, "the client reconnects");
    assert!(server.wait_connected(Duration::from_secs(10)).await, "the server reconnects");
    let mut answered = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if client.call::<serde_json::Value>(&method, kwargs! { "n" => 1 }).await.is_ok() {
            answered = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = answered.expect("calls work again after the failover");
    println!("first call answered {} ms after the broker's loss", answered.as_millis());
    assert_eq!(client.broker(), Some(wire::redact_url(&url)), "the next broker of the list");
    assert_eq!(server.broker(), Some(wire::redact_url(&url)));
    client.close().await.expect("close");
    server.close().await.expect("close");
    delete_queue(&method).await;
}

/// Method queues are the servers' (not auto-deleted): each test removes its own.
async fn delete_queue(name: &str) {
    let (conn, channel) = common::channel().await;
    let _ = channel.queue_delete(name.into(), Default::default()).await;
    let _ = conn.close(200, "OK".into()).await;
}
