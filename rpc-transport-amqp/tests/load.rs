//! Latency and load measurements against the real broker. Ignored by default (they take
//! a while and print numbers rather than decide much); run them with
//! `cargo test -p rpc-transport-amqp --test load -- --ignored --nocapture`
//! (`AMQP_LOAD_CALLS` sets the load test's call count, default 20 000).

mod common;

use std::time::{Duration, Instant};

use common::{rpc, unique};
use rpc_core::{kwargs, HandlerError};
use serde::Deserialize;

#[derive(Deserialize)]
struct N {
    n: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn sequential_round_trips_have_no_delayed_ack_floor() {
    let (_c1, server) = rpc().await;
    let (_c2, client) = rpc().await;
    let name = unique("latency");
    server.register_async(&name, |n: N| async move { Ok::<_, HandlerError>(n.n) }).await.unwrap();
    for n in 0..50 {
        client.call::<u64>(&name, kwargs! { "n" => n }).await.unwrap();
    }
    let mut samples = Vec::with_capacity(1000);
    for n in 0..1000u64 {
        let started = Instant::now();
        assert_eq!(client.call::<u64>(&name, kwargs! { "n" => n }).await.unwrap(), n);
        samples.push(started.elapsed());
    }
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!("sequential round trip over 1000 calls: p50 {p50:?}, p99 {p99:?}, max {:?}", samples[999]);
    // A Nagle/delayed-ACK stall shows up as a ~40 ms median.
    assert!(p50 < Duration::from_millis(20), "p50 {p50:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn many_calls_with_256_in_flight_all_get_their_own_answer() {
    let calls: u64 = std::env::var("AMQP_LOAD_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let (_c1, server) = rpc().await;
    let (_c2, client) = rpc().await;
    let name = unique("load");
    server.register_async(&name, |n: N| async move { Ok::<_, HandlerError>(n.n * 3 + 1) }).await.unwrap();
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(calls as usize);
    for n in 0..calls {
        let permit = std::sync::Arc::clone(&sem).acquire_owned().await.unwrap();
        let client = client.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let out = client.call::<u64>(&name, kwargs! { "n" => n }).await;
            drop(permit);
            (n, out)
        }));
    }
    let mut wrong = 0;
    let mut failed = 0;
    for task in tasks {
        let (n, out) = task.await.unwrap();
        match out {
            Ok(v) if v == n * 3 + 1 => {}
            Ok(_) => wrong += 1,
            Err(e) => {
                failed += 1;
                eprintln!("call {n}: {e}");
            }
        }
    }
    let took = started.elapsed();
    println!("{calls} calls, 256 in flight: {took:?}, {:.0} calls/s; failed {failed}, wrong {wrong}", calls as f64 / took.as_secs_f64());
    assert_eq!((failed, wrong), (0, 0));
    assert_eq!(client.pending_calls(), 0);
}
