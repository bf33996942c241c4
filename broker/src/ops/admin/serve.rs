//! The admin listener's accept loop: axum's router over hyper's HTTP/1,
//! on plain TCP or TLS (`tls.rs`), with the limits a listener open to the
//! pod network needs: at most [`MAX_CONNECTIONS`] at once (more are closed
//! at accept), a TLS handshake and each request's headers within
//! [`READ_TIMEOUT`], so a slow or idle client cannot hold descriptors the
//! MQTT listeners need.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::tls::AdminTls;

/// Admin connections open at once.
pub const MAX_CONNECTIONS: usize = 256;

/// For a TLS handshake, and for a request's headers (also between the
/// requests of a kept-alive connection).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` until `stop`; connections still open then get a moment to
/// finish, then are dropped.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<AdminTls>,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "Admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "Admin connection refused: {MAX_CONNECTIONS} open");
            continue;
        };
        let app = app.clone();
        let acceptor = tls.as_ref().map(AdminTls::acceptor);
        conns.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => http(tcp, app, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => http(tls, app, peer).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "Admin TLS handshake failed"),
                        Err(_) => debug!(%peer, "Admin TLS handshake timed out"),
                    }
                }
            }
        });
        // Reap finished connections as we go.
        while conns.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

/// HTTP/1 on one connection.
async fn http<S>(io: S, app: axum::Router, peer: std::net::SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .await;
    if let Err(e) = served {
        debug!(%peer, error = %e, "Admin connection ended");
    }
}
