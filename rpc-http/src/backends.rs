//! [`Backends`]: what the front says about the servers behind its transport (`/readyz`,
//! `/metrics`, the console).

use rpc_transport_tcp::{ConsumerState, Producer};
use serde::Serialize;

/// One backend as the front reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStatus {
    /// Its name or address (`127.0.0.1:9001`, `rabbitmq`).
    pub name: String,
    /// Whether it is given calls now.
    pub up: bool,
    /// Its state in words (`up`, `down`, `unprobed`, ...).
    pub state: String,
    /// Calls in flight to it.
    pub in_flight: u64,
    /// Calls it answered.
    pub served: u64,
    /// Calls and probes that failed on it.
    pub failures: u64,
    /// Why it is not up, when it is not.
    pub reason: Option<String>,
}

impl BackendStatus {
    /// A backend that is up or down, with no counters.
    pub fn new(name: impl Into<String>, up: bool) -> Self {
        BackendStatus {
            name: name.into(),
            up,
            state: if up { "up" } else { "down" }.to_owned(),
            in_flight: 0,
            served: 0,
            failures: 0,
            reason: None,
        }
    }
}

/// A source of [`BackendStatus`]es; cheap to ask (no I/O).
pub trait Backends: Send + Sync + 'static {
    /// Every backend, now.
    fn backends(&self) -> Vec<BackendStatus>;
}

impl<F> Backends for F
where
    F: Fn() -> Vec<BackendStatus> + Send + Sync + 'static,
{
    fn backends(&self) -> Vec<BackendStatus> {
        self()
    }
}

/// A Producer's Consumers.
impl Backends for Producer {
    fn backends(&self) -> Vec<BackendStatus> {
        self.stats()
            .into_iter()
            .map(|s| BackendStatus {
                name: s.addr.to_string(),
                up: s.state == ConsumerState::Up,
                state: s.state.to_string(),
                in_flight: s.outstanding as u64,
                served: s.served,
                failures: s.failures,
                reason: s.reason,
            })
            .collect()
    }
}
