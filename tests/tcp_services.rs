//! The example services over the text protocol (a real Consumer on loopback): the
//! calculator's operators and errors, and the neural network's XOR answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc::core::{MemoryTransport, Registry, RpcError};
use rpc::tcp::{Consumer, ConsumerConfig, TcpTransport};
use rpc_testkit::services::{self, Calculator, CalculatorClient, NeuralNet, NeuralNetClient};

/// A Consumer for `registry` on a free loopback port, serving until the test ends.
async fn consumer(registry: Registry) -> TcpTransport {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let consumer = Consumer::new(Arc::new(registry), ConsumerConfig::default());
    tokio::spawn(async move { consumer.serve(listener, std::future::pending::<()>()).await });
    TcpTransport::new(addr)
}

async fn calculator() -> CalculatorClient<TcpTransport> {
    CalculatorClient::new(consumer(Registry::new().with(Calculator).expect("distinct, unreserved service names")).await)
}

fn handler_code(error: RpcError) -> String {
    match error {
        RpcError::Handler { code, .. } => code.unwrap_or_default(),
        other => panic!("expected a handler error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_calculator_supports_all_four_operators() {
    let c = calculator().await;
    assert_eq!(c.calculate(2.0, "+".into(), 2.0).await.unwrap(), 4.0);
    assert_eq!(c.calculate(2.0, "-".into(), 5.0).await.unwrap(), -3.0);
    assert_eq!(c.calculate(1.5, "*".into(), 4.0).await.unwrap(), 6.0);
    assert_eq!(c.calculate(1.0, "/".into(), 4.0).await.unwrap(), 0.25);
}

#[tokio::test]
async fn the_calculator_names_its_errors() {
    let c = calculator().await;
    assert_eq!(handler_code(c.calculate(1.0, "/".into(), 0.0).await.unwrap_err()), "division_by_zero");
    let unknown = c.calculate(1.0, "^".into(), 2.0).await.unwrap_err();
    assert!(unknown.to_string().contains("unknown operator \"^\" (expected one of + - * /)"), "{unknown}");
    assert_eq!(handler_code(unknown), "unknown_operator");
    assert_eq!(handler_code(c.calculate(f64::MAX, "*".into(), 2.0).await.unwrap_err()), "non_finite");
}

#[tokio::test]
async fn the_neural_net_answers_xor_for_all_four_inputs() {
    let nn = NeuralNetClient::new(
        consumer(Registry::new().with(NeuralNet::shared()).expect("distinct, unreserved service names")).await,
    );
    for (x1, x2, class) in [(0.0, 0.0, 0), (0.0, 1.0, 1), (1.0, 0.0, 1), (1.0, 1.0, 0)] {
        let p = nn.predict(vec![x1, x2]).await.unwrap();
        assert_eq!(p.class, class, "{x1} xor {x2}: {p:?}");
        assert!(p.probability > 0.9, "{x1} xor {x2}: {p:?}");
        assert_eq!(p.evaluations as usize, services::neural_net::MEMBERS * services::neural_net::SAMPLES);
    }
}

#[tokio::test]
async fn the_neural_net_refuses_the_wrong_number_of_inputs() {
    let nn = NeuralNetClient::new(
        consumer(Registry::new().with(NeuralNet::shared()).expect("distinct, unreserved service names")).await,
    );
    let error = nn.predict(vec![1.0]).await.unwrap_err();
    assert!(error.to_string().contains("expected 2 inputs (x1 x2), got 1"), "{error}");
    assert_eq!(handler_code(error), "invalid_input");
    assert_eq!(handler_code(nn.predict(vec![1.0, 0.0, 1.0]).await.unwrap_err()), "invalid_input");
}

#[tokio::test]
async fn the_neural_net_describes_its_architecture() {
    let nn = NeuralNetClient::new(MemoryTransport::new(
        Registry::new().with(NeuralNet::shared()).expect("distinct, unreserved service names"),
    ));
    let a = nn.architecture().await.unwrap();
    assert_eq!(a.layers, [2, 16, 16, 1]);
    assert_eq!(a.parameters, 2 * 16 + 16 + 16 * 16 + 16 + 16 + 1);
    assert!(a.final_loss < 0.05, "{a:?}");
}

/// "Fast" with bounds a loaded machine keeps (about 0.5 s and 25 ms in a debug build on an idle
/// one); the cost of a prediction is its work, every ensemble member on every noisy sample,
/// counted rather than timed (a lower bound on time would fail on a fast machine).
#[test]
fn training_is_deterministic_and_fast_and_a_prediction_runs_every_member_on_every_sample() {
    let started = Instant::now();
    let a = NeuralNet::new();
    let trained_in = started.elapsed();
    let b = NeuralNet::new();
    assert_eq!(a.architecture(), b.architecture());
    let started = Instant::now();
    let p = a.predict(vec![1.0, 0.0]).unwrap();
    let predicted_in = started.elapsed();
    assert_eq!(p, b.predict(vec![1.0, 0.0]).unwrap());
    eprintln!("training: {trained_in:?}, one prediction: {predicted_in:?}, {:?} {p:?}", a.architecture());
    assert!(trained_in < Duration::from_secs(30), "training took {trained_in:?}");
    assert!(predicted_in < Duration::from_secs(5), "one prediction took {predicted_in:?}");
    let evaluations = services::neural_net::MEMBERS * services::neural_net::SAMPLES;
    assert_eq!(p.evaluations as usize, evaluations);
    assert_eq!(a.architecture().evaluations_per_prediction, evaluations);
}

#[tokio::test]
async fn the_neural_net_answers_soundly_for_the_largest_finite_inputs() {
    let nn = NeuralNetClient::new(
        consumer(Registry::new().with(NeuralNet::shared()).expect("distinct, unreserved service names")).await,
    );
    for inputs in [vec![3.4e38, 3.4e38], vec![f32::MAX, -f32::MAX], vec![-3.4e38, 1.0]] {
        let p = nn.predict(inputs.clone()).await.unwrap();
        assert!(p.probability.is_finite() && (0.5..=1.0).contains(&p.probability), "{inputs:?}: {p:?}");
        assert!(p.spread.is_finite(), "{inputs:?}: {p:?}");
    }
}
