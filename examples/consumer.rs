//! `cargo run --example consumer -- --listen 127.0.0.1:9001`: one Consumer serving
//! `Calculator` and `NeuralNet` until Ctrl-C or SIGTERM, then a graceful shutdown (it stops
//! accepting, finishes and answers the requests already read, and exits 0). `--listen` takes
//! a host name too (`localhost:9001`); port 0 picks a free port, and the address actually
//! bound is printed.
//!
//! `cargo run --example consumer -- --amqp`: the same services over RabbitMQ
//! (`$RABBITMQ_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`), one queue per method
//! (`calculator.calculate`, `neural_net.predict`, `neural_net.architecture`). `--prefetch N`
//! bounds the requests taken from each queue at once (default 32). Start several: they share
//! the queues' requests. On Ctrl-C or SIGTERM it stops consuming, answers the requests it
//! already took, then exits 0. The connection is re-established by itself if the broker goes
//! away.
//!
//! Try it: `printf 'calculator calculate 2 + 2\n' | nc -q 2 127.0.0.1 9001` prints `4`; with
//! `--amqp`, `cargo run --example client -- --amqp calculator.calculate a=2 op=+ b=2` does.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rpc::amqp::config::DEFAULT_PREFETCH;
use rpc::amqp::Rpc;
use rpc::core::BlockingPool;
use rpc::tcp::{Consumer, ConsumerConfig, Limits};
use rpc_testkit::{services, DEFAULT_RABBITMQ_URL};
use tokio::net::TcpListener;

/// How long connecting to the broker may take before the consumer gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A Consumer: serves the Calculator and NeuralNet services over a plain-text TCP protocol
/// (`calculator calculate 2 + 2` answers `4`), or over RabbitMQ with `--amqp`, until Ctrl-C or
/// SIGTERM; then it finishes the requests in flight and exits 0.
#[derive(Debug, Parser)]
#[command(name = "consumer")]
pub struct Cli {
    /// Serve over RabbitMQ (`$RABBITMQ_URL`) instead of TCP.
    #[arg(long)]
    pub amqp: bool,
    /// Address to listen on (TCP): host:port, a host name too; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9001", conflicts_with = "amqp")]
    pub listen: String,
    /// Synchronous calls run at once (default: one per CPU).
    #[arg(long, value_parser = cli::count)]
    pub pool: Option<usize>,
    /// Requests taken from each method queue at once (AMQP `basic.qos` prefetch).
    #[arg(long, default_value_t = DEFAULT_PREFETCH, requires = "amqp", value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Connections served at once; more are answered `ERROR overloaded` (TCP).
    #[arg(long, default_value_t = 1024, conflicts_with = "amqp", value_parser = cli::count)]
    pub max_connections: usize,
    /// Longest request line, in bytes (TCP).
    #[arg(long, default_value_t = 64 * 1024, conflicts_with = "amqp", value_parser = cli::count)]
    pub max_line: usize,
    /// Seconds a client has to send its request (TCP; `0.5` too).
    #[arg(long, default_value = "10", conflicts_with = "amqp", value_parser = cli::seconds)]
    pub read_timeout: Duration,
    /// Seconds a call may run (over AMQP: a call whose caller set no deadline of its own).
    #[arg(long, default_value = "30", value_parser = cli::seconds)]
    pub max_deadline: Duration,
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
        .with_prefetch(cli.prefetch)
        .with_blocking_pool(cli.blocking_pool())
        .with_deadline(cli.max_deadline)
        .with_connection_name("consumer example");
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

async fn run_amqp(cli: Cli, signals: cli::Signals) -> ExitCode {
    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.into());
    let rpc = match serve_amqp(&url, &cli).await {
        Ok(rpc) => rpc,
        Err(e) => {
            eprintln!("consumer: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "consumer: serving {} on RabbitMQ at {} (prefetch {}, blocking pool: {}); Ctrl-C or SIGTERM to stop",
        rpc.registered().join(", "),
        rpc::amqp::wire::redact_url(&url),
        cli.prefetch,
        rpc.config().blocking_pool.size()
    );
    let signal = signals.recv().await;
    eprintln!("consumer: {signal}: stopping; finishing requests in flight");
    match rpc.close().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_tcp(cli: Cli, signals: cli::Signals) -> ExitCode {
    let listener: TcpListener = match cli::bind("--listen", &cli.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("consumer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().map_or_else(|_| cli.listen.clone(), |a| a.to_string());
    let limits = Limits::default()
        .with_max_connections(cli.max_connections)
        .with_max_line(cli.max_line)
        .with_read_timeout(cli.read_timeout);
    let config = ConsumerConfig::default().with_limits(limits).with_max_deadline(cli.max_deadline);
    let registry = services::registry(cli.pool);
    let services: Vec<&str> = registry.services().map(|s| s.name).collect();
    eprintln!(
        "consumer: serving {} on {local} (blocking pool: {}); Ctrl-C or SIGTERM to stop",
        services.join(", "),
        registry.blocking_pool().size()
    );
    let consumer = Consumer::new(Arc::new(registry), config);
    let shutdown = async {
        let signal = signals.recv().await;
        eprintln!("consumer: {signal}: stopping; finishing requests in flight");
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
    cli::init_logging(cli::DEFAULT_LOG_FILTER);
    let cli = Cli::parse();
    let signals = match cli::Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("consumer: cannot handle SIGINT and SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.amqp {
        run_amqp(cli, signals).await
    } else {
        run_tcp(cli, signals).await
    }
}
