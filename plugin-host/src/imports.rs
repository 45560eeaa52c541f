//! Host imports (module `env`) and the per-store state they use.
//!
//! Every pointer from the guest is checked against the guest's memory before use; a bad pointer
//! is an error code, never a host panic.

use crate::kv::Replica;
use std::cell::RefCell;
use std::rc::Rc;
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, StoreLimits};

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
    pub kv: Rc<RefCell<Replica>>,
    pub limiter: Limiter,
    /// The instance's exported memory (set right after instantiation).
    pub memory: Option<Memory>,
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

/// Defines the `env` imports in `linker`.
pub(crate) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "kv_get", kv_get)?;
    linker.func_wrap("env", "kv_set", kv_set)?;
    linker.func_wrap("env", "kv_delete", kv_delete)?;
    linker.func_wrap("env", "sha256_hex", sha256_hex)?;
    linker.func_wrap("env", "now_ms", now_ms)?;
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
