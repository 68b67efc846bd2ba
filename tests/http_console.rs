//! The console at `GET /`, in a real browser: headless Chromium (Debian's package, installed
//! by `scripts/browser.sh` when missing) loads the page of an HTTP front over a Producer and
//! two Consumers, fills the form of `calculator.calculate` with 2 + 2 from the query string,
//! submits it, and the page shows `4` and both consumers up. The screenshot is kept at
//! `target/http-console.png`.

use rpc_testkit::services;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rpc::http::Gateway;
use rpc::tcp::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use tokio::net::TcpListener;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The browser: `$RPC_TEST_BROWSER`, else what `scripts/browser.sh` installs.
fn browser() -> String {
    if let Ok(browser) = std::env::var("RPC_TEST_BROWSER") {
        return browser;
    }
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/browser.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/browser.sh");
    assert!(out.status.success(), "scripts/browser.sh failed: no headless browser for the console test");
    String::from_utf8_lossy(&out.stdout).lines().last().expect("the browser's path").trim().to_owned()
}

/// Runs headless Chromium on `url` with a fresh profile, `extra` flags last; its stdout.
async fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!("rpc-console-{}-{}", std::process::id(), extra.len()));
    let _ = std::fs::remove_dir_all(&profile);
    let mut command = tokio::process::Command::new(browser());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("chromium took over 120 s")
        .expect("starting chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn consumer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let consumer = Consumer::new(Arc::new(services::registry(Some(2))), ConsumerConfig::default());
    tokio::spawn(async move { consumer.serve(listener, std::future::pending::<()>()).await });
    addr
}

#[tokio::test]
async fn the_console_calls_calculator_calculate_through_its_form_and_shows_4_and_the_consumers() {
    let consumers = vec![consumer().await, consumer().await];
    let producer = Producer::new(consumers.clone(), ProducerConfig::default());
    producer.probe_all().await;
    let gateway = Gateway::builder(producer.clone()).with_backends(producer).with_title("console test").build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { gateway.serve(listener, std::future::pending::<()>()).await });

    let url = format!("http://{addr}/?call=calculator.calculate&a=2&op=%2B&b=2");
    let dom = chromium(&url, &["--dump-dom"]).await;
    assert!(dom.contains("<h1>console test</h1>"), "{dom}");
    assert!(
        dom.contains("calculator.calculate(a: f64, op: String, b: f64) -&gt; f64"),
        "the method and its signature: {dom}"
    );
    assert!(dom.contains("Applies `op`"), "its docs: {dom}");
    assert!(
        dom.contains(r#"<output id="result-calculator-calculate" data-state="ok">4</output>"#),
        "the form's call answered 4: {dom}"
    );
    for consumer in &consumers {
        assert!(dom.contains(&format!("<td>{consumer}</td><td class=\"up\">up</td>")), "{consumer} up: {dom}");
    }

    // The same page, kept as a picture for people.
    let shot = root().join("target/http-console.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&url, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,1400"]).await;
    assert!(Path::new(&shot).metadata().is_ok_and(|m| m.len() > 1000), "no screenshot at {}", shot.display());
}
