//! `cargo run --example consumer -- --listen 127.0.0.1:9001`: one Consumer serving
//! `Calculator` and `NeuralNet` until Ctrl-C, then a graceful shutdown (requests already read
//! are finished).
//!
//! `cargo run --example consumer -- --amqp`: the same services over RabbitMQ
//! (`$RABBITMQ_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`), one queue per method
//! (`calculator.calculate`, `neural_net.predict`, `neural_net.architecture`). `--prefetch N`
//! bounds the requests taken from each queue at once (default 32). Start several: they share
//! the queues' requests. On Ctrl-C it stops consuming, answers the requests it already took,
//! then exits. The connection is re-established by itself if the broker goes away.
//!
//! Try it: `printf 'calculator calculate 2 + 2\n' | nc -q 2 127.0.0.1 9001` prints `4`; with
//! `--amqp`, `cargo run --example client -- --amqp calculator.calculate a=2 op=+ b=2` does.

mod services;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rpc::amqp::config::DEFAULT_PREFETCH;
use rpc::amqp::Rpc;
use rpc::core::BlockingPool;
use rpc::tcp::{Consumer, ConsumerConfig, Limits};
use tokio::net::TcpListener;

/// The broker when `$RABBITMQ_URL` is not set.
pub const DEFAULT_RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long connecting to the broker may take before the consumer gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves Calculator and NeuralNet over the seed's text protocol, or over RabbitMQ.
#[derive(Debug, Parser)]
#[command(about)]
pub struct Cli {
    /// Serve over RabbitMQ (`$RABBITMQ_URL`) instead of TCP.
    #[arg(long)]
    pub amqp: bool,
    /// Address to listen on (TCP).
    #[arg(long, default_value = "127.0.0.1:9001", conflicts_with = "amqp")]
    pub listen: SocketAddr,
    /// Synchronous calls run at once (default: one per CPU).
    #[arg(long)]
    pub pool: Option<usize>,
    /// Requests taken from each method queue at once (AMQP `basic.qos` prefetch).
    #[arg(long, default_value_t = DEFAULT_PREFETCH, requires = "amqp", value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Connections served at once; more are answered `ERROR overloaded` (TCP).
    #[arg(long, default_value_t = 1024, conflicts_with = "amqp")]
    pub max_connections: usize,
    /// Longest request line, in bytes (TCP).
    #[arg(long, default_value_t = 64 * 1024, conflicts_with = "amqp")]
    pub max_line: usize,
    /// Seconds a client has to send its request (TCP).
    #[arg(long, default_value_t = 10, conflicts_with = "amqp")]
    pub read_timeout: u64,
    /// Seconds a call may run (over AMQP: a call whose caller set no deadline of its own).
    #[arg(long, default_value_t = 30)]
    pub request_timeout: u64,
}

impl Cli {
    fn blocking_pool(&self) -> BlockingPool {
        self.pool.map_or_else(BlockingPool::for_machine, BlockingPool::new)
    }
}

/// Connects to the broker at `url` and serves `Calculator` and `NeuralNet` there with `cli`'s
/// settings, until the returned `Rpc` is closed.
///
/// # Errors
/// When the broker cannot be reached in time or refuses to declare or consume a queue (a
/// half-made `Rpc` is closed first).
pub async fn serve_amqp(url: &str, cli: &Cli) -> Result<Rpc, Box<dyn std::error::Error + Send + Sync>> {
    let builder = Rpc::builder()
        .prefetch(cli.prefetch)
        .blocking_pool(cli.blocking_pool())
        .timeout(Duration::from_secs(cli.request_timeout))
        .connection_name("consumer example");
    let rpc = match tokio::time::timeout(CONNECT_TIMEOUT, builder.connect(url)).await {
        Ok(connected) => connected?,
        Err(_) => {
            let url = rpc::amqp::wire::redact_url(url);
            return Err(format!("cannot connect to {url}: no answer within {} s", CONNECT_TIMEOUT.as_secs()).into());
        }
    };
    let served = async {
        rpc.serve(services::Calculator).await?;
        rpc.serve(services::NeuralNet::shared()).await
    };
    if let Err(e) = served.await {
        let _ = rpc.close().await;
        return Err(e.into());
    }
    Ok(rpc)
}

async fn run_amqp(cli: Cli) -> ExitCode {
    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.into());
    let rpc = match serve_amqp(&url, &cli).await {
        Ok(rpc) => rpc,
        Err(e) => {
            eprintln!("consumer: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "consumer: serving {} on RabbitMQ at {} (prefetch {}, blocking pool: {}); Ctrl-C to stop",
        rpc.registered().join(", "),
        rpc::amqp::wire::redact_url(&url),
        cli.prefetch,
        rpc.config().blocking_pool.size()
    );
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("consumer: stopping; finishing requests in flight");
    match rpc.close().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_tcp(cli: Cli) -> ExitCode {
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

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    if cli.amqp {
        run_amqp(cli).await
    } else {
        run_tcp(cli).await
    }
}
