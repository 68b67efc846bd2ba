//! What every example program shares: logging set up the same way, SIGTERM handled like
//! Ctrl-C, flags checked with clear messages, and host names resolved wherever an address is
//! taken.
//!
//! Examples include it with `mod cli;`; it is a directory so Cargo does not take it for an
//! example of its own.
// Each example uses a different part of this module.
#![allow(dead_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

/// The default log filter of the examples: warnings and errors, without lapin's own lines
/// (the transport reports the same failures itself: a refused login, a lost link, a failed
/// reconnection). `RUST_LOG` replaces it entirely: `RUST_LOG=info,lapin=warn`.
pub const DEFAULT_LOG_FILTER: &str = "warn,lapin=off";

/// Logs to stderr with `RUST_LOG`'s filter, or `default` when it is unset or invalid;
/// colours only when stderr is a terminal and `NO_COLOR` is unset.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

/// The signals that stop a long-running example gracefully: Ctrl-C (SIGINT) and SIGTERM
/// (what systemd, Docker and Kubernetes send). Installed before the program says it is
/// ready, so a signal can never find it unprepared and kill it outright.
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Takes over SIGINT and SIGTERM for this process (inside a Tokio runtime).
    ///
    /// # Errors
    /// When the handlers cannot be installed.
    pub fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Waits for the first of them; its name (`Ctrl-C`, `SIGTERM`).
    pub async fn recv(mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "Ctrl-C",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// A count that must be at least 1 (`--pool`, `--consumers`, `--max-connections`, ...).
pub fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?} is not a whole number: {e}")),
    }
}

/// The shortest duration a flag in seconds accepts: 1 ms.
pub const MIN_SECONDS: Duration = Duration::from_millis(1);

/// A duration in seconds (`30`, `0.5`, `1e-3`): at least 1 ms, finite.
pub fn seconds(s: &str) -> Result<Duration, String> {
    let value: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if value.is_nan() {
        return Err(format!("{s:?} is not a number of seconds"));
    }
    if value <= 0.0 {
        return Err(format!("must be more than 0 seconds (got {s})"));
    }
    match Duration::try_from_secs_f64(value) {
        Ok(d) if d >= MIN_SECONDS => Ok(d),
        Ok(_) => Err(format!("{s} s is shorter than 1 ms, the shortest duration accepted (0.001)")),
        Err(_) => Err(format!("{s} s is too long to represent")),
    }
}

/// Every address `target` (`host:port`, `127.0.0.1:9001`, `[::1]:9001`, `localhost:9001`)
/// resolves to, in the resolver's order.
///
/// # Errors
/// When it has no port or the name does not resolve: a message naming `flag` and `target`.
pub async fn resolve(flag: &str, target: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let Some((host, port)) = target.rsplit_once(':') else {
        return Err(format!("{flag} {target}: expected host:port, e.g. 127.0.0.1:9001 or localhost:9001"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{flag} {target}: expected host:port with a port from 0 to 65535, e.g. localhost:9001"));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("{flag} {target}: cannot resolve '{host}': {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{flag} {target}: '{host}' resolves to no address"));
    }
    Ok(addrs)
}

/// Binds the first address `target` resolves to that can be bound.
///
/// # Errors
/// As [`resolve`], or when no address can be bound.
pub async fn bind(flag: &str, target: &str) -> Result<TcpListener, String> {
    let mut last = None;
    for addr in resolve(flag, target).await? {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(format!("cannot listen on {target}: {}", last.unwrap_or_default()))
}

/// The address of the server `target` names. When the name resolves to several addresses,
/// the first that answers the protocol's health probe (`_rpc health`), else the first.
///
/// # Errors
/// As [`resolve`].
pub async fn server(flag: &str, target: &str) -> Result<SocketAddr, String> {
    let addrs = resolve(flag, target).await?;
    if addrs.len() > 1 {
        for addr in &addrs {
            let probe = rpc::tcp::system::probe(*addr, Duration::from_millis(500), Duration::from_secs(1));
            if probe.await.is_ok() {
                return Ok(*addr);
            }
        }
    }
    Ok(addrs[0])
}
