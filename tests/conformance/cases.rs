//! The cases: each takes a [`Fixture`] and asserts what every transport must do, or states
//! where a transport legitimately differs ([`crate::setups::Traits`]).

use std::time::Duration;

use futures_util::future::join_all;
use rpc::core::{kwargs, Reply, Request, RpcError, Transport};

use crate::service::{progress, ConformanceClient, Refusal, Summary};
use crate::setups::{Fixture, PATIENCE};

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future).await.unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
}

/// A raw request with named arguments, in parameter order (so text transports can send it).
fn request(service: &str, method: &str, args: rpc::Args) -> Request {
    Request::new(service, method, args).in_parameter_order(false)
}

/// The generated client gets typed results: a number, and a struct field for field.
pub async fn typed_result<T: Transport>(fx: &Fixture<T>) {
    let client = ConformanceClient::new(&fx.transport);
    assert_eq!(client.add(2, 40).await.unwrap(), 42);
    assert_eq!(client.add(-7, 3).await.unwrap(), -4);
    let summary = client.summarize("numbers".into(), vec![1, 2, 3, 4]).await.unwrap();
    assert_eq!(summary, Summary { label: "numbers".into(), count: 4, total: 10 });
}

/// A raw call's result: a structured value, or text on a text transport; the same either
/// way once rendered or decoded.
pub async fn reply_shape<T: Transport>(fx: &Fixture<T>) {
    let args = kwargs! {"a" => 40, "b" => 2};
    let reply = within("a raw call", fx.transport.call(request("conformance", "add", args))).await.unwrap();
    if fx.traits.text_replies {
        assert_eq!(reply, Reply::Text("42".into()));
    } else {
        assert_eq!(reply, Reply::Value(serde_json::json!(42)));
    }
    assert_eq!(reply.clone().into_text(), "42");
    assert_eq!(reply.decode::<i64>("conformance.add").unwrap(), 42);
}

/// The call's metadata reaches the handler's context; the one-line TCP protocol has no room
/// for it, so there the handler sees none (and the call still succeeds).
pub async fn metadata_reaches_the_handler<T: Transport>(fx: &Fixture<T>) {
    let client = ConformanceClient::new(&fx.transport).with_metadata("tenant", "acme").unwrap();
    let seen = within("a call with metadata", client.tenant()).await.unwrap();
    if fx.traits.metadata {
        assert_eq!(seen.as_deref(), Some("acme"));
    } else {
        assert_eq!(seen, None, "this transport carries no metadata");
    }
}

/// A handler's error reaches the caller with its target, code and message.
pub async fn handler_error_with_code<T: Transport>(fx: &Fixture<T>) {
    let client = ConformanceClient::new(&fx.transport);
    match client.fail("out_of_stock".into()).await.unwrap_err() {
        RpcError::Handler { target, code, message, .. } => {
            assert_eq!(target, "conformance.fail");
            assert_eq!(code.as_deref(), Some("out_of_stock"));
            assert_eq!(message, "the handler refused");
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
}

/// A handler error whose type serializes comes back as that type (`RpcError::downcast`); the
/// code is the type's short name. Over the one-line TCP protocol the error's JSON travels on
/// the line after `ERROR kind: message`, so the data arrives there too.
pub async fn serde_error_comes_back_as_its_type<T: Transport>(fx: &Fixture<T>) {
    let client = ConformanceClient::new(&fx.transport);
    assert_eq!(client.refuse(3).await.unwrap(), 3);
    let error = client.refuse(9).await.unwrap_err();
    assert!(matches!(&error, RpcError::Handler { code: Some(code), .. } if code == "Refusal"), "{error:?}");
    if fx.traits.error_data {
        assert_eq!(error.downcast::<Refusal>(), Some(Refusal::TooMany { limit: 5 }), "{error:?}");
    } else {
        assert_eq!(error.downcast::<Refusal>(), None, "this transport does not carry the data");
    }
}

/// A service nobody serves: `unknown_service` naming it; over RabbitMQ `unavailable` (the
/// routing key names service and method together, and the broker only knows that no queue
/// is bound to it).
pub async fn unknown_service<T: Transport>(fx: &Fixture<T>) {
    let error = within("unknown service", fx.transport.call(request("no_such_service", "add", kwargs! {"a" => 1})))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), fx.traits.unknown_service, "{error:?}");
    match &error {
        RpcError::UnknownService { service, .. } => assert_eq!(service, "no_such_service"),
        RpcError::Unavailable { target, .. } => assert_eq!(target, "no_such_service.add"),
        other => panic!("{other:?}"),
    }
}

/// A method the service does not have: `unknown_method` naming it and listing the known
/// ones; over RabbitMQ `unavailable`, as for an unknown service.
pub async fn unknown_method<T: Transport>(fx: &Fixture<T>) {
    let error = within("unknown method", fx.transport.call(request("conformance", "no_such_method", kwargs! {})))
        .await
        .unwrap_err();
    match &error {
        RpcError::UnknownMethod { service, method, known } => {
            assert_eq!((service.as_str(), method.as_str()), ("conformance", "no_such_method"));
            assert!(known.iter().any(|m| m == "add"), "{known:?}");
        }
        RpcError::Unavailable { target, .. } if fx.traits.unknown_service == "unavailable" => {
            assert!(target.ends_with(".no_such_method"), "{target}");
        }
        other => panic!("expected unknown_method, got {other:?}"),
    }
}

/// An argument that does not decode into its parameter's type: `invalid_argument` naming the
/// parameter; the handler never runs.
pub async fn bad_arguments<T: Transport>(fx: &Fixture<T>) {
    let args = kwargs! {"a" => "two", "b" => 2};
    let error = within("bad arguments", fx.transport.call(request("conformance", "add", args))).await.unwrap_err();
    match &error {
        RpcError::InvalidArgument { target, param, .. } => {
            assert_eq!(target, "conformance.add");
            assert_eq!(param, "a");
        }
        other => panic!("expected invalid_argument, got {other:?}"),
    }
}

/// A call that outlives its deadline ends with `deadline_exceeded` near the deadline, not
/// when the handler would have finished.
pub async fn deadline_exceeded<T: Transport>(fx: &Fixture<T>) {
    let client = ConformanceClient::new(&fx.transport).with_deadline(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let error = client.nap(5_000).await.unwrap_err();
    assert!(matches!(error, RpcError::DeadlineExceeded { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

/// A panicking handler gives `panic` with its message, and the server keeps serving.
pub async fn panic_keeps_the_server_serving<T: Transport>(fx: &Fixture<T>) {
    let client = ConformanceClient::new(&fx.transport);
    for _ in 0..2 {
        match client.explode().await.unwrap_err() {
            RpcError::Panic { target, message } => {
                assert_eq!(target, "conformance.explode");
                assert!(message.contains("panicked on purpose"), "{message}");
            }
            other => panic!("expected a panic error, got {other:?}"),
        }
        assert_eq!(client.add(1, 1).await.unwrap(), 2);
    }
}

/// 64 calls at once all get their own answers.
pub async fn concurrent_calls<T: Transport>(fx: &Fixture<T>) {
    let client = ConformanceClient::new(&fx.transport);
    let calls = (0..64_i64).map(|i| {
        let client = &client;
        async move { (i, client.add(i, 1000).await) }
    });
    for (i, result) in within("64 concurrent calls", join_all(calls)).await {
        assert_eq!(result.unwrap(), i + 1000);
    }
}

/// A 256 KiB result, and a 48 KiB argument (under the TCP request line's 64 KiB default).
pub async fn large_payload<T: Transport>(fx: &Fixture<T>) {
    let client = ConformanceClient::new(&fx.transport);
    let text = within("a 256 KiB result", client.text(256 * 1024)).await.unwrap();
    assert_eq!(text.len(), 256 * 1024);
    assert!(text.bytes().all(|b| b == b'x'));
    let argument = "y".repeat(48 * 1024);
    assert_eq!(within("a 48 KiB argument", client.length(argument)).await.unwrap(), 48 * 1024);
}

/// A call whose deadline passes stops its handler's work on the server, not only the caller's
/// wait: the handler counts 20 ms steps, and stops counting.
pub async fn deadline_cancels_the_handler<T: Transport>(fx: &Fixture<T>) {
    let key = rpc_testkit::unique("deadline");
    let progress = progress(&key);
    let ended = progress.ended();
    let client = ConformanceClient::new(&fx.transport).with_deadline(Duration::from_millis(400));
    let error = client.count(key, 500).await.unwrap_err();
    assert!(matches!(error, RpcError::DeadlineExceeded { .. }), "{error:?}");
    within("the handler's end", ended).await;
    let at_end = progress.steps();
    assert!(at_end < 500, "the handler ran to its end");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(progress.steps(), at_end, "the handler kept counting after its end");
}

/// A caller that drops its call ends the handler's work, where the transport can tell (a
/// closed connection, a dropped future). RabbitMQ cannot: a published request has no
/// connection to its caller, so the handler runs until its deadline (asserted instead).
pub async fn dropping_the_call_cancels_the_handler<T: Transport>(fx: &Fixture<T>) {
    let key = rpc_testkit::unique("drop");
    let progress = progress(&key);
    let ended = progress.ended();
    // Where the drop cancels, a deadline far beyond the bound below, so only the drop can
    // have ended the work; elsewhere a short one, which does.
    let deadline = if fx.traits.cancel_on_drop { Duration::from_secs(60) } else { Duration::from_millis(1500) };
    let client = ConformanceClient::new(&fx.transport).with_deadline(deadline);
    let call = client.count(key, 3000);
    tokio::select! {
        result = call => panic!("the call ended first: {result:?}"),
        () = within("two steps", progress.reached(2)) => {}
    }
    let dropped = tokio::time::Instant::now();
    within("the handler's end", ended).await;
    let at_end = progress.steps();
    assert!(at_end < 3000, "the handler ran to its end");
    if fx.traits.cancel_on_drop {
        // The TCP Consumer gives a closed connection 500 ms of grace (docs/DESIGN.md).
        assert!(dropped.elapsed() < Duration::from_secs(5), "the handler ended only after {:?}", dropped.elapsed());
    } else {
        // Ended by its deadline, which travelled with the request.
        assert!(at_end >= 5, "the handler stopped after {at_end} steps, before its deadline");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(progress.steps(), at_end, "the handler kept counting after its end");
}
