//! `cargo run --example producer -- --listen 127.0.0.1:9000 --consumer 127.0.0.1:9001
//! --consumer 127.0.0.1:9002`: the gateway. External clients send it tasks in the same text
//! protocol; it spreads them over the consumers (least outstanding, round-robin on ties),
//! skips consumers that are down, and relays each reply. On Ctrl-C it finishes the tasks in
//! flight and prints what each consumer served.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rpc::tcp::{Limits, Producer, ProducerConfig};
use tokio::net::TcpListener;

/// Forwards text-protocol tasks to a set of consumers.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Address to listen on for external clients.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// A consumer's address (repeat for each consumer).
    #[arg(long = "consumer", required = true)]
    consumers: Vec<SocketAddr>,
    /// Seconds each task may take, retries included.
    #[arg(long, default_value_t = 30)]
    task_timeout: u64,
    /// Seconds one attempt on one consumer may take before the next consumer is tried.
    #[arg(long, default_value_t = 10)]
    attempt_timeout: u64,
    /// Connections from external clients served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();

    let listener = match TcpListener::bind(cli.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("producer: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let config = ProducerConfig::default()
        .with_limits(Limits::default().with_max_connections(cli.max_connections))
        .with_task_timeout(Duration::from_secs(cli.task_timeout))
        .with_attempt_timeout(Duration::from_secs(cli.attempt_timeout));
    let consumers: Vec<String> = cli.consumers.iter().map(ToString::to_string).collect();
    eprintln!("producer: listening on {}, forwarding to {}; Ctrl-C to stop", cli.listen, consumers.join(", "));
    let producer = Producer::new(cli.consumers, config);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("producer: stopping; finishing tasks in flight");
    };
    let served = producer.serve(listener, shutdown).await;
    for stats in producer.stats() {
        eprintln!("producer: consumer {}: {} tasks served, {} failures", stats.addr, stats.served, stats.failures);
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("producer: {e}");
            ExitCode::FAILURE
        }
    }
}
