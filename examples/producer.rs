//! `cargo run --example producer -- --listen 127.0.0.1:9000 --consumer 127.0.0.1:9001
//! --consumer 127.0.0.1:9002`: the gateway. External clients send it tasks in the same text
//! protocol; it spreads them over the consumers (least outstanding, round-robin on ties),
//! skips consumers that are down, and relays each reply. Addresses may be host names
//! (`localhost:9001`).
//!
//! `--http 127.0.0.1:8080` also serves HTTP/JSON (crate `rpc-http`) beside the text protocol,
//! forwarding to the same consumers: `curl -d '{"a":2,"op":"+","b":2}' -H 'content-type:
//! application/json' http://127.0.0.1:8080/rpc/calculator/calculate` prints `4.0`; `GET /` is
//! a console, `GET /openapi.json`, `/rpc`, `/healthz`, `/readyz`, `/metrics` say what it
//! serves and how it is doing. `--amqp --http 127.0.0.1:8080` puts the same HTTP front over
//! RabbitMQ workers (`cargo run --example consumer -- --amqp`, `$RABBITMQ_URL`) instead of
//! TCP consumers.
//!
//! It probes every consumer with `_rpc health` at start and every `--probe-interval` seconds:
//! a peer that does not answer as a Consumer (an HTTP server, another producer, itself) is
//! never given a task, and says so in the log; a consumer that goes down or comes back is
//! logged when it happens. On Ctrl-C or SIGTERM it stops accepting (on both fronts), finishes
//! the tasks in flight, prints what each consumer served, and exits 0.

mod cli;

use rpc_testkit::services;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rpc::tcp::{Limits, Producer, ProducerConfig};

/// The Producer: a gateway that takes tasks in the plain-text TCP protocol from any client
/// and spreads them over the Consumers given with --consumer, relaying each reply. Only peers
/// that answer its health probe as Consumers get tasks. With --http it serves HTTP/JSON too;
/// with --amqp --http, HTTP/JSON over RabbitMQ workers. Stops on Ctrl-C or SIGTERM after
/// finishing the tasks in flight.
#[derive(Debug, Parser)]
#[command(name = "producer")]
struct Cli {
    /// Address to listen on for external clients: host:port, a host name too.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// A consumer's address, host:port (repeat for each consumer).
    #[arg(long = "consumer", required_unless_present = "amqp", conflicts_with = "amqp")]
    consumers: Vec<String>,
    /// Also serve HTTP/JSON on this address: host:port, a host name too.
    #[arg(long)]
    http: Option<String>,
    /// Put the HTTP front over RabbitMQ workers (`$RABBITMQ_URL`) instead of TCP consumers.
    #[arg(long, requires = "http")]
    amqp: bool,
    /// Seconds each task may take, retries included (`0.5` too).
    #[arg(long, default_value = "30", value_parser = cli::seconds)]
    max_deadline: Duration,
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
    // One signal stops every front: each waits for `stop` to change.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stopping = async move {
        let signal = signals.recv().await;
        eprintln!("producer: {signal}: stopping; finishing tasks in flight");
        let _ = stop_tx.send(true);
    };
    let shutdown = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    };
    let http = match &cli.http {
        Some(target) => match cli::bind("--http", target).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprintln!("producer: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if cli.amqp {
        let Some(http) = http else { return ExitCode::from(2) };
        tokio::spawn(stopping);
        return http_over_amqp(http, shutdown()).await;
    }
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
        .with_max_deadline(cli.max_deadline)
        .with_attempt_timeout(cli.attempt_timeout)
        .with_probe_interval(cli.probe_interval);
    let shown: Vec<String> = consumers.iter().map(ToString::to_string).collect();
    let local = local.map_or_else(|| cli.listen.clone(), |a| a.to_string());
    eprintln!("producer: listening on {local}, forwarding to {}; Ctrl-C or SIGTERM to stop", shown.join(", "));
    let producer = Producer::new(consumers, config);
    tokio::spawn(stopping);
    let http_front = http.map(|listener| {
        let gateway = gateway(rpc::http::Gateway::builder(producer.clone()).with_backends(producer.clone()));
        eprintln!("producer: serving HTTP on {}", shown_addr(&listener));
        let stopped = shutdown();
        tokio::spawn(async move { gateway.serve(listener, stopped).await })
    });
    let served = producer.serve(listener, shutdown()).await;
    if let Some(front) = http_front {
        if let Ok(Err(e)) = front.await {
            eprintln!("producer: http: {e}");
        }
    }
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

/// The HTTP front's common settings: metrics, the title.
fn gateway(builder: rpc::http::GatewayBuilder) -> rpc::http::Gateway {
    let builder = builder.with_title("rpc producer");
    match rpc::http::metrics::prometheus() {
        Ok(handle) => builder.with_prometheus(handle).build(),
        Err(e) => {
            eprintln!("producer: no /metrics: {e}");
            builder.build()
        }
    }
}

fn shown_addr(listener: &tokio::net::TcpListener) -> String {
    listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string())
}

/// The broker when `$RABBITMQ_URL` is not set.
const DEFAULT_RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `--amqp --http`: the HTTP front over RabbitMQ workers until `shutdown`.
async fn http_over_amqp(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> ExitCode {
    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.into());
    let rpc = match tokio::time::timeout(Duration::from_secs(10), rpc::amqp::Rpc::connect(&url)).await {
        Ok(Ok(rpc)) => rpc,
        Ok(Err(e)) => {
            eprintln!("producer: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("producer: cannot connect to {}: no answer in 10 s", rpc::amqp::wire::redact_url(&url));
            return ExitCode::FAILURE;
        }
    };
    // Workers on the broker do not answer `_rpc describe`; the front knows the example
    // services' descriptions itself.
    let link = rpc.clone();
    let builder = rpc::http::Gateway::builder(rpc.clone())
        .with_descriptions(services::registry(Some(1)).describe())
        .with_backends(move || vec![rpc::http::BackendStatus::new("rabbitmq", link.is_connected())]);
    let gateway = gateway(builder);
    eprintln!(
        "producer: serving HTTP on {} over RabbitMQ at {}; Ctrl-C or SIGTERM to stop",
        shown_addr(&listener),
        rpc::amqp::wire::redact_url(&url)
    );
    let served = gateway.serve(listener, shutdown).await;
    let _ = rpc.close().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("producer: http: {e}");
            ExitCode::FAILURE
        }
    }
}
