//! Typed calls in the text shape, through a real Consumer: every argument shape a typed client
//! can send renders as tokens and decodes back, and what cannot be one token, or has no
//! promised order, is refused before it is sent.

mod common;

use std::time::Duration;

use rpc_core::{kwargs, Registry, Request, RpcError, Transport};
use rpc_macros::rpc_service;
use rpc_transport_tcp::{ConsumerConfig, TcpTransport};
use serde::{Deserialize, Serialize};

pub struct Shapes;

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

#[rpc_service]
impl Shapes {
    pub fn calculate(a: f64, op: String, b: f64) -> f64 {
        match op.as_str() {
            "+" => a + b,
            _ => a * b,
        }
    }

    pub fn apply(a: i64, op: Op, b: i64) -> i64 {
        match op {
            Op::Add => a + b,
            Op::Mul => a * b,
        }
    }

    pub fn total(values: Vec<i32>) -> i32 {
        values.iter().sum()
    }

    pub fn greet(name: Option<String>) -> String {
        format!("hello {}", name.as_deref().unwrap_or("world"))
    }

    pub async fn stats(label: String, #[rpc(rest)] values: Vec<f64>) -> (String, Stats) {
        let count = values.len();
        let mean = if count == 0 { 0.0 } else { values.iter().sum::<f64>() / count as f64 };
        (label, Stats { count, mean })
    }

    pub fn echo(text: String) -> String {
        text
    }

    pub fn nothing() {}
}

async fn shapes() -> (common::TestServer, ShapesClient<TcpTransport>) {
    let server = common::consumer(
        Registry::new().with(Shapes).expect("distinct, unreserved service names"),
        ConsumerConfig::default(),
    )
    .await;
    let client = ShapesClient::new(TcpTransport::new(server.addr)).with_deadline(Duration::from_secs(10));
    (server, client)
}

#[tokio::test]
async fn typed_calls_round_trip_every_argument_shape_as_text() {
    let (_server, calc) = shapes().await;
    assert_eq!(calc.calculate(2.0, "+".into(), 2.0).await.unwrap(), 4.0);
    assert_eq!(calc.apply(6, Op::Mul, 7).await.unwrap(), 42);
    assert_eq!(calc.total(vec![1, 2, 3]).await.unwrap(), 6);
    assert_eq!(calc.greet(None).await.unwrap(), "hello world");
    assert_eq!(calc.greet(Some("bo".into())).await.unwrap(), "hello bo");
    let (label, stats) = calc.stats("s".into(), vec![1.0, 2.0, 6.0]).await.unwrap();
    assert_eq!((label.as_str(), stats), ("s", Stats { count: 3, mean: 3.0 }));
    assert_eq!(calc.echo("hi".into()).await.unwrap(), "hi");
    calc.nothing().await.unwrap();
}

#[tokio::test]
async fn an_argument_that_cannot_be_one_token_is_refused_before_sending() {
    let (_server, calc) = shapes().await;
    let err = calc.echo("two words".into()).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::BadRequest { reason } if reason.contains("'text'")),
        "expected bad_request naming argument 'text', got {err:?}"
    );
}

#[tokio::test]
async fn named_arguments_in_no_promised_order_are_refused_not_misassigned() {
    let (server, _) = shapes().await;
    // `b` before `a`: sent as positional tokens this would compute 3 + 10 as 3 * ...
    let request = Request::new("shapes", "calculate", kwargs! {"b" => 3.0, "op" => "-", "a" => 10.0});
    let err = TcpTransport::new(server.addr).call(request).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::BadRequest { reason } if reason.contains("parameter order")),
        "expected bad_request about parameter order, got {err:?}"
    );
}
