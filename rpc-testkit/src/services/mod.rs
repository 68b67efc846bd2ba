//! The example services: what the examples serve, the benchmark measures and the end-to-end
//! tests call.
// Each example or test uses a different part of this module.
#![allow(unused_imports)]

pub mod calculator;
pub mod counter;
pub mod neural_net;

pub use calculator::{Calculator, CalculatorClient};
pub use counter::{AsyncCounter, AsyncCounterClient, Progress, SyncCounter, SyncCounterClient};
pub use neural_net::{Architecture, NeuralNet, NeuralNetClient, Prediction};

use rpc::core::{BlockingPool, Registry};

/// A registry serving both services, with a blocking pool of `pool_size` slots (`None`: one
/// per CPU) for their synchronous methods.
pub fn registry(pool_size: Option<usize>) -> Registry {
    let pool = pool_size.map_or_else(BlockingPool::for_machine, BlockingPool::new);
    Registry::new()
        .with_blocking_pool(pool)
        .with(Calculator)
        .and_then(|r| r.with(NeuralNet::shared()))
        .expect("distinct, unreserved service names")
}
