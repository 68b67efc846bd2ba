//! The envelopes every transport moves: [`Request`] and [`Reply`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{text, Args, RpcError};

/// How long a call waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One call: which method, with which arguments, by when.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Request {
    /// The service's wire name (`calculator`).
    pub service: String,
    /// The method's wire name (`calculate`).
    pub method: String,
    /// The arguments.
    pub args: Args,
    /// Whether named arguments are in the method's parameter order (the typed client
    /// guarantees it). Text transports send arguments as positional tokens, so they refuse
    /// named arguments without this promise rather than guess the order.
    pub ordered: bool,
    /// Whether the last named argument is a variadic parameter (its array is spread into
    /// separate tokens by text transports).
    pub variadic: bool,
    /// How long the caller will wait; transports enforce it and servers may skip work whose
    /// caller has given up. `None` means the transport's default.
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request with no explicit timeout.
    pub fn new(service: impl Into<String>, method: impl Into<String>, args: Args) -> Self {
        Request { service: service.into(), method: method.into(), args, ordered: false, variadic: false, timeout: None }
    }

    /// Sets the deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Promises that named arguments are in parameter order, the last one variadic or not.
    pub fn in_parameter_order(mut self, variadic: bool) -> Self {
        self.ordered = true;
        self.variadic = variadic;
        self
    }

    /// `service.method`, for messages and logs.
    pub fn target(&self) -> String {
        format!("{}.{}", self.service, self.method)
    }
}

/// A successful result, in the shape its transport delivered it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// Text, from a text transport (`4`, `hello`, `[1,2]`).
    Text(String),
    /// A structured value, from a binary transport or an in-process call.
    Value(Value),
}

impl Reply {
    /// Decodes the result into `T` (text with the token rules of [`crate::text`]).
    ///
    /// # Errors
    /// [`RpcError::Decode`], naming `target` and the expected type.
    pub fn decode<T: DeserializeOwned>(self, target: &str) -> Result<T, RpcError> {
        let decoded = match &self {
            Reply::Text(s) => text::from_token(s).map_err(|e| e.to_string()),
            Reply::Value(v) => T::deserialize(v).map_err(|e| e.to_string()),
        };
        decoded.map_err(|reason| RpcError::Decode {
            target: target.to_owned(),
            ty: std::any::type_name::<T>().to_owned(),
            reason,
        })
    }

    /// The result as text, rendered if it is a value.
    pub fn into_text(self) -> String {
        match self {
            Reply::Text(s) => s,
            Reply::Value(v) => text::render(&v),
        }
    }
}
