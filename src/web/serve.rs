//! The accept loop: every connection served by hyper with the router, and closable from
//! inside (a stream client cut off for staying behind) and from outside (the stop).
//!
//! In: a listener, the router, the stop token. Out: HTTP/1.1 served until the stop (browsers
//! speak HTTP/2 only over TLS, which a proxy in front terminates); then no new connections, in-flight requests get `grace` to finish (streams
//! end by themselves on the stop), and the connections still open after it are dropped, which
//! closes their sockets even when the peer never reads. `axum::serve` would wait forever on a
//! peer that does not read; here every connection carries a [`Connection`] in its requests'
//! extensions, whose `close` token drops it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// A request's connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Cancelling it drops the connection (its socket closes).
    pub close: CancellationToken,
}

/// Longest wait for a request's headers, from the connection's start or the end of the previous
/// request (a peer that opens connections and sends nothing is dropped after it).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of file descriptors): the loop must not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `stop`, then gives connections `grace` before dropping
/// them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    raise_open_files_limit();
    let connections = TaskTracker::new();
    let mut builder = Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let (router, builder, stop) = (router.clone(), builder.clone(), stop.clone());
        connections.spawn(async move {
            serve_connection(stream, peer, router, builder, stop, grace).await;
        });
    }
    drop(listener);
    connections.close();
    // Every connection ends within its grace of the stop; a little more for the drops.
    if tokio::time::timeout(grace + Duration::from_secs(1), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the grace"
        );
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Builder,
    stop: CancellationToken,
    grace: Duration,
) {
    // Events are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let close = CancellationToken::new();
    let connection = Connection {
        peer,
        close: close.clone(),
    };
    let service = router.map_request(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(connection.clone());
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let outcome = tokio::select! {
        outcome = conn.as_mut() => Some(outcome),
        () = close.cancelled() => None,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                outcome = conn.as_mut() => Some(outcome),
                () = close.cancelled() => None,
                () = tokio::time::sleep(grace) => None,
            }
        }
    };
    if let Some(Err(e)) = outcome {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Lifts the soft limit of open files to the hard one: every stream is a socket.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open files limit");
        }
    }
}
