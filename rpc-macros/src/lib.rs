//! `#[rpc_service]`: turns an inherent `impl` block into an RPC service and a typed client.
//!
//! Layout: `model.rs` parses the impl block into a typed model (keeping the user's tokens for
//! spans), `validate.rs` checks what the parser alone cannot (duplicates, reserved names), and
//! `expand.rs` writes the generated items, one function each. Every error points at the user's
//! own tokens, all are reported at once, and the user's impl is re-emitted unchanged beside
//! them so one mistake does not cascade.
#![deny(missing_docs)]

use proc_macro::TokenStream;

mod attrs;
mod expand;
mod model;
mod validate;

/// Turns the methods of an inherent `impl` block into RPC handlers, and generates a typed
/// client.
///
/// ```
/// use rpc_core::{HandlerError, MemoryTransport, Registry};
/// use rpc_macros::rpc_service;
///
/// /// Arithmetic for remote callers.
/// pub struct Calculator;
///
/// #[rpc_service]
/// impl Calculator {
///     /// `calculator calculate 2 + 2` answers `4`.
///     pub fn calculate(a: f64, op: String, b: f64) -> Result<f64, HandlerError> {
///         match op.as_str() {
///             "+" => Ok(a + b),
///             "/" if b == 0.0 => Err(HandlerError::new("division_by_zero", "division by zero")),
///             "/" => Ok(a / b),
///             other => Err(HandlerError::new("unknown_operator", format!("unknown operator {other:?}"))),
///         }
///     }
///
///     /// Sums any number of values: `calculator sum 1 2 3`.
///     pub async fn sum(#[rpc(rest)] values: Vec<f64>) -> f64 {
///         values.iter().sum()
///     }
///
///     /// Not callable remotely.
///     #[rpc(skip)]
///     fn helper() {}
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = CalculatorClient::new(MemoryTransport::new(Registry::new().with(Calculator)?));
/// assert_eq!(client.calculate(2.0, "+".into(), 2.0).await?, 4.0);
/// assert_eq!(client.sum(vec![1.0, 2.0, 3.0]).await?, 6.0);
/// # Ok(())
/// # }
/// ```
///
/// # What it generates
/// For `impl Calculator { .. }`:
/// - the impl block itself, with the macro's helper attributes removed;
/// - `impl rpc_core::Service for Calculator`, whose metadata (`Service::info`) lists every
///   method's wire name, parameters (names and types as written), return type, doc comment,
///   and whether it is synchronous; and whose `call` decodes arguments by the parameters'
///   types and dispatches by method name;
/// - `pub struct CalculatorClient<T>` (`Clone`, `Debug`), with `new(transport: T)`,
///   `with_timeout(self, Duration)`, `transport(&self) -> &T` and, for each method, an
///   `async fn` with the same parameters returning `Result<R, RpcError>`, where `R` is the
///   method's return type, or `T` when it returns `Result<T, E>`.
///
/// # Options
/// - `#[rpc_service(name = "calc")]`: the service's wire name (default: the type's name in
///   snake_case, `NeuralNet` → `neural_net`).
/// - `#[rpc_service(crate = "my_facade::core")]`: where `rpc_core` is found (default: found
///   from `Cargo.toml`, as `rpc_core` or `rpc::core`).
/// - `#[rpc(name = "add")]` on a method: its wire name (default: the fn's name).
/// - `#[rpc(skip)]` on a method: keep it out of the RPC surface.
/// - `#[rpc(inline)]` on a synchronous method: run it on the async runtime instead of the
///   blocking pool. Only for methods that finish in microseconds (arithmetic, a lookup):
///   it saves two thread hand-offs per call, and anything slower stalls every other call
///   on that runtime thread.
/// - `#[rpc(rest)]` on the last parameter: it collects all remaining text tokens
///   (`neural_net predict 0.5 1.0` → `Vec<f32>`); in named calls it is one array.
///
/// # Methods
/// Methods may take no receiver (the design document's static methods) or `&self` (service state), may be
/// `async` or not, and return any `Serialize` type or `Result<T, E>` with `E: Display`.
/// Synchronous methods are presumed heavy and run on the registry's bounded blocking pool, so
/// they never stall the async runtime (unless marked `#[rpc(inline)]`). Parameters are owned `Deserialize + Serialize` types.
/// Misuse (trait or generic impls, `self` by value or `&mut self`, pattern or reference
/// parameters, duplicate wire names, reserved names, ...) is a compile error pointing at the
/// offending tokens.
#[proc_macro_attribute]
pub fn rpc_service(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::rpc_service(args.into(), input.into()).into()
}
