//! Failover on a real three-node RabbitMQ cluster (`scripts/rabbitmq-cluster.sh`, AMQP ports
//! 5681-5683, started by this test and stopped at its end, pass or fail). The script's
//! `RPC_CLUSTER_PREFIX` and `RPC_CLUSTER_BASE_PORT` move the cluster to other node names and
//! ports (two suites on one machine); the test follows them.
//!
//! A client on node 1 keeps 32 calls in flight (5 s deadlines) to servers on nodes 2 and 3.
//! With a classic method queue, node 2 (the queue's node and a server's) is SIGKILLed, started
//! again, then node 1 (the client's). With a quorum method queue, requests wait in the queue
//! while its leader's node is SIGKILLed, and are served afterwards; then the load runs again
//! with the client on the node that leads the queue now, and that node is SIGKILLed. Every
//! call must end in its own result or an error within its deadline, none may hang, every `Rpc`
//! reconnects by itself, and calls succeed again within seconds. The counts are printed
//! (`--nocapture`) and asserted.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_transport_amqp::{kwargs, wire, CallOptions, Rpc};

/// Each call's deadline.
const DEADLINE: Duration = Duration::from_secs(5);
/// A call not ended this long after its deadline hangs.
const HANG_SLACK: Duration = Duration::from_secs(3);
/// Calls in flight.
const IN_FLIGHT: usize = 32;
/// Calls must succeed at half the rate they had before a kill within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh")
}

/// The nodes' name prefix, as `scripts/rabbitmq-cluster.sh` reads it: node `n` is
/// `{prefix}-{n}@localhost`.
fn prefix() -> String {
    std::env::var("RPC_CLUSTER_PREFIX").unwrap_or_else(|_| "rpc-cluster".into())
}

/// The AMQP ports the script uses, for messages.
fn ports() -> String {
    let base: u16 = std::env::var("RPC_CLUSTER_BASE_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5680);
    format!("{}-{}", base + 1, base + 3)
}

/// The cluster, stopped and removed when dropped (also when the test panics).
struct Cluster {
    urls: Vec<String>,
}

impl Cluster {
    fn start() -> Cluster {
        let started = Instant::now();
        let out = std::process::Command::new("bash").arg(script()).arg("start").output().expect("bash runs");
        // The guard exists before the check: a start that failed halfway is cleaned up too.
        let mut cluster = Cluster { urls: Vec::new() };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the cluster did not start (is another one running on {}?): {}",
            ports(),
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().last().unwrap_or_default();
        cluster.urls = wire::broker_urls(line).into_iter().map(str::to_owned).collect();
        assert_eq!(cluster.urls.len(), 3, "start printed {stdout:?}");
        println!(
            "cluster up in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
        );
        cluster
    }

    /// The list a process on node `n` is given: `n` first, then the others in order.
    fn list_from(&self, n: usize) -> String {
        (0..3).map(|i| self.urls[(n - 1 + i) % 3].as_str()).collect::<Vec<_>>().join(",")
    }

    fn url(&self, n: usize) -> String {
        wire::redact_url(&self.urls[n - 1])
    }

    /// SIGKILLs node `n`; when the signal was sent (the script then waits for the process
    /// to be gone).
    fn kill(&self, n: usize) -> Instant {
        let at = Instant::now();
        run(&["kill", &n.to_string()]);
        at
    }

    async fn restart(&self, n: usize) -> Duration {
        let started = Instant::now();
        tokio::task::spawn_blocking(move || run(&["restart", &n.to_string()])).await.expect("restart task");
        started.elapsed()
    }

    /// `rabbitmqctl` on node `n`.
    fn ctl(n: usize, args: &[&str]) -> String {
        let node = format!("{}-{n}@localhost", prefix());
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", "-n", &node])
            .args(args)
            .output()
            .expect("rabbitmqctl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `(messages ready, leader node number)` of quorum queue `name`, asked of node `via`.
    fn quorum_queue(via: usize, name: &str) -> Option<(u64, usize)> {
        let out = Self::ctl(via, &["list_queues", "--no-table-headers", "name", "messages_ready", "leader"]);
        let prefix = format!("{}-", prefix());
        out.lines().find_map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            [queue, ready, leader] if queue == name => {
                let n = leader.strip_prefix(prefix.as_str())?.split('@').next()?.parse().ok()?;
                Some((ready.parse().ok()?, n))
            }
            _ => None,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = std::process::Command::new("bash").arg(script()).arg("stop").output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("stopping the cluster: {out:?}");
        }
    }
}

fn run(args: &[&str]) {
    let out = std::process::Command::new("bash").arg(script()).args(args).output().expect("bash runs");
    assert!(out.status.success(), "rabbitmq-cluster.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// How many times the servers ran each request id.
type Runs = Arc<Mutex<HashMap<u64, u32>>>;

#[derive(serde::Deserialize)]
struct Work {
    id: u64,
}

async fn server(list: &str, method: &str, quorum: bool, runs: &Runs) -> Rpc {
    let rpc = Rpc::builder()
        .with_quorum_queues(quorum)
        .with_reconnect_delay(Duration::from_millis(100), Duration::from_secs(1))
        .connect(list)
        .await
        .expect("server connects");
    serve(&rpc, method, runs).await;
    rpc
}

async fn serve(rpc: &Rpc, method: &str, runs: &Runs) {
    let runs = Arc::clone(runs);
    rpc.register_async(method, move |w: Work| {
        *runs.lock().unwrap().entry(w.id).or_default() += 1;
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, std::convert::Infallible>(w.id)
        }
    })
    .await
    .expect("register");
}

async fn client(list: &str) -> Rpc {
    Rpc::builder()
        .with_deadline(DEADLINE)
        .with_reconnect_delay(Duration::from_millis(100), Duration::from_secs(1))
        .connect(list)
        .await
        .expect("client connects")
}

/// What the calls of a load run ended in.
#[derive(Default)]
struct Tally {
    succeeded: AtomicU64,
    /// Answered with another call's result.
    wrong: AtomicU64,
    /// Not ended `HANG_SLACK` after the deadline.
    hung: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// The first and the last message of each error kind.
    samples: Mutex<BTreeMap<&'static str, (String, String)>>,
    /// When each error came, from the start of the run.
    failures: Mutex<Vec<Duration>>,
    /// When each successful call began and ended, from the start of the run.
    successes: Mutex<Vec<(Duration, Duration)>>,
    /// The longest any call took.
    slowest: Mutex<Duration>,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.errors.lock().unwrap().values().sum()
    }

    /// Successes/failures per second from 2 s before `kill` to 15 s after.
    fn timeline(&self, kill: Duration) -> String {
        let per_second = |times: &[Duration], second: i64| {
            times
                .iter()
                .filter(|t| {
                    let offset = t.as_millis() as i64 - kill.as_millis() as i64;
                    offset.div_euclid(1000) == second
                })
                .count()
        };
        let successes: Vec<Duration> = self.successes.lock().unwrap().iter().map(|(_, ended)| *ended).collect();
        let failures = self.failures.lock().unwrap().clone();
        let mut seconds: Vec<String> = (-2..15)
            .map(|second| format!("{}/{}", per_second(&successes, second), per_second(&failures, second)))
            .collect();
        // The load stops a few seconds after the recovery.
        while seconds.last().is_some_and(|s| s == "0/0") {
            seconds.pop();
        }
        seconds.join(" ")
    }

    /// How long after `kill` calls succeeded again at half the rate of the 2 s before it (the
    /// start of the first 1 s window at that rate). Only calls made after the kill count: a
    /// reply already on its way when the node died says nothing of the recovery.
    fn recovery(&self, kill: Duration) -> Option<Duration> {
        let successes = self.successes.lock().unwrap().clone();
        let before =
            successes.iter().filter(|(_, ended)| *ended < kill && *ended + Duration::from_secs(2) >= kill).count();
        let wanted = (before / 4).max(1);
        let mut after: Vec<Duration> =
            successes.into_iter().filter(|(began, _)| *began >= kill).map(|(_, ended)| ended).collect();
        after.sort();
        (0..after.len()).find_map(|i| {
            let in_window = after[i..].iter().take_while(|t| **t < after[i] + Duration::from_secs(1)).count();
            (in_window >= wanted).then(|| after[i] - kill)
        })
    }
}

/// `IN_FLIGHT` callers on `client` until `stop`; ids from `next`.
fn load(
    client: &Rpc,
    method: &str,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
    start: Instant,
) -> tokio::task::JoinSet<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (client, method, stop, tally, next) =
            (client.clone(), method.to_owned(), Arc::clone(stop), Arc::clone(tally), Arc::clone(&next));
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                let call = client.call_with::<u64>(
                    &method,
                    kwargs! { "id" => id },
                    CallOptions::new().with_deadline(DEADLINE),
                );
                let outcome = tokio::time::timeout(DEADLINE + HANG_SLACK, call).await;
                let took = began.elapsed();
                {
                    let mut slowest = tally.slowest.lock().unwrap();
                    *slowest = (*slowest).max(took);
                }
                match outcome {
                    Ok(Ok(got)) if got == id => {
                        tally.succeeded.fetch_add(1, Ordering::Relaxed);
                        tally.successes.lock().unwrap().push((began - start, start.elapsed()));
                    }
                    Ok(Ok(_)) => {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        *tally.errors.lock().unwrap().entry(e.kind()).or_default() += 1;
                        let text = format!("at {} ms: {e}", start.elapsed().as_millis());
                        {
                            let mut samples = tally.samples.lock().unwrap();
                            let sample = samples.entry(e.kind()).or_insert_with(|| (text.clone(), String::new()));
                            sample.1 = text;
                        }
                        tally.failures.lock().unwrap().push(start.elapsed());
                        // A failed call comes back at once while no server is reachable: do
                        // not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => {
                        tally.hung.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    tasks
}

/// Waits (at most `RECOVERY_BOUND`) until calls made after `kill` succeed at the rate
/// [`Tally::recovery`] asks for. A count of successes would not do: replies already on their
/// way when the node died arrive after the kill, before the caller has noticed anything.
async fn await_recovery(tally: &Tally, start: Instant, kill: Instant) {
    let from = kill - start;
    let waited = Instant::now();
    while tally.recovery(from).is_none() && waited.elapsed() < RECOVERY_BOUND {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second more of load, for the rate after the recovery.
    tokio::time::sleep(Duration::from_secs(1)).await;
}

fn runs_twice(runs: &Runs) -> usize {
    runs.lock().unwrap().values().filter(|n| **n > 1).count()
}

/// Prints and checks a load run; returns its summary line.
fn report(what: &str, tally: &Tally, runs: &Runs, kills: &[(usize, Duration)]) -> String {
    let errors = tally.errors.lock().unwrap().clone();
    let twice = runs_twice(runs);
    let mut line = format!(
        "{what}: {} calls succeeded, {} failed {:?}, {} ran twice on the servers (first reply kept), \
         {} answered with another call's result, {} hung; slowest call {} ms",
        tally.succeeded.load(Ordering::Relaxed),
        tally.failed(),
        errors,
        twice,
        tally.wrong.load(Ordering::Relaxed),
        tally.hung.load(Ordering::Relaxed),
        tally.slowest.lock().unwrap().as_millis(),
    );
    let mut recoveries = Vec::new();
    for (node, at) in kills {
        let recovered = tally.recovery(*at);
        line.push_str(&format!(
            "; node {node} killed at {} ms: calls back at half rate after {}",
            at.as_millis(),
            recovered.map_or("never".into(), |d| format!("{} ms", d.as_millis()))
        ));
        println!("  ok/failed per second from 2 s before node {node}'s death: {}", tally.timeline(*at));
        recoveries.push((node, recovered));
    }
    println!("{line}");
    for (kind, (first, last)) in tally.samples.lock().unwrap().iter() {
        println!("  {kind}: first {first}; last {last}");
    }
    for (node, recovered) in recoveries {
        assert!(
            recovered.is_some_and(|d| d <= RECOVERY_BOUND),
            "{what}: calls did not recover within {RECOVERY_BOUND:?} of node {node}'s death"
        );
    }
    assert_eq!(tally.hung.load(Ordering::Relaxed), 0, "{what}: calls hung");
    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "{what}: a call got another call's result");
    assert!(tally.succeeded.load(Ordering::Relaxed) > 500, "{what}: too few calls succeeded");
    for kind in errors.keys() {
        assert!(
            ["deadline_exceeded", "transport", "unavailable"].contains(kind),
            "{what}: unexpected error kind {kind}"
        );
    }
    assert!(*tally.slowest.lock().unwrap() < DEADLINE + Duration::from_secs(1), "{what}: a call outlived its deadline");
    line
}

#[test]
fn calls_survive_node_deaths_on_a_three_node_cluster() {
    // Logs only when asked (`RUST_LOG=rpc_transport_amqp=debug`): the sessions' reconnects.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = Cluster::start();
    runtime.block_on(async {
        let classic = classic_queue_under_load(&cluster).await;
        let quorum = quorum_queue(&cluster).await;
        println!("\n{classic}\n{quorum}");
    });
    drop(cluster);
}

/// Classic method queue: node 2 (the queue and server A) dies and returns, then node 1 (the
/// client's).
async fn classic_queue_under_load(cluster: &Cluster) -> String {
    let method = "cluster.classic";
    let runs: Runs = Arc::default();
    let server_a = server(&cluster.list_from(2), method, false, &runs).await;
    let server_b = server(&cluster.list_from(3), method, false, &runs).await;
    let client = client(&cluster.list_from(1)).await;
    assert_eq!(client.broker(), Some(cluster.url(1)));

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut callers = load(&client, method, &stop, &tally, start);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let kill_2 = cluster.kill(2);
    await_recovery(&tally, start, kill_2).await;
    assert!(server_a.wait_connected(RECOVERY_BOUND).await, "server A reconnects");
    assert_eq!(server_a.broker(), Some(cluster.url(3)), "server A fails over to node 3");
    let back = cluster.restart(2).await;
    println!("node 2 back in {:.1} s", back.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let kill_1 = cluster.kill(1);
    await_recovery(&tally, start, kill_1).await;
    assert!(client.wait_connected(RECOVERY_BOUND).await, "the client reconnects");
    assert_eq!(client.broker(), Some(cluster.url(2)), "the client fails over to node 2");
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = callers.join_next().await {
        joined.expect("caller task");
    }
    let line =
        report("classic queue", &tally, &runs, &[(2, kill_2.duration_since(start)), (1, kill_1.duration_since(start))]);
    for rpc in [client, server_a, server_b] {
        rpc.close().await.expect("close");
    }
    let back = cluster.restart(1).await;
    println!("node 1 back in {:.1} s", back.as_secs_f64());
    line
}

/// Quorum method queue: requests waiting in it when its leader's node dies are served; then
/// the load runs across another leader's death.
async fn quorum_queue(cluster: &Cluster) -> String {
    let method = "cluster.quorum";
    let runs: Runs = Arc::default();
    // Declared from node 2: the leader starts there (client-local placement).
    let server_a = server(&cluster.list_from(2), method, true, &runs).await;
    server_a.unregister(method).await.expect("unregister");
    let client = client(&cluster.list_from(1)).await;

    // 32 requests wait in the queue, nobody consuming.
    let mut waiting = tokio::task::JoinSet::new();
    for id in 0..IN_FLIGHT as u64 {
        let client = client.clone();
        waiting.spawn(async move {
            let options = CallOptions::new().with_deadline(Duration::from_secs(60));
            (id, client.call_with::<u64>(method, kwargs! { "id" => id }, options).await)
        });
    }
    let queued = Instant::now();
    let leader = loop {
        match Cluster::quorum_queue(1, method) {
            Some((ready, leader)) if ready == IN_FLIGHT as u64 => break leader,
            other => {
                assert!(queued.elapsed() < Duration::from_secs(20), "requests not queued: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_ne!(leader, 1, "the leader is not on the client's node");
    let killed = cluster.kill(leader);
    let via = if leader == 2 { 3 } else { 2 };
    let new_leader = loop {
        match Cluster::quorum_queue(via, method) {
            Some((ready, n)) if n != leader => break (ready, n),
            _ => {
                assert!(killed.elapsed() < Duration::from_secs(30), "no new leader elected");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    println!(
        "quorum queue: leader on node {leader} killed with {IN_FLIGHT} requests waiting; node {} leads after {} ms, \
         {} requests ready",
        new_leader.1,
        killed.elapsed().as_millis(),
        new_leader.0
    );
    serve(&server_a, method, &runs).await;
    let server_b = server(&cluster.list_from(3), method, true, &runs).await;
    let mut served = 0;
    while let Some(joined) = waiting.join_next().await {
        let (id, outcome) = joined.expect("caller task");
        match outcome {
            Ok(got) => {
                assert_eq!(got, id);
                served += 1;
            }
            Err(e) => panic!("a request waiting in the quorum queue was lost: {e}"),
        }
    }
    let waiting_line = format!(
        "quorum queue: all {served} requests waiting when the leader died were served, the last {} ms after the kill",
        killed.elapsed().as_millis()
    );
    println!("{waiting_line}");
    assert!(server_a.wait_connected(RECOVERY_BOUND).await, "server A reconnects");

    let back = cluster.restart(leader).await;
    println!("node {leader} back in {:.1} s", back.as_secs_f64());

    // Under load, the worst case: the caller is on the node that leads the queue now, and that
    // node dies; the queue's leader and the caller's connection and reply queue go at once. The
    // caller reconnects to another node within milliseconds, while the queue's metadata still
    // names the dead leader: the broker nacks its channel's publishes to the queue for as long
    // as that channel lives, so calls come back only because the link publishes on a fresh
    // channel after a nack (RELIABILITY.md).
    client.close().await.expect("close");
    let (_, leader) = Cluster::quorum_queue(1, method).expect("the queue is listed");
    let client = self::client(&cluster.list_from(leader)).await;
    assert_eq!(client.broker(), Some(cluster.url(leader)));
    runs.lock().unwrap().clear();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut callers = load(&client, method, &stop, &tally, start);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kill = cluster.kill(leader);
    await_recovery(&tally, start, kill).await;
    println!(
        "  after the kill: client on {:?}, server A on {:?}, server B on {:?}",
        client.broker(),
        server_a.broker(),
        server_b.broker()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = callers.join_next().await {
        joined.expect("caller task");
    }
    let line = report(
        &format!("quorum queue, leader's and client's node {leader} killed"),
        &tally,
        &runs,
        &[(leader, kill - start)],
    );
    for rpc in [client, server_a, server_b] {
        assert!(rpc.wait_connected(RECOVERY_BOUND).await, "every Rpc reconnects");
        rpc.close().await.expect("close");
    }
    format!("{waiting_line}\n{line}")
}
