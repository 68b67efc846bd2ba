//! Bad input: one table of cases, [`CASES`], run against a Consumer and against the Producer
//! (in front of two consumers). After every case the endpoint must still answer
//! `calculator calculate 2 + 2` with `4`.

use super::*;

type CaseFuture = Pin<Box<dyn Future<Output = String> + Send>>;

/// One hostile input: what the client does, and what it must get. `run` asserts and returns a
/// note (measurements) for the report.
struct Case {
    name: &'static str,
    /// Measures memory or opens thousands of sockets: runs holding [`HEAVY`].
    heavy: bool,
    run: fn(Arc<Endpoint>) -> CaseFuture,
}

/// Every case, in one list, for both endpoints.
const CASES: &[Case] = &[
    Case { name: "an empty line", heavy: false, run: |ep| Box::pin(empty_line(ep)) },
    Case { name: "only spaces", heavy: false, run: |ep| Box::pin(only_spaces(ep)) },
    Case { name: "runs of spaces between tokens", heavy: false, run: |ep| Box::pin(runs_of_spaces(ep)) },
    Case { name: "other whitespace between tokens", heavy: false, run: |ep| Box::pin(other_whitespace(ep)) },
    Case { name: "an unknown class or method", heavy: false, run: |ep| Box::pin(unknown_names(ep)) },
    Case { name: "a class name alone", heavy: false, run: |ep| Box::pin(class_alone(ep)) },
    Case { name: "too few or too many arguments", heavy: false, run: |ep| Box::pin(wrong_argument_count(ep)) },
    Case { name: "undecodable arguments", heavy: false, run: |ep| Box::pin(undecodable_arguments(ep)) },
    Case { name: "invalid UTF-8", heavy: false, run: |ep| Box::pin(invalid_utf8(ep)) },
    Case { name: "NUL bytes", heavy: false, run: |ep| Box::pin(nul_bytes(ep)) },
    Case { name: "an HTTP request", heavy: false, run: |ep| Box::pin(http_request(ep)) },
    Case { name: "10 MB without a newline", heavy: true, run: |ep| Box::pin(ten_megabytes_without_newline(ep)) },
    Case { name: "a client that sends nothing", heavy: false, run: |ep| Box::pin(silent_client(ep)) },
    Case { name: "half a line, then a stall", heavy: false, run: |ep| Box::pin(half_line_then_stall(ep)) },
    Case { name: "a line trickled a byte at a time", heavy: false, run: |ep| Box::pin(trickle(ep)) },
    Case { name: "a reset before reading the reply", heavy: false, run: |ep| Box::pin(reset_before_reply(ep)) },
    Case { name: "2,000 idle connections", heavy: true, run: |ep| Box::pin(two_thousand_idle_connections(ep)) },
];

async fn empty_line(ep: Arc<Endpoint>) -> String {
    for bytes in [&b"\n"[..], b"\r\n"] {
        assert_error(&exchange(ep.addr, bytes, false).await, "bad_request", "empty request");
    }
    // A client that connects and closes its sending side at once sent an empty request.
    assert_error(&exchange(ep.addr, b"", true).await, "bad_request", "empty request");
    "bad_request: empty request".into()
}

async fn only_spaces(ep: Arc<Endpoint>) -> String {
    for bytes in [&b" \n"[..], b"          \n", b"   \r\n", b"    "] {
        assert_error(&exchange(ep.addr, bytes, true).await, "bad_request", "empty request");
    }
    "bad_request: empty request".into()
}

async fn runs_of_spaces(ep: Arc<Endpoint>) -> String {
    // PROTOCOL.md: tokens are separated by runs of ASCII spaces; outer spaces are ignored.
    for line in [
        "calculator  calculate 2 + 2\n",
        "   calculator     calculate   2    +     2    \n",
        "calculator calculate 2 + 2   \r\n",
    ] {
        assert_eq!(ask(ep.addr, line).await, "4\n", "{line:?}");
    }
    // A run of spaces is one separator, never an empty argument (`predict` takes them all).
    assert!(ask(ep.addr, "neural_net  predict  1  0  \n").await.starts_with("{\"class\":1,"));
    let wide = format!(
        "calculator{}calculate{}1{}+{}2\n",
        " ".repeat(1000),
        " ".repeat(1000),
        " ".repeat(1000),
        " ".repeat(1000)
    );
    assert_eq!(ask(ep.addr, &wide).await, "3\n");
    "the same request as single spaces".into()
}

async fn other_whitespace(ep: Arc<Endpoint>) -> String {
    // A tab is a control character: refused, not guessed at.
    assert_error(
        &exchange(ep.addr, b"calculator\tcalculate 2 + 2\n", false).await,
        "bad_request",
        "control character 0x09",
    );
    // A lone CR inside the line too.
    assert_error(
        &exchange(ep.addr, b"calculator calculate 2\r+ 2\n", false).await,
        "bad_request",
        "control character 0x0d",
    );
    // A no-break space is an ordinary token character: "2\u{a0}+" is one argument.
    let reply = ask(ep.addr, "calculator calculate 2\u{a0}+ 2\n").await;
    let json = assert_error(reply.as_bytes(), "argument_count", "expected 3 arguments");
    assert_eq!(json["got"], 2, "{reply}");
    "tab and CR: bad_request; U+00A0 is part of a token".into()
}

async fn unknown_names(ep: Arc<Endpoint>) -> String {
    let reply = ask(ep.addr, "nosuch calculate 2 + 2\n").await;
    let json = assert_error(reply.as_bytes(), "unknown_service", "unknown service 'nosuch'");
    assert_eq!(json["known"], serde_json::json!(["calculator", "neural_net", "probe"]), "{reply}");
    let reply = ask(ep.addr, "calculator sqrt 2\n").await;
    let json = assert_error(reply.as_bytes(), "unknown_method", "unknown method 'sqrt'");
    assert_eq!(json["known"], serde_json::json!(["calculate"]), "{reply}");
    // Names are exact: no case folding, no qualified forms.
    for line in ["Calculator calculate 2 + 2\n", "calculator.calculate 2 + 2\n"] {
        assert_error(ask(ep.addr, line).await.as_bytes(), "unknown_service", "unknown service");
    }
    for line in ["calculator Calculate 2 + 2\n", "calculator calculator::calculate 2 + 2\n"] {
        assert_error(ask(ep.addr, line).await.as_bytes(), "unknown_method", "unknown method");
    }
    "unknown_service / unknown_method, listing the known names".into()
}

async fn class_alone(ep: Arc<Endpoint>) -> String {
    assert_error(&exchange(ep.addr, b"calculator\n", false).await, "bad_request", "names no method");
    "bad_request: names no method".into()
}

async fn wrong_argument_count(ep: Arc<Endpoint>) -> String {
    for (line, expected, got) in [
        ("calculator calculate\n", 3, 0),
        ("calculator calculate 2 +\n", 3, 2),
        ("calculator calculate 2 + 2 2\n", 3, 4),
        ("neural_net architecture now\n", 0, 1),
        ("probe slow\n", 1, 0),
    ] {
        let reply = ask(ep.addr, line).await;
        let json = assert_error(reply.as_bytes(), "argument_count", "expected");
        assert_eq!((json["expected"].as_u64(), json["got"].as_u64()), (Some(expected), Some(got)), "{line:?}: {reply}");
    }
    "argument_count with expected and got".into()
}

async fn undecodable_arguments(ep: Arc<Endpoint>) -> String {
    for (line, param) in [
        ("calculator calculate two + 2\n", "a"),
        ("calculator calculate 2 + 0x10\n", "b"),
        ("calculator calculate 2 + [2]\n", "b"),
        ("neural_net predict 1 zero\n", "inputs"),
        ("probe slow -5\n", "ms"),
        ("probe slow 99999999999999999999999\n", "ms"),
        ("probe hold 1 {\"ms\":1}\n", "ms"),
    ] {
        let reply = ask(ep.addr, line).await;
        let json = assert_error(reply.as_bytes(), "invalid_argument", &format!("'{param}'"));
        assert_eq!(json["param"], param, "{line:?}: {reply}");
    }
    // Decodable but outside what the method accepts: its own error, not a crash.
    assert_error(ask(ep.addr, "calculator calculate 1e999 + 1\n").await.as_bytes(), "handler", "non_finite");
    assert_error(ask(ep.addr, "calculator calculate NaN + 1\n").await.as_bytes(), "handler", "non_finite");
    assert_error(ask(ep.addr, "neural_net predict 1 inf\n").await.as_bytes(), "handler", "invalid_input");
    "invalid_argument naming the parameter; handler errors for out-of-range values".into()
}

async fn invalid_utf8(ep: Arc<Endpoint>) -> String {
    for bytes in [
        &b"calculator calculate \xff\xfe + 2\n"[..],
        b"\xc0\xaf\n",                              // an overlong encoding of '/'
        b"calculator calculate \xed\xa0\x80 + 2\n", // a UTF-16 surrogate
        b"calculator calculate 2 + 2\xe2\x82\n",    // truncated at the end of the line
    ] {
        assert_error(&exchange(ep.addr, bytes, false).await, "bad_request", "not valid UTF-8");
    }
    "bad_request: not valid UTF-8 (with the offset)".into()
}

async fn nul_bytes(ep: Arc<Endpoint>) -> String {
    assert_error(
        &exchange(ep.addr, b"calculator calculate 2\0 + 2\n", false).await,
        "bad_request",
        "control character 0x00 at offset 22",
    );
    assert_error(&exchange(ep.addr, b"\0\0\0\0\n", false).await, "bad_request", "control character 0x00 at offset 0");
    assert_error(&exchange(ep.addr, &[0u8; 4096], true).await, "bad_request", "control character 0x00");
    // Bytes after the request line are not part of the request, NULs included.
    assert_eq!(exchange(ep.addr, b"calculator calculate 2 + 2\n\0\0\0\0", false).await, b"4\n");
    "bad_request: control character 0x00".into()
}

async fn http_request(ep: Arc<Endpoint>) -> String {
    let get = exchange(ep.addr, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n", false).await;
    assert_error(&get, "unknown_service", "unknown service 'GET'");
    let post = b"POST /calculator/calculate HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n2 + 2\r\n\r\n";
    assert_error(&exchange(ep.addr, post, false).await, "unknown_service", "unknown service 'POST'");
    // A TLS ClientHello: binary, refused before anything else looks at it.
    let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    assert_error(&exchange(ep.addr, hello, true).await, "bad_request", "not valid UTF-8 (invalid byte at offset 8)");
    "unknown_service 'GET' / 'POST'; TLS hello: bad_request".into()
}

async fn ten_megabytes_without_newline(ep: Arc<Endpoint>) -> String {
    const FLOODS: usize = 8;
    const SIZE: usize = 10 * 1024 * 1024;
    let memory = Memory::start();
    let started = Instant::now();
    let mut floods = JoinSet::new();
    for _ in 0..FLOODS {
        let addr = ep.addr;
        floods.spawn(async move { flood(addr, SIZE).await });
    }
    let mut total = 0;
    while let Some(reply) = floods.join_next().await {
        let (reply, sent) = reply.unwrap();
        assert_error(&reply, "bad_request", "request line longer than 65536 bytes");
        assert!(sent > frame::DEFAULT_MAX_LINE, "only {sent} bytes went out");
        total += sent;
    }
    let elapsed = started.elapsed();
    let growth = memory.peak_growth_kib();
    // Buffering the floods would take 80 MiB; the server keeps at most max_line + 1 bytes and
    // one 8 KiB drain buffer per connection.
    assert!(growth < 12 * 1024, "peak RSS rose by {} during {FLOODS} x 10 MiB floods", mib(growth));
    format!(
        "{FLOODS} concurrent 10 MiB floods ({} MiB sent) answered and drained in {elapsed:.2?}; peak RSS +{} (VmHWM {})",
        total >> 20,
        mib(growth),
        mib(status_kib("VmHWM"))
    )
}

/// Sends `size` bytes of `a` with no newline from one reused 64 KiB chunk (so the client's own
/// memory does not count), then closes its sending side; returns the reply and the bytes that
/// went out.
async fn flood(addr: SocketAddr, size: usize) -> (Vec<u8>, usize) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            let n = chunk.len().min(size - sent);
            if write.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        let _ = write.shutdown().await;
        sent
    });
    let mut reply = Vec::new();
    within(60, read.read_to_end(&mut reply)).await.expect("reading the reply");
    let sent = within(60, writer).await.unwrap();
    (reply, sent)
}

/// The documented answer to a client that did not finish its request in time.
fn assert_read_timeout(reply: &[u8], elapsed: Duration) {
    let secs = TABLE_READ_TIMEOUT.as_secs();
    assert_error(reply, "bad_request", &format!("no complete request within {secs} s"));
    assert!(elapsed >= TABLE_READ_TIMEOUT - Duration::from_millis(100), "answered after {elapsed:?}");
    assert!(elapsed < TABLE_READ_TIMEOUT + Duration::from_secs(10), "answered after {elapsed:?}");
}

async fn silent_client(ep: Arc<Endpoint>) -> String {
    let started = Instant::now();
    let mut stream = TcpStream::connect(ep.addr).await.unwrap();
    let mut reply = Vec::new();
    within(30, stream.read_to_end(&mut reply)).await.unwrap();
    assert_read_timeout(&reply, started.elapsed());
    format!("bad_request after {:.2?}", started.elapsed())
}

async fn half_line_then_stall(ep: Arc<Endpoint>) -> String {
    let started = Instant::now();
    let mut stream = TcpStream::connect(ep.addr).await.unwrap();
    stream.write_all(b"probe slow 1").await.unwrap();
    let mut reply = Vec::new();
    within(30, stream.read_to_end(&mut reply)).await.unwrap();
    assert_read_timeout(&reply, started.elapsed());
    // The partial request never ran.
    assert!(ep.notices.lock().await.try_recv().is_err(), "a partial line was executed");
    format!("bad_request after {:.2?}; nothing ran", started.elapsed())
}

async fn trickle(ep: Arc<Endpoint>) -> String {
    let started = Instant::now();
    let stream = TcpStream::connect(ep.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // One byte every 250 ms: 26 bytes would take 6.5 s, past the 3 s deadline.
        for byte in b"calculator calculate 2 + 2\n" {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        write
    });
    let mut reply = Vec::new();
    within(30, read.read_to_end(&mut reply)).await.unwrap();
    let answered = started.elapsed();
    assert_read_timeout(&reply, answered);
    drop(within(30, writer).await.unwrap());
    format!("bad_request after {answered:.2?}: trickling does not extend the deadline")
}

async fn reset_before_reply(ep: Arc<Endpoint>) -> String {
    // During a call: the reset arrives while the handler runs.
    let mut stream = TcpStream::connect(ep.addr).await.unwrap();
    stream.write_all(b"probe slow 300\n").await.unwrap();
    assert_eq!(ep.notice().await, Notice::Started(300));
    reset_on_close(&stream);
    drop(stream);
    // Right after sending: the reply is not even computed yet.
    for line in [&b"calculator calculate 2 + 2\n"[..], b"neural_net predict 1 0\n", b"calculator calcu"] {
        let mut stream = TcpStream::connect(ep.addr).await.unwrap();
        stream.write_all(line).await.unwrap();
        reset_on_close(&stream);
        drop(stream);
    }
    // A reset with unread request bytes beyond the line.
    let mut stream = TcpStream::connect(ep.addr).await.unwrap();
    stream.write_all(b"calculator calculate 2 + 2\nmore bytes the server never reads").await.unwrap();
    reset_on_close(&stream);
    drop(stream);
    // The reset cancels the call: the handler is dropped before its end (its `Finished`
    // never comes), and nothing stays in flight.
    let finished = tokio::time::timeout(Duration::from_millis(1000), ep.notice()).await;
    assert!(finished.is_err(), "the call ran on after its client reset the connection: {finished:?}");
    ep.producer_settled().await;
    "the call was cancelled, its handler dropped; nothing left in flight".into()
}

async fn two_thousand_idle_connections(ep: Arc<Endpoint>) -> String {
    const IDLE: usize = 2000;
    const NORMAL: usize = 40;
    let memory = Memory::start();
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(within(30, TcpStream::connect(ep.addr)).await.expect("connect"));
    }
    let connected_in = started.elapsed();
    // Normal clients while the 2,000 are still open: 20 one after the other, then 20 at once.
    let mut latencies = Vec::with_capacity(NORMAL);
    for i in 0..NORMAL / 2 {
        let t = Instant::now();
        assert_eq!(ask(ep.addr, &format!("calculator calculate {i} + 0.5\n")).await, format!("{i}.5\n"));
        latencies.push(t.elapsed());
    }
    let mut burst = JoinSet::new();
    for i in NORMAL / 2..NORMAL {
        let addr = ep.addr;
        burst.spawn(async move {
            let t = Instant::now();
            let reply = ask(addr, &format!("calculator calculate {i} + 0.5\n")).await;
            (i, reply, t.elapsed())
        });
    }
    while let Some(done) = burst.join_next().await {
        let (i, reply, latency) = done.unwrap();
        assert_eq!(reply, format!("{i}.5\n"));
        latencies.push(latency);
    }
    latencies.sort();
    let (median, max) = (latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
    // Without eviction every slot stays taken for the 3 s read timeout and a waiting client is
    // turned away after 2 s; with it, a slot frees after about 1 s of silence.
    assert!(max < Duration::from_secs(5), "a normal client waited {max:?}");

    // Every idle connection is answered or closed, none is left hanging.
    let mut outcomes = JoinSet::new();
    for mut stream in idle {
        outcomes.spawn(async move {
            let mut reply = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut reply)).await;
            assert!(read.is_ok(), "an idle connection was never answered nor closed");
            let text = String::from_utf8_lossy(&reply).into_owned();
            if text.contains("closed to make room") {
                "evicted"
            } else if text.contains("too many connections") {
                "turned away"
            } else if text.contains("no complete request") {
                "timed out"
            } else {
                assert!(text.is_empty(), "unexpected reply to an idle connection: {text:?}");
                "closed"
            }
        });
    }
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    while let Some(outcome) = outcomes.join_next().await {
        *counts.entry(outcome.unwrap()).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), IDLE);
    format!(
        "{IDLE} idle connected in {connected_in:.2?}; {NORMAL} normal clients: median {median:.2?}, max {max:.2?}; \
         idle outcomes {counts:?}; peak RSS +{}",
        mib(memory.peak_growth_kib())
    )
}

/// Runs every case against `kind`, checking after each one that the endpoint still answers
/// the design document's request; reports every failing case at once.
async fn run_every_case(kind: Kind) {
    let ep = Arc::new(Endpoint::start(kind).await);
    let mut failures = Vec::new();
    for case in CASES {
        let heavy = if case.heavy { Some(HEAVY.lock().await) } else { None };
        let started = Instant::now();
        match tokio::spawn((case.run)(Arc::clone(&ep))).await {
            Ok(note) => eprintln!("[{kind:?}] {}: {note} ({:.2?})", case.name, started.elapsed()),
            Err(e) => failures.push(format!("{}: {}", case.name, panic_text(e))),
        }
        drop(heavy);
        let reply =
            tokio::time::timeout(Duration::from_secs(30), exchange(ep.addr, b"calculator calculate 2 + 2\n", false))
                .await;
        if !matches!(&reply, Ok(bytes) if bytes == b"4\n") {
            failures.push(format!("{}: afterwards `calculator calculate 2 + 2` got {reply:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "[{kind:?}] failing cases:\n{}", failures.join("\n"));
    assert!(!ep.helper_ran.load(Ordering::SeqCst), "a skipped method ran");
    ep.producer_settled().await;
    if let Some(producer) = &ep.producer {
        // Bad input is the client's fault: no consumer is ever blamed for it.
        let stats = producer.stats();
        assert!(stats.iter().all(|s| s.failures == 0 && !s.down), "{stats:?}");
        assert!(stats.iter().all(|s| s.served > 0), "{stats:?}");
    }
    ep.stop().await;
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => rpc::core::run::panic_message(payload.as_ref()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_documented_answer_from_a_consumer_which_keeps_serving() {
    run_every_case(Kind::Consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_documented_answer_from_the_producer_which_keeps_serving() {
    run_every_case(Kind::Producer).await;
}
