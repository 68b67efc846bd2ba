// The seed's calculator: static methods, a Result with a coded error, the typed client.
use rpc_core::{HandlerError, MemoryTransport, Registry};
use rpc_macros::rpc_service;

pub struct Calculator;

#[rpc_service]
impl Calculator {
    pub fn calculate(a: f64, op: String, b: f64) -> Result<f64, HandlerError> {
        match op.as_str() {
            "+" => Ok(a + b),
            "-" => Ok(a - b),
            "*" => Ok(a * b),
            "/" if b == 0.0 => Err(HandlerError::new("division_by_zero", "division by zero")),
            "/" => Ok(a / b),
            _ => Err(HandlerError::new("unknown_operator", op)),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let client = CalculatorClient::new(MemoryTransport::new(Registry::new().with(Calculator).unwrap()));
    assert_eq!(client.calculate(2.0, "+".into(), 2.0).await.unwrap(), 4.0);
}
