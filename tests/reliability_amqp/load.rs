//! Load: 100,000 calls with 256 in flight, none lost or mixed up, memory bounded.

use super::*;

/// Peak RSS allowed for the client and for the server process of the load test (measured:
/// about 26 MiB each, debug build).
const LOAD_RSS_LIMIT_KB: u64 = 64 * 1024;
/// Growth of the client's RSS allowed between 10% and 100% of the calls: a leak of 200 bytes
/// per call would cross it.
const LOAD_RSS_GROWTH_LIMIT_KB: u64 = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_calls_with_256_in_flight_lose_none_mix_none_up_and_keep_memory_bounded() {
    const TEST: &str = "load::hundred_thousand_calls_with_256_in_flight_lose_none_mix_none_up_and_keep_memory_bounded";
    if let Some(role) = child_role() {
        return play(&role).await;
    }
    let calls: u64 = env_or("RPC_LOAD_CALLS", 100_000);
    let method = unique("rel-load");
    let mut server = RoleProcess::spawn(TEST, "worker", &[("RPC_WORKER_METHOD", method.clone())], false);
    server.expect_line("ready", Duration::from_secs(60)).await;
    let started = Instant::now();
    let mut client = RoleProcess::spawn(
        TEST,
        "load-client",
        &[
            ("RPC_LOAD_METHOD", method.clone()),
            ("RPC_LOAD_CALLS", calls.to_string()),
            ("RPC_LOAD_INFLIGHT", "256".to_owned()),
        ],
        false,
    );
    let report = client.expect_line("load ", Duration::from_secs(600)).await;
    assert!(client.finish(Duration::from_secs(60)).await.success());
    drop(server.stdin.take());
    let server_hwm: u64 =
        server.expect_line("vmhwm ", Duration::from_secs(60)).await["vmhwm ".len()..].parse().unwrap();
    assert!(server.finish(Duration::from_secs(30)).await.success());
    let took = started.elapsed();
    let f = fields(&report);
    let num = |key: &str| f[key].parse::<u64>().unwrap_or_else(|_| panic!("{key} in {report}"));
    println!("load: {report}; server hwm_kb={server_hwm}; wall {took:?}");
    assert_eq!(num("ok"), calls, "{report}");
    assert_eq!(
        (num("failed"), num("wrong"), num("duplicate"), num("missing"), num("pending")),
        (0, 0, 0, 0, 0),
        "{report}"
    );
    assert!(num("hwm_kb") < LOAD_RSS_LIMIT_KB, "client peak RSS: {report}");
    assert!(
        num("rss_end_kb").saturating_sub(num("rss_tenth_kb")) < LOAD_RSS_GROWTH_LIMIT_KB,
        "client RSS grows with the calls: {report}"
    );
    assert!(server_hwm < LOAD_RSS_LIMIT_KB, "server peak RSS {server_hwm} KiB");
    let (counts, settled) = wait_for_counts(&method, Duration::from_secs(30), |c| c.ready == 0 && c.unacked == 0).await;
    assert!(settled, "{counts:?}");
    delete_queue(&method).await;
}
