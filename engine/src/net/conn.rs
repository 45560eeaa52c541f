//! The one small socket interface the protocol code uses, for client and server sockets alike.
//!
//! Reads append to the connection's [`FrameReader`] buffer; writes are queued and flushed once
//! per batch. Two backends sit behind it:
//! - `Uring`: the shard's completion-based io_uring ring (`helios-uring`): a multishot receive
//!   into provided buffers, and every send of a loop turn submitted together. A flush hands the
//!   batch to the ring and only waits when the peer is behind by more than
//!   `io.max_pending_send_bytes` (backpressure without a round trip per batch).
//! - `Glommio`: glommio's readiness-based `TcpStream`, the fallback when the kernel lacks a ring
//!   feature, and selectable with `io.backend = "glommio"`.
//!
//! With TLS ([`Conn::accept_tls`]) a [`Tls`] record layer sits between the two: received
//! ciphertext is decrypted into the frame buffer, and a flush encrypts the queued batch into one
//! ciphertext buffer that goes to the socket the same way plain bytes do. Nothing above `Conn`
//! changes; a plain connection pays one `Option` check per read and flush.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use helios_uring::{Ring, UringStream};

use super::codec::{rewind, FrameReader, FrameRef, READ_CHUNK};
use super::tls::Tls;

enum Io {
    Glommio(TcpStream),
    Uring(UringStream),
}

pub struct Conn {
    io: Io,
    /// Bytes queued for the next flush.
    wbuf: BytesMut,
    peer: Option<SocketAddr>,
    /// Glommio reads: bytes offered to the next read — small for request/response traffic
    /// (the buffer is zeroed before glommio reads into it), doubled while reads fill it.
    read_hint: usize,
    /// Uring: the peer may be this far behind before a flush waits.
    max_pending: usize,
    /// The TLS record layer, once negotiated.
    tls: Option<Box<Tls>>,
}

const MIN_READ: usize = 2048;
const MAX_READ: usize = 64 * 1024;
/// Frames at least this big are queued by reference instead of copied into the send buffer.
pub const ZERO_COPY_MIN: usize = 4096;

/// A std socket on a duplicate of `stream`'s descriptor: glommio's stream has no way to give
/// its descriptor up, so whoever takes the socket over (the ring, another shard) gets a copy and
/// `stream` closes its own when it drops.
pub fn duplicate(stream: &TcpStream) -> io::Result<std::net::TcpStream> {
    // SAFETY: dup of an open fd we own; the std socket owns the copy.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        Conn {
            io: Io::Glommio(stream),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            peer,
            read_hint: MIN_READ,
            max_pending: usize::MAX,
            tls: None,
        }
    }

    /// Moves the socket onto the shard's ring (nothing may be queued or in flight).
    pub fn into_ring(self, ring: &Rc<Ring>) -> io::Result<Conn> {
        let Io::Glommio(stream) = &self.io else {
            return Ok(self);
        };
        debug_assert!(self.wbuf.is_empty());
        let uring = ring.register(duplicate(stream)?)?;
        Ok(Conn {
            io: Io::Uring(uring),
            wbuf: self.wbuf,
            peer: self.peer,
            read_hint: MIN_READ,
            max_pending: ring.config().max_pending_send_bytes,
            tls: self.tls,
        })
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    pub fn raw_fd(&self) -> RawFd {
        match &self.io {
            Io::Glommio(s) => s.as_raw_fd(),
            Io::Uring(s) => s.as_raw_fd(),
        }
    }

    /// Reads what is available into `reader`'s buffer. `Ok(0)` is end of stream.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut FrameReader,
    ) -> Poll<io::Result<usize>> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return poll_raw_read(&mut self.io, &mut self.read_hint, cx, &mut reader.buf);
        };
        loop {
            let (n, closed) = match tls.decrypt_into(&mut reader.buf) {
                Ok(x) => x,
                Err(e) => {
                    send_now(&mut self.io, &mut tls.cout);
                    return Poll::Ready(Err(e));
                }
            };
            if tls.conn.wants_write() {
                // A post-handshake message (key update, alert) to answer: with the next flush,
                // or now on the ring.
                tls.encrypt_pending()?;
                send_now(&mut self.io, &mut tls.cout);
            }
            if n > 0 || closed {
                return Poll::Ready(Ok(n));
            }
            match poll_raw_read(&mut self.io, &mut self.read_hint, cx, &mut tls.cin) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(_)) => {}
                other => return other,
            }
        }
    }

    /// Runs a TLS handshake as the server (after `S` was sent, or for a direct TLS connection
    /// whose first bytes are in `reader`). Plaintext that arrives with the client's last
    /// handshake flight lands in `reader`. On failure the alert is sent, best effort.
    pub async fn accept_tls(
        &mut self,
        config: std::sync::Arc<rustls::ServerConfig>,
        reader: &mut FrameReader,
    ) -> io::Result<()> {
        debug_assert!(self.tls.is_none());
        let early = reader.buf.split();
        self.tls = Some(Box::new(Tls::server(config, &early)?));
        self.handshake(reader).await
    }

    /// Runs a TLS handshake as the client (after the server answered an SSLRequest with `S`).
    pub async fn connect_tls(
        &mut self,
        tls: &super::tls::UpstreamTls,
        reader: &mut FrameReader,
    ) -> io::Result<()> {
        debug_assert!(self.tls.is_none() && reader.buf.is_empty());
        self.tls = Some(Box::new(Tls::client(tls)?));
        self.handshake(reader).await
    }

    async fn handshake(&mut self, reader: &mut FrameReader) -> io::Result<()> {
        loop {
            let tls = self.tls.as_deref_mut().expect("handshake without TLS");
            let res = tls.decrypt_into(&mut reader.buf);
            let _ = tls.encrypt_pending();
            let handshaking = tls.handshaking();
            let flushed = self.flush_all().await;
            res?;
            flushed?;
            if !handshaking {
                return Ok(());
            }
            let tls = self.tls.as_deref_mut().expect("handshake without TLS");
            let n = std::future::poll_fn(|cx| {
                poll_raw_read(&mut self.io, &mut self.read_hint, cx, &mut tls.cin)
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The TLS session, once negotiated (peer certificate, ALPN).
    pub fn tls(&self) -> Option<&rustls::Connection> {
        self.tls.as_deref().map(|t| &t.conn)
    }

    /// True once TLS is negotiated.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub async fn read_into(&mut self, reader: &mut FrameReader) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_into(cx, reader)).await
    }

    /// Queues bytes the proxy writes itself.
    pub fn queue(&mut self) -> &mut BytesMut {
        if self.wbuf.is_empty() {
            rewind(&mut self.wbuf);
        }
        &mut self.wbuf
    }

    /// Queues a frame being forwarded: large ones by reference on the ring (no copy), small
    /// ones copied into the batch (one send for the whole batch beats many tiny iovecs).
    pub fn queue_frame(&mut self, frame: &Bytes) {
        self.queue_bytes(frame, Some(frame));
    }

    /// [`Conn::queue_frame`] for a frame read in place ([`FrameRef`]).
    pub fn queue_frame_ref(&mut self, frame: &FrameRef<'_>) {
        self.queue_bytes(frame.bytes, frame.shared);
    }

    fn queue_bytes(&mut self, bytes: &[u8], shared: Option<&Bytes>) {
        match (&mut self.io, shared) {
            // Encrypted frames are copied anyway: no by-reference path under TLS.
            (Io::Uring(s), Some(b)) if b.len() >= ZERO_COPY_MIN && self.tls.is_none() => {
                if !self.wbuf.is_empty() {
                    s.queue_send(self.wbuf.split().freeze());
                }
                s.queue_send(b.clone());
            }
            _ => self.queue().extend_from_slice(bytes),
        }
    }

    /// Bytes queued and not yet handed to the kernel.
    pub fn pending(&self) -> usize {
        self.wbuf.len()
            + self.tls.as_ref().map_or(0, |t| t.cout.len())
            + match &self.io {
                Io::Uring(s) => s.pending_send_bytes(),
                Io::Glommio(_) => 0,
            }
    }

    /// Glommio: writes everything queued. Uring: hands the batch to the ring; waits only while
    /// the peer is more than `max_pending` bytes behind.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_inner(cx, false)
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>, all: bool) -> Poll<io::Result<()>> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return poll_raw_flush(&mut self.io, cx, &mut self.wbuf, all, self.max_pending);
        };
        if !self.wbuf.is_empty() {
            tls.encrypt(&self.wbuf)?;
            self.wbuf.clear();
        } else {
            tls.encrypt_pending()?;
        }
        poll_raw_flush(&mut self.io, cx, &mut tls.cout, all, self.max_pending)
    }

    pub fn flush(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(move |cx| self.poll_flush(cx))
    }

    /// Waits until everything queued has been handed to the kernel.
    pub fn flush_all(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(move |cx| self.poll_flush_inner(cx, true))
    }

    /// Best-effort flush then shutdown, for closing after a final error.
    pub async fn close(mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            // The queued bytes (a final error) go before the close_notify.
            if tls.encrypt(&self.wbuf).is_ok() {
                tls.conn.send_close_notify();
            }
            self.wbuf.clear();
        }
        let _ = glommio::timer::timeout(std::time::Duration::from_secs(5), async {
            let _ = self.flush_all().await;
            Ok(())
        })
        .await;
        match self.io {
            Io::Glommio(stream) => {
                let _ = stream.shutdown(std::net::Shutdown::Both).await;
            }
            Io::Uring(s) => s.close(),
        }
    }

    /// True if the peer has closed or sent unexpected bytes: a pooled server connection must be
    /// silent while idle.
    pub fn is_broken_while_idle(&mut self) -> bool {
        match &mut self.io {
            Io::Uring(s) => {
                // The armed receive has already taken anything the server sent.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                !matches!(s.poll_recv(&mut cx), Poll::Pending)
            }
            Io::Glommio(stream) => {
                let mut b = [0u8; 1];
                // SAFETY: peeking one byte into a stack buffer on a socket we own.
                let n = unsafe {
                    libc::recv(
                        stream.as_raw_fd(),
                        b.as_mut_ptr() as *mut libc::c_void,
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    return io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock;
                }
                true
            }
        }
    }
}

/// Reads what the socket has into `buf` (plain bytes, or ciphertext under TLS).
fn poll_raw_read(
    io: &mut Io,
    read_hint: &mut usize,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    match io {
        // Copied out of the ring buffer, which goes back to the kernel at the next turn.
        Io::Uring(s) => s.poll_recv_into(cx, buf),
        Io::Glommio(stream) => {
            let len = buf.len();
            let room = *read_hint;
            buf.resize(len + room, 0);
            match Pin::new(stream).poll_read(cx, &mut buf[len..]) {
                Poll::Ready(Ok(n)) => {
                    buf.truncate(len + n);
                    *read_hint = if n == room {
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
    }
}

/// Glommio: writes all of `buf`. Uring: hands it to the ring; waits only while the peer is more
/// than `max_pending` bytes behind (or for everything, with `all`).
fn poll_raw_flush(
    io: &mut Io,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    all: bool,
    max_pending: usize,
) -> Poll<io::Result<()>> {
    match io {
        Io::Uring(s) => {
            if !buf.is_empty() {
                s.queue_send(buf.split().freeze());
            }
            if all || s.pending_send_bytes() > max_pending {
                return s.poll_flush(cx);
            }
            Poll::Ready(Ok(()))
        }
        Io::Glommio(stream) => {
            while !buf.is_empty() {
                match Pin::new(&mut *stream).poll_write(cx, buf) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        let _ = buf.split_to(n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if buf.capacity() > 4 * READ_CHUNK {
                // A large result went through: give the memory back.
                *buf = BytesMut::with_capacity(READ_CHUNK);
            }
            Poll::Ready(Ok(()))
        }
    }
}

/// On the ring, queues `buf` for the next submission (no waiting); glommio sends it with the
/// next flush.
fn send_now(io: &mut Io, buf: &mut BytesMut) {
    if let Io::Uring(s) = io {
        if !buf.is_empty() {
            s.queue_send(buf.split().freeze());
        }
    }
}
