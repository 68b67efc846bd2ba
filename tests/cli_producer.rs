//! The producer example, run as a built binary, against peers that are not Consumers and
//! consumers that come and go: it never relays a non-Consumer's bytes, says at start when a
//! peer is a Producer, and logs each consumer's change of state when it happens.

mod common_cli;

use std::time::Duration;

use common_cli::{run, spawn};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A minimal HTTP server on loopback: reads a line, answers an HTML error page, closes.
async fn http_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                let _ = stream.read_line(&mut line).await;
                let page = "<html><body><h1>400 Bad Request</h1></body></html>\n";
                let reply = format!("HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\r\n{page}");
                let _ = stream.get_mut().write_all(reply.as_bytes()).await;
                let _ = stream.get_mut().shutdown().await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_consumer_address_that_is_an_http_server_never_gets_its_html_relayed_and_the_client_exits_1() {
    let (http, server) = http_server().await;
    let mut producer = spawn("producer", &["--listen", "127.0.0.1:0", "--consumer", &http.to_string()], &[]);
    let gateway = producer.ready_addr("producer: listening on").await.to_string();
    let down = producer.stderr_line(&format!("consumer {http} is down"), Duration::from_secs(10)).await;
    assert!(down.contains("WARN") && down.contains("does not speak this protocol"), "{down}");

    let (status, stdout, stderr) =
        run("client", &["--tcp", &gateway, "calculator", "calculate", "2", "+", "2"], &[]).await;
    assert_eq!(status.code(), Some(1), "the client's exit status; stdout {stdout:?}, stderr {stderr:?}");
    assert!(stdout.is_empty(), "the client printed a result: {stdout:?}");
    assert!(stderr.starts_with("ERROR unavailable: no server is serving 'calculator.calculate': "), "{stderr}");
    // Only a short quote of what the peer said, for the operator; never the page as a result.
    assert!(
        stderr.contains("does not speak this protocol: it answered the health probe with \"HTTP/1.1 400"),
        "{stderr}"
    );
    assert!(!stderr.contains("<h1>400 Bad Request</h1>"), "{stderr}");

    producer.signal("TERM");
    let (status, _, stderr) = producer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("consumer {http}: 0 tasks served")), "{stderr}");
    server.abort();
}

#[tokio::test]
async fn two_producers_pointing_at_each_other_say_so_at_error_level_and_fail_tasks_at_once() {
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let (a, b) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    let fast = ["--probe-interval", "0.1"];
    let mut first = spawn("producer", &[&["--listen", &a, "--consumer", &b][..], &fast].concat(), &[]);
    first.ready_addr("producer: listening on").await;
    let mut second = spawn("producer", &[&["--listen", &b, "--consumer", &a][..], &fast].concat(), &[]);
    second.ready_addr("producer: listening on").await;
    for (producer, peer) in [(&mut second, &a), (&mut first, &b)] {
        let said = producer.stderr_line("answered as a producer, not a consumer", Duration::from_secs(10)).await;
        assert!(said.contains("ERROR") && said.contains(peer.as_str()), "{said}");
    }

    let started = std::time::Instant::now();
    let (status, stdout, stderr) = run("client", &["--tcp", &b, "calculator", "calculate", "2", "+", "2"], &[]).await;
    assert_eq!(status.code(), Some(1), "stdout {stdout:?}, stderr {stderr:?}");
    assert!(stderr.starts_with("ERROR unavailable: ") && stderr.contains("a producer"), "{stderr}");
    assert!(stderr.len() < 1024, "a {}-byte error: nested? {stderr}", stderr.len());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    for producer in [first, second] {
        producer.signal("TERM");
        let (status, _, stderr) = producer.finish(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("0 tasks served") && stderr.contains("a producer, not a consumer"), "{stderr}");
    }
}

#[tokio::test]
async fn the_producer_logs_a_consumer_going_down_and_coming_back_when_it_happens() {
    let mut consumer = spawn("consumer", &["--listen", "127.0.0.1:0"], &[]);
    let addr = consumer.ready_addr("consumer: serving").await;
    let mut producer = spawn(
        "producer",
        &["--listen", "127.0.0.1:0", "--consumer", &addr.to_string(), "--probe-interval", "0.1"],
        &[],
    );
    producer.ready_addr("producer: listening on").await;
    let up = producer.stderr_line(&format!("consumer {addr} is up"), Duration::from_secs(10)).await;
    assert!(up.contains("INFO"), "{up}");

    consumer.signal("KILL");
    let _ = consumer.finish(Duration::from_secs(10)).await;
    let down = producer.stderr_line(&format!("consumer {addr} is down"), Duration::from_secs(10)).await;
    assert!(down.contains("WARN") && down.contains("refused"), "{down}");

    let mut again = spawn("consumer", &["--listen", &addr.to_string()], &[]);
    again.ready_addr("consumer: serving").await;
    let back = producer.stderr_line(&format!("consumer {addr} is back up"), Duration::from_secs(20)).await;
    assert!(back.contains("INFO"), "{back}");

    producer.signal("TERM");
    let (status, _, stderr) = producer.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Each change was logged once, as it happened, before the shutdown.
    let stopping = stderr.find("producer: SIGTERM: stopping").expect("the stopping line");
    for (what, times) in [("is down", 1), ("is back up", 1)] {
        let needle = format!("consumer {addr} {what}");
        assert_eq!(stderr.matches(&needle).count(), times, "{needle:?} in {stderr}");
        assert!(stderr.find(&needle).is_some_and(|at| at < stopping), "{needle:?} after the shutdown: {stderr}");
    }
    again.signal("TERM");
    assert_eq!(again.finish(Duration::from_secs(30)).await.0.code(), Some(0));
}
