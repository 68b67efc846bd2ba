//! A broker restarted under steady load: every call ends in its result or a clear error
//! within its deadline, and service comes back by itself, within a bounded time, with no
//! process restarted.
//!
//! Each test restarts a private RabbitMQ node of its own (`rpc_testkit::node`: own node name,
//! port and data directory, removed afterwards), never the broker at `$RABBITMQ_URL`, whose
//! uptime each test checks is unchanged. It needs `rabbitmqctl` and `rabbitmq-server` (root,
//! next to the broker) and a free port in 5690-5699 (`$RPC_TEST_NODE_PORTS`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc::amqp::{CallOptions, Rpc};
use rpc::core::HandlerError;
use rpc::kwargs;
use rpc_testkit::broker::rabbitmqctl;
use rpc_testkit::node::PrivateNode;
use rpc_testkit::unique;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: u64,
    tag: String,
}

/// Deadline of every call of the steady load.
const DEADLINE: Duration = Duration::from_secs(5);
/// Callers running at once.
const CALLERS: u64 = 32;
/// How long the broker stays down.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// Service must be back this long after the broker accepts connections again (the
/// reconnection backoff tops out at 5 s by default).
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// Whether the broker at `url` answers the AMQP protocol header (a bare TCP accept is not
/// enough while a node boots).
fn broker_answers(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &after_scheme[..after_scheme.find(['/', '?']).unwrap_or(after_scheme.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let Some(addr) = hostport.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let mut reply = [0u8; 8];
    stream.write_all(b"AMQP\x00\x00\x09\x01").is_ok() && stream.read(&mut reply).is_ok_and(|n| n > 0)
}

/// How long the default broker (the one `rabbitmqctl` reaches without `-n`) has been up.
fn default_broker_uptime() -> Duration {
    let out = rabbitmqctl(&["eval", "element(1, erlang:statistics(wall_clock))."]);
    let ms = out.trim().parse().unwrap_or_else(|_| panic!("expected milliseconds from rabbitmqctl eval, got {out:?}"));
    Duration::from_millis(ms)
}

/// `(ready, unacked, consumers)` of queue `name` on `node`, polled until `ok` holds (at
/// most `limit`); the last counts and whether they satisfied `ok`.
async fn node_queue_counts(
    node: &PrivateNode,
    name: &str,
    limit: Duration,
    ok: impl Fn((u64, u64, u64)) -> bool,
) -> ((u64, u64, u64), bool) {
    let started = Instant::now();
    loop {
        let counts =
            node.queue_counts(name).unwrap_or_else(|| panic!("expected queue {name} on the private node, it has none"));
        if ok(counts) || started.elapsed() > limit {
            return (counts, ok(counts));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One call of the steady load.
#[derive(Debug)]
struct Record {
    /// When it started, from the start of the load.
    at: Duration,
    took: Duration,
    /// `Ok`, or the error kind and message.
    outcome: Result<(), (String, String)>,
}

/// `CALLERS` tasks calling `method` back to back (after an error, 50 ms later) until `stop`,
/// each with a unique argument whose echo is checked.
fn steady_load(
    client: &Rpc,
    method: &str,
    epoch: Instant,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Record>> {
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let (client, method, stop, records) =
            (client.clone(), method.to_owned(), Arc::clone(stop), Arc::clone(&records));
        callers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = caller * 1_000_000 + seq;
                seq += 1;
                let tag = format!("{method}-{n}");
                let at = epoch.elapsed();
                let started = Instant::now();
                let outcome = client
                    .call_with::<Work>(
                        &method,
                        kwargs! { "n" => n, "tag" => tag.clone() },
                        CallOptions::new().with_deadline(DEADLINE),
                    )
                    .await;
                let took = started.elapsed();
                let outcome = match outcome {
                    Ok(echo) => {
                        assert_eq!(
                            (echo.n, echo.tag.as_str()),
                            (n, tag.as_str()),
                            "call {n} got another call's result"
                        );
                        Ok(())
                    }
                    Err(e) => Err((e.kind().to_owned(), e.to_string())),
                };
                let failed = outcome.is_err();
                records.lock().unwrap().push(Record { at, took, outcome });
                if failed {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    tokio::spawn(async move {
        for caller in callers {
            caller.await.expect("a caller panicked");
        }
        Arc::try_unwrap(records).expect("callers done").into_inner().unwrap()
    })
}

/// What to do to the broker.
enum Restart {
    /// `rabbitmqctl stop_app`, then `start_app`: the node stays, every connection is closed.
    App,
    /// SIGKILL the node's Erlang VM, then start it again: sockets reset, no goodbye.
    KillNode,
}

/// Runs the steady load across one restart of a private node and checks every call's outcome.
async fn steady_load_survives(restart: Restart, label: &str) {
    let uptime_before = tokio::task::spawn_blocking(default_broker_uptime).await.unwrap();
    let node = Arc::new(tokio::task::spawn_blocking(PrivateNode::start).await.unwrap());
    let url = node.url().to_owned();
    assert!(broker_answers(&url), "expected the private node at {url} to answer AMQP, it does not");
    let method = unique("rel-restart");
    let server = Rpc::connect(&url).await.expect("server connects");
    server.register_async(&method, |w: Work| async move { Ok::<_, HandlerError>(w) }).await.unwrap();
    let client = Rpc::connect(&url).await.expect("client connects");

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&client, &method, epoch, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stopped_at = epoch.elapsed();
    let down = Arc::clone(&node);
    match restart {
        Restart::App => tokio::task::spawn_blocking(move || down.rabbitmqctl(&["stop_app"])).await.map(drop).unwrap(),
        Restart::KillNode => tokio::task::spawn_blocking(move || down.kill()).await.unwrap(),
    }
    tokio::time::sleep(DOWN_FOR).await;
    let up = Arc::clone(&node);
    let back_at = tokio::task::spawn_blocking(move || {
        match restart {
            Restart::App => {
                up.rabbitmqctl(&["start_app"]);
            }
            Restart::KillNode => up.restart(),
        }
        let started = Instant::now();
        while !broker_answers(up.url()) {
            assert!(started.elapsed() < Duration::from_secs(120), "expected the node back within 120 s, it is not");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .map(|()| epoch.elapsed())
    .unwrap();

    // Service resumes by itself: the first call that succeeds after the restart.
    let resumed_at = {
        let started = Instant::now();
        loop {
            let probe = client
                .call_with::<Work>(
                    &method,
                    kwargs! { "n" => 0, "tag" => "probe" },
                    CallOptions::new().with_deadline(DEADLINE),
                )
                .await;
            if probe.is_ok() {
                break epoch.elapsed();
            }
            assert!(
                started.elapsed() < RECOVERY_LIMIT,
                "no successful call {RECOVERY_LIMIT:?} after the broker came back: {probe:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let records = tokio::time::timeout(DEADLINE * 3, load).await.expect("every call ends").unwrap();

    let recovery = resumed_at - back_at;
    let total = records.len();
    let ok = records.iter().filter(|r| r.outcome.is_ok()).count();
    let mut kinds = std::collections::BTreeMap::new();
    for r in &records {
        if let Err((kind, _)) = &r.outcome {
            *kinds.entry(kind.clone()).or_insert(0) += 1;
        }
    }
    let slowest = records.iter().map(|r| r.took).max().unwrap_or_default();
    println!(
        "{label}: broker down at {stopped_at:?}, accepting again at {back_at:?}, service resumed at {resumed_at:?} \
         ({recovery:?} after the broker was back); {total} calls: {ok} ok, errors by kind {kinds:?}; slowest call {slowest:?}"
    );
    for r in &records {
        assert!(
            r.took <= DEADLINE + Duration::from_millis(500),
            "a call took {:?}, beyond its deadline: {r:?}",
            r.took
        );
        if let Err((kind, message)) = &r.outcome {
            assert!(
                ["transport", "unavailable", "deadline_exceeded"].contains(&kind.as_str()) && !message.is_empty(),
                "not a clear broker-outage error: {r:?}"
            );
        }
    }
    assert!(ok > 0 && ok < total, "the restart was not under load: {ok} of {total} ok");
    // Once service is back, it stays back.
    let late_failures: Vec<&Record> = records.iter().filter(|r| r.at > resumed_at && r.outcome.is_err()).collect();
    assert!(
        late_failures.is_empty(),
        "{} calls failed after service resumed, e.g. {:?}",
        late_failures.len(),
        late_failures.first()
    );
    assert!(recovery < RECOVERY_LIMIT, "{recovery:?}");
    let (counts, settled) =
        node_queue_counts(&node, &method, Duration::from_secs(30), |(ready, unacked, _)| ready == 0 && unacked == 0)
            .await;
    assert!(settled, "expected no ready or unacked requests left, got (ready, unacked, consumers) {counts:?}");
    assert_eq!(counts.2, 1, "expected the server to consume again, got (ready, unacked, consumers) {counts:?}");
    assert_eq!(client.pending_calls(), 0, "expected no pending calls after the load ended");
    for rpc in [&client, &server] {
        rpc.close().await.unwrap();
    }
    drop(node);
    let uptime_after = tokio::task::spawn_blocking(default_broker_uptime).await.unwrap();
    assert!(
        uptime_after > uptime_before,
        "expected the default broker untouched (its uptime growing), got {uptime_before:?} before, {uptime_after:?} after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_app_restarted_under_steady_load_every_call_ends_within_its_deadline_and_service_resumes_by_itself() {
    steady_load_survives(Restart::App, "stop_app/start_app").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_node_sigkilled_and_restarted_under_steady_load_every_call_ends_within_its_deadline_and_service_resumes()
{
    steady_load_survives(Restart::KillNode, "SIGKILL node, start it again").await;
}
