//! Server-side bounds that hold whatever the caller asks for.

mod common;

use std::time::{Duration, Instant};

use rpc_core::{kwargs, RpcError};
use rpc_transport_amqp::{CallOptions, Rpc};
use serde::Deserialize;

#[derive(Deserialize)]
struct Nap {
    ms: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stops_a_request_at_its_max_run_even_when_the_caller_would_wait_longer() {
    let url = common::url();
    let server = Rpc::builder().max_run(Duration::from_millis(300)).connect(&url).await.expect("server connects");
    let client = Rpc::connect(&url).await.expect("client connects");
    let method = common::unique("limits.nap");
    server
        .register_async(&method, |n: Nap| async move {
            tokio::time::sleep(Duration::from_millis(n.ms)).await;
            Ok::<_, std::convert::Infallible>(n.ms)
        })
        .await
        .expect("register");
    let options = CallOptions::new().timeout(Duration::from_secs(60));
    let started = Instant::now();
    let err = client.call_with::<u64>(&method, kwargs! {"ms" => 30_000}, options).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(&err, RpcError::DeadlineExceeded { timeout_ms: 300, .. }), "{err:?}");
    assert!(took < Duration::from_secs(10), "the caller waited {took:?}");
    // A short request under the same server still succeeds.
    assert_eq!(client.call::<u64>(&method, kwargs! {"ms" => 1}).await.unwrap(), 1);
    client.close().await.expect("client closes");
    server.close().await.expect("server closes");
}
