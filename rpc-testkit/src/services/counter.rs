//! Services that count steps of work, so that a test proves a handler's work stopped (its
//! deadline passed, its caller left), not only that the caller stopped waiting.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rpc::core::Context;
use rpc::rpc_service;
use tokio::sync::Notify;

/// How far a counting handler got, and a signal when its work ended.
#[derive(Debug)]
pub struct Progress {
    steps: AtomicU32,
    ended: Notify,
    step: Duration,
}

impl Progress {
    /// A fresh count, for handlers whose steps take `step` each.
    pub fn new(step: Duration) -> Arc<Progress> {
        Arc::new(Progress { steps: AtomicU32::new(0), ended: Notify::new(), step })
    }

    /// Steps counted so far.
    pub fn steps(&self) -> u32 {
        self.steps.load(Ordering::SeqCst)
    }

    /// Waits until the handler has counted `n` steps.
    pub async fn reached(&self, n: u32) {
        while self.steps() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the handler's work ended (it returned, or its future was dropped); at once
    /// when it ended before this was called.
    pub async fn ended(&self) {
        self.ended.notified().await;
    }
}

/// Drops with the handler's future (or at its end), telling the test the work is over.
struct EndSignal<'a>(&'a Progress);

impl Drop for EndSignal<'_> {
    fn drop(&mut self) {
        self.0.ended.notify_one();
    }
}

/// Counts steps asynchronously: a cancelled call drops it at its next `.await`.
pub struct AsyncCounter {
    progress: Arc<Progress>,
}

impl AsyncCounter {
    /// A counter reporting into `progress`.
    pub fn new(progress: &Arc<Progress>) -> AsyncCounter {
        AsyncCounter { progress: Arc::clone(progress) }
    }
}

#[rpc_service(name = "async_counter")]
impl AsyncCounter {
    /// `steps` steps, each counted when done.
    pub async fn count(&self, steps: u32) -> u32 {
        let _end = EndSignal(&self.progress);
        for _ in 0..steps {
            tokio::time::sleep(self.progress.step).await;
            self.progress.steps.fetch_add(1, Ordering::SeqCst);
        }
        steps
    }
}

/// Counts steps on the blocking pool, stopping once its call is cancelled.
pub struct SyncCounter {
    progress: Arc<Progress>,
}

impl SyncCounter {
    /// A counter reporting into `progress`.
    pub fn new(progress: &Arc<Progress>) -> SyncCounter {
        SyncCounter { progress: Arc::clone(progress) }
    }
}

#[rpc_service(name = "sync_counter")]
impl SyncCounter {
    /// `steps` steps, each counted when done; returns early once cancelled.
    pub fn count(&self, ctx: &Context, steps: u32) -> u32 {
        let _end = EndSignal(&self.progress);
        for step in 0..steps {
            if ctx.is_cancelled() {
                return step;
            }
            std::thread::sleep(self.progress.step);
            self.progress.steps.fetch_add(1, Ordering::SeqCst);
        }
        steps
    }
}
