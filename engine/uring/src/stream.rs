//! One socket served by a [`Ring`].

use std::io;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::ring::{Key, Ring};

/// A connected TCP socket whose I/O goes through its shard's [`Ring`]. Owned by one glommio task
/// (`!Send`). Dropping it is [`UringStream::close`].
pub struct UringStream {
    ring: Rc<Ring>,
    key: Key,
    fd: RawFd,
    closed: bool,
}

impl UringStream {
    pub(crate) fn new(ring: Rc<Ring>, key: Key, fd: RawFd) -> UringStream {
        UringStream {
            ring,
            key,
            fd,
            closed: false,
        }
    }

    #[cfg(test)]
    pub(crate) fn key(&self) -> Key {
        self.key
    }

    /// Next received bytes, at most one receive buffer's worth. The `Bytes` owns a provided ring
    /// buffer and gives it back when its last clone is dropped, so frames can be sliced out of it
    /// and queued on another stream without copying. Empty `Bytes` means EOF; an error is the
    /// connection's error (repeated on later calls). If every buffer of the shard is held the
    /// call simply stays pending until one is returned.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        self.ring.poll_recv(self.key, cx)
    }

    /// Appends the next received bytes (at most one receive buffer's worth) to `dst` and gives
    /// the ring buffer straight back: the cheaper way in when the data is parsed, not forwarded
    /// as is. `Ok(0)` means EOF; otherwise as [`UringStream::poll_recv`].
    pub fn poll_recv_into(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        self.ring.poll_recv_into(self.key, cx, dst)
    }

    /// See [`UringStream::poll_recv`].
    pub async fn recv(&mut self) -> io::Result<Bytes> {
        futures_lite::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Queues bytes to send; no syscall here. The driver submits every send queued in a loop turn
    /// together, one `send`/`sendmsg` in flight per socket (so bytes stay in order), re-queueing
    /// after partial sends. After a send error the data is dropped and `flush` reports the error.
    pub fn queue_send(&mut self, data: Bytes) {
        self.ring.queue_send(self.key, data)
    }

    /// Bytes queued and not yet acknowledged by the kernel. The engine stops receiving from the
    /// other side while this exceeds `RingConfig::max_pending_send_bytes`.
    pub fn pending_send_bytes(&self) -> usize {
        self.ring.pending_send_bytes(self.key)
    }

    /// Ready when everything queued so far has been handed to the kernel, or with the send error.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ring.poll_flush(self.key, cx)
    }

    /// See [`UringStream::poll_flush`].
    pub async fn flush(&mut self) -> io::Result<()> {
        futures_lite::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// `shutdown(SHUT_RDWR)` now (which ends the armed multishot receive and fails a blocked
    /// send), then close the fd once no operation is in flight. Unsent queued data is dropped:
    /// `flush` first to deliver it.
    pub fn close(mut self) {
        self.close_inner();
    }

    fn close_inner(&mut self) {
        if !self.closed {
            self.closed = true;
            self.ring.close(self.key);
        }
    }

    /// The peer's address (a `getpeername` call).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        // SAFETY: the fd stays open while `self` exists (close consumes it); ManuallyDrop keeps
        // the temporary std socket from closing it.
        let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(self.fd) });
        s.peer_addr()
    }

    /// The socket's fd (for socket options; do not read, write or close it).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd
    }

    /// True if `data` points into this stream's ring buffers (zero-copy checks in tests and
    /// debug assertions).
    pub fn is_ring_buffer(&self, data: &[u8]) -> bool {
        self.ring.pool_contains(data.as_ptr())
    }
}

impl AsRawFd for UringStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        self.close_inner();
    }
}
