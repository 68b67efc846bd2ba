// &self state, async methods, renamed service and methods, skipped helpers, rest params,
// unit returns, deprecated methods, `mut` bindings.
use std::sync::atomic::{AtomicU32, Ordering};

use rpc_core::{MemoryTransport, Registry, Service};
use rpc_macros::rpc_service;

pub struct NeuralNet {
    calls: AtomicU32,
}

/// A tiny model.
#[rpc_service(name = "nn")]
impl NeuralNet {
    /// Sums its inputs.
    pub fn predict(&self, #[rpc(rest)] inputs: Vec<f32>) -> f32 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        inputs.iter().sum()
    }

    #[rpc(name = "calls")]
    pub async fn call_count(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.calls.store(0, Ordering::Relaxed);
    }

    /// Parameters may use the names the generated code once used for its own.
    pub fn names(ctx: String, method: String, args: u8) -> String {
        format!("{ctx}{method}{args}")
    }

    pub fn shout(mut text: String) -> String {
        text.make_ascii_uppercase();
        text
    }

    #[deprecated = "use predict"]
    pub fn old_predict(&self) -> f32 {
        0.0
    }

    #[rpc(skip)]
    pub fn new() -> Self {
        NeuralNet { calls: AtomicU32::new(0) }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let net = NeuralNet::new();
    assert_eq!(net.info().name, "nn");
    assert_eq!(net.info().method_names(), ["predict", "calls", "reset", "names", "shout", "old_predict"]);
    let client = NeuralNetClient::new(MemoryTransport::new(Registry::new().with(net).unwrap()));
    assert_eq!(client.predict(vec![1.0, 2.0]).await.unwrap(), 3.0);
    assert_eq!(client.call_count().await.unwrap(), 1);
    client.reset().await.unwrap();
    assert_eq!(client.shout("a".into()).await.unwrap(), "A");
    assert_eq!(client.names("c".into(), "m".into(), 1).await.unwrap(), "cm1");
}
