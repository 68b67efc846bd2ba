//! The shipped layers in memory, on the server side (`MemoryTransport::layer`) and the client
//! side (`LayeredTransport`): tracing spans with the trace id, metrics, an auth check. The TCP
//! Consumer runs the same layers in rpc-transport-tcp's tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::PrometheusBuilder;
use rpc_core::layer::auth::AuthLayer;
use rpc_core::layer::metrics::MetricsLayer;
use rpc_core::layer::trace::TraceLayer;
use rpc_core::layer::LayeredTransport;
use rpc_core::{Context, MemoryTransport, Registry, Request, RpcError, Transport};
use rpc_macros::rpc_service;

pub struct Echo;

#[rpc_service]
impl Echo {
    /// The trace id the handler sees.
    pub async fn trace(ctx: &Context) -> String {
        ctx.trace_id().unwrap_or("none").to_owned()
    }

    /// Its argument.
    pub async fn say(text: String) -> String {
        text
    }
}

fn transport() -> MemoryTransport {
    MemoryTransport::new(Registry::new().with(Echo).expect("distinct, unreserved service names"))
}

/// Everything `tracing` writes while the guard lives, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_trace_layer_gives_each_call_a_span_with_its_trace_id_which_the_handler_sees() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let plain = EchoClient::new(transport());
    assert_eq!(plain.trace().await.unwrap(), "none", "without the layer no trace id is made up");

    let traced = EchoClient::new(transport().layer(TraceLayer::new()));
    let assigned = traced.trace().await.unwrap();
    assert_eq!(assigned.len(), 32, "a new trace id is 32 hex digits, got {assigned:?}");
    let kept = traced.clone().with_context(Context::new().with_trace_id("t-42")).trace().await.unwrap();
    assert_eq!(kept, "t-42", "a caller's trace id is kept");

    let logs = captured.text();
    assert!(logs.contains(&format!("rpc{{side=\"server\" target=echo.trace trace_id=\"{assigned}\"}}")), "{logs}");
    assert!(logs.contains("trace_id=\"t-42\"") && logs.contains("call finished outcome=\"ok\""), "{logs}");
}

#[tokio::test(flavor = "current_thread")]
async fn the_metrics_layer_counts_calls_by_outcome_on_both_sides() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let server = transport().layer(MetricsLayer::new());
    let client = EchoClient::new(LayeredTransport::new(server).layer(MetricsLayer::client()));
    client.say("a".into()).await.unwrap();
    client.say("b".into()).await.unwrap();
    let unknown = Request::new("nope", "m", rpc_core::kwargs! {});
    let _ = client.transport().call(unknown).await.unwrap_err();

    let text = handle.render();
    for line in [
        r#"rpc_calls_total{side="server",target="echo.say",outcome="ok"} 2"#,
        r#"rpc_calls_total{side="client",target="echo.say",outcome="ok"} 2"#,
        r#"rpc_calls_total{side="server",target="unknown",outcome="unknown_service"} 1"#,
        r#"rpc_calls_in_flight{side="server"} 0"#,
    ] {
        assert!(text.contains(line), "expected {line:?} in:\n{text}");
    }
    assert!(text.contains("rpc_call_duration_seconds"), "{text}");
}

#[tokio::test]
async fn the_auth_layer_refuses_calls_without_an_accepted_token_before_the_handler_runs() {
    let server = transport().layer(AuthLayer::new("authorization", |token| token == "Bearer good"));
    let anonymous = EchoClient::new(server.clone());
    let err = anonymous.say("x".into()).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Unauthenticated { reason, .. } if reason.contains("no 'authorization'")),
        "expected unauthenticated, got {err:?}"
    );
    let wrong = anonymous.clone().with_metadata("authorization", "Bearer bad").unwrap();
    let err = wrong.say("x".into()).await.unwrap_err();
    assert_eq!(err.kind(), "unauthenticated", "{err:?}");
    assert!(!err.to_string().contains("Bearer bad"), "the credential is never echoed: {err}");
    let good = anonymous.with_metadata("Authorization", "Bearer good").unwrap();
    assert_eq!(good.say("x".into()).await.unwrap(), "x");
}
