//! The configuration from arbitrary text: `helios_config::Config::parse` (TOML, `${VAR}`
//! substitution, typed deserialization) then `Config::validate`, as `Config::load` does them;
//! and the userlist parser (`parse_userlist`) on the same text.
//!
//! Input: the file's text (UTF-8; anything else is refused before parsing, as
//! `read_to_string` refuses it). Environment variables come from a fixed table, not the real
//! environment. `auth.userlist` is cleared before validation: validation would read that file,
//! and its parser is fuzzed here directly instead.
#![no_main]

use std::path::Path;

use helios_config::{parse_userlist, Config};
use libfuzzer_sys::fuzz_target;

fn env(var: &str) -> Option<String> {
    match var {
        "PGPASSWORD" => Some("postgres".into()),
        "HELIOS_ADMIN_TOKEN" => Some("t0ken".into()),
        "EMPTY" => Some(String::new()),
        "NESTED" => Some("${PGPASSWORD}".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let _ = parse_userlist(text, Path::new("userlist.txt"));
    let Ok(mut cfg) = Config::parse(text, path, &env) else {
        return;
    };
    cfg.auth.userlist = None;
    if cfg.validate().is_err() {
        return;
    }
    // What the proxy does with a valid configuration before starting shards.
    for db in cfg.databases.values() {
        let _ = cfg.node_for(db);
    }
    for e in &cfg.plugins.entries {
        let _ = cfg.plugins.resolve_source(&e.source);
    }
    let _ = format!("{cfg:?}");
});
