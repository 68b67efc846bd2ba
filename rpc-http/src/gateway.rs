//! [`Gateway`]: the HTTP front over one [`Transport`], its [`Limits`] and its routes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use rpc_core::layer::LayeredTransport;
use rpc_core::{Context, Metadata, Request, RpcError, Transport};
use serde_json::{json, Value};

use crate::backends::{BackendStatus, Backends};
use crate::catalog::{self, Catalog};
use crate::status::{error_response, http_error, json_response};

/// The header that carries a call's deadline, in milliseconds from when the request arrives
/// (at most 10 digits, given once); the server caps it at [`Limits::with_max_deadline`].
pub const DEADLINE_HEADER: &str = "x-rpc-deadline-ms";

/// The prefix of the headers that become the call's metadata: `x-rpc-meta-authorization:
/// Bearer t` gives the entry `authorization` = `Bearer t`. Each is given once.
pub const METADATA_PREFIX: &str = "x-rpc-meta-";

/// The header that carries a call's trace id: 1 to [`MAX_TRACE_ID`] visible ASCII characters
/// (no spaces), given once.
pub const TRACE_HEADER: &str = "x-rpc-trace-id";

/// The longest trace id accepted, in bytes.
pub const MAX_TRACE_ID: usize = 128;

/// The bounds of what one HTTP client may make the front do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// The largest request body, in bytes (1 MiB): a larger one gets 413.
    pub max_body: usize,
    /// How long a client may take to send a request body (10 s): a slower one gets 408.
    pub body_timeout: Duration,
    /// How long a client may take to send the request's headers (10 s); then the connection
    /// is closed.
    pub header_timeout: Duration,
    /// How long a response may wait for a client that reads nothing (10 s); then the
    /// connection is closed. It bounds a client that sends requests and never reads the
    /// answers, which would otherwise hold its connection, and so one of
    /// [`Limits::max_connections`], for good.
    pub write_timeout: Duration,
    /// The longest deadline a call gets, and the deadline of a call that names none (30 s).
    pub max_deadline: Duration,
    /// Connections served at once (1024); more are closed at once.
    pub max_connections: usize,
    /// How long a graceful shutdown waits for requests in flight (10 s).
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_deadline: Duration::from_secs(30),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_body`].
    #[must_use]
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets [`Limits::body_timeout`].
    #[must_use]
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Sets [`Limits::header_timeout`].
    #[must_use]
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets [`Limits::write_timeout`].
    #[must_use]
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets [`Limits::max_deadline`].
    #[must_use]
    pub fn with_max_deadline(mut self, deadline: Duration) -> Self {
        self.max_deadline = deadline;
        self
    }

    /// Sets [`Limits::max_connections`].
    #[must_use]
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Sets [`Limits::drain_timeout`].
    #[must_use]
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

/// The HTTP/JSON front over a [`Transport`] (a Producer, a RabbitMQ client, an in-process
/// registry): `POST /rpc/{service}/{method}`, `GET /rpc`, `GET /openapi.json`, `GET /healthz`,
/// `GET /readyz`, `GET /metrics` and the console at `GET /`.
///
/// Cloning is cheap; clones share everything.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) transport: LayeredTransport,
    pub(crate) limits: Limits,
    pub(crate) catalog: Catalog,
    pub(crate) backends: Option<Arc<dyn Backends>>,
    pub(crate) prometheus: Option<PrometheusHandle>,
    pub(crate) title: String,
    pub(crate) draining: AtomicBool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("limits", &self.inner.limits).finish_non_exhaustive()
    }
}

/// Builds a [`Gateway`].
#[must_use]
pub struct GatewayBuilder {
    transport: LayeredTransport,
    limits: Limits,
    descriptions: Option<Value>,
    backends: Option<Arc<dyn Backends>>,
    prometheus: Option<PrometheusHandle>,
    title: String,
    describe_ttl: Duration,
}

impl GatewayBuilder {
    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Uses these descriptions (a `Registry::describe` document) instead of asking the
    /// backend with `_rpc describe`: for backends that do not answer it.
    pub fn with_descriptions(mut self, descriptions: Value) -> Self {
        self.descriptions = Some(descriptions);
        self
    }

    /// How long descriptions read from the backend are kept (5 s).
    pub fn with_describe_ttl(mut self, ttl: Duration) -> Self {
        self.describe_ttl = ttl;
        self
    }

    /// What `/readyz`, `/metrics` and the console say about the backends (a Producer's
    /// Consumers, a broker link). Without it, the front is ready while the backend answers
    /// `_rpc describe`.
    pub fn with_backends(mut self, backends: impl Backends) -> Self {
        self.backends = Some(Arc::new(backends));
        self
    }

    /// Serves `GET /metrics` from this recorder (see [`crate::metrics::prometheus`]).
    pub fn with_prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// The title of the OpenAPI document and the console (`rpc`).
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The gateway.
    pub fn build(self) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                transport: self.transport,
                limits: self.limits,
                catalog: Catalog::new(self.descriptions, self.describe_ttl),
                backends: self.backends,
                prometheus: self.prometheus,
                title: self.title,
                draining: AtomicBool::new(false),
            }),
        }
    }
}

impl Gateway {
    /// A builder for a front over `transport`.
    pub fn builder(transport: impl Transport + 'static) -> GatewayBuilder {
        GatewayBuilder {
            transport: LayeredTransport::new(transport),
            limits: Limits::default(),
            descriptions: None,
            backends: None,
            prometheus: None,
            title: "rpc".to_owned(),
            describe_ttl: Duration::from_secs(5),
        }
    }

    /// A front over `transport` with the default limits.
    pub fn new(transport: impl Transport + 'static) -> Self {
        Gateway::builder(transport).build()
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The routes, for serving with [`Gateway::serve`] or nesting in an application of your
    /// own (the limits on headers, connections and writes are then yours to set, and so are
    /// the answers to requests hyper cannot parse).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(console))
            .route("/rpc", get(describe))
            .route("/rpc/{service}/{method}", post(call))
            .route("/openapi.json", get(openapi))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            // After the routes: it applies to the routes already added.
            .method_not_allowed_fallback(method_not_allowed)
            .fallback(not_found)
            .with_state(self.clone())
    }

    /// Marks the front as draining: `/readyz` answers 503 from now on.
    pub(crate) fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }
}

async fn not_found() -> Response {
    crate::metrics::record_call("unknown", "not_found", Duration::ZERO);
    http_error(StatusCode::NOT_FOUND, "not_found", "no such route: calls are POST /rpc/{service}/{method}")
}

/// A known route asked with a method it does not answer (axum adds the `allow` header).
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    crate::metrics::record_call("unknown", "method_not_allowed", Duration::ZERO);
    let message = format!(
        "{method} {}: method not allowed (calls are POST /rpc/{{service}}/{{method}}; the other routes answer GET)",
        catalog::clip(uri.path())
    );
    http_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
}

async fn console(State(gateway): State<Gateway>) -> Response {
    Html(crate::console::page(&gateway.inner.title)).into_response()
}

async fn describe(State(gateway): State<Gateway>) -> Response {
    let inner = &gateway.inner;
    match inner.catalog.get(&inner.transport, None, &Metadata::new()).await {
        Ok(descriptions) => json_response(StatusCode::OK, &descriptions.document),
        Err(error) => error_response(&error),
    }
}

async fn openapi(State(gateway): State<Gateway>) -> Response {
    let inner = &gateway.inner;
    match inner.catalog.get(&inner.transport, None, &Metadata::new()).await {
        Ok(descriptions) => {
            json_response(StatusCode::OK, &crate::openapi::document(&descriptions.document, &inner.title))
        }
        Err(error) => error_response(&error),
    }
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn readyz(State(gateway): State<Gateway>) -> Response {
    let inner = &gateway.inner;
    let draining = inner.draining.load(Ordering::Relaxed);
    let (ready, backends, reason): (bool, Vec<BackendStatus>, Option<String>) = match &inner.backends {
        Some(backends) => {
            let list = backends.backends();
            let ready = list.iter().any(|b| b.up);
            (ready, list, (!ready).then(|| "no backend is up".to_owned()))
        }
        None => match inner.catalog.get(&inner.transport, Some(Duration::from_secs(1)), &Metadata::new()).await {
            Ok(_) => (true, Vec::new(), None),
            Err(e) => (false, Vec::new(), Some(e.to_string())),
        },
    };
    let ready = ready && !draining;
    let reason = if draining { Some("shutting down".to_owned()) } else { reason };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({"ready": ready, "reason": reason, "backends": backends});
    json_response(status, &body)
}

async fn metrics(State(gateway): State<Gateway>) -> Response {
    let inner = &gateway.inner;
    let Some(handle) = &inner.prometheus else {
        return http_error(StatusCode::NOT_FOUND, "not_found", "this front has no metrics recorder");
    };
    if let Some(backends) = &inner.backends {
        crate::metrics::record_backends(&backends.backends());
    }
    let mut response = handle.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// `POST /rpc/{service}/{method}`.
async fn call(
    State(gateway): State<Gateway>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let inner = &gateway.inner;
    let answer = match path {
        Ok(Path((service, method))) => call_inner(inner, &service, &method, &headers, body).await,
        // A segment that is not UTF-8 once percent-decoded: no name to look up.
        Err(rejection) if rejection.status().is_client_error() => Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("cannot read the service and method from the path: {}", rejection.body_text()),
        )),
        Err(rejection) => Err(RpcError::Internal { message: rejection.body_text() }.into()),
    };
    let (target, outcome, response) = match answer {
        Ok((target, value)) => (target, "ok", json_response(StatusCode::OK, &value)),
        Err(Failure::Call(target, error)) => {
            let target = target.unwrap_or_else(|| "unknown".to_owned());
            (target, error.kind(), error_response(&error))
        }
        Err(Failure::Http { status, code, message }) => ("unknown".to_owned(), code, http_error(status, code, message)),
    };
    crate::metrics::record_call(&target, outcome, started.elapsed());
    response
}

enum Failure {
    /// The call failed; the method's target when the descriptions know it.
    Call(Option<String>, Box<RpcError>),
    /// The HTTP request itself was refused before any call: its status, and the envelope's
    /// code (also the outcome in metrics) and message.
    Http { status: StatusCode, code: &'static str, message: String },
}

impl From<RpcError> for Failure {
    fn from(error: RpcError) -> Self {
        Failure::Call(None, Box::new(error))
    }
}

async fn call_inner(
    inner: &Inner,
    service: &str,
    method: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, Value), Failure> {
    let (context, budget) = context_from(headers, &inner.limits)?;
    let bytes = read_body(headers, body, &inner.limits).await?;
    let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(&bytes).map_err(|e| RpcError::bad_request(format!("the body is not valid JSON: {e}")))?
    };
    // The deadline bounds the whole call, the lookup of the method included: a caller waiting
    // on a slow describe request gets its 504 at its deadline, like any other.
    let named = || format!("{}.{}", catalog::clip(service), catalog::clip(method));
    let left = time_left(&context).ok_or_else(|| RpcError::deadline(named(), budget))?;
    let lookup = inner.catalog.method(&inner.transport, service, method, context.metadata());
    let desc = tokio::time::timeout(left, lookup).await.map_err(|_| RpcError::deadline(named(), budget))??;
    let target = desc.target.clone();
    let fail = |error: RpcError| Failure::Call(Some(target.clone()), Box::new(error));
    let args = catalog::arguments(&desc, value).map_err(fail)?;
    // A deadline already passed: the method is not called (a timeout of zero would still
    // poll the call once, and a quick method would run).
    let left = time_left(&context).ok_or_else(|| fail(RpcError::deadline(target.clone(), budget)))?;
    let request = Request::new(service, method, args).with_context(context).in_parameter_order(desc.variadic);
    let reply = match tokio::time::timeout(left, inner.transport.call(request)).await {
        Ok(reply) => reply.map_err(fail)?,
        Err(_) => return Err(fail(RpcError::deadline(target.clone(), budget))),
    };
    Ok((target.clone(), catalog::result_json(&desc, reply)))
}

/// The time left before the call's deadline; `None` once it has passed. A context without a
/// deadline (`max_deadline` of `Duration::MAX`, "no deadline") has all the time there is.
fn time_left(context: &Context) -> Option<Duration> {
    match context.remaining() {
        None => Some(Duration::MAX),
        Some(left) if left.is_zero() => None,
        left => left,
    }
}

/// The call's context from the request's headers (deadline capped, metadata, trace id), and
/// the deadline it was given.
fn context_from(headers: &HeaderMap, limits: &Limits) -> Result<(Context, Duration), Failure> {
    let mut deadline = limits.max_deadline;
    if let Some(value) = single(headers, DEADLINE_HEADER)? {
        let text = value.to_str().unwrap_or_default();
        let ms = (!text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                RpcError::bad_request(format!(
                    "header {DEADLINE_HEADER}: expected a number of milliseconds from 1 to 9999999999, got {}",
                    rpc_core::error::quote(&String::from_utf8_lossy(value.as_bytes()))
                ))
            })?;
        deadline = deadline.min(Duration::from_millis(ms));
    }
    let mut context = Context::new().with_deadline(deadline);
    for name in headers.keys() {
        let Some(key) = name.as_str().strip_prefix(METADATA_PREFIX) else { continue };
        let Some(value) = single(headers, name.as_str())? else { continue };
        let value = value
            .to_str()
            .map_err(|_| RpcError::bad_request(format!("header {name}: metadata values are visible ASCII text")))?;
        context =
            context.with_metadata(key, value).map_err(|e| RpcError::bad_request(format!("header {name}: {e}")))?;
    }
    if let Some(value) = single(headers, TRACE_HEADER)? {
        let id = value.as_bytes();
        if id.is_empty() || id.len() > MAX_TRACE_ID || !id.iter().all(u8::is_ascii_graphic) {
            return Err(RpcError::bad_request(format!(
                "header {TRACE_HEADER}: expected 1 to {MAX_TRACE_ID} visible ASCII characters (no spaces), got {}",
                rpc_core::error::quote(&String::from_utf8_lossy(id))
            ))
            .into());
        }
        context = context.with_trace_id(String::from_utf8_lossy(id));
    }
    Ok((context, deadline))
}

/// The value of header `name`, which must not be given twice: which of two values a proxy or
/// client meant is unknowable, so neither is picked.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, RpcError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    let more = values.count();
    if more > 0 {
        return Err(RpcError::bad_request(format!("header {name}: given {} times; send it once", more + 1)));
    }
    Ok(first)
}

/// The request body, within the limits: JSON only, at most `max_body` bytes, sent within
/// `body_timeout`.
async fn read_body(headers: &HeaderMap, body: Body, limits: &Limits) -> Result<Bytes, Failure> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let essence = content_type.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "the body must be application/json, not {}",
                    rpc_core::error::quote(&String::from_utf8_lossy(content_type.as_bytes()))
                ),
            ));
        }
    }
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {} bytes", limits.max_body),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(limits.body_timeout, axum::body::to_bytes(body, limits.max_body)).await {
        Ok(Ok(bytes)) => {
            if headers.get(header::CONTENT_TYPE).is_none() && !bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "a body needs content-type application/json",
                ));
            }
            Ok(bytes)
        }
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large()),
        Ok(Err(e)) => Err(refuse(StatusCode::BAD_REQUEST, "bad_request", format!("cannot read the body: {e}"))),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the body did not arrive within {} ms", limits.body_timeout.as_millis()),
        )),
    }
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
    Failure::Http { status, code, message: message.into() }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.to_string().contains("length limit exceeded") {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use axum::http::Request as HttpRequest;
    use rpc_core::{MemoryTransport, Registry};
    use tower::ServiceExt;

    use super::*;

    async fn status(gateway: &Gateway, path: &str) -> u16 {
        let request = HttpRequest::get(path).body(Body::empty()).unwrap();
        gateway.router().oneshot(request).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn readyz_turns_503_once_draining_while_healthz_stays_200() {
        let gateway = Gateway::new(MemoryTransport::new(Registry::new()));
        assert_eq!(status(&gateway, "/readyz").await, 200);
        gateway.start_draining();
        assert_eq!(status(&gateway, "/readyz").await, 503);
        assert_eq!(status(&gateway, "/healthz").await, 200);
    }

    #[tokio::test]
    async fn readyz_follows_the_backends() {
        let up = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&up);
        let gateway = Gateway::builder(MemoryTransport::new(Registry::new()))
            .with_backends(move || vec![BackendStatus::new("broker", seen.load(Ordering::Relaxed))])
            .build();
        assert_eq!(status(&gateway, "/readyz").await, 503);
        up.store(true, Ordering::Relaxed);
        assert_eq!(status(&gateway, "/readyz").await, 200);
    }
}
