//! The examples as an operator meets them, run as built binaries: what their logs look like
//! (no colour codes in a pipe, `RUST_LOG` obeyed), one clean line for a refused login,
//! positional arguments over AMQP, and a client timeout that says whether any server is there.
//!
//! The AMQP cases need a broker at `$RABBITMQ_URL` and fail without one.

mod common_cli;

use std::time::Duration;

use common_cli::{run, spawn};
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use rpc_testkit::{unique, url};

/// `url` with its password replaced by `password`.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme://");
    let (userinfo, host) = rest.split_once('@').expect("user:password@host");
    let user = userinfo.split(':').next().unwrap_or("guest");
    format!("{scheme}://{user}:{password}@{host}")
}

/// The lines written by the logger (timestamped), not the programs' own messages.
fn log_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("20") || l.starts_with('\u{1b}')).collect()
}

#[tokio::test]
async fn logs_in_a_pipe_have_no_colour_codes_and_follow_rust_log() {
    // RUST_LOG=debug: the consumer's own INFO and DEBUG lines, plain text.
    let mut consumer = spawn("consumer", &["--listen", "127.0.0.1:0"], &[("RUST_LOG", "debug")]);
    let addr = consumer.ready_addr("consumer: serving").await;
    let (status, stdout, _) =
        run("client", &["--tcp", &addr.to_string(), "calculator", "calculate", "1", "+", "1"], &[]).await;
    assert_eq!((status.code(), stdout.as_str()), (Some(0), "2\n"));
    consumer.signal("TERM");
    let (status, _, stderr) = consumer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI escape codes in a pipe: {stderr:?}");
    let lines = log_lines(&stderr);
    assert!(lines.iter().any(|l| l.contains(" INFO ") && l.contains("serving")), "{stderr}");
    assert!(lines.iter().any(|l| l.contains(" DEBUG ") && l.contains("calculate")), "{stderr}");

    // No RUST_LOG: warnings only, so a quiet start and stop log nothing at all.
    let mut quiet = spawn("consumer", &["--listen", "127.0.0.1:0"], &[]);
    quiet.ready_addr("consumer: serving").await;
    quiet.signal("TERM");
    let (status, _, stderr) = quiet.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(log_lines(&stderr).is_empty(), "log lines without RUST_LOG: {stderr}");

    // The producer logs a consumer going down at WARN by default; RUST_LOG=off silences it.
    let mut silent =
        spawn("producer", &["--listen", "127.0.0.1:0", "--consumer", "127.0.0.1:1"], &[("RUST_LOG", "off")]);
    let gateway = silent.ready_addr("producer: listening on").await.to_string();
    let (status, _, stderr) = run("client", &["--tcp", &gateway, "calculator", "calculate", "1", "+", "1"], &[]).await;
    assert!(status.code() == Some(1) && stderr.contains("127.0.0.1:1: down"), "the consumer is down by now: {stderr}");
    silent.signal("TERM");
    let (status, _, stderr) = silent.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(log_lines(&stderr).is_empty(), "RUST_LOG=off still logged: {stderr}");
    let mut noisy = spawn("producer", &["--listen", "127.0.0.1:0", "--consumer", "127.0.0.1:1"], &[]);
    noisy.ready_addr("producer: listening on").await;
    let down = noisy.stderr_line("consumer 127.0.0.1:1 is down", Duration::from_secs(10)).await;
    assert!(down.contains(" WARN ") && !down.contains('\u{1b}'), "{down:?}");
    noisy.signal("TERM");
    let (status, _, stderr) = noisy.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn a_refused_login_is_one_clean_error_line_without_the_password() {
    // Plain characters: passwords with reserved ones are the redaction tests' concern.
    let password = "s3cretPw9";
    let bad = with_password(&url(), password);
    let env = [("RABBITMQ_URL", bad.as_str())];

    let (status, stdout, stderr) = run("client", &["--amqp", "calculator.calculate", "a=1", "op=+", "b=2"], &env).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("ERROR transport: ") && lines[0].contains("ACCESS_REFUSED"), "{stderr}");

    let (status, _, stderr) = run("consumer", &["--amqp"], &env).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("consumer: ") && lines[0].contains("ACCESS_REFUSED"), "{stderr}");

    let (status, _, stderr) = run("calculator", &["--transport", "amqp"], &env).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("calculator: cannot connect to ") && lines[0].contains("ACCESS_REFUSED"), "{stderr}");
    for output in [&stdout, &stderr] {
        assert!(!output.contains(password) && !output.contains("s3cret"), "the password leaked: {output}");
    }
}

#[tokio::test]
async fn positional_arguments_over_amqp_work_for_known_methods_and_are_refused_with_usage_for_others() {
    let url = url();
    let env = [("RABBITMQ_URL", url.as_str())];
    let mut consumer = spawn("consumer", &["--amqp"], &env);
    consumer.stderr_line("consumer: serving", Duration::from_secs(60)).await;

    let (status, stdout, stderr) = run("client", &["--amqp", "calculator.calculate", "2", "+", "2"], &env).await;
    assert_eq!((status.code(), stdout.as_str()), (Some(0), "4\n"), "{stderr}");
    let (status, stdout, stderr) = run("client", &["--amqp", "neural_net.predict", "1", "0"], &env).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with("{\"class\":1,"), "{stdout}");
    let (status, stdout, stderr) =
        run("client", &["--amqp", "calculator.calculate", "a=7", "op=-", "b=10"], &env).await;
    assert_eq!((status.code(), stdout.as_str()), (Some(0), "-3\n"), "{stderr}");

    let refused = [
        (
            &["--amqp", "calculator.calculate", "a=2", "+", "b=2"][..],
            "client: give every argument by position or every one as name=value, not both: calculator.calculate \
             a=... op=... b=...",
        ),
        (
            &["--amqp", "calculator.calculate", "2", "+"][..],
            "client: calculator.calculate: expected 3 arguments (a: f64, op: String, b: f64), got 2",
        ),
        (
            &["--amqp", "foo", "1", "2"][..],
            "client: over AMQP each argument is name=value (\"1\" is not), and the client does not know the \
             parameters of 'foo'",
        ),
    ];
    for (args, message) in refused {
        let (status, stdout, stderr) = run("client", args, &env).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty() && stderr.starts_with(message), "{args:?}: expected {message:?}, got {stderr:?}");
    }
    consumer.signal("TERM");
    let (status, _, stderr) = consumer.finish(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn a_client_timeout_says_whether_the_queue_has_no_server_or_a_server_that_did_not_answer() {
    let url = url();
    let env = [("RABBITMQ_URL", url.as_str())];
    let conn = rpc::amqp::Connection::connect(&url, rpc::amqp::ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let queue = unique("cli-no-server");
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();

    // A queue that outlived its server: nobody consumes it.
    let (status, _, stderr) = run("client", &["--amqp", "--timeout", "0.5", &queue, "x=1"], &env).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("ERROR deadline_exceeded: "), "{stderr}");
    let expected = format!("client: the queue '{queue}' exists but has 0 consumers: no server is running");
    assert!(lines[1].starts_with(&expected), "expected {expected:?}, got {:?}", lines[1]);

    // A server that takes the request and never answers.
    let _taker = channel
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let (status, _, stderr) = run("client", &["--amqp", "--timeout", "0.5", &queue, "x=1"], &env).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let expected = format!(
        "client: the queue '{queue}' has 1 consumer(s): a server took the request but did not answer within 0.5 s"
    );
    assert_eq!(stderr.lines().nth(1), Some(expected.as_str()), "{stderr}");

    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    let _ = conn.close(200, "OK".into()).await;
}
