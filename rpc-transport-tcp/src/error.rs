//! [`Error`]: what can go wrong while reading a request off a socket, before any service is
//! involved. At the protocol boundary each case becomes an [`RpcError`] reply.

use std::time::Duration;

use rpc_core::RpcError;

/// Why a request line could not be read or parsed.
///
/// Every variant but [`Error::Io`] is the client's fault and gets an
/// `ERROR bad_request: …` reply (see `docs/PROTOCOL.md`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No `\n` within the line limit.
    #[error("request line longer than {limit} bytes (the limit); end the request with '\\n'")]
    TooLong {
        /// The configured maximum, in bytes, terminator excluded.
        limit: usize,
    },

    /// The line is not UTF-8.
    #[error("request is not valid UTF-8 (invalid byte at offset {offset})")]
    InvalidUtf8 {
        /// Offset of the first invalid byte in the line.
        offset: usize,
    },

    /// The line holds a control character (NUL, tab, a lone CR, ...).
    #[error(
        "control character {byte:#04x} at offset {offset}: requests are printable text with tokens separated by spaces"
    )]
    ControlCharacter {
        /// The offending byte.
        byte: u8,
        /// Its offset in the line.
        offset: usize,
    },

    /// The line has no tokens at all.
    #[error("empty request: expected 'service method [args...]'")]
    Empty,

    /// The line has a service name but no method.
    #[error("request '{service}' names no method: expected 'service method [args...]'")]
    MissingMethod {
        /// The one token the line held.
        service: String,
    },

    /// The client did not send a complete request in time.
    #[error("no complete request within {}", fmt_duration(*.0))]
    ReadTimeout(Duration),

    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[source] std::io::Error),
}

impl Error {
    /// Whether the client should be told (a reply is written) rather than just disconnected.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Error::Io(_))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(io) => RpcError::transport("reading the request failed", io),
            other => RpcError::bad_request(other.to_string()),
        }
    }
}

/// `10 s`, `250 ms`: the form error messages use.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}
