//! Prometheus metrics: the process-wide recorder, the calls the front makes, and its
//! backends' state.
//!
//! Calls are counted under the names every side of the framework uses
//! (`rpc_core::layer::metrics`): `rpc_calls_total{side="http", target, outcome}` and the
//! histogram `rpc_call_duration_seconds{side="http", target}`. Backends are gauges read when
//! `/metrics` is scraped: `rpc_backend_up`, `rpc_backend_in_flight`, and the counters
//! `rpc_backend_served_total`, `rpc_backend_failures_total`, each labelled `backend`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::backends::BackendStatus;

/// Latency buckets, in seconds: 1 ms to 30 s.
const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The process's Prometheus recorder, installed as the global `metrics` recorder on first
/// use, with histograms (not summaries) for every `*_seconds` metric.
///
/// # Errors
/// When another global recorder was installed first.
pub fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))
        })
        .clone()
}

/// Counts one call made through the front.
pub(crate) fn record_call(target: &str, outcome: &'static str, elapsed: Duration) {
    metrics::counter!("rpc_calls_total", "side" => "http", "target" => target.to_owned(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("rpc_call_duration_seconds", "side" => "http", "target" => target.to_owned())
        .record(elapsed.as_secs_f64());
}

/// Sets the backends' gauges and counters to what they are now.
pub(crate) fn record_backends(backends: &[BackendStatus]) {
    for b in backends {
        let name = b.name.clone();
        metrics::gauge!("rpc_backend_up", "backend" => name.clone()).set(if b.up { 1.0 } else { 0.0 });
        metrics::gauge!("rpc_backend_in_flight", "backend" => name.clone()).set(b.in_flight as f64);
        metrics::counter!("rpc_backend_served_total", "backend" => name.clone()).absolute(b.served);
        metrics::counter!("rpc_backend_failures_total", "backend" => name).absolute(b.failures);
    }
}
