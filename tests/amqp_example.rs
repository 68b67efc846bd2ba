//! `examples/amqp_rpc.rs` end to end against the real broker, run in process through its
//! `run` function (what `main` prints). Needs a broker: `scripts/ensure-rabbitmq.sh`.

#[path = "../examples/amqp_rpc.rs"]
#[allow(dead_code)]
mod amqp_rpc_example;

#[tokio::test]
async fn amqp_rpc_example_sleeps_times_out_and_reports_a_remote_error() {
    let url = rpc_testkit::url();
    let lines = amqp_rpc_example::run(&url, 0.1).await.expect("the example runs");
    assert_eq!(
        lines,
        [
            "sleep(t=0.1) -> 0.1",
            "timeout: sleep: deadline of 500 ms exceeded",
            "remote error: foo: [negative_t] t must not be negative, got -1",
            "foo(t=21) -> 42",
        ]
    );
}
