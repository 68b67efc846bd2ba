//! `cargo run --example client -- --tcp 127.0.0.1:9000 calculator calculate 2 + 2`: sends one
//! task and prints its result on stdout, or its error on stderr with exit code 1.
//!
//! Point `--tcp` at the producer or straight at a consumer: they speak the same protocol.
//! Quote `*` in a shell (`'*'`), or it expands to file names.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rpc::core::{Args, Request, Transport};
use rpc::tcp::TcpTransport;

/// Calls one method on a server and prints the result.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// The server (producer or consumer) to call.
    #[arg(long)]
    tcp: SocketAddr,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// The call: `service method [args...]`.
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, allow_hyphen_values = true)]
    call: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();

    let mut call = cli.call.into_iter();
    let (service, method) = (call.next().unwrap_or_default(), call.next().unwrap_or_default());
    let request =
        Request::new(service, method, Args::Text(call.collect())).with_timeout(Duration::from_secs(cli.timeout));
    match TcpTransport::new(cli.tcp).call(request).await {
        Ok(reply) => {
            println!("{}", reply.into_text());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ERROR {}: {e}", e.kind());
            ExitCode::FAILURE
        }
    }
}
