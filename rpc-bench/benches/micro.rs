//! Micro-benchmarks of the hot path's pieces: parsing a text request, decoding arguments,
//! dispatching through a macro-generated handler, and the MessagePack body.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use rpc_core::{kwargs, text, Args, Registry, Request};
use rpc_macros::rpc_service;
use rpc_transport_tcp::frame::RequestLine;
use serde_json::Value;

pub struct Bench;

#[rpc_service]
impl Bench {
    /// Async: dispatch cost without the blocking pool.
    pub async fn add(a: f64, op: String, b: f64) -> f64 {
        black_box(&op);
        a + b
    }

    /// Sync: goes through the blocking pool, as the design document's heavy handlers do.
    pub fn add_sync(a: f64, op: String, b: f64) -> f64 {
        black_box(&op);
        a + b
    }
}

fn parsing(c: &mut Criterion) {
    c.bench_function("tcp: parse request line", |b| {
        b.iter(|| RequestLine::parse(black_box(b"calculator calculate 2 + 2")).unwrap())
    });
    c.bench_function("text: decode f64 token", |b| b.iter(|| text::from_token::<f64>(black_box("2.5")).unwrap()));
    c.bench_function("text: decode Vec<f32> token run", |b| {
        let tokens = ["0.5", "1", "0.25", "0.75"];
        b.iter(|| text::from_tokens::<Vec<f32>, _>(black_box(&tokens)).unwrap())
    });
    c.bench_function("text: render f64 result", |b| {
        let v = Value::from(4.0);
        b.iter(|| text::render(black_box(&v)))
    });
}

fn dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let registry = Arc::new(Registry::new().with(Bench).unwrap());
    let text_args = || Args::Text(vec!["2".into(), "+".into(), "2".into()]);
    c.bench_function("dispatch: async handler, text args", |b| {
        b.iter(|| rt.block_on(registry.dispatch(Request::new("bench", "add", text_args()))).unwrap())
    });
    c.bench_function("dispatch: async handler, named args", |b| {
        b.iter(|| {
            rt.block_on(registry.dispatch(Request::new("bench", "add", kwargs! {"a" => 2.0, "op" => "+", "b" => 2.0})))
                .unwrap()
        })
    });
    c.bench_function("dispatch: sync handler on the blocking pool", |b| {
        b.iter(|| rt.block_on(registry.dispatch(Request::new("bench", "add_sync", text_args()))).unwrap())
    });
}

fn msgpack(c: &mut Criterion) {
    let args = kwargs! {"a" => 2.0, "op" => "+", "b" => 2.0};
    let Args::Named(map) = args else { unreachable!() };
    let body = rmp_serde::to_vec_named(&map).unwrap();
    c.bench_function("msgpack: encode kwargs", |b| b.iter(|| rmp_serde::to_vec_named(black_box(&map)).unwrap()));
    c.bench_function("msgpack: decode kwargs", |b| {
        b.iter(|| rmp_serde::from_slice::<serde_json::Map<String, Value>>(black_box(&body)).unwrap())
    });
}

criterion_group!(benches, parsing, dispatch, msgpack);
criterion_main!(benches);
