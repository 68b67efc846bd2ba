//! Serving a [`Gateway`] on a listener: HTTP/1.1 with keep-alive, a bound on connections, on
//! how long a client may take to send its headers and on how long a response may wait for a
//! client that does not read, and a graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::write_timeout::WriteTimeout;
use crate::Gateway;

impl Gateway {
    /// Serves HTTP from `listener` until `shutdown` resolves; then `/readyz` answers 503, no
    /// new connection is accepted, idle connections are closed, and requests in flight get
    /// [`Limits::drain_timeout`](crate::Limits::drain_timeout) to finish: connections still
    /// open after it are closed, and the requests on them dropped without an answer.
    ///
    /// Connections past [`Limits::max_connections`](crate::Limits::max_connections) are
    /// closed at once; a client that does not send its request headers within
    /// [`Limits::header_timeout`](crate::Limits::header_timeout), or does not read for
    /// [`Limits::write_timeout`](crate::Limits::write_timeout) while a response waits for
    /// it, is disconnected.
    ///
    /// # Errors
    /// Only when the listener's address cannot be read.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        let limits = self.inner.limits.clone();
        let router = self.router();
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        // Every connection's task, so the ones still running after the drain timeout can be
        // stopped.
        let mut connections = JoinSet::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
        tracing::debug!(%local, "http front serving");
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                Some(ended) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = ended {
                        tracing::warn!(error = %e, "http front: a connection task failed");
                    }
                    continue;
                }
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "http front: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::warn!(%peer, max = limits.max_connections, "http front: connection limit reached; closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let io = WriteTimeout::new(stream, limits.write_timeout);
            let service = TowerToHyperService::new(router.clone());
            let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
            connections.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "http connection ended");
                }
                drop(slot);
            });
        }
        self.start_draining();
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(limits.drain_timeout) => {
                tracing::warn!(
                    %local,
                    open = connections.len(),
                    "http front: requests still in flight after the drain timeout; dropped"
                );
            }
        }
        // Aborted, each connection's task drops its socket and the request futures on it.
        connections.shutdown().await;
        Ok(())
    }
}
