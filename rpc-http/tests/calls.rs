//! `POST /rpc/{service}/{method}` over a real socket: results, every error's status and
//! envelope, the context from headers, and hostile clients.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get, post, raw, Front};
use rpc_core::layer::auth::AuthLayer;
use rpc_core::{Registry, Reply, Request, RpcError, Transport};
use rpc_http::status::status_of;
use rpc_http::{Gateway, Limits};
use rpc_transport_tcp::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn front() -> Front {
    Front::memory(Limits::default()).await
}

#[tokio::test]
async fn named_arguments_call_the_method_and_answer_200_with_the_json_result() {
    let front = front().await;
    let r = post(front.addr, "/rpc/calc/calculate", r#"{"a": 2, "op": "+", "b": 2}"#, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!(4.0));
}

#[tokio::test]
async fn a_json_array_passes_positional_arguments_and_a_variadic_rest() {
    let front = front().await;
    let r = post(front.addr, "/rpc/calc/calculate", r#"[3, "*", 4]"#, &[]).await;
    assert_eq!((r.status, r.json()), (200, json!(12.0)));
    let r = post(front.addr, "/rpc/calc/sum", r#"{"xs": [1, 2, 3.5]}"#, &[]).await;
    assert_eq!((r.status, r.json()), (200, json!(6.5)));
}

#[tokio::test]
async fn an_optional_argument_may_be_left_out() {
    let front = front().await;
    let r = post(front.addr, "/rpc/calc/greet", r#"{"name": "ada"}"#, &[]).await;
    assert_eq!((r.status, r.json()), (200, json!("hi ada")));
    let r = post(front.addr, "/rpc/calc/greet", r#"{"name": "ada", "polite": true}"#, &[]).await;
    assert_eq!((r.status, r.json()), (200, json!("good day, ada")));
}

/// Asserts status and envelope code, and that the envelope's data rebuilds the same kind.
fn assert_error(r: &common::Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(RpcError::from_wire(&body["error"]["data"], "t").kind(), code, "{body}");
}

#[tokio::test]
async fn an_unknown_service_is_404() {
    let front = front().await;
    let r = post(front.addr, "/rpc/nope/calculate", "{}", &[]).await;
    assert_error(&r, 404, "unknown_service");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("calc"), "names the known services");
}

#[tokio::test]
async fn an_unknown_method_is_404() {
    let front = front().await;
    let r = post(front.addr, "/rpc/calc/nope", "{}", &[]).await;
    assert_error(&r, 404, "unknown_method");
}

#[tokio::test]
async fn bad_arguments_are_400_each_with_its_kind() {
    let front = front().await;
    let call = |body: &'static str| post(front.addr, "/rpc/calc/calculate", body, &[]);
    assert_error(&call(r#"{"a": "two", "op": "+", "b": 2}"#).await, 400, "invalid_argument");
    assert_error(&call(r#"{"a": 2, "op": "+"}"#).await, 400, "missing_argument");
    assert_error(&call(r#"{"a": 2, "op": "+", "b": 2, "c": 1}"#).await, 400, "unexpected_argument");
    assert_error(&call(r#"[2, "+"]"#).await, 400, "argument_count");
    assert_error(&call(r#""2 + 2""#).await, 400, "bad_request");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let front = front().await;
    let r = post(front.addr, "/rpc/calc/calculate", r#"{"a": 2, "op": "+", "b": "#, &[]).await;
    assert_error(&r, 400, "bad_request");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("not valid JSON"));
}

#[tokio::test]
async fn a_handler_error_is_422_with_the_handlers_code() {
    let front = front().await;
    let r = post(front.addr, "/rpc/calc/calculate", r#"{"a": 2, "op": "^", "b": 2}"#, &[]).await;
    assert_error(&r, 422, "handler");
    assert_eq!(r.json()["error"]["data"]["code"], "unknown_operator");
}

#[tokio::test]
async fn a_panic_is_500_and_the_front_keeps_serving() {
    let front = front().await;
    let r = post(front.addr, "/rpc/calc/explode", "", &[]).await;
    assert_error(&r, 500, "panic");
    let r = post(front.addr, "/rpc/calc/calculate", "[1, \"+\", 1]", &[]).await;
    assert_eq!((r.status, r.json()), (200, json!(2.0)));
}

#[tokio::test]
async fn a_passed_deadline_is_504() {
    let front = front().await;
    let started = Instant::now();
    let r = post(front.addr, "/rpc/calc/nap", r#"{"ms": 5000}"#, &[("x-rpc-deadline-ms", "200")]).await;
    assert_error(&r, 504, "deadline_exceeded");
    assert!(started.elapsed() < Duration::from_secs(4), "answered at the deadline, not after the nap");
}

#[tokio::test]
async fn the_servers_cap_bounds_the_deadline_a_client_asks_for() {
    let front = Front::memory(Limits::default().with_max_deadline(Duration::from_millis(300))).await;
    let r = post(front.addr, "/rpc/calc/nap", r#"{"ms": 5000}"#, &[("x-rpc-deadline-ms", "100000")]).await;
    assert_error(&r, 504, "deadline_exceeded");
    let r = post(front.addr, "/rpc/calc/whoami", "", &[("x-rpc-deadline-ms", "100000")]).await;
    let remaining = r.json()["remaining_ms"].as_u64().unwrap();
    assert!(remaining <= 300, "capped: {remaining}");
}

#[tokio::test]
async fn a_malformed_deadline_header_is_400() {
    let front = front().await;
    for bad in ["soon", "0", "-5", "12345678901", "1.5"] {
        let r = post(front.addr, "/rpc/calc/whoami", "", &[("x-rpc-deadline-ms", bad)]).await;
        assert_error(&r, 400, "bad_request");
    }
}

#[tokio::test]
async fn the_handler_reads_metadata_deadline_and_trace_id_sent_as_headers() {
    let front = front().await;
    let headers =
        [("x-rpc-meta-authorization", "Bearer s3cret"), ("x-rpc-deadline-ms", "5000"), ("x-rpc-trace-id", "trace-42")];
    let r = post(front.addr, "/rpc/calc/whoami", "{}", &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["authorization"], "Bearer s3cret");
    assert_eq!(body["trace_id"], "trace-42");
    let remaining = body["remaining_ms"].as_u64().unwrap();
    assert!(remaining > 1000 && remaining <= 5000, "the caller's deadline: {remaining}");
}

#[tokio::test]
async fn too_much_metadata_is_400() {
    let front = front().await;
    let big = "x".repeat(5000);
    let r = post(front.addr, "/rpc/calc/whoami", "", &[("x-rpc-meta-blob", &big)]).await;
    assert_error(&r, 400, "bad_request");
}

#[tokio::test]
async fn a_call_without_the_credential_an_auth_layer_wants_is_401() {
    let transport = common::memory().layer(AuthLayer::new("authorization", |t: &str| t == "Bearer ok"));
    let front = Front::with(transport, |b| b).await;
    let r = post(front.addr, "/rpc/calc/calculate", "[1, \"+\", 1]", &[]).await;
    assert_error(&r, 401, "unauthenticated");
    let r =
        post(front.addr, "/rpc/calc/calculate", "[1, \"+\", 1]", &[("x-rpc-meta-authorization", "Bearer ok")]).await;
    assert_eq!((r.status, r.json()), (200, json!(2.0)));
}

#[tokio::test]
async fn no_server_available_is_503() {
    // A producer whose only consumer is a closed port.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let producer = Producer::new(vec![closed], ProducerConfig::default());
    let front = Front::with(producer.clone(), |b| b.with_backends(producer)).await;
    let r = post(front.addr, "/rpc/calc/calculate", "[1, \"+\", 1]", &[]).await;
    assert_error(&r, 503, "unavailable");
    let r = get(front.addr, "/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text());
}

#[tokio::test]
async fn every_error_kind_has_its_status() {
    let t = || "s.m".to_owned();
    let cases: Vec<(RpcError, u16)> = vec![
        (RpcError::UnknownService { service: t(), known: vec![] }, 404),
        (RpcError::UnknownMethod { service: t(), method: t(), known: vec![] }, 404),
        (RpcError::ArgumentCount { target: t(), expected: 1, variadic: false, got: 2, params: vec![] }, 400),
        (RpcError::MissingArgument { target: t(), param: t(), ty: t() }, 400),
        (RpcError::UnexpectedArgument { target: t(), name: t(), params: vec![] }, 400),
        (RpcError::InvalidArgument { target: t(), param: t(), ty: t(), value: t(), reason: t() }, 400),
        (RpcError::bad_request("x"), 400),
        (RpcError::NonFinite { target: t(), path: "argument 'x'".into(), value: "NaN".into() }, 400),
        (RpcError::NonFinite { target: t(), path: "result".into(), value: "NaN".into() }, 500),
        (RpcError::Unauthenticated { target: t(), reason: t() }, 401),
        (RpcError::Handler { target: t(), code: None, message: t(), data: None }, 422),
        (RpcError::Cancelled { target: t() }, 499),
        (RpcError::Panic { target: t(), message: t() }, 500),
        (RpcError::Internal { message: t() }, 500),
        (RpcError::protocol("x"), 502),
        (RpcError::Decode { target: t(), ty: t(), reason: t() }, 502),
        (RpcError::Unavailable { target: t(), reason: t() }, 503),
        (RpcError::Overloaded { reason: t() }, 503),
        (RpcError::Transport { message: t(), source: None }, 503),
        (RpcError::Closed, 503),
        (RpcError::deadline("s.m", Duration::from_secs(1)), 504),
    ];
    for (error, status) in cases {
        assert_eq!(status_of(&error).as_u16(), status, "{}", error.kind());
        let envelope = rpc_http::status::envelope(&error);
        assert_eq!(envelope["error"]["code"], error.kind());
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let front = front().await;
    let body = "a=2&op=%2B&b=2";
    let request = format!(
        "POST /rpc/calc/calculate HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = raw(front.addr, request.as_bytes()).await;
    assert_eq!((r.status, r.code()), (415, "unsupported_media_type".to_owned()));
    let request = format!(
        "POST /rpc/calc/calculate HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = raw(front.addr, request.as_bytes()).await;
    assert_eq!(r.status, 415, "a body without a content type: {}", r.text());
}

#[tokio::test]
async fn a_huge_body_is_413_whether_declared_or_streamed() {
    let front = Front::memory(Limits::default().with_max_body(64 * 1024)).await;
    let huge = format!("[\"{}\"]", "x".repeat(200 * 1024));
    let r = post(front.addr, "/rpc/calc/sum", &huge, &[]).await;
    assert_eq!((r.status, r.code()), (413, "payload_too_large".to_owned()));
    // Chunked: no length announced; the front stops reading at the limit.
    let mut request = b"POST /rpc/calc/sum HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in huge.as_bytes().chunks(8192) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    // The front may answer and close before it has read everything.
    let _ = stream.write_all(&request).await;
    let r = common::read_response(&mut stream).await;
    assert_eq!((r.status, r.code()), (413, "payload_too_large".to_owned()));
}

#[tokio::test]
async fn a_client_that_sends_its_body_too_slowly_gets_408() {
    let front = Front::memory(Limits::default().with_body_timeout(Duration::from_millis(300))).await;
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    stream
        .write_all(b"POST /rpc/calc/sum HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"xs\":")
        .await
        .unwrap();
    let started = Instant::now();
    let r = common::read_response(&mut stream).await;
    assert_eq!((r.status, r.code()), (408, "request_timeout".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let front = Front::memory(Limits::default().with_header_timeout(Duration::from_millis(300))).await;
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    stream.write_all(b"POST /rpc/calc/sum HTTP/1.1\r\nhost: t\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest))
            .await;
    assert!(read.is_ok(), "the front closes the connection");
    // Meanwhile others are served.
    let r = post(front.addr, "/rpc/calc/calculate", "[1, \"+\", 1]", &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn an_unknown_route_is_a_404_envelope() {
    let front = front().await;
    let r = get(front.addr, "/nope").await;
    assert_eq!((r.status, r.code()), (404, "not_found".to_owned()));
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_call_in_flight_and_refuses_new_connections() {
    let mut front = front().await;
    let addr = front.addr;
    let slow = tokio::spawn(async move { post(addr, "/rpc/calc/nap", r#"{"ms": 600}"#, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    front.stop();
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.json()), (200, json!(600)));
    tokio::time::timeout(Duration::from_secs(10), &mut front.task).await.unwrap().unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

/// Two consumers on real sockets behind a Producer; the front over the Producer.
async fn producer_front() -> (Front, Producer) {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let consumer = Consumer::new(
            Arc::new(Registry::new().with(common::Calc).expect("distinct, unreserved service names")),
            ConsumerConfig::default(),
        );
        tokio::spawn(async move { consumer.serve(listener, std::future::pending::<()>()).await });
    }
    let producer = Producer::new(addrs, ProducerConfig::default());
    let front = Front::start(Gateway::builder(producer.clone()).with_backends(producer.clone()).build()).await;
    (front, producer)
}

#[tokio::test]
async fn through_a_producer_to_tcp_consumers_json_goes_in_and_comes_out() {
    let (front, producer) = producer_front().await;
    let r = post(front.addr, "/rpc/calc/calculate", r#"{"b": 2, "op": "+", "a": 2}"#, &[]).await;
    assert_eq!((r.status, r.json()), (200, json!(4.0)), "named arguments in any order");
    let r = post(front.addr, "/rpc/calc/calculate", r#"[2, "*", 21]"#, &[]).await;
    assert_eq!((r.status, r.json()), (200, json!(42.0)));
    let r = post(front.addr, "/rpc/calc/greet", r#"{"name": "ada"}"#, &[]).await;
    assert_eq!((r.status, r.json()), (200, json!("hi ada")), "a string result stays a string");
    let r = post(front.addr, "/rpc/calc/sum", r#"[[1, 2, 3]]"#, &[]).await;
    assert_eq!((r.status, r.json()), (200, json!(6.0)));
    let r = post(front.addr, "/rpc/calc/calculate", r#"{"a": 2, "op": "^", "b": 2}"#, &[]).await;
    assert_error(&r, 422, "handler");
    let r = post(front.addr, "/rpc/calc/nope", "{}", &[]).await;
    assert_error(&r, 404, "unknown_method");
    let r = post(front.addr, "/rpc/calc/greet", r#"{"name": "two words"}"#, &[]).await;
    assert_error(&r, 400, "bad_request");
    let r = get(front.addr, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let backends = r.json()["backends"].as_array().unwrap().len();
    assert_eq!(backends, 2);
    assert!(producer.stats().iter().map(|s| s.served).sum::<u64>() >= 6);
}

#[tokio::test]
async fn descriptions_list_every_method_with_docs_and_schemas() {
    let front = front().await;
    let r = get(front.addr, "/rpc").await;
    assert_eq!(r.status, 200);
    let body: Value = r.json();
    let calc = &body["services"][0];
    assert_eq!(calc["name"], "calc");
    let calculate = calc["methods"].as_array().unwrap().iter().find(|m| m["name"] == "calculate").unwrap();
    assert!(calculate["doc"].as_str().unwrap().contains("Computes"));
    assert_eq!(calculate["params"][0]["name"], "a");
    assert_eq!(get(front.addr, "/healthz").await.status, 200);
    assert_eq!(get(front.addr, "/readyz").await.status, 200);
}

#[tokio::test]
async fn the_http_transport_calls_a_front_with_its_context_and_rebuilds_its_errors() {
    use rpc_core::{Args, Context};

    let front = front().await;
    let transport = rpc_http::HttpTransport::new(&format!("http://{}", front.addr)).unwrap();
    let request = Request::new("calc", "calculate", Args::Text(vec!["2".into(), "+".into(), "2".into()]));
    assert_eq!(transport.call(request).await.unwrap(), Reply::Value(json!(4.0)));

    let context = Context::new().with_metadata("authorization", "Bearer t").unwrap().with_trace_id("t-1");
    let request = Request::new("calc", "whoami", Args::Named(Default::default()))
        .with_context(context)
        .with_deadline(Duration::from_secs(3));
    let Reply::Value(seen) = transport.call(request).await.unwrap() else { panic!("a value") };
    assert_eq!((seen["authorization"].as_str(), seen["trace_id"].as_str()), (Some("Bearer t"), Some("t-1")));
    assert!(seen["remaining_ms"].as_u64().unwrap() <= 3000);

    let request = Request::new("calc", "calculate", Args::Text(vec!["2".into(), "^".into(), "2".into()]));
    let error = transport.call(request).await.unwrap_err();
    assert!(matches!(&error, RpcError::Handler { code: Some(code), .. } if code == "unknown_operator"), "{error:?}");

    let describe = Request::new("_rpc", "describe", Args::Text(vec![]));
    let Reply::Value(document) = transport.call(describe).await.unwrap() else { panic!("a value") };
    assert_eq!(document["services"][0]["name"], "calc");
    assert!(rpc_http::HttpTransport::new("https://x:1").is_err());
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_and_the_front_serves_again_once_they_go() {
    let front = Front::memory(Limits::default().with_max_connections(2)).await;
    let held = [TcpStream::connect(front.addr).await.unwrap(), TcpStream::connect(front.addr).await.unwrap()];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(front.addr).await.unwrap();
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let mut rest = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut third, &mut rest));
    assert!(matches!(read.await, Ok(Ok(0)) | Ok(Err(_))), "closed without an answer: {rest:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(front.addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn the_deadline_header_bounds_a_call_through_the_producer_too() {
    let (front, _producer) = producer_front().await;
    let started = Instant::now();
    let r = post(front.addr, "/rpc/calc/nap", r#"{"ms": 5000}"#, &[("x-rpc-deadline-ms", "300")]).await;
    assert_error(&r, 504, "deadline_exceeded");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_disconnected_and_frees_its_connection_slot() {
    let limits = Limits::default().with_max_connections(1).with_write_timeout(Duration::from_millis(300));
    let front = Front::memory(limits).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small window, so the front's writes stall soon.
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(front.addr).await.unwrap();
    let (_never_read, mut requests) = stream.into_split();
    let pipelining = tokio::spawn(async move {
        let one = b"GET /openapi.json HTTP/1.1\r\nhost: t\r\n\r\n";
        // Until the front closes the connection.
        while requests.write_all(one).await.is_ok() {}
    });
    tokio::time::timeout(Duration::from_secs(5), pipelining)
        .await
        .expect("the front closes a connection whose answers nobody reads")
        .unwrap();
    assert_eq!(get(front.addr, "/healthz").await.status, 200, "its slot is free again");
}

/// A backend whose describe request answers only at its own deadline (5 s), counted.
struct SlowDescribe {
    calc: rpc_core::MemoryTransport,
    describes: Arc<AtomicUsize>,
}

impl Transport for SlowDescribe {
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        if request.service == "_rpc" {
            self.describes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(request.context.remaining().unwrap_or(Duration::from_secs(5))).await;
            return Err(RpcError::deadline("_rpc.describe", Duration::from_secs(5)));
        }
        self.calc.call(request).await
    }
}

#[tokio::test]
async fn the_calls_deadline_bounds_the_method_lookup_and_concurrent_lookups_share_one_describe() {
    let describes = Arc::new(AtomicUsize::new(0));
    let transport = SlowDescribe { calc: common::memory(), describes: Arc::clone(&describes) };
    let front = Front::with(transport, |b| b).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let addr = front.addr;
            tokio::spawn(async move {
                post(addr, "/rpc/calc/calculate", r#"[1, "+", 1]"#, &[("x-rpc-deadline-ms", "200")]).await
            })
        })
        .collect();
    for call in calls {
        let r = tokio::time::timeout(Duration::from_secs(3), call)
            .await
            .expect("answered at the call's deadline, not the describe request's")
            .unwrap();
        assert_error(&r, 504, "deadline_exceeded");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(describes.load(Ordering::SeqCst), 1, "one describe request for all four calls");
}

/// A backend whose describe request fails after a moment, counted.
struct FailingDescribe {
    describes: Arc<AtomicUsize>,
}

impl Transport for FailingDescribe {
    async fn call(&self, _request: Request) -> Result<Reply, RpcError> {
        self.describes.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(RpcError::Unavailable { target: "_rpc.describe".into(), reason: "no consumer is up".into() })
    }
}

#[tokio::test]
async fn calls_waiting_on_one_failed_describe_share_its_error_instead_of_each_asking_again() {
    let describes = Arc::new(AtomicUsize::new(0));
    let front = Front::with(FailingDescribe { describes: Arc::clone(&describes) }, |b| b).await;
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let addr = front.addr;
            tokio::spawn(async move { post(addr, "/rpc/calc/calculate", r#"[1, "+", 1]"#, &[]).await })
        })
        .collect();
    for call in calls {
        assert_error(&call.await.unwrap(), 503, "unavailable");
    }
    // Just after, the failure still answers for the backend.
    assert_error(&post(front.addr, "/rpc/calc/calculate", r#"[1, "+", 1]"#, &[]).await, 503, "unavailable");
    assert_eq!(describes.load(Ordering::SeqCst), 1);
}

/// The in-process [`common::Calc`], counting the calls that reach it (describe requests aside).
struct CountedCalls {
    calc: rpc_core::MemoryTransport,
    calls: Arc<AtomicUsize>,
}

impl Transport for CountedCalls {
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        if request.service != "_rpc" {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
        self.calc.call(request).await
    }
}

#[tokio::test]
async fn a_deadline_that_passed_before_the_call_is_504_without_calling_the_method() {
    let calls = Arc::new(AtomicUsize::new(0));
    let front = Front::with(CountedCalls { calc: common::memory(), calls: Arc::clone(&calls) }, |b| b).await;
    let body = br#"[2, "+", 2]"#;
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    let head = format!(
        "POST /rpc/calc/calculate HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\nx-rpc-deadline-ms: 1\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..3]).await.unwrap();
    // The rest of the body arrives after the 1 ms deadline.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&body[3..]).await.unwrap();
    let r = common::read_response(&mut stream).await;
    assert_error(&r, 504, "deadline_exceeded");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the method was not called");
}

#[tokio::test]
async fn refusals_before_a_call_answer_the_error_envelope_and_what_hyper_cannot_parse_its_bare_status() {
    let front = front().await;
    let bare = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    };
    let long = format!("/rpc/{}/m", "s".repeat(70_000));
    let many_headers = format!("GET /healthz HTTP/1.1\r\nhost: t\r\n{}\r\n", "x-h: 1\r\n".repeat(200));
    let cases: Vec<(String, u16, &str)> = vec![
        (bare("GET", "/rpc/calc/calculate"), 405, "method_not_allowed"),
        (bare("POST", "/healthz"), 405, "method_not_allowed"),
        (bare("POST", "/rpc/calc/%FF"), 400, "bad_request"),
    ];
    for (request, status, code) in cases {
        let r = raw(front.addr, request.as_bytes()).await;
        let line = request.lines().next().unwrap_or_default();
        let shown = &line[..line.len().min(60)];
        assert_eq!((r.status, r.header("content-type")), (status, Some("application/json")), "{shown}: {}", r.text());
        let body = r.json();
        assert_eq!(body["error"]["code"], code, "{shown}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        // No call was made: a Rust client reads it as a bad request.
        assert_eq!(RpcError::from_wire(&body["error"]["data"], "t").kind(), "bad_request", "{body}");
    }
    let r = raw(front.addr, bare("GET", "/rpc/calc/calculate").as_bytes()).await;
    assert_eq!(r.header("allow"), Some("POST"));
    // What hyper refuses before any route sees it gets hyper's own answer: the status alone,
    // and the connection closed (docs/HTTP.md, "Errors").
    for (request, status) in [(bare("POST", &long), 414), (bare("GET", "/he llo"), 400), (many_headers, 431)] {
        let r = raw(front.addr, request.as_bytes()).await;
        assert_eq!((r.status, r.body.len()), (status, 0), "{}", &request[..40]);
    }
}

#[tokio::test]
async fn duplicated_context_headers_and_a_trace_id_with_spaces_are_400_naming_the_header() {
    let front = front().await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("x-rpc-deadline-ms", "50"), ("x-rpc-deadline-ms", "99999")], "x-rpc-deadline-ms"),
        (&[("x-rpc-meta-authorization", "one"), ("x-rpc-meta-authorization", "two")], "x-rpc-meta-authorization"),
        (&[("x-rpc-trace-id", "a"), ("x-rpc-trace-id", "b")], "x-rpc-trace-id"),
        (&[("x-rpc-trace-id", "a b\tc")], "x-rpc-trace-id"),
    ];
    for (headers, named) in cases {
        let r = post(front.addr, "/rpc/calc/whoami", "{}", headers).await;
        assert_error(&r, 400, "bad_request");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains(named), "{headers:?}: {}", r.text());
    }
    let r = post(front.addr, "/rpc/calc/whoami", "{}", &[("x-rpc-trace-id", "span-1/a:b")]).await;
    assert_eq!((r.status, r.json()["trace_id"].as_str()), (200, Some("span-1/a:b")), "visible ASCII passes");
}

/// The in-process [`common::Calc`], saying when a call starts and when the front drops it.
struct Watched {
    calc: rpc_core::MemoryTransport,
    started: tokio::sync::mpsc::UnboundedSender<()>,
    dropped: tokio::sync::mpsc::UnboundedSender<()>,
}

/// Sends when dropped.
struct OnDrop(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Transport for Watched {
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        if request.service == "_rpc" {
            return self.calc.call(request).await;
        }
        let _dropped = OnDrop(self.dropped.clone());
        let _ = self.started.send(());
        self.calc.call(request).await
    }
}

#[tokio::test]
async fn requests_still_running_after_the_drain_timeout_are_dropped() {
    let (started, mut call_started) = tokio::sync::mpsc::unbounded_channel();
    let (dropped, mut call_dropped) = tokio::sync::mpsc::unbounded_channel();
    let transport = Watched { calc: common::memory(), started, dropped };
    let mut front =
        Front::with(transport, |b| b.with_limits(Limits::default().with_drain_timeout(Duration::from_millis(200))))
            .await;
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    let body = r#"{"ms": 5000}"#;
    let request = format!(
        "POST /rpc/calc/nap HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    call_started.recv().await.unwrap();
    front.stop();
    tokio::time::timeout(Duration::from_secs(2), &mut front.task).await.expect("serve returns").unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(2), call_dropped.recv())
        .await
        .expect("the call is dropped once the drain timeout passed, not left running");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed without an answer: {:?}", String::from_utf8_lossy(&answer));
}

/// `max_deadline` of `Duration::MAX` means no deadline (`rpc_core::Context`): a call without
/// `x-rpc-deadline-ms` is made, not refused as already late.
#[tokio::test]
async fn with_no_deadline_at_all_a_call_is_made() {
    let front = Front::memory(Limits::default().with_max_deadline(Duration::MAX)).await;
    let r = post(front.addr, "/rpc/calc/calculate", r#"{"a": 2, "op": "+", "b": 2}"#, &[]).await;
    assert_eq!((r.status, r.json()), (200, serde_json::json!(4.0)), "{}", r.text());
}

/// Refuses any request whose metadata carries `x-refuse`, as a layer checking one caller's
/// metadata does, with an error that is not about the backend.
#[derive(Clone)]
struct RefusesSomeMetadata(rpc_core::MemoryTransport);

impl Transport for RefusesSomeMetadata {
    async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        if request.context.metadata().get("x-refuse").is_some() {
            return Err(RpcError::bad_request("this caller's metadata is refused"));
        }
        self.0.call(request).await
    }
}

/// A describe read refused because of one caller's metadata is that caller's failure only:
/// the next caller, with other metadata, reads the descriptions and is served at once.
#[tokio::test]
async fn a_describe_refused_for_one_callers_metadata_is_not_held_against_the_next() {
    let front = Front::with(RefusesSomeMetadata(common::memory()), |b| b).await;
    let r = post(front.addr, "/rpc/calc/calculate", "[1, \"+\", 1]", &[("x-rpc-meta-x-refuse", "1")]).await;
    assert_error(&r, 400, "bad_request");
    let r = post(front.addr, "/rpc/calc/calculate", "[1, \"+\", 1]", &[]).await;
    assert_eq!((r.status, r.json()), (200, json!(2.0)), "{}", r.text());
}
