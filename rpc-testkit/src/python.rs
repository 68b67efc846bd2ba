//! The Python peer of the interop tests: an interpreter with aio-pika, and the workspace root
//! where its scripts live (`tests/interop/`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The workspace root (where `Cargo.lock`, `scripts/` and `tests/interop/` are).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The interpreter with aio-pika: `$RPC_TEST_PYTHON`, or the venv `scripts/python-env.sh`
/// makes (creating it the first time).
///
/// # Panics
/// When the script fails: the interop tests need aio-pika, they never skip.
pub fn python() -> String {
    if let Ok(python) = std::env::var("RPC_TEST_PYTHON") {
        return python;
    }
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/python-env.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/python-env.sh");
    assert!(out.status.success(), "scripts/python-env.sh failed: cannot get aio-pika for the interop tests");
    String::from_utf8_lossy(&out.stdout).lines().last().expect("python path").trim().to_owned()
}
