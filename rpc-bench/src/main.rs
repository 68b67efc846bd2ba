//! `cargo run --release -p rpc-bench -- all`: both transports against their floors and
//! against aio-pika, medians of several runs. See BENCHMARKS.md.

use std::time::Duration;

use clap::{Parser, Subcommand};

mod load;
mod stats;
mod tcp;

/// The example services, exactly as users run them.
#[allow(dead_code)]
#[path = "../../examples/services/mod.rs"]
mod services;

#[derive(Parser)]
#[command(about = "Benchmarks for the rpc workspace: medians of several runs, ratios against raw floors")]
struct Cli {
    #[command(subcommand)]
    what: What,
    /// Repetitions of each scenario (medians are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Smoke mode: one short repetition of everything, to check the benchmark works (CI).
    #[arg(long)]
    quick: bool,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum What {
    /// Everything.
    All,
    /// TCP scenarios only.
    Tcp,
}

/// How long and how often each scenario runs.
pub struct Settings {
    pub reps: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

fn main() {
    let cli = Cli::parse();
    let settings = if cli.quick {
        Settings { reps: 1, warmup: Duration::from_millis(50), duration: Duration::from_millis(300) }
    } else {
        Settings { reps: cli.reps, warmup: Duration::from_millis(500), duration: Duration::from_secs_f64(cli.seconds) }
    };
    println!("# rpc benchmarks: {} reps × {:?}, {} CPUs", settings.reps, settings.duration, num_cpus());
    if matches!(cli.what, What::All | What::Tcp) {
        let rows = tcp::run(&settings);
        stats::print_table("TCP, one connection per request", &rows, "(c) raw floor");
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
