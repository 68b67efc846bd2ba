//! The envelopes every transport moves: [`Request`] and [`Reply`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{text, Args, Context, RpcError};

/// How long a call waits for its reply when neither the call nor its client sets a deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// One call: which method, with which arguments, and its [`Context`] (deadline, metadata,
/// trace id).
#[derive(Debug, Clone)]
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
    #[doc(hidden)]
    pub ordered: bool,
    /// Whether the last named argument is a variadic parameter (its array is spread into
    /// separate tokens by text transports).
    #[doc(hidden)]
    pub variadic: bool,
    /// The caller's deadline (`None`: the transport's default), metadata and trace id;
    /// transports carry what their wire can, and servers hand it to the handler.
    pub context: Context,
}

impl Request {
    /// A request whose context is [`Context::for_outgoing_call`]: empty, or inherited from the
    /// handler this call is made from.
    pub fn new(service: impl Into<String>, method: impl Into<String>, args: Args) -> Self {
        Request {
            service: service.into(),
            method: method.into(),
            args,
            ordered: false,
            variadic: false,
            context: Context::for_outgoing_call(),
        }
    }

    /// Sets the deadline `deadline` from now (an inherited earlier deadline is kept).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.context = self.context.with_deadline(deadline);
        self
    }

    /// Replaces the context.
    #[must_use]
    pub fn with_context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    /// How long the caller waits: what is left of the context's deadline, or `default`.
    #[doc(hidden)]
    pub fn remaining_or(&self, default: Duration) -> Duration {
        self.context.remaining().unwrap_or(default)
    }

    /// Promises that named arguments are in parameter order, the last one variadic or not.
    #[must_use]
    #[doc(hidden)]
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
    #[doc(hidden)]
    pub fn into_text(self) -> String {
        match self {
            Reply::Text(s) => s,
            Reply::Value(v) => text::render(&v),
        }
    }
}

/// What a generated typed client applies to each of its calls; not a public API.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct ClientDefaults {
    /// The client's deadline for each call.
    pub deadline: Option<Duration>,
    /// The context calls start from instead of the current handler's.
    pub context: Option<Context>,
    /// Metadata added to every call.
    pub metadata: crate::Metadata,
}

impl ClientDefaults {
    /// The context of one new call.
    pub fn context(&self) -> Context {
        let mut ctx = match &self.context {
            Some(base) => base.child(),
            None => Context::for_outgoing_call(),
        };
        if let Some(deadline) = self.deadline {
            ctx = ctx.with_deadline(deadline);
        }
        if !self.metadata.is_empty() {
            let metadata = ctx.metadata_mut();
            for (key, value) in self.metadata.iter() {
                // Entries passed the same checks when they were set; only the total can
                // overflow, and then the inherited entries are kept.
                let _ = metadata.insert(key, value);
            }
        }
        ctx
    }
}
