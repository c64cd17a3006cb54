//! A client socket as the edge serves it: writes that make no progress for the write timeout
//! fail (so a client that never reads cannot pin a response or a WebSocket backlog), and the
//! connection's limit slots are released only when the socket itself is dropped.

use super::limits::ConnGuard;
use crate::metrics::{Limit, Metrics};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

pub struct EdgeIo {
    tcp: TcpStream,
    write_timeout: Duration,
    /// Armed (reset to now + timeout) when a write first returns `Pending`, disarmed by any
    /// progress. One timer per connection, reused: a write that waits allocates nothing.
    stall: Pin<Box<Sleep>>,
    stalled: bool,
    metrics: Metrics,
    _slots: ConnGuard,
}

impl EdgeIo {
    pub fn new(
        tcp: TcpStream,
        write_timeout: Duration,
        metrics: Metrics,
        slots: ConnGuard,
    ) -> Self {
        EdgeIo {
            tcp,
            write_timeout,
            stall: Box::pin(tokio::time::sleep(write_timeout)),
            stalled: false,
            metrics,
            _slots: slots,
        }
    }

    /// After the socket answered `Pending`: fails once it has been stalled for the timeout.
    fn poll_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.stalled {
            let deadline = tokio::time::Instant::now() + self.write_timeout;
            self.stall.as_mut().reset(deadline);
            self.stalled = true;
        }
        match self.stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.metrics.limit(Limit::WriteTimeout);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing within the write timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_stall(cx),
        }
    }
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.tcp).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.tcp).poll_shutdown(cx);
        this.progress(r, cx)
    }
}
