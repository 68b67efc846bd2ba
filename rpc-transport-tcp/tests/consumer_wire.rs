//! The Consumer over real sockets, byte for byte: what a `nc` user or the design document's Python
//! client sees.

mod common;

use std::time::Duration;

use common::{consumer, raw, raw_text, raw_then_eof, registry, within};
use rpc_core::{Args, Request, RpcError, Transport};
use rpc_transport_tcp::{ConsumerConfig, Limits, TcpTransport};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn text_request(line: &str) -> Request {
    let mut tokens = line.split(' ').map(str::to_owned);
    let service = tokens.next().unwrap();
    let method = tokens.next().unwrap();
    Request::new(service, method, Args::Text(tokens.collect()))
}

/// The JSON line of an error reply.
fn error_json(reply: &str) -> Value {
    let mut lines = reply.lines();
    assert!(lines.next().unwrap().starts_with("ERROR "), "{reply:?}");
    serde_json::from_str(lines.next().expect("a JSON line")).unwrap()
}

#[tokio::test]
async fn the_seeds_exact_bytes_get_4_and_the_server_closes() {
    let (registry, _) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"calculator calculate 2 + 2\n").await.unwrap();
    let mut reply = Vec::new();
    // read_to_end only returns once the server has closed the connection.
    within(5, stream.read_to_end(&mut reply)).await.unwrap();
    assert_eq!(reply, b"4\n");
    server.stop().await;
}

#[tokio::test]
async fn the_request_also_ends_at_the_clients_end_of_stream_and_crlf_is_accepted() {
    let (registry, _) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"calculator calculate 6 * 7").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    within(5, stream.read_to_end(&mut reply)).await.unwrap();
    assert_eq!(reply, b"42\n");
    assert_eq!(raw_text(server.addr, "calculator calculate 1 - 3\r\n").await, "-2\n");
    server.stop().await;
}

#[tokio::test]
async fn runs_of_spaces_separate_tokens() {
    let (registry, _) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    assert_eq!(raw_text(server.addr, "   calculator  calculate   2   +  2   \n").await, "4\n");
    server.stop().await;
}

#[tokio::test]
async fn each_service_model_error_gets_its_error_reply_and_the_client_rebuilds_the_variant() {
    let (registry, _) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    let client = TcpTransport::new(server.addr);
    let cases: [(&str, &str); 6] = [
        ("nosuch calculate 1 + 2", "unknown_service"),
        ("calculator nosuch 1 2", "unknown_method"),
        ("calculator calculate 1 +", "argument_count"),
        ("calculator calculate two + 2", "invalid_argument"),
        ("calculator calculate 1 / 0", "handler"),
        ("lab boom", "panic"),
    ];
    for (line, kind) in cases {
        let reply = raw_text(server.addr, &format!("{line}\n")).await;
        assert!(reply.starts_with(&format!("ERROR {kind}: ")), "{line}: {reply:?}");
        assert_eq!(reply.lines().count(), 2, "{reply:?}");
        assert!(reply.ends_with('\n'));
        assert_eq!(error_json(&reply)["kind"], kind, "{reply:?}");

        let error = client.call(text_request(line)).await.unwrap_err();
        assert_eq!(error.kind(), kind, "{line}: {error}");
        match (kind, &error) {
            ("unknown_service", RpcError::UnknownService { service, known }) => {
                assert_eq!(service, "nosuch");
                assert!(known.contains(&"calculator".to_owned()));
            }
            ("unknown_method", RpcError::UnknownMethod { method, known, .. }) => {
                assert_eq!(method, "nosuch");
                assert_eq!(known, &["calculate"]);
            }
            ("argument_count", RpcError::ArgumentCount { expected, got, .. }) => assert_eq!((*expected, *got), (3, 2)),
            ("invalid_argument", RpcError::InvalidArgument { param, value, .. }) => {
                assert_eq!((param.as_str(), value.as_str()), ("a", "two"));
            }
            ("handler", RpcError::Handler { target, code, .. }) => {
                assert_eq!(target, "calculator.calculate");
                assert_eq!(code.as_deref(), Some("division_by_zero"));
            }
            ("panic", RpcError::Panic { message, .. }) => assert!(message.contains("boom on purpose"), "{message}"),
            _ => panic!("{line}: wrong variant {error:?}"),
        }
    }
    // And the server is still serving.
    assert_eq!(raw_text(server.addr, "calculator calculate 2 + 2\n").await, "4\n");
    server.stop().await;
}

#[tokio::test]
async fn a_result_that_looks_like_an_error_is_escaped_and_round_trips() {
    let (registry, _) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    assert_eq!(raw_text(server.addr, "lab echo ERROR\n").await, "\\ERROR\n");
    assert_eq!(raw_text(server.addr, "lab echo \\n\n").await, "\\\\n\n");
    let client = TcpTransport::new(server.addr);
    for text in ["ERROR", "ERROR:handler", "\\n", "\\\\", "fine"] {
        let reply = client.call(text_request(&format!("lab echo {text}"))).await.unwrap();
        assert_eq!(reply.into_text(), text);
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_bad_request_and_the_server_keeps_serving() {
    let (registry, _) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    let cases: [(&[u8], &str); 6] = [
        (b"\n", "empty request"),
        (b"      \n", "empty request"),
        (b"calculator\n", "names no method"),
        (b"calculator calculate \xff\xfe 2\n", "not valid UTF-8"),
        (b"calculator calculate 1\0 + 2\n", "control character 0x00"),
        (b"calculator calculate 1\t+ 2\n", "control character 0x09"),
    ];
    for (bytes, says) in cases {
        let reply = String::from_utf8(raw(server.addr, bytes).await).unwrap();
        assert!(reply.starts_with("ERROR bad_request: "), "{bytes:?}: {reply:?}");
        assert!(reply.contains(says), "{bytes:?}: {reply:?}");
        assert_eq!(error_json(&reply)["kind"], "bad_request");
    }
    let nothing = String::from_utf8(raw_then_eof(server.addr, b"").await).unwrap();
    assert!(nothing.starts_with("ERROR bad_request: bad request: empty request"), "{nothing:?}");
    let http = raw_text(server.addr, "GET / HTTP/1.1\r\nHost: example\r\n\r\n").await;
    assert!(http.starts_with("ERROR unknown_service: unknown service 'GET'"), "{http:?}");
    assert_eq!(raw_text(server.addr, "calculator calculate 2 + 2\n").await, "4\n");
    server.stop().await;
}

#[tokio::test]
async fn many_concurrent_clients_each_get_their_own_answer() {
    let (registry, _) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    let addr = server.addr;
    let calls =
        (0..200i64).map(|i| tokio::spawn(async move { (i, raw_text(addr, &format!("lab add {i} {i}\n")).await) }));
    let results = within(30, futures_join(calls)).await;
    assert_eq!(results.len(), 200);
    for (i, reply) in results {
        assert_eq!(reply, format!("{}\n", 2 * i));
    }
    server.stop().await;
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn an_over_long_line_gets_an_error_and_the_server_keeps_serving() {
    let (registry, _) = registry();
    let limits = Limits::default().with_max_line(1024);
    let server = consumer(registry, ConsumerConfig::default().with_limits(limits)).await;
    // 10 MB with no newline: the server stops reading at 1 KiB, answers, and drains the rest.
    let flood = vec![b'a'; 10 * 1024 * 1024];
    let reply = String::from_utf8(within(20, raw(server.addr, &flood)).await).unwrap();
    assert!(reply.starts_with("ERROR bad_request: bad request: request line longer than 1024 bytes"), "{reply:?}");
    // Exactly at the limit is accepted.
    let padded = format!("lab echo {}\n", "x".repeat(1024 - "lab echo ".len()));
    assert_eq!(raw_text(server.addr, &padded).await, &padded[9..]);
    server.stop().await;
}

#[tokio::test]
async fn reading_an_endless_line_buffers_at_most_the_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sender = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let chunk = vec![b'z'; 64 * 1024];
        // Keeps sending until the reader gives up and closes.
        while stream.write_all(&chunk).await.is_ok() {}
    });
    let (stream, _) = listener.accept().await.unwrap();
    let mut conn = rpc_transport_tcp::connection::Connection::new(stream);
    let error = within(10, conn.read_request(4096, Duration::from_secs(10))).await.unwrap_err();
    assert!(matches!(error, rpc_transport_tcp::Error::TooLong { limit: 4096 }), "{error}");
    assert!(conn.buffered() <= 4097, "buffered {} bytes", conn.buffered());
    drop(conn);
    within(10, sender).await.unwrap();
}

#[tokio::test]
async fn a_silent_client_is_timed_out_while_others_are_served() {
    let (registry, _) = registry();
    let limits = Limits::default().with_read_timeout(Duration::from_secs(4));
    let server = consumer(registry, ConsumerConfig::default().with_limits(limits)).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"calculator calcul").await.unwrap();
    for i in 0..20 {
        assert_eq!(raw_text(server.addr, &format!("lab add {i} 1\n")).await, format!("{}\n", i + 1));
    }
    // Still waiting on the two slow clients: nothing has been written to them yet.
    let mut probe = [0u8; 1];
    assert!(silent.try_read(&mut probe).is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));
    for stream in [&mut silent, &mut half] {
        let mut reply = String::new();
        within(10, stream.read_to_string(&mut reply)).await.unwrap();
        assert_eq!(reply.lines().next().unwrap(), "ERROR bad_request: bad request: no complete request within 4 s");
    }
    server.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_with_every_slot_busy_a_new_client_is_told_overloaded() {
    let (registry, mut started) = registry();
    let limits = Limits::default().with_max_connections(2);
    let server = consumer(registry, ConsumerConfig::default().with_limits(limits)).await;
    let addr = server.addr;
    let busy: Vec<_> = (0..2).map(|_| tokio::spawn(async move { raw_text(addr, "lab slow 5000\n").await })).collect();
    for _ in 0..2 {
        within(10, started.recv()).await;
    }
    // They wait briefly for a slot, then are told.
    let transport = TcpTransport::new(addr);
    let (reply, error) = within(10, async {
        tokio::join!(
            raw_text(addr, "calculator calculate 2 + 2\n"),
            transport.call(text_request("calculator calculate 2 + 2"))
        )
    })
    .await;
    assert!(reply.starts_with("ERROR overloaded: server overloaded: too many connections (limit 2)"), "{reply:?}");
    let error = error.unwrap_err();
    assert!(matches!(error, RpcError::Overloaded { .. }), "{error}");
    for task in busy {
        assert_eq!(within(10, task).await.unwrap(), "5000\n");
    }
    assert_eq!(raw_text(addr, "calculator calculate 2 + 2\n").await, "4\n");
    server.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_the_oldest_idle_connection_is_evicted_to_make_room() {
    let (registry, _) = registry();
    let limits = Limits::default().with_max_connections(2);
    let server = consumer(registry, ConsumerConfig::default().with_limits(limits)).await;
    // Two idle clients take both slots (the server accepts in arrival order).
    let mut oldest = TcpStream::connect(server.addr).await.unwrap();
    let _younger = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(within(10, raw_text(server.addr, "calculator calculate 2 + 2\n")).await, "4\n");
    let mut reply = String::new();
    within(10, oldest.read_to_string(&mut reply)).await.unwrap();
    assert!(reply.starts_with("ERROR overloaded: "), "{reply:?}");
    assert!(reply.contains("closed to make room"), "{reply:?}");
    server.stop().await;
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_keep_working_clients_out() {
    let (registry, _) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(within(10, TcpStream::connect(server.addr)).await.unwrap());
    }
    for i in 0..20 {
        assert_eq!(within(10, raw_text(server.addr, &format!("lab add {i} 1\n"))).await, format!("{}\n", i + 1));
    }
    drop(idle);
    server.stop().await;
}

#[tokio::test]
async fn a_handler_past_its_deadline_gets_deadline_exceeded() {
    let (registry, _) = registry();
    let config = ConsumerConfig::default().with_max_deadline(Duration::from_millis(200));
    let server = consumer(registry, config).await;
    let reply = raw_text(server.addr, "lab slow 5000\n").await;
    assert!(reply.starts_with("ERROR deadline_exceeded: lab.slow: deadline of 200 ms exceeded"), "{reply:?}");
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_500_ms_task_then_refuses_connections() {
    let (registry, mut started) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    let addr = server.addr;
    let in_flight = tokio::spawn(async move { raw_text(addr, "lab slow 500\n").await });
    assert_eq!(within(10, started.recv()).await, Some(500));
    // A client connected but silent when shutdown starts is told, not left hanging.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let sync_in_flight = tokio::spawn(async move { raw_text(addr, "lab busy 500\n").await });
    assert_eq!(within(10, started.recv()).await, Some(500));

    within(10, server.stop()).await;
    assert_eq!(in_flight.await.unwrap(), "500\n");
    assert_eq!(sync_in_flight.await.unwrap(), "500\n");
    let mut reply = String::new();
    within(10, idle.read_to_string(&mut reply)).await.unwrap();
    assert!(reply.starts_with("ERROR unavailable: "), "{reply:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after serve returned");
}

#[tokio::test]
async fn a_client_that_resets_before_reading_its_reply_does_not_disturb_the_server() {
    let (registry, mut started) = registry();
    let server = consumer(registry, ConsumerConfig::default()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"lab slow 300\n").await.unwrap();
    within(10, started.recv()).await;
    // SO_LINGER 0: closing sends a reset instead of a FIN.
    socket_linger_zero(&stream);
    drop(stream);
    for i in 0..5 {
        assert_eq!(raw_text(server.addr, &format!("lab add {i} 2\n")).await, format!("{}\n", i + 2));
    }
    within(10, server.stop()).await;
}

#[allow(deprecated)]
fn socket_linger_zero(stream: &TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
}

#[tokio::test]
async fn an_interrupted_read_keeps_the_bytes_it_already_received() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let mut conn = rpc_transport_tcp::connection::Connection::new(stream);
    client.write_all(b"calculator calc").await.unwrap();
    // Give up on the read as soon as the first half has been taken in.
    while conn.buffered() < 15 {
        let _ = tokio::time::timeout(Duration::from_millis(20), conn.read_request(1024, Duration::from_secs(10))).await;
    }
    client.write_all(b"ulate 2 + 2\n").await.unwrap();
    let line = within(10, conn.read_request(1024, Duration::from_secs(10))).await.unwrap();
    assert_eq!((line.service.as_str(), line.method.as_str()), ("calculator", "calculate"));
    assert_eq!(line.args, ["2", "+", "2"]);
}
