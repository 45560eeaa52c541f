//! `wasi-std`: a plugin built for `wasm32-wasip1` (scripts/build-plugins.sh) that uses `std`
//! the way an author would, and so shows what the host's WASI grants: clocks and random numbers
//! work, `println!` goes nowhere, files, environment and arguments are not there.
//!
//! It answers queries that start with `wasi:` or end in a comment `-- wasi:…` (and lets
//! everything else through):
//!
//! | query | block reason |
//! |---|---|
//! | `wasi:time` | `time: unix=<seconds> monotonic_ok=<bool>` |
//! | `wasi:random` | `random: <hash of "x" under a fresh RandomState>` |
//! | `wasi:print` | (continues, after printing to stdout and stderr) |
//! | `wasi:open <path>` | `open <path>: ok` or `open <path>: failed: <error>` |
//! | `wasi:write <path>` | `write <path>: ok` or `write <path>: failed: <error>` |
//! | `wasi:env` | `env: vars=<n> args=<n> cwd=<ok or error>` |
//! | `wasi:sleep` | (sleeps 1 s: the host refuses `poll_oneoff`, so the call traps) |
use helios_plugin_abi::*;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

#[hook(PreQuery)]
fn answer(ctx: &QueryContext) -> PreQueryResult {
    match command(&ctx.query) {
        Some(reason) => PreQueryResult::Block { reason },
        None => PreQueryResult::Continue,
    }
}

/// The block reason for a `wasi:` query, `None` to let the query through.
pub fn command(query: &str) -> Option<String> {
    // `wasi:time`, or valid SQL that ends in a comment (`SELECT 1 -- wasi:time`) for the
    // extended protocol, whose Parse the server sees.
    let rest = match query.trim().strip_prefix("wasi:") {
        Some(r) => r,
        None => query.split_once("-- wasi:")?.1.trim(),
    };
    let (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(match cmd {
        "time" => {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let t0 = std::time::Instant::now();
            // A HashMap with its default (randomly seeded) hasher, as ordinary code uses one.
            let mut m: HashMap<u64, u64> = HashMap::new();
            for i in 0..100 {
                m.insert(i, i * i);
            }
            let monotonic_ok = t0.elapsed() < std::time::Duration::from_secs(60) && m.len() == 100;
            format!("time: unix={unix} monotonic_ok={monotonic_ok}")
        }
        "random" => format!("random: {}", RandomState::new().hash_one("x")),
        "print" => {
            println!("wasi-std: this line goes nowhere");
            eprintln!("wasi-std: nor does this one");
            return None;
        }
        "open" => match std::fs::File::open(arg) {
            Ok(_) => format!("open {arg}: ok"),
            Err(e) => format!("open {arg}: failed: {e}"),
        },
        "write" => match std::fs::write(arg, b"x") {
            Ok(()) => format!("write {arg}: ok"),
            Err(e) => format!("write {arg}: failed: {e}"),
        },
        "env" => format!(
            "env: vars={} args={} cwd={}",
            std::env::vars().count(),
            std::env::args().count(),
            match std::env::current_dir() {
                Ok(d) => format!("ok ({})", d.display()),
                Err(e) => format!("error ({e})"),
            }
        ),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(1));
            "slept".to_owned()
        }
        other => format!("unknown wasi command {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_wasi_queries_are_answered() {
        assert_eq!(super::command("select 1"), None);
        assert_eq!(super::command("wasi:print"), None);
        assert!(super::command("select 1 -- wasi:env")
            .unwrap()
            .starts_with("env: "));
        assert!(super::command("wasi:time")
            .unwrap()
            .ends_with("monotonic_ok=true"));
        assert!(super::command("wasi:nope")
            .unwrap()
            .starts_with("unknown wasi command"));
    }
}
