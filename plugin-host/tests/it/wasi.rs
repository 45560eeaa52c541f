//! WASI preview 1 guests (`wasm32-wasip1`): they load and run with `std`, under the same limits,
//! and are granted nothing but clocks and random numbers.

use crate::common::*;
use helios_plugin_host::PreQueryDecision;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn wasi_runtime(extra: &str) -> helios_plugin_host::PluginRuntime {
    runtime_ok(&config(&format!(
        "enabled = true\n{extra}\n{}",
        entry("wasi-std", "wasi-std", "")
    )))
}

#[test]
fn a_wasip1_plugin_using_std_loads_and_runs() {
    let rt = wasi_runtime("");
    assert_eq!(
        rt.plugins()[0].hooks,
        vec![helios_plugin_host::Hook::PreQuery]
    );
    let mut shard = rt.shard(0);
    assert_eq!(pre(&mut shard, "SELECT 1"), PreQueryDecision::Continue);
    // std::time: the host's wall clock and a monotonic clock.
    let reason = answer(pre(&mut shard, "wasi:time"));
    let unix: u64 = reason
        .strip_prefix("time: unix=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{reason}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(unix) < 60, "guest clock {unix}, host {now}");
    assert!(reason.ends_with("monotonic_ok=true"), "{reason}");
    // println! and eprintln! succeed (their output is discarded).
    assert_eq!(pre(&mut shard, "wasi:print"), PreQueryDecision::Continue);
    assert_eq!(shard.stats()[0].failures, 0);
}

#[test]
fn random_state_comes_from_the_hosts_random_numbers() {
    // Each instance seeds its HashMap hasher from WASI random_get: two instances (two runtimes)
    // hash "x" differently, which a constant seed would not.
    let hash = || {
        let rt = wasi_runtime("");
        let mut shard = rt.shard(0);
        answer(pre(&mut shard, "wasi:random"))
    };
    let (a, b) = (hash(), hash());
    assert!(a.starts_with("random: "), "{a}");
    assert_ne!(a, b, "two instances drew the same random seed");
}

#[test]
fn nothing_is_granted_files_environment_arguments() {
    let rt = wasi_runtime("");
    let mut shard = rt.shard(0);
    let dir = TempDir::new("wasi-files");
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "s3cret").unwrap();
    for path in [
        secret.display().to_string(),
        "/etc/passwd".into(),
        "secret.txt".into(),
    ] {
        let r = answer(pre(&mut shard, &format!("wasi:open {path}")));
        assert!(r.starts_with(&format!("open {path}: failed: ")), "{r}");
    }
    let target = dir.join("written.txt");
    let r = answer(pre(&mut shard, &format!("wasi:write {}", target.display())));
    assert!(r.contains(": failed: "), "{r}");
    assert!(!target.exists(), "the guest wrote a host file");
    // The proxy's environment (this test process has plenty) and arguments are not passed.
    let r = answer(pre(&mut shard, "wasi:env"));
    assert!(r.starts_with("env: vars=0 args=0 cwd="), "{r}");
    assert_eq!(
        shard.stats()[0].failures,
        0,
        "refusals are errors, not traps"
    );
}

#[test]
fn a_sleeping_wasip1_plugin_fails_at_once_and_recovers() {
    // poll_oneoff (std::thread::sleep) answers ENOTSUP: a host call could not be cut by the
    // time limit, so it is not offered; std then panics, which traps the call.
    let rt = wasi_runtime("timeout_ms = 200");
    let mut shard = rt.shard(0);
    let t0 = Instant::now();
    let d = pre(&mut shard, "wasi:sleep");
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    match d {
        PreQueryDecision::Block(b) => {
            assert!(b.reason.contains("trapped"), "{}", b.reason);
            assert!(b.reason.contains("fail_closed"), "{}", b.reason);
        }
        other => panic!("expected a block, got {other:?}"),
    }
    assert_eq!(pre(&mut shard, "SELECT 1"), PreQueryDecision::Continue);
    assert_eq!(shard.stats()[0].failures, 1);
}

#[test]
fn limits_apply_to_wasip1_plugins() {
    // Fuel: the same budget cuts a WASI plugin's call (the HashMap work of wasi:time is more
    // than 50 000 units; a plain statement, measured, between 10 000 and 20 000), and the next
    // call gets its budget again; with a budget 20 times larger wasi:time answers.
    let rt = wasi_runtime("fuel_per_call = 50000");
    let mut shard = rt.shard(0);
    let r = answer(pre(&mut shard, "wasi:time"));
    assert!(r.contains("ran out of fuel (50000 units)"), "{r}");
    assert_eq!(pre(&mut shard, "SELECT 1"), PreQueryDecision::Continue);
    let rt = wasi_runtime("fuel_per_call = 1000000");
    let r = answer(pre(&mut rt.shard(0), "wasi:time"));
    assert!(r.starts_with("time: unix="), "{r}");
}

/// A minimal plugin module, hand-assembled (the host is built without a WAT parser): `memory`,
/// `alloc`, `dealloc` and a `pre_query` that continues, plus one function import
/// `module::field` of type `() -> ()` when given.
fn module_importing(import: Option<(&str, &str)>) -> Vec<u8> {
    fn name(out: &mut Vec<u8>, s: &str) {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    fn section(m: &mut Vec<u8>, id: u8, content: &[u8]) {
        m.push(id);
        m.push(content.len() as u8);
        m.extend_from_slice(content);
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 () -> (); 1 (i32) -> i32; 2 (i32, i32) -> (); 3 (i32, i32) -> i64.
    section(
        &mut m,
        1,
        &[
            0x04, 0x60, 0x00, 0x00, 0x60, 0x01, 0x7f, 0x01, 0x7f, 0x60, 0x02, 0x7f, 0x7f, 0x00,
            0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7e,
        ],
    );
    let n_imports = u8::from(import.is_some());
    if let Some((module, field)) = import {
        let mut imports = vec![0x01];
        name(&mut imports, module);
        name(&mut imports, field);
        imports.extend_from_slice(&[0x00, 0x00]);
        section(&mut m, 2, &imports);
    }
    section(&mut m, 3, &[0x03, 0x01, 0x02, 0x03]);
    section(&mut m, 5, &[0x01, 0x00, 0x01]);
    let mut exports = vec![0x04];
    for (export, kind, index) in [
        ("memory", 0x02, 0),
        ("alloc", 0x00, n_imports),
        ("dealloc", 0x00, n_imports + 1),
        ("pre_query", 0x00, n_imports + 2),
    ] {
        name(&mut exports, export);
        exports.extend_from_slice(&[kind, index]);
    }
    section(&mut m, 7, &exports);
    section(
        &mut m,
        10,
        &[
            // alloc returns 1024 (0 is the host's "out of memory"), dealloc, pre_query → 0.
            0x03, 0x05, 0x00, 0x41, 0x80, 0x08, 0x0b, 0x02, 0x00, 0x0b, 0x04, 0x00, 0x42, 0x00, 0x0b,
        ],
    );
    m
}

#[test]
fn imports_outside_env_and_wasi_preview1_are_refused() {
    let dir = TempDir::new("imports");
    let load = |file: &str, bytes: Vec<u8>| {
        let path = dir.join(file);
        std::fs::write(&path, bytes).unwrap();
        runtime(&config(&format!(
            "enabled = true\n[[plugin]]\nsource = {:?}\n",
            path.display().to_string()
        )))
    };
    // The control: without the import the hand-made module loads and runs.
    let (rt, report) = load("plain.wasm", module_importing(None));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(
        pre(&mut rt.shard(0), "SELECT 1"),
        PreQueryDecision::Continue
    );
    for (module, field) in [
        ("wasi_snapshot_preview1", "no_such_function"),
        ("wasi_unstable", "fd_write"),
        ("wasi:cli/environment@0.2.0", "get-environment"),
        ("env", "system"),
    ] {
        let (_rt, report) = load("import.wasm", module_importing(Some((module, field))));
        assert_eq!(report.refused.len(), 1, "{module}::{field} loaded");
        let e = report.refused[0].error.to_string();
        assert!(e.contains("unknown import"), "{module}::{field}: {e}");
    }
}
