//! The reserved namespace: requests a server answers about itself.
//!
//! Every service name starting with [`RESERVED_PREFIX`] (`_rpc`) belongs to the
//! protocol. No user's service can take such a name (the registry and `#[rpc_service]` refuse
//! it), so these requests never collide with a call. What is about the server itself it
//! answers itself, without its [`rpc_core::Registry`] (a Consumer) and without forwarding (the
//! Producer).
//!
//! | request | answer |
//! |---|---|
//! | `_rpc health` | answered by the server itself: one success line, a JSON object: `{"role":"consumer","protocol":1,"services":["calculator"]}` from a Consumer, `{"role":"producer","protocol":1,"instance":"…","consumers":2,"up":2}` from a Producer |
//! | `_rpc describe` | what is served: a Consumer's registry answers it (`Registry::describe`); the Producer forwards it to a consumer, like a task |
//! | `_rpc <other>` | `ERROR unknown_method` listing the `_rpc` methods |
//! | `_rpcfoo …` (any other reserved service) | `ERROR unknown_service` |
//!
//! The Producer uses `_rpc health` to [`probe`] its consumers: a peer is relayed tasks only
//! after it answered as a Consumer of [`PROTOCOL_VERSION`]. An HTTP server, a Producer (itself
//! included) or a peer that does not answer is never given a task.

use std::net::SocketAddr;
use std::time::Duration;

pub use rpc_core::service::{DESCRIBE, RESERVED_PREFIX};
use rpc_core::RpcError;
use serde_json::{json, Map, Value};

use crate::client::exchange;
use crate::error::fmt_duration;
use crate::frame::{self, ParsedReply, RequestLine};

/// The service of the reserved namespace.
pub const SERVICE: &str = "_rpc";

/// `_rpc health`: who is answering, and in which protocol version.
pub const HEALTH: &str = "health";

/// The methods of [`SERVICE`].
pub const METHODS: &[&str] = &[DESCRIBE, HEALTH];

/// The version of this protocol, as `_rpc health` reports it.
pub const PROTOCOL_VERSION: u64 = 1;

/// The largest health answer a [`probe`] reads.
const MAX_HEALTH_REPLY: usize = 64 * 1024;

/// How much of an answer that is not this protocol a [`ProbeError`] quotes.
const QUOTE: usize = 60;

/// Whether `service` is in the reserved namespace, so the server answers it itself.
pub fn is_reserved(service: &str) -> bool {
    service.starts_with(RESERVED_PREFIX)
}

/// What kind of server answered a health probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// A Consumer: serves services itself.
    Consumer,
    /// A Producer: forwards to consumers.
    Producer,
}

impl Role {
    /// Its name on the wire: `consumer`, `producer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Consumer => "consumer",
            Role::Producer => "producer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server's answer to `_rpc health`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Health {
    /// What it is.
    pub role: Role,
    /// The protocol version it speaks (always [`PROTOCOL_VERSION`] when [`parse_health`]
    /// accepted it).
    pub protocol: u64,
    /// A Producer's instance id: a Producer that probes itself recognises its own.
    pub instance: Option<String>,
    /// The whole JSON object, other fields included (a Consumer's `services`).
    pub fields: Map<String, Value>,
}

/// Why a peer failed a health probe.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Unreachable(String),

    /// Connected, but no complete answer in time.
    #[error("no answer to the health probe within {}", fmt_duration(*.0))]
    Timeout(Duration),

    /// It answered in this protocol, with an error (`overloaded`, `unavailable` while it shuts
    /// down, or `unknown_service` from a server that has no health probe).
    #[error("answered the health probe with an error: {0}")]
    Error(RpcError),

    /// Its answer is not a health answer of this protocol (an HTTP server, say).
    #[error("does not speak this protocol: it answered the health probe with {0}")]
    NotThisProtocol(String),

    /// It speaks another version of the protocol.
    #[error("speaks protocol version {got}; this side speaks version {PROTOCOL_VERSION}")]
    Version {
        /// The version it reported.
        got: u64,
    },
}

/// The request line of a health probe: `_rpc health\n`.
pub fn health_request() -> Vec<u8> {
    format!("{SERVICE} {HEALTH}\n").into_bytes()
}

/// Reads a complete reply to `_rpc health`.
///
/// # Errors
/// [`ProbeError::Error`] for an error reply, [`ProbeError::NotThisProtocol`] for anything that
/// is not a JSON object with a known `role` and a numeric `protocol`, [`ProbeError::Version`]
/// for another protocol version.
pub fn parse_health(reply: &[u8]) -> Result<Health, ProbeError> {
    let not_this = || ProbeError::NotThisProtocol(quote(reply));
    let text = match frame::parse_reply(reply, "_rpc.health") {
        Ok(ParsedReply::Success(text)) => text,
        Ok(ParsedReply::Error(e)) => return Err(ProbeError::Error(e)),
        Err(_) => return Err(not_this()),
    };
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&text) else { return Err(not_this()) };
    let role = match fields.get("role").and_then(Value::as_str) {
        Some("consumer") => Role::Consumer,
        Some("producer") => Role::Producer,
        _ => return Err(not_this()),
    };
    let protocol = fields.get("protocol").and_then(Value::as_u64).ok_or_else(not_this)?;
    if protocol != PROTOCOL_VERSION {
        return Err(ProbeError::Version { got: protocol });
    }
    let instance = fields.get("instance").and_then(Value::as_str).map(str::to_owned);
    Ok(Health { role, protocol, instance, fields })
}

/// Sends `_rpc health` to the server at `addr` and reads its answer, all within `timeout`
/// (connecting within `connect_timeout` of it).
///
/// # Errors
/// As [`parse_health`], plus [`ProbeError::Unreachable`] and [`ProbeError::Timeout`].
pub async fn probe(addr: SocketAddr, connect_timeout: Duration, timeout: Duration) -> Result<Health, ProbeError> {
    let request = health_request();
    let exchange = exchange(addr, &request, connect_timeout.min(timeout), MAX_HEALTH_REPLY);
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(reply)) => parse_health(&reply),
        Ok(Err(crate::client::ExchangeError::TooLarge(..))) => {
            Err(ProbeError::NotThisProtocol(format!("more than {MAX_HEALTH_REPLY} bytes")))
        }
        Ok(Err(e)) => Err(ProbeError::Unreachable(e.to_string())),
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

/// Where a request in the reserved namespace goes.
#[derive(Debug)]
pub(crate) enum Route {
    /// The server answers it itself, with these reply bytes.
    Answer(Vec<u8>),
    /// It is about what is served (`_rpc describe`): the server handles it as it handles a
    /// call (a Consumer's registry answers it, the Producer forwards it).
    Serve,
}

/// How a server handles `line`, a request in the reserved namespace ([`is_reserved`]);
/// `health` is what it answers to `_rpc health`.
pub(crate) fn route(line: &RequestLine, health: impl FnOnce() -> Value) -> Route {
    if line.service != SERVICE {
        let error = RpcError::UnknownService { service: line.service.clone(), known: vec![SERVICE.to_owned()] };
        return Route::Answer(frame::encode_error(&error));
    }
    let no_arguments = |line: &RequestLine| RpcError::ArgumentCount {
        target: line.target(),
        expected: 0,
        variadic: false,
        got: line.args.len(),
        params: vec![],
    };
    match line.method.as_str() {
        HEALTH if line.args.is_empty() => Route::Answer(frame::encode_value(&health())),
        DESCRIBE if line.args.is_empty() => Route::Serve,
        HEALTH | DESCRIBE => Route::Answer(frame::encode_error(&no_arguments(line))),
        other => Route::Answer(frame::encode_error(&RpcError::UnknownMethod {
            service: SERVICE.to_owned(),
            method: other.to_owned(),
            known: METHODS.iter().map(|m| (*m).to_owned()).collect(),
        })),
    }
}

/// A Consumer's health answer.
pub(crate) fn consumer_health(services: Vec<String>) -> Value {
    json!({ "role": Role::Consumer.as_str(), "protocol": PROTOCOL_VERSION, "services": services })
}

/// A Producer's health answer.
pub(crate) fn producer_health(instance: &str, consumers: usize, up: usize) -> Value {
    json!({
        "role": Role::Producer.as_str(),
        "protocol": PROTOCOL_VERSION,
        "instance": instance,
        "consumers": consumers,
        "up": up,
    })
}

/// The first bytes of `reply`, quoted, with its length: enough to recognise it in a log line.
fn quote(reply: &[u8]) -> String {
    if reply.is_empty() {
        return "nothing (it closed the connection)".to_owned();
    }
    let shown = &reply[..reply.len().min(QUOTE)];
    let text = String::from_utf8_lossy(shown);
    if reply.len() > QUOTE {
        format!("{text:?}… ({} bytes)", reply.len())
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> RequestLine {
        RequestLine::parse(s.as_bytes()).unwrap()
    }

    fn answer(line: &RequestLine, health: impl FnOnce() -> Value) -> Vec<u8> {
        match route(line, health) {
            Route::Answer(reply) => reply,
            Route::Serve => panic!("{line:?} is not answered by the server itself"),
        }
    }

    #[test]
    fn a_consumer_health_answer_parses_as_a_consumer_of_this_protocol() {
        let reply = answer(&line("_rpc health"), || consumer_health(vec!["calculator".into()]));
        assert_eq!(reply, b"{\"role\":\"consumer\",\"protocol\":1,\"services\":[\"calculator\"]}\n");
        let health = parse_health(&reply).unwrap();
        assert_eq!((health.role, health.protocol, health.instance), (Role::Consumer, 1, None));
        assert_eq!(health.fields["services"], json!(["calculator"]));
    }

    #[test]
    fn a_producer_health_answer_carries_its_instance() {
        let reply = answer(&line("_rpc health"), || producer_health("abc", 2, 1));
        let health = parse_health(&reply).unwrap();
        assert_eq!((health.role, health.instance.as_deref()), (Role::Producer, Some("abc")));
    }

    #[test]
    fn describe_is_served_like_a_call_and_only_without_arguments() {
        assert!(matches!(route(&line("_rpc describe"), || unreachable!()), Route::Serve));
        let reply = String::from_utf8(answer(&line("_rpc describe all"), || unreachable!())).unwrap();
        assert!(reply.starts_with("ERROR argument_count: _rpc.describe: expected 0 arguments (), got 1\n"), "{reply}");
    }

    #[test]
    fn other_requests_in_the_namespace_are_answered_with_errors_listing_what_exists() {
        let reply = String::from_utf8(answer(&line("_rpc status"), || unreachable!())).unwrap();
        assert!(
            reply.starts_with("ERROR unknown_method: _rpc: unknown method 'status' (known: describe, health)\n"),
            "{reply}"
        );
        let reply = String::from_utf8(answer(&line("_rpcx health"), || unreachable!())).unwrap();
        assert!(reply.starts_with("ERROR unknown_service: unknown service '_rpcx' (known: _rpc)\n"), "{reply}");
        let reply = String::from_utf8(answer(&line("_rpc health now"), || unreachable!())).unwrap();
        assert!(reply.starts_with("ERROR argument_count: _rpc.health: expected 0 arguments (), got 1\n"), "{reply}");
    }

    #[test]
    fn answers_that_are_not_a_health_answer_of_this_protocol_are_refused_with_a_quote() {
        let html =
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html><body>Bad Request</body></html>\n";
        match parse_health(html) {
            Err(ProbeError::NotThisProtocol(quoted)) => {
                assert!(quoted.starts_with("\"HTTP/1.1 400 Bad Request\\r\\n"), "{quoted}");
                assert!(quoted.ends_with(&format!("… ({} bytes)", html.len())), "{quoted}");
            }
            other => panic!("expected NotThisProtocol, got {other:?}"),
        }
        for bad in [
            &b""[..],
            b"4\n",
            b"[1]\n",
            b"{\"role\":\"consumer\"}\n",
            b"{\"role\":\"gateway\",\"protocol\":1}\n",
            b"{\"role\":\"consumer\",\"protocol\":\"1\"}\n",
            b"{\"role\":\"consumer\",\"protocol\":1}",
        ] {
            assert!(
                matches!(parse_health(bad), Err(ProbeError::NotThisProtocol(_))),
                "{bad:?}: {:?}",
                parse_health(bad)
            );
        }
        assert!(matches!(
            parse_health(b"{\"role\":\"consumer\",\"protocol\":2}\n"),
            Err(ProbeError::Version { got: 2 })
        ));
        let overloaded = frame::encode_error(&RpcError::Overloaded { reason: "full".into() });
        assert!(matches!(parse_health(&overloaded), Err(ProbeError::Error(RpcError::Overloaded { .. }))));
    }
}
