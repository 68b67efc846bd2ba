//! `cargo run --example client -- --tcp 127.0.0.1:9000 calculator calculate 2 + 2`: sends one
//! task and prints its result on stdout, or its error on stderr with exit code 1.
//!
//! Point `--tcp` at the producer or straight at a consumer: they speak the same protocol.
//! `--tcp` takes a host name too (`localhost:9000`). Quote `*` in a shell (`'*'`), or it
//! expands to file names.
//!
//! `cargo run --example client -- --amqp calculator.calculate a=2 op=+ b=2` calls any method
//! over RabbitMQ (`$RABBITMQ_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`) by its
//! name, the routing key: `service.method` for a served `#[rpc_service]`, or the name a
//! handler was registered under (`foo`, aio-pika's `rpc.register("foo", ...)`). Arguments are
//! `name=value`: a value that parses as JSON is sent as JSON (`2`, `-0.5`, `true`, `null`,
//! `[1,0]`, `{"x":1}`, `'"42"'` for the string `42`), anything else as a string (`+`, `two`).
//! For the example services (`calculator.*`, `neural_net.*`) the client knows the parameters,
//! so positional arguments work too (`calculator.calculate 2 + 2`); for any other method it
//! says how to name them. `--json` sends the call as JSON instead of MessagePack, which a handler registered with
//! aio-pika's `JsonRPC` needs. `--timeout` takes seconds (`0.5` too). Options go before the
//! method.
//!
//! `--describe` (no call) lists what is served instead: services, methods with their
//! parameters and types, return types and docs. Over RabbitMQ every server of the vhost answers
//! (the answers are gathered for 2 s, or `--timeout` if shorter), so servers of different
//! services are all listed; over TCP and HTTP, the server, the Producer or the front answers `_rpc describe`.
//! `$RABBITMQ_URL` may list several brokers, comma-separated (the nodes of a cluster).
//!
//! When an AMQP call times out, the client asks the broker about the method's queue and says
//! which it was: the queue exists but no server consumes it (no server is running), or a
//! server took the request and did not answer in time.
//!
//! `cargo run --example client -- --http http://127.0.0.1:8080 calculator.calculate 2 + 2`
//! calls through the HTTP/JSON front (`producer --http`): positional arguments become a JSON
//! array, `name=value` pairs a JSON object (values read as JSON when they are, else strings).
//!
//! Exit codes: 0 with the result on stdout; 1 with `ERROR <kind>: <message>` on stderr when
//! the call failed (the broker is unreachable, nobody serves the method, the handler failed,
//! the deadline passed); 2 when the command line is wrong.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use rpc::amqp::{CallOptions, Codec, Rpc};
use rpc::core::{text, Args, Request, RpcError, Service, Transport};
use rpc::tcp::TcpTransport;
use rpc_testkit::{services, DEFAULT_RABBITMQ_URL};
use serde_json::{Map, Value};

/// A client: makes one call to a server, over TCP to the Producer or a Consumer
/// (`--tcp 127.0.0.1:9000 calculator calculate 2 + 2`) or over RabbitMQ
/// (`--amqp calculator.calculate a=2 op=+ b=2`), and prints the result on stdout, or the error
/// on stderr with exit code 1.
#[derive(Debug, Parser)]
#[command(name = "client", group(ArgGroup::new("transport").required(true).args(["tcp", "amqp", "http"])))]
pub struct Cli {
    /// The server (producer or consumer) to call over TCP: host:port, a host name too.
    #[arg(long)]
    pub tcp: Option<String>,
    /// Call over RabbitMQ (`$RABBITMQ_URL`) instead.
    #[arg(long)]
    pub amqp: bool,
    /// Call the HTTP/JSON front at this URL instead (`http://127.0.0.1:8080`).
    #[arg(long)]
    pub http: Option<String>,
    /// List the services, methods, parameters and docs served (`--tcp`, `--http`, `--amqp`)
    /// instead of making a call.
    #[arg(long, conflicts_with = "call")]
    pub describe: bool,
    /// Send the call as JSON rather than MessagePack (AMQP), e.g. to aio-pika's `JsonRPC`.
    #[arg(long, conflicts_with = "tcp")]
    pub json: bool,
    /// Seconds to wait for the answer (`0.5` too; at least 0.001).
    #[arg(long, default_value = "30", value_parser = cli::seconds)]
    pub timeout: Duration,
    /// The call. TCP: `service method [args...]`. AMQP: `method [name=value...]`. HTTP:
    /// `service.method [args...]` or `service.method [name=value...]`.
    #[arg(required_unless_present = "describe", num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub call: Vec<String>,
}

/// Why the client did not print a result.
#[derive(Debug)]
pub enum Failure {
    /// The command line is wrong (exit code 2).
    Usage(String),
    /// The call failed (exit code 1).
    Call(RpcError),
}

/// `name=value` pairs as named arguments, in order: a value that parses as JSON is that JSON
/// value, anything else is a string (`op=+` gives `"+"`, `a=2` gives `2`, `s="2"` the string
/// `2`).
///
/// # Errors
/// When a pair has no `=` or an empty name, or a name is given twice.
pub fn parse_kwargs<S: AsRef<str>>(pairs: &[S]) -> Result<Args, String> {
    let mut map = Map::new();
    for pair in pairs {
        let pair = pair.as_ref();
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("argument {pair:?} is not name=value"));
        };
        if name.is_empty() {
            return Err(format!("argument {pair:?} has no name before '='"));
        }
        if map.contains_key(name) {
            return Err(format!("argument '{name}' is given twice"));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        map.insert(name.to_owned(), value);
    }
    Ok(Args::Named(map))
}

/// The parameters of `method` (`service.method`) when it is one of the example services'.
fn known_method(method: &str) -> Option<&'static rpc::core::MethodInfo> {
    let (service, name) = method.split_once('.')?;
    let info = match service {
        "calculator" => services::Calculator.info(),
        // Building the network trains it (a fraction of a second); only this path needs it.
        "neural_net" => services::NeuralNet::shared().info(),
        _ => return None,
    };
    info.method(name)
}

/// The arguments of an AMQP call: `name=value` pairs ([`parse_kwargs`]), or, for a method
/// whose parameters the client knows, positional tokens named from them
/// (`calculator.calculate 2 + 2` is `a=2 op=+ b=2`).
///
/// # Errors
/// A message showing the `name=value` form, when tokens lack names the client cannot supply.
pub fn amqp_args(method: &str, tokens: &[String]) -> Result<Args, String> {
    let positional = tokens.iter().any(|t| !t.contains('='));
    if !positional {
        return parse_kwargs(tokens);
    }
    let all_positional = tokens.iter().all(|t| !t.contains('='));
    match known_method(method) {
        Some(info) if all_positional => info.args_from_text(tokens.to_vec()).map_err(|e| e.to_string()),
        Some(info) => {
            let example: Vec<String> = info.params.iter().map(|p| format!("{}=...", p.name)).collect();
            Err(format!(
                "give every argument by position or every one as name=value, not both: {method} {}",
                example.join(" ")
            ))
        }
        None => {
            let first = tokens.iter().find(|t| !t.contains('=')).map_or("", String::as_str);
            Err(format!(
                "over AMQP each argument is name=value ({first:?} is not), and the client does not know the \
                 parameters of '{method}': write e.g. `{method} x=1 y=two` with the method's own parameter names"
            ))
        }
    }
}

/// Calls `method` with `args` on the broker at `url`, as JSON when `json`, waiting at most
/// [`CONNECT_TIMEOUT`] for the connection, then `timeout` for the reply.
///
/// # Errors
/// The call's [`RpcError`]; an unreachable broker is [`RpcError::Transport`] (password
/// redacted).
pub async fn call_amqp(url: &str, method: &str, args: Args, json: bool, timeout: Duration) -> Result<Value, RpcError> {
    let unreachable = || {
        let url = rpc::amqp::wire::redact_url(url);
        RpcError::Transport { message: format!("cannot connect to {url}: no answer in time"), source: None }
    };
    let rpc = tokio::time::timeout(CONNECT_TIMEOUT, Rpc::connect(url)).await.map_err(|_| unreachable())??;
    let mut options = CallOptions::new().with_deadline(timeout);
    if json {
        options = options.with_codec(Codec::Json);
    }
    let result = rpc.call_with::<Value>(method, args, options).await;
    // The answer is in; a failing close cannot change it.
    let _ = rpc.close().await;
    result
}

/// How long connecting to the broker may take, apart from `--timeout` (the call's own
/// deadline): a short deadline must not fail a call because a busy broker took a while to
/// open the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `--describe` gathers the answers of the servers of a vhost.
pub const DESCRIBE_WAIT: Duration = Duration::from_secs(2);

/// What the servers at `url` serve ([`Rpc::describe`]), gathered for `wait`.
///
/// # Errors
/// As [`call_amqp`]; [`RpcError::Unavailable`] when no server answers.
pub async fn describe_amqp(url: &str, wait: Duration, timeout: Duration) -> Result<Value, RpcError> {
    let unreachable = || {
        let url = rpc::amqp::wire::redact_url(url);
        RpcError::Transport { message: format!("cannot connect to {url}: no answer in time"), source: None }
    };
    let rpc =
        tokio::time::timeout(CONNECT_TIMEOUT.max(timeout), Rpc::connect(url)).await.map_err(|_| unreachable())??;
    let described = rpc.describe(wait).await;
    let _ = rpc.close().await;
    described
}

/// A description (`Rpc::describe`, `Registry::describe`: services rendered by
/// `ServiceInfo::describe_with`) as text: each service with its doc, each method as
/// `target(param: Type, ...) -> Type` with its doc, then methods served outside any service.
pub fn render_description(described: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let services = described["services"].as_array().unwrap_or(&empty);
    if let Some(servers) = described["servers"].as_u64() {
        out.push_str(&format!("{servers} server(s) answered\n"));
    }
    let mut in_services = std::collections::BTreeSet::new();
    for service in services {
        let name = service["name"].as_str().unwrap_or("?");
        out.push_str(&format!("\n{name}"));
        match service["doc"].as_str() {
            Some(doc) if !doc.is_empty() => out.push_str(&format!(": {}\n", first_line(doc))),
            _ => out.push('\n'),
        }
        for method in service["methods"].as_array().unwrap_or(&empty) {
            let target = method["target"].as_str().unwrap_or("?");
            in_services.insert(target.to_owned());
            let params: Vec<String> = method["params"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|p| format!("{}: {}", p["name"].as_str().unwrap_or("?"), p["type"].as_str().unwrap_or("?")))
                .collect();
            let variadic = if method["variadic"] == true { "..." } else { "" };
            let returns = method["returns"]["type"].as_str().unwrap_or("?");
            out.push_str(&format!("  {target}({}{variadic}) -> {returns}\n", params.join(", ")));
            if let Some(doc) = method["doc"].as_str().filter(|d| !d.is_empty()) {
                for line in doc.lines() {
                    let line = format!("      {line}");
                    out.push_str(line.trim_end());
                    out.push('\n');
                }
            }
        }
    }
    let others: Vec<&str> = described["methods"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(Value::as_str)
        .filter(|m| !in_services.contains(*m))
        .collect();
    if !others.is_empty() {
        out.push_str(&format!("\nother methods (no description): {}\n", others.join(", ")));
    }
    out.trim_end().to_owned()
}

fn first_line(doc: &str) -> &str {
    doc.lines().next().unwrap_or_default()
}

/// The example's `main` without the process around it: makes the call `cli` describes
/// (over AMQP, on the broker at `url`) and returns the text to print.
///
/// # Errors
/// [`Failure::Usage`] for a call the command line cannot express, [`Failure::Call`] when the
/// call fails.
pub async fn run(cli: &Cli, url: &str) -> Result<String, Failure> {
    if cli.describe {
        return describe(cli, url).await;
    }
    let value = if let Some(front) = &cli.http {
        let transport = rpc::http::HttpTransport::new(front).map_err(|e| Failure::Usage(format!("--http {e}")))?;
        let (target, tokens) = cli.call.split_first().ok_or_else(|| Failure::Usage("no method given".into()))?;
        let Some((service, method)) = target.split_once('.') else {
            return Err(Failure::Usage(format!("over HTTP the call is `service.method [args...]`, not {target:?}")));
        };
        let named = tokens.iter().filter(|t| t.contains('=')).count();
        let args = match named {
            0 => Args::Text(tokens.to_vec()),
            n if n == tokens.len() => parse_kwargs(tokens).map_err(Failure::Usage)?,
            _ => {
                return Err(Failure::Usage(
                    "give every argument by position or every one as name=value, not both".into(),
                ))
            }
        };
        let request = Request::new(service, method, args).with_deadline(cli.timeout);
        match transport.call(request).await.map_err(Failure::Call)? {
            rpc::Reply::Value(value) => value,
            other => Value::String(other.into_text()),
        }
    } else if cli.amqp {
        let (method, pairs) = cli.call.split_first().ok_or_else(|| Failure::Usage("no method given".into()))?;
        let args = amqp_args(method, pairs).map_err(Failure::Usage)?;
        call_amqp(url, method, args, cli.json, cli.timeout).await.map_err(Failure::Call)?
    } else {
        let Some(target) = &cli.tcp else { return Err(Failure::Usage("give --tcp ADDR or --amqp".into())) };
        let addr = cli::server("--tcp", target).await.map_err(Failure::Usage)?;
        let [service, method, args @ ..] = &cli.call[..] else {
            return Err(Failure::Usage("over TCP the call is `service method [args...]`".into()));
        };
        let request = Request::new(service, method, Args::Text(args.to_vec())).with_deadline(cli.timeout);
        return TcpTransport::new(addr).call(request).await.map(|reply| reply.into_text()).map_err(Failure::Call);
    };
    Ok(text::render(&value))
}

/// `--describe`: asks what is served (`_rpc describe`; over RabbitMQ every server of the
/// vhost) and lists it.
async fn describe(cli: &Cli, url: &str) -> Result<String, Failure> {
    if cli.amqp {
        let described = describe_amqp(url, DESCRIBE_WAIT.min(cli.timeout), cli.timeout).await.map_err(Failure::Call)?;
        return Ok(render_description(&described));
    }
    let request = Request::new(rpc::core::service::RESERVED_PREFIX, rpc::core::service::DESCRIBE, Args::Text(vec![]))
        .with_deadline(cli.timeout);
    let reply = if let Some(front) = &cli.http {
        let transport = rpc::http::HttpTransport::new(front).map_err(|e| Failure::Usage(format!("--http {e}")))?;
        transport.call(request).await
    } else if let Some(target) = &cli.tcp {
        let addr = cli::server("--tcp", target).await.map_err(Failure::Usage)?;
        TcpTransport::new(addr).call(request).await
    } else {
        return Err(Failure::Usage("--describe asks a server over --tcp, --http or --amqp".into()));
    };
    let document = match reply.map_err(Failure::Call)? {
        rpc::Reply::Value(value) => value,
        other => serde_json::from_str(&other.into_text())
            .map_err(|e| Failure::Call(RpcError::protocol(format!("the descriptions are not JSON: {e}"))))?,
    };
    Ok(render_description(&document))
}

/// Why an AMQP call to `method` timed out, from the broker's own count of the consumers on
/// the method's queue: no server is running, or a server took the request and did not answer
/// in time. `None` when the broker cannot tell (unreachable, or it refuses to say).
pub async fn explain_timeout(url: &str, method: &str, timeout: Duration) -> Option<String> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;

    let ask = async {
        // The first broker of a list: the queue is the cluster's.
        let first = rpc::amqp::wire::broker_urls(url)[0];
        let conn = rpc::amqp::Connection::connect(first, rpc::amqp::ConnectionProperties::default()).await.ok()?;
        let channel = conn.create_channel().await.ok()?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = channel.queue_declare(method.into(), passive, FieldTable::default()).await;
        let _ = conn.close(200, "OK".into()).await;
        Some(match declared {
            Ok(queue) if queue.consumer_count() == 0 => format!(
                "the queue '{method}' exists but has 0 consumers: no server is running \
                 (requests waiting in it: {})",
                queue.message_count()
            ),
            Ok(queue) => format!(
                "the queue '{method}' has {} consumer(s): a server took the request but did not answer within {}",
                queue.consumer_count(),
                fmt_seconds(timeout)
            ),
            // NOT_FOUND: the queue went away after the request was routed to it.
            Err(_) => format!("the queue '{method}' no longer exists: its server went away with it"),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), ask).await.ok().flatten()
}

/// `0.5 s`, `30 s`.
fn fmt_seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::init_logging(cli::DEFAULT_LOG_FILTER);
    let cli = Cli::parse();
    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.into());

    match run(&cli, &url).await {
        Ok(result) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Err(Failure::Call(e)) => {
            eprintln!("ERROR {}: {e}", e.kind());
            if let (true, RpcError::DeadlineExceeded { .. }, Some(method)) = (cli.amqp, &e, cli.call.first()) {
                if let Some(why) = explain_timeout(&url, method, cli.timeout).await {
                    eprintln!("client: {why}");
                }
            }
            ExitCode::FAILURE
        }
        Err(Failure::Usage(message)) => {
            eprintln!("client: {message}");
            ExitCode::from(2)
        }
    }
}
