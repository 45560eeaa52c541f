//! `evil`: a test plugin that ignores the SDK's safe wrappers and talks raw ABI, to prove the host
//! checks what a hostile guest can do. Its `pre_query` reads the query itself and:
//!
//! - `badptr`: calls every import with pointers outside memory, negative lengths and a key over
//!   the size limit, and answers `block` with the return codes;
//! - `result-oob`: returns a result pointer outside memory;
//! - `result-garbage`: returns bytes that are not JSON;
//! - `result-kind`: returns `{"kind":"block"}` (the wrong tag);
//! - anything else: continue.
//!
//! It still uses the SDK's `alloc`/`dealloc` exports.
#![allow(clippy::missing_safety_doc)]

#[cfg(target_arch = "wasm32")]
mod raw {
    use std::cell::RefCell;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn kv_get(key_ptr: i32, key_len: i32, val_out_ptr: i32, val_max_len: i32) -> i32;
        fn kv_set(key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32) -> i32;
        fn kv_delete(key_ptr: i32, key_len: i32) -> i32;
        fn sha256_hex(in_ptr: i32, in_len: i32, out_ptr: i32) -> i32;
    }

    thread_local! {
        static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    fn answer(bytes: &[u8]) -> i64 {
        OUT.with(|o| {
            let mut o = o.borrow_mut();
            o.clear();
            o.extend_from_slice(bytes);
            ((o.as_ptr() as usize as i64) << 32) | o.len() as i64
        })
    }

    #[no_mangle]
    pub unsafe extern "C" fn pre_query(ptr: i32, len: i32) -> i64 {
        let input = std::slice::from_raw_parts(ptr as usize as *const u8, len as usize);
        let has = |needle: &[u8]| input.windows(needle.len()).any(|w| w == needle);
        if has(b"\"query\":\"badptr\"") {
            let end = (core::arch::wasm32::memory_size(0) * 65536) as i32;
            let key = b"k";
            let kp = key.as_ptr() as i32;
            let big = vec![b'k'; 2000];
            let codes = [
                kv_get(end - 1, 10, kp, 1),
                kv_get(kp, 1, end - 2, 100),
                kv_get(kp, -1, kp, 1),
                kv_set(kp, 1, end, 1),
                kv_set(big.as_ptr() as i32, 2000, kp, 1),
                kv_delete(-5, 1),
                sha256_hex(kp, 1, end - 10),
                sha256_hex(end + 100, 1, kp),
            ];
            let reason = format!("{codes:?}").replace(' ', "");
            return answer(format!("{{\"action\":\"block\",\"reason\":\"{reason}\"}}").as_bytes());
        }
        if has(b"\"query\":\"result-oob\"") {
            return (0x7fff_0000i64 << 32) | 100;
        }
        if has(b"\"query\":\"result-garbage\"") {
            return answer(b"\x00\x01not json");
        }
        if has(b"\"query\":\"result-kind\"") {
            return answer(br#"{"kind":"block","reason":"x"}"#);
        }
        0
    }
}

// Keeps the SDK (and so its alloc/dealloc exports) linked in.
pub use helios_plugin_abi::ABI_VERSION;
