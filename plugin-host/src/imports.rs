//! Host imports (module `env`, and WASI preview 1 as `wasi_snapshot_preview1`) and the
//! per-store state they use.
//!
//! Every pointer from the guest is checked against the guest's memory before use; a bad pointer
//! is an error code, never a host panic.
//!
//! WASI preview 1 comes from wasmtime's own `wasmtime-wasi` crate, with nothing granted: no
//! preopened directories (so no file can be opened), no environment variables, no arguments,
//! stdin closed, stdout and stderr discarded, no sockets and no name lookup. Clocks and random
//! numbers are the host's. One function is replaced: `poll_oneoff` (what `std::thread::sleep`
//! and timed waits use) answers `ENOTSUP`, because a host function cannot be interrupted by the
//! epoch deadline and a sleeping plugin would hold its shard's thread past `timeout_ms`. A module
//! that imports anything else is refused at load, as before.

use crate::kv::Replica;
use std::cell::RefCell;
use std::rc::Rc;
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, StoreLimits};
use wasmtime_wasi::p1::WasiP1Ctx;

/// The WASI module name of preview 1.
pub(crate) const WASI_P1_MODULE: &str = "wasi_snapshot_preview1";
/// WASI preview 1 `errno` `notsup`.
const WASI_ERRNO_NOTSUP: i32 = 58;

/// `kv_get`: missing key.
pub const KV_MISSING: i32 = -1;
/// `kv_get`: output buffer too small.
pub const KV_BUFFER_TOO_SMALL: i32 = -2;
/// `kv_set`/`kv_delete`: over a cap or replication backlog full.
pub const KV_OVER_CAP: i32 = -1;
/// Any KV import: a pointer/length outside guest memory (or negative), or key too long.
pub const KV_BAD_POINTER: i32 = -3;
/// `sha256_hex`: a pointer outside guest memory.
pub const SHA_BAD_POINTER: i32 = -1;

/// The data of one plugin instance's `Store`.
pub(crate) struct HostState {
    pub kv: ShardRc,
    pub limiter: Limiter,
    /// The instance's exported memory (set right after instantiation).
    pub memory: Option<Memory>,
    /// WASI preview 1 state (nothing granted: [`wasi_ctx`]).
    pub wasi: WasiP1Ctx,
}

/// The shard's handle on one plugin's KV replica: an `Rc`, shared by the shard's slot and the
/// instance's store, never by two threads.
pub(crate) struct ShardRc(pub Rc<RefCell<Replica>>);

// SAFETY: `wasmtime_wasi::p1::add_to_linker_sync` requires the store data to be `Send`, written
// for hosts whose stores move between threads. Ours never do: a `Store<HostState>` is created in
// `shard::instantiate` and lives only inside `ShardPlugins`, which is `!Send` (its slots hold the
// same `Rc` directly, see `shard::Slot::replica`), so the store is used and dropped on the shard
// thread that made it. The synchronous WASI functions run on the calling thread
// (`wasmtime_wasi::runtime::in_tokio` polls the call's future with `block_on` right there), and
// what WASI may spawn onto tokio's threads must be `'static`, so it cannot hold a borrow of the
// store data, and WASI does not know this type to clone it.
unsafe impl Send for ShardRc {}

impl std::ops::Deref for ShardRc {
    type Target = RefCell<Replica>;
    fn deref(&self) -> &RefCell<Replica> {
        &self.0
    }
}

/// The WASI context of one instance: nothing granted beyond clocks and random numbers (the
/// builder's defaults grant no directory, variable or argument; sockets are switched off
/// explicitly).
pub(crate) fn wasi_ctx() -> WasiP1Ctx {
    wasmtime_wasi::WasiCtxBuilder::new()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build_p1()
}

/// `StoreLimits` plus a note of whether it refused a `memory.grow`, so the trap that follows can
/// be reported as the memory cap.
pub(crate) struct Limiter {
    pub limits: StoreLimits,
    pub memory_refused: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        if !ok {
            self.memory_refused = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// `ptr..ptr+len` inside a memory of `size` bytes.
fn span(size: usize, ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let (ptr, len) = (usize::try_from(ptr).ok()?, usize::try_from(len).ok()?);
    let end = ptr.checked_add(len)?;
    (end <= size).then_some(ptr..end)
}

fn kv_get(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_max: i32,
) -> i32 {
    let Some(mem) = caller.data().memory else {
        return KV_BAD_POINTER;
    };
    let (data, state) = mem.data_and_store_mut(&mut caller);
    let (Some(key), Some(out)) = (
        span(data.len(), key_ptr, key_len),
        span(data.len(), out_ptr, out_max),
    ) else {
        return KV_BAD_POINTER;
    };
    // An Arc clone, so the guest memory can be written while the value is held.
    let Some(value) = state.kv.borrow().get(&data[key]).cloned() else {
        return KV_MISSING;
    };
    if value.len() > out.len() {
        return KV_BUFFER_TOO_SMALL;
    }
    let n = value.len();
    data[out.start..out.start + n].copy_from_slice(&value);
    n as i32
}

fn kv_set(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    val_ptr: i32,
    val_len: i32,
) -> i32 {
    let Some(mem) = caller.data().memory else {
        return KV_BAD_POINTER;
    };
    let (data, state) = mem.data_and_store_mut(&mut caller);
    let (Some(key), Some(val)) = (
        span(data.len(), key_ptr, key_len),
        span(data.len(), val_ptr, val_len),
    ) else {
        return KV_BAD_POINTER;
    };
    match state.kv.borrow_mut().write(&data[key], Some(&data[val])) {
        Ok(()) => 0,
        Err(crate::KvError::KeyTooLong { .. }) => KV_BAD_POINTER,
        Err(_) => KV_OVER_CAP,
    }
}

fn kv_delete(mut caller: Caller<'_, HostState>, key_ptr: i32, key_len: i32) -> i32 {
    let Some(mem) = caller.data().memory else {
        return KV_BAD_POINTER;
    };
    let (data, state) = mem.data_and_store_mut(&mut caller);
    let Some(key) = span(data.len(), key_ptr, key_len) else {
        return KV_BAD_POINTER;
    };
    match state.kv.borrow_mut().write(&data[key], None) {
        Ok(()) => 0,
        Err(crate::KvError::KeyTooLong { .. }) => KV_BAD_POINTER,
        Err(_) => KV_OVER_CAP,
    }
}

fn sha256_hex(mut caller: Caller<'_, HostState>, in_ptr: i32, in_len: i32, out_ptr: i32) -> i32 {
    use sha2::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let Some(mem) = caller.data().memory else {
        return SHA_BAD_POINTER;
    };
    let data = mem.data_mut(&mut caller);
    let (Some(input), Some(out)) = (
        span(data.len(), in_ptr, in_len),
        span(data.len(), out_ptr, 64),
    ) else {
        return SHA_BAD_POINTER;
    };
    let digest = sha2::Sha256::digest(&data[input]);
    let mut hex = [0u8; 64];
    for (i, b) in digest.iter().enumerate() {
        hex[2 * i] = HEX[(b >> 4) as usize];
        hex[2 * i + 1] = HEX[(b & 15) as usize];
    }
    data[out].copy_from_slice(&hex);
    64
}

/// `now_ms`: the host's wall clock, milliseconds since the Unix epoch (ABI 1.1), for plugins'
/// time windows and timestamps (a `wasm32-unknown-unknown` module has no clock of its own).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Defines the `env` imports and WASI preview 1 in `linker`.
pub(crate) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "kv_get", kv_get)?;
    linker.func_wrap("env", "kv_set", kv_set)?;
    linker.func_wrap("env", "kv_delete", kv_delete)?;
    linker.func_wrap("env", "sha256_hex", sha256_hex)?;
    linker.func_wrap("env", "now_ms", now_ms)?;
    wasmtime_wasi::p1::add_to_linker_sync(linker, |s: &mut HostState| &mut s.wasi)?;
    // Blocking waits would outlast the epoch deadline (see the module doc).
    linker.allow_shadowing(true);
    linker.func_wrap(
        WASI_P1_MODULE,
        "poll_oneoff",
        |_in: i32, _out: i32, _n: i32, _nevents: i32| -> i32 { WASI_ERRNO_NOTSUP },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_are_checked() {
        use super::span;
        assert_eq!(span(10, 0, 10), Some(0..10));
        assert_eq!(span(10, 5, 6), None);
        assert_eq!(span(10, -1, 1), None);
        assert_eq!(span(10, 1, -1), None);
        assert_eq!(span(10, i32::MAX, i32::MAX), None);
        assert_eq!(span(10, 10, 0), Some(10..10));
    }
}
