//! Returned (unroutable) requests are blamed on the call they belong to, even when the broker
//! confirms many publishes at once and lapin hands the return to another confirmation, and
//! when publisher confirms are off.

mod common;

use std::time::Duration;

use rpc_core::{kwargs, RpcError};
use rpc_transport_amqp::{CallOptions, Rpc};
use serde::Deserialize;

#[derive(Deserialize)]
struct Double {
    x: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_calls_mixed_with_served_ones_each_get_their_own_outcome() {
    mixed_burst(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_publisher_confirms_unroutable_calls_still_fail_at_once_with_unavailable() {
    mixed_burst(false).await;
}

async fn mixed_burst(publisher_confirms: bool) {
    let url = common::url();
    let server = Rpc::connect(&url).await.expect("server connects");
    let client =
        Rpc::builder().with_publisher_confirms(publisher_confirms).connect(&url).await.expect("client connects");
    let served = common::unique("returns.served");
    let missing = common::unique("returns.missing");
    server
        .register_async(&served, |d: Double| async move { Ok::<_, std::convert::Infallible>(d.x * 2) })
        .await
        .expect("register");

    // Several rounds of a burst: batches of confirms are what exposed the misattribution.
    for round in 0..4 {
        let calls = (0..300i64).map(|i| {
            let client = client.clone();
            let (served, missing) = (served.clone(), missing.clone());
            async move {
                let options = CallOptions::new().with_deadline(Duration::from_secs(20));
                if i % 10 == 0 {
                    let started = std::time::Instant::now();
                    let r = client.call_with::<i64>(&missing, kwargs! {"x" => i}, options).await;
                    (i, true, r, started.elapsed())
                } else {
                    let started = std::time::Instant::now();
                    let r = client.call_with::<i64>(&served, kwargs! {"x" => i}, options).await;
                    (i, false, r, started.elapsed())
                }
            }
        });
        for (i, unroutable, result, took) in futures_util::future::join_all(calls).await {
            if unroutable {
                match result {
                    Err(RpcError::Unavailable { target, .. }) => assert_eq!(target, missing, "round {round} call {i}"),
                    other => panic!("round {round}: unroutable call {i} got {other:?} after {took:?}"),
                }
                assert!(took < Duration::from_secs(10), "round {round}: unroutable call {i} took {took:?}");
            } else {
                assert_eq!(result.unwrap_or_else(|e| panic!("round {round}: served call {i} failed: {e}")), i * 2);
            }
        }
    }
    client.close().await.expect("client closes");
    server.close().await.expect("server closes");
}

/// A describe request is a mandatory publish on the same channel as calls: a call's return
/// that lapin hands to the describe request's confirmation must still fail that call (and
/// not make the describe request say nobody serves), and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_requests_among_unroutable_calls_each_get_their_own_outcome() {
    let url = common::url();
    let server = Rpc::connect(&url).await.expect("server connects");
    let client = Rpc::connect(&url).await.expect("client connects");
    let served = common::unique("returns.described");
    let missing = common::unique("returns.missing");
    server
        .register_async(&served, |d: Double| async move { Ok::<_, std::convert::Infallible>(d.x * 2) })
        .await
        .expect("register");

    // Unroutable calls from 64 callers without a pause, and describe requests one after
    // another meanwhile: each describe request's publish is confirmed in the same batches as
    // returned calls.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers = (0..64i64).map(|w| {
        let (client, missing, stop) = (client.clone(), missing.clone(), stop.clone());
        tokio::spawn(async move {
            let mut calls = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let options = CallOptions::new().with_deadline(Duration::from_secs(20));
                let started = std::time::Instant::now();
                match client.call_with::<i64>(&missing, kwargs! {"x" => w}, options).await {
                    Err(RpcError::Unavailable { target, .. }) => assert_eq!(target, missing, "caller {w}"),
                    other => panic!("caller {w}: unroutable call got {other:?} after {:?}", started.elapsed()),
                }
                let took = started.elapsed();
                assert!(took < Duration::from_secs(10), "caller {w}: unroutable call took {took:?}");
                calls += 1;
            }
            calls
        })
    });
    let callers: Vec<_> = callers.collect();
    for round in 0..30 {
        let description = client
            .describe(Duration::from_millis(100))
            .await
            .unwrap_or_else(|e| panic!("describe request {round} failed: {e}"));
        assert!(
            description["methods"].as_array().is_some_and(|m| m.iter().any(|n| n == served.as_str())),
            "describe request {round}: {description}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut calls = 0;
    for caller in callers {
        calls += caller.await.expect("caller");
    }
    assert!(calls > 1000, "only {calls} unroutable calls were made beside the describe requests");
    client.close().await.expect("client closes");
    server.close().await.expect("server closes");
}

/// On a caller's channel (`Rpc::create`) replies go out on the channel requests do, so the
/// confirmation of a reply can carry a call's returned request: it still fails that call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_channel_a_return_carried_by_a_replys_confirmation_still_fails_its_call() {
    let (_conn, rpc) = common::rpc().await;
    let served = common::unique("returns.shared");
    let missing = common::unique("returns.missing");
    rpc.register_async(&served, |d: Double| async move { Ok::<_, std::convert::Infallible>(d.x * 2) })
        .await
        .expect("register");
    for round in 0..5 {
        let calls = (0..600i64).map(|i| {
            let (rpc, served, missing) = (rpc.clone(), served.clone(), missing.clone());
            async move {
                let options = CallOptions::new().with_deadline(Duration::from_secs(8));
                let started = std::time::Instant::now();
                let target = if i % 3 == 0 { &missing } else { &served };
                let result = rpc.call_with::<i64>(target, kwargs! {"x" => i}, options).await;
                (i, result, started.elapsed())
            }
        });
        for (i, result, took) in futures_util::future::join_all(calls).await {
            if i % 3 == 0 {
                match result {
                    Err(RpcError::Unavailable { target, .. }) => assert_eq!(target, missing, "round {round} call {i}"),
                    other => panic!("round {round}: unroutable call {i} got {other:?} after {took:?}"),
                }
            } else {
                assert_eq!(result.unwrap_or_else(|e| panic!("round {round}: served call {i} failed: {e}")), i * 2);
            }
        }
    }
    rpc.close().await.expect("close");
}
