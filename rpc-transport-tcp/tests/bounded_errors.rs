//! Error replies quote what the client sent by a prefix and its length: a large argument never
//! comes back whole.

mod common;

use rpc_transport_tcp::ConsumerConfig;

#[tokio::test]
async fn a_64_kib_argument_gets_a_small_error_reply() {
    let (registry, _started) = common::registry();
    let server = common::consumer(registry, ConsumerConfig::default()).await;
    let quotes = "\"".repeat(60 * 1024);
    for line in [
        format!("calculator calculate {quotes} + 2\n"),
        format!("lab add {quotes} 2\n"),
        format!("{quotes} method\n"),
        format!("calculator {quotes}\n"),
    ] {
        let reply = common::within(10, common::raw(server.addr, line.as_bytes())).await;
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("ERROR "), "expected an error reply, got {:?}", &text[..text.len().min(200)]);
        assert!(
            reply.len() < 4096,
            "a {}-byte request got a {}-byte error reply: {:?}",
            line.len(),
            reply.len(),
            &text[..300]
        );
    }
    server.stop().await;
}
