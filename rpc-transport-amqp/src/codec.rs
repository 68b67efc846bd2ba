//! Message bodies: [`Codec`] (MessagePack or JSON) and the error envelope. Pure, no I/O.
//!
//! A request body is the map of named arguments, a `result` body the bare value, an `error`
//! body `{"error": {...}}` (see [`error_body`]).

use rpc_core::RpcError;
use serde_json::{Map, Value};

/// `content_type` of MessagePack bodies.
pub const MSGPACK: &str = "application/msgpack";
/// `content_type` of JSON bodies (what aio-pika's `JsonRPC` sends).
pub const JSON: &str = "application/json";

/// Deepest nesting of arrays and maps a body may have (as serde_json's limit).
pub const MAX_DEPTH: usize = 128;

/// How a message body is encoded; named by the message's `content_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack (`application/msgpack`), maps with string keys: the default.
    #[default]
    MsgPack,
    /// JSON (`application/json`), for aio-pika's `JsonRPC` and other languages.
    Json,
}

/// A body that does not encode or decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec} body: {reason}")]
pub struct CodecError {
    codec: &'static str,
    reason: String,
}

impl Codec {
    /// The `content_type` this codec writes.
    pub const fn content_type(self) -> &'static str {
        match self {
            Codec::MsgPack => MSGPACK,
            Codec::Json => JSON,
        }
    }

    /// The codec for a `content_type`, ignoring parameters (`; charset=utf-8`) and case.
    ///
    /// `application/msgpack`, `application/x-msgpack` and `application/vnd.msgpack` are
    /// MessagePack; `application/json` and `text/json` are JSON; anything else is `None`.
    #[doc(hidden)]
    pub fn from_content_type(content_type: &str) -> Option<Codec> {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => Some(Codec::MsgPack),
            "application/json" | "text/json" => Some(Codec::Json),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::MsgPack => "msgpack",
            Codec::Json => "json",
        }
    }

    /// Encodes a value.
    ///
    /// # Errors
    /// Never for values built from JSON; kept for codecs that can refuse a value.
    #[doc(hidden)]
    pub fn encode(self, value: &Value) -> Result<Vec<u8>, CodecError> {
        let encoded = match self {
            Codec::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        };
        encoded.map_err(|reason| CodecError { codec: self.name(), reason })
    }

    /// Decodes a body into a value.
    ///
    /// # Errors
    /// When the bytes are not exactly one valid value of this codec (trailing bytes are
    /// refused; so are MessagePack maps with non-string keys and binary blobs, which have no
    /// JSON form), or nest deeper than [`MAX_DEPTH`].
    #[doc(hidden)]
    pub fn decode(self, bytes: &[u8]) -> Result<Value, CodecError> {
        let decoded = match self {
            Codec::MsgPack => {
                let mut rest = bytes;
                let mut de = rmp_serde::Deserializer::new(&mut rest);
                // rmp-serde's default (1024) overflows a 2 MiB stack in debug builds: a hostile
                // body must not abort the process. serde_json stops at 128 too.
                de.set_max_depth(MAX_DEPTH);
                let value: Result<Value, String> =
                    serde::Deserialize::deserialize(&mut de).map_err(|e: rmp_serde::decode::Error| e.to_string());
                drop(de);
                // One value and nothing after it, as serde_json demands: otherwise any body
                // whose first byte happens to be a valid value (JSON's `{` is the integer 123)
                // would pass for MessagePack.
                match value {
                    Ok(_) if !rest.is_empty() => Err(format!("{} bytes after the value", rest.len())),
                    other => other,
                }
            }
            Codec::Json => serde_json::from_slice::<Value>(bytes).map_err(|e| e.to_string()),
        };
        decoded.map_err(|reason| CodecError { codec: self.name(), reason })
    }
}

/// The body of an `error` reply.
///
/// ```json
/// {"error": {"type": "division_by_zero", "message": "calculator.calculate: [division_by_zero] division by zero",
///            "args": ["calculator.calculate: [division_by_zero] division by zero"],
///            "kind": "handler", "target": "calculator.calculate", "code": "division_by_zero", "detail": "division by zero"}}
/// ```
/// `type`, `message` and `args` are aio-pika `JsonRPC`'s fields (`type` is the error's code, or
/// its kind when it has none; `message` and `args[0]` the full display text). The other fields
/// are [`RpcError::to_wire`]'s, so a Rust client rebuilds the very same [`RpcError`].
pub fn error_body(error: &RpcError) -> Value {
    let mut fields = match error.to_wire() {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let display = error.to_string();
    fields.entry("kind").or_insert_with(|| Value::from(error.kind()));
    fields.entry("message").or_insert_with(|| Value::from(display.clone()));
    let code = match error {
        RpcError::Handler { code: Some(code), .. } => code.clone(),
        other => other.kind().to_owned(),
    };
    fields.insert("type".into(), Value::from(code));
    fields.insert("args".into(), Value::Array(vec![Value::from(display)]));
    let mut body = Map::new();
    body.insert("error".into(), Value::Object(fields));
    Value::Object(body)
}

/// Rebuilds the error carried by an `error` reply's body.
///
/// Our own envelope (it has `kind`) gives back the same variant. A foreign one (aio-pika:
/// `{"type": "ValueError", "message": "ValueError('boom')", "args": ["boom"]}`) becomes
/// [`RpcError::Handler`] with `code` = `type` and `message` = the `args` joined by `, ` (the
/// exception's own text), or `message` when there are no args. Anything else is kept as text.
pub fn parse_error_body(body: Value, target: &str) -> RpcError {
    let inner = match body {
        Value::Object(mut map) => match map.remove("error") {
            Some(inner) => inner,
            None => Value::Object(map),
        },
        other => other,
    };
    let Value::Object(fields) = &inner else {
        let message = match inner {
            Value::String(s) => s,
            other => other.to_string(),
        };
        return RpcError::Handler { target: target.to_owned(), code: None, message, data: None };
    };
    if fields.contains_key("kind") {
        return RpcError::from_wire(&inner, target);
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let code = fields.get("type").or_else(|| fields.get("code")).map(text);
    let args = match fields.get("args") {
        Some(Value::Array(items)) if !items.is_empty() => Some(items.iter().map(text).collect::<Vec<_>>().join(", ")),
        _ => None,
    };
    let message = args.or_else(|| fields.get("message").map(text)).unwrap_or_else(|| inner.to_string());
    RpcError::Handler { target: target.to_owned(), code, message, data: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types_are_recognised_with_parameters_and_case() {
        assert_eq!(Codec::from_content_type("application/msgpack"), Some(Codec::MsgPack));
        assert_eq!(Codec::from_content_type("Application/JSON; charset=utf-8"), Some(Codec::Json));
        assert_eq!(Codec::from_content_type("application/python-pickle"), None);
        assert_eq!(Codec::from_content_type(""), None);
    }

    #[test]
    fn both_codecs_round_trip_a_named_map() {
        let value = json!({"a": 2.5, "op": "+", "b": -3, "list": [1, "x", null], "nested": {"t": true}});
        for codec in [Codec::MsgPack, Codec::Json] {
            let bytes = codec.encode(&value).unwrap();
            assert_eq!(codec.decode(&bytes).unwrap(), value, "{codec:?}");
        }
    }

    #[test]
    fn garbage_does_not_decode_in_either_codec() {
        for codec in [Codec::MsgPack, Codec::Json] {
            assert!(codec.decode(b"\xc1\xff not a body").is_err(), "{codec:?}");
            assert!(codec.decode(b"").is_err(), "{codec:?}");
        }
    }

    #[test]
    fn trailing_bytes_after_the_value_are_refused_in_both_codecs() {
        // JSON text read as MessagePack: `"` is the integer 34, and the rest must not be ignored.
        assert!(Codec::MsgPack.decode(br#""a string""#).is_err());
        assert!(Codec::MsgPack.decode(&[0x01, 0x02]).is_err());
        assert!(Codec::Json.decode(b"1 2").is_err());
        assert_eq!(Codec::MsgPack.decode(&[0x01]).unwrap(), serde_json::json!(1));
    }

    #[test]
    fn msgpack_map_with_integer_keys_is_a_decode_error_not_a_panic() {
        let bytes = rmp_serde::to_vec(&std::collections::BTreeMap::from([(1u8, 2u8)])).unwrap();
        assert!(Codec::MsgPack.decode(&bytes).is_err());
    }

    #[test]
    fn deeply_nested_bodies_are_refused_or_decoded_without_overflowing_the_stack() {
        for depth in [1_000, 100_000] {
            let mut msgpack = vec![0x91u8; depth];
            msgpack.push(0xc0);
            let _ = Codec::MsgPack.decode(&msgpack);
            let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let _ = Codec::Json.decode(json.as_bytes());
        }
        assert!(Codec::MsgPack.decode(&[vec![0x91u8; 100_000], vec![0xc0]].concat()).is_err());
        assert!(Codec::Json.decode(format!("{}{}", "[".repeat(1000), "]".repeat(1000)).as_bytes()).is_err());
    }

    #[test]
    fn every_error_variant_round_trips_through_the_envelope() {
        let errors = [
            RpcError::Handler {
                target: "calc.div".into(),
                code: Some("division_by_zero".into()),
                message: "division by zero".into(),
                data: None,
            },
            RpcError::Handler { target: "foo".into(), code: None, message: "plain".into(), data: None },
            RpcError::Panic { target: "foo".into(), message: "boom".into() },
            RpcError::MissingArgument { target: "calc.add".into(), param: "b".into(), ty: "f64".into() },
            RpcError::bad_request("body too large"),
            RpcError::protocol("odd"),
            RpcError::Internal { message: "oops".into() },
            RpcError::deadline("foo", std::time::Duration::from_millis(1500)),
        ];
        for error in errors {
            for codec in [Codec::MsgPack, Codec::Json] {
                let bytes = codec.encode(&error_body(&error)).unwrap();
                let back = parse_error_body(codec.decode(&bytes).unwrap(), "ignored");
                assert_eq!(back.to_string(), error.to_string(), "{codec:?}");
                assert_eq!(back.kind(), error.kind());
            }
        }
    }

    #[test]
    fn envelope_has_aio_pika_fields() {
        let error = RpcError::Handler {
            target: "div".into(),
            code: Some("ZeroDivisionError".into()),
            message: "division by zero".into(),
            data: None,
        };
        let body = error_body(&error);
        assert_eq!(body["error"]["type"], "ZeroDivisionError");
        assert_eq!(body["error"]["message"], "div: [ZeroDivisionError] division by zero");
        assert_eq!(body["error"]["args"], json!(["div: [ZeroDivisionError] division by zero"]));
        let panic = error_body(&RpcError::Panic { target: "foo".into(), message: "boom".into() });
        assert_eq!(panic["error"]["type"], "panic");
        assert_eq!(panic["error"]["message"], "foo: handler panicked: boom");
        assert_eq!(panic["error"]["args"], json!(["foo: handler panicked: boom"]));
        let unavailable = error_body(&RpcError::Closed);
        assert_eq!(unavailable["error"]["message"], "client closed");
    }

    #[test]
    fn aio_pika_error_becomes_handler_error_with_the_exception_type() {
        let body = json!({"error": {"type": "ValueError", "message": "ValueError('boom')", "args": ["boom"]}});
        match parse_error_body(body, "py_method") {
            RpcError::Handler { target, code, message, .. } => {
                assert_eq!(target, "py_method");
                assert_eq!(code.as_deref(), Some("ValueError"));
                assert_eq!(message, "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn odd_error_bodies_are_kept_as_text() {
        let e = parse_error_body(json!("just text"), "m");
        assert!(matches!(e, RpcError::Handler { ref message, .. } if message == "just text"));
        let e = parse_error_body(json!({"error": {"type": "KeyError", "args": []}}), "m");
        assert!(matches!(e, RpcError::Handler { ref code, .. } if code.as_deref() == Some("KeyError")));
        let e = parse_error_body(json!(42), "m");
        assert!(matches!(e, RpcError::Handler { ref message, .. } if message == "42"));
    }
}
