//! Shared fixtures of the workspace's tests, examples and benchmark (dev only, never
//! published):
//!
//! - [`services`]: the example services (`Calculator`, `NeuralNet`) that the examples
//!   serve, the benchmark measures and the end-to-end tests call;
//! - [`broker`]: the test broker's URL, on a vhost of the test process's own ([`url`]; the
//!   module docs say how the isolation works), and [`unique`] names;
//! - [`node`]: private RabbitMQ nodes, for the tests that restart a broker;
//! - [`python()`]: the interop tests' Python with aio-pika.
#![warn(missing_docs)]

pub mod broker;
pub mod node;
mod python;
pub mod services;

pub use broker::{unique, url, DEFAULT_RABBITMQ_URL};
pub use python::{python, workspace_root};
