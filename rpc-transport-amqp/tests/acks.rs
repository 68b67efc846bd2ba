//! Coalesced acks (`src/acks.rs`) against the real broker: every request is settled exactly
//! once (a tag named twice would close the serving channel), and a slow request holds back no
//! other request's prefetch slot.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rpc_core::kwargs;
use rpc_transport_amqp::Rpc;
use serde::Deserialize;

#[derive(Deserialize)]
struct Nap {
    ms: u64,
    fail: bool,
}

/// `(ready, unacked)` of method queue `name` in this process's vhost, once both are zero or
/// `wait` has passed.
async fn settled(name: &str, wait: Duration) -> (u64, u64) {
    let vhost = rpc_testkit::broker::vhost();
    let started = Instant::now();
    loop {
        let name = name.to_owned();
        let vhost = vhost.clone();
        let (ready, unacked, _) = tokio::task::spawn_blocking(move || {
            rpc_testkit::broker::queue_counts(&["-p", &vhost], &name).expect("the method queue exists")
        })
        .await
        .expect("rabbitmqctl");
        if (ready == 0 && unacked == 0) || started.elapsed() > wait {
            return (ready, unacked);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_answered_out_of_order_is_settled_exactly_once() {
    let url = common::url();
    let server = Rpc::builder().with_prefetch(64).connect(&url).await.expect("server connects");
    let client = Rpc::connect(&url).await.expect("client connects");
    let method = common::unique("acks.nap");
    server
        .register_async(&method, |n: Nap| async move {
            tokio::time::sleep(Duration::from_millis(n.ms)).await;
            if n.fail {
                Err(rpc_core::RpcError::Handler {
                    target: "nap".into(),
                    code: Some("failed".into()),
                    message: "asked to".into(),
                    data: None,
                })
            } else {
                Ok(n.ms)
            }
        })
        .await
        .expect("register");
    // Delays from 0 to 30 ms in a scrambled order: replies (and so settlements) come out of
    // delivery order all the time; one in seven is an error reply, acked all the same.
    let calls = (0..600u64).map(|i| {
        let (client, method) = (client.clone(), method.clone());
        async move {
            let ms = (i * 7919) % 31;
            let fail = i % 7 == 0;
            let outcome = client.call::<u64>(&method, kwargs! {"ms" => ms, "fail" => fail}).await;
            (fail, outcome.map_err(|e| e.to_string()))
        }
    });
    let outcomes = join_all(calls).await;
    for (fail, outcome) in &outcomes {
        assert_eq!(outcome.is_err(), *fail, "{outcome:?}");
    }
    assert!(server.is_connected() && client.is_connected(), "no channel was closed by the broker");
    let (ready, unacked) = settled(&method, Duration::from_secs(10)).await;
    assert_eq!((ready, unacked), (0, 0), "every request acked");
    // The channel still serves (a tag named twice would have closed it).
    assert_eq!(client.call::<u64>(&method, kwargs! {"ms" => 1, "fail" => false}).await.unwrap(), 1);
    client.close().await.expect("client closes");
    server.close().await.expect("server closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_holds_back_no_other_requests_prefetch_slot() {
    let url = common::url();
    // Two slots: the slow request takes one, every quick one goes through the other, which is
    // free again only once the quick request before it is acked, while the slow one (delivered
    // first, so with a lower tag) still runs.
    let server = Rpc::builder().with_prefetch(2).connect(&url).await.expect("server connects");
    let client = Rpc::connect(&url).await.expect("client connects");
    let method = common::unique("acks.slow");
    let slow_done = Arc::new(AtomicBool::new(false));
    let slow_started = Arc::new(tokio::sync::Notify::new());
    let (done, started) = (Arc::clone(&slow_done), Arc::clone(&slow_started));
    server
        .register_async(&method, move |n: Nap| {
            let (done, started) = (Arc::clone(&done), Arc::clone(&started));
            async move {
                if n.ms >= 1000 {
                    started.notify_one();
                }
                tokio::time::sleep(Duration::from_millis(n.ms)).await;
                if n.ms >= 1000 {
                    done.store(true, Ordering::SeqCst);
                }
                Ok::<_, std::convert::Infallible>(n.ms)
            }
        })
        .await
        .expect("register");
    let slow = {
        let (client, method) = (client.clone(), method.clone());
        tokio::spawn(async move { client.call::<u64>(&method, kwargs! {"ms" => 8000, "fail" => false}).await })
    };
    // The slow request holds its slot (and the lowest delivery tag) before the quick ones go.
    slow_started.notified().await;
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(client.call::<u64>(&method, kwargs! {"ms" => 1, "fail" => false}).await.unwrap(), 1);
    }
    let took = started.elapsed();
    assert!(!slow_done.load(Ordering::SeqCst), "the slow request was still running");
    assert!(took < Duration::from_secs(5), "20 quick calls beside a slow one took {took:?}");
    assert_eq!(slow.await.expect("slow call task").expect("slow call"), 8000);
    assert_eq!(settled(&method, Duration::from_secs(10)).await, (0, 0), "every request acked");
    client.close().await.expect("client closes");
    server.close().await.expect("server closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_writes_the_acks_of_the_requests_it_waited_for() {
    let url = common::url();
    let server = Rpc::builder().with_prefetch(32).connect(&url).await.expect("server connects");
    let client = Rpc::connect(&url).await.expect("client connects");
    let method = common::unique("acks.close");
    server
        .register_async(&method, |n: Nap| async move {
            tokio::time::sleep(Duration::from_millis(n.ms)).await;
            Ok::<_, std::convert::Infallible>(n.ms)
        })
        .await
        .expect("register");
    let calls: Vec<_> = (0..32u64)
        .map(|i| {
            let (client, method) = (client.clone(), method.clone());
            tokio::spawn(
                async move { client.call::<u64>(&method, kwargs! {"ms" => 200 + i * 5, "fail" => false}).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.close().await.expect("server closes");
    for call in calls {
        call.await.expect("call task").expect("answered before the server closed");
    }
    // Nothing was requeued: each request the server answered was acked before its
    // connection closed.
    assert_eq!(settled(&method, Duration::from_secs(5)).await, (0, 0), "nothing requeued");
    client.close().await.expect("client closes");
}

/// A method unregistered while its consumer is being started: what the broker delivered to
/// that consumer before its cancel took effect goes back to the queue for another server,
/// and nothing stays unacked on the serving channel (where it would also stop the run of
/// coalesced acks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_withdrawn_while_it_starts_hands_back_what_it_was_delivered() {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::BasicProperties;

    let url = common::url();
    let server = Rpc::builder().with_prefetch(64).connect(&url).await.expect("server connects");
    let (conn, channel) = common::channel().await;
    let vhost = rpc_testkit::broker::vhost();
    // Where the requests a server did take are answered (each one is, with a result or an
    // error), so that every request is accounted for: answered, or back in its queue.
    let answers = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare the answers queue");
    let answers = answers.name().clone();
    for attempt in 0..8 {
        let method = common::unique("acks.withdrawn");
        // Requests waiting in the method's queue, as a server gone away leaves them.
        channel
            .queue_declare(
                method.as_str().into(),
                QueueDeclareOptions::default(),
                rpc_transport_amqp::wire::method_queue_arguments(),
            )
            .await
            .expect("declare the method queue");
        for _ in 0..40 {
            channel
                .basic_publish(
                    "".into(),
                    method.as_str().into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    BasicProperties::default()
                        .with_reply_to(answers.clone())
                        .with_correlation_id(common::unique("withdrawn").as_str().into()),
                )
                .await
                .expect("publish");
        }
        let registering = tokio::spawn({
            let (server, method) = (server.clone(), method.clone());
            async move {
                server
                    .register_async(&method, |_: serde_json::Value| async move { Ok::<_, std::convert::Infallible>(0) })
                    .await
            }
        });
        // Unregistered as soon as the registration is in, while its consumer starts.
        while server.unregister(&method).await.is_err() {
            tokio::task::yield_now().await;
        }
        registering.await.expect("register task").expect("register");
        let started = Instant::now();
        let (ready, unacked) = loop {
            let (name, vhost) = (method.clone(), vhost.clone());
            let (ready, unacked, _) = tokio::task::spawn_blocking(move || {
                rpc_testkit::broker::queue_counts(&["-p", &vhost], &name).expect("the method queue exists")
            })
            .await
            .expect("rabbitmqctl");
            if unacked == 0 || started.elapsed() > Duration::from_secs(3) {
                break (ready, unacked);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(unacked, 0, "attempt {attempt}: requests left unacked on the serving channel");
        let answered = u64::from(
            channel
                .queue_purge(answers.clone(), lapin::options::QueuePurgeOptions::default())
                .await
                .expect("purge the answers"),
        );
        assert_eq!(ready + answered, 40, "attempt {attempt}: {ready} back in the queue, {answered} answered");
        channel.queue_delete(method.as_str().into(), QueueDeleteOptions::default()).await.expect("delete");
    }
    assert!(server.is_connected(), "the serving channel is still open");
    server.close().await.expect("server closes");
    let _ = conn.close(200, "OK".into()).await;
}
