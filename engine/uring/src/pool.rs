//! The per-shard provided-buffer pool.
//!
//! One anonymous mapping holds `count` receive buffers of `size` bytes; a second, page-aligned
//! mapping holds the io_uring "buffer ring" through which the kernel picks a free buffer for each
//! multishot receive. The memory is sized once from [`RingConfig`](crate::RingConfig) and never
//! grows: running out of buffers is backpressure (receives wait), not an allocation.
//!
//! Ownership cycle of one buffer, identified by its buffer id (`bid`):
//!
//! 1. in the kernel's buffer ring (counted by the driver as `kernel_free`);
//! 2. picked by the kernel for a receive; the completion carries the `bid`, and
//!    [`Pool::take`] wraps it into a [`Bytes`] whose owner is a [`RecvBuf`];
//! 3. the engine slices frames out of it, queues them for sending on any stream; the last clone
//!    is dropped only after the send that references it completed (the send queue holds a clone
//!    until then), and [`RecvBuf::drop`] marks the `bid` in the `returned` bitmap;
//! 4. the driver's next loop turn moves marked buffers back into the kernel's buffer ring.
//!
//! `Bytes` must be `Send`, so step 3 may in principle happen on another thread; the return path
//! is therefore lock-free atomics (a bitmap plus a flag), never the `!Send` ring state.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use io_uring::types::BufRingEntry;

/// Buffer group id of the pool inside its ring (one group per ring).
pub(crate) const BGID: u16 = 0;

/// Distance between buffer starts: the size plus one cache line. Small messages touch only the
/// first lines of a buffer; with power-of-two strides every buffer's first line would fall in
/// the same few cache sets and evict the others'.
fn stride(buf_size: u32) -> usize {
    buf_size as usize + 64
}

pub(crate) struct Pool {
    /// Start of the `count * size` receive buffer mapping.
    base: NonNull<u8>,
    map_len: usize,
    buf_size: u32,
    count: u16,
    /// The buffer ring shared with the kernel (`count` entries; the tail overlays entry 0).
    ring: NonNull<BufRingEntry>,
    ring_map_len: usize,
    /// One bit per buffer: returned by its last `Bytes`, not yet given back to the kernel.
    returned: Box<[AtomicU64]>,
    /// Set after any bit in `returned`, so the driver scans the bitmap only when needed.
    returned_any: AtomicBool,
    /// Buffers currently owned by `Bytes` handles (diagnostics and tests).
    outstanding: AtomicUsize,
    /// The driver is parked while receivers wait for buffers: the next return must wake it
    /// through the eventfd (the only wake-up that is safe from any thread).
    starved: AtomicBool,
    /// A dup of the ring's eventfd, used for that wake-up.
    wake_fd: OwnedFd,
}

// SAFETY: the raw pointers refer to mappings owned by the pool itself and freed only in its
// `Drop`; buffer memory is written by the kernel only while the buffer sits in the buffer ring,
// i.e. while no `Bytes` refers to it, and the ring mapping is written only by the driver thread.
// Everything shared across threads is atomic.
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

fn mmap_anon(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: anonymous private mapping with no address hint; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl Pool {
    /// Maps the buffers and the buffer ring. Registration with the kernel is the ring's job
    /// ([`Pool::ring_addr`]), after which it provides buffers ([`Pool::provide`]).
    pub(crate) fn new(count: u16, buf_size: u32, wake_fd: OwnedFd) -> io::Result<Arc<Pool>> {
        debug_assert!(count.is_power_of_two() && buf_size > 0);
        let map_len = count as usize * stride(buf_size);
        let base = mmap_anon(map_len).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mapping {map_len} B of receive buffers: {e}"),
            )
        })?;
        let ring_map_len = (count as usize * std::mem::size_of::<BufRingEntry>()).max(4096);
        let ring = match mmap_anon(ring_map_len) {
            Ok(r) => r.cast::<BufRingEntry>(),
            Err(e) => {
                // SAFETY: `base` was mapped above with `map_len`.
                unsafe { libc::munmap(base.as_ptr().cast(), map_len) };
                return Err(io::Error::new(
                    e.kind(),
                    format!("mapping the buffer ring: {e}"),
                ));
            }
        };
        let words = (count as usize).div_ceil(64);
        Ok(Arc::new(Pool {
            base,
            map_len,
            buf_size,
            count,
            ring,
            ring_map_len,
            returned: (0..words).map(|_| AtomicU64::new(0)).collect(),
            returned_any: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            starved: AtomicBool::new(false),
            wake_fd,
        }))
    }

    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    pub(crate) fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// True if `ptr` points into this pool's receive buffers (tests check zero-copy with it).
    pub(crate) fn contains(&self, ptr: *const u8) -> bool {
        let base = self.base.as_ptr() as usize;
        (base..base + self.map_len).contains(&(ptr as usize))
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.count);
        // SAFETY: bid < count, so the offset stays inside the mapping.
        unsafe { self.base.as_ptr().add(bid as usize * stride(self.buf_size)) }
    }

    /// Writes buffer `bid` into ring slot `tail` (not yet visible to the kernel: see
    /// [`Pool::publish_tail`]). Driver thread only.
    pub(crate) fn provide(&self, tail: u16, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: the index is masked into the ring; only the driver thread writes entries, and
        // the kernel reads an entry only after the tail covering it was published.
        unsafe {
            let e = &mut *self.ring.as_ptr().add((tail & mask) as usize);
            e.set_addr(self.buf_ptr(bid) as u64);
            e.set_len(self.buf_size);
            e.set_bid(bid);
        }
    }

    /// Makes every entry written before `tail` visible to the kernel.
    pub(crate) fn publish_tail(&self, tail: u16) {
        // SAFETY: the tail field of the ring header overlays entry 0's reserved field, which the
        // entry setters never touch; the kernel reads it with acquire semantics.
        unsafe {
            let t = BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16;
            (*t).store(tail, Ordering::Release);
        }
    }

    /// Buffer `bid`, just handed to us by a completion with `len` bytes, still owned by the
    /// ring: the ring either copies it out and recycles it on the spot, or turns it into
    /// [`Bytes`] with [`Pool::into_bytes`].
    pub(crate) fn received(&self, bid: u16, len: usize) -> RxBuf {
        debug_assert!(bid < self.count);
        debug_assert!(len <= self.buf_size as usize);
        RxBuf {
            bid,
            len: len.min(self.buf_size as usize) as u32,
        }
    }

    /// The bytes the kernel wrote into `b`.
    pub(crate) fn slice(&self, b: &RxBuf) -> &[u8] {
        // SAFETY: the kernel wrote `len` bytes into this buffer and will not touch it again
        // until the ring provides it anew, which happens only after `b` was given back.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(b.bid), b.len as usize) }
    }

    /// Hands `b` out as [`Bytes`]: it comes back to the pool when the last clone drops (from
    /// any thread).
    pub(crate) fn into_bytes(self: &Arc<Self>, b: RxBuf) -> Bytes {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Bytes::from_owner(RecvBuf {
            pool: self.clone(),
            bid: b.bid,
            len: b.len,
        })
    }

    fn give_back(&self, bid: u16) {
        let bit = 1u64 << (bid % 64);
        let prev = self.returned[bid as usize / 64].fetch_or(bit, Ordering::Release);
        debug_assert!(prev & bit == 0, "buffer {bid} returned twice");
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.returned_any.store(true, Ordering::SeqCst);
        // Pairs with `park_starved`: either the driver sees `returned_any`, or we see `starved`.
        if self.starved.load(Ordering::SeqCst) && self.starved.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to our own eventfd. An eventfd write only
            // fails on counter overflow, which a pending wake-up makes harmless.
            unsafe { libc::write(self.wake_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Calls `f` for every buffer returned since the last call. Driver thread only.
    pub(crate) fn drain_returned(&self, mut f: impl FnMut(u16)) {
        if !self.returned_any.swap(false, Ordering::SeqCst) {
            return;
        }
        for (w, word) in self.returned.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::Acquire);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                f((w * 64) as u16 + b as u16);
            }
        }
    }

    pub(crate) fn has_returned(&self) -> bool {
        self.returned_any.load(Ordering::SeqCst)
    }

    /// Announces that the driver is about to park with receivers waiting for buffers. Returns
    /// false if a buffer came back meanwhile (then the driver must not park).
    pub(crate) fn park_starved(&self) -> bool {
        self.starved.store(true, Ordering::SeqCst);
        if self.returned_any.load(Ordering::SeqCst) {
            self.starved.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(crate) fn unpark_starved(&self) {
        self.starved.store(false, Ordering::SeqCst);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `new` with these lengths. The ring owning the
        // registration holds an `Arc<Pool>` and is dropped (unregistering) before us.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.map_len);
            libc::munmap(self.ring.as_ptr().cast(), self.ring_map_len);
        }
    }
}

/// A received buffer held by the ring for its connection. Not `Drop`: the ring gives it back
/// (`State::give_back`) or converts it ([`Pool::into_bytes`]), and counts those it holds.
#[derive(Debug)]
pub(crate) struct RxBuf {
    pub(crate) bid: u16,
    len: u32,
}

impl RxBuf {
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The owner behind every received [`Bytes`]: gives the buffer back when the last clone drops.
struct RecvBuf {
    pool: Arc<Pool>,
    bid: u16,
    len: u32,
}

impl AsRef<[u8]> for RecvBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the kernel wrote `len` bytes into this buffer and will not touch it again until
        // `give_back` put it back into the buffer ring, which happens only in our `Drop`.
        unsafe { std::slice::from_raw_parts(self.pool.buf_ptr(self.bid), self.len as usize) }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.pool.give_back(self.bid);
    }
}
