//! The HTTP front of the producer example, run as built binaries: beside the text protocol
//! over TCP consumers, and alone over RabbitMQ workers; the client example calling it and
//! describing what a server serves; SIGTERM and SIGINT stopping both fronts.

mod common_cli;

use std::time::Duration;

use common_cli::{run, spawn};

#[tokio::test]
async fn the_producer_serves_http_beside_the_text_protocol_and_stops_both_on_sigterm() {
    let mut consumers = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let mut consumer = spawn("consumer", &["--listen", "127.0.0.1:0"], &[]);
        addrs.push(consumer.ready_addr("consumer: serving").await.to_string());
        consumers.push(consumer);
    }
    let mut producer = spawn(
        "producer",
        &["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--consumer", &addrs[0], "--consumer", &addrs[1]],
        &[],
    );
    let tcp = producer.ready_addr("producer: listening on").await.to_string();
    let http = producer.ready_addr("producer: serving HTTP on").await;
    let url = format!("http://{http}");

    let (status, stdout, stderr) = run("client", &["--http", &url, "calculator.calculate", "2", "+", "2"], &[]).await;
    assert_eq!((status.code(), stdout.trim()), (Some(0), "4"), "{stderr}");
    let (status, stdout, _) = run("client", &["--http", &url, "calculator.calculate", "a=6", "op=*", "b=7"], &[]).await;
    assert_eq!((status.code(), stdout.trim()), (Some(0), "42"));
    let (status, _, stderr) = run("client", &["--http", &url, "calculator.calculate", "1", "/", "0"], &[]).await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.starts_with("ERROR handler: ") && stderr.contains("division_by_zero"), "{stderr}");
    let (status, stdout, _) = run("client", &["--tcp", &tcp, "calculator", "calculate", "2", "+", "3"], &[]).await;
    assert_eq!((status.code(), stdout.trim()), (Some(0), "5"), "the text protocol still works");

    for transport in [["--http", url.as_str()], ["--tcp", tcp.as_str()]] {
        let (status, stdout, stderr) = run("client", &[transport[0], transport[1], "--describe"], &[]).await;
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(stdout.contains("calculator"), "{stdout}");
        assert!(stdout.contains("  calculator.calculate(a: f64, op: String, b: f64) -> f64"), "{stdout}");
        assert!(stdout.contains("      Applies `op`"), "the docs: {stdout}");
        assert!(stdout.contains("neural_net.predict(inputs: Vec<f32>...) -> Prediction"), "{stdout}");
    }

    producer.signal("TERM");
    let (status, _, stderr) = producer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM: stopping"), "{stderr}");
    assert!(std::net::TcpStream::connect(http).is_err(), "the HTTP front stopped");
    assert!(std::net::TcpStream::connect(tcp.as_str()).is_err(), "the text front stopped");
    for consumer in consumers {
        consumer.signal("TERM");
        let (status, _, _) = consumer.finish(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(0));
    }
}

#[tokio::test]
async fn the_producer_serves_http_over_rabbitmq_workers_and_stops_on_sigint() {
    // Both programs work in this test process's vhost (`common_cli::spawn`).
    let mut worker = spawn("consumer", &["--amqp"], &[]);
    worker.stderr_line("consumer: serving", Duration::from_secs(60)).await;
    let mut producer = spawn("producer", &["--amqp", "--http", "127.0.0.1:0"], &[]);
    let http = producer.ready_addr("producer: serving HTTP on").await;
    let front = format!("http://{http}");

    let (status, stdout, stderr) =
        run("client", &["--http", &front, "calculator.calculate", "a=2", "op=+", "b=2"], &[]).await;
    assert_eq!((status.code(), stdout.trim()), (Some(0), "4"), "{stderr}");
    let (status, stdout, stderr) = run("client", &["--http", &front, "neural_net.predict", "1", "0"], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("\"class\":1"), "{stdout}");
    let (status, stdout, _) = run("client", &["--http", &front, "--describe"], &[]).await;
    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("calculate(a: f64, op: String, b: f64) -> f64"), "{stdout}");

    producer.signal("INT");
    let (status, _, stderr) = producer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(std::net::TcpStream::connect(http).is_err(), "the HTTP front stopped");
    worker.signal("TERM");
    let (status, _, _) = worker.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
}
