//! The examples' command lines, run as built binaries: flags that make no sense are refused at
//! start with a message naming the flag and what is wrong (exit code 2), host names work
//! wherever an address is taken, and `--help` says what each example does.

mod common_cli;

use std::time::Duration;

use common_cli::{run, spawn};

/// Runs example `name` with `args`, expecting it to refuse them: exit code 2 and a stderr
/// containing `message`, nothing on stdout.
async fn assert_refused(name: &str, args: &[&str], message: &str) {
    let (status, stdout, stderr) = run(name, args, &[]).await;
    assert_eq!(status.code(), Some(2), "{name} {args:?}: exit status; stderr: {stderr}");
    assert!(stderr.contains(message), "{name} {args:?}: expected {message:?} in stderr, got: {stderr}");
    assert!(stdout.is_empty(), "{name} {args:?}: printed {stdout:?}");
}

#[tokio::test]
async fn counts_of_zero_are_refused_at_start_naming_the_flag() {
    for (name, flag) in [
        ("consumer", "--pool"),
        ("consumer", "--max-connections"),
        ("consumer", "--max-line"),
        ("calculator", "--consumers"),
        ("calculator", "--tasks"),
        ("calculator", "--clients"),
        ("producer", "--max-connections"),
    ] {
        let mut args = vec![flag, "0"];
        if name == "producer" {
            args.extend(["--consumer", "127.0.0.1:9001"]);
        }
        assert_refused(name, &args, &format!("invalid value '0' for '{flag} <")).await;
        assert_refused(name, &args, "must be at least 1").await;
    }
    assert_refused("consumer", &["--pool=-1"], "\"-1\" is not a whole number").await;
}

#[tokio::test]
async fn durations_of_zero_or_below_a_millisecond_are_refused_with_a_correct_message() {
    let producer = |flag: &'static str, value: &'static str| vec![flag, value, "--consumer", "127.0.0.1:9001"];
    for args in [producer("--max-deadline", "0"), producer("--attempt-timeout", "0"), producer("--probe-interval", "0")]
    {
        assert_refused("producer", &args, "must be more than 0 seconds (got 0)").await;
    }
    assert_refused("consumer", &["--read-timeout", "0"], "must be more than 0 seconds (got 0)").await;
    assert_refused("consumer", &["--max-deadline=-1"], "must be more than 0 seconds (got -1)").await;
    let client = |value: &'static str| vec!["--amqp", "--timeout", value, "calculator.calculate"];
    assert_refused(
        "client",
        &client("1e-10"),
        "invalid value '1e-10' for '--timeout <TIMEOUT>': 1e-10 s is shorter than 1 ms, the shortest duration \
         accepted (0.001)",
    )
    .await;
    assert_refused("client", &client("0"), "must be more than 0 seconds (got 0)").await;
    assert_refused("client", &client("NaN"), "\"NaN\" is not a number of seconds").await;
    assert_refused("client", &client("soon"), "\"soon\" is not a number of seconds").await;
    assert_refused("client", &client("1e30"), "1e30 s is too long to represent").await;
    // A millisecond is the shortest accepted, and fractions work.
    let (status, _, stderr) =
        run("client", &["--tcp", "127.0.0.1:1", "--timeout", "0.001", "calculator", "calculate", "1", "+", "1"], &[])
            .await;
    assert_eq!(status.code(), Some(1), "a call to a closed port fails (exit 1), the flag is fine: {stderr}");
}

#[tokio::test]
async fn addresses_without_a_port_or_with_an_unknown_host_are_refused_naming_the_flag() {
    assert_refused("client", &["--tcp", "localhost", "calculator", "calculate"], "--tcp localhost: expected host:port")
        .await;
    assert_refused(
        "client",
        &["--tcp", "no-such-host.invalid:9000", "calculator", "calculate"],
        "--tcp no-such-host.invalid:9000: cannot resolve 'no-such-host.invalid'",
    )
    .await;
    assert_refused("producer", &["--consumer", "localhost:99999"], "--consumer localhost:99999: expected host:port")
        .await;
}

#[tokio::test]
async fn host_names_work_for_listen_consumer_and_tcp() {
    let mut consumer = spawn("consumer", &["--listen", "localhost:0"], &[]);
    let consumer_addr = consumer.ready_addr("consumer: serving").await;
    assert!(consumer_addr.ip().is_loopback(), "{consumer_addr}");
    let by_name = format!("localhost:{}", consumer_addr.port());

    let (status, stdout, stderr) =
        run("client", &["--tcp", &by_name, "calculator", "calculate", "2", "+", "2"], &[]).await;
    assert_eq!((status.code(), stdout.as_str()), (Some(0), "4\n"), "client --tcp {by_name}: {stderr}");

    let mut producer = spawn("producer", &["--listen", "localhost:0", "--consumer", &by_name], &[]);
    let gateway = producer.ready_addr("producer: listening on").await;
    let gateway_by_name = format!("localhost:{}", gateway.port());
    let (status, stdout, stderr) =
        run("client", &["--tcp", &gateway_by_name, "calculator", "calculate", "6", "*", "7"], &[]).await;
    assert_eq!((status.code(), stdout.as_str()), (Some(0), "42\n"), "through the producer: {stderr}");

    producer.signal("TERM");
    let (status, _, stderr) = producer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("consumer {consumer_addr}: 1 tasks served, 0 failures, up")), "{stderr}");
    consumer.signal("TERM");
    assert_eq!(consumer.finish(Duration::from_secs(30)).await.0.code(), Some(0));
}

#[tokio::test]
async fn a_producer_given_its_own_address_as_a_consumer_refuses_to_start() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let itself = format!("localhost:{port}");
    assert_refused(
        "producer",
        &["--listen", &listen, "--consumer", "127.0.0.1:9001", "--consumer", &itself],
        &format!(
            "producer: --consumer {itself} is this producer's own address (127.0.0.1:{port}): a producer forwards \
             to consumers, never to itself"
        ),
    )
    .await;
}

#[tokio::test]
async fn each_example_s_help_says_what_that_example_does() {
    let expected = [
        ("consumer", "A Consumer: serves the Calculator and NeuralNet services"),
        ("producer", "The Producer: a gateway that takes tasks"),
        ("client", "A client: makes one call to a server"),
        ("calculator", "The whole system in one process"),
        ("amqp_rpc", "RPC over RabbitMQ, aio-pika's `RPC` pattern in Rust"),
    ];
    let mut firsts = Vec::new();
    for (name, start) in expected {
        let (status, stdout, stderr) = run(name, &["--help"], &[]).await;
        assert_eq!(status.code(), Some(0), "{name} --help: {stderr}");
        let first = stdout.lines().next().unwrap_or_default().to_owned();
        assert!(first.starts_with(start), "{name} --help starts with {first:?}, expected {start:?}");
        assert!(stdout.contains(&format!("Usage: {name}")), "{name} --help: {stdout}");
        firsts.push(first);
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), expected.len(), "two examples share a description: {firsts:#?}");
    // amqp_rpc takes its one argument through clap now: a bad one is a usage error.
    assert_refused("amqp_rpc", &["soon"], "\"soon\" is not a number of seconds (0 or more)").await;
}
