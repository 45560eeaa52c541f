//! The one small socket interface the protocol code uses, for client and server sockets alike.
//!
//! Reads append to the connection's [`FrameReader`] buffer; writes are queued and flushed once
//! per batch (one `write` for everything a loop turn produced). The backend today is glommio's
//! `TcpStream`; the per-shard io_uring ring plugs in behind the same methods.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::codec::{FrameReader, READ_CHUNK};

pub struct Conn {
    stream: TcpStream,
    /// Bytes queued for the next flush.
    wbuf: BytesMut,
    peer: Option<SocketAddr>,
    /// Bytes offered to the next read: small for request/response traffic (the buffer must
    /// be zeroed before glommio reads into it), doubled while reads fill it (large results).
    read_hint: usize,
}

const MIN_READ: usize = 2048;
const MAX_READ: usize = 64 * 1024;

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        Conn {
            stream,
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            peer,
            read_hint: MIN_READ,
        }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Reads what is available into `reader`'s buffer. `Ok(0)` is end of stream.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut FrameReader,
    ) -> Poll<io::Result<usize>> {
        let buf = &mut reader.buf;
        let len = buf.len();
        let room = self.read_hint;
        buf.resize(len + room, 0);
        let r = Pin::new(&mut self.stream).poll_read(cx, &mut buf[len..]);
        match r {
            Poll::Ready(Ok(n)) => {
                buf.truncate(len + n);
                self.read_hint = if n == room {
                    (room * 2).min(MAX_READ)
                } else if n < room / 4 {
                    (room / 2).max(MIN_READ)
                } else {
                    room
                };
                Poll::Ready(Ok(n))
            }
            other => {
                buf.truncate(len);
                other
            }
        }
    }

    pub async fn read_into(&mut self, reader: &mut FrameReader) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_into(cx, reader)).await
    }

    /// Queues bytes the proxy wrote itself.
    pub fn queue(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Queues a frame being forwarded.
    pub fn queue_frame(&mut self, frame: &Bytes) {
        self.wbuf.extend_from_slice(frame);
    }

    pub fn pending(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything queued.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    let _ = self.wbuf.split_to(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.wbuf.capacity() > 4 * READ_CHUNK {
            // A large result went through: give the memory back rather than keep it per client.
            self.wbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        Poll::Ready(Ok(()))
    }

    pub fn flush(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(move |cx| self.poll_flush(cx))
    }

    /// Best-effort flush then shutdown, for closing after a final error.
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown(std::net::Shutdown::Both).await;
    }

    /// True if the peer has closed or sent unexpected bytes: a pooled server connection must be
    /// silent while idle. One non-blocking `recv(MSG_PEEK)`.
    pub fn is_broken_while_idle(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: peeking one byte into a stack buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return e.kind() != io::ErrorKind::WouldBlock;
        }
        true
    }
}
