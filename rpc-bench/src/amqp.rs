//! RabbitMQ scenarios: `rpc.call` on a registered `multiply` against (d) a raw lapin floor
//! with the same process layout (a server connection and a client connection, in one process
//! or the server in a child process): publish with a correlation id and `reply_to`, an echo
//! server, no serialization, no deadlines, no publisher confirms. Two stronger floors split
//! the difference: (d′) carries the framework's message properties, (d″) also has publisher
//! confirms, as the framework's default does; what is left between (d″) and `rpc.call` is the
//! framework's own work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rpc_core::{kwargs, Context};
use rpc_transport_amqp::Rpc;
use serde::Deserialize;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use crate::load::closed_loop;
use crate::stats::{Run, Summary};
use crate::Settings;

/// Both sides take up to this many unacknowledged requests, the framework and the floor alike.
const PREFETCH: u16 = 128;

#[derive(Deserialize)]
struct Multiply {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct Echo {
    data: String,
}

/// `$RABBITMQ_URL`'s broker on a vhost of the benchmark's own, created at start and deleted at
/// exit with everything in it (its `bench.*` queues included): see `rpc_testkit::broker`.
pub fn url() -> String {
    rpc_testkit::url()
}

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

fn unique(name: &str) -> String {
    format!("bench.{name}.{}", uuid::Uuid::new_v4().simple())
}

/// The framework: one serving `Rpc` (absent when it runs in a child process), one calling
/// `Rpc`, each on its own connection.
struct Framework {
    server: Option<Rpc>,
    client: Rpc,
    /// The same, with publisher confirms off (`RpcBuilder::with_publisher_confirms(false)`).
    unconfirmed: Rpc,
    multiply: String,
    echo: String,
}

/// An `Rpc` serving `multiply` and `echo` under the given names.
async fn framework_server(multiply: &str, echo: &str) -> Rpc {
    let server = Rpc::builder().with_prefetch(PREFETCH).connect(&url()).await.expect("server connects");
    server
        .register_async(multiply, |m: Multiply| async move { Ok::<_, std::convert::Infallible>(m.a * m.b) })
        .await
        .expect("register multiply");
    server
        .register_async(echo, |e: Echo| async move { Ok::<_, std::convert::Infallible>(e.data.len()) })
        .await
        .expect("register echo");
    server
}

impl Framework {
    /// The server and the clients in this process.
    async fn start() -> Self {
        let (multiply, echo) = (unique("multiply"), unique("echo"));
        let server = framework_server(&multiply, &echo).await;
        Framework { server: Some(server), ..Framework::clients(multiply, echo).await }
    }

    /// The clients alone, calling methods served elsewhere.
    async fn clients(multiply: String, echo: String) -> Self {
        let client = Rpc::connect(&url()).await.expect("client connects");
        let unconfirmed =
            Rpc::builder().with_publisher_confirms(false).connect(&url()).await.expect("unconfirmed client connects");
        Framework { server: None, client, unconfirmed, multiply, echo }
    }

    async fn close(&self) {
        let _ = self.client.close().await;
        let _ = self.unconfirmed.close().await;
        if let Some(server) = &self.server {
            let _ = server.close().await;
        }
    }
}

/// The floor: the cheapest request/reply lapin can do.
#[derive(Clone)]
struct Floor {
    channel: Channel,
    /// The channel is in confirm mode; each call reads its publisher confirm after its reply.
    confirms: bool,
    queue: String,
    reply_queue: String,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>,
    _connections: Arc<(Option<Connection>, Connection)>,
}

impl Floor {
    /// The floor's server and client in this process, each on its own connection.
    async fn start() -> Self {
        let server_conn = Connection::connect(&url(), ConnectionProperties::default()).await.expect("connect");
        let queue = unique("floor");
        floor_server(&server_conn, &queue).await;
        Floor::client(queue, Some(server_conn), false).await
    }

    /// The floor's client, calling `queue` (served by [`floor_server`], here or in another
    /// process), with publisher confirms when `confirms`; keeps `server_conn` alive with it.
    async fn client(queue: String, server_conn: Option<Connection>, confirms: bool) -> Self {
        let client_conn = Connection::connect(&url(), ConnectionProperties::default()).await.expect("connect");
        let channel = client_conn.create_channel().await.expect("channel");
        if confirms {
            channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
        }
        let reply = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("reply queue");
        let reply_queue = reply.name().to_string();
        let mut replies = channel
            .basic_consume(
                reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("consume replies");
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>> = Arc::default();
        let waiting = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let Some(id) = delivery.properties.correlation_id() else { continue };
                let sender = waiting.lock().expect("pending map").remove(id.as_str());
                if let Some(sender) = sender {
                    let _ = sender.send(delivery.data);
                }
            }
        });
        Floor { channel, confirms, queue, reply_queue, pending, _connections: Arc::new((server_conn, client_conn)) }
    }

    /// One call; `framed`: with the framework's request properties (type, content type,
    /// `From` and deadline headers, TTL, timestamp) and `mandatory`. On a confirming channel
    /// the call also waits for its confirm and fails on a nack or a returned request.
    async fn call(&self, body: &[u8], framed: bool) -> Option<Vec<u8>> {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, mut rx) = oneshot::channel();
        self.pending.lock().expect("pending map").insert(id.clone(), tx);
        let reply_to: ShortString = self.reply_queue.as_str().into();
        let (props, options) = if framed {
            let timeout = Duration::from_secs(30);
            let deadline = rpc_transport_amqp::wire::now_ms() + 30_000;
            let codec = rpc_transport_amqp::Codec::MsgPack;
            let props = rpc_transport_amqp::wire::request_properties(
                codec,
                &id,
                &reply_to,
                timeout,
                deadline,
                &Context::default(),
            );
            (props, BasicPublishOptions { mandatory: true, ..Default::default() })
        } else {
            (
                BasicProperties::default().with_correlation_id(id.as_str().into()).with_reply_to(reply_to),
                BasicPublishOptions::default(),
            )
        };
        let mut confirm =
            self.channel.basic_publish("".into(), self.queue.as_str().into(), options, body, props).await.ok()?;
        if !self.confirms {
            return rx.await.ok();
        }
        // As a hand-written client would: whichever comes first, the reply or the confirm; a
        // nack or a returned request fails the call at once.
        tokio::select! {
            reply = &mut rx => {
                // The confirm is read even so: lapin keeps a confirm dropped unread.
                if (&mut confirm).now_or_never().is_none() {
                    tokio::spawn(confirm);
                }
                return reply.ok();
            }
            confirmed = &mut confirm => {
                if !matches!(confirmed.ok()?, Confirmation::Ack(None)) {
                    return None;
                }
            }
        }
        rx.await.ok()
    }
}

/// The floor's server: declares `queue` and echoes each delivery to its `reply_to` from a
/// task of its own, then acks it.
async fn floor_server(conn: &Connection, queue: &str) {
    let server = conn.create_channel().await.expect("channel");
    server.basic_qos(PREFETCH, BasicQosOptions::default()).await.expect("qos");
    let declare = QueueDeclareOptions { auto_delete: true, ..Default::default() };
    server.queue_declare(queue.into(), declare, FieldTable::default()).await.expect("declare");
    let mut requests = server
        .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            // One task per delivery, as the framework's server does, so the floor is not
            // serialised behind each publish.
            let server = server.clone();
            tokio::spawn(async move {
                let (Some(reply_to), Some(id)) =
                    (delivery.properties.reply_to().clone(), delivery.properties.correlation_id().clone())
                else {
                    return;
                };
                // A request in the framework's shape gets a reply in its shape (the
                // (d′) scenario: what the properties alone cost the broker).
                let props = match delivery.properties.kind() {
                    Some(_) => rpc_transport_amqp::wire::reply_properties(
                        rpc_transport_amqp::Codec::MsgPack,
                        Some(&id),
                        rpc_transport_amqp::wire::TYPE_RESULT,
                        rpc_transport_amqp::wire::TRANSIENT,
                    ),
                    None => BasicProperties::default().with_correlation_id(id),
                };
                let _ = server
                    .basic_publish("".into(), reply_to, BasicPublishOptions::default(), &delivery.data, props)
                    .await;
                let _ = delivery.ack(BasicAckOptions::default()).await;
            });
        }
    });
}

fn measure<F, Fut>(rt: &Runtime, concurrency: usize, settings: &Settings, call: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    rt.block_on(closed_loop(concurrency, settings.warmup, settings.duration, call))
}

/// Where the serving sides run, the framework's and the floor's alike.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Client and server in this process, on one runtime.
    #[value(name = "one")]
    OneProcess,
    /// The client in this process, the server in a child process (`amqp-server`).
    #[value(name = "two")]
    TwoProcesses,
}

impl Layout {
    /// The suffix of the rows' names.
    pub fn label(self) -> &'static str {
        match self {
            Layout::OneProcess => "",
            Layout::TwoProcesses => ", two processes",
        }
    }
}

/// Which of [`run`]'s scenarios run (all by default).
#[derive(Default, PartialEq, Eq)]
pub struct Pick {
    /// Only the scenarios whose name (without the layout's suffix) ends with one of these.
    pub only: Option<Vec<String>>,
    /// Only this concurrency.
    pub in_flight: Option<usize>,
    /// The concurrencies to run (1 and 64 by default).
    pub levels: Option<Vec<usize>>,
}

/// `rpc.call("multiply")` and the raw floor at concurrency 1 and 64, interleaved, with the
/// servers laid out as `layout` says.
pub fn run(settings: &Settings, layout: Layout, pick: &Pick) -> Vec<Summary> {
    let rt = runtime("bench-amqp");
    // The children's handles: dropping them ends the server processes.
    let mut children = Vec::new();
    let (framework, floor) = match layout {
        Layout::OneProcess => (rt.block_on(Framework::start()), rt.block_on(Floor::start())),
        Layout::TwoProcesses => {
            let (multiply, echo, queue) = (unique("multiply"), unique("echo"), unique("floor"));
            children.push(ServerProcess::spawn("framework", &multiply, &echo).expect("framework server process"));
            children.push(ServerProcess::spawn("floor", &queue, "").expect("floor server process"));
            (rt.block_on(Framework::clients(multiply, echo)), rt.block_on(Floor::client(queue, None, false)))
        }
    };
    let framework = Arc::new(framework);
    let suffix = layout.label();
    let names = [
        format!("(d) raw lapin floor{suffix}"),
        format!("rpc.call multiply{suffix}"),
        format!("rpc.call multiply, publisher confirms off{suffix}"),
        format!("(d′) floor with the framework's properties{suffix}"),
        format!("(d″) floor with the framework's properties and publisher confirms{suffix}"),
    ];
    let wanted = |name: &str| {
        let bare = name.strip_suffix(suffix).unwrap_or(name);
        pick.only.as_ref().map_or(true, |only| only.iter().any(|end| bare.ends_with(end.as_str())))
    };
    // (d″): a client of its own, on a confirming channel, calling the same floor server.
    let confirmed = wanted(&names[4]).then(|| rt.block_on(Floor::client(floor.queue.clone(), None, true)));
    let mut out = Vec::new();
    let levels = pick.levels.clone().unwrap_or_else(|| vec![1, 64]);
    for concurrency in levels.into_iter().filter(|c| pick.in_flight.map_or(true, |p| p == *c)) {
        let (mut ours, mut unconfirmed, mut raw, mut framed, mut confirming) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..settings.reps {
            for (confirms, runs) in [(true, &mut ours), (false, &mut unconfirmed)] {
                if !wanted(&names[if confirms { 1 } else { 2 }]) {
                    continue;
                }
                let f = Arc::clone(&framework);
                runs.push(measure(&rt, concurrency, settings, move |w, i| {
                    let f = Arc::clone(&f);
                    async move {
                        let a = (w as i64) * 1_000_000 + i as i64;
                        let client = if confirms { &f.client } else { &f.unconfirmed };
                        client.call::<i64>(&f.multiply, kwargs! {"a" => a, "b" => 3}).await.ok() == Some(a * 3)
                    }
                }));
            }
            for (index, shaped, runs) in [(0, false, &mut raw), (3, true, &mut framed), (4, true, &mut confirming)] {
                if !wanted(&names[index]) {
                    continue;
                }
                let fl = if index == 4 { confirmed.clone().expect("(d″) is wanted") } else { floor.clone() };
                runs.push(measure(&rt, concurrency, settings, move |_, _| {
                    let fl = fl.clone();
                    async move { fl.call(b"x", shaped).await.is_some() }
                }));
            }
        }
        for (name, runs) in names.iter().zip([raw, ours, unconfirmed, framed, confirming]) {
            if !runs.is_empty() {
                out.push(Summary::of(name, concurrency, &runs));
            }
        }
    }
    rt.block_on(framework.close());
    drop(children);
    out
}

/// A server of the two-process layout: the benchmark re-run as `amqp-server`, ended when its
/// handle drops (its stdin closes; killed if it has not exited 5 s later).
struct ServerProcess {
    child: std::process::Child,
}

impl ServerProcess {
    /// Starts a `kind` server (`framework` or `floor`) on `name` (and `echo`), and waits until
    /// it serves.
    fn spawn(kind: &str, name: &str, echo: &str) -> Result<Self, String> {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(["amqp-server", "--kind", kind, "--name", name, "--echo", echo])
            // The benchmark's vhost (the child uses it instead of creating its own).
            .env("RABBITMQ_URL", url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut server = ServerProcess { child };
        if BufReader::new(stdout).lines().next().and_then(Result::ok).as_deref() != Some("ready") {
            server.stop();
            return Err(format!("the {kind} server process did not start"));
        }
        Ok(server)
    }

    fn stop(&mut self) {
        drop(self.child.stdin.take());
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The child side of [`ServerProcess`]: serves `name` (the framework's `multiply`, and `echo`;
/// or the floor's echo queue) until stdin closes.
pub fn serve_in_child(kind: &str, name: &str, echo: &str) {
    let rt = runtime("bench-amqp-server");
    rt.block_on(async {
        let (framework, _floor) = match kind {
            "framework" => (Some(framework_server(name, echo).await), None),
            "floor" => {
                let conn = Connection::connect(&url(), ConnectionProperties::default()).await.expect("connect");
                floor_server(&conn, name).await;
                (None, Some(conn))
            }
            other => panic!("unknown server kind {other}"),
        };
        println!("ready");
        let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
        if let Some(rpc) = framework {
            let _ = rpc.close().await;
        }
    });
}

/// Latency of one call (concurrency 1) with a payload of each size.
pub fn payload_growth(settings: &Settings) -> Vec<Summary> {
    let rt = runtime("bench-amqp-growth");
    let framework = Arc::new(rt.block_on(Framework::start()));
    let mut out = Vec::new();
    for (label, size) in [("100 B", 100usize), ("10 KB", 10_000), ("1 MB", 1_000_000)] {
        let data: Arc<str> = "x".repeat(size).into();
        let mut runs = Vec::new();
        for _ in 0..settings.reps {
            let (f, data) = (Arc::clone(&framework), Arc::clone(&data));
            runs.push(measure(&rt, 1, settings, move |_, _| {
                let (f, data) = (Arc::clone(&f), Arc::clone(&data));
                async move { f.client.call::<usize>(&f.echo, kwargs! {"data" => &*data}).await.ok() == Some(data.len()) }
            }));
        }
        out.push(Summary::of(&format!("rpc.call echo {label}"), 1, &runs));
    }
    rt.block_on(framework.close());
    out
}

/// Peak RSS of a server process holding `calls` requests in flight at once: the benchmark
/// re-runs itself as a server (`hold-server`) and reads its VmHWM.
pub fn held_calls_rss(calls: usize) -> Result<(u64, u64, Duration), String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let method = unique("hold");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["hold-server", "--method", &method, "--calls", &calls.to_string()])
        // The benchmark's vhost (the child uses it instead of creating its own).
        .env("RABBITMQ_URL", url())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    if lines.next().and_then(Result::ok).as_deref() != Some("ready") {
        let _ = child.kill();
        return Err("hold-server did not start".into());
    }
    let idle_rss = vm_kb(pid, "VmRSS:").unwrap_or(0);
    let rt = runtime("bench-amqp-hold");
    let started = Instant::now();
    let result = rt.block_on(async {
        let client =
            Rpc::builder().with_deadline(Duration::from_secs(120)).connect(&url()).await.map_err(|e| e.to_string())?;
        let calls = (0..calls).map(|i| {
            let client = client.clone();
            let method = method.clone();
            async move { client.call::<u64>(&method, kwargs! {"i" => i as u64}).await.map(|v| v == i as u64) }
        });
        let results = futures_util::future::join_all(calls).await;
        let _ = client.close().await;
        let ok = results.iter().filter(|r| matches!(r, Ok(true))).count();
        if ok == results.len() {
            Ok(())
        } else {
            Err(format!("{} of {} held calls failed", results.len() - ok, results.len()))
        }
    });
    let peak = vm_kb(pid, "VmHWM:").unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    result.map(|()| (idle_rss, peak, started.elapsed()))
}

fn vm_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Deserialize)]
struct Hold {
    i: u64,
}

/// The child side of [`held_calls_rss`]: serve `method`, and answer nothing until `calls`
/// requests are in flight at once; then answer them all.
pub fn hold_server(method: &str, calls: usize) {
    let rt = runtime("bench-hold-server");
    rt.block_on(async {
        let prefetch = u16::try_from(calls).unwrap_or(u16::MAX);
        let server = Rpc::builder().with_prefetch(prefetch).connect(&url()).await.expect("connect");
        let gate = Arc::new(tokio::sync::Barrier::new(calls));
        server
            .register_async(method, move |h: Hold| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.wait().await;
                    Ok::<_, std::convert::Infallible>(h.i)
                }
            })
            .await
            .expect("register");
        println!("ready");
        std::future::pending::<()>().await;
    });
}

/// Calls/s of `rpc.call multiply` at 64 in flight, classic and quorum method queues, on the
/// default broker (`$RABBITMQ_URL`) and on the cluster `cluster` (a comma-separated list, as
/// `scripts/rabbitmq-cluster.sh start` prints): there the server is given the list from its
/// second node and the client from its first, so requests and replies cross nodes.
pub fn cluster(settings: &Settings, cluster: &str) -> Vec<Summary> {
    let rt = runtime("bench-amqp-cluster");
    let urls = rpc_transport_amqp::wire::broker_urls(cluster).into_iter().map(str::to_owned).collect::<Vec<_>>();
    let rotated = |first: usize| -> String {
        (0..urls.len()).map(|i| urls[(first + i) % urls.len()].as_str()).collect::<Vec<_>>().join(",")
    };
    let single = url();
    let setups = [
        ("default broker, classic queue", single.clone(), single.clone(), false),
        ("default broker, quorum queue", single.clone(), single, true),
        ("3-node cluster, classic queue", rotated(1), rotated(0), false),
        ("3-node cluster, quorum queue", rotated(1), rotated(0), true),
    ];
    let mut out = Vec::new();
    for (label, server_url, client_url, quorum) in setups {
        let (server, client, method) = rt.block_on(async {
            let server = Rpc::builder()
                .with_prefetch(PREFETCH)
                .with_quorum_queues(quorum)
                .connect(&server_url)
                .await
                .expect("server connects");
            let client = Rpc::connect(&client_url).await.expect("client connects");
            let method = unique("cluster-multiply");
            server
                .register_async(&method, |m: Multiply| async move { Ok::<_, std::convert::Infallible>(m.a * m.b) })
                .await
                .expect("register multiply");
            (server, client, method)
        });
        let shared = Arc::new((client.clone(), method.clone()));
        let mut runs = Vec::new();
        for _ in 0..settings.reps {
            let shared = Arc::clone(&shared);
            runs.push(measure(&rt, 64, settings, move |w, i| {
                let shared = Arc::clone(&shared);
                async move {
                    let a = (w as i64) * 1_000_000 + i as i64;
                    shared.0.call::<i64>(&shared.1, kwargs! {"a" => a, "b" => 3}).await.ok() == Some(a * 3)
                }
            }));
        }
        out.push(Summary::of(label, 64, &runs));
        rt.block_on(async {
            let _ = client.close().await;
            let _ = server.close().await;
            // Quorum queues are durable: remove the benchmark's.
            if let Ok(conn) = Connection::connect(
                rpc_transport_amqp::wire::broker_urls(&server_url)[0],
                ConnectionProperties::default(),
            )
            .await
            {
                if let Ok(channel) = conn.create_channel().await {
                    let _ = channel.queue_delete(method.as_str().into(), Default::default()).await;
                }
                let _ = conn.close(200, "OK".into()).await;
            }
        });
    }
    out
}
