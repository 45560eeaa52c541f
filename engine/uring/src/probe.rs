//! What the running kernel's io_uring supports, found by trying it rather than by version
//! numbers (distribution kernels backport, and sandboxes such as gVisor or seccomp filters
//! disable io_uring entirely).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::{cqueue, opcode, types, IoUring, Probe};

/// io_uring capabilities relevant to [`Ring`](crate::Ring). The engine logs this at start-up and
/// falls back to glommio's sockets when [`Features::supports_ring`] is false.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// `IORING_RECV_MULTISHOT` works on a socket with buffer selection (Linux 6.0).
    pub multishot_recv: bool,
    /// Provided-buffer rings (`IORING_REGISTER_PBUF_RING`, Linux 5.19).
    pub buf_ring: bool,
    /// `IORING_SETUP_DEFER_TASKRUN`: completions are produced only when the shard enters the
    /// kernel, never by interrupting it (Linux 6.1).
    pub defer_taskrun: bool,
    /// `IORING_SETUP_SINGLE_ISSUER` (Linux 6.0).
    pub single_issuer: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (Linux 5.19), the fallback when `defer_taskrun` is missing.
    pub coop_taskrun: bool,
    /// `IORING_SETUP_TASKRUN_FLAG`: pending kernel work is visible in shared memory, so the
    /// driver can skip `io_uring_enter` when there is none.
    pub taskrun_flag: bool,
    /// `IORING_FEAT_NODROP`: completions are never lost on CQ overflow.
    pub nodrop: bool,
    /// A multishot receive accepts a total byte limit (`sqe->optlen`, Linux 6.16), which keeps
    /// one arm from grabbing dozens of buffers at once when a stalled connection has a full
    /// socket buffer. Without it a connection may overshoot its cap by one kernel burst (~32).
    pub mshot_recv_limit: bool,
    /// `IORING_FEAT_EXT_ARG` (timeouts on enter).
    pub ext_arg: bool,
    /// Opcodes the ring uses: RECV, SEND, SENDMSG, ASYNC_CANCEL, NOP.
    pub opcodes: bool,
    /// `uname -r`, for the log line.
    pub kernel_release: String,
}

impl Features {
    /// True if [`Ring::new`](crate::Ring::new) can work on this kernel.
    pub fn supports_ring(&self) -> bool {
        self.multishot_recv && self.buf_ring && self.opcodes && self.nodrop
    }
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates the field.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Probes the running kernel. Errors only if io_uring cannot be set up at all (old kernel,
/// seccomp, `kernel.io_uring_disabled`, memlock limits); the message says which.
pub fn probe() -> io::Result<Features> {
    let mut f = Features {
        kernel_release: kernel_release(),
        ..Features::default()
    };
    let mut ring: IoUring = IoUring::builder()
        .build(8)
        .map_err(|e| crate::ring::setup_error(e, 8))?;
    f.nodrop = ring.params().is_feature_nodrop();
    f.ext_arg = ring.params().is_feature_ext_arg();
    let mut p = Probe::new();
    if ring.submitter().register_probe(&mut p).is_ok() {
        f.opcodes = [
            opcode::Recv::CODE,
            opcode::Send::CODE,
            opcode::SendMsg::CODE,
            opcode::AsyncCancel::CODE,
            opcode::Nop::CODE,
        ]
        .iter()
        .all(|&c| p.is_supported(c));
    }
    f.single_issuer = IoUring::<io_uring::squeue::Entry, cqueue::Entry>::builder()
        .setup_single_issuer()
        .build(8)
        .is_ok();
    f.defer_taskrun = IoUring::<io_uring::squeue::Entry, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .is_ok();
    f.coop_taskrun = IoUring::<io_uring::squeue::Entry, cqueue::Entry>::builder()
        .setup_coop_taskrun()
        .build(8)
        .is_ok();
    f.taskrun_flag = IoUring::<io_uring::squeue::Entry, cqueue::Entry>::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(8)
        .is_ok();
    let (buf_ring, multishot) = probe_multishot(&mut ring, f.ext_arg, false);
    f.buf_ring = buf_ring;
    f.multishot_recv = multishot;
    if multishot {
        f.mshot_recv_limit = probe_mshot_limit();
    }
    Ok(f)
}

/// Registers a tiny buffer ring and arms a multishot receive on a socketpair with one byte
/// waiting: multishot works if the completion carries a buffer and `IORING_CQE_F_MORE`.
fn probe_multishot(ring: &mut IoUring, ext_arg: bool, limit: bool) -> (bool, bool) {
    let (a, b) = {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid two-element array.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return (false, false);
        }
        // SAFETY: socketpair returned two fresh descriptors we now own.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    };
    // SAFETY: eventfd(2) with valid flags; checked below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return (false, false);
    }
    // SAFETY: fresh descriptor we own.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let pool = match crate::pool::Pool::new(4, 64, efd) {
        Ok(p) => p,
        Err(_) => return (false, false),
    };
    // SAFETY: the ring mapping lives in `pool`, which is dropped at the end of this function,
    // after the buffer ring was unregistered.
    let registered = unsafe {
        ring.submitter().register_buf_ring_with_flags(
            pool.ring_addr(),
            pool.count(),
            crate::pool::BGID,
            0,
        )
    };
    if registered.is_err() {
        return (false, false);
    }
    for bid in 0..pool.count() {
        pool.provide(bid, bid);
    }
    pool.publish_tail(pool.count());
    let mut multishot = false;
    // SAFETY: writing one byte from a static buffer to our socket.
    if unsafe { libc::write(b.as_raw_fd(), b"x".as_ptr().cast(), 1) } == 1 {
        let mut sqe = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), crate::pool::BGID)
            .build()
            .user_data(1);
        if limit {
            sqe = with_recv_limit(sqe, 1);
        }
        // SAFETY: the SQE references only the socket fd and the registered buffer group.
        if unsafe { ring.submission().push(&sqe) }.is_ok() && ring.submit_and_wait(1).is_ok() {
            if let Some(c) = ring.completion().next() {
                // With a 1-byte total limit the receive must end after its first buffer.
                multishot = c.result() == 1
                    && cqueue::more(c.flags()) != limit
                    && cqueue::buffer_select(c.flags()).is_some();
            }
        }
        // End the receive (if still armed) before the ring goes away: shutdown wakes it with EOF.
        // SAFETY: plain shutdown(2) on our socket.
        unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_RDWR) };
        if ext_arg {
            let ts = types::Timespec::new().sec(1);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = ring.submitter().submit_with_args(1, &args);
        }
        for _ in ring.completion() {}
    }
    let _ = ring.submitter().unregister_buf_ring(crate::pool::BGID);
    (true, multishot)
}

/// Does a multishot receive honour a total byte limit (Linux 6.16)? Older kernels reject the
/// non-zero `optlen` field with EINVAL, which reads as "no".
pub(crate) fn probe_mshot_limit() -> bool {
    match IoUring::builder().build(8) {
        Ok(mut ring) => probe_multishot(&mut ring, false, true).1,
        Err(_) => false,
    }
}

const _: () = assert!(std::mem::size_of::<io_uring::squeue::Entry>() == 64);

/// Sets `sqe->optlen` (offset 44 of the 64-byte SQE), which the `io-uring` crate does not expose
/// for `RecvMulti`: the total bytes after which the multishot receive ends (it completes the
/// receive that crosses the limit, so at most one buffer more than `limit` bytes need).
pub(crate) fn with_recv_limit(e: io_uring::squeue::Entry, limit: u32) -> io_uring::squeue::Entry {
    // SAFETY: `Entry` is a transparent wrapper of the 64-byte `io_uring_sqe` (checked above); any
    // byte pattern is a valid SQE value, and optlen is the u32 at offset 44.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[44..48].copy_from_slice(&limit.to_ne_bytes());
    unsafe { std::mem::transmute::<[u8; 64], io_uring::squeue::Entry>(raw) }
}
