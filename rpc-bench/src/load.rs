//! A closed-loop load generator: `concurrency` workers each issue one call after another for
//! a fixed time, recording each call's latency.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::Run;

/// Runs `call` from `concurrency` workers for `duration` (after `warmup`), and returns the
/// measured run. `call(worker, i)` must return whether the call succeeded.
pub async fn closed_loop<F, Fut>(concurrency: usize, warmup: Duration, duration: Duration, call: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let call = Arc::clone(&call);
        workers.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::with_capacity(4096));
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let success = call(w, i).await;
                i += 1;
                if t0 < measure_from {
                    continue;
                }
                if success {
                    ok += 1;
                    lat.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (ok, errors, lat)
        }));
    }
    let (mut ok, mut errors, mut lat) = (0, 0, Vec::new());
    for w in workers {
        let (o, e, l) = w.await.expect("load worker panicked");
        ok += o;
        errors += e;
        lat.extend(l);
    }
    // Calls still in flight at `end` finished after it; measure to the last one's end.
    let elapsed = Instant::now().saturating_duration_since(measure_from).max(duration);
    Run::new(ok, errors, elapsed, lat)
}
