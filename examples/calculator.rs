//! `cargo run --example calculator`: the design document's whole system in one process.
//!
//! Two Consumers (serving `Calculator` and `NeuralNet`) and one Producer start on free
//! loopback ports; then a crowd of external clients (the design document's `1_rpc_client.py`) sends a mix
//! of tasks concurrently, over real TCP, through the Producer. Each task and its result is
//! printed as it completes, then a summary. The exit code is 0 when every task got the answer
//! it expected (including the errors the crowd provokes on purpose), 1 otherwise.
//!
//! `cargo run --example calculator -- --transport amqp` runs the same crowd over RabbitMQ
//! (`$RABBITMQ_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`): two server workers,
//! each an `Rpc` with its own connection serving both services (queues
//! `calculator.calculate`, `neural_net.predict`, `neural_net.architecture`), take the
//! Consumers' place, and one client `Rpc` shared by the crowd takes the Producer's. The
//! broker spreads the requests over the workers; the summary counts what each one served.
//! AMQP carries named arguments, so each text line is named with the method's description
//! (`MethodInfo::args_from_text`: `calculator calculate 2 + 2` becomes `calculator.calculate
//! {"a": 2.0, "op": "+", "b": 2.0}`; tokens that do not fit the method are refused before
//! sending, with the error a server would give). A method nobody serves has no queue, so there the broker
//! answers (`unavailable`, at once) where a Consumer answers `unknown_method`. Without a
//! broker the example says so and exits 1.
//!
//! `--clients N` makes the crowd N clients sending their tasks one after another (by default
//! every task has a client of its own, all at once), for long runs: `--tasks 1000000
//! --clients 8`. On Ctrl-C or SIGTERM the crowd sends no new task, the tasks in flight get
//! their answers, the servers stop gracefully, and the summary says how many tasks were sent;
//! the exit code is 0 when every answer was the expected one.
//!
//! Quiet by default; `RUST_LOG=debug` shows every request on every hop (service, method,
//! consumer, duration, outcome).

mod cli;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::future::BoxFuture;
use rpc::amqp::Rpc;
use rpc::core::{Args, BlockingPool, Context, Reply, Request, RpcError, Service, ServiceInfo, Transport};
use rpc::tcp::{Consumer, ConsumerConfig, Producer, ProducerConfig, TcpTransport};
use rpc_testkit::{services, DEFAULT_RABBITMQ_URL};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// How long connecting to the broker may take before the demo gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole system in one process: two Consumers serving Calculator and NeuralNet, a
/// Producer in front of them, and a crowd of clients sending a mix of tasks through it over
/// real TCP (or RabbitMQ with --transport amqp); prints every task and a summary, exit code 0
/// when every answer was the expected one.
#[derive(Debug, Parser)]
#[command(name = "calculator")]
pub struct Cli {
    /// How the crowd reaches the services: TCP through a Producer, or RabbitMQ
    /// (`$RABBITMQ_URL`).
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// How many tasks the crowd sends.
    #[arg(long, default_value_t = 40, value_parser = cli::count)]
    pub tasks: usize,
    /// How many consumers (TCP) or server workers (AMQP) to start.
    #[arg(long, default_value_t = 2, value_parser = cli::count)]
    pub consumers: usize,
    /// How many clients send at once, each task after the other (default: a client per task,
    /// all at once).
    #[arg(long, value_parser = cli::count)]
    pub clients: Option<usize>,
}

/// The transports the demo can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// The seed's text protocol over TCP.
    Tcp,
    /// RabbitMQ.
    Amqp,
}

/// What a task should get back.
#[derive(Debug, Clone)]
enum Expect {
    /// This exact text.
    Text(&'static str),
    /// A prediction of this XOR class.
    Class(u8),
    /// Any success.
    Anything,
    /// An error of this kind (and handler code, when given).
    Error(&'static str, Option<&'static str>),
    /// The error for a method nobody serves: `unknown_method` from a TCP Consumer,
    /// `unavailable` from the broker (no queue is bound to the routing key).
    NoSuchMethod,
}

/// The crowd's repertoire, cycled through: all four operators, the errors a user makes, and
/// neural-network calls.
const REPERTOIRE: &[(&str, Expect)] = &[
    ("calculator calculate 2 + 2", Expect::Text("4")),
    ("calculator calculate 7 - 10", Expect::Text("-3")),
    ("calculator calculate 6 * 7", Expect::Text("42")),
    ("calculator calculate 1 / 4", Expect::Text("0.25")),
    ("neural_net predict 1 0", Expect::Class(1)),
    ("calculator calculate 1 / 0", Expect::Error("handler", Some("division_by_zero"))),
    ("calculator calculate 0.1 + 0.2", Expect::Text("0.30000000000000004")),
    ("neural_net predict 1 1", Expect::Class(0)),
    ("calculator sqrt 2", Expect::NoSuchMethod),
    ("calculator calculate 2 ^ 10", Expect::Error("handler", Some("unknown_operator"))),
    ("neural_net predict 0 1", Expect::Class(1)),
    ("calculator calculate 1e3 * -2.5", Expect::Text("-2500")),
    ("neural_net predict 0 0", Expect::Class(0)),
    ("calculator calculate two + 2", Expect::Error("invalid_argument", None)),
    ("neural_net architecture", Expect::Anything),
    ("calculator calculate 100 / 8", Expect::Text("12.5")),
];

impl Expect {
    /// Whether `reply` is what this expectation asks for, over `transport`.
    fn is_met(&self, reply: &Result<String, RpcError>, transport: TransportKind) -> bool {
        match (self, reply) {
            (Expect::Text(want), Ok(text)) => text == want,
            (Expect::Class(class), Ok(text)) => {
                serde_json::from_str::<services::Prediction>(text).is_ok_and(|p| p.class == *class)
            }
            (Expect::Anything, Ok(_)) => true,
            (Expect::Error(kind, code), Err(e)) => {
                e.kind() == *kind
                    && code.map_or(true, |c| matches!(e, RpcError::Handler { code: Some(got), .. } if got == c))
            }
            (Expect::NoSuchMethod, Err(e)) => match transport {
                TransportKind::Tcp => matches!(e, RpcError::UnknownMethod { .. }),
                TransportKind::Amqp => matches!(e, RpcError::Unavailable { .. }),
            },
            _ => false,
        }
    }
}

/// What one consumer or server worker did during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// How the summary names it: `consumer 1 at 127.0.0.1:41234`, or `worker 1 (connection
    /// 'calculator example worker 1')`.
    pub name: String,
    /// Tasks it answered (a result, or an error of the call itself such as a handler error).
    pub served: u64,
    /// TCP: attempts that failed on it and moved on to another consumer. `None` over AMQP,
    /// where the broker, not the client, picks the worker.
    pub failures: Option<u64>,
}

/// The outcome of a demo run.
#[derive(Debug)]
pub struct Summary {
    /// The transport the crowd used.
    pub transport: TransportKind,
    /// Tasks the run was asked for.
    pub tasks: usize,
    /// Tasks sent: all of them, unless the run was interrupted.
    pub sent: usize,
    /// The signal that stopped the crowd early (`SIGTERM`, `Ctrl-C`), if one did.
    pub interrupted: Option<&'static str>,
    /// Tasks answered with a result.
    pub results: usize,
    /// Tasks answered with an error.
    pub errors: usize,
    /// Tasks whose answer was not the expected one (result or error), described.
    pub unexpected: Vec<String>,
    /// Tasks the broker answered itself because no queue is bound to their method (AMQP).
    pub unrouted: usize,
    /// Tasks the client refused before sending them, because their tokens do not decode into
    /// the method's parameters (AMQP carries named arguments, so the client names them first).
    pub refused: usize,
    /// From the first task sent to the last answer.
    pub wall: Duration,
    /// Per consumer (TCP, the producer's counters) or per server worker (AMQP, counted by
    /// each worker).
    pub consumers: Vec<WorkerStats>,
}

impl Summary {
    /// The summary as printed.
    pub fn render(&self) -> String {
        let mut out = format!(
            "summary: {} tasks, {} results, {} errors, {} unexpected, wall time {:.1} ms\n",
            self.sent,
            self.results,
            self.errors,
            self.unexpected.len(),
            self.wall.as_secs_f64() * 1000.0
        );
        if let Some(signal) = self.interrupted {
            out += &format!("  stopped by {signal}: {} of {} tasks sent, every one answered\n", self.sent, self.tasks);
        }
        for c in &self.consumers {
            out += &format!("  {}: {} tasks served", c.name, c.served);
            if let Some(failures) = c.failures {
                out += &format!(", {failures} failures");
            }
            out += "\n";
        }
        if self.transport == TransportKind::Amqp {
            if self.unrouted > 0 {
                out += &format!("  answered by the broker (no queue for the method): {} tasks\n", self.unrouted);
            }
            if self.refused > 0 {
                out += &format!(
                    "  refused by the client before sending (arguments that do not fit the method): {} tasks\n",
                    self.refused
                );
            }
            let accounted = self.served() + (self.unrouted + self.refused) as u64;
            if accounted != self.sent as u64 {
                out += &format!(
                    "  {} tasks accounted for, {} sent: another server consumes these queues, or \
                     requests from an earlier run were still waiting in them\n",
                    accounted, self.sent
                );
            }
        }
        for u in &self.unexpected {
            out += &format!("  unexpected: {u}\n");
        }
        out
    }

    /// Tasks served by all consumers or workers together.
    pub fn served(&self) -> u64 {
        self.consumers.iter().map(|c| c.served).sum()
    }
}

/// What the crowd saw.
struct Tally {
    sent: usize,
    interrupted: Option<&'static str>,
    results: usize,
    errors: usize,
    unexpected: Vec<String>,
    unrouted: usize,
    wall: Duration,
}

/// How a crowd runs: how many tasks, how many at once, and what stops it early.
pub struct Crowd<S> {
    /// Tasks to send.
    pub tasks: usize,
    /// Tasks in flight at once (`None`: all of them).
    pub clients: Option<usize>,
    /// Resolves to a signal's name when the crowd should send no new task.
    pub stop: S,
}

impl Crowd<std::future::Pending<&'static str>> {
    /// `tasks` tasks, all at once, never stopped early.
    pub fn all_at_once(tasks: usize) -> Self {
        Crowd { tasks, clients: None, stop: std::future::pending() }
    }
}

/// Sends the crowd's tasks from the repertoire, at most `clients` at once, each through
/// `call` (a line in, its result as text out), and prints each as it completes. Once `stop`
/// resolves no new task is sent; those in flight are awaited.
async fn crowd<F, Fut, S>(
    transport: TransportKind,
    plan: Crowd<S>,
    call: F,
    print: &mut impl FnMut(String),
) -> Result<Tally, tokio::task::JoinError>
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Result<String, RpcError>> + Send + 'static,
    S: Future<Output = &'static str>,
{
    let started = Instant::now();
    let limit = plan.clients.unwrap_or(plan.tasks).max(1);
    let stop = plan.stop;
    tokio::pin!(stop);
    let mut crowd = JoinSet::new();
    let mut tally = Tally {
        sent: 0,
        interrupted: None,
        results: 0,
        errors: 0,
        unexpected: Vec::new(),
        unrouted: 0,
        wall: Duration::ZERO,
    };
    loop {
        let can_send = tally.interrupted.is_none() && tally.sent < plan.tasks && crowd.len() < limit;
        if !can_send && crowd.is_empty() {
            break;
        }
        let joined = tokio::select! {
            biased;
            signal = &mut stop, if tally.interrupted.is_none() => {
                eprintln!("calculator: {signal}: sending no new task; waiting for the {} in flight", crowd.len());
                tally.interrupted = Some(signal);
                continue;
            }
            joined = crowd.join_next(), if !crowd.is_empty() => joined,
            () = std::future::ready(()), if can_send => {
                let i = tally.sent;
                let (line, expect) = REPERTOIRE[i % REPERTOIRE.len()].clone();
                let reply = call(line);
                crowd.spawn(async move {
                    let t = Instant::now();
                    let reply = reply.await;
                    (i, line, expect, reply, t.elapsed())
                });
                tally.sent += 1;
                continue;
            }
        };
        let Some(joined) = joined else { continue };
        let (i, line, expect, reply, took) = joined?;
        let shown = match &reply {
            Ok(text) => text.clone(),
            Err(e) => format!("ERROR {}: {e}", e.kind()),
        };
        print(format!("task {:>3}  {line:<34} -> {shown}  ({:.1} ms)", i + 1, took.as_secs_f64() * 1000.0));
        match &reply {
            Ok(_) => tally.results += 1,
            Err(RpcError::Unavailable { .. }) if transport == TransportKind::Amqp => {
                tally.errors += 1;
                tally.unrouted += 1;
            }
            Err(_) => tally.errors += 1,
        }
        if !expect.is_met(&reply, transport) {
            tally.unexpected.push(format!("task {}: {line} -> {shown} (expected {expect:?})", i + 1));
        }
    }
    tally.wall = started.elapsed();
    Ok(tally)
}

/// `calculator calculate 2 + 2` as `("calculator", "calculate", ["2", "+", "2"])`.
fn split_line(line: &str) -> (String, String, Vec<String>) {
    let mut tokens = line.split(' ').map(str::to_owned);
    let (service, method) = (tokens.next().unwrap_or_default(), tokens.next().unwrap_or_default());
    (service, method, tokens.collect())
}

/// Starts `consumers` consumers and a producer on loopback, runs `tasks` tasks through the
/// producer concurrently, shuts everything down, and returns the summary. Each finished
/// task's line goes to `print`.
pub async fn demo(consumers: usize, tasks: usize, print: impl FnMut(String)) -> std::io::Result<Summary> {
    demo_with(consumers, Crowd::all_at_once(tasks), print).await
}

/// [`demo`] with the crowd `plan` describes.
pub async fn demo_with<S: Future<Output = &'static str>>(
    consumers: usize,
    plan: Crowd<S>,
    mut print: impl FnMut(String),
) -> std::io::Result<Summary> {
    let tasks = plan.tasks;
    let mut stops = Vec::new();
    let mut servers = JoinSet::new();
    let mut addrs = Vec::new();
    for _ in 0..consumers {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        let consumer = Consumer::new(Arc::new(services::registry(None)), ConsumerConfig::default());
        servers.spawn(async move { consumer.serve(listener, stopped).await });
    }
    let producer = Producer::new(addrs, ProducerConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let gateway: SocketAddr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    stops.push(stop);
    let serving = producer.clone();
    servers.spawn(async move { serving.serve(listener, stopped).await });

    let call = |line: &'static str| async move {
        // Each task is its own external client with its own connection.
        let client = TcpTransport::new(gateway);
        let (service, method, tokens) = split_line(line);
        client.call(Request::new(service, method, Args::Text(tokens))).await.map(Reply::into_text)
    };
    let tally = crowd(TransportKind::Tcp, plan, call, &mut print).await.map_err(std::io::Error::other)?;
    let consumers = producer
        .stats()
        .iter()
        .enumerate()
        .map(|(i, c)| WorkerStats {
            name: format!("consumer {} at {}", i + 1, c.addr),
            served: c.served,
            failures: Some(c.failures),
        })
        .collect();

    for stop in stops {
        let _ = stop.send(());
    }
    while let Some(done) = servers.join_next().await {
        done.map_err(std::io::Error::other)??;
    }
    Ok(Summary {
        transport: TransportKind::Tcp,
        tasks,
        sent: tally.sent,
        interrupted: tally.interrupted,
        results: tally.results,
        errors: tally.errors,
        unexpected: tally.unexpected,
        unrouted: tally.unrouted,
        refused: 0,
        wall: tally.wall,
        consumers,
    })
}

/// Why the AMQP demo could not run (the broker is unreachable or refused the set-up).
pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// A service that counts the requests its worker takes: the broker, not the client, decides
/// which worker gets which request, so each worker keeps its own tally.
struct Counted<S> {
    inner: Arc<S>,
    served: Arc<AtomicU64>,
}

impl<S: Service> Service for Counted<S> {
    fn info(&self) -> &'static ServiceInfo {
        self.inner.info()
    }

    fn call(
        self: Arc<Self>,
        method: &str,
        args: Args,
        ctx: &Context,
        pool: &BlockingPool,
    ) -> Result<BoxFuture<'static, Result<Value, RpcError>>, RpcError> {
        // Counted before decoding: a request refused for its arguments is answered too.
        self.served.fetch_add(1, Ordering::Relaxed);
        Arc::clone(&self.inner).call(method, args, ctx, pool)
    }
}

/// `builder.connect(url)`, failing after [`CONNECT_TIMEOUT`] when the broker does not answer.
async fn connect(builder: rpc::amqp::RpcBuilder, url: &str) -> Result<Rpc, DemoError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, builder.connect(url)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(format!(
            "cannot connect to {}: no answer within {} s",
            rpc::amqp::wire::redact_url(url),
            CONNECT_TIMEOUT.as_secs()
        )
        .into()),
    }
}

/// A crowd line as a named-argument request, using the methods' descriptions in `catalogue`.
///
/// # Errors
/// What a server answers the same tokens ([`RpcError::ArgumentCount`],
/// [`RpcError::InvalidArgument`]), decided before sending.
fn named_request(line: &str, catalogue: &[&'static ServiceInfo]) -> Result<Request, RpcError> {
    let (service, method, tokens) = split_line(line);
    let info = catalogue.iter().find(|s| s.name == service).and_then(|s| s.method(&method));
    let args = match info {
        Some(info) => info.args_from_text(tokens)?,
        // Without the method's metadata its tokens cannot be named: the request goes out
        // without them, and whoever serves the routing key answers (nobody, for the
        // repertoire's unknown method: the broker returns it as unroutable).
        None => rpc::kwargs! {},
    };
    Ok(Request::new(service, method, args))
}

/// Starts `workers` server workers on the broker at `url` (each its own `Rpc` and
/// connection, serving `Calculator` and `NeuralNet`), runs `tasks` tasks through one client
/// `Rpc` concurrently, closes everything gracefully, and returns the summary. Each finished
/// task's line goes to `print`.
///
/// # Errors
/// When the broker cannot be reached or refuses to set up a worker or the client; whatever
/// was started is closed first.
pub async fn demo_amqp(
    url: &str,
    workers: usize,
    tasks: usize,
    print: impl FnMut(String),
) -> Result<Summary, DemoError> {
    demo_amqp_with(url, workers, Crowd::all_at_once(tasks), print).await
}

/// [`demo_amqp`] with the crowd `plan` describes.
///
/// # Errors
/// As [`demo_amqp`].
pub async fn demo_amqp_with<S: Future<Output = &'static str>>(
    url: &str,
    workers: usize,
    plan: Crowd<S>,
    mut print: impl FnMut(String),
) -> Result<Summary, DemoError> {
    let tasks = plan.tasks;
    let neural_net = services::NeuralNet::shared();
    let catalogue = [services::Calculator.info(), neural_net.info()];
    let mut started: Vec<Rpc> = Vec::new();
    let outcome = async {
        let mut counters = Vec::new();
        for i in 1..=workers {
            let name = format!("calculator example worker {i}");
            let rpc = connect(Rpc::builder().with_connection_name(&name), url).await?;
            started.push(rpc.clone());
            let served = Arc::new(AtomicU64::new(0));
            rpc.serve(Counted { inner: Arc::new(services::Calculator), served: Arc::clone(&served) }).await?;
            rpc.serve(Counted { inner: Arc::new(neural_net.clone()), served: Arc::clone(&served) }).await?;
            counters.push((format!("worker {i} (connection '{name}')"), served));
        }
        let client = connect(Rpc::builder().with_connection_name("calculator example client"), url).await?;
        started.push(client.clone());

        let refused = Arc::new(AtomicU64::new(0));
        let call = |line: &'static str| {
            let (client, request) = (client.clone(), named_request(line, &catalogue));
            if request.is_err() {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            async move { Transport::call(&client, request?).await.map(Reply::into_text) }
        };
        let tally = crowd(TransportKind::Amqp, plan, call, &mut print).await?;
        let refused = usize::try_from(refused.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        Ok::<_, DemoError>((tally, counters, refused))
    }
    .await;
    // The client first (nothing is pending), then each worker: `close` answers what it took.
    let mut closed = Ok(());
    for rpc in started.iter().rev() {
        closed = closed.and(rpc.close().await);
    }
    let (tally, counters, refused) = outcome?;
    closed?;
    let consumers = counters
        .into_iter()
        .map(|(name, served)| WorkerStats { name, served: served.load(Ordering::Relaxed), failures: None })
        .collect();
    Ok(Summary {
        transport: TransportKind::Amqp,
        tasks,
        sent: tally.sent,
        interrupted: tally.interrupted,
        results: tally.results,
        errors: tally.errors,
        unexpected: tally.unexpected,
        unrouted: tally.unrouted,
        refused,
        wall: tally.wall,
        consumers,
    })
}

/// Prints `summary` and turns it into the exit code.
fn finish(summary: Result<Summary, String>) -> ExitCode {
    match summary {
        Ok(summary) => {
            print!("{}", summary.render());
            if summary.unexpected.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("calculator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The AMQP half of [`run`], on the broker at `url`.
pub async fn run_amqp(url: &str, workers: usize, tasks: usize) -> ExitCode {
    run_amqp_with(url, workers, Crowd::all_at_once(tasks)).await
}

async fn run_amqp_with<S: Future<Output = &'static str>>(url: &str, workers: usize, plan: Crowd<S>) -> ExitCode {
    println!(
        "starting {workers} server workers on RabbitMQ at {}, then {} tasks from a crowd of clients \
         sharing one client connection",
        rpc::amqp::wire::redact_url(url),
        plan.tasks
    );
    let summary = demo_amqp_with(url, workers, plan, |line| println!("{line}")).await;
    finish(summary.map_err(|e| e.to_string()))
}

/// The example's `main` without the process around it: runs `cli`, prints to stdout, and
/// returns the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    run_until(cli, std::future::pending()).await
}

/// [`run`], sending no new task once `stop` resolves (to the name of the signal that stopped
/// it).
pub async fn run_until(cli: Cli, stop: impl Future<Output = &'static str>) -> ExitCode {
    let plan = Crowd { tasks: cli.tasks, clients: cli.clients, stop };
    if cli.transport == TransportKind::Amqp {
        let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.into());
        return run_amqp_with(&url, cli.consumers, plan).await;
    }
    println!(
        "starting {} consumers and a producer on 127.0.0.1, then {} tasks from a crowd of clients",
        cli.consumers, cli.tasks
    );
    let summary = demo_with(cli.consumers, plan, |line| println!("{line}")).await;
    finish(summary.map_err(|e| e.to_string()))
}

#[tokio::main]
async fn main() -> ExitCode {
    // lapin's own log lines are off: among them a warning for every message the broker
    // returns, which the crowd provokes on purpose (the transport turns them into
    // `unavailable` replies).
    cli::init_logging(cli::DEFAULT_LOG_FILTER);
    let cli = Cli::parse();
    match cli::Signals::install() {
        Ok(signals) => run_until(cli, signals.recv()).await,
        Err(e) => {
            eprintln!("calculator: cannot handle SIGINT and SIGTERM: {e}");
            ExitCode::FAILURE
        }
    }
}
