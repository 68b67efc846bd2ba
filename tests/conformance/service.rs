//! The service every configuration serves: one method per case, and the counters that let a
//! test see how far a cancelled handler got.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rpc::core::{Context, HandlerError};
use rpc::rpc_service;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// A structured result: the typed client must get it back field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The label the caller sent.
    pub label: String,
    /// How many values there were.
    pub count: u32,
    /// Their sum.
    pub total: i64,
}

/// A handler error that serializes: callers read it back with `RpcError::downcast`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Refusal {
    /// The request asked for more than `limit`.
    TooMany {
        /// The most the handler accepts.
        limit: u32,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooMany { limit } => write!(f, "too many (at most {limit})"),
        }
    }
}

/// How far a counting handler got, and a signal when its work ended.
#[derive(Default)]
pub struct Progress {
    steps: AtomicU32,
    ended: Notify,
}

impl Progress {
    /// Steps counted so far.
    pub fn steps(&self) -> u32 {
        self.steps.load(Ordering::SeqCst)
    }

    /// Waits until the handler has counted `n` steps.
    pub async fn reached(&self, n: u32) {
        while self.steps() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the handler's work ended (returned, or its future was dropped).
    pub async fn ended(&self) {
        self.ended.notified().await;
    }
}

/// The progress of the counting call named `key`. Keyed by the call, not by the server: on
/// RabbitMQ every test's server consumes the same queues, so any of them may run the call.
pub fn progress(key: &str) -> Arc<Progress> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<Progress>>>> = OnceLock::new();
    let mut all = ALL.get_or_init(Mutex::default).lock().unwrap();
    Arc::clone(all.entry(key.to_owned()).or_default())
}

/// Drops with the handler's future (or at its end), telling the test the work is over.
struct EndSignal(Arc<Progress>);

impl Drop for EndSignal {
    fn drop(&mut self) {
        self.0.ended.notify_one();
    }
}

/// The conformance service.
pub struct Conformance;

#[rpc_service(name = "conformance")]
impl Conformance {
    /// `a + b`.
    pub fn add(a: i64, b: i64) -> i64 {
        a + b
    }

    /// A structured summary of `values`.
    pub fn summarize(label: String, values: Vec<i64>) -> Summary {
        Summary { label, count: values.len() as u32, total: values.iter().sum() }
    }

    /// Fails with `code`.
    pub fn fail(code: String) -> Result<u32, HandlerError> {
        Err(HandlerError::new(code, "the handler refused"))
    }

    /// Fails with a `Refusal` when `n` is over 5.
    pub fn refuse(n: u32) -> Result<u32, Refusal> {
        if n > 5 {
            Err(Refusal::TooMany { limit: 5 })
        } else {
            Ok(n)
        }
    }

    /// Panics.
    pub fn explode() -> u32 {
        panic!("conformance handler panicked on purpose")
    }

    /// Sleeps `ms` milliseconds, then answers `ms`.
    pub async fn nap(ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    /// `len` bytes of `x`.
    pub fn text(len: u32) -> String {
        "x".repeat(len as usize)
    }

    /// The length of `s` in bytes.
    pub fn length(s: String) -> u64 {
        s.len() as u64
    }

    /// The `tenant` metadata entry of the call, if it carries one.
    pub async fn tenant(ctx: &Context) -> Option<String> {
        ctx.metadata().get("tenant").map(str::to_owned)
    }

    /// Counts `steps` steps of 20 ms into the progress named `key`; stops when its call is
    /// cancelled (the future dropped, or the context's signal).
    pub async fn count(ctx: &Context, key: String, steps: u32) -> u32 {
        let progress = progress(&key);
        let _end = EndSignal(Arc::clone(&progress));
        for step in 0..steps {
            if ctx.is_cancelled() {
                return step;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            progress.steps.fetch_add(1, Ordering::SeqCst);
        }
        steps
    }
}
