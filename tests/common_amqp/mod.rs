//! Helpers shared by the RabbitMQ reliability tests (`tests/reliability_amqp/`,
//! `tests/reliability_broker_restart.rs`), included with `#[path]`.
//!
//! - broker access: [`url`], [`unique`] names, raw lapin channels, queue counters from
//!   `rabbitmqctl` (the broker's own view of ready and unacknowledged messages);
//! - child processes: a test re-executes its own binary (`--exact <test>`) with
//!   [`ROLE_ENV`] set, and the test function runs that role instead of the test; this is how
//!   a server can be a real process that the test SIGKILLs;
//! - [`vm_hwm_kb`]: peak resident memory of a process.
//!
//! Without a broker every helper panics with a clear message: these tests fail, never skip.
#![allow(dead_code, unreachable_pub)]

pub mod tls;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::{Channel, Connection};
use rpc::amqp::Rpc;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

// The broker URL, unique names and a checked connection: the same helpers as the transport
// crate's own broker tests.
#[path = "../../rpc-transport-amqp/tests/common/mod.rs"]
mod base;
#[allow(unused_imports)] // each test binary uses its own part
pub use base::{connect, raw_reply_queue, unique, url};

pub async fn channel() -> (Connection, Channel) {
    let conn = connect().await;
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// An `Rpc` on a connection of its own (returned, so the test decides when it dies).
pub async fn rpc() -> (Connection, Rpc) {
    let (conn, channel) = channel().await;
    let rpc = Rpc::create(channel).await.expect("Rpc::create");
    (conn, rpc)
}

/// `rabbitmqctl` (the tests run as root next to the broker) and the vhost a URL names.
pub use rpc_testkit::broker::{rabbitmqctl, vhost_of};

/// What the broker says about one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Messages delivered and not yet acked or rejected.
    pub unacked: u64,
    /// Consumers.
    pub consumers: u64,
}

/// The broker's counters of queue `name` (from `rabbitmqctl list_queues`; they lag a
/// moment behind acks, so poll them with [`wait_for_counts`]).
pub async fn queue_counts(name: &str) -> QueueCounts {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let vhost = vhost_of(&url());
        let (ready, unacked, consumers) = rpc_testkit::broker::queue_counts(&["-p", &vhost], &name)
            .unwrap_or_else(|| panic!("queue {name} not found by rabbitmqctl list_queues"));
        QueueCounts { ready, unacked, consumers }
    })
    .await
    .expect("rabbitmqctl task")
}

/// Polls [`queue_counts`] until `ok` holds, at most `limit`; returns the last counts and
/// whether they satisfied `ok`.
pub async fn wait_for_counts(name: &str, limit: Duration, ok: impl Fn(&QueueCounts) -> bool) -> (QueueCounts, bool) {
    let started = Instant::now();
    loop {
        let counts = queue_counts(name).await;
        if ok(&counts) {
            return (counts, true);
        }
        if started.elapsed() > limit {
            return (counts, false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes queue `name` (test hygiene: method queues are not auto-delete).
pub async fn delete_queue(name: &str) {
    let (conn, channel) = channel().await;
    let _ = channel.queue_delete(name.into(), QueueDeleteOptions::default()).await;
    let _ = conn.close(200, "OK".into()).await;
}

/// Declares method queue `name` as a server would (aio-pika's arguments), with no consumer.
pub async fn declare_method_queue(channel: &Channel, name: &str) {
    channel
        .queue_declare(name.into(), QueueDeclareOptions::default(), rpc::amqp::wire::method_queue_arguments())
        .await
        .expect("declare method queue");
}

/// Peak resident set size (`VmHWM`) of process `pid`, in KiB.
pub fn vm_hwm_kb(pid: u32) -> u64 {
    status_kb(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// Current resident set size (`VmRSS`) of this process, in KiB.
pub fn vm_rss_kb_self() -> u64 {
    status_kb("/proc/self/status", "VmRSS:")
}

fn status_kb(path: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(Path::new(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {path}"))
}

/// Environment variable naming the role a re-executed test binary plays.
pub const ROLE_ENV: &str = "RPC_RELIABILITY_ROLE";

/// The role this process was started for, when it is a child of a reliability test.
pub fn child_role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A child process playing a role; every line it prints arrives on `lines` (stdout and,
/// when captured, stderr).
pub struct RoleProcess {
    pub child: Child,
    pub pid: u32,
    pub stdin: Option<ChildStdin>,
    pub lines: mpsc::UnboundedReceiver<String>,
}

impl RoleProcess {
    /// Re-executes this test binary to run test `test` as `role`, with `env` added (an
    /// empty value removes the variable). `capture_stderr` sends stderr lines to [`RoleProcess::lines`] too (else inherited).
    /// The child is killed if this handle is dropped.
    pub fn spawn(test: &str, role: &str, env: &[(&str, String)], capture_stderr: bool) -> RoleProcess {
        let exe = std::env::current_exe().expect("current_exe");
        let mut command = Command::new(exe);
        command
            .args(["--exact", test, "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_ENV, role)
            // The parent's vhost (see `rpc_testkit::broker`).
            .env("RABBITMQ_URL", url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if capture_stderr { Stdio::piped() } else { Stdio::inherit() })
            .kill_on_drop(true);
        for (key, value) in env {
            if value.is_empty() {
                command.env_remove(key);
            } else {
                command.env(key, value);
            }
        }
        let mut child = command.spawn().expect("re-executing the test binary");
        let pid = child.id().expect("child pid");
        let (tx, lines) = mpsc::unbounded_channel();
        forward_lines(child.stdout.take().expect("stdout"), tx.clone());
        if let Some(stderr) = child.stderr.take() {
            forward_lines(stderr, tx);
        }
        let stdin = child.stdin.take();
        RoleProcess { child, pid, stdin, lines }
    }

    /// Waits (at most `limit`) for a line starting with `prefix` and returns it; lines
    /// before it are skipped.
    ///
    /// # Panics
    /// When the child exits or `limit` passes first.
    pub async fn expect_line(&mut self, prefix: &str, limit: Duration) -> String {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line.starts_with(prefix) {
                    return Some(line);
                }
            }
            None
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("child {} ended before printing '{prefix}'", self.pid),
            Err(_) => panic!("child {} printed no '{prefix}' line within {limit:?}", self.pid),
        }
    }

    /// Closes the child's stdin (a worker then closes its `Rpc` and exits) and waits for it
    /// to exit, at most `limit`.
    pub async fn finish(&mut self, limit: Duration) -> std::process::ExitStatus {
        drop(self.stdin.take());
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => panic!("child {} did not exit within {limit:?} after its stdin closed", self.pid),
        }
    }
}

fn forward_lines(stream: impl AsyncRead + Unpin + Send + 'static, tx: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// Waits until this process's stdin reaches end of file (the parent closed it or died).
pub async fn wait_for_stdin_eof() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
}

/// The pieces of an AMQP URL (`scheme://user:password@host:port/rest`), split by hand so a
/// test can swap one of them.
#[derive(Debug, Clone)]
pub struct UrlParts {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    /// Everything after the authority, e.g. `/%2f` or `/%2f?heartbeat=10`.
    pub rest: String,
}

impl UrlParts {
    pub fn of(url: &str) -> UrlParts {
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority_end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
        let (authority, rest) = after_scheme.split_at(authority_end);
        let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("guest:guest", authority));
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().expect("port")),
            None => (hostport, 5672),
        };
        UrlParts { user: user.into(), password: password.into(), host: host.into(), port, rest: rest.into() }
    }

    /// The URL with `scheme` and these parts.
    pub fn to_url(&self, scheme: &str) -> String {
        format!("{scheme}://{}:{}@{}:{}{}", self.user, self.password, self.host, self.port, self.rest)
    }
}
