//! Security and limits: loopback defaults in the examples, only registered methods reachable,
//! every limit configurable, documented with its real default and held.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_to_their_extremes_mean_unlimited_and_never_panic_the_server() {
    let unlimited = Limits::default()
        .with_max_line(usize::MAX)
        .with_max_connections(usize::MAX)
        .with_read_timeout(Duration::MAX)
        .with_write_timeout(Duration::MAX)
        .with_linger(Duration::MAX)
        .with_shutdown_grace(Duration::MAX);
    let (tx, _) = mpsc::unbounded_channel();
    let config = ConsumerConfig::default().with_limits(unlimited.clone()).with_max_deadline(Duration::MAX);
    let consumer = Server::consumer(registry(tx, Arc::default()), config).await;
    let producer = Producer::new(
        vec![consumer.addr],
        ProducerConfig::default()
            .with_limits(unlimited)
            .with_max_deadline(Duration::MAX)
            .with_attempt_timeout(Duration::MAX)
            .with_connect_timeout(Duration::MAX)
            .with_backoff(Duration::MAX)
            .with_max_reply(usize::MAX),
    );
    let gateway = Server::producer(producer.clone()).await;
    for addr in [consumer.addr, gateway.addr] {
        assert_eq!(ask(addr, "calculator calculate 2 + 2\n").await, "4\n", "{addr}");
        // The error path lingers: with the client closing, it ends at once.
        assert_error(&within(10, exchange(addr, b"calculator\n", true)).await, "bad_request", "names no method");
        let line = format!("neural_net predict 1 {}0\n", "0".repeat(200_000));
        assert!(ask(addr, &line).await.starts_with("{\"class\":1"), "{addr}");
    }
    gateway.stop().await;
    consumer.stop().await;
}

/// The string literals of Rust source, comments skipped (enough for the examples: no raw
/// strings, no `'"'`).
fn string_literals(source: &str) -> Vec<String> {
    let (mut out, mut chars) = (Vec::new(), source.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                let mut literal = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => literal.extend(chars.next()),
                        '"' => break,
                        c => literal.push(c),
                    }
                }
                out.push(literal);
            }
            _ => {}
        }
    }
    out
}

const EXAMPLES: [(&str, &str); 8] = [
    ("consumer.rs", include_str!("../../examples/consumer.rs")),
    ("producer.rs", include_str!("../../examples/producer.rs")),
    ("client.rs", include_str!("../../examples/client.rs")),
    ("calculator.rs", include_str!("../../examples/calculator.rs")),
    ("amqp_rpc.rs", include_str!("../../examples/amqp_rpc.rs")),
    ("cli/mod.rs", include_str!("../../examples/cli/mod.rs")),
    ("services/calculator.rs", include_str!("../../rpc-testkit/src/services/calculator.rs")),
    ("services/neural_net.rs", include_str!("../../rpc-testkit/src/services/neural_net.rs")),
];

#[test]
fn the_examples_listen_on_loopback_by_default_and_name_no_wider_address() {
    for (file, source) in EXAMPLES {
        for literal in string_literals(source) {
            let host = literal.rsplit('@').next().unwrap_or(&literal);
            let host = host.split_once("://").map_or(host, |(_, rest)| rest);
            let host = host.split('/').next().unwrap_or(host);
            if let Ok(addr) = host.parse::<SocketAddr>() {
                assert!(addr.ip().is_loopback(), "{file}: {literal:?} is not a loopback address");
            }
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                assert!(ip.is_loopback(), "{file}: {literal:?} is not a loopback address");
            }
            assert!(!literal.contains("0.0.0.0") && !literal.contains("[::]"), "{file}: {literal:?}");
        }
        // Every listener binds a loopback literal or the `--listen` flag, nothing else: the
        // examples bind `--listen` through `cli::bind`, which binds what the flag resolves to.
        for (at, _) in source.match_indices("TcpListener::bind(") {
            let argument = &source[at + "TcpListener::bind(".len()..];
            let argument = &argument[..argument.find(')').unwrap()];
            assert!(
                (file == "cli/mod.rs" && argument == "addr")
                    || argument.trim_matches('"').parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback()),
                "{file}: binds {argument}"
            );
        }
        for (at, _) in source.match_indices("cli::bind(") {
            let argument = &source[at + "cli::bind(".len()..];
            let argument = &argument[..argument.find(')').unwrap()];
            // `--http` has no default: the producer binds it only where the user says.
            let http = file == "producer.rs" && argument == "\"--http\", target";
            assert!(argument == "\"--listen\", &cli.listen" || http, "{file}: binds {argument}");
        }
    }
    // The two servers' `--listen` defaults, as clap shows them in `--help`.
    for (file, port) in [("consumer.rs", 9001), ("producer.rs", 9000)] {
        let source = EXAMPLES.iter().find(|(f, _)| *f == file).unwrap().1;
        let field = source.find("listen: String").unwrap_or_else(|| panic!("{file} has no --listen flag"));
        let attribute = &source[source[..field].rfind("#[arg(").unwrap()..field];
        let default =
            string_literals(attribute).into_iter().next().unwrap_or_else(|| panic!("{file}: no default for --listen"));
        assert!(attribute.contains("default_value = "), "{file}: {attribute}");
        assert_eq!(default.parse::<SocketAddr>().unwrap(), SocketAddr::from(([127, 0, 0, 1], port)), "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_methods_are_reachable_directly_or_through_the_producer() {
    let endpoints = [Endpoint::start(Kind::Consumer).await, Endpoint::start(Kind::Producer).await];
    let known = |service: &str| -> Vec<&str> {
        match service {
            "calculator" => vec!["calculate"],
            "neural_net" => vec!["architecture", "predict"],
            _ => vec!["hold", "slow"],
        }
    };
    for ep in &endpoints {
        for line in [
            // `#[rpc(skip)]`, an inherent fn beside the service, a field.
            "probe helper",
            "probe internal",
            "probe started",
            // Constructors and trait methods of the example services.
            "neural_net new",
            "neural_net shared",
            "neural_net default",
            "neural_net fmt",
            "neural_net clone",
            "calculator default",
            "calculator info",
            "calculator call",
            // Generated client methods are not server methods either.
            "calculator new",
            "calculator with_timeout 1",
            "calculator transport",
        ] {
            let service = line.split(' ').next().unwrap();
            let reply = ask(ep.addr, &format!("{line}\n")).await;
            let json = assert_error(reply.as_bytes(), "unknown_method", "unknown method");
            let mut listed: Vec<&str> = json["known"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
            listed.sort();
            assert_eq!(listed, known(service), "{:?} {line}: {reply}", ep.kind);
        }
        assert!(!ep.helper_ran.load(Ordering::SeqCst), "{:?}: a method outside the RPC surface ran", ep.kind);
        // The registered ones answer.
        assert_eq!(ask(ep.addr, "probe hold 7 0\n").await, "7\n");
        ep.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_holds_its_configured_connection_cap_and_line_limit() {
    let (tx, mut notices) = mpsc::unbounded_channel();
    let consumer = Server::consumer(registry(tx, Arc::default()), ConsumerConfig::default()).await;
    let limits = Limits::default().with_max_connections(2).with_max_line(100);
    let producer = Producer::new(vec![consumer.addr], ProducerConfig::default().with_limits(limits));
    let gateway = Server::producer(producer).await;
    let addr = gateway.addr;
    // Exactly at the line limit is served; one byte more is refused.
    let at_limit = format!("probe hold 1 {}\n", "0".repeat(100 - "probe hold 1 ".len()));
    assert_eq!(ask(addr, &at_limit).await, "1\n");
    let over = format!("probe hold 1 {}\n", "0".repeat(101 - "probe hold 1 ".len()));
    assert_error(ask(addr, &over).await.as_bytes(), "bad_request", "longer than 100 bytes");
    // Two tasks in flight fill the cap; a third client waits 2 s for a slot, then is told.
    let busy: Vec<_> = (0..2).map(|_| tokio::spawn(async move { ask(addr, "probe slow 4000\n").await })).collect();
    for _ in 0..2 {
        assert!(matches!(within(10, notices.recv()).await, Some(Notice::Started(4000))));
    }
    let t = Instant::now();
    assert_error(
        ask(addr, "calculator calculate 2 + 2\n").await.as_bytes(),
        "overloaded",
        "too many connections (limit 2)",
    );
    assert!(t.elapsed() >= Duration::from_millis(1900), "told after {:?}", t.elapsed());
    for task in busy {
        assert_eq!(within(20, task).await.unwrap(), "4000\n");
    }
    assert_eq!(ask(addr, "calculator calculate 2 + 2\n").await, "4\n");
    gateway.stop().await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_client_trickling_its_line_is_evicted_like_a_silent_one() {
    for kind in [Kind::Consumer, Kind::Producer] {
        let ep = Endpoint::with_limits(kind, Limits::default().with_max_connections(1)).await;
        let connected = Instant::now();
        let stream = TcpStream::connect(ep.addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        // One byte every 100 ms: never silent, never done.
        let trickler = tokio::spawn(async move {
            for byte in b"calculator calculate 2 + 2".iter().cycle() {
                if write.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        assert_eq!(ask(ep.addr, "calculator calculate 1 + 0.5\n").await, "1.5\n", "{kind:?}");
        let (waited, held) = (t.elapsed(), connected.elapsed());
        let mut reply = Vec::new();
        let _ = within(10, read.read_to_end(&mut reply)).await;
        assert_error(&reply, "overloaded", "closed to make room");
        // It held the slot for at least 1 s before it could be evicted, and no longer than the
        // newcomer's 2 s wait for a slot.
        assert!(held >= Duration::from_secs(1), "{kind:?}: evicted after {held:?}");
        assert!(waited < Duration::from_secs(5), "{kind:?}: the newcomer waited {waited:?}");
        within(10, trickler).await.unwrap();
        ep.stop().await;
    }
}
