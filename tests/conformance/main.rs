//! The conformance suite: the same cases (`cases.rs`) against every transport configuration
//! (`setups.rs`). A new transport gets the whole suite with one `conformance!` line below.
//!
//! Where a transport legitimately differs from the in-memory reference (the one-line TCP
//! protocol delivers results as text and carries no metadata; RabbitMQ cannot tell an unknown
//! service from an unknown method, nor see a caller go away), its
//! [`setups::Traits`] say so and the case asserts the transport's own behaviour instead.

mod cases;
mod service;
mod setups;

/// `conformance!(name, setup)`: a module `name` with one `#[tokio::test]` per case, each on a
/// fresh fixture from the async fn `setup`.
macro_rules! conformance {
    ($name:ident, $setup:path) => {
        mod $name {
            conformance!(@cases $setup;
                typed_result,
                reply_shape,
                metadata_reaches_the_handler,
                handler_error_with_code,
                serde_error_comes_back_as_its_type,
                unknown_service,
                unknown_method,
                bad_arguments,
                deadline_exceeded,
                panic_keeps_the_server_serving,
                concurrent_calls,
                large_payload,
                deadline_cancels_the_handler,
                dropping_the_call_cancels_the_handler,
            );
        }
    };
    (@cases $setup:path; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $setup().await;
                crate::cases::$case(&fixture).await;
            }
        )*
    };
}

conformance!(memory, crate::setups::memory);
conformance!(tcp_consumer, crate::setups::tcp_consumer);
conformance!(tcp_producer, crate::setups::tcp_producer);
conformance!(amqp_msgpack, crate::setups::amqp_msgpack);
conformance!(amqp_json, crate::setups::amqp_json);
conformance!(http, crate::setups::http);
