//! The examples over RabbitMQ, through the facade crate: the `calculator` demo's crowd on two
//! server workers, the `consumer` example called by the `client` example, and the client
//! calling an aio-pika `JsonRPC` handler.
//!
//! Like `tcp_end_to_end.rs`, each example file is included as a module and its functions are
//! called in process: the tests exercise the current source without nesting `cargo`. They
//! need a broker (`$RABBITMQ_URL`, see `scripts/ensure-rabbitmq.sh`) and fail without one.
//!
//! The examples serve the real queue names (`calculator.calculate`, ...), so the tests that
//! serve them take [`SERVICE_QUEUES`] in turn: a second server on those queues would take
//! part of the other test's requests. Nothing else in the suite serves them.
// `calculator.rs`, `consumer.rs` and `client.rs` each bring their own `cli` module, as they do
// when built as examples: three copies of the same module, on purpose.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)]
#[path = "../examples/calculator.rs"]
mod calculator_example;

#[allow(dead_code)]
#[path = "../examples/consumer.rs"]
mod consumer_example;

#[allow(dead_code)]
#[path = "../examples/client.rs"]
mod client_example;

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;
use client_example::{parse_kwargs, Failure};
use rpc::core::{Args, RpcError};
use rpc_testkit::{python, unique, url, workspace_root as root};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

/// Held by every test that serves the example services' queues.
static SERVICE_QUEUES: Mutex<()> = Mutex::const_new(());

fn client_cli(args: &[&str]) -> client_example::Cli {
    client_example::Cli::try_parse_from(std::iter::once("client").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("client {args:?}: {e}"))
}

/// Runs the client example with `args` against the test broker.
async fn client(args: &[&str]) -> Result<String, RpcError> {
    match client_example::run(&client_cli(args), &url()).await {
        Ok(text) => Ok(text),
        Err(Failure::Call(e)) => Err(e),
        Err(Failure::Usage(message)) => panic!("client {args:?}: usage error: {message}"),
    }
}

#[tokio::test]
async fn the_calculator_example_runs_its_crowd_on_two_rabbitmq_workers_and_every_task_gets_its_expected_answer() {
    let _queues = SERVICE_QUEUES.lock().await;
    let mut printed = Vec::new();
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        calculator_example::demo_amqp(&url(), 2, 40, |line| printed.push(line)),
    )
    .await
    .expect("the demo finished")
    .expect("the demo ran against the broker");
    let rendered = summary.render();

    assert_eq!(summary.tasks, 40);
    assert_eq!(printed.len(), 40);
    assert!(summary.unexpected.is_empty(), "{rendered}");
    assert_eq!(summary.results + summary.errors, 40, "{rendered}");
    assert!(summary.errors >= 5, "the crowd provokes errors on purpose: {rendered}");
    // `calculator sqrt 2` (tasks 9 and 25) has no queue: the broker answers it.
    assert_eq!(summary.unrouted, 2, "{rendered}");
    // `calculator calculate two + 2` (tasks 14 and 30) does not fit the method: the client
    // refuses it before sending, with the error a server gives.
    assert_eq!(summary.refused, 2, "{rendered}");
    assert_eq!(summary.consumers.len(), 2, "{rendered}");
    assert_eq!(summary.served(), 36, "every routed task is served by one of the two workers: {rendered}");
    assert!(summary.consumers.iter().all(|w| w.served > 0), "the broker spreads the work: {rendered}");
    assert!(summary.consumers.iter().all(|w| w.failures.is_none()), "{rendered}");

    assert!(rendered.starts_with("summary: 40 tasks, "), "{rendered}");
    assert!(rendered.contains("\n  worker 2 (connection 'calculator example worker 2'): "), "{rendered}");
    assert!(rendered.contains("\n  answered by the broker (no queue for the method): 2 tasks\n"), "{rendered}");
    assert!(!rendered.contains("accounted for"), "{rendered}");
    assert!(printed.iter().any(|l| l.contains("calculator calculate 2 + 2") && l.contains("-> 4  (")), "{printed:#?}");
    assert!(
        printed.iter().any(|l| l.contains("calculator calculate two + 2") && l.contains("-> ERROR invalid_argument: ")),
        "{printed:#?}"
    );
}

#[tokio::test]
async fn the_calculator_example_over_amqp_without_a_broker_names_it_without_the_password_and_exits_1() {
    // Nothing listens on port 1: the connection is refused at once.
    let url = "amqp://guest:s3cret@127.0.0.1:1/%2f";
    let error = calculator_example::demo_amqp(url, 2, 4, |_| {}).await.expect_err("no broker there").to_string();
    assert!(error.starts_with("cannot connect to amqp://guest:***@127.0.0.1:1/%2f: "), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    assert_eq!(calculator_example::run_amqp(url, 2, 4).await, ExitCode::FAILURE);
}

#[tokio::test]
async fn the_consumer_example_serves_over_rabbitmq_and_the_client_example_calls_it_by_name() {
    let _queues = SERVICE_QUEUES.lock().await;
    let cli = consumer_example::Cli::try_parse_from(["consumer", "--amqp", "--prefetch", "4", "--pool", "1"]).unwrap();
    let server = consumer_example::serve_amqp(&url(), &cli).await.expect("the consumer serves");
    assert_eq!(server.registered(), ["calculator.calculate", "neural_net.architecture", "neural_net.predict"]);
    assert_eq!(server.config().prefetch, 4);

    assert_eq!(client(&["--amqp", "calculator.calculate", "a=2", "op=+", "b=2"]).await.unwrap(), "4");
    // JSON on the wire is answered in JSON; the result is the same.
    assert_eq!(client(&["--amqp", "--json", "calculator.calculate", "a=7", "op=-", "b=-10"]).await.unwrap(), "17");
    let predicted = client(&["--amqp", "neural_net.predict", "inputs=[1,0]"]).await.unwrap();
    let prediction: rpc_testkit::services::Prediction = serde_json::from_str(&predicted).unwrap();
    assert_eq!(prediction.class, 1, "{predicted}");

    match client(&["--amqp", "calculator.calculate", "a=1", "op=/", "b=0"]).await.unwrap_err() {
        RpcError::Handler { target, code, message, .. } => {
            assert_eq!(target, "calculator.calculate");
            assert_eq!(code.as_deref(), Some("division_by_zero"));
            assert_eq!(message, "division by zero");
        }
        other => panic!("{other:?}"),
    }
    let missing = client(&["--amqp", "calculator.calculate", "a=2", "op=+"]).await.unwrap_err();
    assert!(
        matches!(&missing, RpcError::MissingArgument { param, .. } if param == "b"),
        "expected RpcError::MissingArgument {{ param, .. }} if param == \"b\", got {missing:?}"
    );
    let string = client(&["--amqp", "calculator.calculate", "a=\"2\"", "op=+", "b=2"]).await.unwrap_err();
    assert!(
        matches!(&string, RpcError::InvalidArgument { param, .. } if param == "a"),
        "expected RpcError::InvalidArgument {{ param, .. }} if param == \"a\", got {string:?}"
    );
    let unknown = client(&["--amqp", "calculator.sqrt", "x=2"]).await.unwrap_err();
    assert!(
        matches!(&unknown, RpcError::Unavailable { target, .. } if target == "calculator.sqrt"),
        "expected RpcError::Unavailable {{ target, .. }} if target == \"calculator.sqrt\", got {unknown:?}"
    );
    // `--describe` lists what the servers of the vhost serve, with parameters, types and docs.
    let described = client(&["--amqp", "--describe"]).await.unwrap();
    for line in [
        "calculator.calculate(a: f64, op: String, b: f64) -> f64",
        "neural_net.predict(inputs: Vec<f32>...) -> Prediction",
        "      Applies `op` (one of `+ - * /`) to `a` and `b`",
    ] {
        assert!(described.contains(line), "{line:?} missing from:\n{described}");
    }

    server.close().await.unwrap();
    // Closed, the consumer no longer takes requests: the queue stays, nobody answers.
    let unserved = client(&["--amqp", "--timeout", "0.5", "calculator.calculate", "a=2", "op=+", "b=2"]).await;
    assert!(
        matches!(unserved, Err(RpcError::DeadlineExceeded { timeout_ms: 500, .. })),
        "expected Err(RpcError::DeadlineExceeded {{ timeout_ms: 500, .. }}), got {unserved:?}"
    );
}

#[tokio::test]
async fn the_client_example_with_json_calls_an_aio_pika_jsonrpc_handler_and_reports_its_error() {
    let prefix = unique("client-example");
    let mut server = tokio::process::Command::new(python())
        .arg(root().join("tests/interop/aio_pika_server.py"))
        .args([url(), prefix.clone()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the aio-pika server");
    let stdout = server.stdout.take().expect("piped stdout");
    let ready = tokio::time::timeout(Duration::from_secs(30), BufReader::new(stdout).lines().next_line()).await;
    assert!(matches!(&ready, Ok(Ok(Some(line))) if line == "ready"), "the aio-pika server did not start: {ready:?}");

    let add = format!("{prefix}.add");
    assert_eq!(client(&["--amqp", "--json", &add, "x=2", "y=3.5"]).await.unwrap(), "5.5");
    match client(&["--amqp", "--json", &format!("{prefix}.fail")]).await.unwrap_err() {
        RpcError::Handler { code, message, .. } => {
            assert_eq!(code.as_deref(), Some("ValueError"));
            assert_eq!(message, "boom");
        }
        other => panic!("{other:?}"),
    }
    // Python's own argument check comes back as its TypeError.
    let wrong = client(&["--amqp", "--json", &add, "x=2"]).await.unwrap_err();
    assert!(
        matches!(&wrong, RpcError::Handler { code: Some(code), .. } if code == "TypeError"),
        "expected RpcError::Handler {{ code: Some(code), .. }} if code == \"TypeError\", got {wrong:?}"
    );

    // Closing its standard input stops the server.
    drop(server.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(30), server.wait()).await.expect("the server stopped");
    assert!(status.is_ok_and(|s| s.success()), "the aio-pika server failed");
}

#[test]
fn client_arguments_that_parse_as_json_are_sent_as_json_and_anything_else_as_a_string() {
    let args = parse_kwargs(&[
        "a=2",
        "op=+",
        "b=-2.5",
        "flag=true",
        "nothing=null",
        "inputs=[1,0]",
        r#"point={"x":1}"#,
        r#"quoted="42""#,
        "word=two",
        "empty=",
        "equation=x=1",
        "spaced=hello world",
    ])
    .unwrap();
    let expected = json!({
        "a": 2,
        "op": "+",
        "b": -2.5,
        "flag": true,
        "nothing": null,
        "inputs": [1, 0],
        "point": {"x": 1},
        "quoted": "42",
        "word": "two",
        "empty": "",
        "equation": "x=1",
        "spaced": "hello world",
    });
    match args {
        Args::Named(map) => {
            assert_eq!(serde_json::Value::Object(map.clone()), expected);
            let names: Vec<&str> = map.keys().map(String::as_str).collect();
            assert_eq!(names[..3], ["a", "op", "b"], "order is kept");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(parse_kwargs::<&str>(&[]).unwrap(), Args::Named(Default::default()));
}

#[test]
fn client_arguments_without_a_name_or_an_equals_sign_or_given_twice_are_refused() {
    assert_eq!(parse_kwargs(&["a=1", "2"]).unwrap_err(), r#"argument "2" is not name=value"#);
    assert_eq!(parse_kwargs(&["=2"]).unwrap_err(), r#"argument "=2" has no name before '='"#);
    assert_eq!(parse_kwargs(&["a=1", "a=2"]).unwrap_err(), "argument 'a' is given twice");
}

#[test]
fn client_command_line_takes_one_transport_json_only_over_amqp_and_timeouts_in_seconds() {
    let cli = client_cli(&["--amqp", "--json", "--timeout", "0.5", "calculator.calculate", "a=2", "b=-2"]);
    assert!(cli.amqp && cli.json && cli.tcp.is_none());
    assert_eq!(cli.timeout, Duration::from_millis(500));
    assert_eq!(cli.call, ["calculator.calculate", "a=2", "b=-2"]);
    assert_eq!(
        client_cli(&["--tcp", "127.0.0.1:9000", "calculator", "calculate", "2", "-", "2"]).timeout,
        Duration::from_secs(30)
    );

    let parse =
        |args: &[&str]| client_example::Cli::try_parse_from(std::iter::once("client").chain(args.iter().copied()));
    assert!(parse(&["calculator.calculate"]).is_err(), "a transport is required");
    assert!(parse(&["--amqp", "--tcp", "127.0.0.1:9000", "x", "y"]).is_err(), "only one transport");
    assert!(parse(&["--json", "--tcp", "127.0.0.1:9000", "x", "y"]).is_err(), "--json is for AMQP");
    assert!(parse(&["--amqp"]).is_err(), "a method is required");
    assert!(parse(&["--amqp", "--describe"]).is_ok_and(|cli| cli.describe && cli.call.is_empty()));
    assert!(parse(&["--amqp", "--describe", "m"]).is_err(), "--describe makes no call");
    for bad in ["0", "-1", "soon", "NaN", "1e30"] {
        assert!(parse(&["--amqp", "--timeout", bad, "m"]).is_err(), "--timeout {bad}");
    }
}

#[test]
fn consumer_command_line_takes_prefetch_only_with_amqp_and_tcp_options_only_without() {
    let parse =
        |args: &[&str]| consumer_example::Cli::try_parse_from(std::iter::once("consumer").chain(args.iter().copied()));
    let cli = parse(&["--amqp"]).unwrap();
    assert_eq!(cli.prefetch, rpc::amqp::config::DEFAULT_PREFETCH);
    assert_eq!(parse(&["--amqp", "--prefetch", "8"]).unwrap().prefetch, 8);
    assert!(parse(&["--amqp", "--prefetch", "0"]).is_err(), "prefetch 0 would mean unlimited");
    assert!(parse(&["--prefetch", "8"]).is_err(), "--prefetch is for AMQP");
    assert!(parse(&["--amqp", "--listen", "127.0.0.1:9001"]).is_err(), "--listen is for TCP");
    assert!(!parse(&[]).unwrap().amqp);
}
