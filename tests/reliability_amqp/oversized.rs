//! Replies the broker cannot carry: a huge error comes back short and the server keeps its
//! link; against a broker with a small `max_message_size` (a private node), large replies
//! become short errors.

use super::*;
use rpc_testkit::node::PrivateNode;

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

/// The connections named `name` on `node`, a private node (`rpc_testkit::node::PrivateNode`:
/// its own name, port and data, so its configuration cannot touch the shared broker; removed
/// when dropped, whether the test passed or not).
fn connections(node: &PrivateNode, name: &str) -> usize {
    let out = node.rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "client_properties"]);
    out.lines().filter(|line| line.contains(name)).count()
}

/// `(ready, unacked)` of queue `name` on `node`, once both are 0 or after 10 s.
async fn settled_counts(node: &PrivateNode, name: &str) -> (u64, u64) {
    let started = Instant::now();
    loop {
        let (ready, unacked, _) =
            node.queue_counts(name).unwrap_or_else(|| panic!("no queue {name} on the private node"));
        let counts = (ready, unacked);
        if counts == (0, 0) || started.elapsed() > Duration::from_secs(10) {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    let node = PrivateNode::start_with(&["max_message_size = 65536"]);
    let client =
        Rpc::builder().with_deadline(Duration::from_secs(30)).connect(node.url()).await.expect("client connects");

    // Server A: a 1 MB reply goes out on a channel of its own, which the broker closes; A keeps
    // its link, answers reply_too_large, and knows the broker's limit from then on.
    let (a_name, a_method) = (unique("rel-mms-a"), unique("rel-mms.big-a"));
    let (a, a_runs) = big_server(node.url(), &a_name, &a_method).await;
    let a_queue = a.reply_queue();
    expect_refusal(&client, &a_method, 1_000_000, "reply_too_large", "max_message_size of 65536 bytes").await;
    expect_refusal(&client, &a_method, 100_000, "reply_too_large", "reply limit of 65536 bytes").await;
    assert_eq!(a.reply_queue(), a_queue, "server A kept its link");
    assert_eq!(connections(&node, &a_name), 1, "server A never reconnected");
    assert_eq!(a_runs.load(Ordering::SeqCst), 2, "each request ran once");

    // Server B: a 100 KB reply, small enough for the serving channel, is refused there: the
    // broker closes the channel, B reconnects, the request comes back redelivered and is
    // answered `poison` instead of running (and costing the link) again.
    let (b_name, b_method) = (unique("rel-mms-b"), unique("rel-mms.big-b"));
    let (b, b_runs) = big_server(node.url(), &b_name, &b_method).await;
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
        assert_eq!(settled_counts(&node, method).await, (0, 0), "{method}: every request acked exactly once");
        let small = client.call::<String>(method, kwargs! { "bytes" => 10 }).await;
        assert_eq!(small.unwrap(), "x".repeat(10), "{method}: small replies still go through");
        server.close().await.expect("server closes");
    }
    client.close().await.expect("client closes");
}
