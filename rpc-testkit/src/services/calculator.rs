//! `Calculator`: `calculator calculate 2 + 2`, the first call of the design document.

use rpc::core::error::quote;
use rpc::core::HandlerError;
use rpc::rpc_service;

/// The four arithmetic operators, for remote callers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Calculator;

#[rpc_service]
impl Calculator {
    /// Applies `op` (one of `+ - * /`) to `a` and `b`: `calculator calculate 2 + 2` answers
    /// `4`.
    ///
    /// Errors (codes): `division_by_zero`, `unknown_operator`, `non_finite` (the result
    /// overflowed, or an input was NaN or infinite).
    // Inline: one float operation is far cheaper than the blocking pool's two thread
    // hand-offs (BENCHMARKS.md measures both). `NeuralNet::predict` is the heavy one.
    #[rpc(inline)]
    pub fn calculate(a: f64, op: String, b: f64) -> Result<f64, HandlerError> {
        let result = match op.as_str() {
            "+" => a + b,
            "-" => a - b,
            "*" => a * b,
            "/" if b == 0.0 => return Err(HandlerError::new("division_by_zero", "division by zero")),
            "/" => a / b,
            other => {
                return Err(HandlerError::new(
                    "unknown_operator",
                    // Quoted bounded: an operator of 8 MB comes back as its start and its length.
                    format!("unknown operator {} (expected one of + - * /)", quote(other)),
                ));
            }
        };
        if result.is_finite() {
            Ok(result)
        } else {
            Err(HandlerError::new("non_finite", format!("{a} {op} {b} is not a finite number")))
        }
    }
}
