//! [`Catalog`]: what the backend serves, read from its descriptions (`_rpc describe`, or
//! given at build time), and how a JSON body becomes the arguments of one method.
//!
//! The descriptions give each method's parameters in order, so named arguments can travel
//! over a text transport (which sends them as positional tokens), positional JSON arrays can
//! be named, and a text reply can be read back as the JSON value the method's return type
//! says it is.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rpc_core::service::{DESCRIBE, RESERVED_PREFIX};
use rpc_core::{Args, Context, Metadata, Reply, Request, RpcError, Transport};
use serde_json::{Map, Value};
use tokio::sync::watch;

/// One method, as its description gives it.
#[derive(Debug, Clone)]
pub(crate) struct MethodDesc {
    pub(crate) target: String,
    pub(crate) params: Vec<(String, Value)>,
    pub(crate) variadic: bool,
    pub(crate) returns: Value,
}

/// Every service's description: the JSON document (`{"services": [..], "definitions": {..}}`)
/// and the methods read from it.
#[derive(Debug)]
pub(crate) struct Descriptions {
    pub(crate) document: Value,
    services: Vec<(String, Vec<(String, MethodDesc)>)>,
}

impl Descriptions {
    /// Reads a describe document; anything it does not understand is left out.
    pub(crate) fn parse(document: Value) -> Self {
        let str_of = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        let services = document
            .get("services")
            .and_then(Value::as_array)
            .map(|services| {
                services
                    .iter()
                    .map(|service| {
                        let methods = service
                            .get("methods")
                            .and_then(Value::as_array)
                            .map(|methods| {
                                methods
                                    .iter()
                                    .map(|m| {
                                        let params = m
                                            .get("params")
                                            .and_then(Value::as_array)
                                            .map(|ps| {
                                                ps.iter()
                                                    .map(|p| {
                                                        let schema = p.get("schema").cloned().unwrap_or(Value::Null);
                                                        (str_of(p, "name"), schema)
                                                    })
                                                    .collect()
                                            })
                                            .unwrap_or_default();
                                        let desc = MethodDesc {
                                            target: str_of(m, "target"),
                                            params,
                                            variadic: m.get("variadic").and_then(Value::as_bool).unwrap_or(false),
                                            returns: m.pointer("/returns/schema").cloned().unwrap_or(Value::Null),
                                        };
                                        (str_of(m, "name"), desc)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        (str_of(service, "name"), methods)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Descriptions { document, services }
    }

    /// The method `service.method`, or the error a server gives for it.
    pub(crate) fn method(&self, service: &str, method: &str) -> Result<&MethodDesc, RpcError> {
        let Some((_, methods)) = self.services.iter().find(|(name, _)| name == service) else {
            return Err(RpcError::UnknownService {
                service: clip(service),
                known: self.services.iter().map(|(name, _)| name.clone()).collect(),
            });
        };
        methods.iter().find(|(name, _)| name == method).map(|(_, m)| m).ok_or_else(|| RpcError::UnknownMethod {
            service: service.to_owned(),
            method: clip(method),
            known: methods.iter().map(|(name, _)| name.clone()).collect(),
        })
    }
}

/// A name from a URL, cut for an error message.
pub(crate) fn clip(name: &str) -> String {
    if name.len() <= 64 {
        return name.to_owned();
    }
    let mut end = 64;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// Where the descriptions come from, and the last ones read.
pub(crate) struct Catalog {
    fixed: Option<Arc<Descriptions>>,
    /// Shared with the task reading the descriptions, which outlives any one caller.
    state: Arc<Mutex<State>>,
    ttl: Duration,
}

/// What the catalog knows: every call reads it, so a plain lock, never held across an await.
#[derive(Default)]
struct State {
    /// The last descriptions read, and when.
    cached: Option<(Instant, Arc<Descriptions>)>,
    /// The last read that failed, and when: for [`FAILURE_MEMORY`], callers get its error
    /// instead of asking a backend that just failed again.
    failed: Option<(Instant, RpcError)>,
    /// The read in flight, with the metadata it carries: callers that need descriptions wait
    /// for its outcome instead of starting reads of their own.
    reading: Option<(Metadata, watch::Receiver<Option<Outcome>>)>,
}

/// Whether a failed read says something about the backend (it is down, slow, or answered
/// nonsense), which every caller may be told, rather than about the request that one caller's
/// metadata made (refused credentials, a layer's refusal), which only that caller is.
fn about_the_backend(error: &RpcError) -> bool {
    matches!(
        error,
        RpcError::Unavailable { .. }
            | RpcError::Overloaded { .. }
            | RpcError::Transport { .. }
            | RpcError::Closed
            | RpcError::DeadlineExceeded { .. }
            | RpcError::Protocol { .. }
            | RpcError::Decode { .. }
    )
}

/// The outcome of one read of the descriptions.
type Outcome = Result<Arc<Descriptions>, RpcError>;

/// How long a describe request may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How soon a method the descriptions lack makes them be read again.
const MISS_REFRESH: Duration = Duration::from_secs(1);

/// How long a failed read answers for the backend.
const FAILURE_MEMORY: Duration = Duration::from_secs(1);

impl Catalog {
    /// Descriptions read from the backend and kept for `ttl`, or `fixed` ones for good.
    pub(crate) fn new(fixed: Option<Value>, ttl: Duration) -> Self {
        Catalog { fixed: fixed.map(|d| Arc::new(Descriptions::parse(d))), state: Arc::default(), ttl }
    }

    /// The descriptions: the fixed ones, the cached ones while fresh, else the backend's.
    ///
    /// One read at a time goes to the backend, in a task of its own (at most
    /// [`DESCRIBE_TIMEOUT`]); every caller that needs it meanwhile waits for that read and
    /// gets its outcome, failure included. Dropping the future stops the wait, not the read,
    /// so a caller bounds the wait by its own deadline and the read still serves the others.
    ///
    /// # Errors
    /// The describe request's error when the backend cannot answer, or answered so within
    /// the last [`FAILURE_MEMORY`].
    /// The describe request carries `metadata` (the caller's credentials, for a backend
    /// behind an auth layer); a refusal of the caller's credentials (`unauthenticated`) is
    /// not shared with callers whose metadata differs, nor remembered.
    pub(crate) async fn get<T: Transport + Clone + 'static>(
        &self,
        transport: &T,
        max_age: Option<Duration>,
        metadata: &Metadata,
    ) -> Result<Arc<Descriptions>, RpcError> {
        if let Some(fixed) = &self.fixed {
            return Ok(Arc::clone(fixed));
        }
        let max_age = max_age.unwrap_or(self.ttl);
        let mut retried = false;
        loop {
            let (mut reading, read_with) = {
                let mut state = lock(&self.state);
                if let Some((_, descriptions)) = state.cached.as_ref().filter(|(at, _)| at.elapsed() < max_age) {
                    return Ok(Arc::clone(descriptions));
                }
                if let Some((_, error)) = state.failed.as_ref().filter(|(at, _)| at.elapsed() < FAILURE_MEMORY) {
                    return Err(error.clone());
                }
                match &state.reading {
                    Some((read_with, reading)) => (reading.clone(), read_with.clone()),
                    None => {
                        let reading = self.start_read(transport.clone(), metadata.clone());
                        state.reading = Some((metadata.clone(), reading.clone()));
                        (reading, metadata.clone())
                    }
                }
            };
            let waited = reading.wait_for(Option::is_some).await.map(|outcome| outcome.clone());
            let outcome = match waited {
                Ok(outcome) => outcome.unwrap_or_else(|| Err(ended_unanswered())),
                Err(_) => {
                    // The read's task ended without an outcome (it panicked, or its runtime
                    // stopped): forget it, and start another once.
                    let mut state = lock(&self.state);
                    if state.reading.as_ref().is_some_and(|(_, r)| r.same_channel(&reading)) {
                        state.reading = None;
                    }
                    if !retried {
                        retried = true;
                        continue;
                    }
                    Err(ended_unanswered())
                }
            };
            match outcome {
                // About another caller's request (its credentials, its metadata), not
                // necessarily about this one's.
                Err(error) if !about_the_backend(&error) && read_with != *metadata => continue,
                outcome => return outcome,
            }
        }
    }

    /// Starts reading the descriptions with `metadata`; the receiver gets the outcome, which
    /// is also kept in the state.
    fn start_read<T: Transport + 'static>(&self, transport: T, metadata: Metadata) -> watch::Receiver<Option<Outcome>> {
        let (done, reading) = watch::channel(None);
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            let outcome = read(&transport, metadata).await;
            let mut state = lock(&state);
            state.reading = None;
            match &outcome {
                Ok(descriptions) => {
                    state.cached = Some((Instant::now(), Arc::clone(descriptions)));
                    state.failed = None;
                }
                Err(error) if about_the_backend(error) => state.failed = Some((Instant::now(), error.clone())),
                // About the caller's request (its credentials, its metadata): not held
                // against the others.
                Err(_) => {}
            }
            drop(state);
            let _ = done.send(Some(outcome));
        });
        reading
    }

    /// The method `service.method`, reading the descriptions again (at most every second)
    /// when the cached ones lack it.
    pub(crate) async fn method<T: Transport + Clone + 'static>(
        &self,
        transport: &T,
        service: &str,
        method: &str,
        metadata: &Metadata,
    ) -> Result<MethodDesc, RpcError> {
        let descriptions = self.get(transport, None, metadata).await?;
        match descriptions.method(service, method) {
            Ok(m) => Ok(m.clone()),
            Err(miss) if self.fixed.is_some() => Err(miss),
            Err(_) => self.get(transport, Some(MISS_REFRESH), metadata).await?.method(service, method).cloned(),
        }
    }
}

/// Asks the backend for its descriptions (`_rpc describe`).
async fn read<T: Transport>(transport: &T, metadata: Metadata) -> Outcome {
    let request = Request::new(RESERVED_PREFIX, DESCRIBE, Args::Text(Vec::new()))
        .with_context(Context::new().with_deadline(DESCRIBE_TIMEOUT).with_all_metadata(metadata));
    let not_json = |e: serde_json::Error| RpcError::protocol(format!("the backend's descriptions are not JSON: {e}"));
    // Bounded here too: a transport that overlooks the request's deadline would otherwise
    // hold the one read in flight, and every call waiting on it, for good.
    let called = tokio::time::timeout(DESCRIBE_TIMEOUT, transport.call(request))
        .await
        .map_err(|_| RpcError::deadline(format!("{RESERVED_PREFIX}.{DESCRIBE}"), DESCRIBE_TIMEOUT))?;
    let document = match called? {
        Reply::Value(v) => v,
        Reply::Text(text) => serde_json::from_str(&text).map_err(not_json)?,
        other => serde_json::from_str(&other.into_text()).map_err(not_json)?,
    };
    Ok(Arc::new(Descriptions::parse(document)))
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ended_unanswered() -> RpcError {
    RpcError::Internal { message: "reading the backend's descriptions ended without an answer".to_owned() }
}

/// The arguments of a call to `method` from a JSON body: an object names them, an array gives
/// them in order. The result is in parameter order (so a text transport can send it), a
/// variadic last parameter as one array.
///
/// # Errors
/// [`RpcError::UnexpectedArgument`], [`RpcError::MissingArgument`],
/// [`RpcError::ArgumentCount`], or [`RpcError::BadRequest`] for a body that is neither.
pub(crate) fn arguments(method: &MethodDesc, body: Value) -> Result<Args, RpcError> {
    let param_list = || method.params.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>();
    match body {
        Value::Object(mut given) => {
            if let Some(name) = given.keys().find(|k| !method.params.iter().any(|(p, _)| p == *k)) {
                return Err(RpcError::UnexpectedArgument {
                    target: method.target.clone(),
                    name: clip(name),
                    params: param_list(),
                });
            }
            let mut ordered = Map::new();
            for (name, schema) in &method.params {
                match given.remove(name) {
                    Some(value) => {
                        ordered.insert(name.clone(), value);
                    }
                    None if accepts_null(schema) => {
                        ordered.insert(name.clone(), Value::Null);
                    }
                    None => {
                        return Err(RpcError::MissingArgument {
                            target: method.target.clone(),
                            param: name.clone(),
                            ty: type_name(schema),
                        })
                    }
                }
            }
            Ok(Args::Named(ordered))
        }
        Value::Array(mut values) => {
            let count = method.params.len();
            let fixed = if method.variadic { count.saturating_sub(1) } else { count };
            if values.len() < fixed || (!method.variadic && values.len() > fixed) {
                return Err(RpcError::ArgumentCount {
                    target: method.target.clone(),
                    expected: fixed,
                    variadic: method.variadic,
                    got: values.len(),
                    params: param_list(),
                });
            }
            let rest = values.split_off(fixed);
            let mut ordered: Map<String, Value> =
                method.params.iter().map(|(name, _)| name.clone()).zip(values).collect();
            if let (true, Some((last, _))) = (method.variadic, method.params.last()) {
                ordered.insert(last.clone(), Value::Array(rest));
            }
            Ok(Args::Named(ordered))
        }
        other => Err(RpcError::bad_request(format!(
            "{}: the body must be a JSON object (named arguments) or a JSON array (positional), not {}",
            method.target,
            json_type(&other)
        ))),
    }
}

/// The result of a call as JSON: a value as it is; text (from a text transport) read as the
/// method's return type says (a string stays a string, anything else is read as JSON).
pub(crate) fn result_json(method: &MethodDesc, reply: Reply) -> Value {
    match reply {
        Reply::Value(value) => value,
        Reply::Text(text) => {
            if method.returns.get("type").and_then(Value::as_str) == Some("string") {
                return Value::String(text);
            }
            let value = rpc_core::text::from_token::<Value>(&text).unwrap_or(Value::String(text));
            match (&value, method.returns.get("type").and_then(Value::as_str)) {
                // `4` from a text reply of an f64 method is the float it was.
                (Value::Number(n), Some("number")) if !n.is_f64() => {
                    n.as_f64().and_then(serde_json::Number::from_f64).map_or(value, Value::Number)
                }
                _ => value,
            }
        }
        other => Value::String(other.into_text()),
    }
}

/// Whether a parameter of this schema may be left out (an `Option`).
fn accepts_null(schema: &Value) -> bool {
    let has_null = |t: &Value| match t {
        Value::String(s) => s == "null",
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some("null")),
        _ => false,
    };
    if schema.get("type").is_some_and(has_null) {
        return true;
    }
    ["anyOf", "oneOf"].iter().any(|key| {
        schema.get(*key).and_then(Value::as_array).is_some_and(|alternatives| alternatives.iter().any(accepts_null))
    })
}

/// A short name of the type a schema describes, for an error message.
fn type_name(schema: &Value) -> String {
    match (schema.get("type"), schema.get("$ref")) {
        (Some(Value::String(t)), _) => t.clone(),
        (_, Some(Value::String(r))) => r.rsplit('/').next().unwrap_or(r).to_owned(),
        (Some(other), _) => other.to_string(),
        _ => "any".to_owned(),
    }
}

/// `null`, `a number`, ... for messages.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
