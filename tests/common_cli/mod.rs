//! Helpers for the tests that run the example programs as a user does: the built binaries,
//! started as child processes, their output read line by line, signals sent to them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// The profile directory this test binary was built into (`target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_path_buf()
}

/// The example program `name`, built from the current source.
///
/// The first call per test binary runs `cargo build --examples` into the same target
/// directory and profile as the tests (a no-op when `cargo test` already built them, as it
/// does for a whole-workspace run), so a test never runs a stale binary.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let profile = profile_dir();
    BUILT.get_or_init(|| {
        let target_dir = profile.parent().expect("target/<profile>");
        let mut build = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build
            .args(["build", "--quiet", "--locked", "--examples", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        match profile.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(other) => {
                build.args(["--profile", other]);
            }
        }
        // What cargo sets for a test process would make build scripts that watch these
        // variables (ring's) rebuild, and again at the next plain `cargo build`.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_for_tests = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_"]
                .iter()
                .any(|prefix| key.starts_with(prefix));
            if set_for_tests || key == "CARGO_TARGET_TMPDIR" || key == "CARGO_RUSTC_CURRENT_DIR" || key == "OUT_DIR" {
                build.env_remove(key.as_ref());
            }
        }
        let status = build.status().expect("running cargo build --examples");
        assert!(status.success(), "cargo build --examples failed: {status}");
    });
    let path = profile.join("examples").join(name);
    assert!(path.exists(), "no example binary at {}", path.display());
    path
}

/// A running example: its process and its output, line by line.
pub struct Program {
    pub child: Child,
    /// Its stdout, unless a test took it to read on its own.
    pub stdout: Option<Lines<BufReader<ChildStdout>>>,
    pub stderr: Lines<BufReader<ChildStderr>>,
    /// Every stderr line read so far.
    pub seen: Vec<String>,
}

/// Starts example `name` with `args` and extra environment `env` (`RUST_LOG` is cleared unless
/// given; `RABBITMQ_URL` is this test process's vhost unless given), stdout and stderr piped.
pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Program {
    let mut command = Command::new(example(name));
    command.args(args).env_remove("RUST_LOG").env_remove("NO_COLOR");
    // Every program a test starts works in the test process's own vhost (`rpc_testkit::url`),
    // never on the shared one where a user's own examples serve the same queue names.
    command.env("RABBITMQ_URL", rpc_testkit::url());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting example {name}: {e}"));
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    Program { child, stdout: Some(stdout), stderr, seen: Vec::new() }
}

impl Program {
    /// Reads stderr until a line contains `needle`, for at most `limit`; that line.
    pub async fn stderr_line(&mut self, needle: &str, limit: Duration) -> String {
        let read = async {
            while let Ok(Some(line)) = self.stderr.next_line().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        };
        match tokio::time::timeout(limit, read).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("stderr ended without a line containing {needle:?}; it said: {:#?}", self.seen),
            Err(_) => panic!("no stderr line containing {needle:?} within {limit:?}; it said: {:#?}", self.seen),
        }
    }

    /// The address in the `... on <addr> ...` line a server prints when it is ready.
    pub async fn ready_addr(&mut self, needle: &str) -> std::net::SocketAddr {
        let line = self.stderr_line(needle, Duration::from_secs(60)).await;
        line.split_whitespace()
            .find_map(|word| word.trim_end_matches([',', ';']).parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Sends `signal` (`libc`-style number: 15 for SIGTERM, 2 for SIGINT) with `kill`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the program is still running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits for the program to exit, for at most `limit`; its status, and the rest of its
    /// stdout and stderr.
    pub async fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("waiting for the program"),
            Err(_) => panic!("the program did not exit within {limit:?}; stderr so far: {:#?}", self.seen),
        };
        let mut out = String::new();
        if let Some(stdout) = self.stdout {
            let _ = stdout.into_inner().read_to_string(&mut out).await;
        }
        let mut err = self.seen.join("\n");
        if !err.is_empty() {
            err.push('\n');
        }
        let _ = self.stderr.into_inner().read_to_string(&mut err).await;
        (status, out, err)
    }
}

/// Runs example `name` to its end (at most 60 s): status, stdout, stderr.
pub async fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    spawn(name, args, env).finish(Duration::from_secs(60)).await
}
