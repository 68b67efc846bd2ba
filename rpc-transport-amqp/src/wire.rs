//! The AMQP shape of a call: names, message properties, queue arguments. Pure, no I/O.
//!
//! Everything here is fixed by aio-pika's `patterns/rpc.py`, so the two interoperate: the
//! method queue's declare arguments, the `type` values, the `From` header, the `rpc.dlx`
//! headers exchange.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

use crate::Codec;

/// The headers exchange expired requests are dead-lettered to (aio-pika's `RPC.DLX_NAME`).
pub const DLX_EXCHANGE: &str = "rpc.dlx";
/// `type` of a request.
pub const TYPE_CALL: &str = "call";
/// `type` of a successful reply.
pub const TYPE_RESULT: &str = "result";
/// `type` of an error reply.
pub const TYPE_ERROR: &str = "error";
/// Header naming the caller's reply queue; `rpc.dlx` routes dead-lettered requests by it.
pub const HEADER_FROM: &str = "From";
/// Header carrying the caller's deadline, in milliseconds since the Unix epoch.
pub const HEADER_DEADLINE: &str = "x-deadline-ms";
/// `delivery_mode` of requests: not persistent (a request outliving a broker restart would
/// find its caller gone).
pub const TRANSIENT: u8 = 1;

/// The arguments every method queue is declared with, exactly as aio-pika declares them.
///
/// The broker refuses (`PRECONDITION_FAILED`) a second declaration with other arguments, so
/// these must not change.
pub fn method_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(DLX_EXCHANGE.into()));
    args
}

/// The binding of a reply queue to [`DLX_EXCHANGE`]: requests whose `From` header names it.
pub fn reply_binding_arguments(reply_queue: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(HEADER_FROM.into(), AMQPValue::LongString(reply_queue.into()));
    args.insert("x-match".into(), AMQPValue::LongString("any".into()));
    args
}

/// A short string (method names, queue names: at most 255 bytes).
///
/// # Errors
/// The reason, when `s` is too long.
pub fn short(s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s).map_err(|_| format!("{} bytes long, AMQP allows at most 255", s.len()))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The properties of a request.
pub fn request_properties(
    codec: Codec,
    correlation_id: &str,
    reply_to: &ShortString,
    timeout: Duration,
    deadline_ms: u64,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_FROM.into(), AMQPValue::LongString(reply_to.as_str().into()));
    headers.insert(HEADER_DEADLINE.into(), AMQPValue::LongLongInt(i64::try_from(deadline_ms).unwrap_or(i64::MAX)));
    BasicProperties::default()
        .with_content_type(codec.content_type().into())
        .with_correlation_id(correlation_id.into())
        .with_reply_to(reply_to.clone())
        .with_type(TYPE_CALL.into())
        .with_headers(headers)
        // A TTL of 0 would drop the request before any server could see it.
        // RabbitMQ takes a TTL of at most 2^32 - 1 ms; longer means "no TTL" in practice.
        .with_expiration(millis(timeout).clamp(1, u64::from(u32::MAX)).to_string().into())
        .with_delivery_mode(TRANSIENT)
        .with_timestamp(now_ms() / 1000)
}

/// The properties of a reply to a request with `correlation_id`.
pub fn reply_properties(
    codec: Codec,
    correlation_id: Option<&ShortString>,
    kind: &str,
    delivery_mode: u8,
) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type(codec.content_type().into())
        .with_type(kind.into())
        .with_delivery_mode(delivery_mode)
        .with_timestamp(now_ms() / 1000);
    match correlation_id {
        Some(id) => props.with_correlation_id(id.clone()),
        None => props,
    }
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// The caller's deadline ([`HEADER_DEADLINE`]), in milliseconds since the Unix epoch.
pub fn deadline_ms(props: &BasicProperties) -> Option<u64> {
    header(props, HEADER_DEADLINE).and_then(as_u64)
}

/// The `expiration` property (a TTL in milliseconds, as a string), when it parses.
pub fn expiration(props: &BasicProperties) -> Option<Duration> {
    props.expiration().as_ref()?.as_str().trim().parse().ok().map(Duration::from_millis)
}

/// Why the broker dead-lettered a message (`expired`, `rejected`, `maxlen`...), from the
/// first `x-death` entry.
pub fn death_reason(props: &BasicProperties) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = header(props, "x-death")? else { return None };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else { return None };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// `url` with its password replaced by `***`, for logs and errors.
///
/// `amqp://guest:guest@host/%2f` becomes `amqp://guest:***@host/%2f`; a URL without a
/// password is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The last '@' ends the user info: a password may itself contain '@' if not escaped.
    let Some(at) = authority.rfind('@') else { return url.to_owned() };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else { return url.to_owned() };
    format!("{}{}:***{}", &url[..scheme_end], &userinfo[..colon], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("amqps://u:p@ss@host"), "amqps://u:***@host");
        assert_eq!(redact_url("amqp://user@host/vh"), "amqp://user@host/vh");
        assert_eq!(redact_url("amqp://host:5672/vh?x=a:b@c"), "amqp://host:5672/vh?x=a:b@c");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn request_properties_carry_the_aio_pika_fields_and_the_deadline() {
        let reply_to: ShortString = "amq.gen-xyz".into();
        let props = request_properties(Codec::Json, "id-1", &reply_to, Duration::from_millis(1500), 42);
        assert_eq!(props.content_type().as_ref().unwrap().as_str(), "application/json");
        assert_eq!(props.kind().as_ref().unwrap().as_str(), "call");
        assert_eq!(props.correlation_id().as_ref().unwrap().as_str(), "id-1");
        assert_eq!(props.reply_to().as_ref().unwrap().as_str(), "amq.gen-xyz");
        assert_eq!(props.expiration().as_ref().unwrap().as_str(), "1500");
        assert_eq!(*props.delivery_mode(), Some(1));
        assert_eq!(deadline_ms(&props), Some(42));
        assert_eq!(expiration(&props), Some(Duration::from_millis(1500)));
        let from = props.headers().as_ref().unwrap().inner().get("From").cloned();
        assert_eq!(from, Some(AMQPValue::LongString("amq.gen-xyz".into())));
    }

    #[test]
    fn zero_timeout_still_gives_a_positive_ttl() {
        let props = request_properties(Codec::MsgPack, "id", &"q".into(), Duration::ZERO, 0);
        assert_eq!(props.expiration().as_ref().unwrap().as_str(), "1");
    }

    #[test]
    fn long_names_are_refused_not_panicked_on() {
        assert!(short(&"x".repeat(256)).is_err());
        assert!(short(&"x".repeat(255)).is_ok());
    }
}
