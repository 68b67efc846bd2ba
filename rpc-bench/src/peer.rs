//! The peer: aio-pika's `RPC` pattern on the same broker with the same workload, run from the
//! Python script beside this crate when a Python with aio-pika is available.

use std::path::PathBuf;
use std::process::Command;

use crate::stats::{median, Summary};
use crate::Settings;

/// The Python to use: `$RPC_TEST_PYTHON`, else the venv `scripts/python-env.sh` makes.
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("RPC_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/pyenv/bin/python")));
    let ok = Command::new(&candidate).args(["-c", "import aio_pika"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(candidate)
}

/// aio-pika at each of `levels` calls in flight, or why it could not run.
pub fn run(settings: &Settings, levels: &[usize]) -> Result<Vec<Summary>, String> {
    let python = python().ok_or("no Python with aio-pika (run `bash scripts/python-env.sh`)")?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peer/aio_pika_bench.py");
    let output = Command::new(python)
        .arg(script)
        .arg("--concurrency")
        .args(levels.iter().map(ToString::to_string))
        .args(["--seconds", &settings.duration.as_secs_f64().to_string()])
        .args(["--warmup", &settings.warmup.as_secs_f64().to_string()])
        .args(["--reps", &settings.reps.to_string()])
        .env("RABBITMQ_URL", crate::amqp::url())
        .output()
        .map_err(|e| format!("cannot run the aio-pika script: {e}"))?;
    if !output.status.success() {
        return Err(format!("aio-pika script failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let runs: Vec<serde_json::Value> =
        String::from_utf8_lossy(&output.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let mut out = Vec::new();
    for &concurrency in levels {
        let mine: Vec<_> = runs.iter().filter(|r| r["concurrency"].as_u64() == Some(concurrency as u64)).collect();
        let col = |k: &str| median(mine.iter().filter_map(|r| r[k].as_f64()).collect());
        out.push(Summary {
            name: "aio-pika RPC (peer)".into(),
            concurrency,
            rate: col("rate"),
            p50_ms: col("p50_ms"),
            p99_ms: col("p99_ms"),
            errors: mine.iter().filter_map(|r| r["errors"].as_u64()).sum(),
        });
    }
    Ok(out)
}
