//! [`Error`]: what can go wrong setting up, registering and closing (calls return
//! [`rpc_core::RpcError`]).

use rpc_core::RpcError;

/// Why a set-up operation (`connect`, `create`, `register`, `unregister`, `close`) failed.
///
/// Messages never contain credentials: URLs are shown with their password redacted
/// ([`wire::redact_url`](crate::wire::redact_url)), and lapin's own reports, which may quote
/// the URL, with the password scrubbed from them ([`ScrubbedError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The broker URL, password redacted.
        url: String,
        /// What lapin reported, password scrubbed.
        #[source]
        source: ScrubbedError,
    },

    /// The broker URL does not parse (lapin's reason, password scrubbed).
    #[error("invalid broker URL {url}: {reason}")]
    InvalidUrl {
        /// The broker URL, password redacted.
        url: String,
        /// Why it does not parse.
        reason: String,
    },

    /// Opening the connection (TCP, TLS, AMQP handshake) took longer than
    /// [`RpcBuilder::with_connect_timeout`](crate::RpcBuilder::with_connect_timeout), e.g. a peer that
    /// accepts TCP connections and never answers.
    #[error("cannot connect to {url}: the connection was not open after {} ms (TCP, TLS or AMQP handshake)", timeout.as_millis())]
    ConnectTimeout {
        /// The broker URL, password redacted.
        url: String,
        /// The limit that passed.
        timeout: std::time::Duration,
    },

    /// None of several brokers ([`wire::broker_urls`](crate::wire::broker_urls)) could be
    /// connected to: each one's error, in the order they were tried.
    #[error("cannot connect to any of {} brokers: {}", .0.len(), list(.0))]
    NoBroker(Vec<Error>),

    /// The broker refused an operation (a declaration, a consume, a cancel...).
    #[error("{action}: {source}")]
    Broker {
        /// What was being done, e.g. `declaring queue 'foo'`.
        action: String,
        /// What lapin reported.
        #[source]
        source: lapin::Error,
    },

    /// A handler is already registered under this name on this `Rpc`.
    #[error("method '{0}' is already registered")]
    AlreadyRegistered(String),

    /// No handler is registered under this name.
    #[error("method '{0}' is not registered")]
    NotRegistered(String),

    /// The name cannot be a routing key / queue name.
    #[error("invalid method name '{name}': {reason}")]
    InvalidName {
        /// The name (cut to 64 characters).
        name: String,
        /// Why it is refused.
        reason: String,
    },

    /// The link to the broker is down (an `Rpc` made by `connect` is reconnecting; one made on
    /// a channel has lost it for good).
    #[error("not connected to the broker")]
    NotConnected,

    /// The `Rpc` was closed.
    #[error("rpc closed")]
    Closed,
}

/// An error lapin reported while connecting, kept as text with every spelling of the URL's
/// password scrubbed from it ([`wire::redact_text`](crate::wire::redact_text)): lapin's errors
/// may quote the URL they were given, and the URL may hold a password.
#[derive(Debug, Clone)]
pub struct ScrubbedError {
    message: String,
}

impl ScrubbedError {
    /// `error`'s text, with `url`'s password scrubbed from it.
    pub(crate) fn new(error: &dyn std::fmt::Display, url: &str) -> Self {
        ScrubbedError { message: crate::wire::redact_text(&error.to_string(), url) }
    }

    /// The scrubbed text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ScrubbedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ScrubbedError {}

fn list(errors: &[Error]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl Error {
    pub(crate) fn broker(action: impl Into<String>, source: lapin::Error) -> Self {
        Error::Broker { action: action.into(), source }
    }

    pub(crate) fn invalid_name(name: &str, reason: impl Into<String>) -> Self {
        Error::InvalidName { name: name.chars().take(64).collect(), reason: reason.into() }
    }
}

impl From<Error> for RpcError {
    fn from(error: Error) -> Self {
        match error {
            Error::Closed => RpcError::Closed,
            other => {
                let message = other.to_string();
                RpcError::transport(message, other)
            }
        }
    }
}
