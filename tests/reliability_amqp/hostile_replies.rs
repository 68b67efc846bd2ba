//! Bad input at a client: unknown, duplicate and malformed replies are dropped, and every
//! concurrent call still gets its own result; a malformed reply fails its call at once.

use super::*;

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
