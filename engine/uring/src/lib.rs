//! Completion-based socket I/O for one glommio shard, on a private io_uring.
//!
//! Why this crate exists (measured on the development VM, 1:1 byte relay under `pgbench -S`,
//! 50 clients, CPU per transaction): glommio's `TcpStream` 41 µs, plain epoll 33 µs, PgBouncer
//! 31 µs, a completion ring with multishot receives into provided buffers and one submit per loop
//! turn 21 µs. glommio's sockets are readiness based (recv, `POLL_ADD`, a wake-up per message);
//! here a connection keeps one multishot receive armed and every queued send of a loop turn goes
//! to the kernel in one `io_uring_enter`. This crate's `examples/relay.rs`, inside glommio, on a
//! busy shared VM: 15–20 µs per transaction vs 24–26 µs for the same relay on glommio's
//! `TcpStream`, ~1.2–1.7 `io_uring_enter` per transaction (`scripts/bench-relay.sh`).
//!
//! glommio still runs the shard (tasks, timers, channels). Each shard owns one [`Ring`]; its
//! driver task ([`Ring::drive`]) submits, reaps and wakes, and parks in glommio's own reactor on
//! an eventfd registered with the ring when there is nothing to do. See `docs/io-uring.md`.
//!
//! The interface is deliberately small ([`Ring`], [`UringStream`]): the engine has a glommio
//! `TcpStream` implementation of the same methods as fallback when [`probe`] finds the kernel
//! lacking.

mod pool;
mod probe;
mod ring;
mod stream;
#[cfg(test)]
mod tests;

use std::io;

pub use probe::{probe, Features};
pub use ring::{turn_time, Ring, RingStats};
pub use stream::UringStream;

/// Sizes of one shard's ring, fixed at start-up.
///
/// Memory per shard is `recv_buffers * recv_buffer_size` (mapped once, backed lazily) plus the
/// ring itself; it never grows with load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Submission queue entries (the completion queue gets four times as many, because one
    /// armed multishot receive can post many completions per turn).
    pub entries: u32,
    /// Provided receive buffers per shard. Power of two, at most 32768 (kernel limit of a buffer
    /// ring). When all are held by the engine, receives wait.
    pub recv_buffers: u16,
    /// Size of each receive buffer in bytes; one completion fills at most one buffer.
    pub recv_buffer_size: u32,
    /// Per-connection backpressure limit in bytes. The engine stops receiving from the other
    /// side while `pending_send_bytes()` exceeds it; the ring also uses it to bound how many
    /// received-but-not-yet-taken buffers one connection may hold (see [`RingConfig::rx_cap`]).
    pub max_pending_send_bytes: usize,
    /// How long the driver may block in `io_uring_enter` waiting for the next completion when
    /// nothing else on the shard is runnable, before it parks in glommio's reactor instead.
    /// Blocking on the ring is one system call per wake-up; glommio's park costs several (its
    /// three rings, preemption timers, a membarrier) plus the eventfd hop. Glommio's timers and
    /// cross-thread wake-ups wait at most this long (and its preemption timer) meanwhile.
    /// `Duration::ZERO`: always park in glommio.
    pub wait: std::time::Duration,
    /// Loop turns in a row the driver may hold its batch back while tasks keep touching the
    /// ring (tasks woken behind it may add to the batch: fewer, larger submits). 0: submit at
    /// every turn. Measured with pgbench -S at 50 clients on 2 CPUs shared with PostgreSQL:
    /// with two shards, 8 turns cost 6 % less CPU per transaction and gave 7 % more throughput
    /// than 0; with one shard, 8 turns cost 9 % of the throughput and made it erratic for no
    /// CPU saved — one shard serves every client, and each held turn delays all of them.
    pub hold_turns: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            entries: 1024,
            recv_buffers: 1024,
            recv_buffer_size: 16 * 1024,
            max_pending_send_bytes: 256 * 1024,
            wait: std::time::Duration::from_micros(500),
            hold_turns: 8,
        }
    }
}

/// Upper bound for [`RingConfig::wait`]: glommio's timers and cross-thread wake-ups are late by
/// up to this much while the driver blocks.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Upper bound for one receive buffer: larger buffers only waste memory for PostgreSQL traffic.
const MAX_RECV_BUFFER_SIZE: u32 = 1 << 20;

impl RingConfig {
    /// Explains what is wrong with the configuration, if anything.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.entries == 0 || self.entries > 32768 {
            return bad(format!(
                "ring entries must be in 1..=32768, got {}",
                self.entries
            ));
        }
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32768 {
            return bad(format!(
                "recv_buffers must be a power of two up to 32768, got {}",
                self.recv_buffers
            ));
        }
        if self.recv_buffer_size == 0 || self.recv_buffer_size > MAX_RECV_BUFFER_SIZE {
            return bad(format!(
                "recv_buffer_size must be in 1..={MAX_RECV_BUFFER_SIZE}, got {}",
                self.recv_buffer_size
            ));
        }
        if self.max_pending_send_bytes == 0 {
            return bad("max_pending_send_bytes must be > 0".into());
        }
        if self.wait > MAX_WAIT {
            return bad(format!(
                "wait must be at most {} ms, got {:?}",
                MAX_WAIT.as_millis(),
                self.wait
            ));
        }
        Ok(())
    }

    /// Bytes of receive buffers this shard maps.
    pub fn buffer_budget_bytes(&self) -> usize {
        self.recv_buffers as usize * self.recv_buffer_size as usize
    }

    /// How many received buffers one connection may hold before its multishot receive is
    /// cancelled (re-armed when the engine has taken half of them): enough to cover
    /// `max_pending_send_bytes`, at least 2, and at most a quarter of the pool so one stalled
    /// connection cannot starve the shard. Kernel bursts may overshoot it by a few buffers.
    pub fn rx_cap(&self) -> usize {
        let size = self.recv_buffer_size.max(1) as usize;
        let want = self.max_pending_send_bytes.div_ceil(size).max(2);
        want.min((self.recv_buffers as usize / 4).max(1))
    }
}
