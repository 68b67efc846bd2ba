//! Private RabbitMQ nodes, for the tests that stop, kill or restart a broker: never the
//! user's broker, always a node of the test's own (`scripts/rabbitmq-node.sh`: own node name,
//! ports and data directory), removed when the [`PrivateNode`] is dropped.
//!
//! Nodes are named `<$RPC_TEST_NODE_NAME>-<port>` (default `rpc-test-node`) and listen on the
//! first free AMQP port of `$RPC_TEST_NODE_PORTS` (default `5690-5699`; the Erlang
//! distribution port is the AMQP port + 20000), so two runs on one machine take different
//! nodes.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Prefix of the private nodes' names.
pub const NAME_ENV: &str = "RPC_TEST_NODE_NAME";
/// AMQP ports the private nodes may take, `first-last`.
pub const PORTS_ENV: &str = "RPC_TEST_NODE_PORTS";

/// A RabbitMQ node of the test's own, stopped and its data removed on drop.
#[derive(Debug)]
pub struct PrivateNode {
    name: String,
    url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-node.sh")
}

fn node_script(args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("scripts/rabbitmq-node.sh cannot run: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("scripts/rabbitmq-node.sh {args:?} failed ({}): {}", out.status, stderr.trim()))
    }
}

fn ports() -> (u16, u16) {
    let spec = std::env::var(PORTS_ENV).unwrap_or_else(|_| "5690-5699".into());
    let parsed = spec.split_once('-').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    parsed.unwrap_or_else(|| panic!("{PORTS_ENV}={spec:?}: expected first-last, e.g. 5690-5699"))
}

impl PrivateNode {
    /// Starts a node on the first port of the range that is free, with fresh data, and waits
    /// until it accepts AMQP (a node boots in 5 to 30 s).
    ///
    /// # Panics
    /// When no port of the range gives a running node.
    pub fn start() -> PrivateNode {
        PrivateNode::start_with(&[])
    }

    /// [`PrivateNode::start`], with `config` lines added to the node's `rabbitmq.conf` (e.g.
    /// `max_message_size = 65536`).
    ///
    /// # Panics
    /// When no port of the range gives a running node.
    pub fn start_with(config: &[&str]) -> PrivateNode {
        let prefix = std::env::var(NAME_ENV).unwrap_or_else(|_| "rpc-test-node".into());
        let (first, last) = ports();
        let mut failures = Vec::new();
        for port in first..=last {
            let name = format!("{prefix}-{port}");
            let port = port.to_string();
            let mut args = vec!["start", name.as_str(), port.as_str()];
            args.extend_from_slice(config);
            match node_script(&args) {
                Ok(out) => {
                    let url = out.lines().last().unwrap_or_default().trim().to_owned();
                    return PrivateNode { name, url };
                }
                Err(e) => failures.push(e),
            }
        }
        panic!("expected a private RabbitMQ node on a port of {first}-{last}, got none: {failures:#?}");
    }

    /// Its AMQP URL (default user, vhost `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `rabbitmqctl` against this node; its stdout.
    ///
    /// # Panics
    /// When it fails.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        let node = format!("{}@localhost", self.name);
        let mut all = vec!["-n", node.as_str()];
        all.extend_from_slice(args);
        crate::broker::rabbitmqctl(&all)
    }

    /// `(ready, unacked, consumers)` of queue `name` (default vhost); `None` when the node has
    /// no such queue.
    ///
    /// # Panics
    /// When `rabbitmqctl` fails.
    pub fn queue_counts(&self, name: &str) -> Option<(u64, u64, u64)> {
        let node = format!("{}@localhost", self.name);
        crate::broker::queue_counts(&["-n", &node], name)
    }

    /// SIGKILLs the node's Erlang VM (its data stays, for [`PrivateNode::restart`]).
    ///
    /// # Panics
    /// When it was not running.
    pub fn kill(&self) {
        node_script(&["kill", &self.name]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the node again (stopping it first if it runs), same data and port; returns
    /// once it accepts AMQP.
    ///
    /// # Panics
    /// When it does not come back.
    pub fn restart(&self) {
        node_script(&["restart", &self.name]).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        // `rabbitmqctl stop` first: after `stop_app` and `start_app` the node has no pid file,
        // and the script finds a node by its pid file. Failing is fine (it may be down).
        let node = format!("{}@localhost", self.name);
        let _ = crate::broker::try_rabbitmqctl(&["-n", &node, "stop"]);
        if let Err(e) = node_script(&["stop", &self.name]) {
            eprintln!("rpc-testkit: private node {} not removed: {e}", self.name);
        }
    }
}
