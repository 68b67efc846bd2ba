//! `cargo run --example calculator`: the seed's whole system in one process.
//!
//! Two Consumers (serving `Calculator` and `NeuralNet`) and one Producer start on free
//! loopback ports; then a crowd of external clients (the seed's `1_rpc_client.py`) sends a mix
//! of tasks concurrently, over real TCP, through the Producer. Each task and its result is
//! printed as it completes, then a summary. The exit code is 0 when every task got the answer
//! it expected (including the errors the crowd provokes on purpose), 1 otherwise.
//!
//! Quiet by default; `RUST_LOG=debug` shows every request on every hop (service, method,
//! consumer, duration, outcome).

// `pub` so the end-to-end test, which includes this file, reaches the same services.
pub mod services;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rpc::core::{Args, Request, Transport};
use rpc::tcp::{Consumer, ConsumerConfig, ConsumerStats, Producer, ProducerConfig, TcpTransport};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// Runs two consumers, a producer and a crowd of clients in one process.
#[derive(Debug, Parser)]
#[command(about)]
pub struct Cli {
    /// How the producer reaches the consumers.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// How many tasks the crowd sends (all at once).
    #[arg(long, default_value_t = 40)]
    pub tasks: usize,
    /// How many consumers to start.
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
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
    ("calculator sqrt 2", Expect::Error("unknown_method", None)),
    ("calculator calculate 2 ^ 10", Expect::Error("handler", Some("unknown_operator"))),
    ("neural_net predict 0 1", Expect::Class(1)),
    ("calculator calculate 1e3 * -2.5", Expect::Text("-2500")),
    ("neural_net predict 0 0", Expect::Class(0)),
    ("calculator calculate two + 2", Expect::Error("invalid_argument", None)),
    ("neural_net architecture", Expect::Anything),
    ("calculator calculate 100 / 8", Expect::Text("12.5")),
];

/// The outcome of a demo run.
#[derive(Debug)]
pub struct Summary {
    /// Tasks sent.
    pub tasks: usize,
    /// Tasks answered with a result.
    pub results: usize,
    /// Tasks answered with an error.
    pub errors: usize,
    /// Tasks whose answer was not the expected one (result or error), described.
    pub unexpected: Vec<String>,
    /// From the first task sent to the last answer.
    pub wall: Duration,
    /// The producer's per-consumer counters.
    pub consumers: Vec<ConsumerStats>,
}

impl Summary {
    /// The summary as printed.
    pub fn render(&self) -> String {
        let mut out = format!(
            "summary: {} tasks, {} results, {} errors, {} unexpected, wall time {:.1} ms\n",
            self.tasks,
            self.results,
            self.errors,
            self.unexpected.len(),
            self.wall.as_secs_f64() * 1000.0
        );
        for (i, c) in self.consumers.iter().enumerate() {
            out += &format!("  consumer {} at {}: {} tasks served, {} failures\n", i + 1, c.addr, c.served, c.failures);
        }
        for u in &self.unexpected {
            out += &format!("  unexpected: {u}\n");
        }
        out
    }
}

/// Starts `consumers` consumers and a producer on loopback, runs `tasks` tasks through the
/// producer concurrently, shuts everything down, and returns the summary. Each finished
/// task's line goes to `print`.
pub async fn demo(consumers: usize, tasks: usize, mut print: impl FnMut(String)) -> std::io::Result<Summary> {
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

    let started = Instant::now();
    let mut crowd = JoinSet::new();
    for i in 0..tasks {
        let (line, expect) = REPERTOIRE[i % REPERTOIRE.len()].clone();
        crowd.spawn(async move {
            // Each task is its own external client with its own connection.
            let client = TcpTransport::new(gateway);
            let mut tokens = line.split(' ').map(str::to_owned);
            let (service, method) = (tokens.next().unwrap_or_default(), tokens.next().unwrap_or_default());
            let t = Instant::now();
            let reply = client.call(Request::new(service, method, Args::Text(tokens.collect()))).await;
            (i, line, expect, reply.map(|r| r.into_text()), t.elapsed())
        });
    }
    let (mut results, mut errors, mut unexpected) = (0, 0, Vec::new());
    while let Some(joined) = crowd.join_next().await {
        let (i, line, expect, reply, took) = joined.map_err(std::io::Error::other)?;
        let shown = match &reply {
            Ok(text) => text.clone(),
            Err(e) => format!("ERROR {}: {e}", e.kind()),
        };
        print(format!("task {:>3}  {line:<34} -> {shown}  ({:.1} ms)", i + 1, took.as_secs_f64() * 1000.0));
        let as_expected = match (&expect, &reply) {
            (Expect::Text(want), Ok(text)) => text == want,
            (Expect::Class(class), Ok(text)) => {
                serde_json::from_str::<services::Prediction>(text).is_ok_and(|p| p.class == *class)
            }
            (Expect::Anything, Ok(_)) => true,
            (Expect::Error(kind, code), Err(e)) => {
                e.kind() == *kind
                    && code.map_or(true, |c| matches!(e, rpc::RpcError::Handler { code: Some(got), .. } if got == c))
            }
            _ => false,
        };
        match reply {
            Ok(_) => results += 1,
            Err(_) => errors += 1,
        }
        if !as_expected {
            unexpected.push(format!("task {}: {line} -> {shown} (expected {expect:?})", i + 1));
        }
    }
    let wall = started.elapsed();
    let consumers = producer.stats();

    for stop in stops {
        let _ = stop.send(());
    }
    while let Some(done) = servers.join_next().await {
        done.map_err(std::io::Error::other)??;
    }
    Ok(Summary { tasks, results, errors, unexpected, wall, consumers })
}

/// The example's `main` without the process around it: parses `args`, runs, prints to
/// stdout, and returns the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    if cli.transport == TransportKind::Amqp {
        eprintln!("calculator: --transport amqp is not yet available");
        return ExitCode::from(2);
    }
    println!(
        "starting {} consumers and a producer on 127.0.0.1, then {} tasks from a crowd of clients",
        cli.consumers, cli.tasks
    );
    match demo(cli.consumers, cli.tasks, |line| println!("{line}")).await {
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

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    run(Cli::parse()).await
}
