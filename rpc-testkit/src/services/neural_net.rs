//! `NeuralNet`: real neural-network inference, on the toy task every network course starts
//! with, XOR.
//!
//! The model is an ensemble of [`MEMBERS`] multilayer perceptrons, each 2-16-16-1 (tanh,
//! tanh, sigmoid), trained at construction with plain full-batch gradient descent on
//! binary cross-entropy, from fixed seeds: the same weights on every machine, every run. A
//! prediction is an ensemble average under test-time augmentation: each member is evaluated
//! on [`SAMPLES`] copies of the input with small Gaussian noise (seeded by the input, so the
//! answer is deterministic), which also yields a robustness measure (`spread`). That is
//! 1,280 forward passes, about 1.2 ms of CPU in a release build (about 15 ms in a debug
//! build): real work that makes the Consumer's blocking pool matter, none of it thrown away.
//! Training takes about 15 ms in release and 250 ms in debug, once per process with
//! [`NeuralNet::shared`].

use std::sync::{Arc, OnceLock};

use rpc::core::HandlerError;
use rpc::rpc_service;
use serde::{Deserialize, Serialize};

/// Layer widths, input first.
pub const LAYERS: [usize; 4] = [2, 16, 16, 1];
/// Independently initialised networks in the ensemble.
pub const MEMBERS: usize = 4;
/// Noisy evaluations of each member per prediction.
pub const SAMPLES: usize = 320;
/// Standard deviation of the test-time input noise.
pub const INPUT_NOISE: f32 = 0.1;
/// Full-batch gradient-descent steps per member.
pub const EPOCHS: usize = 600;
/// Gradient-descent step size.
pub const LEARNING_RATE: f32 = 0.5;
/// Seed of the first member's initial weights (member `i` uses `SEED + i`).
pub const SEED: u64 = 0x0C0F_FEE0_0000_0042;

/// The XOR truth table: inputs and target.
const XOR: [([f32; 2], f32); 4] = [([0.0, 0.0], 0.0), ([0.0, 1.0], 1.0), ([1.0, 0.0], 1.0), ([1.0, 1.0], 0.0)];

/// What `neural_net predict x1 x2` answers: `{"class":1,"probability":0.98,...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The predicted XOR class, 0 or 1.
    pub class: u8,
    /// The ensemble's confidence in that class, between 0.5 and 1 (4 decimals).
    pub probability: f64,
    /// Standard deviation of P(class 1) over the noisy evaluations: how much small input
    /// perturbations move the answer (4 decimals).
    pub spread: f64,
    /// Forward passes this prediction took.
    pub evaluations: u32,
}

/// What `neural_net architecture` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Layer widths, input first.
    pub layers: Vec<usize>,
    /// Activation of each non-input layer.
    pub activations: Vec<String>,
    /// Trainable parameters per member.
    pub parameters: usize,
    /// Networks in the ensemble.
    pub ensemble: usize,
    /// Forward passes per prediction.
    pub evaluations_per_prediction: usize,
    /// Standard deviation of the test-time input noise.
    pub input_noise: f64,
    /// The training task.
    pub trained_on: String,
    /// Gradient-descent steps per member.
    pub epochs: usize,
    /// Gradient-descent step size.
    pub learning_rate: f64,
    /// Mean binary cross-entropy on the training set after training, over members (6
    /// decimals).
    pub final_loss: f64,
}

/// An XOR classifier served over RPC.
#[derive(Clone)]
pub struct NeuralNet {
    model: Arc<Model>,
}

impl std::fmt::Debug for NeuralNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeuralNet").field("final_loss", &self.model.final_loss).finish_non_exhaustive()
    }
}

#[rpc_service]
impl NeuralNet {
    /// Classifies `(x1, x2)` as XOR would: `neural_net predict 1 0` answers class 1.
    ///
    /// Errors (code `invalid_input`): not exactly two inputs, or a non-finite one.
    pub fn predict(&self, #[rpc(rest)] inputs: Vec<f32>) -> Result<Prediction, HandlerError> {
        let [x1, x2] = inputs[..] else {
            return Err(HandlerError::new("invalid_input", format!("expected 2 inputs (x1 x2), got {}", inputs.len())));
        };
        if !(x1.is_finite() && x2.is_finite()) {
            return Err(HandlerError::new("invalid_input", format!("inputs must be finite numbers, got {x1} {x2}")));
        }
        Ok(self.model.predict([x1, x2]))
    }

    /// Describes the network: layers, activations, ensemble size, training.
    pub fn architecture(&self) -> Architecture {
        let parameters = LAYERS.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
        Architecture {
            layers: LAYERS.to_vec(),
            activations: vec!["tanh".into(), "tanh".into(), "sigmoid".into()],
            parameters,
            ensemble: MEMBERS,
            evaluations_per_prediction: MEMBERS * SAMPLES,
            input_noise: round(f64::from(INPUT_NOISE), 4),
            trained_on: "xor".into(),
            epochs: EPOCHS,
            learning_rate: round(f64::from(LEARNING_RATE), 4),
            final_loss: round(f64::from(self.model.final_loss), 6),
        }
    }
}

impl NeuralNet {
    /// Trains a fresh model (deterministic: the same weights every time).
    pub fn new() -> Self {
        NeuralNet { model: Arc::new(Model::train()) }
    }

    /// The process-wide model, trained on first use: every consumer in one process shares it.
    pub fn shared() -> Self {
        static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
        NeuralNet { model: Arc::clone(MODEL.get_or_init(|| Arc::new(Model::train()))) }
    }
}

impl Default for NeuralNet {
    fn default() -> Self {
        Self::new()
    }
}

struct Model {
    members: Vec<Mlp>,
    final_loss: f32,
}

impl Model {
    fn train() -> Model {
        let mut final_loss = 0.0;
        let members = (0..MEMBERS as u64)
            .map(|i| {
                let mut mlp = Mlp::new(&mut Rng(SEED.wrapping_add(i)));
                final_loss += mlp.train(EPOCHS, LEARNING_RATE) / MEMBERS as f32;
                mlp
            })
            .collect();
        Model { members, final_loss }
    }

    fn predict(&self, x: [f32; 2]) -> Prediction {
        // Seeded by the input: the same question always gets the same answer.
        let mut rng = Rng(u64::from(x[0].to_bits()) << 32 | u64::from(x[1].to_bits()));
        let mut scratch = Scratch::default();
        let (mut sum, mut sum_sq) = (0.0f64, 0.0f64);
        for member in &self.members {
            for _ in 0..SAMPLES {
                let noisy = [x[0] + INPUT_NOISE * rng.normal(), x[1] + INPUT_NOISE * rng.normal()];
                let p = f64::from(member.forward(&noisy, &mut scratch));
                sum += p;
                sum_sq += p * p;
            }
        }
        let n = (MEMBERS * SAMPLES) as f64;
        let mean = sum / n;
        let spread = (sum_sq / n - mean * mean).max(0.0).sqrt();
        let class = u8::from(mean >= 0.5);
        let probability = if class == 1 { mean } else { 1.0 - mean };
        Prediction { class, probability: round(probability, 4), spread: round(spread, 4), evaluations: n as u32 }
    }
}

/// `x` to `decimals` places: the network's f32 arithmetic has no more to say, and the reply
/// reads better.
fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// A fully connected layer: `outputs × inputs` weights, row-major.
struct Dense {
    inputs: usize,
    outputs: usize,
    weights: Vec<f32>,
    biases: Vec<f32>,
}

/// A multilayer perceptron: tanh hidden layers, a sigmoid output.
struct Mlp {
    layers: Vec<Dense>,
}

#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Mlp {
    /// Xavier-uniform weights, zero biases.
    fn new(rng: &mut Rng) -> Mlp {
        let layers = LAYERS
            .windows(2)
            .map(|w| {
                let (inputs, outputs) = (w[0], w[1]);
                let limit = (6.0 / (inputs + outputs) as f32).sqrt();
                let weights = (0..inputs * outputs).map(|_| (rng.uniform() * 2.0 - 1.0) * limit).collect();
                Dense { inputs, outputs, weights, biases: vec![0.0; outputs] }
            })
            .collect();
        Mlp { layers }
    }

    fn apply(layer: &Dense, input: &[f32], output: &mut Vec<f32>, last: bool) {
        output.clear();
        for o in 0..layer.outputs {
            let row = &layer.weights[o * layer.inputs..(o + 1) * layer.inputs];
            // Summed in f64: any finite f32 input (up to 3.4e38) times a weight stays finite
            // there, where an f32 sum would overflow to infinity and turn the answer into NaN.
            let z = f64::from(layer.biases[o])
                + row.iter().zip(input).map(|(w, x)| f64::from(*w) * f64::from(*x)).sum::<f64>();
            let activated = if last { sigmoid(z) } else { z.tanh() };
            output.push(activated as f32);
        }
    }

    /// P(class 1) for one input.
    fn forward(&self, x: &[f32; 2], scratch: &mut Scratch) -> f32 {
        scratch.a.clear();
        scratch.a.extend_from_slice(x);
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            Self::apply(layer, &scratch.a, &mut scratch.b, i == last);
            std::mem::swap(&mut scratch.a, &mut scratch.b);
        }
        scratch.a[0]
    }

    /// Full-batch gradient descent on XOR; returns the final mean cross-entropy.
    fn train(&mut self, epochs: usize, learning_rate: f32) -> f32 {
        let n_layers = self.layers.len();
        let mut grads: Vec<Dense> = self
            .layers
            .iter()
            .map(|l| Dense {
                inputs: l.inputs,
                outputs: l.outputs,
                weights: vec![0.0; l.weights.len()],
                biases: vec![0.0; l.outputs],
            })
            .collect();
        let mut activations: Vec<Vec<f32>> = LAYERS.iter().map(|&w| Vec::with_capacity(w)).collect();
        let mut loss = 0.0;
        for _ in 0..epochs {
            for g in &mut grads {
                g.weights.fill(0.0);
                g.biases.fill(0.0);
            }
            loss = 0.0;
            for (x, y) in XOR {
                activations[0].clear();
                activations[0].extend_from_slice(&x);
                for l in 0..n_layers {
                    let (done, rest) = activations.split_at_mut(l + 1);
                    Self::apply(&self.layers[l], &done[l], &mut rest[0], l + 1 == n_layers);
                }
                let p = activations[n_layers][0].clamp(1e-7, 1.0 - 1e-7);
                loss -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
                // Sigmoid + cross-entropy: the output's error signal is simply p - y.
                let mut delta = vec![p - y];
                for l in (0..n_layers).rev() {
                    let (layer, grad, input) = (&self.layers[l], &mut grads[l], &activations[l]);
                    for (o, d) in delta.iter().enumerate() {
                        grad.biases[o] += d;
                        let row = &mut grad.weights[o * layer.inputs..(o + 1) * layer.inputs];
                        row.iter_mut().zip(input).for_each(|(g, x)| *g += d * x);
                    }
                    if l > 0 {
                        // Back through the weights, then through tanh (d tanh = 1 - a²).
                        delta = (0..layer.inputs)
                            .map(|i| {
                                let back: f32 =
                                    (0..layer.outputs).map(|o| layer.weights[o * layer.inputs + i] * delta[o]).sum();
                                back * (1.0 - input[i] * input[i])
                            })
                            .collect();
                    }
                }
            }
            let step = learning_rate / XOR.len() as f32;
            for (layer, grad) in self.layers.iter_mut().zip(&grads) {
                layer.weights.iter_mut().zip(&grad.weights).for_each(|(w, g)| *w -= step * g);
                layer.biases.iter_mut().zip(&grad.biases).for_each(|(b, g)| *b -= step * g);
            }
        }
        loss / XOR.len() as f32
    }
}

/// SplitMix64: tiny, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}
