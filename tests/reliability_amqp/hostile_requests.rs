//! Bad input at a server: hostile requests each get their documented reply (or none), the
//! server keeps serving and leaves nothing unacked; 16 MB requests in both codecs.

use super::*;

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
