//! The RabbitMQ half of the reliability suite (issue 6): hostile input at a server and at a
//! client (§3), a server process SIGKILLed mid-load (§4), 100,000 calls with 256 in flight
//! (§5), credentials in logs and errors, and `amqps://` (§6); replies the broker cannot carry
//! (a huge error, a broker with a small `max_message_size` on a private node) and passwords
//! printed by the client example (§7). Broker restarts are in `reliability_broker_restart.rs`
//! (run alone). Results and numbers: `RELIABILITY.md`.
//!
//! Every test uses its own queue names, so these run in parallel with the rest of the suite.
//! Some tests re-execute this binary to run a server or a client in a process of its own
//! (`common_amqp::RoleProcess`): the test function then plays that role instead (see
//! [`play`]).

#[path = "common_amqp/mod.rs"]
mod common_amqp;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common_amqp::{
    child_role, declare_method_queue, delete_queue, rabbitmqctl, rpc, unique, url, vm_hwm_kb, vm_rss_kb_self,
    wait_for_counts, RoleProcess, UrlParts,
};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use rpc::amqp::{codec, CallOptions, Codec, Rpc};
use rpc::core::HandlerError;
use rpc::{kwargs, RpcError};
use rpc_testkit::services;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Arguments of the test method served by worker processes: unique per call.
#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: u64,
    tag: String,
}

/// Its result: the arguments back, and which process answered.
#[derive(Debug, Serialize, Deserialize)]
struct Echo {
    n: u64,
    tag: String,
    pid: u32,
}

/// Arguments of the in-process test method of the bad-input tests.
#[derive(Deserialize)]
struct Probe {
    t: f64,
    id: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Roles played by re-executed copies of this binary.
// ---------------------------------------------------------------------------------------

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn env_required(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} must be set for this role"))
}

/// Runs the role this process was started for.
async fn play(role: &str) {
    match role {
        "worker" => worker().await,
        "load-client" => load_client().await,
        "log-capture" => log_capture().await,
        "tls-client" => tls_client().await,
        other => panic!("unknown role {other}"),
    }
}

/// A server process: serves `$RPC_WORKER_METHOD` (a [`Work`] → [`Echo`] handler that waits
/// `$RPC_WORKER_DELAY_MS` first and, with `$RPC_WORKER_TRACE=1`, prints `started <n>` as it
/// takes a request) on an `Rpc::connect` of its own, prints `ready`, and serves until killed
/// or until its stdin closes (then it closes gracefully and prints `vmhwm <KiB>`).
async fn worker() {
    let method = env_required("RPC_WORKER_METHOD");
    let delay = Duration::from_millis(env_or("RPC_WORKER_DELAY_MS", 0));
    let trace = env_or("RPC_WORKER_TRACE", 0u8) == 1;
    let prefetch = env_or("RPC_WORKER_PREFETCH", rpc::amqp::config::DEFAULT_PREFETCH);
    let rpc = Rpc::builder().with_prefetch(prefetch).connect(&url()).await.expect("worker connects");
    let pid = std::process::id();
    rpc.register_async(&method, move |work: Work| async move {
        if trace {
            println!("started {}", work.n);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, HandlerError>(Echo { n: work.n, tag: work.tag, pid })
    })
    .await
    .expect("worker registers");
    println!("ready");
    common_amqp::wait_for_stdin_eof().await;
    rpc.close().await.expect("worker closes");
    println!("vmhwm {}", vm_hwm_kb(pid));
}

/// A client process: `$RPC_LOAD_CALLS` calls of `$RPC_LOAD_METHOD`, `$RPC_LOAD_INFLIGHT` at
/// a time, each with a unique argument checked against its result; prints one `load ...`
/// line of `key=value` counters (and its memory), then closes.
async fn load_client() {
    let method = env_required("RPC_LOAD_METHOD");
    let calls: u64 = env_or("RPC_LOAD_CALLS", 100_000);
    let inflight: usize = env_or("RPC_LOAD_INFLIGHT", 256);
    let rpc =
        Rpc::builder().with_deadline(Duration::from_secs(60)).connect(&url()).await.expect("load client connects");
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let answered: Arc<Vec<AtomicBool>> = Arc::new((0..calls).map(|_| AtomicBool::new(false)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let [ok, failed, wrong, duplicate] = [(); 4].map(|_| Arc::new(AtomicU64::new(0)));
    let rss_at_tenth = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(inflight);
    for _ in 0..inflight {
        let (rpc, method, nonce) = (rpc.clone(), method.clone(), nonce.clone());
        let (answered, next, done) = (Arc::clone(&answered), Arc::clone(&next), Arc::clone(&done));
        let (ok, failed, wrong, duplicate) =
            (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&wrong), Arc::clone(&duplicate));
        let rss_at_tenth = Arc::clone(&rss_at_tenth);
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls {
                    return;
                }
                let tag = format!("{nonce}-{n}");
                match rpc.call::<Echo>(&method, kwargs! { "n" => n, "tag" => tag }).await {
                    Ok(echo) if echo.n == n && echo.tag == tag => {
                        if answered[n as usize].swap(true, Ordering::Relaxed) {
                            duplicate.fetch_add(1, Ordering::Relaxed);
                        } else {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(echo) => {
                        eprintln!("call {n} answered with another call's result: {echo:?}");
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 10 {
                            eprintln!("call {n} failed: {e}");
                        }
                    }
                }
                if done.fetch_add(1, Ordering::Relaxed) + 1 == calls / 10 {
                    rss_at_tenth.store(vm_rss_kb_self(), Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("load task");
    }
    let secs = started.elapsed().as_secs_f64();
    let missing = answered.iter().filter(|a| !a.load(Ordering::Relaxed)).count();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "load calls={calls} ok={} failed={} wrong={} duplicate={} missing={missing} pending={} secs={secs:.1} \
         rss_tenth_kb={} rss_end_kb={} hwm_kb={}",
        get(&ok),
        get(&failed),
        get(&wrong),
        get(&duplicate),
        rpc.pending_calls(),
        get(&rss_at_tenth),
        vm_rss_kb_self(),
        vm_hwm_kb(std::process::id()),
    );
    rpc.close().await.expect("load client closes");
}

/// `key=value` pairs of a line printed by a role.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

// ---------------------------------------------------------------------------------------
// §3 Bad input at a server.
// ---------------------------------------------------------------------------------------

fn call_props(reply_to: &str, id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_reply_to(reply_to.into())
        .with_correlation_id(id.into())
        .with_type("call".into())
        .with_content_type(codec::MSGPACK.into())
}

fn with_deadline(props: BasicProperties, value: AMQPValue) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-deadline-ms".into(), value);
    props.with_headers(headers)
}

fn msgpack(value: Value) -> Vec<u8> {
    Codec::MsgPack.encode(&value).expect("msgpack")
}

async fn publish(channel: &Channel, routing_key: &str, props: BasicProperties, body: &[u8]) {
    channel
        .basic_publish("".into(), routing_key.into(), BasicPublishOptions::default(), body, props)
        .await
        .expect("publish")
        .await
        .expect("publish confirm");
}

/// A reply read off a raw reply queue.
#[derive(Debug)]
struct RawReply {
    correlation_id: Option<String>,
    kind: String,
    codec: Codec,
    body: Value,
}

async fn next_reply(replies: &mut Consumer, limit: Duration) -> RawReply {
    let delivery: Delivery = tokio::time::timeout(limit, replies.next())
        .await
        .unwrap_or_else(|_| panic!("no reply within {limit:?}"))
        .expect("reply stream open")
        .expect("reply delivery");
    let props = &delivery.properties;
    let content_type = props.content_type().as_ref().map(ShortString::to_string).unwrap_or_default();
    let codec =
        Codec::from_content_type(&content_type).unwrap_or_else(|| panic!("reply content type {content_type:?}"));
    RawReply {
        correlation_id: props.correlation_id().as_ref().map(ShortString::to_string),
        kind: props.kind().as_ref().map(ShortString::to_string).unwrap_or_default(),
        codec,
        body: codec.decode(&delivery.data).expect("replies always decode in their own codec"),
    }
}

/// What a hostile request must get.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// A `result` reply with this value, in this codec; the handler runs.
    Result(Value, Codec),
    /// An `error` reply of this kind, in this codec; the handler does not run.
    Error(&'static str, Codec),
}

/// A request of the hostile-input test: correlation id, properties, body, expected reply.
type Case = (String, BasicProperties, Vec<u8>, Expect);

/// `{"t": 1.5, "id": id}`: a valid request body that says which case it is.
fn probe(id: &str) -> Value {
    json!({"t": 1.5, "id": id})
}

/// The hostile requests (all answered to reply queue `rq`) and what each must get.
#[rustfmt::skip]
fn hostile_cases(rq: &str, long_id: &str) -> Vec<Case> {
    use Codec::{Json, MsgPack};
    use Expect::{Error as E, Result as R};
    let props = |id: &str| call_props(rq, id);
    let json = |id: &str| call_props(rq, id).with_content_type(codec::JSON.into());
    let no_ct = |id: &str| BasicProperties::default().with_reply_to(rq.into()).with_correlation_id(id.into()).with_type("call".into());
    let ct = |id: &str, content_type: &str| call_props(rq, id).with_content_type(content_type.into());
    let kind = |id: &str, kind: &str| call_props(rq, id).with_type(kind.into());
    let deadline = |id: &str, value: AMQPValue| with_deadline(call_props(rq, id), value);
    let ok = || R(json!(3.0), MsgPack);
    let case = |id: &str, props: BasicProperties, body: Vec<u8>, expect: Expect| (id.to_owned(), props, body, expect);
    vec![
        // Neither MessagePack nor JSON, whatever the label.
        case("garbage-no-ct", no_ct("garbage-no-ct"), b"\xc1\xc1 garbage".to_vec(), E("bad_request", MsgPack)),
        case("brace-garbage-no-ct", no_ct("brace-garbage-no-ct"), b"{garbage".to_vec(), E("bad_request", Json)),
        case("empty-msgpack", props("empty-msgpack"), vec![], E("bad_request", MsgPack)),
        case("empty-json", json("empty-json"), vec![], E("bad_request", Json)),
        case("json-labelled-msgpack", props("json-labelled-msgpack"), br#"{"t": 1}"#.to_vec(), E("bad_request", MsgPack)),
        case("msgpack-labelled-json", json("msgpack-labelled-json"), msgpack(probe("x")), E("bad_request", Json)),
        case("truncated-msgpack", props("truncated-msgpack"), vec![0x82, 0xa1, b't', 0x01], E("bad_request", MsgPack)),
        case("msgpack-binary-value", props("msgpack-binary-value"), vec![0x81, 0xa1, b't', 0xc4, 2, 1, 2], E("bad_request", MsgPack)),
        case("msgpack-invalid-utf8", props("msgpack-invalid-utf8"), vec![0x81, 0xa1, b't', 0xa2, 0xff, 0xfe], E("bad_request", MsgPack)),
        case("msgpack-integer-keys", props("msgpack-integer-keys"), vec![0x81, 0x01, 0x02], E("bad_request", MsgPack)),
        case("json-invalid-utf8", json("json-invalid-utf8"), b"{\"t\": \"\xff\"}".to_vec(), E("bad_request", Json)),
        case("msgpack-trailing-bytes", props("msgpack-trailing-bytes"), [msgpack(probe("x")), b"junk".to_vec()].concat(), E("bad_request", MsgPack)),
        case("msgpack-string-body", props("msgpack-string-body"), msgpack(json!("t=1")), E("bad_request", MsgPack)),
        // Content types we do not speak: answered in JSON, the one codec every peer reads.
        case("text-plain", ct("text-plain", "text/plain"), br#"{"t": 1}"#.to_vec(), E("bad_request", Json)),
        case("octet-stream", ct("octet-stream", "application/octet-stream"), msgpack(probe("x")), E("bad_request", Json)),
        case("empty-content-type", ct("empty-content-type", ""), msgpack(probe("x")), E("bad_request", Json)),
        // Types other than `call`.
        case("type-result", kind("type-result", "result"), msgpack(probe("type-result")), E("bad_request", MsgPack)),
        case("type-empty", kind("type-empty", ""), msgpack(probe("type-empty")), E("bad_request", MsgPack)),
        case("type-upper-case", kind("type-upper-case", "CALL"), msgpack(probe("type-upper-case")), E("bad_request", MsgPack)),
        // Arguments.
        case("nil-body", props("nil-body"), vec![0xc0], E("invalid_argument", MsgPack)),
        case("missing-argument", props("missing-argument"), msgpack(json!({"id": "x"})), E("invalid_argument", MsgPack)),
        // Deadlines: a passed one is refused unrun; unreadable ones are ignored.
        case("deadline-passed", deadline("deadline-passed", AMQPValue::LongLongInt(1)), msgpack(probe("deadline-passed")), E("deadline_exceeded", MsgPack)),
        case("deadline-text", deadline("deadline-text", AMQPValue::LongString("soon".into())), msgpack(probe("deadline-text")), ok()),
        case("deadline-negative", deadline("deadline-negative", AMQPValue::LongLongInt(-5)), msgpack(probe("deadline-negative")), ok()),
        case("deadline-max", deadline("deadline-max", AMQPValue::LongLongInt(i64::MAX)), msgpack(probe("deadline-max")), ok()),
        case("deadline-float", deadline("deadline-float", AMQPValue::Double(1e300)), msgpack(probe("deadline-float")), ok()),
        // Odd but acceptable.
        case("json-no-ct", no_ct("json-no-ct"), br#" {"t": 1.5, "id": "json-no-ct"}"#.to_vec(), R(json!(3.0), Json)),
        case("msgpack-no-ct", no_ct("msgpack-no-ct"), msgpack(probe("msgpack-no-ct")), ok()),
        case("json-with-charset", ct("json-with-charset", "Application/JSON; charset=utf-8"), br#"{"t": 1.5, "id": "json-with-charset"}"#.to_vec(), R(json!(3.0), Json)),
        case("no-type", BasicProperties::default().with_reply_to(rq.into()).with_correlation_id("no-type".into()).with_content_type(codec::MSGPACK.into()), msgpack(probe("no-type")), ok()),
        case(long_id, props(long_id), msgpack(probe("long-correlation-id")), ok()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_each_get_their_documented_reply_and_the_server_keeps_serving_with_nothing_unacked() {
    let (_server_conn, server) = rpc().await;
    let name = unique("rel-hostile");
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&ran);
    server
        .register_async(&name, move |p: Probe| {
            log.lock().unwrap().push(p.id.unwrap_or_default());
            async move { Ok::<_, HandlerError>(p.t * 2.0) }
        })
        .await
        .unwrap();
    let (_raw_conn, raw) = common_amqp::channel().await;
    let (rq, mut replies) = common_amqp::raw_reply_queue(&raw).await;
    let long_id = "i".repeat(255);
    let mut cases = hostile_cases(&rq, &long_id);
    // A flood of garbage: every one is answered, none takes the consumer down.
    for i in 0..300 {
        let id = format!("flood-{i}");
        let body = format!("\u{c1}garbage {i}").into_bytes();
        cases.push((id.clone(), call_props(&rq, &id), body, Expect::Error("bad_request", Codec::MsgPack)));
    }
    for (_, props, body, _) in &cases {
        publish(&raw, &name, props.clone(), body).await;
    }
    // Requests nobody can be answered for: never run, acked all the same.
    let no_reply_to = |id: &str| {
        BasicProperties::default()
            .with_correlation_id(id.into())
            .with_type("call".into())
            .with_content_type(codec::MSGPACK.into())
    };
    publish(&raw, &name, no_reply_to("no-reply-to"), &msgpack(probe("no-reply-to"))).await;
    publish(&raw, &name, no_reply_to("no-reply-to-garbage"), b"\xc1\xc1").await;
    publish(&raw, &name, BasicProperties::default(), &msgpack(probe("no-reply-to-no-id"))).await;
    // Without a correlation id: an error reply nobody can match, handler not run.
    let anonymous = BasicProperties::default()
        .with_reply_to(rq.as_str().into())
        .with_type("call".into())
        .with_content_type(codec::MSGPACK.into());
    publish(&raw, &name, anonymous, &msgpack(probe("no-correlation-id"))).await;
    // A reply_to naming a queue that does not exist: the reply is lost, the request acked.
    publish(&raw, &name, call_props("amq.gen-no-such-queue", "void-reply"), &msgpack(probe("void-reply"))).await;
    // A reply_to naming the method queue itself: the reply comes back as a request without
    // reply_to and is dropped, so it cannot loop.
    publish(&raw, &name, call_props(&name, "self-reply"), &msgpack(probe("self-reply"))).await;

    let mut seen: HashMap<String, RawReply> = HashMap::new();
    let mut without_id = Vec::new();
    while seen.len() < cases.len() || without_id.is_empty() {
        let reply = next_reply(&mut replies, Duration::from_secs(30)).await;
        match reply.correlation_id.clone() {
            Some(id) => assert!(seen.insert(id.clone(), reply).is_none(), "two replies to {id}"),
            None => without_id.push(reply),
        }
    }
    for (id, _, _, expect) in &cases {
        let reply = &seen[id];
        match expect {
            Expect::Result(value, codec) => {
                assert_eq!((&reply.kind, &reply.body, reply.codec), (&"result".to_owned(), value, *codec), "{id}");
            }
            Expect::Error(kind, codec) => {
                assert_eq!(reply.kind, "error", "{id}: {:?}", reply.body);
                assert_eq!(reply.body["error"]["kind"], *kind, "{id}: {:?}", reply.body);
                assert_eq!(reply.codec, *codec, "{id}");
                let message = reply.body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(&name), "{id}: the error names the method: {message}");
            }
        }
    }
    assert_eq!(without_id.len(), 1, "{without_id:?}");
    assert_eq!(without_id[0].kind, "error");
    assert!(without_id[0].body["error"]["message"].as_str().unwrap().contains("no correlation_id"));

    // The broker's view, with the server still up: nothing waiting, nothing unacked.
    let (counts, settled) = wait_for_counts(&name, Duration::from_secs(30), |c| c.ready == 0 && c.unacked == 0).await;
    assert!(settled, "messages left in or unacked on the method queue: {counts:?}");
    assert_eq!(counts.consumers, 1);
    // Exactly the acceptable requests ran, each once (the self-reply did not loop).
    let mut expected_runs: Vec<String> = cases
        .iter()
        .filter(|(_, _, _, e)| matches!(e, Expect::Result(..)))
        .map(|(id, ..)| if *id == long_id { "long-correlation-id".to_owned() } else { id.clone() })
        .chain(["void-reply".to_owned(), "self-reply".to_owned()])
        .collect();
    expected_runs.sort();
    let mut runs = ran.lock().unwrap().clone();
    runs.sort();
    assert_eq!(runs, expected_runs);
    // Still serving, through the ordinary client.
    let (_client_conn, client) = rpc().await;
    assert_eq!(client.call::<f64>(&name, kwargs! { "t" => 4 }).await.unwrap(), 8.0);
    server.close().await.unwrap();
    delete_queue(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_megabyte_requests_get_bad_request_replies_in_both_codecs_and_nothing_is_left_unacked() {
    let (_server_conn, server) = rpc().await;
    let name = unique("rel-16mb");
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    server
        .register_async(&name, move |p: Probe| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, HandlerError>(p.t) }
        })
        .await
        .unwrap();
    let limit = rpc::amqp::config::DEFAULT_MAX_BODY_SIZE;
    let pad = "x".repeat(16 * 1024 * 1024);
    let (_raw_conn, raw) = common_amqp::channel().await;
    let (rq, mut replies) = common_amqp::raw_reply_queue(&raw).await;
    let big_msgpack = msgpack(json!({"t": 1, "pad": pad}));
    let big_json = serde_json::to_vec(&json!({"t": 1, "pad": pad})).unwrap();
    publish(&raw, &name, call_props(&rq, "msgpack"), &big_msgpack).await;
    publish(&raw, &name, call_props(&rq, "json").with_content_type(codec::JSON.into()), &big_json).await;
    // Too big and unanswerable: acked and dropped.
    publish(&raw, &name, BasicProperties::default().with_content_type(codec::MSGPACK.into()), &big_msgpack).await;
    let mut seen = HashMap::new();
    while seen.len() < 2 {
        let reply = next_reply(&mut replies, Duration::from_secs(60)).await;
        seen.insert(reply.correlation_id.clone().unwrap(), reply);
    }
    for (id, codec) in [("msgpack", Codec::MsgPack), ("json", Codec::Json)] {
        let reply = &seen[id];
        assert_eq!((reply.kind.as_str(), reply.codec), ("error", codec), "{id}");
        let error = codec::parse_error_body(reply.body.clone(), &name);
        let expected = format!("exceeds the limit of {limit} bytes");
        assert!(matches!(&error, RpcError::BadRequest { reason } if reason.contains(&expected)), "{id}: {error:?}");
    }
    // Through the API: a client whose own limit is higher is refused by the server's.
    let (_c, channel) = common_amqp::channel().await;
    let client = Rpc::builder().with_max_body_size(64 * 1024 * 1024).create(channel).await.unwrap();
    let err = client.call::<f64>(&name, kwargs! { "t" => 1, "pad" => pad }).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::BadRequest { reason } if reason.contains(&format!("exceeds the limit of {limit} bytes"))),
        "{err:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no oversized request reached the handler");
    let (counts, settled) = wait_for_counts(&name, Duration::from_secs(30), |c| c.ready == 0 && c.unacked == 0).await;
    assert!(settled, "{counts:?}");
    assert_eq!(client.call::<f64>(&name, kwargs! { "t" => 2 }).await.unwrap(), 2.0);
    server.close().await.unwrap();
    delete_queue(&name).await;
}

// ---------------------------------------------------------------------------------------
// §3 Bad input at a client.
// ---------------------------------------------------------------------------------------

/// A hand-written server on `channel` for method `name`: `answer` decides, per request,
/// how long to wait and which replies (properties, body) then go to its `reply_to`.
/// Requests are handled one at a time and acked after.
async fn hostile_server<F>(channel: Channel, name: &str, answer: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(&Delivery) -> (Duration, Vec<(BasicProperties, Vec<u8>)>) + Send + 'static,
{
    declare_method_queue(&channel, name).await;
    let mut requests = channel
        .basic_consume(name.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let reply_to = request.properties.reply_to().clone().expect("reply_to");
            let (delay, replies) = answer(&request);
            tokio::time::sleep(delay).await;
            for (props, body) in replies {
                channel
                    .basic_publish("".into(), reply_to.clone(), BasicPublishOptions::default(), &body, props)
                    .await
                    .expect("publish");
            }
            request.ack(BasicAckOptions::default()).await.expect("ack");
        }
    })
}

fn reply_props(id: Option<&ShortString>, kind: &str) -> BasicProperties {
    let props = BasicProperties::default().with_type(kind.into()).with_content_type(codec::MSGPACK.into());
    match id {
        Some(id) => props.with_correlation_id(id.clone()),
        None => props,
    }
}

fn request_n(request: &Delivery) -> u64 {
    Codec::MsgPack.decode(&request.data).ok().and_then(|v| v["n"].as_u64()).expect("request carries n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_drops_unknown_duplicate_and_malformed_replies_and_every_concurrent_call_gets_its_own_result() {
    let (_client_conn, client) = rpc().await;
    let (_server_conn, channel) = common_amqp::channel().await;
    let name = unique("rel-noisy");
    // For every request: a reply to an id nobody waits for (with a plausible value), one
    // without an id, garbage of an unknown type, then the real answer, then duplicates of it
    // carrying a wrong value and the right one.
    let server = hostile_server(channel, &name, |request| {
        let n = request_n(request);
        let id = request.properties.correlation_id().as_ref();
        let stranger: ShortString = uuid::Uuid::new_v4().to_string().into();
        let replies = vec![
            (reply_props(Some(&stranger), "result"), msgpack(json!(n * 3 + 1))),
            (reply_props(None, "result"), msgpack(json!(n * 3 + 1))),
            (reply_props(Some(&stranger), "banana"), b"\xc1 garbage".to_vec()),
            (reply_props(id, "result"), msgpack(json!(n * 3 + 1))),
            (reply_props(id, "result"), msgpack(json!(n * 3 + 2))),
            (reply_props(id, "error"), msgpack(json!({"error": {"type": "Late", "message": "duplicate"}}))),
        ];
        (Duration::ZERO, replies)
    })
    .await;
    // Meanwhile, junk straight into the client's reply queue.
    let reply_to = client.reply_queue().unwrap();
    let (_junk_conn, junk) = common_amqp::channel().await;
    let injector = tokio::spawn(async move {
        for i in 0..2000u32 {
            let id: ShortString = format!("junk-{i}").into();
            let (props, body) = match i % 4 {
                0 => (reply_props(Some(&id), "result"), msgpack(json!(i))),
                1 => (reply_props(Some(&id), "error"), b"\xc1".to_vec()),
                2 => (BasicProperties::default(), Vec::new()),
                _ => (reply_props(None, "call"), msgpack(json!({"n": i}))),
            };
            junk.basic_publish("".into(), reply_to.as_str().into(), BasicPublishOptions::default(), &body, props)
                .await
                .unwrap();
        }
    });
    let calls = futures_util::stream::iter(0..1000u64)
        .map(|n| {
            let (client, name) = (client.clone(), name.clone());
            async move { (n, client.call::<u64>(&name, kwargs! { "n" => n }).await) }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    injector.await.unwrap();
    let wrong: Vec<_> = calls.iter().filter(|(n, r)| !matches!(r, Ok(v) if *v == n * 3 + 1)).collect();
    assert!(
        wrong.is_empty(),
        "{} calls got something else than their own result: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(client.pending_calls(), 0);
    assert_eq!(client.call::<u64>(&name, kwargs! { "n" => 7 }).await.unwrap(), 22);
    server.abort();
    delete_queue(&name).await;
}

#[tokio::test]
async fn a_malformed_reply_to_a_call_fails_that_call_at_once_with_a_clear_error_and_a_late_one_is_dropped() {
    let (_client_conn, client) = rpc().await;
    let (_server_conn, channel) = common_amqp::channel().await;
    let name = unique("rel-malformed");
    let server = hostile_server(channel, &name, |request| {
        let id = request.properties.correlation_id().as_ref();
        let now = Duration::ZERO;
        match request_n(request) {
            0 => (now, vec![(reply_props(id, "result"), b"\xc1\xc1 not msgpack".to_vec())]),
            1 => (now, vec![(reply_props(id, "banana"), msgpack(json!(1)))]),
            2 => (now, vec![(reply_props(id, "error"), msgpack(json!("just text")))]),
            3 => (
                now,
                vec![(reply_props(id, "result").with_content_type("text/plain".into()), br#""a string""#.to_vec())],
            ),
            // Past the caller's deadline (300 ms).
            4 => (Duration::from_millis(600), vec![(reply_props(id, "result"), msgpack(json!(4)))]),
            n => (now, vec![(reply_props(id, "result"), msgpack(json!(n)))]),
        }
    })
    .await;
    let call = |n: u64| {
        let (client, name) = (client.clone(), name.clone());
        async move {
            let started = Instant::now();
            let outcome = client
                .call_with::<u64>(
                    &name,
                    kwargs! { "n" => n },
                    CallOptions::new().with_deadline(Duration::from_millis(if n == 4 { 300 } else { 20_000 })),
                )
                .await;
            (outcome, started.elapsed())
        }
    };
    let (undecodable, took) = call(0).await;
    assert!(
        matches!(&undecodable, Err(RpcError::Protocol { .. }))
            && undecodable.as_ref().unwrap_err().to_string().contains("undecodable reply"),
        "{undecodable:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (unknown_type, _) = call(1).await;
    assert!(
        matches!(&unknown_type, Err(e @ RpcError::Protocol { .. }) if e.to_string().contains("unknown type")),
        "{unknown_type:?}"
    );
    let (text_error, _) = call(2).await;
    assert!(
        matches!(&text_error, Err(RpcError::Handler { message, .. }) if message == "just text"),
        "expected Err(RpcError::Handler {{ message, .. }}) if message == \"just text\", got {text_error:?}"
    );
    // A content type the client does not speak is refused, not guessed at (read as
    // MessagePack, `"a string"` would start with the integer 34).
    let (wrong_codec, _) = call(3).await;
    assert!(
        matches!(&wrong_codec, Err(e @ RpcError::Protocol { .. }) if e.to_string().contains("unsupported content type 'text/plain'")),
        "{wrong_codec:?}"
    );
    let (late, took) = call(4).await;
    assert!(
        matches!(&late, Err(RpcError::DeadlineExceeded { .. })),
        "expected Err(RpcError::DeadlineExceeded {{ .. }}), got {late:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The late reply arrives now and is dropped; the next call gets its own answer.
    assert_eq!(call(5).await.0.unwrap(), 5);
    assert_eq!(call(6).await.0.unwrap(), 6);
    assert_eq!(client.pending_calls(), 0);
    server.abort();
    delete_queue(&name).await;
}

// ---------------------------------------------------------------------------------------
// §4 A server process killed with SIGKILL mid-load.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_server_process_mid_load_has_its_unacked_requests_served_by_the_other_server_and_no_call_hangs() {
    const TEST: &str =
        "sigkilled_server_process_mid_load_has_its_unacked_requests_served_by_the_other_server_and_no_call_hangs";
    if let Some(role) = child_role() {
        return play(&role).await;
    }
    const CALLS: u64 = 3000;
    const IN_FLIGHT: usize = 64;
    const KILL_AFTER: usize = 300;
    let deadline = Duration::from_secs(30);
    let method = unique("rel-kill");
    let env = |trace: &str| {
        vec![
            ("RPC_WORKER_METHOD", method.clone()),
            ("RPC_WORKER_DELAY_MS", "50".to_owned()),
            ("RPC_WORKER_TRACE", trace.to_owned()),
        ]
    };
    let mut a = RoleProcess::spawn(TEST, "worker", &env("1"), false);
    a.expect_line("ready", Duration::from_secs(60)).await;
    let mut b = RoleProcess::spawn(TEST, "worker", &env("0"), false);
    b.expect_line("ready", Duration::from_secs(60)).await;

    // Which requests A took, from its `started <n>` lines; a signal once it took enough.
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel();
    let mut a_lines = std::mem::replace(&mut a.lines, tokio::sync::mpsc::unbounded_channel().1);
    let taken_by_a = tokio::spawn(async move {
        let mut taken = HashSet::new();
        let mut enough = Some(enough_tx);
        while let Some(line) = a_lines.recv().await {
            if let Some(n) = line.strip_prefix("started ").and_then(|n| n.parse::<u64>().ok()) {
                taken.insert(n);
                if taken.len() >= KILL_AFTER {
                    if let Some(tx) = enough.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
        taken
    });

    let (_client_conn, client) = rpc().await;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let load = {
        let (client, method) = (client.clone(), method.clone());
        tokio::spawn(async move {
            futures_util::stream::iter(0..CALLS)
                .map(|n| {
                    let (client, method, tag) = (client.clone(), method.clone(), format!("{nonce}-{n}"));
                    async move {
                        let started = Instant::now();
                        let outcome = client
                            .call_with::<Echo>(
                                &method,
                                kwargs! { "n" => n, "tag" => tag.clone() },
                                CallOptions::new().with_deadline(deadline),
                            )
                            .await;
                        (n, tag, outcome, started.elapsed())
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(60), enough_rx).await.expect("server A took requests").unwrap();
    a.child.start_kill().expect("SIGKILL server A");
    let killed_at = Instant::now();
    a.child.wait().await.unwrap();
    let taken_by_a = taken_by_a.await.unwrap();
    let results = tokio::time::timeout(deadline * 3, load).await.expect("every call ends").unwrap();

    assert_eq!(results.len() as u64, CALLS);
    let mut answered_by: HashMap<u64, u32> = HashMap::new();
    let mut slowest = Duration::ZERO;
    for (n, tag, outcome, took) in &results {
        match outcome {
            Ok(echo) => {
                assert_eq!((echo.n, &echo.tag), (*n, tag), "call {n} got another call's result");
                answered_by.insert(*n, echo.pid);
            }
            Err(e) => panic!("call {n} failed after {took:?}: {e}"),
        }
        slowest = slowest.max(*took);
    }
    // A took these and never answered them: they were unacked when it died.
    let orphaned: Vec<u64> = taken_by_a.iter().copied().filter(|n| answered_by[n] != a.pid).collect();
    assert!(!orphaned.is_empty(), "server A held no unacked request when killed; the test proves nothing");
    assert!(orphaned.iter().all(|n| answered_by[n] == b.pid), "orphaned requests answered by B");
    let by_a = answered_by.values().filter(|pid| **pid == a.pid).count();
    println!(
        "sigkill: A took {} requests and answered {by_a} before SIGKILL; its {} unacked ones were all answered by B; \
         {CALLS} calls, 0 lost, slowest {slowest:?} (deadline {deadline:?}), load ended {:?} after the kill",
        taken_by_a.len(),
        orphaned.len(),
        killed_at.elapsed(),
    );
    assert!(slowest < deadline);
    let (counts, settled) = wait_for_counts(&method, Duration::from_secs(30), |c| c.ready == 0 && c.unacked == 0).await;
    assert!(settled, "{counts:?}");
    assert_eq!(counts.consumers, 1, "only B consumes now");
    assert!(b.finish(Duration::from_secs(30)).await.success());
    delete_queue(&method).await;
}

// ---------------------------------------------------------------------------------------
// §5 Load.
// ---------------------------------------------------------------------------------------

/// Peak RSS allowed for the client and for the server process of the load test (measured:
/// about 26 MiB each, debug build).
const LOAD_RSS_LIMIT_KB: u64 = 64 * 1024;
/// Growth of the client's RSS allowed between 10% and 100% of the calls: a leak of 200 bytes
/// per call would cross it.
const LOAD_RSS_GROWTH_LIMIT_KB: u64 = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_calls_with_256_in_flight_lose_none_mix_none_up_and_keep_memory_bounded() {
    const TEST: &str = "hundred_thousand_calls_with_256_in_flight_lose_none_mix_none_up_and_keep_memory_bounded";
    if let Some(role) = child_role() {
        return play(&role).await;
    }
    let calls: u64 = env_or("RPC_LOAD_CALLS", 100_000);
    let method = unique("rel-load");
    let mut server = RoleProcess::spawn(TEST, "worker", &[("RPC_WORKER_METHOD", method.clone())], false);
    server.expect_line("ready", Duration::from_secs(60)).await;
    let started = Instant::now();
    let mut client = RoleProcess::spawn(
        TEST,
        "load-client",
        &[
            ("RPC_LOAD_METHOD", method.clone()),
            ("RPC_LOAD_CALLS", calls.to_string()),
            ("RPC_LOAD_INFLIGHT", "256".to_owned()),
        ],
        false,
    );
    let report = client.expect_line("load ", Duration::from_secs(600)).await;
    assert!(client.finish(Duration::from_secs(60)).await.success());
    drop(server.stdin.take());
    let server_hwm: u64 =
        server.expect_line("vmhwm ", Duration::from_secs(60)).await["vmhwm ".len()..].parse().unwrap();
    assert!(server.finish(Duration::from_secs(30)).await.success());
    let took = started.elapsed();
    let f = fields(&report);
    let num = |key: &str| f[key].parse::<u64>().unwrap_or_else(|_| panic!("{key} in {report}"));
    println!("load: {report}; server hwm_kb={server_hwm}; wall {took:?}");
    assert_eq!(num("ok"), calls, "{report}");
    assert_eq!(
        (num("failed"), num("wrong"), num("duplicate"), num("missing"), num("pending")),
        (0, 0, 0, 0, 0),
        "{report}"
    );
    assert!(num("hwm_kb") < LOAD_RSS_LIMIT_KB, "client peak RSS: {report}");
    assert!(
        num("rss_end_kb").saturating_sub(num("rss_tenth_kb")) < LOAD_RSS_GROWTH_LIMIT_KB,
        "client RSS grows with the calls: {report}"
    );
    assert!(server_hwm < LOAD_RSS_LIMIT_KB, "server peak RSS {server_hwm} KiB");
    let (counts, settled) = wait_for_counts(&method, Duration::from_secs(30), |c| c.ready == 0 && c.unacked == 0).await;
    assert!(settled, "{counts:?}");
    delete_queue(&method).await;
}

// ---------------------------------------------------------------------------------------
// §6 Credentials and TLS.
// ---------------------------------------------------------------------------------------

/// Removes a broker user when dropped.
struct TestUser(String);

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl").args(["delete_user", &self.0]).output();
    }
}

/// Pids of the broker connections whose client-provided name is `name`.
fn broker_connections(name: &str) -> Vec<String> {
    rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "pid", "client_properties"])
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Prints an outcome, Display and Debug, for the parent to inspect.
fn show<T: std::fmt::Debug, E: std::fmt::Display + std::fmt::Debug>(what: &str, outcome: &Result<T, E>) {
    match outcome {
        Ok(v) => println!("outcome {what}: ok {v:?}"),
        Err(e) => println!("outcome {what}: error {e} | {e:?}"),
    }
}

/// The child of the credentials test: every log line at TRACE (ours and lapin's, `log`
/// records included) goes to stderr, every error to stdout, while it connects, calls, is cut off by the broker, fails
/// to reconnect with a changed password, reconnects, and tries bad URLs.
async fn log_capture() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let user = env_required("RPC_SECRET_USER");
    let secret = env_required("RPC_SECRET_PASSWORD");
    let mut parts = UrlParts::of(&url());
    (parts.user, parts.password) = (user.clone(), secret.clone());
    let good = parts.to_url("amqp");
    let method = unique("rel-creds");
    let connection_name = unique("rel-creds-conn");
    let rpc = Rpc::builder()
        .with_connection_name(&connection_name)
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .with_deadline(Duration::from_secs(5))
        .connect(&good)
        .await
        .expect("connect as the test user");
    rpc.register_async(&method, |p: Probe| async move { Ok::<_, HandlerError>(p.t) }).await.unwrap();
    show("call", &rpc.call::<f64>(&method, kwargs! { "t" => 1 }).await);

    // Cut off by the broker: reconnects.
    let close = |reason: &str| {
        let pids = broker_connections(&connection_name);
        assert_eq!(pids.len(), 1, "{pids:?}");
        rabbitmqctl(&["close_connection", &pids[0], reason]);
    };
    let before = rpc.reply_queue().unwrap();
    close("closed by the credentials test");
    wait_until("reconnected", Duration::from_secs(30), || rpc.reply_queue().is_some_and(|q| q != before)).await;
    show("call after reconnecting", &rpc.call::<f64>(&method, kwargs! { "t" => 2 }).await);

    // Cut off again, while its password no longer works: reconnection attempts fail and log.
    rabbitmqctl(&["change_password", &user, &format!("changed-{}", uuid::Uuid::new_v4().simple())]);
    let before = rpc.reply_queue().unwrap();
    close("closed by the credentials test, password changed");
    wait_until("link lost", Duration::from_secs(30), || rpc.reply_queue().as_deref() != Some(before.as_str())).await;
    for _ in 0..10 {
        show("call while the password is refused", &rpc.call::<f64>(&method, kwargs! { "t" => 3 }).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rabbitmqctl(&["change_password", &user, &secret]);
    assert!(rpc.wait_connected(Duration::from_secs(60)).await, "reconnected once the password works again");
    show("call after the password works again", &rpc.call::<f64>(&method, kwargs! { "t" => 4 }).await);
    rpc.close().await.unwrap();

    // Refusals of every kind, each with the secret in the URL.
    let mut wrong = parts.clone();
    wrong.password = format!("{secret}-wrong");
    show("wrong password", &Rpc::connect(&wrong.to_url("amqp")).await);
    let mut vhost = parts.clone();
    vhost.rest = "/no-such-vhost".into();
    show("unknown vhost", &Rpc::connect(&vhost.to_url("amqp")).await);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut refused = parts.clone();
    (refused.host, refused.port) = ("127.0.0.1".into(), closed_port);
    show("connection refused", &Rpc::connect(&refused.to_url("amqp")).await);
    show("amqps to a plain port", &Rpc::connect(&parts.to_url("amqps")).await);
    let channel_err = Rpc::connect(&wrong.to_url("amqp")).await.map_err(RpcError::from);
    show("as an RpcError", &channel_err);
    println!("done");
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "not {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_logs_or_errors_except_lapins_own_trace_frame_dumps() {
    const TEST: &str = "credentials_never_appear_in_logs_or_errors_except_lapins_own_trace_frame_dumps";
    if let Some(role) = child_role() {
        return play(&role).await;
    }
    let user = unique("rel-user");
    let secret = format!("Secret{}", uuid::Uuid::new_v4().simple());
    rabbitmqctl(&["add_user", &user, &secret]);
    let _cleanup = TestUser(user.clone());
    // On the virtual host the child connects to (the URL's).
    rabbitmqctl(&["set_permissions", "-p", &common_amqp::vhost_of(&url()), &user, ".*", ".*", ".*"]);
    let mut child = RoleProcess::spawn(
        TEST,
        "log-capture",
        &[("RPC_SECRET_USER", user.clone()), ("RPC_SECRET_PASSWORD", secret.clone())],
        true,
    );
    let mut lines = Vec::new();
    let collect = async {
        while let Some(line) = child.lines.recv().await {
            lines.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(180), collect).await.expect("the child finishes");
    let status = child.child.wait().await.unwrap();
    let output = lines.join("\n");
    assert!(status.success(), "child failed:\n{output}");
    // The password as text, and as the byte list and hex a `Debug` of its bytes would show.
    let bytes = secret.as_bytes();
    let renderings = [
        secret.clone(),
        bytes.iter().map(u8::to_string).collect::<Vec<_>>().join(", "),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
    ];
    let (lapin_frame_dumps, leaks): (Vec<&String>, Vec<&String>) = lines
        .iter()
        .filter(|line| renderings.iter().any(|r| line.contains(r.as_str())))
        .partition(|line| line.contains("TRACE") && line.contains("lapin::io_loop") && line.contains("StartOk"));
    assert!(leaks.is_empty(), "{} lines show the password, e.g. {:?}", leaks.len(), leaks.first());
    // Known, documented in docs/AMQP.md: lapin's own TRACE level dumps every frame it writes,
    // the connection's SASL response (user and password bytes) included. Nothing else does.
    println!(
        "credentials: lapin TRACE dumps of the StartOk frame carrying the password bytes: {}",
        lapin_frame_dumps.len()
    );
    // The run went through every path it claims to, so the check above means something.
    for expected in [
        "outcome call: ok 1.0",
        "lost the link to the broker",
        "reconnecting to the broker failed",
        "outcome call while the password is refused: error",
        "reconnected to the broker",
        "outcome call after the password works again: ok 4.0",
        "outcome wrong password: error",
        "outcome unknown vhost: error",
        "outcome connection refused: error",
        "outcome amqps to a plain port: error",
        "outcome as an RpcError: error",
        &format!("{user}:***@"),
        "lapin::",
        "done",
    ] {
        assert!(output.contains(expected), "no {expected:?} in the child's output:\n{output}");
    }
    for line in lines.iter().filter(|l| l.starts_with("outcome") && !l.contains("password is refused")) {
        println!("credentials: {line}");
    }
    println!(
        "credentials: {} lines of logs (all at TRACE) and errors captured; only lapin's frame dumps show the password",
        lines.len()
    );
}

#[tokio::test]
async fn amqps_url_to_a_plain_amqp_port_fails_within_seconds_with_a_redacted_tls_error() {
    // A broker does listen there (else this would only test a refused connection).
    let _ = common_amqp::connect().await.close(200, "OK".into()).await;
    let secret = format!("Secret{}", uuid::Uuid::new_v4().simple());
    let mut parts = UrlParts::of(&url());
    parts.password = secret.clone();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(60), Rpc::connect(&parts.to_url("amqps"))).await;
    let took = started.elapsed();
    let err = outcome.expect("amqps:// to a plain port must not hang").unwrap_err();
    let shown = format!("{err} | {err:?}");
    println!("amqps to plain port: {took:?}: {err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(matches!(err, rpc::amqp::Error::Connect { .. }), "{shown}");
    assert!(!shown.contains(&secret), "{shown}");
    assert!(shown.contains(&format!("amqps://{}:***@", parts.user)), "{shown}");
    // rustls's words for a peer that answers TLS with AMQP.
    assert!(shown.contains("corrupt message"), "{shown}");
}

#[tokio::test]
async fn amqp_and_amqps_urls_to_a_silent_peer_fail_at_the_connect_timeout_instead_of_hanging() {
    // Accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let keep = std::thread::spawn(move || silent.incoming().flatten().collect::<Vec<_>>());
    let limit = Duration::from_secs(2);
    for scheme in ["amqp", "amqps"] {
        let secret = format!("Secret{}", uuid::Uuid::new_v4().simple());
        let url = format!("{scheme}://guest:{secret}@127.0.0.1:{port}/%2f");
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(Duration::from_secs(60), Rpc::builder().with_connect_timeout(limit).connect(&url))
                .await;
        let err = outcome.unwrap_or_else(|_| panic!("{scheme}: connect to a silent peer hung for 60 s")).unwrap_err();
        let took = started.elapsed();
        println!("{scheme} to a silent peer: {took:?}: {err}");
        assert!(
            matches!(&err, rpc::amqp::Error::ConnectTimeout { timeout, .. } if *timeout == limit),
            "expected rpc::amqp::Error::ConnectTimeout {{ timeout, .. }} if *timeout == limit, got {err:?}"
        );
        assert!(took >= limit && took < limit + Duration::from_secs(5), "{took:?}");
        let shown = format!("{err} | {err:?}");
        assert!(!shown.contains(&secret) && shown.contains("guest:***@"), "{shown}");
    }
    assert_eq!(rpc::amqp::RpcConfig::default().connect_timeout, rpc::amqp::config::DEFAULT_CONNECT_TIMEOUT);
    drop(keep);
}

/// The child of the TLS test: connects with `amqps://` (trusting only the test CA, through
/// `SSL_CERT_FILE`), serves and calls a method, and prints `tls ok <calls>`.
async fn tls_client() {
    let tls_url = env_required("RPC_TLS_URL");
    let rpc = Rpc::connect(&tls_url).await.expect("amqps:// connect through the TLS proxy");
    let method = unique("rel-tls");
    rpc.register_async(&method, |p: Probe| async move { Ok::<_, HandlerError>(p.t * 2.0) }).await.unwrap();
    let mut ok = 0;
    for i in 0..20 {
        let v: f64 = rpc.call(&method, kwargs! { "t" => i }).await.expect("call over TLS");
        assert_eq!(v, f64::from(i) * 2.0);
        ok += 1;
    }
    rpc.close().await.unwrap();
    delete_queue(&method).await;
    println!("tls ok {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_through_a_tls_terminating_proxy_reaches_the_broker_and_an_untrusted_certificate_is_refused() {
    const TEST: &str =
        "amqps_through_a_tls_terminating_proxy_reaches_the_broker_and_an_untrusted_certificate_is_refused";
    if let Some(role) = child_role() {
        return play(&role).await;
    }
    let pki = common_amqp::tls::TestPki::generate();
    let parts = UrlParts::of(&url());
    let upstream =
        std::net::ToSocketAddrs::to_socket_addrs(&(parts.host.as_str(), parts.port)).unwrap().next().unwrap();
    let (port, stats) = common_amqp::tls::start_proxy(&pki, upstream);
    let mut tls = parts.clone();
    (tls.host, tls.port) = ("localhost".into(), port);

    // Trusting the test CA (and nothing else): works end to end.
    let mut child = RoleProcess::spawn(
        TEST,
        "tls-client",
        &[
            ("RPC_TLS_URL", tls.to_url("amqps")),
            ("SSL_CERT_FILE", pki.ca().display().to_string()),
            ("SSL_CERT_DIR", String::new()),
        ],
        false,
    );
    let line = child.expect_line("tls ok ", Duration::from_secs(120)).await;
    assert_eq!(line, "tls ok 20");
    assert!(child.finish(Duration::from_secs(30)).await.success());
    assert!(stats.handshakes.load(Ordering::SeqCst) >= 1);
    assert!(stats.bytes_to_broker.load(Ordering::SeqCst) > 0);
    let version = stats.last_version.lock().unwrap().clone();
    println!("amqps through the proxy: {} handshake(s), {version:?}", stats.handshakes.load(Ordering::SeqCst));

    // In process, without touching the environment: a connection made with lapin's builder
    // and the CA as an extra trusted certificate, handed to `Rpc::create` (docs/AMQP.md).
    let tls_config = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(std::fs::read_to_string(pki.ca()).expect("ca.pem")),
    };
    let conn = lapin::DefaultConnectionBuilder::new()
        .expect("lapin runtime")
        .with_uri_str(tls.to_url("amqps"))
        .with_tls_config(tls_config)
        .connect()
        .await
        .expect("amqps:// with a custom CA through lapin's builder");
    let over_tls = Rpc::create(conn.create_channel().await.unwrap()).await.unwrap();
    let method = unique("rel-tls-create");
    over_tls.register_async(&method, |p: Probe| async move { Ok::<_, HandlerError>(p.t + 1.0) }).await.unwrap();
    assert_eq!(over_tls.call::<f64>(&method, kwargs! { "t" => 41 }).await.unwrap(), 42.0);
    over_tls.close().await.unwrap();
    conn.close(200, "OK".into()).await.unwrap();
    delete_queue(&method).await;
    assert!(stats.handshakes.load(Ordering::SeqCst) >= 2);

    // This process trusts the usual roots only: the test CA's certificate is refused, clearly.
    let secret = format!("Secret{}", uuid::Uuid::new_v4().simple());
    tls.password = secret.clone();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(60), Rpc::connect(&tls.to_url("amqps"))).await;
    let err = outcome.expect("must not hang").unwrap_err();
    let shown = format!("{err} | {err:?}");
    println!("amqps with an untrusted certificate: {:?}: {err}", started.elapsed());
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");
    assert!(!shown.contains(&secret), "{shown}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------
// §7. Replies the broker cannot carry; passwords on the command line.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calculate_call_with_an_eight_megabyte_operator_gets_one_short_error_and_the_server_keeps_its_link() {
    let connection_name = unique("rel-huge-op");
    let server = Rpc::builder().with_connection_name(&connection_name).connect(&url()).await.expect("server connects");
    server.serve(services::Calculator).await.expect("serve the calculator");
    let reply_queue = server.reply_queue();
    let client = Rpc::connect(&url()).await.expect("client connects");
    // 8,000,000 bytes, under the 8 MiB limit, carried as they are by MessagePack; quoted with
    // `{:?}` in the error message, each becomes the 6 characters `\u{1f}`.
    let op = "\u{1f}".repeat(8_000_000);
    let options = CallOptions::new().with_deadline(Duration::from_secs(60));
    let started = Instant::now();
    let outcome =
        client.call_with::<f64>("calculator.calculate", kwargs! { "a" => 1, "op" => op, "b" => 2 }, options).await;
    let took = started.elapsed();
    let err = match outcome {
        Ok(value) => panic!("expected an error for an unknown operator, got {value}"),
        Err(e) => e,
    };
    let shown = err.to_string();
    let head: String = shown.chars().take(300).collect();
    let code = match &err {
        RpcError::Handler { code: Some(code), .. } => code.clone(),
        _ => panic!("expected a handler error, got {} bytes: {head}", shown.len()),
    };
    // `reply_too_large` while the example's message quotes the whole operator; a bounded
    // quote gives the operator's own error.
    assert!(code == "reply_too_large" || code == "unknown_operator", "code {code}: {head}");
    assert!(shown.len() < 4096, "a short error, got {} bytes: {head}", shown.len());
    assert!(took < Duration::from_secs(30), "answered after {took:?}");
    assert_eq!(server.reply_queue(), reply_queue, "the server kept its link");
    assert_eq!(broker_connections(&connection_name).len(), 1, "one server connection, never reconnected");
    let (counts, acked) =
        wait_for_counts("calculator.calculate", Duration::from_secs(10), |c| c.ready == 0 && c.unacked == 0).await;
    assert!(acked, "the request was acked, not requeued: {counts:?}");
    let four = client.call::<f64>("calculator.calculate", kwargs! { "a" => 2, "op" => "+", "b" => 2 }).await;
    assert_eq!(four.unwrap(), 4.0, "the server still serves");
    println!(
        "huge operator: {code} after {took:?}, {} bytes of error text ({shown}); this process's peak RSS {} MiB",
        shown.len(),
        vm_hwm_kb(std::process::id()) / 1024
    );
    client.close().await.expect("client closes");
    server.close().await.expect("server closes");
}

#[tokio::test]
async fn the_client_example_never_prints_the_password_whatever_its_characters() {
    let core = format!("Pw{}", uuid::Uuid::new_v4().simple());
    let parts = UrlParts::of(&url());
    // Raw '/', '#', '?', '@' (the URL then means something else to a parser), and an encoded
    // '@' (the broker refuses the login).
    let passwords = [
        format!("AbC+/{core}="),
        format!("a#{core}"),
        format!("{core}?x=1"),
        format!("p%40{core}"),
        format!("{core}@x"),
    ];
    for password in passwords {
        let mut with = parts.clone();
        with.password = password.clone();
        let rabbitmq_url = with.to_url("amqp");
        let out = tokio::process::Command::new(env!("CARGO"))
            .args(["run", "--quiet", "--example", "client", "--"])
            .args(["--amqp", "--timeout", "10", "calculator.calculate", "a=1", "op=+", "b=2"])
            .env("RABBITMQ_URL", &rabbitmq_url)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .await
            .expect("cargo run --example client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("client example with password {password:?}: {}", stderr.lines().last().unwrap_or_default());
        assert_eq!(out.status.code(), Some(1), "a failed call exits 1; stdout {stdout:?}, stderr {stderr:?}");
        assert!(
            !stdout.contains(&core) && !stderr.contains(&core),
            "the password shows: stdout {stdout:?}, stderr {stderr:?}"
        );
        let redacted = format!("{}:***@", parts.user);
        assert!(stderr.contains("ERROR ") && stderr.contains(&redacted), "stderr {stderr:?}");
    }
}

/// A RabbitMQ node of the test's own (`scripts/rabbitmq-node.sh`): its own name, port and
/// data, so its configuration cannot touch the shared broker. Stopped and removed when
/// dropped, whether the test passed or not.
struct PrivateNode {
    name: String,
    url: String,
}

impl PrivateNode {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-node.sh")
    }

    /// Starts a node with `config` lines added to its `rabbitmq.conf`.
    fn start(config: &[&str]) -> PrivateNode {
        let id = uuid::Uuid::new_v4();
        // The guard exists before the node does: a start that fails halfway is cleaned up too.
        let mut node = PrivateNode { name: format!("rpc-mms-{}", &id.simple().to_string()[..12]), url: String::new() };
        let mut tried = Vec::new();
        for attempt in 0..5u128 {
            // AMQP on PORT, Erlang distribution on PORT + 20000: both must be free.
            let port = 30_000 + u16::try_from((id.as_u128() >> (attempt * 16)) % 15_000).unwrap_or(0);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
                || std::net::TcpListener::bind(("127.0.0.1", port + 20_000)).is_err()
            {
                continue;
            }
            let out = std::process::Command::new("bash")
                .arg(Self::script())
                .args(["start", &node.name, &port.to_string()])
                .args(config)
                .output()
                .expect("bash scripts/rabbitmq-node.sh");
            if out.status.success() {
                let stdout = String::from_utf8_lossy(&out.stdout);
                node.url = stdout.lines().last().unwrap_or_default().trim().to_owned();
                assert!(node.url.starts_with("amqp://"), "rabbitmq-node.sh printed {stdout:?}");
                return node;
            }
            tried.push((port, String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        panic!("no private RabbitMQ node could start: {tried:?}");
    }

    /// `rabbitmqctl` against this node.
    fn ctl(&self, args: &[&str]) -> String {
        let node = format!("{}@localhost", self.name);
        let mut all = vec!["-n", node.as_str()];
        all.extend_from_slice(args);
        rabbitmqctl(&all)
    }

    /// Its connections named `name`.
    fn connections(&self, name: &str) -> usize {
        let out = self.ctl(&["list_connections", "-q", "--no-table-headers", "client_properties"]);
        out.lines().filter(|line| line.contains(name)).count()
    }

    /// `(ready, unacked)` of queue `name`, once both are 0 or after 10 s.
    async fn settled_counts(&self, name: &str) -> (u64, u64) {
        let started = Instant::now();
        loop {
            let out = self.ctl(&[
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ]);
            let counts = out.lines().find_map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [queue, ready, unacked] if queue == name => {
                    Some((ready.parse().unwrap_or(u64::MAX), unacked.parse().unwrap_or(u64::MAX)))
                }
                _ => None,
            });
            let counts = counts.unwrap_or_else(|| panic!("no queue {name} on the private node: {out}"));
            if counts == (0, 0) || started.elapsed() > Duration::from_secs(10) {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let stopped = std::process::Command::new("bash").arg(Self::script()).args(["stop", &self.name]).output();
        if !stopped.as_ref().is_ok_and(|out| out.status.success()) {
            eprintln!("stopping the private node {} failed: {stopped:?}", self.name);
        }
    }
}

#[derive(Deserialize)]
struct Big {
    bytes: usize,
}

/// A server on `url` (its connection named `name`) whose `method` answers `bytes` bytes of
/// text; with the count of its runs.
async fn big_server(url: &str, name: &str, method: &str) -> (Rpc, Arc<AtomicUsize>) {
    let rpc = Rpc::builder()
        .with_connection_name(name)
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .connect(url)
        .await
        .expect("server connects to the private node");
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    rpc.register_async(method, move |b: Big| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, HandlerError>("x".repeat(b.bytes)) }
    })
    .await
    .expect("register");
    (rpc, runs)
}

/// Calls `method` for `bytes` bytes, which must fail with a handler error of `code` whose
/// text contains `says`; returns how long it took.
async fn expect_refusal(client: &Rpc, method: &str, bytes: usize, code: &str, says: &str) -> Duration {
    let started = Instant::now();
    let outcome = client.call::<String>(method, kwargs! { "bytes" => bytes }).await;
    let took = started.elapsed();
    match &outcome {
        Err(RpcError::Handler { code: Some(got), message, .. }) if got == code && message.contains(says) => {
            println!("{bytes} bytes from {method}: {code} after {took:?}: {message}");
        }
        Ok(text) => {
            panic!("{bytes} bytes from {method}: expected {code} ({says}), got a result of {} bytes", text.len())
        }
        Err(e) => panic!("{bytes} bytes from {method}: expected {code} ({says}), got {e:?}"),
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_broker_with_a_small_max_message_size_large_replies_become_short_errors_and_one_that_cost_the_link_is_poison(
) {
    let node = PrivateNode::start(&["max_message_size = 65536"]);
    let client =
        Rpc::builder().with_deadline(Duration::from_secs(30)).connect(&node.url).await.expect("client connects");

    // Server A: a 1 MB reply goes out on a channel of its own, which the broker closes; A keeps
    // its link, answers reply_too_large, and knows the broker's limit from then on.
    let (a_name, a_method) = (unique("rel-mms-a"), unique("rel-mms.big-a"));
    let (a, a_runs) = big_server(&node.url, &a_name, &a_method).await;
    let a_queue = a.reply_queue();
    expect_refusal(&client, &a_method, 1_000_000, "reply_too_large", "max_message_size of 65536 bytes").await;
    expect_refusal(&client, &a_method, 100_000, "reply_too_large", "reply limit of 65536 bytes").await;
    assert_eq!(a.reply_queue(), a_queue, "server A kept its link");
    assert_eq!(node.connections(&a_name), 1, "server A never reconnected");
    assert_eq!(a_runs.load(Ordering::SeqCst), 2, "each request ran once");

    // Server B: a 100 KB reply, small enough for the serving channel, is refused there: the
    // broker closes the channel, B reconnects, the request comes back redelivered and is
    // answered `poison` instead of running (and costing the link) again.
    let (b_name, b_method) = (unique("rel-mms-b"), unique("rel-mms.big-b"));
    let (b, b_runs) = big_server(&node.url, &b_name, &b_method).await;
    let b_queue = b.reply_queue();
    let took = expect_refusal(&client, &b_method, 100_000, "poison", "not run again").await;
    assert!(took < Duration::from_secs(20), "answered {took:?} after the call");
    assert_eq!(b_runs.load(Ordering::SeqCst), 1, "the redelivered request did not run again");
    assert!(b.wait_connected(Duration::from_secs(20)).await, "server B is back");
    assert_ne!(b.reply_queue(), b_queue, "server B lost its link once");
    let b_queue = b.reply_queue();
    expect_refusal(&client, &b_method, 100_000, "reply_too_large", "reply limit of 65536 bytes").await;
    assert_eq!(b.reply_queue(), b_queue, "and only once: it knows the broker's limit now");

    for (method, server) in [(&a_method, &a), (&b_method, &b)] {
        assert_eq!(node.settled_counts(method).await, (0, 0), "{method}: every request acked exactly once");
        let small = client.call::<String>(method, kwargs! { "bytes" => 10 }).await;
        assert_eq!(small.unwrap(), "x".repeat(10), "{method}: small replies still go through");
        server.close().await.expect("server closes");
    }
    client.close().await.expect("client closes");
}
