//! `cargo run --release -p rpc-bench -- all`: both transports against their raw floors and
//! against aio-pika, medians of several runs, in one process on one machine. See
//! BENCHMARKS.md for what each scenario is and the latest numbers.

use std::time::Duration;

use clap::{Parser, Subcommand};

mod amqp;
mod http;
mod load;
mod peer;
mod plot;
mod stats;
mod tcp;

#[derive(Parser)]
#[command(about = "Benchmarks for the rpc workspace: medians of several runs, ratios against raw floors")]
struct Cli {
    #[command(subcommand)]
    what: What,
    /// Repetitions of each scenario (medians are reported).
    #[arg(long, global = true, default_value_t = 5)]
    reps: usize,
    /// Measured seconds per run.
    #[arg(long, global = true, default_value_t = 3.0)]
    seconds: f64,
    /// Smoke mode: one short repetition of everything, to check the benchmark works (CI).
    /// Its numbers mean nothing.
    #[arg(long, global = true)]
    quick: bool,
}

#[derive(Subcommand, Clone, PartialEq, Eq)]
enum What {
    /// Everything below, in one run.
    All,
    /// TCP: consumer, producer, raw floor; 1 and 32 clients.
    Tcp {
        /// Only the scenarios whose name contains this (`floor`, `(a) consumer`, `producer`,
        /// `blocking pool`), for profiling one of them.
        #[arg(long)]
        only: Option<String>,
        /// Only this many clients (1 and 32 by default).
        #[arg(long)]
        clients: Option<usize>,
    },
    /// HTTP/JSON front through the producer vs a minimal axum floor; keep-alive, 1 and 32 clients.
    Http,
    /// RabbitMQ: rpc.call vs a raw lapin floor, and aio-pika; 1 and 64 in flight; client and
    /// server in one process, then in two.
    Amqp {
        /// Only this layout (both by default).
        #[arg(long, value_enum)]
        layout: Option<amqp::Layout>,
        /// Only the scenarios whose name ends with this (`floor`, `multiply`, `confirms off`,
        /// `properties`, `publisher confirms`), for profiling one of them.
        #[arg(long)]
        only: Option<String>,
        /// Only this many in flight (1 and 64 by default).
        #[arg(long)]
        in_flight: Option<usize>,
    },
    /// Cost growth: payload sizes, and RSS of a server holding 10,000 calls.
    Growth,
    /// TCP cost growth: Producer throughput with 2, 4 and 8 consumers; RSS per idle connection
    /// held by a Consumer (10,000; raise `ulimit -n` first).
    TcpGrowth,
    /// TCP at 1 to 256 clients: a table, and SVG pictures of calls/s and p99 written to `--out`.
    TcpPlot {
        /// Where the pictures go.
        #[arg(long, default_value = "benchmarks")]
        out: std::path::PathBuf,
    },
    /// RabbitMQ at 1 to 256 in flight (one process): the raw floor, `rpc.call` and aio-pika; a
    /// table, and SVG pictures of calls/s and p99 written to `--out`.
    AmqpPlot {
        /// Where the pictures go.
        #[arg(long, default_value = "benchmarks")]
        out: std::path::PathBuf,
    },
    /// Internal: the Consumer process of the idle-connection measurement.
    #[command(hide = true)]
    HoldIdle {
        #[arg(long)]
        count: usize,
    },
    /// RabbitMQ cluster: calls/s at 64 in flight, classic and quorum method queues, on the
    /// default broker and on a cluster (not part of `all`: start one with
    /// `scripts/rabbitmq-cluster.sh start` and pass the URLs it prints).
    Cluster {
        /// The cluster's nodes, comma-separated.
        #[arg(long)]
        urls: String,
    },
    /// Internal: the server process of the two-process RabbitMQ layout.
    #[command(hide = true)]
    AmqpServer {
        /// `framework` or `floor`.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        echo: String,
    },
    /// Internal: the server process of the RSS measurement.
    #[command(hide = true)]
    HoldServer {
        #[arg(long)]
        method: String,
        #[arg(long)]
        calls: usize,
    },
}

/// How long and how often each scenario runs.
pub struct Settings {
    pub reps: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

fn main() {
    let cli = Cli::parse();
    if let What::HoldIdle { count } = &cli.what {
        tcp::hold_idle(*count);
        return;
    }
    if let What::HoldServer { method, calls } = &cli.what {
        amqp::hold_server(method, *calls);
        return;
    }
    if let What::AmqpServer { kind, name, echo } = &cli.what {
        amqp::serve_in_child(kind, name, echo);
        return;
    }
    let settings = if cli.quick {
        Settings { reps: 1, warmup: Duration::from_millis(50), duration: Duration::from_millis(300) }
    } else {
        Settings { reps: cli.reps, warmup: Duration::from_millis(500), duration: Duration::from_secs_f64(cli.seconds) }
    };
    println!(
        "# rpc benchmarks\n\n{} reps × {:?} per scenario (medians), {} CPUs{}",
        settings.reps,
        settings.duration,
        std::thread::available_parallelism().map_or(1, usize::from),
        if cli.quick { ", QUICK SMOKE MODE: numbers mean nothing" } else { "" }
    );
    let all = cli.what == What::All;
    let tcp_pick = match &cli.what {
        What::All => Some(tcp::Pick::default()),
        What::Tcp { only, clients } => Some(tcp::Pick { only: only.clone(), clients: *clients }),
        _ => None,
    };
    if let Some(pick) = tcp_pick {
        let rows = tcp::run(&settings, &pick);
        stats::print_table("TCP, one connection per request (`calculator calculate 2 + 2`)", &rows, "(c) raw floor");
    }
    if all || cli.what == What::TcpGrowth {
        let rows = tcp::scale(&settings);
        stats::print_table("TCP Producer throughput by number of consumers (32 clients)", &rows, "(c) raw floor");
        let count = if cli.quick { 500 } else { 10_000 };
        match tcp::idle_connections(count) {
            Ok(kib) => println!("\nConsumer holding {count} idle connections: {kib:.1} KiB of its RSS per connection"),
            Err(e) => println!("\n(idle connections skipped: {e})"),
        }
    }
    if let What::TcpPlot { out } = &cli.what {
        let rows = tcp::sweep(&settings, &[1, 4, 16, 64, 256]);
        stats::print_table("TCP by number of clients", &rows, "raw floor");
        let names = ["raw floor", "consumer", "producer → 2 consumers"];
        let x = "clients (each: one connection per request, one call after another)";
        draw_sweep(&rows, &names, out, ("tcp", "TCP", "clients"), x);
    }
    if all || cli.what == What::Http {
        let rows = http::run(&settings);
        stats::print_table(
            "HTTP/JSON, keep-alive (`POST /rpc/calculator/calculate`)",
            &rows,
            "(f) axum floor, constant",
        );
    }
    // The RabbitMQ layouts to run: both for `all`, or as `amqp --layout` says.
    let (one, two, pick) = match &cli.what {
        What::All => (true, true, amqp::Pick::default()),
        What::Amqp { layout, only, in_flight } => (
            *layout != Some(amqp::Layout::TwoProcesses),
            *layout != Some(amqp::Layout::OneProcess),
            amqp::Pick { only: only.clone().map(|only| vec![only]), in_flight: *in_flight, levels: None },
        ),
        _ => (false, false, amqp::Pick::default()),
    };
    if one {
        let mut rows = amqp::run(&settings, amqp::Layout::OneProcess, &pick);
        if pick == amqp::Pick::default() {
            match peer::run(&settings, &[1, 64]) {
                Ok(peer) => rows.extend(peer),
                Err(why) => println!("\n(aio-pika peer skipped: {why})"),
            }
        }
        stats::print_table("RabbitMQ request/reply (`multiply`), one process", &rows, "(d) raw lapin floor");
    }
    if two {
        let rows = amqp::run(&settings, amqp::Layout::TwoProcesses, &pick);
        stats::print_table(
            "RabbitMQ request/reply (`multiply`), client and server in two processes",
            &rows,
            "(d) raw lapin floor, two processes",
        );
    }
    if let What::AmqpPlot { out } = &cli.what {
        let levels = [1, 4, 16, 64, 256];
        let only = Some(vec!["floor".to_owned(), "multiply".to_owned()]);
        let pick = amqp::Pick { only, levels: Some(levels.to_vec()), ..amqp::Pick::default() };
        let mut rows = amqp::run(&settings, amqp::Layout::OneProcess, &pick);
        match peer::run(&settings, &levels) {
            Ok(peer) => rows.extend(peer),
            Err(why) => println!("\n(aio-pika peer skipped: {why})"),
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.concurrency.cmp(&b.concurrency)));
        stats::print_table("RabbitMQ by calls in flight (one process)", &rows, "(d) raw lapin floor");
        let names = ["(d) raw lapin floor", "rpc.call multiply", "aio-pika RPC (peer)"];
        let x = "calls in flight (each caller: one call after another)";
        draw_sweep(&rows, &names, out, ("amqp", "RabbitMQ", "calls in flight"), x);
    }
    if let What::Cluster { urls } = &cli.what {
        let rows = amqp::cluster(&settings, urls);
        stats::print_table(
            "RabbitMQ cluster vs default broker (`multiply`, 64 in flight)",
            &rows,
            "default broker, classic queue",
        );
    }
    if all || cli.what == What::Growth {
        let rows = amqp::payload_growth(&settings);
        stats::print_table("RabbitMQ latency by payload size (1 in flight)", &rows, "rpc.call echo 100 B");
        let calls = if cli.quick { 1_000 } else { 10_000 };
        match amqp::held_calls_rss(calls) {
            Ok((idle, peak, took)) => println!(
                "\nServer holding {calls} calls in flight: RSS {:.1} MiB idle, peak {:.1} MiB ({:.1} KiB per held call); all answered in {took:.1?}",
                idle as f64 / 1024.0,
                peak as f64 / 1024.0,
                (peak.saturating_sub(idle)) as f64 / calls as f64
            ),
            Err(e) => {
                eprintln!("held-calls measurement failed: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Draws `names`' rows of a sweep as `<prefix>-calls.svg` and `<prefix>-p99.svg` in `out`,
/// titled "`what`: … by `by`", `x` under the x axis; exits when it cannot.
fn draw_sweep(rows: &[stats::Summary], names: &[&str], out: &std::path::Path, title: (&str, &str, &str), x: &str) {
    let (prefix, what, by) = title;
    let series: Vec<plot::Series<'_>> =
        names.iter().map(|n| (*n, rows.iter().filter(|r| r.name == *n).collect())).collect();
    let drawn = std::fs::create_dir_all(out).map_err(|e| e.to_string()).and_then(|()| {
        let calls = out.join(format!("{prefix}-calls.svg"));
        plot::draw(&calls, &format!("{what}: calls/s by {by}"), "calls/s (median)", x, &series, |r| r.rate)?;
        let p99 = out.join(format!("{prefix}-p99.svg"));
        plot::draw(&p99, &format!("{what}: p99 latency by {by}"), "p99 ms (median)", x, &series, |r| r.p99_ms)
    });
    if let Err(e) = drawn {
        eprintln!("drawing failed: {e}");
        std::process::exit(1);
    }
    println!("\npictures: {}", out.display());
}
