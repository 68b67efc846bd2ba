//! The seed's RabbitMQ snippet, in Rust: register `foo` and `sleep`, call `sleep` with `t`,
//! then show a timeout and a remote error.
//!
//! ```text
//! bash scripts/ensure-rabbitmq.sh          # a broker on 127.0.0.1:5672
//! cargo run --example amqp_rpc             # t = 3, as in the design document
//! cargo run --example amqp_rpc -- 0.2      # a shorter nap
//! ```
//! The broker is `$RABBITMQ_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

mod cli;

use std::convert::Infallible;
use std::time::Duration;

use rpc::amqp::{CallOptions, Connection, ConnectionProperties, Rpc};
use rpc::core::HandlerError;
use rpc::{kwargs, RpcError};
use serde::Deserialize;

/// RPC over RabbitMQ, aio-pika's `RPC` pattern in Rust: registers `foo` and `sleep` on the broker at $RABBITMQ_URL,
/// calls `sleep(t)`, then shows a call that times out and a remote error, and exits.
#[derive(Debug, clap::Parser)]
#[command(name = "amqp_rpc")]
struct Cli {
    /// Seconds `sleep` naps (`0.2` too).
    #[arg(default_value_t = 3.0, value_parser = nap)]
    t: f64,
}

/// A nap in seconds: a finite number, 0 or more.
fn nap(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("{s:?} is not a number of seconds (0 or more)")),
    }
}

#[derive(Deserialize)]
struct Foo {
    t: f64,
}

/// Doubles `t`; refuses negative values (the remote error of the demo).
async fn foo(args: Foo) -> Result<f64, HandlerError> {
    if args.t < 0.0 {
        return Err(HandlerError::new("negative_t", format!("t must not be negative, got {}", args.t)));
    }
    Ok(args.t * 2.0)
}

#[derive(Deserialize)]
struct Sleep {
    t: f64,
}

/// Sleeps `t` seconds and returns `t`.
async fn sleep(args: Sleep) -> Result<f64, Infallible> {
    tokio::time::sleep(Duration::from_secs_f64(args.t.max(0.0))).await;
    Ok(args.t)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    cli::init_logging(cli::DEFAULT_LOG_FILTER);
    let t = <Cli as clap::Parser>::parse().t;
    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| rpc_testkit::DEFAULT_RABBITMQ_URL.into());
    for line in run(&url, t).await? {
        println!("{line}");
    }
    Ok(())
}

/// The whole demo; returns the lines `main` prints (`tests/amqp_example.rs` checks them).
pub async fn run(url: &str, t: f64) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let mut out = Vec::new();
    // aio-pika: connection = await aio_pika.connect(url); channel = await connection.channel()
    let conn = Connection::connect(url, ConnectionProperties::default()).await.map_err(|e| {
        let e = rpc::amqp::wire::redact_text(&e.to_string(), url);
        format!("cannot connect to {}: {e}", rpc::amqp::wire::redact_url(url))
    })?;
    let channel = conn.create_channel().await?;
    // rpc = await RPC.create(channel); await rpc.register('foo', foo)
    let rpc = Rpc::create(channel).await?;
    rpc.register_async("foo", foo).await?;
    rpc.register_async("sleep", sleep).await?;

    // print(await rpc.call('sleep', kwargs={'t': 3}))
    let slept: f64 = rpc.call("sleep", kwargs! { "t" => t }).await?;
    out.push(format!("sleep(t={t}) -> {slept}"));

    // A call whose deadline runs out: the server took it, but the caller stops waiting.
    let options = CallOptions::new().with_deadline(Duration::from_millis(500));
    match rpc.call_with::<f64>("sleep", kwargs! { "t" => 5 }, options).await {
        Err(e @ RpcError::DeadlineExceeded { .. }) => out.push(format!("timeout: {e}")),
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }

    // The handler fails: the caller gets its code and message.
    match rpc.call::<f64>("foo", kwargs! { "t" => -1 }).await {
        Err(e @ RpcError::Handler { .. }) => out.push(format!("remote error: {e}")),
        other => return Err(format!("expected a remote error, got {other:?}").into()),
    }
    let doubled: f64 = rpc.call("foo", kwargs! { "t" => 21 }).await?;
    out.push(format!("foo(t=21) -> {doubled}"));

    rpc.close().await?;
    conn.close(200, "OK".into()).await?;
    Ok(out)
}
