//! Server-side bounds that hold whatever the caller asks for.

mod common;

use std::time::{Duration, Instant};

use rpc_core::{kwargs, RpcError};
use rpc_transport_amqp::{CallOptions, Rpc};
use serde::Deserialize;

#[derive(Deserialize)]
struct Nap {
    ms: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stops_a_request_at_its_max_run_even_when_the_caller_would_wait_longer() {
    let url = common::url();
    let server =
        Rpc::builder().with_max_deadline(Duration::from_millis(300)).connect(&url).await.expect("server connects");
    let client = Rpc::connect(&url).await.expect("client connects");
    let method = common::unique("limits.nap");
    server
        .register_async(&method, |n: Nap| async move {
            tokio::time::sleep(Duration::from_millis(n.ms)).await;
            Ok::<_, std::convert::Infallible>(n.ms)
        })
        .await
        .expect("register");
    let options = CallOptions::new().with_deadline(Duration::from_secs(60));
    let started = Instant::now();
    let err = client.call_with::<u64>(&method, kwargs! {"ms" => 30_000}, options).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, RpcError::DeadlineExceeded { timeout_ms: 300, .. }),
        "expected RpcError::DeadlineExceeded {{ timeout_ms: 300, .. }}, got {err:?}"
    );
    assert!(took < Duration::from_secs(10), "the caller waited {took:?}");
    // A short request under the same server still succeeds.
    assert_eq!(client.call::<u64>(&method, kwargs! {"ms" => 1}).await.unwrap(), 1);
    client.close().await.expect("client closes");
    server.close().await.expect("server closes");
}

#[derive(Deserialize)]
struct Size {
    bytes: usize,
    error: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_becomes_a_short_reply_too_large_error_and_a_huge_error_message_is_cut_and_both_are_acked(
) {
    let url = common::url();
    let limit = 64 * 1024;
    let server = Rpc::builder().with_max_body_size(limit).connect(&url).await.expect("server connects");
    let client = Rpc::connect(&url).await.expect("client connects");
    let method = common::unique("limits.big");
    server
        .register_async(&method, |s: Size| async move {
            let text = "\"".repeat(s.bytes);
            if s.error {
                Err(rpc_core::HandlerError::new("big_error", text))
            } else {
                Ok(text)
            }
        })
        .await
        .expect("register");
    let reply_queue = server.reply_queue();
    for error in [true, false] {
        let what = if error { "error reply (handler, big_error)" } else { "result" };
        // Under the limit: through, whole.
        let small = client.call::<String>(&method, kwargs! {"bytes" => 1000, "error" => error}).await;
        match (&small, error) {
            (Err(RpcError::Handler { code: Some(code), message, .. }), true) => {
                assert_eq!((code.as_str(), message.len()), ("big_error", 1000), "{small:?}")
            }
            (Ok(text), false) => assert_eq!(text.len(), 1000),
            _ => panic!("a 1000-byte {what}: {small:?}"),
        }
        let err = client.call::<String>(&method, kwargs! {"bytes" => 200_000, "error" => error}).await.unwrap_err();
        let shown = err.to_string();
        // The first 300 characters, enough to see what came instead.
        let head: String = shown.chars().take(300).collect();
        if error {
            // A handler's own message is cut at its source (rpc-core bounds every error's
            // text), so its code reaches the caller, with the message's full length named.
            match &err {
                RpcError::Handler { code: Some(code), message, .. } => {
                    assert_eq!(code, "big_error", "{} bytes: {head}", shown.len());
                    assert!(message.ends_with("(cut; 200000 bytes in all)"), "{} bytes: {head}", shown.len());
                }
                _ => panic!("expected the handler's big_error, cut, got {} bytes: {head}", shown.len()),
            }
            assert!(shown.len() <= rpc_core::error::MAX_MESSAGE + 200, "the error is bounded: {} bytes", shown.len());
            continue;
        }
        // A result over the limit: a short error that says what and how large.
        match &err {
            RpcError::Handler { code: Some(code), .. } => {
                assert_eq!(code, "reply_too_large", "{} bytes: {head}", shown.len())
            }
            _ => panic!("expected reply_too_large for a large {what}, got {} bytes: {head}", shown.len()),
        }
        assert!(shown.contains(what) && shown.contains(&format!("the reply limit of {limit} bytes")), "{head}");
        assert!(shown.len() < 1024, "the error is short: {} bytes", shown.len());
    }
    assert_eq!(server.reply_queue(), reply_queue, "the server kept its link");
    assert_eq!(common::queue_state(&method).await, (0, 1), "every request acked");
    client.close().await.expect("client closes");
    server.close().await.expect("server closes");
}

/// A server that does not bound its replies (a hand-written one here): a reply over the
/// client's `max_body_size` fails its call with a protocol error naming the limit, undecoded,
/// and the client goes on taking in replies within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_clients_limit_fails_its_call_and_the_client_keeps_working() {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions};
    use lapin::types::FieldTable;

    let url = common::url();
    let client = Rpc::builder().with_max_body_size(4096).connect(&url).await.expect("client connects");
    let (_conn, channel) = common::channel().await;
    let name = common::unique("limits.big-reply");
    channel
        .queue_declare(name.as_str().into(), Default::default(), rpc_transport_amqp::wire::method_queue_arguments())
        .await
        .expect("declare");
    let mut requests = channel
        .basic_consume(name.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    // Answers `{"size": n}` with a string of n bytes.
    let server = tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let args: serde_json::Value = rmp_serde::from_slice(&request.data).expect("msgpack request");
            let size = args["size"].as_u64().expect("size") as usize;
            let body = rmp_serde::to_vec(&"x".repeat(size)).expect("encode");
            common::answer(&channel, &request, "application/msgpack", &body).await;
            request.ack(BasicAckOptions::default()).await.expect("ack");
        }
    });
    match client.call::<String>(&name, kwargs! {"size" => 100_000u64}).await {
        Err(RpcError::Protocol { message, .. }) => {
            assert!(message.contains("exceeds the limit of 4096 bytes"), "{message}");
        }
        other => panic!("a 100 kB reply under a 4 KiB limit gave {:?}", other.map(|s| s.len())),
    }
    assert_eq!(client.call::<String>(&name, kwargs! {"size" => 1000u64}).await.expect("a small reply").len(), 1000);
    assert_eq!(client.pending_calls(), 0);
    server.abort();
    client.close().await.expect("client closes");
}
