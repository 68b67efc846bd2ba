//! `cargo run --example consumer -- --listen 127.0.0.1:9001`: one Consumer serving
//! `Calculator` and `NeuralNet` until Ctrl-C, then a graceful shutdown (requests already read
//! are finished).
//!
//! Try it: `printf 'calculator calculate 2 + 2\n' | nc -q 2 127.0.0.1 9001` prints `4`.

mod services;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rpc::tcp::{Consumer, ConsumerConfig, Limits};
use tokio::net::TcpListener;

/// Serves Calculator and NeuralNet over the seed's text protocol.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Synchronous calls run at once (default: one per CPU).
    #[arg(long)]
    pool: Option<usize>,
    /// Connections served at once; more are answered `ERROR overloaded`.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Longest request line, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_line: usize,
    /// Seconds a client has to send its request.
    #[arg(long, default_value_t = 10)]
    read_timeout: u64,
    /// Seconds a call may run.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
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
            eprintln!("consumer: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let limits = Limits::default()
        .with_max_connections(cli.max_connections)
        .with_max_line(cli.max_line)
        .with_read_timeout(Duration::from_secs(cli.read_timeout));
    let config =
        ConsumerConfig::default().with_limits(limits).with_request_timeout(Duration::from_secs(cli.request_timeout));
    let registry = services::registry(cli.pool);
    let services: Vec<&str> = registry.services().map(|s| s.name).collect();
    eprintln!(
        "consumer: serving {} on {} (blocking pool: {}); Ctrl-C to stop",
        services.join(", "),
        cli.listen,
        registry.blocking_pool().size()
    );
    let consumer = Consumer::new(Arc::new(registry), config);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("consumer: stopping; finishing requests in flight");
    };
    match consumer.serve(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer: {e}");
            ExitCode::FAILURE
        }
    }
}
