//! The wire format, pure: bytes in, a [`RequestLine`] or an [`Error`] out, and replies encoded
//! and decoded. Nothing here does I/O, so every rule is unit-tested without a socket.
//!
//! The grammar (`docs/PROTOCOL.md` has the whole story):
//!
//! ```text
//! request = line ( "\n" | "\r\n" | EOF )      ; at most max_line bytes before the "\n"
//! line    = *" " token 1*( 1*" " token ) *" "  ; tokens separated by runs of ASCII spaces
//! token   = 1*( any UTF-8 character except " " and control characters )
//! reply   = success | error                   ; then the server closes the connection
//! success = [ "\" ] text "\n"                 ; "\" added when text starts with "ERROR" or "\"
//! error   = "ERROR " kind ": " message "\n" json "\n"
//! ```

use rpc_core::{text, Args, Reply, Request, RpcError};
use serde_json::Value;

use crate::Error;

/// The default limit on a request line: 64 KiB.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// The first bytes of every error reply.
pub const ERROR_PREFIX: &str = "ERROR";

/// The result of looking for something in a buffer that may still be growing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A complete item.
    Complete(T),
    /// Not there yet: read more bytes and ask again. This is not an error.
    Incomplete,
}

/// Finds the request line in the bytes read so far from one connection.
///
/// It remembers how far it has scanned, so a client sending one byte at a time costs linear
/// time, not quadratic.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max_line: usize,
    scanned: usize,
}

impl LineDecoder {
    /// A decoder accepting lines of at most `max_line` bytes before the `\n`.
    pub fn new(max_line: usize) -> Self {
        LineDecoder { max_line, scanned: 0 }
    }

    /// The line limit.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Looks for a complete request in `buf`, everything read so far; `eof` says the client
    /// has closed its sending side, which also ends a request.
    ///
    /// # Errors
    /// [`Error::TooLong`] as soon as more than `max_line` bytes arrived without a `\n` (so the
    /// caller never needs to buffer more than `max_line + 1` bytes), and the parse errors of
    /// [`RequestLine::parse`].
    pub fn decode(&mut self, buf: &[u8], eof: bool) -> Result<Decoded<RequestLine>, Error> {
        let window = buf.len().min(self.max_line.saturating_add(1));
        let start = self.scanned.min(window);
        if let Some(i) = buf[start..window].iter().position(|&b| b == b'\n') {
            self.scanned = 0;
            return RequestLine::parse(&buf[..start + i]).map(Decoded::Complete);
        }
        self.scanned = window;
        if buf.len() > self.max_line {
            return Err(Error::TooLong { limit: self.max_line });
        }
        if eof {
            self.scanned = 0;
            return RequestLine::parse(buf).map(Decoded::Complete);
        }
        Ok(Decoded::Incomplete)
    }
}

/// One parsed request: `service method arg1 arg2 ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestLine {
    /// The service's wire name (first token).
    pub service: String,
    /// The method's wire name (second token).
    pub method: String,
    /// The remaining tokens, verbatim.
    pub args: Vec<String>,
}

impl RequestLine {
    /// Parses one line, without its `\n`; one trailing `\r` is dropped.
    ///
    /// # Errors
    /// [`Error::InvalidUtf8`], [`Error::ControlCharacter`], [`Error::Empty`] (no tokens) or
    /// [`Error::MissingMethod`] (one token).
    pub fn parse(line: &[u8]) -> Result<Self, Error> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|e| Error::InvalidUtf8 { offset: e.valid_up_to() })?;
        if let Some(offset) = text.bytes().position(|b| b < 0x20 || b == 0x7f) {
            return Err(Error::ControlCharacter { byte: line[offset], offset });
        }
        let mut tokens = text.split(' ').filter(|t| !t.is_empty()).map(str::to_owned);
        let service = tokens.next().ok_or(Error::Empty)?;
        let Some(method) = tokens.next() else {
            return Err(Error::MissingMethod { service });
        };
        Ok(RequestLine { service, method, args: tokens.collect() })
    }

    /// Builds the line a client sends for `request`: named arguments rendered as tokens in
    /// parameter order (the request must promise that order, as typed clients do), each
    /// element of a variadic last argument a token of its own.
    ///
    /// # Errors
    /// [`RpcError::BadRequest`] when named arguments come without the promise of parameter
    /// order, or a name or an argument cannot travel as one token ([`check_token`]).
    pub fn from_request(request: Request) -> Result<Self, RpcError> {
        let target = request.target();
        let bad = |what: String, why: String| RpcError::bad_request(format!("{target}: {what} {why}"));
        check_token(&request.service).map_err(|why| bad("the service name".into(), why))?;
        check_token(&request.method).map_err(|why| bad("the method name".into(), why))?;
        let args = match request.args {
            Args::Text(tokens) => {
                for (i, token) in tokens.iter().enumerate() {
                    check_token(token).map_err(|why| bad(format!("argument {}", i + 1), why))?;
                }
                tokens
            }
            Args::Named(map) if request.ordered => {
                let count = map.len();
                let mut tokens = Vec::with_capacity(count);
                for (i, (name, value)) in map.into_iter().enumerate() {
                    let items = match value {
                        Value::Array(items) if request.variadic && i + 1 == count => items,
                        value => vec![value],
                    };
                    for item in &items {
                        let token = text::render(item);
                        check_token(&token).map_err(|why| bad(format!("argument '{name}'"), why))?;
                        tokens.push(token);
                    }
                }
                tokens
            }
            Args::Named(_) => {
                return Err(RpcError::bad_request(format!(
                    "{target}: named arguments travel over a text transport only in parameter order: \
                     use Args::Text, or the typed client (which promises the order)"
                )))
            }
            _ => return Err(RpcError::bad_request(format!("{target}: arguments of an unknown shape"))),
        };
        Ok(RequestLine { service: request.service, method: request.method, args })
    }

    /// `service.method`, for messages and logs.
    pub fn target(&self) -> String {
        format!("{}.{}", self.service, self.method)
    }

    /// The request for a [`rpc_core::Registry`]: positional text arguments, an empty context
    /// (the line carries no deadline or metadata).
    pub fn into_request(self) -> Request {
        Request::new(self.service, self.method, Args::Text(self.args))
    }

    /// The canonical wire form: tokens joined by single spaces, then `\n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.service.len() + self.method.len() + self.args.iter().map(|a| a.len() + 1).sum::<usize>() + 2,
        );
        out.extend_from_slice(self.service.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.method.as_bytes());
        for arg in &self.args {
            out.push(b' ');
            out.extend_from_slice(arg.as_bytes());
        }
        out.push(b'\n');
        out
    }
}

/// Checks that `token` can travel as one token of a request line: not empty, and no space,
/// control character or DEL (the line splits on spaces and ends at a newline). This is the
/// one definition of a token, for what clients send and what servers accept.
///
/// # Errors
/// Why not, as a phrase that follows the token's description: `is empty and cannot be sent
/// as a token`.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("is empty and cannot be sent as a token".to_owned());
    }
    if token.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{} holds a space or a control character and cannot be sent as a token",
            rpc_core::error::quote(token)
        ));
    }
    Ok(())
}

/// Encodes a successful result: its text, escaped when it could be misread, then `\n`.
pub fn encode_success(text: &str) -> Vec<u8> {
    let escape = text.starts_with(ERROR_PREFIX) || text.starts_with('\\');
    let mut out = Vec::with_capacity(text.len() + 2);
    if escape {
        out.push(b'\\');
    }
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
    out
}

/// Encodes a result value rendered as text ([`rpc_core::text::render`]).
pub fn encode_value(value: &Value) -> Vec<u8> {
    encode_success(&text::render(value))
}

/// Encodes an error: `ERROR <kind>: <message>\n<compact JSON of RpcError::to_wire>\n`.
///
/// The first line is for people and has line breaks in the message replaced by spaces; the
/// second is for programs and is authoritative.
pub fn encode_error(error: &RpcError) -> Vec<u8> {
    let message: String = error.to_string().chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
    let json = error.to_wire().to_string();
    format!("{ERROR_PREFIX} {}: {message}\n{json}\n", error.kind()).into_bytes()
}

/// A complete reply, as read up to the server's close.
#[derive(Debug, Clone)]
pub enum ParsedReply {
    /// The result's text, unescaped, without its final `\n`.
    Success(String),
    /// The error the server sent, rebuilt as its variant.
    Error(RpcError),
}

/// Parses a complete reply (every byte up to the server's end of stream).
///
/// `target` names the call, for errors whose kind this version does not know.
///
/// # Errors
/// [`RpcError::Protocol`] when the reply is empty, truncated (no final `\n`), not UTF-8, or an
/// error reply whose second line is not an error object.
pub fn parse_reply(bytes: &[u8], target: &str) -> Result<ParsedReply, RpcError> {
    if bytes.is_empty() {
        return Err(RpcError::protocol(format!("{target}: the server closed the connection without a reply")));
    }
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return Err(RpcError::protocol(format!("{target}: truncated reply (no final newline)")));
    };
    let body = std::str::from_utf8(body)
        .map_err(|e| RpcError::protocol(format!("{target}: reply is not UTF-8 (offset {})", e.valid_up_to())))?;
    if let Some(escaped) = body.strip_prefix('\\') {
        return Ok(ParsedReply::Success(escaped.to_owned()));
    }
    if !body.starts_with(ERROR_PREFIX) {
        return Ok(ParsedReply::Success(body.to_owned()));
    }
    let malformed = |why: &str| RpcError::protocol(format!("{target}: malformed error reply ({why}): {body:?}"));
    let (_, json) = body.split_once('\n').ok_or_else(|| malformed("no JSON line"))?;
    let value: Value = serde_json::from_str(json).map_err(|_| malformed("second line is not JSON"))?;
    if !value.get("kind").is_some_and(Value::is_string) {
        return Err(malformed("no \"kind\""));
    }
    Ok(ParsedReply::Error(RpcError::from_wire(&value, target)))
}

/// Parses a complete reply into what a [`rpc_core::Transport`] returns.
///
/// # Errors
/// The server's error, or [`RpcError::Protocol`] as in [`parse_reply`].
pub fn decode_reply(bytes: &[u8], target: &str) -> Result<Reply, RpcError> {
    match parse_reply(bytes, target)? {
        ParsedReply::Success(text) => Ok(Reply::Text(text)),
        ParsedReply::Error(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> RequestLine {
        RequestLine::parse(s.as_bytes()).unwrap()
    }

    fn decode_all(decoder: &mut LineDecoder, buf: &[u8], eof: bool) -> Result<Decoded<RequestLine>, Error> {
        decoder.decode(buf, eof)
    }

    #[test]
    fn the_seed_request_parses_into_service_method_and_tokens() {
        let l = line("calculator calculate 2 + 2");
        assert_eq!(l.service, "calculator");
        assert_eq!(l.method, "calculate");
        assert_eq!(l.args, ["2", "+", "2"]);
        assert_eq!(l.encode(), b"calculator calculate 2 + 2\n");
    }

    #[test]
    fn runs_of_spaces_separate_tokens_and_outer_spaces_are_ignored() {
        let l = line("   calculator   calculate  2 +    2   ");
        assert_eq!(l.args, ["2", "+", "2"]);
        assert_eq!(l.encode(), b"calculator calculate 2 + 2\n");
    }

    #[test]
    fn one_trailing_carriage_return_is_dropped() {
        assert_eq!(line("a b c\r").args, ["c"]);
    }

    #[test]
    fn empty_and_space_only_lines_are_empty_requests() {
        assert!(matches!(RequestLine::parse(b""), Err(Error::Empty)));
        assert!(matches!(RequestLine::parse(b"     "), Err(Error::Empty)));
        assert!(matches!(RequestLine::parse(b"\r"), Err(Error::Empty)));
    }

    #[test]
    fn a_lone_service_name_is_missing_its_method() {
        match RequestLine::parse(b"calculator") {
            Err(Error::MissingMethod { service }) => assert_eq!(service, "calculator"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_reports_its_offset() {
        match RequestLine::parse(b"calc \xff x") {
            Err(Error::InvalidUtf8 { offset }) => assert_eq!(offset, 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn control_characters_are_refused() {
        for (input, byte) in [(&b"a\0b c"[..], 0u8), (b"a\tb c", b'\t'), (b"a b\rc", b'\r'), (b"a b \x7f", 0x7f)] {
            match RequestLine::parse(input) {
                Err(Error::ControlCharacter { byte: b, .. }) => assert_eq!(b, byte),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn non_ascii_text_is_kept_verbatim() {
        assert_eq!(line("echo say héllo\u{a0}wörld").args, ["héllo\u{a0}wörld"]);
    }

    #[test]
    fn a_partial_line_is_incomplete_not_an_error() {
        let mut d = LineDecoder::new(64);
        assert_eq!(decode_all(&mut d, b"calculator calc", false).unwrap(), Decoded::Incomplete);
        let Decoded::Complete(l) = decode_all(&mut d, b"calculator calculate 1 + 2\n", false).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(l.args, ["1", "+", "2"]);
    }

    #[test]
    fn end_of_stream_ends_a_request_without_newline() {
        let mut d = LineDecoder::new(64);
        let Decoded::Complete(l) = d.decode(b"calculator calculate 2 + 2", true).unwrap() else { panic!() };
        assert_eq!(l.method, "calculate");
        assert!(matches!(LineDecoder::new(64).decode(b"", true), Err(Error::Empty)));
    }

    #[test]
    fn bytes_after_the_first_newline_are_not_part_of_the_request() {
        let mut d = LineDecoder::new(64);
        let Decoded::Complete(l) = d.decode(b"a b 1\r\nc d 2\n", false).unwrap() else { panic!() };
        assert_eq!(l.args, ["1"]);
    }

    #[test]
    fn a_line_over_the_limit_fails_as_soon_as_the_limit_is_passed() {
        let mut d = LineDecoder::new(8);
        assert_eq!(d.decode(b"12345678", false).unwrap(), Decoded::Incomplete);
        assert!(matches!(d.decode(b"123456789", false), Err(Error::TooLong { limit: 8 })));
        // Exactly at the limit, with its newline, is fine.
        let mut d = LineDecoder::new(8);
        assert!(matches!(d.decode(b"aaaa bbb\n", false), Ok(Decoded::Complete(_))));
        // A newline that only comes after the limit does not save it.
        let mut d = LineDecoder::new(8);
        assert!(matches!(d.decode(b"aaaa bbbbbb\n", false), Err(Error::TooLong { .. })));
    }

    #[test]
    fn scanning_resumes_where_it_stopped() {
        let mut d = LineDecoder::new(1024);
        let mut buf = Vec::new();
        for b in b"svc method arg" {
            buf.push(*b);
            assert_eq!(d.decode(&buf, false).unwrap(), Decoded::Incomplete);
        }
        buf.push(b'\n');
        assert!(matches!(d.decode(&buf, false), Ok(Decoded::Complete(_))));
    }

    #[test]
    fn success_that_looks_like_an_error_is_escaped_and_round_trips() {
        for text in ["ERROR handler: not really", "\\starts with a backslash", "ERRORS", "4", "", "two\nlines"] {
            let wire = encode_success(text);
            let escaped = text.starts_with("ERROR") || text.starts_with('\\');
            assert_eq!(wire.first() == Some(&b'\\'), escaped, "{text:?}");
            match parse_reply(&wire, "t").unwrap() {
                ParsedReply::Success(back) => assert_eq!(back, text),
                ParsedReply::Error(e) => panic!("{text:?} read as error {e}"),
            }
        }
    }

    #[test]
    fn values_render_as_text() {
        assert_eq!(encode_value(&serde_json::json!(4.0)), b"4\n");
        assert_eq!(encode_value(&serde_json::json!({"class": 1})), b"{\"class\":1}\n");
    }

    #[test]
    fn errors_have_a_human_line_and_a_json_line_and_round_trip() {
        let error = RpcError::Handler {
            target: "calculator.calculate".into(),
            code: Some("division_by_zero".into()),
            message: "division\nby zero".into(),
            data: None,
        };
        let wire = encode_error(&error);
        let text = String::from_utf8(wire.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], "ERROR handler: calculator.calculate: [division_by_zero] division by zero");
        match parse_reply(&wire, "calculator.calculate").unwrap() {
            ParsedReply::Error(RpcError::Handler { code, message, .. }) => {
                assert_eq!(code.as_deref(), Some("division_by_zero"));
                assert_eq!(message, "division\nby zero");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        for bad in [&b""[..], b"4", b"ERROR x: y\n", b"ERROR x: y\nnot json\n", b"ERROR x: y\n{\"a\":1}\n", b"\xff\n"] {
            assert!(matches!(parse_reply(bad, "t"), Err(RpcError::Protocol { .. })), "{bad:?}");
        }
    }

    #[test]
    fn requests_render_named_and_variadic_arguments_as_tokens() {
        let request =
            Request::new("neural_net", "predict", rpc_core::kwargs! { "inputs" => [1, 0] }).in_parameter_order(true);
        assert_eq!(RequestLine::from_request(request).unwrap().encode(), b"neural_net predict 1 0\n");
        let request =
            Request::new("calculator", "calculate", rpc_core::kwargs! { "a" => 2.0, "op" => "+", "b" => 0.5 })
                .in_parameter_order(false);
        assert_eq!(RequestLine::from_request(request).unwrap().encode(), b"calculator calculate 2 + 0.5\n");
        // Without the promise of parameter order, names cannot become positions.
        let unordered = Request::new("calculator", "calculate", rpc_core::kwargs! { "b" => 0.5, "a" => 2.0 });
        assert!(matches!(RequestLine::from_request(unordered), Err(RpcError::BadRequest { .. })));
    }

    #[test]
    fn requests_that_cannot_be_one_line_are_refused_before_sending() {
        let spaced = Request::new("echo", "say", Args::Text(vec!["a b".into()]));
        assert!(matches!(RequestLine::from_request(spaced), Err(RpcError::BadRequest { .. })));
        let empty_method = Request::new("echo", "", Args::Text(vec![]));
        assert!(matches!(RequestLine::from_request(empty_method), Err(RpcError::BadRequest { .. })));
        let nul = Request::new("echo", "say", Args::Text(vec!["a\0".into()]));
        assert!(matches!(RequestLine::from_request(nul), Err(RpcError::BadRequest { .. })));
    }
}
