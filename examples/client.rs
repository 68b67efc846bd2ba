//! `cargo run --example client -- --tcp 127.0.0.1:9000 calculator calculate 2 + 2`: sends one
//! task and prints its result on stdout, or its error on stderr with exit code 1.
//!
//! Point `--tcp` at the producer or straight at a consumer: they speak the same protocol.
//! Quote `*` in a shell (`'*'`), or it expands to file names.
//!
//! `cargo run --example client -- --amqp calculator.calculate a=2 op=+ b=2` calls any method
//! over RabbitMQ (`$RABBITMQ_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`) by its
//! name, the routing key: `service.method` for a served `#[rpc_service]`, or the name a
//! handler was registered under (`foo`, aio-pika's `rpc.register("foo", ...)`). Arguments are
//! `name=value`: a value that parses as JSON is sent as JSON (`2`, `-0.5`, `true`, `null`,
//! `[1,0]`, `{"x":1}`, `'"42"'` for the string `42`), anything else as a string (`+`, `two`).
//! `--json` sends the call as JSON instead of MessagePack, which a handler registered with
//! aio-pika's `JsonRPC` needs. `--timeout` takes seconds (`0.5` too). Options go before the
//! method.
//!
//! Exit codes: 0 with the result on stdout; 1 with `ERROR <kind>: <message>` on stderr when
//! the call failed (the broker is unreachable, nobody serves the method, the handler failed,
//! the deadline passed); 2 when the command line is wrong.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use rpc::amqp::{CallOptions, Codec, Rpc};
use rpc::core::{text, Args, Request, RpcError, Transport};
use rpc::tcp::TcpTransport;
use serde_json::{Map, Value};

/// The broker when `$RABBITMQ_URL` is not set.
pub const DEFAULT_RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Calls one method on a server and prints the result.
#[derive(Debug, Parser)]
#[command(about, group(ArgGroup::new("transport").required(true).args(["tcp", "amqp"])))]
pub struct Cli {
    /// The server (producer or consumer) to call over TCP.
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// Call over RabbitMQ (`$RABBITMQ_URL`) instead.
    #[arg(long)]
    pub amqp: bool,
    /// Send the call as JSON rather than MessagePack (AMQP), e.g. to aio-pika's `JsonRPC`.
    #[arg(long, conflicts_with = "tcp")]
    pub json: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// The call. TCP: `service method [args...]`. AMQP: `method [name=value...]`.
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub call: Vec<String>,
}

/// Why the client did not print a result.
#[derive(Debug)]
pub enum Failure {
    /// The command line is wrong (exit code 2).
    Usage(String),
    /// The call failed (exit code 1).
    Call(RpcError),
}

/// `"2.5"` as 2.5 seconds.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let seconds: f64 = s.parse().map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a positive number of seconds"))
}

/// `name=value` pairs as named arguments, in order: a value that parses as JSON is that JSON
/// value, anything else is a string (`op=+` gives `"+"`, `a=2` gives `2`, `s="2"` the string
/// `2`).
///
/// # Errors
/// When a pair has no `=` or an empty name, or a name is given twice.
pub fn parse_kwargs<S: AsRef<str>>(pairs: &[S]) -> Result<Args, String> {
    let mut map = Map::new();
    for pair in pairs {
        let pair = pair.as_ref();
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("argument {pair:?} is not name=value"));
        };
        if name.is_empty() {
            return Err(format!("argument {pair:?} has no name before '='"));
        }
        if map.contains_key(name) {
            return Err(format!("argument '{name}' is given twice"));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        map.insert(name.to_owned(), value);
    }
    Ok(Args::Named(map))
}

/// Calls `method` with `args` on the broker at `url`, as JSON when `json`, waiting at most
/// `timeout` for the connection and again for the reply.
///
/// # Errors
/// The call's [`RpcError`]; an unreachable broker is [`RpcError::Transport`] (password
/// redacted).
pub async fn call_amqp(url: &str, method: &str, args: Args, json: bool, timeout: Duration) -> Result<Value, RpcError> {
    let unreachable = || {
        let url = rpc::amqp::wire::redact_url(url);
        RpcError::Transport { message: format!("cannot connect to {url}: no answer in time"), source: None }
    };
    let rpc = tokio::time::timeout(timeout, Rpc::connect(url)).await.map_err(|_| unreachable())??;
    let mut options = CallOptions::new().timeout(timeout);
    if json {
        options = options.codec(Codec::Json);
    }
    let result = rpc.call_with::<Value>(method, args, options).await;
    // The answer is in; a failing close cannot change it.
    let _ = rpc.close().await;
    result
}

/// The example's `main` without the process around it: makes the call `cli` describes
/// (over AMQP, on the broker at `url`) and returns the text to print.
///
/// # Errors
/// [`Failure::Usage`] for a call the command line cannot express, [`Failure::Call`] when the
/// call fails.
pub async fn run(cli: &Cli, url: &str) -> Result<String, Failure> {
    let value = if cli.amqp {
        let (method, pairs) = cli.call.split_first().ok_or_else(|| Failure::Usage("no method given".into()))?;
        let args = parse_kwargs(pairs).map_err(Failure::Usage)?;
        call_amqp(url, method, args, cli.json, cli.timeout).await.map_err(Failure::Call)?
    } else {
        let Some(addr) = cli.tcp else { return Err(Failure::Usage("give --tcp ADDR or --amqp".into())) };
        let [service, method, args @ ..] = &cli.call[..] else {
            return Err(Failure::Usage("over TCP the call is `service method [args...]`".into()));
        };
        let request = Request::new(service, method, Args::Text(args.to_vec())).with_deadline(cli.timeout);
        return TcpTransport::new(addr).call(request).await.map(|reply| reply.into_text()).map_err(Failure::Call);
    };
    Ok(text::render(&value))
}

#[tokio::main]
async fn main() -> ExitCode {
    // lapin warns of every message the broker returns; the transport turns those into an
    // `unavailable` error, which is printed anyway.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin::returned_messages=error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.into());

    match run(&cli, &url).await {
        Ok(result) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Err(Failure::Call(e)) => {
            eprintln!("ERROR {}: {e}", e.kind());
            ExitCode::FAILURE
        }
        Err(Failure::Usage(message)) => {
            eprintln!("client: {message}");
            ExitCode::from(2)
        }
    }
}
