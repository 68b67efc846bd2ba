//! The AMQP shape of a call: names, message properties, queue arguments. Pure, no I/O.
//!
//! Everything here is fixed by aio-pika's `patterns/rpc.py`, so the two interoperate: the
//! method queue's declare arguments, the `type` values, the `From` header, the `rpc.dlx`
//! headers exchange.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use rpc_core::{Context, Metadata};

use crate::Codec;

/// The headers exchange expired requests are dead-lettered to (aio-pika's `RPC.DLX_NAME`).
pub const DLX_EXCHANGE: &str = "rpc.dlx";
/// The fanout exchange of describe requests ("what do you serve", `docs/AMQP.md`): every
/// `Rpc` that serves something binds a queue of its own to it and answers with what it serves.
pub const DESCRIBE_EXCHANGE: &str = "_rpc.describe";
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
/// Header carrying the call's trace id (a string).
pub const HEADER_TRACE_ID: &str = "x-rpc-trace-id";
/// Prefix of the headers carrying the call's metadata, one header per entry:
/// `x-rpc-meta-authorization: Bearer …` (string values; keys as [`Metadata`] takes them).
pub const HEADER_METADATA_PREFIX: &str = "x-rpc-meta-";
/// Longest trace id a server takes in, in bytes.
pub const MAX_TRACE_ID: usize = 256;
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

/// The arguments of a quorum method queue ([`RpcBuilder::with_quorum_queues`](crate::RpcBuilder::with_quorum_queues)):
/// aio-pika's ([`method_queue_arguments`]) plus `x-queue-type: quorum`; the queue is declared
/// durable. A method's queue is either kind, never both: the broker refuses a declaration
/// whose arguments differ from the existing queue's (`docs/AMQP.md`, "Quorum method queues").
pub fn quorum_method_queue_arguments() -> FieldTable {
    let mut args = method_queue_arguments();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
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

/// The properties of a request: aio-pika's, plus the call's deadline (`deadline_ms`, since the
/// epoch), trace id and metadata from `context` in headers.
pub fn request_properties(
    codec: Codec,
    correlation_id: &str,
    reply_to: &ShortString,
    timeout: Duration,
    deadline_ms: u64,
    context: &Context,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_FROM.into(), AMQPValue::LongString(reply_to.as_str().into()));
    headers.insert(HEADER_DEADLINE.into(), AMQPValue::LongLongInt(i64::try_from(deadline_ms).unwrap_or(i64::MAX)));
    if let Some(id) = context.trace_id() {
        headers.insert(HEADER_TRACE_ID.into(), AMQPValue::LongString(id.into()));
    }
    for (key, value) in context.metadata().iter() {
        // Keys are at most 64 bytes, so the header name fits a short string.
        if let Ok(name) = short(&format!("{HEADER_METADATA_PREFIX}{key}")) {
            headers.insert(name, AMQPValue::LongString(value.into()));
        }
    }
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

/// The trace id and metadata a request carries, in a context without a deadline (the server
/// sets it).
///
/// # Errors
/// Why a header cannot be taken in: a metadata entry that [`Metadata::insert`] refuses (bad
/// key or value, too many, too large), a value that is not a string, a trace id longer than
/// [`MAX_TRACE_ID`] or holding control characters.
pub(crate) fn request_context(props: &BasicProperties) -> Result<Context, String> {
    let Some(headers) = props.headers().as_ref() else { return Ok(Context::new()) };
    let mut metadata = Metadata::new();
    let mut trace_id = None;
    for (name, value) in headers.inner() {
        let name = name.as_str();
        let shown = || name.chars().take(80).collect::<String>();
        if name.eq_ignore_ascii_case(HEADER_TRACE_ID) {
            let id = text(value).ok_or_else(|| format!("header '{}': the trace id must be a string", shown()))?;
            if id.len() > MAX_TRACE_ID || id.chars().any(char::is_control) {
                return Err(format!(
                    "header '{}': the trace id must be at most {MAX_TRACE_ID} bytes of printable text",
                    shown()
                ));
            }
            trace_id = Some(id);
        } else if let Some(key) = strip_prefix_ignore_case(name, HEADER_METADATA_PREFIX) {
            let value = text(value).ok_or_else(|| format!("header '{}': metadata values must be strings", shown()))?;
            metadata.insert(key, value).map_err(|e| format!("header '{}': {e}", shown()))?;
        }
    }
    let context = Context::new().with_all_metadata(metadata);
    Ok(match trace_id {
        Some(id) => context.with_trace_id(id),
        None => context,
    })
}

/// A header's value as text, when it is a (UTF-8) string.
fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &name[prefix.len()..])
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
///
/// The user information is what lies between the scheme (`amqp://`, or `amqp:` without the
/// slashes) and the **last** `@`, and the password is everything in it after its first `:`
/// (RFC 3986 §3.2.1: the user name cannot contain a `:`). A password should be
/// percent-encoded, but one typed raw is hidden all the same, even when its `/`, `?`, `#` or `@`
/// makes the URL mean something else to a parser (`amqp://guest:AbC+/xYz=@host/%2f`, a base64
/// password). Where the URL is ambiguous, more is hidden, never less: `amqp://host:5672/vh?x=a@b`
/// shows as `amqp://host:***@b`. Text that does not start with `amqp:` or `amqps:` is read as
/// user information from its start: `guest:secret@host` gives `guest:***@host`, and another
/// scheme is hidden with the password (`http://u:p@h` gives `http:***@h`).
///
/// A list of brokers ([`broker_urls`]) is redacted URL by URL and joined with commas.
pub fn redact_url(url: &str) -> String {
    let urls = broker_urls(url);
    if urls.len() > 1 {
        return urls.iter().map(|u| redact_one(u)).collect::<Vec<_>>().join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    match password_span(url) {
        Some(span) => format!("{}***{}", &url[..span.start], &url[span.end..]),
        None => url.to_owned(),
    }
}

/// `text` (an error message, a log line) with every trace of `url`'s password removed.
///
/// The URL itself, where `text` quotes it, is shown as [`redact_url`] shows it; the password
/// is then replaced by `***` wherever else it appears: as written in the URL, percent-decoded
/// (the form the broker receives), and as `{:?}` escapes either. This is how a lapin error
/// that quotes the URL it was given is shown. Only passwords of at least 4 characters are
/// looked for outside the URL (a shorter one would match inside ordinary words).
///
/// For a list of brokers ([`broker_urls`]), every URL's password is removed.
pub fn redact_text(text: &str, url: &str) -> String {
    let mut out = if url.is_empty() { text.to_owned() } else { text.replace(url, &redact_url(url)) };
    let urls = broker_urls(url);
    for one in if urls.len() > 1 { urls } else { vec![url] } {
        if !one.is_empty() {
            out = out.replace(one, &redact_one(one));
        }
        for form in password_forms(one) {
            out = out.replace(&form, "***");
        }
    }
    out
}

/// The brokers named by `text` (`RABBITMQ_URL`, [`Rpc::connect`](crate::Rpc::connect)): one
/// URL, or several separated by commas, in the order they are tried.
///
/// A comma separates two URLs only where the text after it (spaces aside) starts with
/// `amqp://` or `amqps://` (any case); any other comma belongs to the URL it is in. So a
/// password holding a raw comma stays whole, unless it holds `,amqp://`, which must be
/// percent-encoded (`%2C`). Parts are trimmed; empty ones are dropped; text with no URL at
/// all gives itself, for the parser to refuse.
pub fn broker_urls(text: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        let rest = rest.trim_start().as_bytes();
        [&b"amqp://"[..], &b"amqps://"[..]]
            .iter()
            .any(|scheme| rest.len() >= scheme.len() && rest[..scheme.len()].eq_ignore_ascii_case(scheme))
    };
    let mut urls = Vec::new();
    let mut start = 0;
    for (i, _) in text.match_indices(',') {
        if starts_url(&text[i + 1..]) {
            urls.push(text[start..i].trim());
            start = i + 1;
        }
    }
    urls.push(text[start..].trim());
    urls.retain(|u| !u.is_empty());
    if urls.is_empty() {
        urls.push(text);
    }
    urls
}

/// Fewest characters a password must have to be scrubbed from text by value.
const MIN_SCRUBBED_CHARS: usize = 4;

/// The spellings of `url`'s password that text may contain, longest first.
fn password_forms(url: &str) -> Vec<String> {
    let Some(span) = password_span(url) else { return Vec::new() };
    let raw = &url[span];
    let decoded = percent_decode(raw);
    let mut forms = Vec::new();
    for form in [raw.to_owned(), decoded] {
        // `{:?}` escapes a leading combining mark that it leaves alone elsewhere: escape the
        // password as it appears inside a longer string.
        let quoted = format!("{:?}", format!("x{form}"));
        let escaped = quoted.get(2..quoted.len().saturating_sub(1)).unwrap_or_default().to_owned();
        forms.push(form);
        forms.push(escaped);
    }
    forms.retain(|form| form.chars().count() >= MIN_SCRUBBED_CHARS);
    forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
    forms.dedup();
    forms
}

/// Byte range of the password in `url`, when it has one (see [`redact_url`]).
fn password_span(url: &str) -> Option<std::ops::Range<usize>> {
    let start = authority_start(url);
    let rest = &url[start..];
    let at = rest.rfind('@')?;
    let colon = rest[..at].find(':')?;
    Some(start + colon + 1..start + at)
}

/// Where the authority (user information, host, port) begins: after `amqp://` or `amqps://`
/// (any case, any number of slashes, none included); at 0 for any other text.
///
/// Only the AMQP schemes are recognised: in `guest://secret@host`, `guest` may as well be a
/// user name whose password starts with `//`, and lapin refuses other schemes anyway.
fn authority_start(url: &str) -> usize {
    let Some(colon) = url.find(':') else { return 0 };
    let scheme = &url[..colon];
    if !(scheme.eq_ignore_ascii_case("amqp") || scheme.eq_ignore_ascii_case("amqps")) {
        return 0;
    }
    let after = &url[colon + 1..];
    colon + 1 + after.len() - after.trim_start_matches(['/', '\\']).len()
}

/// `%XX` sequences decoded (invalid ones kept as they are), as UTF-8 with replacement
/// characters.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(u8::try_from(high * 16 + low).unwrap_or_default());
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The size limit in a broker's refusal of a message that is too large (RabbitMQ:
/// `PRECONDITION_FAILED - message size 2097152 is larger than configured max size 1048576`).
pub(crate) fn refused_size_limit(reason: &str) -> Option<usize> {
    const MARK: &str = "larger than configured max size ";
    let tail = &reason[reason.find(MARK)? + MARK.len()..];
    let digits = tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(tail.len());
    tail[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_brokers_splits_at_commas_that_start_a_url() {
        assert_eq!(broker_urls("amqp://a:1@h1/%2f"), ["amqp://a:1@h1/%2f"]);
        assert_eq!(
            broker_urls("amqp://g:p@h1:5681/%2f, AMQPS://h2,amqp://h3/"),
            ["amqp://g:p@h1:5681/%2f", "AMQPS://h2", "amqp://h3/"]
        );
        assert_eq!(broker_urls("amqp://g:p,q@h1,amqp://h2"), ["amqp://g:p,q@h1", "amqp://h2"]);
        assert_eq!(broker_urls(",amqp://h1,,"), ["amqp://h1,,"]);
        assert_eq!(broker_urls(" , "), [","]);
        assert_eq!(broker_urls(""), [""]);
    }

    #[test]
    fn every_password_of_a_list_is_redacted() {
        let list = "amqp://guest:Secret1@h1/%2f,amqp://u:Se%2Ccret2@h2,amqp://h3";
        assert_eq!(redact_url(list), "amqp://guest:***@h1/%2f,amqp://u:***@h2,amqp://h3");
        let text = redact_text(&format!("failed: {list}; Secret1 Se,cret2 amqp://u:Se%2Ccret2@h2"), list);
        assert!(!text.contains("Secret1") && !text.contains("cret2"), "{text}");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("amqps://u:p@ss@host"), "amqps://u:***@host");
        assert_eq!(redact_url("amqp://user@host/vh"), "amqp://user@host/vh");
        assert_eq!(redact_url("amqp://host/vh?x=a@c"), "amqp://host/vh?x=a@c");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn passwords_with_delimiters_typed_raw_are_redacted_whole() {
        let cases = [
            ("amqp://guest:AbC+/xYz=@127.0.0.1:5672/%2f", "amqp://guest:***@127.0.0.1:5672/%2f"),
            ("amqp://guest:a#b@host/%2f", "amqp://guest:***@host/%2f"),
            ("amqp://guest:a?b@host", "amqp://guest:***@host"),
            ("amqp://guest:a@b/c:d@host/vh", "amqp://guest:***@host/vh"),
            ("amqp://guest:p%40ss@host", "amqp://guest:***@host"),
            ("amqp:guest:secret@host", "amqp:guest:***@host"),
            ("guest:secret@host:5672", "guest:***@host:5672"),
            ("guest:/secret@host", "guest:***@host"),
            ("guest://secret@host", "guest:***@host"),
            ("http://u:p@h", "http:***@h"),
            ("AMQPS://u:pw@h", "AMQPS://u:***@h"),
            ("amqp://u:@h", "amqp://u:***@h"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
        // Ambiguous: more is hidden rather than less.
        assert_eq!(redact_url("amqp://host:5672/vh?x=a:b@c"), "amqp://host:***@c");
    }

    #[test]
    fn text_quoting_the_url_or_the_password_in_any_spelling_is_scrubbed() {
        let url = "amqp:guest:p%40ss\"w0rd@host";
        let text = format!("Invalid URL: '{url}' / {:?} / password p@ss\"w0rd", format!("p@ss\"w0rd"));
        let shown = redact_text(&text, url);
        assert_eq!(shown, "Invalid URL: 'amqp:guest:***@host' / \"***\" / password ***");
        assert_eq!(redact_text("ab in a word: abc", "amqp://u:ab@h"), "ab in a word: abc");
    }

    #[test]
    fn a_size_refusal_names_the_brokers_limit() {
        let reason = "protocol error: AMQP soft error: PRECONDITION-FAILED: PRECONDITION_FAILED - message size 2097152 is larger than configured max size 1048576";
        assert_eq!(refused_size_limit(reason), Some(1_048_576));
        assert_eq!(refused_size_limit("NOT_FOUND - no queue"), None);
    }

    #[test]
    fn request_properties_carry_the_aio_pika_fields_and_the_deadline() {
        let reply_to: ShortString = "amq.gen-xyz".into();
        let props =
            request_properties(Codec::Json, "id-1", &reply_to, Duration::from_millis(1500), 42, &Context::new());
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
        let names: Vec<String> = props.headers().as_ref().unwrap().inner().keys().map(|k| k.to_string()).collect();
        assert_eq!(names, ["From", "x-deadline-ms"], "no context headers for an empty context");
    }

    #[test]
    fn the_context_travels_in_headers_and_is_read_back() {
        let context = Context::new().with_trace_id("trace-1").with_metadata("Authorization", "Bearer x").unwrap();
        let context = context.with_metadata("tenant", "acme").unwrap();
        let props = request_properties(Codec::Json, "id", &"q".into(), Duration::from_secs(1), 7, &context);
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(headers.get("x-rpc-trace-id"), Some(&AMQPValue::LongString("trace-1".into())));
        assert_eq!(headers.get("x-rpc-meta-authorization"), Some(&AMQPValue::LongString("Bearer x".into())));
        let read = request_context(&props).unwrap();
        assert_eq!(read.trace_id(), Some("trace-1"));
        assert_eq!(read.metadata(), context.metadata());
        assert_eq!(read.deadline(), None, "the server sets the deadline itself");
    }

    #[test]
    fn context_headers_that_break_the_metadata_rules_are_refused_with_the_header_named() {
        let with = |name: &str, value: AMQPValue| {
            let mut headers = FieldTable::default();
            headers.insert(name.into(), value);
            BasicProperties::default().with_headers(headers)
        };
        let long = |s: String| AMQPValue::LongString(s.into());
        let cases = [
            (with("x-rpc-meta-bad key", long("v".into())), "x-rpc-meta-bad key"),
            (with("x-rpc-meta-k", long("v".repeat(5000))), "printable text"),
            (with("x-rpc-meta-k", long("a\nb".into())), "x-rpc-meta-k"),
            (with("x-rpc-meta-k", AMQPValue::LongLongInt(1)), "must be strings"),
            (with("x-rpc-trace-id", long("t".repeat(MAX_TRACE_ID + 1))), "at most 256 bytes"),
            (with("x-rpc-trace-id", AMQPValue::Boolean(true)), "must be a string"),
        ];
        for (props, expected) in cases {
            let error = request_context(&props).unwrap_err();
            assert!(error.contains(expected), "expected an error mentioning {expected:?}, got {error:?}");
        }
        let mut headers = FieldTable::default();
        for i in 0..=rpc_core::context::MAX_METADATA_ENTRIES {
            headers.insert(format!("x-rpc-meta-k{i}").into(), long("v".into()));
        }
        let error = request_context(&BasicProperties::default().with_headers(headers)).unwrap_err();
        assert!(error.contains("metadata full"), "expected metadata full, got {error:?}");
        // Other headers (aio-pika's, the broker's) are not metadata.
        let props = with("x-death", AMQPValue::Boolean(true));
        assert!(request_context(&props).unwrap().metadata().is_empty());
        // Header names are matched without regard to case.
        let read = request_context(&with("X-Rpc-Meta-Tenant", long("acme".into()))).unwrap();
        assert_eq!(read.metadata().get("tenant"), Some("acme"));
    }

    #[test]
    fn zero_timeout_still_gives_a_positive_ttl() {
        let props = request_properties(Codec::MsgPack, "id", &"q".into(), Duration::ZERO, 0, &Context::new());
        assert_eq!(props.expiration().as_ref().unwrap().as_str(), "1");
    }

    #[test]
    fn long_names_are_refused_not_panicked_on() {
        assert!(short(&"x".repeat(256)).is_err());
        assert!(short(&"x".repeat(255)).is_ok());
    }
}
