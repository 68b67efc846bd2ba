//! Interoperability with real aio-pika `JsonRPC` (from PyPI), both directions. The Python
//! side lives in `tests/interop/` at the workspace root; the interpreter is `$RPC_TEST_PYTHON`
//! or the venv `scripts/python-env.sh` makes.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{rpc, unique};
use rpc_core::{kwargs, HandlerError, RpcError};
use rpc_testkit::{python, workspace_root as root};
use rpc_transport_amqp::{CallOptions, Codec};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

async fn python_call(method: &str, kwargs: Value) -> Value {
    let out = Command::new(python())
        .arg(root().join("tests/interop/aio_pika_client.py"))
        .args([common::url(), method.to_owned(), kwargs.to_string(), "10".into()])
        .output()
        .await
        .expect("starting python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[derive(Deserialize)]
struct Add {
    x: f64,
    y: f64,
}

#[tokio::test]
async fn aio_pika_jsonrpc_client_calls_a_rust_handler_and_gets_its_result_or_its_error() {
    let (_conn, rpc) = rpc().await;
    let add = unique("rust.add");
    let fail = unique("rust.fail");
    rpc.register_async(&add, |a: Add| async move { Ok::<_, HandlerError>(a.x + a.y) }).await.unwrap();
    rpc.register_blocking(&fail, |a: Add| -> Result<f64, HandlerError> {
        Err(HandlerError::new("division_by_zero", format!("cannot divide {} by zero", a.x)))
    })
    .await
    .unwrap();

    let (ok, err) =
        tokio::join!(python_call(&add, json!({"x": 2, "y": 3.5})), python_call(&fail, json!({"x": 1, "y": 0})));
    assert_eq!(ok, json!({"result": 5.5}));

    // aio-pika raises JsonRPCError("RPC exception", <body>): our envelope, its fields included.
    assert_eq!(err["error"]["class"], "JsonRPCError", "{err}");
    let body = &err["error"]["args"][1]["error"];
    assert_eq!(body["type"], "division_by_zero", "{err}");
    assert_eq!(body["kind"], "handler");
    assert_eq!(body["message"], format!("{fail}: [division_by_zero] cannot divide 1 by zero"));
    assert_eq!(body["args"], json!([format!("{fail}: [division_by_zero] cannot divide 1 by zero")]));

    // Missing arguments come back the same way.
    let missing = python_call(&add, json!({"x": 2})).await;
    assert_eq!(missing["error"]["args"][1]["error"]["kind"], "invalid_argument", "{missing}");
}

#[tokio::test]
async fn rust_json_call_reaches_an_aio_pika_jsonrpc_handler_and_gets_its_result_or_its_exception() {
    let prefix = unique("py");
    let mut server = Command::new(python())
        .arg(root().join("tests/interop/aio_pika_server.py"))
        .args([common::url(), prefix.clone()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting python");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let ready =
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("python server ready in time");
    assert_eq!(ready.unwrap().as_deref(), Some("ready"));

    let (_conn, rpc) = rpc().await;
    let json = CallOptions::new().with_codec(Codec::Json);
    let sum: f64 = rpc.call_with(&format!("{prefix}.add"), kwargs! { "x" => 2, "y" => 3.5 }, json).await.unwrap();
    assert_eq!(sum, 5.5);
    let joined: String =
        rpc.call_with(&format!("{prefix}.add"), kwargs! { "x" => "ab", "y" => "cd" }, json).await.unwrap();
    assert_eq!(joined, "abcd");

    let err = rpc.call_with::<f64>(&format!("{prefix}.fail"), kwargs! {}, json).await.unwrap_err();
    match &err {
        RpcError::Handler { target, code, message, .. } => {
            assert_eq!(target, &format!("{prefix}.fail"));
            assert_eq!(code.as_deref(), Some("ValueError"));
            assert_eq!(message, "boom");
        }
        other => panic!("{other:?}"),
    }
    // A Python TypeError (wrong kwargs) is an error too, with its type.
    let err = rpc.call_with::<f64>(&format!("{prefix}.add"), kwargs! { "x" => 1 }, json).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Handler { code: Some(code), .. } if code == "TypeError"),
        "expected RpcError::Handler {{ code: Some(code), .. }} if code == \"TypeError\", got {err:?}"
    );

    // Our declaration of a method queue aio-pika declared is accepted (identical arguments:
    // a mismatch would be PRECONDITION_FAILED), so Rust and Python servers can compete.
    rpc.register_async(&format!("{prefix}.add"), |a: Add| async move { Ok::<_, HandlerError>(a.x + a.y) })
        .await
        .unwrap();

    drop(server.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
}
