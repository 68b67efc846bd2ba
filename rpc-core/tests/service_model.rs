//! The service model through the in-memory transport: every argument shape, every error, the
//! typed client, the blocking pool and panics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rpc_core::{kwargs, Args, HandlerError, MemoryTransport, Registry, Reply, Request, RpcError, Transport};
use rpc_macros::rpc_service;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub struct Calculator;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "+")]
    Add,
    #[serde(rename = "*")]
    Mul,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("odd numbers are not allowed: {0}")]
pub struct OddError(i64);

/// A handler's own error type that serde can carry: the caller gets it back as this type.
#[derive(Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum LimitError {
    #[error("{value} is over the limit of {limit}")]
    TooLarge { value: u32, limit: u32 },
    #[error("zero is not allowed")]
    Zero,
}

/// The seed's calculator, plus shapes the tests need.
#[rpc_service]
impl Calculator {
    /// `calculator calculate 2 + 2`.
    pub fn calculate(a: f64, op: String, b: f64) -> Result<f64, HandlerError> {
        match op.as_str() {
            "+" => Ok(a + b),
            "-" => Ok(a - b),
            "*" => Ok(a * b),
            "/" if b == 0.0 => Err(HandlerError::new("division_by_zero", "division by zero")),
            "/" => Ok(a / b),
            other => Err(HandlerError::new("unknown_operator", format!("unknown operator {other:?}"))),
        }
    }

    /// Enum argument decoded from its name.
    pub fn apply(a: i64, op: Op, b: i64) -> i64 {
        match op {
            Op::Add => a + b,
            Op::Mul => a * b,
        }
    }

    /// Variadic last parameter.
    pub async fn stats(label: String, #[rpc(rest)] values: Vec<f64>) -> (String, Stats) {
        let count = values.len();
        let mean = if count == 0 { 0.0 } else { values.iter().sum::<f64>() / count as f64 };
        (label, Stats { count, mean })
    }

    /// JSON-decoded structured argument.
    pub fn total(values: Vec<i32>) -> i32 {
        values.iter().sum()
    }

    /// Optional parameter.
    pub fn greet(name: Option<String>) -> String {
        format!("hello {}", name.as_deref().unwrap_or("world"))
    }

    /// A handler error whose code is the type's name.
    pub fn even(n: i64) -> Result<i64, OddError> {
        if n % 2 == 0 {
            Ok(n)
        } else {
            Err(OddError(n))
        }
    }

    /// A handler error whose type is `Serialize`.
    pub fn limited(n: u32) -> Result<u32, LimitError> {
        match n {
            0 => Err(LimitError::Zero),
            n if n > 10 => Err(LimitError::TooLarge { value: n, limit: 10 }),
            n => Ok(n),
        }
    }

    #[rpc(name = "echo-text")]
    pub fn echo(text: String) -> String {
        text
    }

    /// A handler whose nested call failed.
    pub fn nested() -> Result<u8, RpcError> {
        Err(RpcError::Unavailable { target: "other.method".into(), reason: "all down".into() })
    }

    pub fn boom() -> u8 {
        panic!("the handler blew up")
    }

    pub async fn boom_async() -> u8 {
        panic!("async handler blew up")
    }

    pub fn sleep_sync(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    /// Holds a blocking-pool thread: marks gate `name` started, then waits (at most 10 s)
    /// until the test opens it. Tests wait for the start instead of guessing how long it takes.
    pub fn hold(name: String) -> String {
        let (lock, changed) = gates();
        let mut gates = lock.lock().unwrap();
        gates.entry(name.clone()).or_default().started = true;
        changed.notify_all();
        let (gates, _) = changed
            .wait_timeout_while(gates, Duration::from_secs(10), |g| !g.get(&name).is_some_and(|g| g.open))
            .unwrap();
        drop(gates);
        name
    }

    pub async fn sleep_async(ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    pub fn nothing() {}

    /// Cheap: runs on the runtime, not the pool.
    #[rpc(inline)]
    pub fn double(x: i64) -> i64 {
        x * 2
    }

    #[rpc(skip)]
    #[allow(dead_code)]
    fn helper() -> u8 {
        1
    }
}

/// State behind `&self`.
pub struct Counter {
    hits: AtomicU64,
}

#[rpc_service(name = "ctr")]
impl Counter {
    pub fn hit(&self) -> u64 {
        self.hits.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub async fn peek(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Whether a `hold` call started, and whether the test let it go.
#[derive(Default)]
struct Gate {
    started: bool,
    open: bool,
}

fn gates() -> &'static (Mutex<HashMap<String, Gate>>, Condvar) {
    static GATES: OnceLock<(Mutex<HashMap<String, Gate>>, Condvar)> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

/// Waits (at most 10 s) until a `hold` call of gate `name` runs.
async fn held(name: &str) {
    let waited = Instant::now();
    while !gates().0.lock().unwrap().get(name).is_some_and(|g| g.started) {
        assert!(waited.elapsed() < Duration::from_secs(10), "hold({name}) never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lets the `hold` call of gate `name` return.
fn release(name: &str) {
    let (lock, changed) = gates();
    lock.lock().unwrap().entry(name.to_owned()).or_default().open = true;
    changed.notify_all();
}

fn registry() -> Registry {
    Registry::new()
        .with(Calculator)
        .and_then(|r| r.with(Counter { hits: AtomicU64::new(0) }))
        .expect("distinct, unreserved service names")
}

fn text(tokens: &str) -> Args {
    Args::Text(tokens.split(' ').filter(|t| !t.is_empty()).map(str::to_owned).collect())
}

async fn call_text(service: &str, method: &str, tokens: &str) -> Result<String, RpcError> {
    let transport = MemoryTransport::new(registry());
    transport.call(Request::new(service, method, text(tokens))).await.map(Reply::into_text)
}

#[tokio::test]
async fn text_tokens_decode_by_parameter_type_and_result_renders_naturally() {
    assert_eq!(call_text("calculator", "calculate", "2 + 2").await.unwrap(), "4");
    assert_eq!(call_text("calculator", "calculate", "1 / 4").await.unwrap(), "0.25");
    assert_eq!(call_text("calculator", "apply", "3 * 5").await.unwrap(), "15");
    assert_eq!(call_text("calculator", "total", "[1,2,3]").await.unwrap(), "6");
    assert_eq!(call_text("calculator", "greet", "null").await.unwrap(), "hello world");
    assert_eq!(call_text("calculator", "greet", "ann").await.unwrap(), "hello ann");
    assert_eq!(call_text("calculator", "echo-text", "[not-json").await.unwrap(), "[not-json");
    assert_eq!(call_text("calculator", "nothing", "").await.unwrap(), "null");
}

#[tokio::test]
async fn a_rest_parameter_collects_all_remaining_tokens() {
    let out = call_text("calculator", "stats", "xs 0.5 1.0 0.25 0.25").await.unwrap();
    assert_eq!(out, r#"["xs",{"count":4,"mean":0.5}]"#);
    let out = call_text("calculator", "stats", "empty").await.unwrap();
    assert_eq!(out, r#"["empty",{"count":0,"mean":0.0}]"#);
}

#[tokio::test]
async fn named_values_decode_the_same_methods() {
    let t = MemoryTransport::new(registry());
    let r = t.call(Request::new("calculator", "calculate", kwargs! {"a" => 2, "op" => "+", "b" => 2.5})).await;
    assert_eq!(r.unwrap(), Reply::Value(json!(4.5)));
    let r = t.call(Request::new("calculator", "stats", kwargs! {"label" => "l", "values" => [1.0, 3.0]})).await;
    assert_eq!(r.unwrap(), Reply::Value(json!(["l", {"count": 2, "mean": 2.0}])));
    // An Option parameter may be left out of a named call.
    let r = t.call(Request::new("calculator", "greet", kwargs! {})).await;
    assert_eq!(r.unwrap(), Reply::Value(json!("hello world")));
}

#[tokio::test]
async fn unknown_service_lists_the_known_ones() {
    let err = call_text("calc", "calculate", "1 + 1").await.unwrap_err();
    assert!(
        matches!(&err, RpcError::UnknownService { service, known } if service == "calc" && known == &["calculator", "ctr"]),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "unknown service 'calc' (known: calculator, ctr)");
}

#[tokio::test]
async fn unknown_method_lists_the_known_ones_and_skipped_methods_are_unreachable() {
    for method in ["nope", "helper", "echo"] {
        let err = call_text("calculator", method, "").await.unwrap_err();
        match &err {
            RpcError::UnknownMethod { service, method: m, known } => {
                assert_eq!(service, "calculator");
                assert_eq!(m, method);
                assert!(known.contains(&"calculate".to_owned()) && known.contains(&"echo-text".to_owned()));
                assert!(!known.contains(&"helper".to_owned()));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn wrong_argument_count_names_expected_got_and_parameters() {
    let err = call_text("calculator", "calculate", "2 +").await.unwrap_err();
    assert!(matches!(&err, RpcError::ArgumentCount { expected: 3, got: 2, variadic: false, .. }), "{err:?}");
    assert_eq!(err.to_string(), "calculator.calculate: expected 3 arguments (a: f64, op: String, b: f64), got 2");
    let err = call_text("calculator", "calculate", "2 + 2 2").await.unwrap_err();
    assert!(matches!(&err, RpcError::ArgumentCount { got: 4, .. }), "{err:?}");
    let err = call_text("calculator", "stats", "").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "calculator.stats: expected at least 1 arguments (label: String, values...: Vec<f64>), got 0"
    );
}

#[tokio::test]
async fn an_undecodable_argument_names_parameter_type_and_token() {
    let err = call_text("calculator", "calculate", "2 + two").await.unwrap_err();
    match &err {
        RpcError::InvalidArgument { target, param, ty, value, .. } => {
            assert_eq!(
                (target.as_str(), param.as_str(), ty.as_str(), value.as_str()),
                ("calculator.calculate", "b", "f64", "two")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "calculator.calculate: argument 'b' (f64): invalid float literal: expected a number (f64), got \"two\""
    );
    let err = call_text("calculator", "apply", "1 ^ 2").await.unwrap_err();
    assert!(matches!(&err, RpcError::InvalidArgument { param, ty, .. } if param == "op" && ty == "Op"), "{err:?}");
    let err = call_text("calculator", "stats", "l 1 x").await.unwrap_err();
    assert!(matches!(&err, RpcError::InvalidArgument { param, .. } if param == "values"), "{err:?}");
}

#[tokio::test]
async fn named_calls_report_missing_unexpected_and_mistyped_arguments() {
    let t = MemoryTransport::new(registry());
    let err = t.call(Request::new("calculator", "calculate", kwargs! {"a" => 1, "op" => "+"})).await.unwrap_err();
    assert!(matches!(&err, RpcError::MissingArgument { param, ty, .. } if param == "b" && ty == "f64"), "{err:?}");
    let err = t
        .call(Request::new("calculator", "calculate", kwargs! {"a" => 1, "op" => "+", "b" => 1, "c" => 0}))
        .await
        .unwrap_err();
    assert!(matches!(&err, RpcError::UnexpectedArgument { name, .. } if name == "c"), "{err:?}");
    let err =
        t.call(Request::new("calculator", "calculate", kwargs! {"a" => "x", "op" => "+", "b" => 1})).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::InvalidArgument { param, value, .. } if param == "a" && value == "\"x\""),
        "{err:?}"
    );
}

#[tokio::test]
async fn handler_errors_carry_message_and_code() {
    let err = call_text("calculator", "calculate", "1 / 0").await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Handler { code: Some(c), message, .. } if c == "division_by_zero" && message == "division by zero"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "calculator.calculate: [division_by_zero] division by zero");
    let err = call_text("calculator", "even", "3").await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Handler { code: Some(c), message, .. } if c == "OddError" && message == "odd numbers are not allowed: 3"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_serializable_handler_error_comes_back_as_its_own_type_on_the_typed_client() {
    let client = CalculatorClient::new(MemoryTransport::new(registry()));
    let err = client.limited(11).await.expect_err("11 is over the limit");
    assert_eq!(err.downcast::<LimitError>(), Some(LimitError::TooLarge { value: 11, limit: 10 }), "{err:?}");
    assert_eq!(err.to_string(), "calculator.limited: [LimitError] 11 is over the limit of 10");
    let err = client.limited(0).await.expect_err("0 is refused");
    assert_eq!(err.downcast::<LimitError>(), Some(LimitError::Zero), "{err:?}");
    // The data survives the wire form every transport uses; other types do not match it, and
    // an error type that is not `Serialize` carries none.
    let back = RpcError::from_wire(&err.to_wire(), "calculator.limited");
    assert_eq!(back.downcast::<LimitError>(), Some(LimitError::Zero));
    assert_eq!(back.downcast::<Stats>(), None);
    let odd = client.even(3).await.expect_err("3 is odd");
    assert!(matches!(&odd, RpcError::Handler { data: None, .. }), "{odd:?}");
}

#[tokio::test]
async fn a_nested_calls_error_reaches_the_caller_as_this_handlers_error_not_as_its_own_kind() {
    let err = call_text("calculator", "nested", "").await.unwrap_err();
    match &err {
        RpcError::Handler { target, code: Some(code), message, .. } => {
            assert_eq!((target.as_str(), code.as_str()), ("calculator.nested", "unavailable"));
            assert!(message.contains("other.method"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_panicking_handler_returns_an_error_and_the_next_call_succeeds() {
    let t = MemoryTransport::new(registry());
    for method in ["boom", "boom_async"] {
        let err = t.call(Request::new("calculator", method, Args::Text(vec![]))).await.unwrap_err();
        assert!(matches!(&err, RpcError::Panic { message, .. } if message.contains("blew up")), "{err:?}");
        let ok = t.call(Request::new("calculator", "calculate", text("1 + 1"))).await.unwrap();
        assert_eq!(ok.into_text(), "2");
    }
}

#[tokio::test]
async fn a_deadline_ends_a_slow_call_with_deadline_exceeded() {
    let t = MemoryTransport::new(registry());
    let req = Request::new("calculator", "sleep_async", text("5000")).with_deadline(Duration::from_millis(50));
    let err = t.call(req).await.unwrap_err();
    assert!(matches!(&err, RpcError::DeadlineExceeded { timeout_ms: 50, .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_sync_handler_does_not_delay_an_async_handler() {
    let t = MemoryTransport::new(registry());
    let slow = tokio::spawn({
        let t = t.clone();
        async move { t.call(Request::new("calculator", "hold", text("sync-vs-async"))).await }
    });
    // The sync call runs on the pool, and stays there until released.
    held("sync-vs-async").await;
    let started = Instant::now();
    let fast = t.call(Request::new("calculator", "sleep_async", text("0"))).await.unwrap();
    let fast_took = started.elapsed();
    assert_eq!(fast.into_text(), "0");
    assert!(!slow.is_finished(), "the sync call should still be running");
    assert!(fast_took < Duration::from_millis(150), "async call waited {fast_took:?} behind the sync one");
    release("sync-vs-async");
    assert_eq!(slow.await.unwrap().unwrap().into_text(), "sync-vs-async");
}

#[tokio::test(flavor = "current_thread")]
async fn sync_handlers_do_not_block_even_a_single_threaded_runtime() {
    let t = MemoryTransport::new(registry());
    let slow = tokio::spawn({
        let t = t.clone();
        async move { t.call(Request::new("calculator", "hold", text("single-thread"))).await }
    });
    held("single-thread").await;
    let started = Instant::now();
    t.call(Request::new("ctr", "peek", text(""))).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(150));
    assert!(!slow.is_finished(), "the sync call should still be running");
    release("single-thread");
    slow.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_method_skips_the_blocking_pool_even_when_it_is_full() {
    let t = MemoryTransport::new(registry().with_blocking_pool(rpc_core::BlockingPool::new(1)));
    let busy = tokio::spawn({
        let t = t.clone();
        async move { t.call(Request::new("calculator", "hold", text("inline"))).await }
    });
    held("inline").await;
    let started = Instant::now();
    assert_eq!(t.call(Request::new("calculator", "double", text("21"))).await.unwrap().into_text(), "42");
    assert!(!busy.is_finished(), "the pool's only slot should still be busy");
    assert!(started.elapsed() < Duration::from_millis(200), "inline call waited for the pool: {:?}", started.elapsed());
    release("inline");
    busy.await.unwrap().unwrap();
    let info = t.registry().service("calculator").unwrap().info();
    assert!(!info.method("double").unwrap().blocking && info.method("sleep_sync").unwrap().blocking);
}

#[tokio::test]
async fn the_blocking_pool_bounds_concurrent_sync_handlers() {
    let registry = registry().with_blocking_pool(rpc_core::BlockingPool::new(2));
    let t = MemoryTransport::new(registry);
    let started = Instant::now();
    let calls = (0..4).map(|_| t.call(Request::new("calculator", "sleep_sync", text("100"))));
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    // 4 calls of 100 ms through 2 slots take two rounds.
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
}

#[tokio::test]
async fn typed_client_round_trips_every_argument_shape() {
    // The text shape of the same calls runs over a real Consumer in rpc-transport-tcp's tests.
    for transport in [MemoryTransport::new(registry())] {
        let calc = CalculatorClient::new(transport.clone());
        assert_eq!(calc.calculate(2.0, "+".into(), 2.0).await.unwrap(), 4.0);
        assert_eq!(calc.apply(6, Op::Mul, 7).await.unwrap(), 42);
        assert_eq!(calc.total(vec![1, 2, 3]).await.unwrap(), 6);
        assert_eq!(calc.greet(None).await.unwrap(), "hello world");
        assert_eq!(calc.greet(Some("bo".into())).await.unwrap(), "hello bo");
        let (label, stats) = calc.stats("s".into(), vec![1.0, 2.0, 6.0]).await.unwrap();
        assert_eq!((label.as_str(), stats), ("s", Stats { count: 3, mean: 3.0 }));
        assert_eq!(calc.echo("hi".into()).await.unwrap(), "hi");
        calc.nothing().await.unwrap();
        let err = calc.calculate(1.0, "/".into(), 0.0).await.unwrap_err();
        assert!(matches!(err, RpcError::Handler { code: Some(ref c), .. } if c == "division_by_zero"), "{err:?}");
        let counter = CounterClient::new(transport).with_deadline(Duration::from_secs(5));
        let before = counter.peek().await.unwrap();
        assert_eq!(counter.hit().await.unwrap(), before + 1);
    }
}

#[tokio::test]
async fn named_arguments_in_any_order_reach_their_parameters_over_a_named_transport() {
    // `b` before `a`: a text transport refuses this order (rpc-transport-tcp's tests).
    let request = Request::new("calculator", "calculate", kwargs! {"b" => 3.0, "op" => "-", "a" => 10.0});
    assert_eq!(MemoryTransport::new(registry()).call(request).await.unwrap(), Reply::Value(json!(7.0)));
}

#[tokio::test]
async fn decoding_a_result_into_the_wrong_type_is_a_clear_error() {
    let t = MemoryTransport::new(registry());
    let reply = t.call(Request::new("calculator", "echo-text", text("abc"))).await.unwrap();
    let err = reply.decode::<u32>("calculator.echo-text").unwrap_err();
    assert!(matches!(&err, RpcError::Decode { ty, .. } if ty == "u32"), "{err:?}");
}

#[test]
fn metadata_describes_every_method() {
    let registry = registry();
    let info = registry.service("calculator").unwrap().info();
    assert_eq!(info.name, "calculator");
    assert_eq!(info.doc, "The seed's calculator, plus shapes the tests need.");
    let calc = info.method("calculate").unwrap();
    assert_eq!(calc.signature(), "calculate(a: f64, op: String, b: f64) -> Result<f64, HandlerError>");
    assert_eq!(calc.doc, "`calculator calculate 2 + 2`.");
    assert!(calc.blocking);
    let stats = info.method("stats").unwrap();
    assert!(stats.variadic && !stats.blocking);
    assert_eq!(stats.signature(), "stats(label: String, values...: Vec<f64>) -> (String, Stats)");
    assert!(info.method("helper").is_none());
    assert_eq!(registry.service("ctr").unwrap().info().method_names(), ["hit", "peek"]);
}

#[test]
fn every_error_survives_its_wire_form() {
    let errors = vec![
        RpcError::UnknownService { service: "s".into(), known: vec!["a".into()] },
        RpcError::UnknownMethod { service: "s".into(), method: "m".into(), known: vec![] },
        RpcError::ArgumentCount {
            target: "s.m".into(),
            expected: 2,
            variadic: true,
            got: 0,
            params: vec!["a: u8".into()],
        },
        RpcError::MissingArgument { target: "s.m".into(), param: "a".into(), ty: "u8".into() },
        RpcError::UnexpectedArgument { target: "s.m".into(), name: "z".into(), params: vec![] },
        RpcError::InvalidArgument {
            target: "s.m".into(),
            param: "a".into(),
            ty: "u8".into(),
            value: "x".into(),
            reason: "bad".into(),
        },
        RpcError::Handler { target: "s.m".into(), code: Some("e".into()), message: "boom".into(), data: None },
        RpcError::Handler { target: "s.m".into(), code: None, message: "boom".into(), data: None },
        RpcError::Panic { target: "s.m".into(), message: "p".into() },
        RpcError::deadline("s.m", Duration::from_millis(1500)),
        RpcError::Unavailable { target: "s.m".into(), reason: "r".into() },
        RpcError::bad_request("too long"),
        RpcError::Overloaded { reason: "too many".into() },
        RpcError::Decode { target: "s.m".into(), ty: "u8".into(), reason: "r".into() },
        RpcError::protocol("p"),
        RpcError::Internal { message: "i".into() },
        RpcError::Transport { message: "t".into(), source: None },
        RpcError::Closed,
    ];
    for error in errors {
        let wire = error.to_wire();
        assert_eq!(wire["kind"], error.kind(), "{wire}");
        assert_eq!(wire["message"], error.to_string(), "{wire}");
        let back = RpcError::from_wire(&serde_json::from_str(&wire.to_string()).unwrap(), "s.m");
        assert_eq!(back.kind(), error.kind());
        assert_eq!(back.to_string(), error.to_string());
    }
}

#[test]
fn a_foreign_error_becomes_a_handler_error_with_its_type_as_code() {
    let python = json!({"type": "ValueError", "message": "ValueError('boom')", "args": ["boom"]});
    let err = RpcError::from_wire(&python, "foo");
    assert!(
        matches!(&err, RpcError::Handler { code: Some(c), message, target, .. } if c == "ValueError" && message == "ValueError('boom')" && target == "foo"),
        "{err:?}"
    );
}

#[test]
fn text_tokens_become_the_named_arguments_a_server_would_decode_from_them() {
    let registry = registry();
    let info = registry.service("calculator").unwrap().info();
    let named = |method: &str, line: &str| -> Result<serde_json::Value, RpcError> {
        let tokens = line.split(' ').filter(|t| !t.is_empty()).map(str::to_owned).collect();
        match info.method(method).unwrap().args_from_text(tokens)? {
            Args::Named(map) => Ok(serde_json::Value::Object(map)),
            other => panic!("expected named arguments, got {other:?}"),
        }
    };
    let args = named("calculate", "2 + 2").unwrap();
    assert_eq!(args, json!({"a": 2.0, "op": "+", "b": 2.0}));
    let keys: Vec<&String> = args.as_object().map(|m| m.keys().collect()).unwrap_or_default();
    assert_eq!(keys, ["a", "op", "b"], "parameters in declaration order");
    assert_eq!(named("calculate", "1e3 * -2.5").unwrap(), json!({"a": 1000.0, "op": "*", "b": -2.5}));
    // A string parameter takes its token verbatim, even when it looks like JSON.
    for op in ["42", "\"x\"", "[1,2]", "null"] {
        assert_eq!(named("calculate", &format!("1 {op} 2")).unwrap()["op"], json!(op), "op token {op:?}");
    }
    // Enums by name, options by `null`, variadic tails as one array.
    assert_eq!(named("apply", "6 * 7").unwrap(), json!({"a": 6, "op": "*", "b": 7}));
    assert_eq!(named("greet", "null").unwrap(), json!({"name": null}));
    assert_eq!(named("greet", "bo").unwrap(), json!({"name": "bo"}));
    assert_eq!(named("stats", "s 1 2 6").unwrap(), json!({"label": "s", "values": [1.0, 2.0, 6.0]}));
    assert_eq!(named("stats", "s").unwrap(), json!({"label": "s", "values": []}));
    // The errors are a server's for the same tokens.
    let few = named("calculate", "2 +").unwrap_err();
    assert_eq!(few.to_string(), "calculator.calculate: expected 3 arguments (a: f64, op: String, b: f64), got 2");
    let bad = named("calculate", "two + 2").unwrap_err();
    assert!(
        bad.to_string().starts_with("calculator.calculate: argument 'a' (f64): invalid float literal"),
        "expected the server's message for a bad float, got {bad}"
    );
}

#[test]
fn positional_json_values_become_named_arguments_in_parameter_order() {
    let registry = registry();
    let info = registry.service("calculator").unwrap().info();
    let calculate = info.method("calculate").unwrap();
    let args = calculate.args_from_positional(vec![json!(2), json!("+"), json!(3)]).unwrap();
    assert_eq!(args, kwargs! {"a" => 2, "op" => "+", "b" => 3});
    let stats = info.method("stats").unwrap();
    assert_eq!(
        stats.args_from_positional(vec![json!("s"), json!(1), json!(2)]).unwrap(),
        kwargs! {"label" => "s", "values" => [1, 2]}
    );
    let err = calculate.args_from_positional(vec![json!(1)]).unwrap_err();
    assert!(matches!(err, RpcError::ArgumentCount { expected: 3, got: 1, .. }), "{err:?}");
}

#[test]
fn the_description_lists_methods_with_json_schemas_and_docs() {
    let registry = registry();
    let description = registry.service("calculator").unwrap().info().describe();
    assert_eq!(description["name"], "calculator");
    let methods = description["methods"].as_array().unwrap();
    let calculate = methods.iter().find(|m| m["name"] == "calculate").unwrap();
    assert_eq!(calculate["doc"], "`calculator calculate 2 + 2`.");
    assert_eq!(
        calculate["params"][0],
        json!({"name": "a", "type": "f64", "schema": {"type": "number", "format": "double"}})
    );
    assert_eq!(calculate["params"][1]["schema"], json!({"type": "string"}));
    assert_eq!(calculate["returns"], json!({"type": "f64", "schema": {"type": "number", "format": "double"}}));
    // A type without a JsonSchema impl still gets an honest, open schema naming it.
    let stats = methods.iter().find(|m| m["name"] == "stats").unwrap();
    let returned = stats["returns"]["schema"].to_string();
    assert!(returned.contains("Stats") && returned.contains("JsonSchema"), "{returned}");
    // The registry describes every service at once.
    let all = registry.describe();
    let names: Vec<&str> = all["services"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["calculator", "ctr"]);
}

#[tokio::test]
async fn a_non_finite_result_is_an_error_not_a_null() {
    let t = MemoryTransport::new(registry());
    let calc = CalculatorClient::new(t.clone());
    let err = calc.calculate(1e308, "*".into(), 10.0).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::NonFinite { path, value, .. } if path == "the result" && value == "inf"),
        "{err:?}"
    );
    assert_eq!(err.kind(), "non_finite");
    // The caller cannot send one either: it would arrive as null.
    let err = calc.calculate(f64::NAN, "+".into(), 1.0).await.unwrap_err();
    assert!(matches!(&err, RpcError::NonFinite { path, .. } if path == "argument 'a'"), "{err:?}");
}

#[tokio::test]
async fn errors_quote_a_huge_argument_by_a_prefix_and_its_length() {
    let t = MemoryTransport::new(registry());
    let huge = "\"".repeat(64 * 1024);
    for args in [Args::Text(vec![huge.clone(), "+".into(), "2".into()]), kwargs! {"a" => huge, "op" => "+", "b" => 2}] {
        let err = t.call(Request::new("calculator", "calculate", args)).await.unwrap_err();
        let wire = err.to_wire().to_string();
        assert!(wire.len() < 2048, "a 64 KiB argument gave a {}-byte error: {}", wire.len(), &wire[..200]);
        assert!(err.to_string().contains("65536 bytes"), "the message names the argument's length: {err}");
    }
    let huge_service = "s".repeat(60_000);
    let err = t.call(Request::new(huge_service, "m", text(""))).await.unwrap_err();
    assert!(
        err.to_wire().to_string().len() < 2048,
        "unknown service echoed whole: {} bytes",
        err.to_wire().to_string().len()
    );
}

#[tokio::test]
async fn the_reserved_describe_request_answers_every_description() {
    let t = MemoryTransport::new(registry());
    let reply = t.call(Request::new("_rpc", "describe", kwargs! {})).await.unwrap();
    let Reply::Value(all) = reply else { panic!("expected a value, got {reply:?}") };
    assert_eq!(all, registry().describe(), "the reserved request answers Registry::describe");
}
