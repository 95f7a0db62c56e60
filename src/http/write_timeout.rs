//! [`WriteTimeout`]: a socket whose writes fail with `TimedOut` once one has
//! made no progress for `WRITE_TIMEOUT_MS`, so a client that stops reading
//! (and lets its receive window and our send buffer fill) loses its
//! connection, and its slot under `MAX_CONNECTIONS`, instead of holding them
//! for as long as it likes. hyper 1's HTTP/1 builder has a timeout for
//! reading a request head but none for writing a response.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` with a bound on how long a write may stay blocked.
///
/// The clock starts when a write (or flush) returns `Pending` and stops at
/// the next one that goes through: it bounds a stall, not a whole response,
/// so a large answer to a slow but reading client still completes. Once it
/// has run out, every later write fails too; hyper then ends the connection.
pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Allocated at the first stall and reset at each later one, so a
    /// connection that never blocks allocates nothing.
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether `stall` runs: a write is blocked now.
    stalled: bool,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stall: None,
            stalled: false,
        }
    }

    /// What a write that returned `poll` answers: itself if it went through
    /// (the clock stops), `Pending` while the stall is young, `TimedOut`
    /// once it is older than the timeout.
    fn bound<R>(&mut self, poll: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = false;
            return poll;
        }
        let deadline = Instant::now() + self.timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.stalled {
            stall.as_mut().reset(deadline);
            self.stalled = true;
        }
        // Registers the task's waker with the timer: hyper polls the
        // connection again when the stall runs out, even if the peer never
        // reads another byte.
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no write progress for {} ms (WRITE_TIMEOUT_MS)",
                    self.timeout.as_millis()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bound(poll, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bound(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.bound(poll, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.bound(poll, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that stops reading: the write fails after the timeout. One that
    /// reads again before it: the write completes.
    #[tokio::test]
    async fn a_stalled_write_times_out_and_progress_resets_the_clock() {
        let (ours, mut theirs) = tokio::io::duplex(16);
        let mut ours = WriteTimeout::new(ours, Duration::from_millis(500));
        let reader = tokio::spawn(async move {
            // Drain slowly: 16 bytes every 200 ms, under the timeout, 1 s in
            // all, past it.
            let mut buf = [0u8; 16];
            let mut got = 0;
            while got < 80 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                got += theirs.read(&mut buf).await.unwrap();
            }
            theirs
        });
        ours.write_all(&[1u8; 80]).await.unwrap();
        let _theirs = reader.await.unwrap();
        // Now nobody reads: the buffer fills and the next write stalls.
        let err = ours.write_all(&[2u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
