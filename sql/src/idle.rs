//! HTTP connections that move no byte for too long are closed.
//!
//! axum's server sets no timer for hyper, so neither a keep-alive connection
//! left open nor a client that sends its headers one byte a minute (slowloris)
//! is ever closed. [`IdleListener`] wraps each accepted connection in
//! [`IdleIo`], whose reads and writes fail with `TimedOut` once nothing moved
//! either way for the limit while no request was being answered; hyper then
//! drops the connection. A request being answered (counted by the router's
//! outermost layer through [`IdleIo::busy`]) keeps its connection open however
//! long its handler takes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests of a connection being answered: while there is one, the connection is not idle
/// (a handler may wait longer than the limit: a checkpoint, an ingest post's Kafka acks).
pub type Busy = Arc<AtomicUsize>;

/// A connection that fails once no byte moved for `idle` while no request was being answered.
pub struct IdleIo<T> {
    inner: T,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    busy: Busy,
}

impl<T> IdleIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, idle: Duration) -> Self {
        IdleIo { inner, idle, timer: Box::pin(tokio::time::sleep(idle)), busy: Busy::default() }
    }

    /// The count of requests being answered on this connection (kept by the HTTP router).
    pub fn busy(&self) -> Busy {
        self.busy.clone()
    }

    fn moved(&mut self) {
        self.timer.as_mut().reset(Instant::now() + self.idle);
    }

    /// `Pending` from the inner stream: an error instead once the limit passed.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            // Answering: the limit starts again once the answer moves.
            self.moved();
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no traffic for {} s", self.idle.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An axum listener whose connections are [`IdleIo`].
pub struct IdleListener<L> {
    inner: L,
    idle: Duration,
}

impl<L> IdleListener<L> {
    /// Wraps `inner`'s connections with the limit `idle`.
    pub fn new(inner: L, idle: Duration) -> Self {
        IdleListener { inner, idle }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for IdleListener<L> {
    type Io = IdleIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        (IdleIo::new(io, self.idle), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_quiet_connection_fails_and_a_busy_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleIo::new(a, Duration::from_millis(400));
        let mut buf = [0u8; 4];
        // Traffic every 200 ms for 1.2 s keeps it open...
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            b.write_all(b"ping").await.unwrap();
            a.read_exact(&mut buf).await.unwrap();
        }
        // ...and 400 ms without any closes it.
        let e = a.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }
}
