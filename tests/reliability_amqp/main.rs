//! The RabbitMQ half of the reliability suite, one module per concern:
//!
//! - [`hostile_requests`]: hostile input at a server;
//! - [`hostile_replies`]: hostile input at a client;
//! - [`failover`]: a server process SIGKILLed mid-load;
//! - [`load`]: 100,000 calls with 256 in flight;
//! - [`credentials`]: credentials in logs, errors and the client example's output, and
//!   `amqps://`;
//! - [`oversized`]: replies the broker cannot carry (a huge error, a broker with a small
//!   `max_message_size` on a private node).
//!
//! Broker restarts are in `reliability_broker_restart.rs` (run alone). Results and numbers:
//! `RELIABILITY.md`. This file holds the shared test service and the roles.
//!
//! Every test uses its own queue names, so these run in parallel with the rest of the suite.
//! Some tests re-execute this binary to run a server or a client in a process of its own
//! (`common_amqp::RoleProcess`, with the test's path, `module::name`): the test function then
//! plays that role instead (see [`play`]).

#[path = "../common_amqp/mod.rs"]
mod common_amqp;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common_amqp::{
    child_role, declare_method_queue, delete_queue, rabbitmqctl, rpc, unique, url, vm_hwm_kb, vm_rss_kb_self,
    wait_for_counts, RoleProcess, UrlParts,
};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use rpc::amqp::{codec, CallOptions, Codec, Rpc};
use rpc::core::HandlerError;
use rpc::{kwargs, RpcError};
use rpc_testkit::services;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Arguments of the test method served by worker processes: unique per call.
#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: u64,
    tag: String,
}

/// Its result: the arguments back, and which process answered.
#[derive(Debug, Serialize, Deserialize)]
struct Echo {
    n: u64,
    tag: String,
    pid: u32,
}

/// Arguments of the in-process test method of the bad-input tests.
#[derive(Deserialize)]
struct Probe {
    t: f64,
    id: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Roles played by re-executed copies of this binary.
// ---------------------------------------------------------------------------------------

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn env_required(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} must be set for this role"))
}

/// Runs the role this process was started for.
async fn play(role: &str) {
    match role {
        "worker" => worker().await,
        "load-client" => load_client().await,
        "log-capture" => credentials::log_capture().await,
        "tls-client" => credentials::tls_client().await,
        other => panic!("unknown role {other}"),
    }
}

/// A server process: serves `$RPC_WORKER_METHOD` (a [`Work`] → [`Echo`] handler that waits
/// `$RPC_WORKER_DELAY_MS` first and, with `$RPC_WORKER_TRACE=1`, prints `started <n>` as it
/// takes a request) on an `Rpc::connect` of its own, prints `ready`, and serves until killed
/// or until its stdin closes (then it closes gracefully and prints `vmhwm <KiB>`).
async fn worker() {
    let method = env_required("RPC_WORKER_METHOD");
    let delay = Duration::from_millis(env_or("RPC_WORKER_DELAY_MS", 0));
    let trace = env_or("RPC_WORKER_TRACE", 0u8) == 1;
    let prefetch = env_or("RPC_WORKER_PREFETCH", rpc::amqp::config::DEFAULT_PREFETCH);
    let rpc = Rpc::builder().with_prefetch(prefetch).connect(&url()).await.expect("worker connects");
    let pid = std::process::id();
    rpc.register_async(&method, move |work: Work| async move {
        if trace {
            println!("started {}", work.n);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, HandlerError>(Echo { n: work.n, tag: work.tag, pid })
    })
    .await
    .expect("worker registers");
    println!("ready");
    common_amqp::wait_for_stdin_eof().await;
    rpc.close().await.expect("worker closes");
    println!("vmhwm {}", vm_hwm_kb(pid));
}

/// A client process: `$RPC_LOAD_CALLS` calls of `$RPC_LOAD_METHOD`, `$RPC_LOAD_INFLIGHT` at
/// a time, each with a unique argument checked against its result; prints one `load ...`
/// line of `key=value` counters (and its memory), then closes.
async fn load_client() {
    let method = env_required("RPC_LOAD_METHOD");
    let calls: u64 = env_or("RPC_LOAD_CALLS", 100_000);
    let inflight: usize = env_or("RPC_LOAD_INFLIGHT", 256);
    let rpc =
        Rpc::builder().with_deadline(Duration::from_secs(60)).connect(&url()).await.expect("load client connects");
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let answered: Arc<Vec<AtomicBool>> = Arc::new((0..calls).map(|_| AtomicBool::new(false)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let [ok, failed, wrong, duplicate] = [(); 4].map(|_| Arc::new(AtomicU64::new(0)));
    let rss_at_tenth = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(inflight);
    for _ in 0..inflight {
        let (rpc, method, nonce) = (rpc.clone(), method.clone(), nonce.clone());
        let (answered, next, done) = (Arc::clone(&answered), Arc::clone(&next), Arc::clone(&done));
        let (ok, failed, wrong, duplicate) =
            (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&wrong), Arc::clone(&duplicate));
        let rss_at_tenth = Arc::clone(&rss_at_tenth);
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls {
                    return;
                }
                let tag = format!("{nonce}-{n}");
                match rpc.call::<Echo>(&method, kwargs! { "n" => n, "tag" => tag }).await {
                    Ok(echo) if echo.n == n && echo.tag == tag => {
                        if answered[n as usize].swap(true, Ordering::Relaxed) {
                            duplicate.fetch_add(1, Ordering::Relaxed);
                        } else {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(echo) => {
                        eprintln!("call {n} answered with another call's result: {echo:?}");
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 10 {
                            eprintln!("call {n} failed: {e}");
                        }
                    }
                }
                if done.fetch_add(1, Ordering::Relaxed) + 1 == calls / 10 {
                    rss_at_tenth.store(vm_rss_kb_self(), Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("load task");
    }
    let secs = started.elapsed().as_secs_f64();
    let missing = answered.iter().filter(|a| !a.load(Ordering::Relaxed)).count();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "load calls={calls} ok={} failed={} wrong={} duplicate={} missing={missing} pending={} secs={secs:.1} \
         rss_tenth_kb={} rss_end_kb={} hwm_kb={}",
        get(&ok),
        get(&failed),
        get(&wrong),
        get(&duplicate),
        rpc.pending_calls(),
        get(&rss_at_tenth),
        vm_rss_kb_self(),
        vm_hwm_kb(std::process::id()),
    );
    rpc.close().await.expect("load client closes");
}

/// `key=value` pairs of a line printed by a role.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// `value` as a MessagePack body.
fn msgpack(value: Value) -> Vec<u8> {
    Codec::MsgPack.encode(&value).expect("msgpack")
}

/// Pids of the broker connections whose client-provided name is `name`.
fn broker_connections(name: &str) -> Vec<String> {
    rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "pid", "client_properties"])
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

mod credentials;
mod failover;
mod hostile_replies;
mod hostile_requests;
mod load;
mod oversized;
