//! The test broker: where it is, and names no other test uses.

/// The broker the examples, tests and benchmark use when `$RABBITMQ_URL` is unset: a local
/// RabbitMQ with its default user, on the default vhost (`/`, written `%2f`).
pub const DEFAULT_RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `$RABBITMQ_URL`, or [`DEFAULT_RABBITMQ_URL`].
pub fn configured_url() -> String {
    std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.into())
}

/// The broker URL every broker test uses.
pub fn url() -> String {
    configured_url()
}

/// `prefix-<uuid>`: a queue or method name no other test, process or run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
