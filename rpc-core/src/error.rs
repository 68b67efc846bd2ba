//! [`RpcError`]: everything that can go wrong with a call, on either side of the wire.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why a call failed.
///
/// Every variant but [`RpcError::Transport`]'s source survives a trip over the wire:
/// [`RpcError::to_wire`] turns it into a JSON object `{"kind": …, "message": …, …fields}` and
/// [`RpcError::from_wire`] rebuilds the same variant on the other side. A `kind` this version
/// does not know (another language's exception type, a newer peer) becomes
/// [`RpcError::Handler`] with that kind, so nothing is lost.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RpcError {
    /// No service of that name is registered at the endpoint.
    #[error("unknown service '{service}' (known: {})", list(known))]
    UnknownService {
        /// The requested service name.
        service: String,
        /// Names of the services the endpoint does serve.
        known: Vec<String>,
    },

    /// The service exists but has no method of that name.
    #[error("{service}: unknown method '{method}' (known: {})", list(known))]
    UnknownMethod {
        /// The service that was asked.
        service: String,
        /// The requested method name.
        method: String,
        /// Names of the methods the service does have.
        known: Vec<String>,
    },

    /// Positional arguments did not match the method's parameter list.
    #[error("{target}: expected {} argument{} ({}), got {got}",
        if *variadic { format!("at least {expected}") } else { expected.to_string() },
        if *expected == 1 && !*variadic { "" } else { "s" },
        params.join(", "))]
    ArgumentCount {
        /// `service.method`.
        target: String,
        /// How many arguments the method takes (the minimum when `variadic`).
        expected: usize,
        /// Whether the last parameter collects all remaining tokens.
        variadic: bool,
        /// How many arguments the request carried.
        got: usize,
        /// The method's parameters, as `name: Type`.
        params: Vec<String>,
    },

    /// A named-argument call lacked a required argument.
    #[error("{target}: missing argument '{param}' ({ty})")]
    MissingArgument {
        /// `service.method`.
        target: String,
        /// The parameter's name.
        param: String,
        /// The parameter's Rust type, as written in the source.
        ty: String,
    },

    /// A named-argument call carried an argument the method does not take.
    #[error("{target}: unexpected argument '{name}' (parameters: {})", params.join(", "))]
    UnexpectedArgument {
        /// `service.method`.
        target: String,
        /// The name the caller sent.
        name: String,
        /// The method's parameters, as `name: Type`.
        params: Vec<String>,
    },

    /// An argument was present but did not decode into the parameter's type.
    #[error("{target}: argument '{param}' ({ty}): {reason}")]
    InvalidArgument {
        /// `service.method`.
        target: String,
        /// The parameter's name.
        param: String,
        /// The parameter's Rust type, as written in the source.
        ty: String,
        /// What the caller sent (a text token, or the value as JSON).
        value: String,
        /// Why it did not decode, including the offending value.
        reason: String,
    },

    /// The handler ran and returned an error of its own.
    #[error("{target}: {}{message}", code.as_deref().map(|k| format!("[{k}] ")).unwrap_or_default())]
    Handler {
        /// `service.method` (or the method name for plain registered functions).
        target: String,
        /// A short machine-readable name for the error (`division_by_zero`, `ValueError`),
        /// when the handler gives one.
        code: Option<String>,
        /// The error's message, as its `Display` printed it.
        #[serde(rename = "detail")]
        message: String,
        /// The handler's own error value, serialized, when its type implements
        /// `serde::Serialize` (at most [`MAX_MESSAGE`] bytes of JSON): read it back as that
        /// type with [`RpcError::downcast`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Box<Value>>,
    },

    /// The handler panicked. The server caught it and keeps serving.
    #[error("{target}: handler panicked: {message}")]
    Panic {
        /// `service.method`.
        target: String,
        /// The panic payload, when it was a string.
        #[serde(rename = "detail")]
        message: String,
    },

    /// The call lacks an accepted credential in its metadata (see
    /// [`AuthLayer`](crate::layer::auth::AuthLayer)); it never reached the handler.
    #[error("{target}: unauthenticated: {reason}")]
    Unauthenticated {
        /// `service.method`.
        target: String,
        /// What was missing or refused (never the credential itself).
        reason: String,
    },

    /// The call was cancelled before it finished: its caller went away (closed the
    /// connection, dropped the call) or the server is shutting down.
    #[error("{target}: cancelled")]
    Cancelled {
        /// `service.method`.
        target: String,
    },

    /// A result (or an argument) held a non-finite number (NaN or an infinity), which no wire
    /// format here can carry faithfully: JSON would turn it into `null`, a wrong answer.
    #[error("{target}: {path} is not a finite number ({value})")]
    NonFinite {
        /// `service.method`.
        target: String,
        /// Where in the value: `result`, `result.probability`, `argument 'x'[2]`.
        path: String,
        /// `NaN`, `inf` or `-inf`.
        value: String,
    },

    /// The call did not finish within its deadline.
    #[error("{target}: deadline of {} exceeded", fmt_ms(*timeout_ms))]
    DeadlineExceeded {
        /// `service.method`.
        target: String,
        /// The deadline that ran out, in milliseconds.
        timeout_ms: u64,
    },

    /// Nobody serves the target: no queue is bound to the method's routing key, or every
    /// backend is down.
    #[error("no server is serving '{target}'{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Unavailable {
        /// `service.method`, or the method name.
        target: String,
        /// What was tried, when there is more to say.
        reason: String,
    },

    /// The request could not be read: too long, not UTF-8, empty, too large, badly encoded.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What was wrong with it.
        reason: String,
    },

    /// The server refused the call because a configured limit was reached.
    #[error("server overloaded: {reason}")]
    Overloaded {
        /// Which limit.
        reason: String,
    },

    /// The caller could not decode the reply into the type it expected.
    #[error("{target}: cannot decode the result as {ty}: {reason}")]
    Decode {
        /// `service.method`.
        target: String,
        /// The expected Rust type.
        ty: String,
        /// Why decoding failed.
        reason: String,
    },

    /// The peer sent something that breaks the protocol (a malformed reply).
    #[error("protocol error: {message}")]
    Protocol {
        /// What was malformed.
        #[serde(rename = "detail")]
        message: String,
    },

    /// The server failed in a way that is not the handler's fault (a result that does not
    /// serialize, an internal task that died).
    #[error("internal server error: {message}")]
    Internal {
        /// What happened.
        #[serde(rename = "detail")]
        message: String,
    },

    /// The connection to the peer or broker failed or was lost.
    #[error("transport error: {message}")]
    Transport {
        /// What failed, without credentials.
        #[serde(rename = "detail")]
        message: String,
        /// The underlying error, on the side where it happened (not sent over the wire).
        #[serde(skip)]
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },

    /// The client was closed while the call was pending, or after.
    #[error("client closed")]
    Closed,
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn fmt_ms(ms: u64) -> String {
    if ms >= 1000 && ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

impl RpcError {
    /// The variant's stable wire name, e.g. `unknown_method`, `handler`.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcError::UnknownService { .. } => "unknown_service",
            RpcError::UnknownMethod { .. } => "unknown_method",
            RpcError::ArgumentCount { .. } => "argument_count",
            RpcError::MissingArgument { .. } => "missing_argument",
            RpcError::UnexpectedArgument { .. } => "unexpected_argument",
            RpcError::InvalidArgument { .. } => "invalid_argument",
            RpcError::Handler { .. } => "handler",
            RpcError::Panic { .. } => "panic",
            RpcError::Cancelled { .. } => "cancelled",
            RpcError::Unauthenticated { .. } => "unauthenticated",
            RpcError::NonFinite { .. } => "non_finite",
            RpcError::DeadlineExceeded { .. } => "deadline_exceeded",
            RpcError::Unavailable { .. } => "unavailable",
            RpcError::BadRequest { .. } => "bad_request",
            RpcError::Overloaded { .. } => "overloaded",
            RpcError::Decode { .. } => "decode",
            RpcError::Protocol { .. } => "protocol",
            RpcError::Internal { .. } => "internal",
            RpcError::Transport { .. } => "transport",
            RpcError::Closed => "closed",
        }
    }

    /// A transport failure with its underlying error kept as the source.
    #[doc(hidden)]
    pub fn transport<E>(message: impl Into<String>, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        RpcError::Transport { message: message.into(), source: Some(Arc::new(source)) }
    }

    /// A deadline error for `target` after `timeout`.
    ///
    /// The deadline is reported in whole milliseconds, rounded up: a 200 ms deadline measured
    /// a few microseconds after it was set still reads 200 ms.
    #[doc(hidden)]
    pub fn deadline(target: impl Into<String>, timeout: Duration) -> Self {
        RpcError::DeadlineExceeded {
            target: target.into(),
            timeout_ms: u64::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
        }
    }

    /// A bad-request error.
    #[doc(hidden)]
    pub fn bad_request(reason: impl Into<String>) -> Self {
        RpcError::BadRequest { reason: reason.into() }
    }

    /// A protocol error.
    #[doc(hidden)]
    pub fn protocol(message: impl Into<String>) -> Self {
        RpcError::Protocol { message: message.into() }
    }

    /// The error as a JSON object: `{"kind": "...", "message": "<Display>", ...fields}`.
    ///
    /// Variant fields named `message` travel as `detail`, so `message` is always the whole
    /// human-readable text.
    ///
    /// This is the one wire form of an error, whatever the transport.
    #[doc(hidden)]
    pub fn to_wire(&self) -> Value {
        let mut object = match serde_json::to_value(self.clone().bounded()) {
            Ok(Value::Object(map)) => map,
            // Unit variants serialize as {"kind": ...} too; anything else cannot happen, but
            // the message alone is still a faithful error.
            _ => {
                let mut m = Map::new();
                m.insert("kind".into(), Value::from(self.kind()));
                m
            }
        };
        object.insert("message".into(), Value::from(bound_message(self.to_string())));
        Value::Object(object)
    }

    /// The same error with every text field cut to [`MAX_MESSAGE`] bytes, so an error never
    /// carries unbounded text whatever built it (a handler echoing its input, a peer's reply).
    #[must_use]
    #[doc(hidden)]
    pub fn bounded(mut self) -> Self {
        let mut cut = |s: &mut String| {
            if s.len() > MAX_MESSAGE {
                *s = bound_message(std::mem::take(s));
            }
        };
        match &mut self {
            RpcError::UnknownService { service, known } => {
                cut(service);
                known.iter_mut().for_each(cut);
            }
            RpcError::UnknownMethod { service, method, known } => {
                cut(service);
                cut(method);
                known.iter_mut().for_each(cut);
            }
            RpcError::ArgumentCount { target, params, .. } | RpcError::UnexpectedArgument { target, params, .. } => {
                cut(target);
                params.iter_mut().for_each(cut);
            }
            RpcError::MissingArgument { target, param, ty } => {
                cut(target);
                cut(param);
                cut(ty);
            }
            RpcError::InvalidArgument { target, param, ty, value, reason } => {
                for s in [target, param, ty, value, reason] {
                    cut(s);
                }
            }
            RpcError::Handler { target, code, message, data } => {
                cut(target);
                code.iter_mut().for_each(&mut cut);
                cut(message);
                if data.as_ref().is_some_and(|d| d.to_string().len() > MAX_MESSAGE) {
                    *data = None;
                }
            }
            RpcError::Decode { target, ty, reason } => {
                cut(target);
                cut(ty);
                cut(reason);
            }
            RpcError::NonFinite { target, path, value } => {
                cut(target);
                cut(path);
                cut(value);
            }
            RpcError::Unavailable { target, reason } | RpcError::Unauthenticated { target, reason } => {
                cut(target);
                cut(reason);
            }
            RpcError::Panic { target, message } => {
                cut(target);
                cut(message);
            }
            RpcError::Cancelled { target } | RpcError::DeadlineExceeded { target, .. } => cut(target),
            RpcError::BadRequest { reason } | RpcError::Overloaded { reason } => cut(reason),
            RpcError::Protocol { message } | RpcError::Internal { message } | RpcError::Transport { message, .. } => {
                cut(message)
            }
            RpcError::Closed => {}
        }
        self
    }

    /// Rebuilds an error from its wire form.
    ///
    /// A known `kind` with its fields gives back the same variant. Anything else (an unknown
    /// kind, missing fields) becomes [`RpcError::Handler`] carrying the kind and message, so a
    /// peer's error is never swallowed.
    #[doc(hidden)]
    pub fn from_wire(value: &Value, target: &str) -> Self {
        if let Ok(error) = RpcError::deserialize(value) {
            return error.bounded();
        }
        let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        let code = field("code").or_else(|| field("kind")).or_else(|| field("type"));
        let message = field("message").unwrap_or_else(|| value.to_string());
        RpcError::Handler { target: target.to_owned(), code, message, data: None }.bounded()
    }

    /// The handler's own error, rebuilt as `E`, when this is a [`RpcError::Handler`] whose
    /// handler returned an error type implementing `serde::Serialize` and it decodes as `E`.
    ///
    /// ```
    /// # use rpc_core::RpcError;
    /// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// enum CalcError { DivisionByZero, UnknownOperator(String) }
    ///
    /// let error = RpcError::Handler {
    ///     target: "calculator.calculate".into(),
    ///     code: Some("CalcError".into()),
    ///     message: "division by zero".into(),
    ///     data: Some(Box::new(serde_json::json!("DivisionByZero"))),
    /// };
    /// assert_eq!(error.downcast::<CalcError>(), Some(CalcError::DivisionByZero));
    /// ```
    pub fn downcast<E: serde::de::DeserializeOwned>(&self) -> Option<E> {
        match self {
            RpcError::Handler { data: Some(data), .. } => E::deserialize(&**data).ok(),
            _ => None,
        }
    }
}

/// Longest text an error field carries, in bytes; longer text is cut by [`bound_message`].
pub const MAX_MESSAGE: usize = 4096;

/// Longest user-supplied text an error message quotes whole, in characters; longer text is
/// quoted as a prefix plus its length ([`quote`]).
pub const QUOTE_LIMIT: usize = 64;

/// `text` quoted for an error message: escaped like `{:?}`, and when it is longer than
/// [`QUOTE_LIMIT`] characters, only its start followed by its length, so an error never
/// echoes a large input back: `"\"\"\"\"…" (65536 bytes)`.
pub fn quote(text: &str) -> String {
    if text.chars().nth(QUOTE_LIMIT).is_none() {
        return format!("{text:?}");
    }
    let prefix: String = text.chars().take(QUOTE_LIMIT / 2).collect();
    format!("{prefix:?}… ({} bytes)", text.len())
}

/// `message` cut to at most [`MAX_MESSAGE`] bytes (at a character boundary), ending with how
/// long it was when it had to be cut.
pub fn bound_message(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE - 48;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut; {} bytes in all)", &message[..end], message.len())
}

/// An error a handler may return when it wants to name its code explicitly.
///
/// Any `Result<T, E>` with `E: Display + 'static` works as a handler's return type. The code
/// the caller sees in [`RpcError::Handler`] is, in order: the error itself when `E` is
/// [`RpcError::Handler`] (it passes through unchanged), the variant's kind for any other
/// [`RpcError`] (a nested call's failure is this handler's error, not this call's), [`HandlerError::code`] when `E` is this type,
/// otherwise the short name of `E`'s type (`CalcError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// Short machine-readable name of the error (`division_by_zero`).
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl HandlerError {
    /// A handler error with the given code.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError { code: code.into(), message: message.into() }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

/// Turns a handler's error into the [`RpcError`] the caller receives (rules on
/// [`HandlerError`]); `data` is the error serialized, when its type can be (generated code
/// finds out with [`ErrorData`]).
#[doc(hidden)]
pub fn handler_error<E: fmt::Display + 'static>(target: &str, error: E, data: Option<Value>) -> RpcError {
    let any: &dyn std::any::Any = &error;
    if let Some(rpc) = any.downcast_ref::<RpcError>() {
        return match rpc {
            RpcError::Handler { .. } => rpc.clone().bounded(),
            // Anything else is the handler's own failure (say, a nested call that timed out),
            // not this call's: passed through, a gateway would read `unavailable` as "this
            // server did not run the task" and run it again elsewhere.
            other => RpcError::Handler {
                target: target.to_owned(),
                code: Some(other.kind().to_owned()),
                message: bound_message(other.to_string()),
                data: None,
            },
        };
    }
    if let Some(h) = any.downcast_ref::<HandlerError>() {
        return RpcError::Handler {
            target: target.to_owned(),
            code: Some(h.code.clone()),
            message: bound_message(h.message.clone()),
            data: None,
        }
        .bounded();
    }
    let type_name = std::any::type_name::<E>();
    // `my_crate::CalcError` -> `CalcError`; a generic type loses its arguments
    // (`my_crate::Wrapper<my_crate::Inner>` -> `Wrapper`).
    let short = type_name.split('<').next().unwrap_or(type_name).rsplit("::").next().unwrap_or(type_name);
    RpcError::Handler {
        target: target.to_owned(),
        code: Some(short.to_owned()),
        message: bound_message(error.to_string()),
        data: data.map(Box::new),
    }
    .bounded()
}

/// Serializes a handler's error when its type implements `serde::Serialize`, and gives `None`
/// otherwise, chosen at compile time (autoref specialisation: generated code calls
/// `(&&ErrorData(&error)).data()`).
#[doc(hidden)]
pub struct ErrorData<'a, E>(pub &'a E);

/// Chosen when `E: Serialize`.
#[doc(hidden)]
pub trait ViaSerialize {
    /// The error as JSON.
    fn data(&self) -> Option<Value>;
}

impl<E: Serialize> ViaSerialize for &ErrorData<'_, E> {
    fn data(&self) -> Option<Value> {
        serde_json::to_value(self.0).ok()
    }
}

/// Chosen for every other error type.
#[doc(hidden)]
pub trait NoData {
    /// Nothing.
    fn data(&self) -> Option<Value>;
}

impl<E> NoData for &&ErrorData<'_, E> {
    fn data(&self) -> Option<Value> {
        None
    }
}
