//! `#[rpc_service]` services and their generated typed clients over RabbitMQ.

mod common;

use std::time::Duration;

use common::rpc;
use rpc_core::{kwargs, HandlerError, RpcError};
use rpc_macros::rpc_service;
use rpc_transport_amqp::{CallOptions, Codec};

/// Arithmetic for remote callers (the wire name is unique to this test binary, so parallel
/// test runs do not share the queues with other services).
pub struct Calculator {
    offset: f64,
}

#[rpc_service(name = "amqp_typed_calculator")]
impl Calculator {
    /// `a op b`.
    pub fn calculate(a: f64, op: String, b: f64) -> Result<f64, HandlerError> {
        match op.as_str() {
            "+" => Ok(a + b),
            "/" if b == 0.0 => Err(HandlerError::new("division_by_zero", "division by zero")),
            "/" => Ok(a / b),
            other => Err(HandlerError::new("unknown_operator", format!("unknown operator {other:?}"))),
        }
    }

    /// Sum of the values plus the service's offset.
    pub async fn sum(&self, #[rpc(rest)] values: Vec<f64>) -> f64 {
        values.iter().sum::<f64>() + self.offset
    }

    /// Sleeps `ms` milliseconds.
    pub async fn slow(ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

#[tokio::test]
async fn typed_calculator_client_runs_over_amqp() {
    let (_c1, server) = rpc().await;
    let (_c2, client_rpc) = rpc().await;
    server.serve(Calculator { offset: 0.5 }).await.unwrap();
    let mut registered = server.registered();
    registered.sort();
    assert_eq!(
        registered,
        ["amqp_typed_calculator.calculate", "amqp_typed_calculator.slow", "amqp_typed_calculator.sum"]
    );

    for codec in [Codec::MsgPack, Codec::Json] {
        let client = CalculatorClient::new(client_rpc.with_options(CallOptions::new().with_codec(codec)));
        assert_eq!(client.calculate(2.0, "+".into(), 2.0).await.unwrap(), 4.0);
        assert_eq!(client.sum(vec![1.0, 2.0, 3.0]).await.unwrap(), 6.5);
        let err = client.calculate(1.0, "/".into(), 0.0).await.unwrap_err();
        assert!(
            matches!(&err, RpcError::Handler { target, code: Some(code), message, .. }
                if target == "amqp_typed_calculator.calculate" && code == "division_by_zero" && message == "division by zero"),
            "{err:?}"
        );
        let err = client.clone().with_deadline(Duration::from_millis(200)).slow(5_000).await.unwrap_err();
        assert!(
            matches!(err, RpcError::DeadlineExceeded { timeout_ms: 200, .. }),
            "expected RpcError::DeadlineExceeded {{ timeout_ms: 200, .. }}, got {err:?}"
        );
        assert_eq!(client.slow(1).await.unwrap(), 1);
    }

    // The same methods by name, as a Python peer would call them.
    let four: f64 =
        client_rpc.call("amqp_typed_calculator.calculate", kwargs! { "a" => 2, "op" => "+", "b" => 2 }).await.unwrap();
    assert_eq!(four, 4.0);
    // No such method: no queue, so the broker returns the request at once.
    let err = client_rpc.call::<f64>("amqp_typed_calculator.nope", kwargs! {}).await.unwrap_err();
    assert!(matches!(err, RpcError::Unavailable { .. }), "expected RpcError::Unavailable {{ .. }}, got {err:?}");
    server.close().await.unwrap();
}
