//! `cargo run --example producer -- --listen 127.0.0.1:9000 --consumer 127.0.0.1:9001
//! --consumer 127.0.0.1:9002`: the gateway. External clients send it tasks in the same text
//! protocol; it spreads them over the consumers (least outstanding, round-robin on ties),
//! skips consumers that are down, and relays each reply. Addresses may be host names
//! (`localhost:9001`).
//!
//! It probes every consumer with `_rpc health` at start and every `--probe-interval` seconds:
//! a peer that does not answer as a Consumer (an HTTP server, another producer, itself) is
//! never given a task, and says so in the log; a consumer that goes down or comes back is
//! logged when it happens. On Ctrl-C or SIGTERM it stops accepting, finishes the tasks in
//! flight, prints what each consumer served, and exits 0.

mod cli;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rpc::tcp::{Limits, Producer, ProducerConfig};

/// The Producer: a gateway that takes tasks in the plain-text TCP protocol from any client
/// and spreads them over the Consumers given with --consumer, relaying each reply. Only peers
/// that answer its health probe as Consumers get tasks. Stops on Ctrl-C or SIGTERM after
/// finishing the tasks in flight.
#[derive(Debug, Parser)]
#[command(name = "producer")]
struct Cli {
    /// Address to listen on for external clients: host:port, a host name too.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// A consumer's address, host:port (repeat for each consumer).
    #[arg(long = "consumer", required = true)]
    consumers: Vec<String>,
    /// Seconds each task may take, retries included (`0.5` too).
    #[arg(long, default_value = "30", value_parser = cli::seconds)]
    task_timeout: Duration,
    /// Seconds one attempt on one consumer may take before the next consumer is tried.
    #[arg(long, default_value = "10", value_parser = cli::seconds)]
    attempt_timeout: Duration,
    /// Seconds between two health probes of each consumer.
    #[arg(long, default_value = "5", value_parser = cli::seconds)]
    probe_interval: Duration,
    /// Connections from external clients served at once.
    #[arg(long, default_value_t = 1024, value_parser = cli::count)]
    max_connections: usize,
}

/// The default log filter: warnings, plus each consumer coming up or back (INFO).
const LOG_FILTER: &str = "warn,lapin=off,rpc_transport_tcp::producer=info";

#[tokio::main]
async fn main() -> ExitCode {
    cli::init_logging(LOG_FILTER);
    let cli = Cli::parse();
    let signals = match cli::Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("producer: cannot handle SIGINT and SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut consumers: Vec<SocketAddr> = Vec::new();
    for consumer in &cli.consumers {
        match cli::server("--consumer", consumer).await {
            Ok(addr) => consumers.push(addr),
            Err(e) => {
                eprintln!("producer: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let listener = match cli::bind("--listen", &cli.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("producer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().ok();
    if let Some(own) = consumers.iter().zip(&cli.consumers).find(|(addr, _)| Some(**addr) == local) {
        eprintln!(
            "producer: --consumer {} is this producer's own address ({}): a producer forwards to consumers, \
             never to itself",
            own.1, own.0
        );
        return ExitCode::from(2);
    }
    let config = ProducerConfig::default()
        .with_limits(Limits::default().with_max_connections(cli.max_connections))
        .with_task_timeout(cli.task_timeout)
        .with_attempt_timeout(cli.attempt_timeout)
        .with_probe_interval(cli.probe_interval);
    let shown: Vec<String> = consumers.iter().map(ToString::to_string).collect();
    let local = local.map_or_else(|| cli.listen.clone(), |a| a.to_string());
    eprintln!("producer: listening on {local}, forwarding to {}; Ctrl-C or SIGTERM to stop", shown.join(", "));
    let producer = Producer::new(consumers, config);
    let shutdown = async {
        let signal = signals.recv().await;
        eprintln!("producer: {signal}: stopping; finishing tasks in flight");
    };
    let served = producer.serve(listener, shutdown).await;
    for stats in producer.stats() {
        // A consumer that is down says why; the other states say it themselves.
        let why = match (stats.state, stats.reason) {
            (rpc::tcp::ConsumerState::Down, Some(reason)) => format!(" ({reason})"),
            _ => String::new(),
        };
        eprintln!(
            "producer: consumer {}: {} tasks served, {} failures, {}{why}",
            stats.addr, stats.served, stats.failures, stats.state
        );
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("producer: {e}");
            ExitCode::FAILURE
        }
    }
}
