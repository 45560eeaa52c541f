//! Every `[plugins]` key changes behaviour (the ones not covered elsewhere are here; the doc
//! `docs/plugin-abi.md` lists which test covers which key), plus reload and the quick start.

use crate::common::*;
use helios_plugin_host::{
    Hook, LoadError, PluginRuntime, PreQueryDecision, RuntimeError, RuntimeOptions,
};

#[test]
fn enabled_false_loads_nothing() {
    let (rt, report) = runtime(&config(&format!(
        "enabled = false\n{}",
        entry("guard", "block-drop", "")
    )));
    assert!(rt.plugins().is_empty() && report.refused.is_empty());
    let mut shard = rt.shard(0);
    assert!(!shard.has_hook(Hook::PreQuery));
    assert_eq!(pre(&mut shard, "DROP TABLE t"), PreQueryDecision::Continue);
}

#[test]
fn plugin_dir_resolves_relative_sources() {
    let dir = TempDir::new("pdir");
    copy_wasm("block-drop", dir.path(), "guard.wasm");
    let text = format!(
        "enabled = true\nplugin_dir = {:?}\n[[plugin]]\nsource = \"guard.wasm\"\n",
        dir.path().display().to_string()
    );
    let rt = runtime_ok(&config(&text));
    assert_eq!(rt.plugins()[0].source, dir.join("guard.wasm"));
    // Without plugin_dir the relative path does not resolve.
    let (rt, report) = runtime(&config(
        "enabled = true\n[[plugin]]\nsource = \"guard.wasm\"\n",
    ));
    assert!(rt.plugins().is_empty());
    assert!(matches!(report.refused[0].error, LoadError::Artefact(_)));
}

#[test]
fn compiled_cache_dir_avoids_recompiling_after_a_restart() {
    let cache = TempDir::new("cache");
    let text = format!(
        "enabled = true\ncompiled_cache_dir = {:?}\n{}",
        cache.path().display().to_string(),
        entry("guard", "block-drop", "")
    );
    let cfg = config(&text);
    {
        let rt = runtime_ok(&cfg);
        assert!(!rt.plugins()[0].from_disk_cache);
    }
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let sha = helios_plugin_host::artefact::hex(&helios_plugin_host::artefact::sha256(
        &std::fs::read(wasm("block-drop")).unwrap(),
    ));
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with(&sha) && files[0].ends_with(".cwasm"),
        "keyed by the wasm SHA-256: {files:?}"
    );
    let rt = runtime_ok(&cfg);
    assert!(
        rt.plugins()[0].from_disk_cache,
        "second start loads the compiled module from disk"
    );
    let mut shard = rt.shard(0);
    assert!(matches!(
        pre(&mut shard, "DROP TABLE t"),
        PreQueryDecision::Block(_)
    ));
}

#[test]
fn compiled_cache_defaults_to_plugin_dir() {
    let dir = TempDir::new("pdircache");
    copy_wasm("block-drop", dir.path(), "guard.wasm");
    let mut cfg = config(&format!(
        "enabled = true\nplugin_dir = {:?}\n",
        dir.path().display().to_string()
    ));
    cfg.compiled_cache_dir = None;
    drop(runtime_ok(&cfg));
    assert_eq!(std::fs::read_dir(dir.join(".compiled")).unwrap().count(), 1);
    assert!(runtime_ok(&cfg).plugins()[0].from_disk_cache);
}

#[test]
fn entry_hooks_restrict_and_must_be_declared_and_exported() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("probe", "kv-probe", "hooks = [\"post_query\"]")
    )));
    let mut shard = rt.shard(0);
    assert!(!shard.has_hook(Hook::PreQuery) && shard.has_hook(Hook::PostQuery));
    assert_eq!(pre(&mut shard, "CALLS"), PreQueryDecision::Continue);
    let (_rt, report) = runtime(&config(&format!(
        "enabled = true\n{}",
        entry("guard", "block-drop", "hooks = [\"route\"]")
    )));
    let e = &report.refused[0].error;
    assert!(matches!(e, LoadError::Hooks(_)));
    assert_eq!(
        e.to_string(),
        "hooks: route is enabled but the module does not export route(i32, i32) -> i64"
    );
}

#[test]
fn entry_name_overrides_the_default_and_names_the_kv_namespace() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("custom-name", "kv-probe", "")
    )));
    assert_eq!(rt.plugins()[0].name, "custom-name");
    let mut shard = rt.shard(0);
    assert_eq!(answer(pre(&mut shard, "KV SET k v")), "ok");
    rt.flush_kv();
    assert_eq!(rt.kv_get("custom-name", b"k").unwrap(), Some(b"v".to_vec()));
    assert!(rt.kv_get("kv-probe", b"k").is_err());
}

#[test]
fn invalid_config_is_a_start_up_error_naming_the_key() {
    let cfg = config("enabled = true\ntimeout_ms = 0\n");
    match PluginRuntime::new(&cfg, RuntimeOptions::default()) {
        Err(RuntimeError::Config(m)) => assert!(m.contains("plugins.timeout_ms"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted timeout_ms = 0"),
    }
}

#[test]
fn quick_start_from_paths() {
    let (rt, report) =
        PluginRuntime::from_paths(&[wasm("block-drop")], None, RuntimeOptions::default()).unwrap();
    assert!(report.refused.is_empty());
    assert_eq!(rt.plugins()[0].name, "block-drop");
    let trust = TempDir::new("qs-trust");
    let (rt, report) = PluginRuntime::from_paths(
        &[wasm("block-drop")],
        Some(trust.path().to_path_buf()),
        RuntimeOptions::default(),
    )
    .unwrap();
    assert!(
        rt.plugins().is_empty(),
        "unsigned plugin refused under --trust-root"
    );
    assert_eq!(report.refused.len(), 1);
}

#[test]
fn reload_adds_and_removes_plugins_and_keeps_unchanged_instances() {
    let one = config(&format!(
        "enabled = true\n{}",
        entry("probe", "kv-probe", "")
    ));
    let two = config(&format!(
        "enabled = true\n{}{}",
        entry("guard", "block-drop", ""),
        entry("probe", "kv-probe", "")
    ));
    let rt = runtime_ok(&one);
    let mut shard = rt.shard(0);
    assert_eq!(answer(pre(&mut shard, "CALLS")), "calls:1");
    assert_eq!(pre(&mut shard, "DROP TABLE t"), PreQueryDecision::Continue);
    let report = rt.reload(&two);
    assert!(report.refused.is_empty());
    assert!(
        matches!(pre(&mut shard, "DROP TABLE t"), PreQueryDecision::Block(b) if &*b.plugin == "guard")
    );
    // The probe instance survived the reload: its memory still counts.
    assert_eq!(answer(pre(&mut shard, "CALLS")), "calls:3");
    rt.reload(&one);
    assert_eq!(pre(&mut shard, "DROP TABLE t"), PreQueryDecision::Continue);
    assert!(shard.stats().iter().all(|s| s.name == "probe"));
}

#[test]
fn failed_reload_keeps_the_previous_version_and_reports_restart_only_settings() {
    let dir = TempDir::new("reload");
    let w = copy_wasm("block-drop", dir.path(), "guard.wasm");
    let text = format!(
        "enabled = true\n[[plugin]]\nname = \"guard\"\nsource = {:?}\n",
        w.display().to_string()
    );
    let rt = runtime_ok(&config(&text));
    let mut shard = rt.shard(0);
    std::fs::write(&w, b"garbage").unwrap();
    let mut cfg = config(&text);
    cfg.memory_limit_mb = 1024;
    let report = rt.reload(&cfg);
    assert_eq!(report.refused.len(), 1);
    assert!(report.refused[0].kept_previous);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("memory_limit_mb = 1024")),
        "{:?}",
        report.warnings
    );
    assert!(
        matches!(pre(&mut shard, "DROP TABLE t"), PreQueryDecision::Block(_)),
        "old version still runs"
    );
}

#[test]
fn a_required_plugin_that_fails_refuses_the_reload_and_an_optional_one_does_not() {
    let dir = TempDir::new("fail-closed");
    let guard = entry("guard", "block-drop", "");
    let broken = |extra: &str| {
        format!(
            "[[plugin]]\nname = \"broken\"\nsource = {:?}\n{extra}\n",
            dir.join("missing.wasm").display().to_string()
        )
    };
    // Start-up: the report says the start must fail, naming the plugin and why.
    let (_rt, report) = runtime(&config(&format!("enabled = true\n{guard}{}", broken(""))));
    let why = report.fail_closed().unwrap_err();
    assert!(
        why.contains("1 required plugin failed to load")
            && why.contains("plugin broken")
            && why.contains("missing.wasm"),
        "{why}"
    );
    let (_rt, report) = runtime(&config(&format!(
        "enabled = true\n{guard}{}",
        broken("optional = true")
    )));
    assert!(report.fail_closed().is_ok());
    assert!(report.refused[0].optional);

    // Reload: required → nothing changes (not even timeout_ms); optional → applies without it.
    let rt = runtime_ok(&config(&format!("enabled = true\n{guard}")));
    let mut shard = rt.shard(0);
    let report = rt.reload(&config(&format!(
        "enabled = true\ntimeout_ms = 7\n{}",
        broken("")
    )));
    assert!(!report.applied);
    assert_eq!(report.loaded.len(), 1, "the running plugin is reported");
    assert!(report.fail_closed().is_err());
    assert!(
        matches!(pre(&mut shard, "DROP TABLE t"), PreQueryDecision::Block(_)),
        "guard still runs although the new config drops it"
    );
    assert_eq!(rt.plugins()[0].name, "guard");
    let report = rt.reload(&config(&format!(
        "enabled = true\n{}",
        broken("optional = true")
    )));
    assert!(report.applied);
    assert!(rt.plugins().is_empty());
    assert_eq!(pre(&mut shard, "DROP TABLE t"), PreQueryDecision::Continue);
    // Artefacts discovered in plugin_dir have no entry, so they are required.
    std::fs::write(dir.join("junk.wasm"), b"junk").unwrap();
    let (_rt, report) = runtime(&config(&format!(
        "enabled = true\nplugin_dir = {:?}\n",
        dir.path().display().to_string()
    )));
    assert!(report.fail_closed().is_err(), "{:?}", report.refused);
}
