//! Serving a [`Gateway`] on a listener: HTTP/1.1 with keep-alive, a bound on connections and
//! on how long a client may take to send its headers, and a graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Gateway;

impl Gateway {
    /// Serves HTTP from `listener` until `shutdown` resolves; then `/readyz` answers 503, no
    /// new connection is accepted, idle connections are closed, and requests in flight get
    /// [`Limits::drain_timeout`](crate::Limits::drain_timeout) to finish.
    ///
    /// Connections past [`Limits::max_connections`](crate::Limits::max_connections) are
    /// closed at once; a client that does not send its request headers within
    /// [`Limits::header_timeout`](crate::Limits::header_timeout) is disconnected.
    ///
    /// # Errors
    /// Only when the listener's address cannot be read.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        let limits = self.inner.limits.clone();
        let router = self.router();
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
        tracing::debug!(%local, "http front serving");
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
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
            let service = TowerToHyperService::new(router.clone());
            let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
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
                tracing::warn!(%local, "http front: requests still in flight after the drain timeout; stopping anyway");
            }
        }
        Ok(())
    }
}
