//! The describe request over RabbitMQ (`Rpc::describe`): every `Rpc` of the vhost that serves
//! something answers with what it serves, and the caller merges the answers, so servers of
//! different services are all listed.

mod common;

use std::time::Duration;

use rpc_core::HandlerError;
use rpc_macros::rpc_service;
use rpc_transport_amqp::{Error, Rpc};
use serde_json::Value;

/// The adder.
pub struct Adder;

/// Arithmetic for the describe test.
#[rpc_service(name = "amqp_describe_adder")]
impl Adder {
    /// Adds `a` and `b`.
    pub fn add(a: f64, b: f64) -> f64 {
        a + b
    }

    /// Divides `a` by `b`.
    pub fn div(a: f64, b: f64) -> Result<f64, HandlerError> {
        if b == 0.0 {
            return Err(HandlerError::new("division_by_zero", "division by zero"));
        }
        Ok(a / b)
    }
}

/// Greetings for the describe test.
pub struct Greeter;

#[rpc_service(name = "amqp_describe_greeter")]
impl Greeter {
    /// Says hello to `name`.
    pub fn hello(name: String) -> String {
        format!("hello {name}")
    }
}

fn service<'a>(description: &'a Value, name: &str) -> Option<&'a Value> {
    description["services"].as_array()?.iter().find(|s| s["name"] == name)
}

fn method_names(service: &Value) -> Vec<&str> {
    service["methods"].as_array().map(|m| m.iter().filter_map(|m| m["name"].as_str()).collect()).unwrap_or_default()
}

async fn connect() -> Rpc {
    Rpc::connect(&common::url()).await.expect("connect")
}

#[tokio::test]
async fn servers_of_different_services_are_all_described() {
    let adders = [connect().await, connect().await];
    for rpc in &adders {
        rpc.serve(Adder).await.expect("serve Adder");
    }
    let greeter = connect().await;
    greeter.serve(Greeter).await.expect("serve Greeter");
    let plain = common::unique("describe-plain");
    greeter
        .register_async(&plain, |_: Value| async move { Ok::<_, std::convert::Infallible>(0) })
        .await
        .expect("register a plain handler");

    let client = connect().await;
    let described = client.describe(Duration::from_millis(1500)).await.expect("describe");
    // Other tests of this binary may serve too: at least these three answered.
    assert!(described["servers"].as_u64().unwrap_or(0) >= 3, "{described:#}");
    let adder = service(&described, "amqp_describe_adder").expect("the adder is described");
    assert_eq!(method_names(adder), ["add", "div"]);
    assert_eq!(adder["doc"], "Arithmetic for the describe test.");
    let add = &adder["methods"][0];
    assert_eq!(add["doc"], "Adds `a` and `b`.");
    assert_eq!(add["target"], "amqp_describe_adder.add");
    assert_eq!(add["params"][0]["name"], "a");
    assert_eq!(add["params"][0]["type"], "f64");
    assert_eq!(add["params"][0]["schema"]["type"], "number");
    assert_eq!(add["returns"]["type"], "f64");
    let greeter_info = service(&described, "amqp_describe_greeter").expect("the greeter is described");
    assert_eq!(method_names(greeter_info), ["hello"]);
    let methods: Vec<&str> = described["methods"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for name in ["amqp_describe_adder.add", "amqp_describe_adder.div", "amqp_describe_greeter.hello", plain.as_str()] {
        assert!(methods.contains(&name), "{name} listed in {methods:?}");
    }

    // An unregistered method is no longer described; a service with none left disappears.
    greeter.unregister("amqp_describe_greeter.hello").await.expect("unregister");
    let described = client.describe(Duration::from_millis(1000)).await.expect("describe");
    assert!(service(&described, "amqp_describe_greeter").is_none(), "{described:#}");
    assert!(service(&described, "amqp_describe_adder").is_some());

    for rpc in adders.iter().chain([&greeter, &client]) {
        rpc.close().await.expect("close");
    }
    let (conn, channel) = common::channel().await;
    for queue in ["amqp_describe_adder.add", "amqp_describe_adder.div", "amqp_describe_greeter.hello", plain.as_str()] {
        let _ = channel.queue_delete(queue.into(), Default::default()).await;
    }
    let _ = conn.close(200, "OK".into()).await;
}

#[tokio::test]
async fn reserved_names_cannot_be_registered() {
    let rpc = connect().await;
    for name in ["_rpc.describe", "_rpc", "_rpcx.y"] {
        let err = rpc
            .register_async(name, |_: Value| async move { Ok::<_, std::convert::Infallible>(0) })
            .await
            .expect_err("reserved");
        assert!(matches!(&err, Error::InvalidName { reason, .. } if reason.contains("'_rpc'")), "{name}: {err:?}");
    }
    rpc.close().await.expect("close");
}

/// Answers are bounded by the caller's `max_body_size` in all: a hand-written responder that
/// answers each describe request three times, 3 kB each, gets at most one answer taken in by
/// a caller whose limit is 4 KiB (other tests' servers answering too only take room).
#[tokio::test]
async fn describe_answers_are_taken_in_up_to_the_callers_body_limit_in_all() {
    use futures_util::StreamExt;
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
    use lapin::types::FieldTable;

    let (_conn, channel) = common::channel().await;
    let (queue, mut requests) = common::raw_reply_queue(&channel).await;
    let exchange = rpc_transport_amqp::wire::DESCRIBE_EXCHANGE;
    let declare = ExchangeDeclareOptions { durable: false, auto_delete: false, ..Default::default() };
    channel
        .exchange_declare(exchange.into(), lapin::ExchangeKind::Fanout, declare, FieldTable::default())
        .await
        .expect("declare the describe exchange");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let responder = tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            for i in 0..3 {
                let name = format!("oversized-{i}-{}", "x".repeat(3000));
                let body =
                    serde_json::to_vec(&serde_json::json!({"services": [], "definitions": {}, "methods": [name]}))
                        .expect("encode");
                common::answer(&channel, &request, "application/json", &body).await;
            }
        }
    });
    let caller = Rpc::builder().with_max_body_size(4096).connect(&common::url()).await.expect("connect");
    let described = caller.describe(Duration::from_millis(800)).await.expect("describe");
    let taken = described["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .filter(|m| m.as_str().is_some_and(|m| m.starts_with("oversized-")))
        .count();
    assert!(taken <= 1, "{taken} answers of 3 kB taken in under a 4 KiB limit");
    responder.abort();
    caller.close().await.expect("close");
}
