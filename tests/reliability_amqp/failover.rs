//! A server process killed with SIGKILL mid-load: its unacked requests are served by the other
//! server, and no call hangs.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_server_process_mid_load_has_its_unacked_requests_served_by_the_other_server_and_no_call_hangs() {
    const TEST: &str =
        "failover::sigkilled_server_process_mid_load_has_its_unacked_requests_served_by_the_other_server_and_no_call_hangs";
    if let Some(role) = child_role() {
        return play(&role).await;
    }
    const CALLS: u64 = 3000;
    const IN_FLIGHT: usize = 64;
    const KILL_AFTER: usize = 300;
    let deadline = Duration::from_secs(30);
    let method = unique("rel-kill");
    let env = |trace: &str| {
        vec![
            ("RPC_WORKER_METHOD", method.clone()),
            ("RPC_WORKER_DELAY_MS", "50".to_owned()),
            ("RPC_WORKER_TRACE", trace.to_owned()),
        ]
    };
    let mut a = RoleProcess::spawn(TEST, "worker", &env("1"), false);
    a.expect_line("ready", Duration::from_secs(60)).await;
    let mut b = RoleProcess::spawn(TEST, "worker", &env("0"), false);
    b.expect_line("ready", Duration::from_secs(60)).await;

    // Which requests A took, from its `started <n>` lines; a signal once it took enough.
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel();
    let mut a_lines = std::mem::replace(&mut a.lines, tokio::sync::mpsc::unbounded_channel().1);
    let taken_by_a = tokio::spawn(async move {
        let mut taken = HashSet::new();
        let mut enough = Some(enough_tx);
        while let Some(line) = a_lines.recv().await {
            if let Some(n) = line.strip_prefix("started ").and_then(|n| n.parse::<u64>().ok()) {
                taken.insert(n);
                if taken.len() >= KILL_AFTER {
                    if let Some(tx) = enough.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
        taken
    });

    let (_client_conn, client) = rpc().await;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let load = {
        let (client, method) = (client.clone(), method.clone());
        tokio::spawn(async move {
            futures_util::stream::iter(0..CALLS)
                .map(|n| {
                    let (client, method, tag) = (client.clone(), method.clone(), format!("{nonce}-{n}"));
                    async move {
                        let started = Instant::now();
                        let outcome = client
                            .call_with::<Echo>(
                                &method,
                                kwargs! { "n" => n, "tag" => tag.clone() },
                                CallOptions::new().with_deadline(deadline),
                            )
                            .await;
                        (n, tag, outcome, started.elapsed())
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(60), enough_rx).await.expect("server A took requests").unwrap();
    a.child.start_kill().expect("SIGKILL server A");
    let killed_at = Instant::now();
    a.child.wait().await.unwrap();
    let taken_by_a = taken_by_a.await.unwrap();
    let results = tokio::time::timeout(deadline * 3, load).await.expect("every call ends").unwrap();

    assert_eq!(results.len() as u64, CALLS);
    let mut answered_by: HashMap<u64, u32> = HashMap::new();
    let mut slowest = Duration::ZERO;
    for (n, tag, outcome, took) in &results {
        match outcome {
            Ok(echo) => {
                assert_eq!((echo.n, &echo.tag), (*n, tag), "call {n} got another call's result");
                answered_by.insert(*n, echo.pid);
            }
            Err(e) => panic!("call {n} failed after {took:?}: {e}"),
        }
        slowest = slowest.max(*took);
    }
    // A took these and never answered them: they were unacked when it died.
    let orphaned: Vec<u64> = taken_by_a.iter().copied().filter(|n| answered_by[n] != a.pid).collect();
    assert!(!orphaned.is_empty(), "server A held no unacked request when killed; the test proves nothing");
    assert!(orphaned.iter().all(|n| answered_by[n] == b.pid), "orphaned requests answered by B");
    let by_a = answered_by.values().filter(|pid| **pid == a.pid).count();
    println!(
        "sigkill: A took {} requests and answered {by_a} before SIGKILL; its {} unacked ones were all answered by B; \
         {CALLS} calls, 0 lost, slowest {slowest:?} (deadline {deadline:?}), load ended {:?} after the kill",
        taken_by_a.len(),
        orphaned.len(),
        killed_at.elapsed(),
    );
    assert!(slowest < deadline);
    let (counts, settled) = wait_for_counts(&method, Duration::from_secs(30), |c| c.ready == 0 && c.unacked == 0).await;
    assert!(settled, "{counts:?}");
    assert_eq!(counts.consumers, 1, "only B consumes now");
    assert!(b.finish(Duration::from_secs(30)).await.success());
    delete_queue(&method).await;
}
