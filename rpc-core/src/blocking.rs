//! [`BlockingPool`]: where synchronous handlers run, so they never stall the async runtime.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::RpcError;

/// A bounded pool for synchronous (presumed heavy) handlers.
///
/// Work runs on tokio's blocking threads, but at most `size` closures run at once; the rest
/// wait asynchronously for a permit, so a burst of heavy calls queues instead of spawning a
/// thread per call or starving the accept loop. Cloning shares the same bound.
#[derive(Debug, Clone)]
pub struct BlockingPool {
    permits: Arc<Semaphore>,
    size: usize,
}

impl BlockingPool {
    /// A pool running at most `size` closures at once (at least one).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        BlockingPool { permits: Arc::new(Semaphore::new(size)), size }
    }

    /// A pool sized for this machine: one slot per available CPU.
    pub fn for_machine() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from))
    }

    /// The maximum number of closures running at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` on a blocking thread once a slot is free.
    ///
    /// # Errors
    /// [`RpcError::Panic`] when `f` panics (the pool stays usable), [`RpcError::Internal`] if
    /// the runtime is shutting down.
    #[doc(hidden)]
    pub async fn run<F, R>(&self, target: &str, f: F) -> Result<R, RpcError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| RpcError::Internal { message: "blocking pool closed".into() })?;
        let joined = tokio::task::spawn_blocking(move || {
            // The permit is released when the closure ends, even if the caller stopped waiting
            // (deadline): the bound counts threads really busy.
            let _permit = permit;
            f()
        })
        .await;
        match joined {
            Ok(value) => Ok(value),
            Err(e) if e.is_panic() => Err(RpcError::Panic {
                target: target.to_owned(),
                message: crate::run::panic_message(e.into_panic().as_ref()),
            }),
            Err(e) => Err(RpcError::Internal { message: format!("{target}: blocking task failed: {e}") }),
        }
    }
}

impl Default for BlockingPool {
    fn default() -> Self {
        Self::for_machine()
    }
}
