//! The per-shard ring, its connection table and the driver task.
//!
//! All state lives in one `RefCell<Inner>` owned by the shard thread. Streams never touch the
//! kernel: they edit their connection's queues and put it on a work list; the driver turns work
//! lists into SQEs once per loop turn, submits them with one `io_uring_enter` (which also runs
//! deferred completions), and turns CQEs back into queue edits and task wake-ups.
//!
//! Every SQE carries `user_data = generation << 32 | slot << 8 | op`. A slot is freed (and its
//! generation bumped) only once no receive or send of it is in flight, so its fd is closed only
//! then; a completion with an old generation (a cancel answered late, or anything else) is
//! counted as stale and otherwise ignored, after its buffer, if any, went back to the pool.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::pool::{Pool, RxBuf, BGID};
use crate::stream::UringStream;
use crate::RingConfig;

const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_CANCEL: u64 = 3;
/// Iovecs per `sendmsg`: enough to batch every frame a relay queues in one turn.
const MAX_IOV: usize = 64;
const IORING_ENTER_GETEVENTS: u32 = 1;
const MAX_SLOTS: usize = 1 << 24;
/// Size of the ring's table of registered ("fixed") files. A connection whose slot index is
/// below it is registered there under that index, so its operations skip the per-operation
/// file lookup and reference count (`fget`/`fput`); connections beyond it use their plain
/// descriptor. The kernel keeps the table in ordinary memory (8 bytes an entry).
const FIXED_FILES: u32 = 16384;

/// An operation on a connection's socket: by registered-file index if it has one, else by fd.
macro_rules! target {
    ($c:expr, $op:path, $($arg:expr),*) => {
        match $c.fixed {
            Some(i) => $op(types::Fixed(i), $($arg),*),
            None => $op(types::Fd($c.fd.as_raw_fd()), $($arg),*),
        }
    };
}

/// How many free buffers the kernel's ring holds while no receive waits for one. The kernel
/// consumes provided buffers in ring order, so every buffer in the ring is touched once per
/// cycle: with all of a shard's buffers there (512 × 16 KiB by default) each small receive
/// lands on a page and cache line not touched for hundreds of receives. Returned buffers go
/// to a spare stack instead and the ring is topped up from its top, so the same few buffers
/// stay cache- and TLB-hot; when a receive finds the ring empty (ENOBUFS) the spares all go in.
const HOT_BUFFERS: u16 = 128;

thread_local! {
    /// When the running driver's current loop turn began; `None` while it sleeps or parks.
    static TURN_TIME: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time of this shard's current loop turn while its ring driver is running (every task
/// the turn woke runs before the next turn), else the clock. Time stamps that tolerate the
/// length of one pass over the run queue — the start of a wait, when a connection was last
/// used — take this instead of a clock read each (one read per turn instead of several per
/// query).
pub fn turn_time() -> Instant {
    TURN_TIME.with(|t| t.get()).unwrap_or_else(Instant::now)
}

fn set_turn_time(t: Option<Instant>) {
    TURN_TIME.with(|c| c.set(t));
}

fn user_data(key: Key, op: u64) -> u64 {
    (key.gen as u64) << 32 | (key.slot as u64) << 8 | op
}

fn split_user_data(ud: u64) -> (Key, u64) {
    (
        Key {
            slot: ((ud >> 8) & 0xff_ffff) as u32,
            gen: (ud >> 32) as u32,
        },
        ud & 0xff,
    )
}

/// Wraps an io_uring setup failure into an error that names the likely cause.
pub(crate) fn setup_error(e: io::Error, entries: u32) -> io::Error {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid rlimit struct.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    let hint = match e.raw_os_error() {
        Some(libc::ENOMEM) => format!(
            "out of locked memory: io_uring rings count against RLIMIT_MEMLOCK (current limit {} KiB, \
             glommio's own rings take >= 512 KiB per executor); raise `ulimit -l` or use fewer/smaller rings",
            lim.rlim_cur / 1024
        ),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring is not permitted here (kernel.io_uring_disabled sysctl, seccomp or container policy)".into()
        }
        Some(libc::ENOSYS) => "this kernel has no io_uring".into(),
        Some(libc::EINVAL) => "setup flags not supported by this kernel".into(),
        _ => "unexpected error".into(),
    };
    io::Error::new(
        e.kind(),
        format!("io_uring_setup({entries} entries) failed: {e}: {hint}"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

/// Where a connection's multishot receive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// Nothing armed; armed on demand by `poll_recv`.
    Idle,
    /// On the `to_arm` list.
    Listed,
    /// A multishot receive is in the kernel.
    Armed,
    /// Armed, and an `ASYNC_CANCEL` for it is queued or in flight (too many buffers held).
    Cancelling,
    /// Waiting for a free buffer (ended with `ENOBUFS`, or not armed for lack of buffers); on
    /// the `starved` list.
    Starved,
}

/// Why a receive side ended. Errors are kept as errno so they can be reported repeatedly.
#[derive(Debug, Clone, Copy)]
enum RxEnd {
    Eof,
    Err(i32),
}

struct Conn {
    fd: OwnedFd,
    /// Its index in the ring's registered-file table, if it has one. The table holds a
    /// reference to the socket: the entry is cleared before `fd` closes (see
    /// [`Inner::release_closed`]), or the socket would outlive the close.
    fixed: Option<u32>,
    rx: VecDeque<RxBuf>,
    rx_state: Rx,
    rx_end: Option<RxEnd>,
    recv_waker: Option<Waker>,
    tx: VecDeque<Bytes>,
    tx_pending: usize,
    tx_inflight: bool,
    tx_listed: bool,
    tx_err: Option<i32>,
    flush_waker: Option<Waker>,
    /// Receive + send operations in the kernel that reference this fd or `tx` memory.
    ops: u32,
    closing: bool,
    /// The kernel reads these during a `sendmsg`; `Conn` is boxed so their address is stable.
    msg: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
}

impl Conn {
    fn new(fd: OwnedFd) -> Box<Conn> {
        Box::new(Conn {
            fd,
            fixed: None,
            rx: VecDeque::new(),
            rx_state: Rx::Idle,
            rx_end: None,
            recv_waker: None,
            tx: VecDeque::new(),
            tx_pending: 0,
            tx_inflight: false,
            tx_listed: false,
            tx_err: None,
            flush_waker: None,
            ops: 0,
            closing: false,
            // SAFETY: msghdr and iovec are plain C structs for which all-zero is valid.
            msg: unsafe { std::mem::zeroed() },
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV],
        })
    }

    /// May a multishot receive be armed now? `limit` is the number of held buffers below which
    /// arming is allowed (hysteresis after a cancel).
    fn may_arm(&self, limit: usize, shutdown: bool) -> bool {
        !self.closing && !shutdown && self.rx_end.is_none() && self.rx.len() < limit
    }
}

struct Slot {
    gen: u32,
    conn: Option<Box<Conn>>,
}

/// Counters for diagnostics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Receive buffers in the pool.
    pub buffers_total: u32,
    /// Buffers currently offered to the kernel.
    pub buffers_in_kernel: u32,
    /// Free buffers kept back from the kernel (beyond the hot set).
    pub buffers_spare: u32,
    /// Buffers held by `Bytes` (received, not yet dropped; includes those queued for sending).
    pub buffers_held: usize,
    /// Open connections (including ones closing while operations finish).
    pub connections: usize,
    /// Of those, the ones whose operations go through the ring's registered-file table.
    pub registered_files: usize,
    /// Loop turns that held their batch back ([`RingConfig::hold_turns`]).
    pub held_turns: u64,
    /// `io_uring_enter` calls made by the driver.
    pub enters: u64,
    /// Completions reaped.
    pub completions: u64,
    /// Completions that carried a receive buffer.
    pub buffers_received: u64,
    /// Multishot receives that ended with `ENOBUFS` (all buffers held).
    pub enobufs: u64,
    /// Multishot receives armed (first arm and re-arms).
    pub recv_arms: u64,
    /// Receives cancelled because their connection held `rx_cap` buffers.
    pub recv_cancels: u64,
    /// Send / sendmsg operations submitted.
    pub sends: u64,
    /// Completions for a slot generation that no longer exists (ignored).
    pub stale_completions: u64,
    /// Times the driver parked on the eventfd.
    pub parks: u64,
    /// Times the driver blocked on the ring itself (see [`RingConfig::wait`]).
    pub waits: u64,
    /// Of those, the ones that ended without a completion (then it parked in glommio).
    pub wait_timeouts: u64,
}

#[derive(Default)]
struct DriverState {
    waker: Option<Waker>,
    parked: bool,
    kicked: bool,
    running: bool,
}

struct State {
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    live: usize,
    to_arm: Vec<Key>,
    to_send: Vec<Key>,
    to_cancel: Vec<Key>,
    starved: VecDeque<Key>,
    /// Local copy of the buffer ring tail (published to the kernel after each batch).
    buf_tail: u16,
    kernel_free: u32,
    /// Free buffers not in the kernel's ring, most recently used last.
    spare: Vec<u16>,
    /// Buffers the ring holds for its connections (`Conn::rx`), not yet copied out.
    held: usize,
    /// Buffers copied out on this thread, to go back to the kernel at the next turn.
    given_back: Vec<u16>,
    driver: DriverState,
    shutdown: bool,
    wake: Vec<Waker>,
    /// Bytes to drop after the `RefCell` borrow ends (an arbitrary `Bytes` owner may run code).
    grave: Vec<Bytes>,
    /// Freed connections (by slot) whose registered-file entry (the same index) is still to
    /// clear before their descriptor closes and their slot is reused: [`Inner::release_closed`],
    /// at the end of every ring call that can free one.
    closed: Vec<(u32, Box<Conn>)>,
    stats: RingStats,
}

struct Inner {
    // Field order matters: the ring (and with it the buffer ring registration) must go before
    // `Ring::pool` is dropped; `Ring` drops `inner` first.
    uring: IoUring,
    st: State,
    /// Whether the registered-file table could be set up (else every operation uses plain
    /// descriptors).
    fixed_files: bool,
}

impl Inner {
    /// Clears the registered-file entries of connections freed since the last call, then closes
    /// their descriptors (the socket really closes only now: a peer blocked on a full window gets
    /// its reset) and frees their slots.
    fn release_closed(&mut self) {
        for (slot, c) in self.st.closed.drain(..) {
            if let Err(e) = self.uring.submitter().register_files_update(slot, &[-1]) {
                // Cannot happen for a valid index; the socket then stays open until the entry is
                // reused or the ring closes, so say so.
                log::warn!("helios-uring: clearing registered file {slot} failed: {e}");
            }
            drop(c);
            self.st.stats.registered_files -= 1;
            self.st.free_slots.push(slot);
        }
    }
}

/// One shard's io_uring: sockets registered here are served by its driver task.
///
/// Create it on the shard thread inside the glommio executor, spawn [`Ring::drive`] (or call
/// [`Ring::spawn_driver`]), then [`Ring::register`] connected sockets. `!Send` by design.
pub struct Ring {
    inner: RefCell<Inner>,
    pool: Arc<Pool>,
    cfg: RingConfig,
    rx_cap: usize,
    /// Arm multishot receives with a total byte limit (see `Features::mshot_recv_limit`).
    recv_limit: bool,
    /// The eventfd registered with the ring, until the driver hands it to glommio.
    eventfd: Cell<Option<OwnedFd>>,
    /// Bumped by every stream call: tells the driver whether any task touched the ring since
    /// it last looked (if none did, no other task is runnable and it may block on the ring).
    activity: Cell<u64>,
    /// How long the driver may sleep on the ring ([`RingConfig::wait`]); `None` when that is
    /// zero or the kernel takes no timeout on `io_uring_enter` (`IORING_FEAT_EXT_ARG`, 5.11).
    sleep: Option<types::Timespec>,
}

impl Ring {
    /// Sets up the ring, maps and registers the receive buffers, registers the wake-up eventfd,
    /// and logs the shard's memory budget once. Fails with a message naming the cause (unsupported
    /// kernel, memlock limit, invalid config) so the engine can log it and fall back.
    pub fn new(cfg: &RingConfig) -> io::Result<Rc<Ring>> {
        cfg.validate()?;
        let cq = cfg.entries.saturating_mul(4).min(65536);
        let mut is_defer = true;
        let uring: IoUring = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(cq)
            .build(cfg.entries)
        {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                is_defer = false;
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .setup_cqsize(cq)
                    .build(cfg.entries)
                    .map_err(|e| setup_error(e, cfg.entries))?
            }
            Err(e) => return Err(setup_error(e, cfg.entries)),
        };
        let defer_taskrun = is_defer;
        let sleep = (uring.params().is_feature_ext_arg() && !cfg.wait.is_zero())
            .then(|| types::Timespec::from(cfg.wait));

        if !uring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_NODROP (Linux < 5.5): completions could be lost",
            ));
        }

        // SAFETY: eventfd(2) with valid flags, checked. Blocking on purpose: glommio reads it
        // through its own ring, which must wait (poll) instead of failing with EAGAIN.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor we own.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let wake_fd = efd.try_clone()?;
        uring.submitter().register_eventfd(efd.as_raw_fd())?;

        let pool = Pool::new(cfg.recv_buffers, cfg.recv_buffer_size, wake_fd)?;
        // SAFETY: the buffer ring mapping is owned by `pool`, which the `Ring` keeps alive until
        // after `uring` is dropped (see `Inner`).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(pool.ring_addr(), pool.count(), BGID, 0)
        }
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering the provided-buffer ring: {e} (needs Linux 5.19)"),
            )
        })?;
        // The kernel takes provided buffers in ring order: give it a small hot set and keep
        // the rest as spares (see `State::recycle`).
        let provided = pool.count().min(HOT_BUFFERS);
        for bid in 0..provided {
            pool.provide(bid, bid);
        }
        let buf_tail = provided;
        pool.publish_tail(buf_tail);
        // Popped from the end: the lowest ids first.
        let spare: Vec<u16> = (provided..pool.count()).rev().collect();

        // Optional (Linux 5.19 has it; memory-constrained setups may refuse it): without it
        // every operation looks its descriptor up, as before.
        let fixed_files = match uring.submitter().register_files_sparse(FIXED_FILES) {
            Ok(()) => true,
            Err(e) => {
                log::info!("helios-uring: no registered-file table ({e}); using plain descriptors");
                false
            }
        };
        let rx_cap = cfg.rx_cap();
        let recv_limit = crate::probe::probe_mshot_limit();
        log::info!(
            "helios-uring: shard ring {} SQEs / {} CQEs ({}), {} recv buffers x {} B = {} KiB mapped \
             (lazily backed, fixed), per-connection cap {} buffers{}, max pending send {} B",
            uring.params().sq_entries(),
            uring.params().cq_entries(),
            if defer_taskrun { "single issuer, deferred task run" } else { "cooperative task run" },
            cfg.recv_buffers,
            cfg.recv_buffer_size,
            cfg.buffer_budget_bytes() / 1024,
            rx_cap,
            if recv_limit { "" } else { " (+ one kernel burst: no multishot byte limit)" },
            cfg.max_pending_send_bytes,
        );
        let stats = RingStats {
            buffers_total: cfg.recv_buffers as u32,
            ..RingStats::default()
        };
        Ok(Rc::new(Ring {
            inner: RefCell::new(Inner {
                uring,
                st: State {
                    slots: Vec::new(),
                    free_slots: Vec::new(),
                    live: 0,
                    to_arm: Vec::new(),
                    to_send: Vec::new(),
                    to_cancel: Vec::new(),
                    starved: VecDeque::new(),
                    buf_tail,
                    kernel_free: provided as u32,
                    spare,
                    held: 0,
                    given_back: Vec::new(),
                    driver: DriverState::default(),
                    shutdown: false,
                    wake: Vec::new(),
                    grave: Vec::new(),
                    closed: Vec::new(),
                    stats,
                },
                fixed_files,
            }),
            pool,
            cfg: cfg.clone(),
            rx_cap,
            recv_limit,
            eventfd: Cell::new(Some(efd)),
            activity: Cell::new(0),
            sleep,
        }))
    }

    /// The configuration this ring was built with.
    pub fn config(&self) -> &RingConfig {
        &self.cfg
    }

    /// A snapshot of the ring's counters.
    pub fn stats(&self) -> RingStats {
        let inner = self.inner.borrow();
        let mut s = inner.st.stats.clone();
        s.buffers_in_kernel = inner.st.kernel_free;
        s.buffers_spare = inner.st.spare.len() as u32;
        s.buffers_held = self.pool.outstanding() + inner.st.held;
        s.connections = inner.st.live;
        s
    }

    /// Spawns [`Ring::drive`] on the current glommio executor as a detached task.
    pub fn spawn_driver(self: &Rc<Self>) -> glommio::task::JoinHandle<()> {
        glommio::spawn_local(self.clone().drive()).detach()
    }

    /// Stops the ring: every connection is shut down (pending operations fail with
    /// `ECONNABORTED`), and the driver returns once nothing is in flight. Streams stay valid
    /// (their operations fail) until dropped.
    pub fn shutdown(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.st.shutdown = true;
        kick(&mut inner.st);
    }

    /// Takes a connected TCP socket (blocking or not; io_uring does not care) and arms its
    /// multishot receive.
    pub fn register(self: &Rc<Self>, stream: TcpStream) -> io::Result<UringStream> {
        self.touch();
        let mut inner = self.inner.borrow_mut();
        let Inner {
            uring,
            st,
            fixed_files,
        } = &mut *inner;
        if st.shutdown {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "ring is shut down",
            ));
        }
        // SAFETY: into_raw_fd transfers ownership of the open descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
        let raw = fd.as_raw_fd();
        let slot = match st.free_slots.pop() {
            Some(s) => s,
            None => {
                if st.slots.len() >= MAX_SLOTS {
                    return Err(io::Error::other(
                        "helios-uring: too many connections on one ring",
                    ));
                }
                st.slots.push(Slot { gen: 0, conn: None });
                (st.slots.len() - 1) as u32
            }
        };
        let s = &mut st.slots[slot as usize];
        debug_assert!(s.conn.is_none());
        let key = Key { slot, gen: s.gen };
        let mut conn = Conn::new(fd);
        if *fixed_files && slot < FIXED_FILES {
            // A failure only costs the speed-up: the plain descriptor works as well.
            match uring.submitter().register_files_update(slot, &[raw]) {
                Ok(_) => {
                    conn.fixed = Some(slot);
                    st.stats.registered_files += 1;
                }
                Err(e) => log::debug!("helios-uring: registering fd {raw} as file {slot}: {e}"),
            }
        }
        // Arm right away: the first request of a connection then costs no extra turn.
        conn.rx_state = Rx::Listed;
        s.conn = Some(conn);
        st.to_arm.push(key);
        st.live += 1;
        kick(st);
        drop(inner);
        Ok(UringStream::new(self.clone(), key, raw))
    }

    /// The driver: once per loop turn it gives returned buffers back to the kernel, re-arms
    /// receives that waited for buffers, turns queued work into SQEs, submits them with one
    /// `io_uring_enter` (which also runs deferred completions), reaps completions and wakes the
    /// tasks concerned, then yields so they run and queue their answers.
    ///
    /// A turn that finds tasks touched the ring since the last one (they may have woken others
    /// still queued behind the driver) only builds SQEs and yields, up to
    /// [`RingConfig::hold_turns`] turns in a row. When nothing else can run, one
    /// `io_uring_enter` submits everything and blocks for the next completion, up to
    /// [`RingConfig::wait`]; after that (or while glommio wants its loop back) it parks in
    /// glommio's reactor on the ring's eventfd. Returns after [`Ring::shutdown`] once nothing
    /// is in flight, or on a fatal ring error (logged; all connections then fail).
    pub async fn drive(self: Rc<Self>) {
        let efd = {
            let mut inner = self.inner.borrow_mut();
            if inner.st.driver.running {
                log::error!("helios-uring: Ring::drive called twice; the second call returns");
                return;
            }
            inner.st.driver.running = true;
            self.eventfd.take()
        };
        let Some(efd) = efd else {
            log::error!("helios-uring: driver restarted without its eventfd; not driving");
            return;
        };
        // SAFETY: ownership of the eventfd passes to glommio's file (closed when it drops; the
        // ring keeps its own reference to the eventfd through the registration).
        let file = Rc::new(unsafe { glommio::io::BufferedFile::from_raw_fd(efd.into_raw_fd()) });
        let mut park_read: Option<Pin<Box<dyn Future<Output = bool>>>> = None;
        let mut wake = Vec::new();
        let mut grave = Vec::new();
        let mut enter = true;
        let mut read_errors = 0u32;
        let mut seen_activity = self.activity.get();
        let mut held = 0u32;
        loop {
            // Did any task touch the ring since the last turn? Then others may be runnable.
            let activity = self.activity.get();
            let quiet = activity == seen_activity;
            seen_activity = activity;
            // Hold the batch back for the rest of the run queue, but not forever: tasks that
            // keep waking each other must not starve the sends.
            let hold = !quiet && held < self.cfg.hold_turns;
            let may_wait = quiet && !glommio::executor().need_preempt();
            let turned = match self.turn(enter, hold, may_wait, &mut wake, &mut grave) {
                Ok(t) => t,
                Err(e) => {
                    log::error!("helios-uring: io_uring_enter failed, stopping the ring: {e}");
                    self.fail_all(e.raw_os_error().unwrap_or(libc::EIO));
                    break;
                }
            };
            enter = false;
            if self.finished() {
                break;
            }
            held = if let Turned::Held = turned {
                held + 1
            } else {
                0
            };
            if let Turned::Busy | Turned::Held = turned {
                // The tasks this turn woke run before the next one.
                set_turn_time(Some(Instant::now()));
                futures_lite::future::yield_now().await;
                continue;
            }
            set_turn_time(None);
            if !self.prepare_park() {
                enter = true;
                continue;
            }
            let read = park_read.get_or_insert_with(|| {
                let f = file.clone();
                Box::pin(async move {
                    match f.read_at(0, 8).await {
                        Ok(_) => true,
                        Err(e) => {
                            log::warn!("helios-uring: reading the ring eventfd failed: {e}");
                            false
                        }
                    }
                })
            });
            let woke = Park { ring: &self, read }.await;
            self.unpark();
            match woke {
                Woke::Eventfd(ok) => {
                    park_read = None;
                    enter = true;
                    if ok {
                        read_errors = 0;
                    } else {
                        // Degrade to polling rather than spinning or hanging.
                        read_errors += 1;
                        if read_errors > 3 {
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                }
                Woke::Kicked => {}
            }
        }
        set_turn_time(None);
        self.inner.borrow_mut().st.driver.running = false;
        log::debug!("helios-uring: driver stopped");
    }

    /// One loop turn. `hold`: tasks touched the ring since the last turn, so others may still
    /// be runnable: SQEs are built but held back (more may come) unless the kernel has
    /// completions for us anyway. `may_wait`: no other task is runnable; block for the next
    /// completion when there is nothing to reap.
    fn turn(
        &self,
        force_enter: bool,
        hold: bool,
        may_wait: bool,
        wake: &mut Vec<Waker>,
        grave: &mut Vec<Bytes>,
    ) -> io::Result<Turned> {
        let mut inner = self.inner.borrow_mut();
        let Inner { uring, st, .. } = &mut *inner;
        if st.shutdown {
            st.abort_all();
        }
        st.recycle(&self.pool);
        let limit = self.recv_limit.then_some(self.cfg.recv_buffer_size);
        let sends_before = st.stats.sends;
        st.build_sqes(uring, self.rx_cap, limit)?;
        let (queued, kernel_work) = {
            let sq = uring.submission();
            (sq.len() as u32, sq.taskrun() || sq.cq_overflow())
        };
        let kernel_work = kernel_work || !uring.completion().is_empty();
        if hold && !force_enter && !kernel_work {
            // Tasks ran since the last turn: let the rest of the run queue add to the batch.
            st.stats.held_turns += 1;
            return Ok(Turned::Held);
        }
        let sleep = self.sleep.as_ref().filter(|_| {
            may_wait && !kernel_work && !force_enter && !st.shutdown && st.starved.is_empty()
        });
        let wait = sleep.is_some();
        let mut timed_out = false;
        if let Some(ts) = sleep {
            // Submit the batch and sleep until the next completion: one system call. Sends
            // mostly complete inline, during the submit; waiting for one completion more than
            // the batch's sends keeps those from ending the sleep at once. (A send that has to
            // wait for room instead delays the wake-up to its own completion, or the timeout.)
            st.stats.enters += 1;
            st.stats.waits += 1;
            let sends = (st.stats.sends - sends_before) as usize;
            let args = types::SubmitArgs::new().timespec(ts);
            match uring.submitter().submit_with_args(1 + sends, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                    timed_out = uring.completion().is_empty();
                    if timed_out {
                        st.stats.wait_timeouts += 1;
                    }
                }
                // A signal, glommio's task work, or a backed-up CQ: reap and go round again.
                Err(e) if transient(&e) => {}
                Err(e) => return Err(e),
            }
        } else if force_enter || queued > 0 || kernel_work {
            st.stats.enters += 1;
            // SAFETY: plain enter; the SQEs it submits reference memory kept alive by `Conn`s
            // (boxed, freed only after their completions) and the pool.
            match unsafe {
                uring
                    .submitter()
                    .enter::<libc::sigset_t>(queued, 0, IORING_ENTER_GETEVENTS, None)
            } {
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let reaped = st.reap(uring, &self.pool, self.rx_cap);
        std::mem::swap(wake, &mut st.wake);
        std::mem::swap(grave, &mut st.grave);
        inner.release_closed();
        drop(inner);
        // Buffers first, so a woken task already sees them back in the pool.
        grave.clear();
        for w in wake.drain(..) {
            w.wake();
        }
        // Idle: nothing came back and nothing was submitted, or the wait timed out.
        let idle = reaped == 0 && (timed_out || (!wait && queued == 0 && !kernel_work));
        Ok(if idle { Turned::Idle } else { Turned::Busy })
    }

    fn finished(&self) -> bool {
        let inner = self.inner.borrow();
        inner.st.shutdown
            && inner
                .st
                .slots
                .iter()
                .all(|s| s.conn.as_ref().is_none_or(|c| c.ops == 0))
    }

    /// Re-enables the eventfd, then checks (in that order, so nothing can slip between) whether
    /// there is work after all. Returns true if the driver may park.
    fn prepare_park(&self) -> bool {
        let mut inner = self.inner.borrow_mut();
        let Inner { uring, st, .. } = &mut *inner;
        let cq = uring.completion();
        cq.enable_eventfd();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let cq_ready = !cq.is_empty();
        drop(cq);
        let sq = uring.submission();
        // Deferred work queued while the eventfd was disabled did not signal it, and will not
        // signal again until it has run: IORING_SQ_TASKRUN tells us about it.
        let kernel_work = !sq.is_empty() || sq.taskrun() || sq.cq_overflow();
        drop(sq);
        let local_work = !st.to_arm.is_empty()
            || !st.to_send.is_empty()
            || !st.to_cancel.is_empty()
            || !st.given_back.is_empty()
            || (!st.starved.is_empty() && !st.spare.is_empty());
        let buffers_back = self.pool.has_returned();
        if cq_ready || kernel_work || local_work || buffers_back || st.shutdown {
            uring.completion().disable_eventfd();
            return false;
        }
        if !st.starved.is_empty() && !self.pool.park_starved() {
            uring.completion().disable_eventfd();
            return false;
        }
        st.driver.parked = true;
        st.driver.kicked = false;
        st.stats.parks += 1;
        true
    }

    fn unpark(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.st.driver.parked = false;
        inner.st.driver.kicked = false;
        inner.st.driver.waker = None;
        inner.uring.completion().disable_eventfd();
        self.pool.unpark_starved();
    }

    /// A fatal ring error: fail every connection so no task waits forever.
    fn fail_all(&self, errno: i32) {
        let mut inner = self.inner.borrow_mut();
        let st = &mut inner.st;
        st.shutdown = true;
        for s in st.slots.iter_mut() {
            if let Some(c) = s.conn.as_mut() {
                c.rx_end.get_or_insert(RxEnd::Err(errno));
                c.tx_err.get_or_insert(errno);
                st.wake.extend(c.recv_waker.take());
                st.wake.extend(c.flush_waker.take());
            }
        }
        let wake = std::mem::take(&mut st.wake);
        drop(inner);
        wake.into_iter().for_each(Waker::wake);
    }

    fn with_conn<R>(&self, key: Key, f: impl FnOnce(&mut State, &mut Conn) -> R) -> Option<R> {
        let mut inner = self.inner.borrow_mut();
        let st = &mut inner.st;
        let mut conn = st.take_conn(key)?;
        let r = f(st, &mut conn);
        // Never frees the connection: only `close` and completions make one closing and idle,
        // and they free it themselves (so nothing here for `Inner::release_closed`).
        st.put_conn(key, conn);
        Some(r)
    }

    fn touch(&self) {
        self.activity.set(self.activity.get().wrapping_add(1));
    }

    pub(crate) fn poll_recv(&self, key: Key, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        self.poll_recv_with(key, cx, Bytes::new, |st, pool, b| {
            st.held -= 1;
            pool.into_bytes(b)
        })
    }

    /// Receives into `dst`: the ring's buffer is copied and goes straight back to the kernel
    /// (no `Bytes` made, nothing counted across threads). `Ok(0)` is end of stream.
    pub(crate) fn poll_recv_into(
        &self,
        key: Key,
        cx: &mut Context<'_>,
        dst: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        self.poll_recv_with(
            key,
            cx,
            || 0,
            |st, pool, b| {
                dst.extend_from_slice(pool.slice(&b));
                let n = b.len();
                st.give_back(b);
                if !st.starved.is_empty() {
                    kick(st);
                }
                n
            },
        )
    }

    fn poll_recv_with<T>(
        &self,
        key: Key,
        cx: &mut Context<'_>,
        eof: impl FnOnce() -> T,
        take: impl FnOnce(&mut State, &Arc<Pool>, RxBuf) -> T,
    ) -> Poll<io::Result<T>> {
        self.touch();
        let rearm_below = self.rx_cap.div_ceil(2).max(1);
        let pool = &self.pool;
        let r = self.with_conn(key, |st, c| {
            if let Some(b) = c.rx.pop_front() {
                if c.rx_state == Rx::Idle && c.may_arm(rearm_below, st.shutdown) {
                    c.rx_state = Rx::Listed;
                    st.to_arm.push(key);
                    kick(st);
                }
                return Poll::Ready(Ok(take(st, pool, b)));
            }
            match c.rx_end {
                Some(RxEnd::Eof) => return Poll::Ready(Ok(eof())),
                Some(RxEnd::Err(e)) => return Poll::Ready(Err(io::Error::from_raw_os_error(e))),
                None => {}
            }
            if c.closing {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            }
            if c.rx_state == Rx::Idle && c.may_arm(rearm_below, st.shutdown) {
                c.rx_state = Rx::Listed;
                st.to_arm.push(key);
                kick(st);
            }
            if !c
                .recv_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                c.recv_waker = Some(cx.waker().clone());
            }
            Poll::Pending
        });
        r.unwrap_or_else(|| Poll::Ready(Err(io::ErrorKind::NotConnected.into())))
    }

    pub(crate) fn queue_send(&self, key: Key, data: Bytes) {
        self.touch();
        if data.is_empty() {
            return;
        }
        // Dropped outside the borrow if the connection can no longer send.
        let _rejected = self.with_conn(key, |st, c| {
            if c.tx_err.is_some() || c.closing {
                return Some(data);
            }
            c.tx_pending += data.len();
            c.tx.push_back(data);
            if !c.tx_inflight && !c.tx_listed {
                c.tx_listed = true;
                st.to_send.push(key);
                kick(st);
            }
            None
        });
    }

    pub(crate) fn pending_send_bytes(&self, key: Key) -> usize {
        let inner = self.inner.borrow();
        match inner.st.slots.get(key.slot as usize) {
            Some(Slot { gen, conn: Some(c) }) if *gen == key.gen => c.tx_pending,
            _ => 0,
        }
    }

    pub(crate) fn poll_flush(&self, key: Key, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.touch();
        let r = self.with_conn(key, |_, c| {
            if let Some(e) = c.tx_err {
                return Poll::Ready(Err(io::Error::from_raw_os_error(e)));
            }
            if c.tx.is_empty() && !c.tx_inflight {
                return Poll::Ready(Ok(()));
            }
            if !c
                .flush_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                c.flush_waker = Some(cx.waker().clone());
            }
            Poll::Pending
        });
        r.unwrap_or_else(|| Poll::Ready(Err(io::ErrorKind::NotConnected.into())))
    }

    /// Shuts the socket down (ending an armed multishot receive and failing a blocked send),
    /// cancels the receive too in case shutdown could not end it, drops queued data, and frees
    /// the slot — closing the fd — once no operation is in flight.
    pub(crate) fn close(&self, key: Key) {
        self.touch();
        let mut inner = self.inner.borrow_mut();
        let st = &mut inner.st;
        let Some(mut c) = st.take_conn(key) else {
            return;
        };
        if !c.closing {
            c.closing = true;
            // SAFETY: shutdown(2) on the socket we own; ENOTCONN (peer already gone) is fine.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            st.give_back_all(&mut c.rx);
            if !c.tx_inflight {
                st.grave.extend(c.tx.drain(..));
                c.tx_pending = 0;
            }
            c.recv_waker = None;
            c.flush_waker = None;
            match c.rx_state {
                Rx::Armed => {
                    c.rx_state = Rx::Cancelling;
                    st.to_cancel.push(key);
                    kick(st);
                }
                Rx::Listed | Rx::Starved => c.rx_state = Rx::Idle,
                Rx::Idle | Rx::Cancelling => {}
            }
        }
        st.put_conn(key, c);
        let grave = std::mem::take(&mut st.grave);
        inner.release_closed();
        drop(inner);
        drop(grave);
    }

    pub(crate) fn pool_contains(&self, ptr: *const u8) -> bool {
        self.pool.contains(ptr)
    }

    /// Test hook: a NOP whose completion looks like a receive ending with EOF for `key`.
    #[cfg(test)]
    pub(crate) fn inject_recv_eof(&self, key: Key) {
        let mut inner = self.inner.borrow_mut();
        let e = opcode::Nop::new()
            .build()
            .user_data(user_data(key, OP_RECV));
        // SAFETY: a NOP references no memory.
        unsafe { inner.uring.submission().push(&e) }.expect("SQ has room in the test");
        kick(&mut inner.st);
    }

    #[cfg(test)]
    pub(crate) fn key_of(stream: &UringStream) -> Key {
        stream.key()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        let in_flight: u32 = inner
            .st
            .slots
            .iter()
            .filter_map(|s| s.conn.as_ref())
            .map(|c| c.ops)
            .sum();
        if in_flight == 0 {
            return;
        }
        // The driver did not drain (never ran, or was dropped). Shut every socket so the kernel
        // finishes their operations, and wait a bounded time; if they still do not finish, the
        // kernel may yet write into receive buffers or read send buffers, so leak them.
        for s in inner.st.slots.iter() {
            if let Some(c) = s.conn.as_ref() {
                // SAFETY: shutdown(2) on a socket we own.
                unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = inner.uring.submitter().submit_with_args(1, &args);
            inner.st.reap(&mut inner.uring, &self.pool, usize::MAX);
            inner.release_closed();
            let left: u32 = inner
                .st
                .slots
                .iter()
                .filter_map(|s| s.conn.as_ref())
                .map(|c| c.ops)
                .sum();
            if left == 0 {
                return;
            }
        }
        log::error!(
            "helios-uring: ring dropped with operations still in flight; leaking its buffers"
        );
        std::mem::forget(self.pool.clone());
        for s in inner.st.slots.iter_mut() {
            if let Some(c) = s.conn.take() {
                if c.ops > 0 {
                    std::mem::forget(c);
                }
            }
        }
    }
}

/// Wakes a parked driver (once) so it picks up new work.
fn kick(st: &mut State) {
    if st.driver.parked && !st.driver.kicked {
        st.driver.kicked = true;
        if let Some(w) = st.driver.waker.as_ref() {
            w.wake_by_ref();
        }
    }
}

enum Woke {
    Eventfd(bool),
    Kicked,
}

enum Turned {
    /// Something was submitted or reaped: yield so tasks run, then turn again.
    Busy,
    /// SQEs were built but not submitted: yield, then turn again.
    Held,
    /// Nothing to do: park.
    Idle,
}

/// Interrupted, or the CQ is backed up: the next turn retries after reaping.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

/// The driver's park: the eventfd read completing in glommio's reactor, or a kick from a task on
/// this shard that queued work.
struct Park<'a> {
    ring: &'a Ring,
    read: &'a mut Pin<Box<dyn Future<Output = bool>>>,
}

impl Future for Park<'_> {
    type Output = Woke;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Woke> {
        if let Poll::Ready(ok) = self.read.as_mut().poll(cx) {
            return Poll::Ready(Woke::Eventfd(ok));
        }
        let mut inner = self.ring.inner.borrow_mut();
        if inner.st.driver.kicked {
            return Poll::Ready(Woke::Kicked);
        }
        inner.st.driver.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl State {
    /// Takes a live connection out of its slot for editing; [`State::put_conn`] puts it back (or
    /// frees the slot if it is closing and idle). Taking it out keeps the borrow checker happy
    /// while the rest of the state is edited alongside.
    fn take_conn(&mut self, key: Key) -> Option<Box<Conn>> {
        match self.slots.get_mut(key.slot as usize) {
            Some(s) if s.gen == key.gen => s.conn.take(),
            _ => None,
        }
    }

    fn put_conn(&mut self, key: Key, mut c: Box<Conn>) {
        let s = &mut self.slots[key.slot as usize];
        debug_assert!(s.gen == key.gen && s.conn.is_none());
        if !(c.closing && c.ops == 0) {
            s.conn = Some(c);
            return;
        }
        s.gen = s.gen.wrapping_add(1);
        // Dropping `c` closes the fd: safe now, no operation references it any more.
        self.give_back_all(&mut c.rx);
        self.grave.extend(c.tx.drain(..));
        self.wake.extend(c.recv_waker.take());
        self.wake.extend(c.flush_waker.take());
        self.live -= 1;
        if c.fixed.is_some() {
            self.closed.push((key.slot, c));
        } else {
            drop(c);
            self.free_slots.push(key.slot);
        }
    }

    fn abort_all(&mut self) {
        for slot in 0..self.slots.len() {
            let key = Key {
                slot: slot as u32,
                gen: self.slots[slot].gen,
            };
            let Some(mut c) = self.take_conn(key) else {
                continue;
            };
            if c.rx_end.is_none() || c.tx_err.is_none() {
                // SAFETY: shutdown(2) on a socket we own.
                unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
                c.rx_end.get_or_insert(RxEnd::Err(libc::ECONNABORTED));
                c.tx_err.get_or_insert(libc::ECONNABORTED);
                if !c.tx_inflight {
                    self.grave.extend(c.tx.drain(..));
                    c.tx_pending = 0;
                }
                self.wake.extend(c.recv_waker.take());
                self.wake.extend(c.flush_waker.take());
                if c.rx_state == Rx::Armed {
                    c.rx_state = Rx::Cancelling;
                    self.to_cancel.push(key);
                }
            }
            self.put_conn(key, c);
        }
    }

    /// A buffer copied out on this thread: back to the kernel at the next turn.
    fn give_back(&mut self, b: RxBuf) {
        self.held -= 1;
        self.given_back.push(b.bid);
    }

    fn give_back_all(&mut self, rx: &mut VecDeque<RxBuf>) {
        for b in rx.drain(..) {
            self.give_back(b);
        }
    }

    /// Buffers given back on this thread or dropped by their last `Bytes` become spares; the
    /// kernel's ring is topped up from the most recently returned ones to [`HOT_BUFFERS`], or
    /// with every spare while receives wait for a buffer.
    fn recycle(&mut self, pool: &Pool) {
        self.spare.append(&mut self.given_back);
        pool.drain_returned(|bid| self.spare.push(bid));
        let want = if self.starved.is_empty() {
            u32::from(HOT_BUFFERS)
        } else {
            u32::from(pool.count())
        };
        let mut tail = self.buf_tail;
        let mut n = 0;
        while self.kernel_free + n < want {
            let Some(bid) = self.spare.pop() else { break };
            pool.provide(tail, bid);
            tail = tail.wrapping_add(1);
            n += 1;
        }
        if n > 0 {
            pool.publish_tail(tail);
            self.buf_tail = tail;
            self.kernel_free += n;
            debug_assert!(self.kernel_free <= pool.count() as u32);
        }
    }

    /// Turns the work lists into SQEs. Returns how many were queued.
    /// `recv_limit` is the buffer size when multishot receives can take a byte limit.
    fn build_sqes(
        &mut self,
        uring: &mut IoUring,
        rx_cap: usize,
        recv_limit: Option<u32>,
    ) -> io::Result<usize> {
        let mut n = 0;
        // Arms are gated on free buffers: at most one per buffer in the kernel's ring, waiting
        // connections (ENOBUFS or over budget) first, oldest first. An idle armed connection
        // consumes nothing, but arming more connections than buffers only buys ENOBUFS.
        let mut budget = self.kernel_free as usize + self.spare.len();
        let mut to_arm = std::mem::take(&mut self.to_arm);
        let waiting = self.starved.len();
        for i in 0..waiting + to_arm.len() {
            let key = if i < waiting {
                match self.starved.pop_front() {
                    Some(k) => k,
                    None => continue,
                }
            } else {
                to_arm[i - waiting]
            };
            let Some(mut c) = self.take_conn(key) else {
                continue;
            };
            let expected = if i < waiting { Rx::Starved } else { Rx::Listed };
            if c.rx_state == expected {
                if !c.may_arm(rx_cap, self.shutdown) {
                    // Full connections wait for the engine to take data; `poll_recv` re-arms.
                    c.rx_state = Rx::Idle;
                } else if budget == 0 {
                    c.rx_state = Rx::Starved;
                    self.starved.push_back(key);
                } else {
                    budget -= 1;
                    let mut e = target!(c, opcode::RecvMulti::new, BGID)
                        .build()
                        .user_data(user_data(key, OP_RECV));
                    if let Some(size) = recv_limit {
                        // Room for `room` more buffers: the receive crossing the limit completes,
                        // so stop one byte into the last buffer.
                        let room = rx_cap.saturating_sub(c.rx.len()).max(1) as u64;
                        let limit = ((room - 1) * size as u64 + 1).min(u32::MAX as u64) as u32;
                        e = crate::probe::with_recv_limit(e, limit);
                    }
                    c.rx_state = Rx::Armed;
                    c.ops += 1;
                    self.stats.recv_arms += 1;
                    n += 1;
                    if let Err(e) = push(uring, &e) {
                        self.put_conn(key, c);
                        return Err(e);
                    }
                }
            }
            self.put_conn(key, c);
        }
        to_arm.clear();
        self.to_arm = to_arm;

        let mut to_send = std::mem::take(&mut self.to_send);
        for key in to_send.drain(..) {
            let Some(mut c) = self.take_conn(key) else {
                continue;
            };
            c.tx_listed = false;
            if !(c.tx_inflight || c.tx.is_empty() || c.tx_err.is_some() || c.closing) {
                let e = build_send(&mut c).user_data(user_data(key, OP_SEND));
                c.tx_inflight = true;
                c.ops += 1;
                self.stats.sends += 1;
                n += 1;
                if let Err(e) = push(uring, &e) {
                    self.put_conn(key, c);
                    return Err(e);
                }
            }
            self.put_conn(key, c);
        }
        self.to_send = to_send;

        let mut to_cancel = std::mem::take(&mut self.to_cancel);
        for key in to_cancel.drain(..) {
            let Some(c) = self.take_conn(key) else {
                continue;
            };
            let cancelling = c.rx_state == Rx::Cancelling;
            self.put_conn(key, c);
            if cancelling {
                // The cancel's own completion is not tracked: if it arrives after the slot was
                // freed, its generation no longer matches and it is ignored.
                let e = opcode::AsyncCancel::new(user_data(key, OP_RECV))
                    .build()
                    .user_data(user_data(key, OP_CANCEL));
                push(uring, &e)?;
                self.stats.recv_cancels += 1;
                n += 1;
            }
        }
        self.to_cancel = to_cancel;
        Ok(n)
    }

    /// Processes every available completion. Returns how many.
    fn reap(&mut self, uring: &mut IoUring, pool: &Arc<Pool>, rx_cap: usize) -> usize {
        let mut n = 0;
        for cqe in uring.completion() {
            n += 1;
            self.complete(cqe.user_data(), cqe.result(), cqe.flags(), pool, rx_cap);
        }
        self.stats.completions += n as u64;
        n
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32, pool: &Arc<Pool>, rx_cap: usize) {
        let (key, op) = split_user_data(ud);
        let buf = cqueue::buffer_select(flags).map(|bid| {
            debug_assert!(self.kernel_free > 0);
            self.kernel_free = self.kernel_free.saturating_sub(1);
            self.stats.buffers_received += 1;
            self.held += 1;
            pool.received(bid, res.max(0) as usize)
        });
        let Some(mut c) = self.take_conn(key) else {
            self.stats.stale_completions += 1;
            if let Some(b) = buf {
                self.give_back(b);
            }
            return;
        };
        match op {
            OP_RECV => self.complete_recv(key, &mut c, res, flags, buf, rx_cap),
            OP_SEND => self.complete_send(key, &mut c, res),
            OP_CANCEL => {}
            _ => debug_assert!(false, "unknown op {op}"),
        }
        self.put_conn(key, c);
    }

    fn complete_recv(
        &mut self,
        key: Key,
        c: &mut Conn,
        res: i32,
        flags: u32,
        buf: Option<RxBuf>,
        rx_cap: usize,
    ) {
        if let Some(b) = buf {
            if c.closing || b.is_empty() {
                self.give_back(b);
            } else {
                c.rx.push_back(b);
                self.wake.extend(c.recv_waker.take());
            }
        }
        if cqueue::more(flags) {
            if c.rx_state == Rx::Armed && c.rx.len() >= rx_cap && !c.closing {
                c.rx_state = Rx::Cancelling;
                self.to_cancel.push(key);
            }
            return;
        }
        debug_assert!(c.ops > 0);
        c.ops -= 1;
        c.rx_state = Rx::Idle;
        match res {
            r if r > 0 => {
                // The kernel ended the multishot (e.g. CQ overflow): re-arm if allowed.
                if c.may_arm(rx_cap, self.shutdown) {
                    c.rx_state = Rx::Listed;
                    self.to_arm.push(key);
                }
            }
            0 => {
                c.rx_end.get_or_insert(RxEnd::Eof);
                self.wake.extend(c.recv_waker.take());
            }
            r if r == -libc::ENOBUFS => {
                self.stats.enobufs += 1;
                if !c.closing && !self.shutdown {
                    c.rx_state = Rx::Starved;
                    self.starved.push_back(key);
                }
            }
            r if r == -libc::ECANCELED => {
                // Our cancel (too many held buffers, or close). If the engine already took
                // enough, re-arm now; otherwise `poll_recv` does it.
                if c.may_arm(rx_cap.div_ceil(2).max(1), self.shutdown) {
                    c.rx_state = Rx::Listed;
                    self.to_arm.push(key);
                }
            }
            r => {
                c.rx_end.get_or_insert(RxEnd::Err(-r));
                self.wake.extend(c.recv_waker.take());
            }
        }
    }

    fn complete_send(&mut self, key: Key, c: &mut Conn, res: i32) {
        debug_assert!(c.ops > 0 && c.tx_inflight);
        c.ops -= 1;
        c.tx_inflight = false;
        if res <= 0 {
            // res == 0 for a non-empty send would loop forever; treat it as a broken pipe.
            let errno = if res == 0 { libc::EPIPE } else { -res };
            c.tx_err.get_or_insert(errno);
            self.grave.extend(c.tx.drain(..));
            c.tx_pending = 0;
        } else {
            let mut sent = res as usize;
            debug_assert!(sent <= c.tx_pending);
            c.tx_pending -= sent.min(c.tx_pending);
            while sent > 0 {
                let Some(front) = c.tx.front_mut() else { break };
                if front.len() <= sent {
                    sent -= front.len();
                    // Dropping the chunk is what returns a forwarded receive buffer to the pool:
                    // only now has the kernel finished reading it.
                    self.grave.extend(c.tx.pop_front());
                } else {
                    front.advance(sent);
                    sent = 0;
                }
            }
            if c.closing || self.shutdown {
                self.grave.extend(c.tx.drain(..));
                c.tx_pending = 0;
            } else if !c.tx.is_empty() && !c.tx_listed {
                c.tx_listed = true;
                self.to_send.push(key);
            }
        }
        if c.tx.is_empty() || c.tx_err.is_some() {
            self.wake.extend(c.flush_waker.take());
        }
    }
}

/// One `send` for a single queued chunk, else one `sendmsg` over up to [`MAX_IOV`] chunks.
fn build_send(c: &mut Conn) -> squeue::Entry {
    if c.tx.len() == 1 {
        let b = &c.tx[0];
        let len = b.len().min(u32::MAX as usize) as u32;
        return target!(c, opcode::Send::new, b.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
    }
    let mut k = 0;
    for (iov, b) in c.iov.iter_mut().zip(c.tx.iter()) {
        iov.iov_base = b.as_ptr() as *mut libc::c_void;
        iov.iov_len = b.len();
        k += 1;
    }
    c.msg.msg_iov = c.iov.as_mut_ptr();
    c.msg.msg_iovlen = k;
    target!(c, opcode::SendMsg::new, &c.msg)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build()
}

/// Queues one SQE, submitting first if the SQ is full.
fn push(uring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
    // SAFETY (both pushes): every SQE built by the driver references memory that outlives its
    // completion (boxed `Conn` fields, `Bytes` held in `tx`, the pool).
    if unsafe { uring.submission().push(e) }.is_ok() {
        return Ok(());
    }
    uring.submit()?;
    unsafe { uring.submission().push(e) }
        .map_err(|_| io::Error::other("io_uring SQ full after submit"))
}
