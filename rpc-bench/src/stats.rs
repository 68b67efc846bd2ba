//! Latency samples, percentiles, medians over repetitions, and the result table.

use std::time::Duration;

/// One run of one scenario: how many calls finished, in how long, with which latencies.
#[derive(Debug, Clone)]
pub struct Run {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Per-call latencies in microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl Run {
    pub fn new(ok: u64, errors: u64, elapsed: Duration, mut latencies_us: Vec<u64>) -> Self {
        latencies_us.sort_unstable();
        Run { ok, errors, elapsed, latencies_us }
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[rank] as f64 / 1000.0
    }
}

/// The medians of several runs of one scenario.
#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub concurrency: usize,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

impl Summary {
    pub fn of(name: &str, concurrency: usize, runs: &[Run]) -> Self {
        // Progress on stderr, so that a long `all` run shows where it is (the tables go to
        // stdout when each part ends).
        eprintln!("  measured: {name}, concurrency {concurrency} ({} runs)", runs.len());
        Summary {
            name: name.to_owned(),
            concurrency,
            rate: median(runs.iter().map(Run::rate).collect()),
            p50_ms: median(runs.iter().map(|r| r.percentile_ms(50.0)).collect()),
            p99_ms: median(runs.iter().map(|r| r.percentile_ms(99.0)).collect()),
            errors: runs.iter().map(|r| r.errors).sum(),
        }
    }
}

/// Prints a markdown table of summaries, with each row's throughput and p50 as ratios to the
/// row named `floor` at the same concurrency.
pub fn print_table(title: &str, rows: &[Summary], floor: &str) {
    println!("\n### {title}\n");
    println!("| scenario | clients | calls/s | p50 ms | p99 ms | errors | calls/s ÷ floor | p50 ÷ floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let base = rows.iter().find(|r| r.name == floor && r.concurrency == row.concurrency);
        let (rr, pr) = match base {
            Some(b) => (format!("{:.2}", row.rate / b.rate), format!("{:.2}", row.p50_ms / b.p50_ms)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {rr} | {pr} |",
            row.name, row.concurrency, row.rate, row.p50_ms, row.p99_ms, row.errors
        );
    }
}
