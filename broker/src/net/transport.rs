//! Byte transport for one connection: a read buffer, a write buffer, and a
//! single poll that writes pending output and reads new input.
//!
//! Generic over any `AsyncRead + AsyncWrite` (TCP now; TLS and WebSocket
//! streams later). Idle connections hold no buffer memory: reads into an
//! empty buffer go through a stack buffer first, and emptied buffers are
//! released. Output is batched: everything produced while handling one
//! read goes out in as few writes as the socket allows, then one flush.
//! `connection/mod.rs` decodes from `rbuf` and encodes into `wbuf`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Output above this stops reading input and pulling deliveries until the
/// client has taken some (backpressure for clients that do not read).
pub const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Bytes read per stack-buffered read when the read buffer is empty.
const STACK_READ: usize = 2048;

/// What one [`Transport::ready`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEvent {
    /// New bytes are in `rbuf`.
    Read(usize),
    /// Output was written (and `wbuf` may now be below the high water mark).
    Wrote,
    /// The peer closed its side.
    Eof,
}

#[derive(Debug)]
pub struct Transport<S> {
    stream: S,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    needs_flush: bool,
    /// Bytes written since the last `take_written`.
    written: usize,
    /// Bytes read since the last `take_read`.
    read: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport<S> {
    pub fn new(stream: S) -> Self {
        Transport {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            needs_flush: false,
            written: 0,
            read: 0,
        }
    }

    pub fn take_written(&mut self) -> usize {
        std::mem::take(&mut self.written)
    }

    pub fn take_read(&mut self) -> usize {
        std::mem::take(&mut self.read)
    }

    /// Makes room for a packet of `frame_len` bytes whose header is
    /// already in `rbuf`, so big packets are read straight into place.
    pub fn reserve_frame(&mut self, frame_len: usize) {
        if frame_len > self.rbuf.len() {
            self.rbuf.reserve(frame_len - self.rbuf.len());
        }
    }

    /// Releases buffers that are empty, so idle connections cost little.
    pub fn release_idle_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
    }

    /// Writes what it can of `wbuf` and, if `read` is true, reads what is
    /// available. Resolves when anything happened. Cancel-safe: no state
    /// is kept between polls except in `self`.
    pub async fn ready(&mut self, read: bool) -> io::Result<IoEvent> {
        poll_fn(|cx| {
            let mut wrote = false;
            while !self.wbuf.is_empty() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.wbuf.advance(n);
                        self.written += n;
                        self.needs_flush = true;
                        wrote = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if self.wbuf.is_empty() && self.needs_flush {
                if let Poll::Ready(r) = Pin::new(&mut self.stream).poll_flush(cx) {
                    r?;
                    self.needs_flush = false;
                }
            }
            if read {
                if let Poll::Ready(r) = self.poll_read(cx) {
                    return Poll::Ready(r.map(|n| {
                        if n == 0 {
                            IoEvent::Eof
                        } else {
                            IoEvent::Read(n)
                        }
                    }));
                }
            }
            if wrote {
                Poll::Ready(Ok(IoEvent::Wrote))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn poll_read(&mut self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() >= STACK_READ {
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.stream),
                cx,
                &mut self.rbuf
            ))?;
            self.read += n;
            return Poll::Ready(Ok(n));
        }
        // Not zeroed: most polls of an idle connection read nothing, and
        // zeroing the buffer on each showed in fan-out profiles.
        let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); STACK_READ];
        let mut rb = ReadBuf::uninit(&mut tmp);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.read += n;
        self.rbuf.extend_from_slice(rb.filled());
        if n == STACK_READ {
            // A busy stream: read straight into the buffer from now on.
            self.rbuf.reserve(16 * 1024);
        }
        Poll::Ready(Ok(n))
    }

    /// Reads until at least one more byte arrives (used before CONNECT).
    pub async fn read_some(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx)).await
    }

    /// Writes all of `wbuf` and flushes (used for final packets).
    pub async fn flush_all(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            let n = self.stream.write(&self.wbuf).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.wbuf.advance(n);
            self.written += n;
        }
        self.stream.flush().await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// A lingering close, after the last packet the client must read (a
    /// server DISCONNECT, a refusing CONNACK): half-closes, then reads and
    /// discards what the client still sends until it closes its side,
    /// falls quiet for [`LINGER_IDLE`], or `wait` or [`LINGER_BYTES`] run
    /// out. Closing a socket with unread input makes the kernel answer
    /// with a reset, and a client still busy writing then fails its next
    /// write and may never read the reason code.
    pub async fn close_lingering(&mut self, wait: std::time::Duration) {
        let drain = async {
            self.stream.shutdown().await?;
            let mut sink = [0u8; STACK_READ];
            let mut left = LINGER_BYTES;
            while left > 0 {
                match tokio::time::timeout(LINGER_IDLE, self.stream.read(&mut sink)).await {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(n)) => left = left.saturating_sub(n),
                    Ok(Err(e)) => return Err(e),
                }
            }
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout(wait, drain).await;
    }
}

/// Most input a lingering close reads and discards before it gives up.
pub const LINGER_BYTES: usize = 256 * 1024;

/// A lingering close ends once the client has sent nothing for this long:
/// what it wrote before it read the reason has arrived within about a
/// round trip, and an idle client (most devices) is not held at all past
/// this.
pub const LINGER_IDLE: std::time::Duration = std::time::Duration::from_millis(250);
