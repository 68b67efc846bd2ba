//! What the front says about itself: the OpenAPI document (checked by the PyPI validator
//! `openapi-spec-validator`), Prometheus metrics, readiness.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{get, post, raw, Front};
use rpc_core::Registry;
use rpc_http::{Gateway, Limits};
use rpc_transport_tcp::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The interpreter with openapi-spec-validator: `$RPC_TEST_PYTHON`, else the venv
/// `scripts/python-env.sh` makes.
fn python() -> String {
    if let Ok(python) = std::env::var("RPC_TEST_PYTHON") {
        return python;
    }
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/python-env.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/python-env.sh");
    assert!(out.status.success(), "scripts/python-env.sh failed: cannot get openapi-spec-validator");
    String::from_utf8_lossy(&out.stdout).lines().last().expect("python path").trim().to_owned()
}

/// Runs openapi-spec-validator on `document`: `Ok` or the validator's complaint.
fn validate(document: &Value) -> Result<(), String> {
    let path = std::env::temp_dir().join(format!("rpc-http-openapi-{}.json", uuid_like()));
    std::fs::write(&path, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    let script = "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')";
    let out = std::process::Command::new(python()).args(["-c", script]).arg(&path).output().expect("running python");
    let _ = std::fs::remove_file(&path);
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("valid") {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn uuid_like() -> String {
    format!("{}-{:?}", std::process::id(), std::time::SystemTime::now())
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

#[tokio::test]
async fn the_openapi_document_is_valid_openapi_3_1_with_every_method_and_the_error_envelope() {
    let front = Front::memory(rpc_http::Limits::default()).await;
    let r = get(front.addr, "/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let calculate = &doc["paths"]["/rpc/calc/calculate"]["post"];
    assert_eq!(calculate["operationId"], "calc.calculate");
    assert!(calculate["description"].as_str().unwrap().contains("Computes"));
    let named = &calculate["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0];
    assert_eq!(named["required"], json!(["a", "op", "b"]));
    assert_eq!(named["properties"]["op"]["type"], "string");
    assert_eq!(calculate["responses"]["200"]["content"]["application/json"]["schema"]["type"], "number");
    assert_eq!(calculate["responses"]["404"]["$ref"], "#/components/responses/E404");
    let greet = &doc["paths"]["/rpc/calc/greet"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(greet["oneOf"][0]["required"], json!(["name"]), "an Option may be left out");
    let mirror = &doc["paths"]["/rpc/calc/mirror"]["post"];
    assert_eq!(
        mirror["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Point"
    );
    assert_eq!(doc["components"]["schemas"]["Point"]["properties"]["x"]["type"], "number");
    assert!(doc["components"]["schemas"]["RpcError"]["properties"]["error"].is_object());
    assert!(!doc.to_string().contains("#/definitions/"), "every reference points into the components");

    validate(&doc).unwrap_or_else(|e| panic!("openapi-spec-validator refused the document: {e}"));
    // The validator can fail: a reference to a schema that does not exist.
    let mut broken = doc.clone();
    broken["paths"]["/rpc/calc/mirror"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] =
        json!("#/components/schemas/Nowhere");
    assert!(validate(&broken).is_err(), "a dangling reference is refused");
}

#[tokio::test]
async fn metrics_count_calls_by_outcome_with_a_latency_histogram_and_each_consumers_state() {
    let handle = rpc_http::metrics::prometheus().unwrap();
    // Two consumers behind a producer; one of the two is a closed port.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap();
    let consumer = Consumer::new(
        Arc::new(Registry::new().with(common::Calc).expect("distinct, unreserved service names")),
        ConsumerConfig::default(),
    );
    tokio::spawn(async move { consumer.serve(listener, std::future::pending::<()>()).await });
    let dead: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let producer = Producer::new(vec![live, dead], ProducerConfig::default());
    producer.probe_all().await;
    let gateway = Gateway::builder(producer.clone()).with_backends(producer).with_prometheus(handle).build();
    let front = Front::start(gateway).await;

    assert_eq!(post(front.addr, "/rpc/calc/calculate", r#"[2, "+", 2]"#, &[]).await.status, 200);
    assert_eq!(post(front.addr, "/rpc/calc/calculate", r#"[2, "^", 2]"#, &[]).await.status, 422);
    assert_eq!(post(front.addr, "/rpc/calc/nope", "{}", &[]).await.status, 404);

    let r = get(front.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    let has = |needle: &str| assert!(text.contains(needle), "no {needle} in:\n{text}");
    has(r#"rpc_calls_total{side="http",target="calc.calculate",outcome="ok"} 1"#);
    has(r#"rpc_calls_total{side="http",target="calc.calculate",outcome="handler"} 1"#);
    has(r#"rpc_calls_total{side="http",target="unknown",outcome="unknown_method"} 1"#);
    has(r#"rpc_call_duration_seconds_bucket{side="http",target="calc.calculate",le="0.005"}"#);
    has(&format!(r#"rpc_backend_up{{backend="{live}"}} 1"#));
    has(&format!(r#"rpc_backend_up{{backend="{dead}"}} 0"#));
    has(&format!(r#"rpc_backend_in_flight{{backend="{live}"}} 0"#));
    has(&format!(r#"rpc_backend_failures_total{{backend="{dead}"}}"#));
    // The two calls, and the describe request that told the front the parameters' order.
    has(&format!(r#"rpc_backend_served_total{{backend="{live}"}} 3"#));

    let ready = get(front.addr, "/readyz").await;
    assert_eq!(ready.status, 200, "one consumer of two is enough: {}", ready.text());
    let backends = ready.json()["backends"].clone();
    assert_eq!(backends[0]["state"], "up");
    assert_eq!(backends[1]["state"], "down");
}

#[tokio::test]
async fn metrics_count_the_text_protocol_side_of_the_producer_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let handle = rpc_http::metrics::prometheus().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let consumer_addr = listener.local_addr().unwrap();
    let consumer = Consumer::new(
        Arc::new(Registry::new().with(common::Calc).expect("distinct, unreserved service names")),
        ConsumerConfig::default(),
    );
    tokio::spawn(async move { consumer.serve(listener, std::future::pending::<()>()).await });
    let producer = Producer::new(vec![consumer_addr], ProducerConfig::default());
    let text_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let text_addr = text_listener.local_addr().unwrap();
    let serving = producer.clone();
    tokio::spawn(async move { serving.serve(text_listener, std::future::pending::<()>()).await });
    let front = Front::start(Gateway::builder(producer.clone()).with_prometheus(handle).build()).await;

    let mut stream = tokio::net::TcpStream::connect(text_addr).await.unwrap();
    stream.write_all(b"calc calculate 20 * 2\n").await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply.trim(), "40");

    let text = get(front.addr, "/metrics").await.text();
    let needle = r#"rpc_calls_total{side="producer",target="calc.calculate",outcome="ok"} 1"#;
    assert!(text.contains(needle), "no {needle} in:\n{text}");
}

#[tokio::test]
async fn metrics_count_requests_refused_before_any_call_under_their_envelope_code() {
    use tokio::io::AsyncWriteExt;

    let handle = rpc_http::metrics::prometheus().unwrap();
    let limits = Limits::default().with_max_body(64).with_body_timeout(Duration::from_millis(200));
    let front =
        Front::start(Gateway::builder(common::memory()).with_limits(limits).with_prometheus(handle).build()).await;

    let big = format!("[\"{}\"]", "x".repeat(100));
    assert_eq!(post(front.addr, "/rpc/calc/sum", &big, &[]).await.status, 413);
    let form = "POST /rpc/calc/sum HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 1\r\n\r\nx";
    assert_eq!(raw(front.addr, form.as_bytes()).await.status, 415);
    let mut slow = tokio::net::TcpStream::connect(front.addr).await.unwrap();
    slow.write_all(b"POST /rpc/calc/sum HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n[").await.unwrap();
    assert_eq!(common::read_response(&mut slow).await.status, 408);
    let wrong_method = "GET /rpc/calc/sum HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n";
    assert_eq!(raw(front.addr, wrong_method.as_bytes()).await.status, 405);

    let text = get(front.addr, "/metrics").await.text();
    for outcome in ["payload_too_large", "unsupported_media_type", "request_timeout", "method_not_allowed"] {
        let needle = format!(r#"rpc_calls_total{{side="http",target="unknown",outcome="{outcome}"}} 1"#);
        assert!(text.contains(&needle), "no {needle} in:\n{text}");
    }
}
