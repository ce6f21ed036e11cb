//! The HTTP/1 accept loop every binary serves with: one task per connection on hyper, with a
//! header-read timeout, WebSocket upgrades, the peer address as axum's `ConnectInfo`, and a
//! graceful drain on shutdown.
//!
//! It replaces `axum::serve`, which sets no timer on hyper's connections, so hyper's
//! header-read timeout never ran: a client sending its request line and headers a byte at a
//! time (slowloris), or opening a connection and sending nothing, held it and its task forever.
//! Here every connection must deliver a complete request head within
//! [`ServerLimits::header_read_timeout`], counted from its first byte or, on a kept-alive
//! connection, from the end of the previous response; so the same timer also closes idle
//! keep-alive connections. Bodies are bounded by the request timeout of
//! [`crate::http::with_common_layers`] (the handler reads the body inside it).
//!
//! `pricefeed_server_connections` (gauge) counts open HTTP connections,
//! `pricefeed_server_header_timeouts_total` those closed by the header-read timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Per-connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A request head (request line and headers) must arrive within this, counted from the
    /// connection's first byte or the end of the previous response: it also bounds idle
    /// keep-alive connections.
    pub header_read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_millis(
                crate::config::DEFAULT_HEADER_READ_TIMEOUT_MS,
            ),
        }
    }
}

/// Serves `router` on `listener` until `token` is cancelled, then stops accepting, lets every
/// connection finish its in-flight request (hyper's graceful shutdown) and returns when all are
/// closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    token: CancellationToken,
) {
    let conns = TaskTracker::new();
    let open = metrics::gauge!("pricefeed_server_connections");
    loop {
        let accepted = tokio::select! {
            biased;
            () = token.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::error!(error = %e, "accept failed; retrying in 1 s");
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let router = router.clone();
        let token = token.clone();
        let open = open.clone();
        conns.spawn(async move {
            open.increment(1.0);
            connection(tcp, peer, router, limits, token).await;
            open.decrement(1.0);
        });
    }
    conns.close();
    conns.wait().await;
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ServerLimits,
    token: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics::counter!("pricefeed_server_header_timeouts_total").increment(1);
            tracing::debug!(%peer, "connection closed: request head not received in time");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Errors of one connection that `accept` reports; the listener itself is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(
        timeout: Duration,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/peer",
            axum::routing::get(|ConnectInfo(p): ConnectInfo<SocketAddr>| async move {
                p.ip().to_string()
            }),
        );
        let token = CancellationToken::new();
        let h = tokio::spawn(serve(
            listener,
            router,
            ServerLimits {
                header_read_timeout: timeout,
            },
            token.clone(),
        ));
        (addr, token, h)
    }

    /// Reads until EOF (the server closed) or `limit` passes; returns what was read and whether
    /// the connection was closed.
    async fn read_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> (String, bool) {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(limit, s.read_to_end(&mut buf))
            .await
            .is_ok();
        (String::from_utf8_lossy(&buf).into_owned(), closed)
    }

    #[tokio::test]
    async fn answers_with_the_peer_address_and_drops_a_silent_or_slow_head() {
        let (addr, token, h) = server(Duration::from_millis(300)).await;
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let (text, closed) = read_to_close(&mut ok, Duration::from_secs(5)).await;
        assert!(closed && text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("127.0.0.1"), "{text}");

        // Half a request head, then nothing: closed by the header timeout.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /peer HTTP/1.1\r\nhost").await.unwrap();
        let (_, closed) = read_to_close(&mut slow, Duration::from_secs(5)).await;
        assert!(closed, "a partial head must be cut off");

        // A kept-alive connection that goes quiet after its response is closed too.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (text, closed) = read_to_close(&mut idle, Duration::from_secs(5)).await;
        assert!(closed && text.starts_with("HTTP/1.1 200"), "{text}");

        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("serve returns after cancellation")
            .unwrap();
    }
}
