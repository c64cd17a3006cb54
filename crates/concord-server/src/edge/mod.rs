//! The TCP edge: accepts connections under the connection limits (`max_conns`,
//! `max_conns_per_ip`) and serves each with hyper's HTTP/1.1 (with upgrades, for WebSockets)
//! under the header and write timeouts; on shutdown it stops accepting, lets requests in flight
//! finish, and drops whatever is left when told to (the hard deadline).

mod io;
mod limits;

pub use limits::ConnLimits;

use crate::metrics::{Limit, Metrics, RateScope};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use io::EdgeIo;
use limits::{Admission, ConnGuard, IdleMark};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// One listener's serving setup. Several edges (the main port, the metrics port) may share the
/// connection limits.
pub struct Edge {
    pub router: Router,
    pub limits: Arc<ConnLimits>,
    pub metrics: Metrics,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub max_conns_per_ip: usize,
    /// Cancelled when the server begins shutting down: stop accepting, finish requests.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline passed: drop every connection still open.
    pub hard: CancellationToken,
    /// Every HTTP connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl Edge {
    /// Accepts until shutdown; each connection runs in its own task (in `tasks`).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            };
            let mut admission = self.limits.admit(peer.ip());
            // At the limit with idle connections: wait (briefly) for the evicted one to go.
            for _ in 0..3 {
                if !matches!(admission, Admission::Evicting) {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), self.limits.freed()).await;
                admission = self.limits.admit(peer.ip());
            }
            match admission {
                Admission::Full | Admission::Evicting => {
                    // Closing at once keeps the descriptors for the clients already served.
                    self.metrics.limit(Limit::MaxConns);
                    drop(tcp);
                }
                Admission::Serve(slots) => {
                    let edge = self.clone();
                    self.tasks
                        .spawn(edge.connection(tcp, peer, slots, Mode::Serve));
                }
                Admission::TooManyFromIp(slots) => {
                    self.metrics.limit(Limit::MaxConnsPerIp);
                    self.metrics.rate_limit(RateScope::Ip);
                    let edge = self.clone();
                    self.tasks
                        .spawn(edge.connection(tcp, peer, slots, Mode::Refuse));
                }
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        slots: ConnGuard,
        mode: Mode,
    ) {
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(EdgeIo::new(
            tcp,
            self.write_timeout,
            self.metrics.clone(),
            slots,
        ));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .keep_alive(matches!(mode, Mode::Serve));
        let mark = Arc::new(IdleMark::new(self.limits.clone()));
        mark.idle();
        let edge = self.clone();
        let svc_mark = mark.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let edge = edge.clone();
            let mark = svc_mark.clone();
            async move { edge.handle(req, peer, mode, mark).await }
        });
        let conn = builder.serve_connection(io, svc).with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = mark.evicted.cancelled() => {
                self.metrics.limit(Limit::MaxConns);
                return;
            }
            _ = self.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = self.hard.cancelled() => return,
                }
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                self.metrics.limit(Limit::HttpHeaderTimeout);
            }
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        mode: Mode,
        mark: Arc<IdleMark>,
    ) -> Result<Response<Body>, Infallible> {
        if let Mode::Refuse = mode {
            return Ok(self.too_many_from_ip());
        }
        mark.busy();
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let resp = self.router.clone().call(req).await?;
        // Idle again once the whole response body has been handed to the socket.
        Ok(resp.map(|body| Body::new(UntilSent { body, mark })))
    }

    fn too_many_from_ip(&self) -> Response<Body> {
        let body = serde_json::json!({
            "code": concord_protocol::ErrorCode::RateLimited,
            "message": format!("at most {} connections per IP address", self.max_conns_per_ip),
        });
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONNECTION, "close")],
            axum::Json(body),
        )
            .into_response()
    }
}

/// A response body that marks its connection idle when it is dropped (sent or abandoned).
struct UntilSent {
    body: Body,
    mark: Arc<IdleMark>,
}

impl Drop for UntilSent {
    fn drop(&mut self) {
        self.mark.idle();
    }
}

impl axum::body::HttpBody for UntilSent {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How a connection is served.
#[derive(Clone, Copy)]
enum Mode {
    Serve,
    /// Over the per-IP limit: one 429, then close.
    Refuse,
}

/// Errors of one accept (the peer gave up) are ignored; running out of descriptors (which the
/// connection limit should prevent) is logged and backed off so the loop does not spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; lower --max-conns or raise the open-file limit");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
