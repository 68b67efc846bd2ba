//! Any bytes, through a real consumer: a property over the whole server path (bytes → line →
//! registry → reply), beside the pure ones in `rpc-transport-tcp/tests/frame_props.rs`.

use super::*;

/// Request lines aimed at the real methods (and at names that do not exist), with arguments of
/// every shape and count, odd spacing and endings; and raw bytes.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let target = prop_oneof![
        4 => Just(("calculator", "calculate")),
        1 => Just(("neural_net", "predict")),
        1 => Just(("neural_net", "architecture")),
        1 => Just(("probe", "slow")),
        1 => Just(("probe", "hold")),
        1 => Just(("probe", "helper")),
        1 => Just(("calculator", "default")),
    ]
    .prop_map(|(s, m)| (s.to_owned(), m.to_owned()));
    let target = prop_oneof![4 => target, 1 => ("[^ \\x00-\\x1f\\x7f]{1,8}", "[^ \\x00-\\x1f\\x7f]{1,8}")];
    let arg = prop_oneof![
        3 => (-50i64..50).prop_map(|n| n.to_string()),
        2 => prop_oneof![Just("+"), Just("-"), Just("*"), Just("/"), Just("%")].prop_map(str::to_owned),
        1 => any::<f64>().prop_map(|f| f.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop_oneof![Just("null"), Just("[1,2]"), Just("{}"), Just("\"x\""), Just("1e999"), Just("-0"), Just("NaN"), Just("ERROR")]
            .prop_map(str::to_owned),
        1 => "[^ \\x00-\\x1f\\x7f]{1,10}",
    ];
    let separator = prop_oneof![3 => Just(" ".to_owned()), 1 => " {2,5}"];
    let word = (separator, arg);
    // Three arguments half the time: what `calculate` takes, so many calls get to run.
    let args = prop_oneof![proptest::collection::vec(word.clone(), 3..=3), proptest::collection::vec(word, 0..6)];
    let line = (target, args, " {0,3}", prop_oneof![Just("\n"), Just("\r\n"), Just("")]).prop_map(
        |((service, method), args, trailing, end)| {
            let mut line = format!("{service} {method}");
            for (sep, arg) in args {
                line.push_str(&sep);
                line.push_str(&arg);
            }
            line.push_str(&trailing);
            line.push_str(end);
            line.into_bytes()
        },
    );
    let number = prop_oneof![(-1000i64..1000).prop_map(|n| n.to_string()), any::<f64>().prop_map(|f| f.to_string())];
    let operator = prop_oneof![Just("+"), Just("-"), Just("*"), Just("/")];
    let calculation = (number.clone(), operator, number)
        .prop_map(|(a, op, b)| format!("calculator calculate {a} {op} {b}\n").into_bytes());
    prop_oneof![2 => calculation, 4 => line, 1 => proptest::collection::vec(any::<u8>(), 0..200)]
}

/// What `calculator calculate a op b` must answer, computed here, when `bytes` is one.
fn calculation(bytes: &[u8]) -> Option<f64> {
    let line = RequestLine::parse(bytes.strip_suffix(b"\n").unwrap_or(bytes)).ok()?;
    let [a, op, b] = &line.args[..] else { return None };
    if (line.service.as_str(), line.method.as_str()) != ("calculator", "calculate") {
        return None;
    }
    let (a, b): (f64, f64) = (a.parse().ok()?, b.parse().ok()?);
    match op.as_str() {
        "+" => Some(a + b),
        "-" => Some(a - b),
        "*" => Some(a * b),
        "/" => Some(a / b),
        _ => None,
    }
}

#[test]
fn any_bytes_sent_to_a_consumer_get_a_well_formed_reply_and_never_a_panic() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let helper_ran = Arc::new(AtomicBool::new(false));
    // A short handler deadline keeps `probe slow 39` from slowing the run; it is an answer too.
    let config = ConsumerConfig::default().with_max_deadline(Duration::from_millis(20));
    let server = runtime.block_on(Server::consumer(registry(tx, Arc::clone(&helper_ran)), config));
    let addr = server.addr;
    let documented = [
        "bad_request",
        "unknown_service",
        "unknown_method",
        "argument_count",
        "invalid_argument",
        "handler",
        "deadline_exceeded",
    ];
    let kinds = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(1000)
    });
    runner
        .run(&request_bytes(), |bytes| {
            let reply = runtime.block_on(async { within(30, exchange(addr, &bytes, true)).await });
            match frame::parse_reply(&reply, "t") {
                Ok(ParsedReply::Success(text)) => {
                    if let Some(expected) = calculation(&bytes) {
                        prop_assert_eq!(
                            text.parse::<f64>().ok(),
                            Some(expected),
                            "{:?}",
                            String::from_utf8_lossy(&bytes)
                        );
                    }
                    *kinds.lock().unwrap().entry("ok".into()).or_default() += 1;
                }
                Ok(ParsedReply::Error(e)) => {
                    prop_assert!(documented.contains(&e.kind()), "{bytes:?} got {e:?}");
                    *kinds.lock().unwrap().entry(e.kind().into()).or_default() += 1;
                }
                Err(e) => prop_assert!(false, "{bytes:?} got a malformed reply {reply:?}: {e}"),
            }
            Ok(())
        })
        .unwrap();
    let kinds = kinds.into_inner().unwrap();
    eprintln!("reply kinds over the generated requests: {kinds:?}");
    assert!(kinds.get("ok").is_some_and(|&n| n > 0), "no request succeeded: {kinds:?}");
    assert!(!helper_ran.load(Ordering::SeqCst), "a skipped method ran");
    runtime.block_on(server.stop());
}
