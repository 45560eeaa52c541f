//! Plugin KV: isolation, replication across shards, the host API, caps, persistence, seeding.

use crate::common::*;
use helios_plugin_host::{KvError, Outcome, PreQueryDecision, QueryContext};

/// Asks the kv-probe plugin(s) a command; the first plugin in order answers (its block stops
/// the chain).
fn ask(shard: &mut helios_plugin_host::ShardPlugins, cmd: &str) -> String {
    answer(pre(shard, cmd))
}

/// Plugin A cannot read plugin B's keys with any key: the namespace is chosen by the host from
/// the instance's store (not from anything the guest passes), and keys are never combined with
/// plugin names. The test tries the obvious escapes and a few hundred random keys.
#[test]
fn kv_isolation_proof() {
    let alice_first = config(&format!(
        "enabled = true\n{}{}",
        entry("alice", "kv-probe", ""),
        entry("bob", "kv-probe", "")
    ));
    let bob_first = config(&format!(
        "enabled = true\n{}{}",
        entry("bob", "kv-probe", ""),
        entry("alice", "kv-probe", "")
    ));
    let rt = runtime_ok(&alice_first);
    let mut shard = rt.shard(0);
    let mut secrets = vec![
        "secret".to_string(),
        "bob".into(),
        "alice".into(),
        "alice/secret".into(),
        "../bob/x".into(),
        "\u{0}".into(),
    ];
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    // Printable, no space (the probe splits "KV SET <key> <value>" at the first space).
    for _ in 0..200 {
        let len = rng.gen_range(1..40);
        secrets.push(
            (0..len)
                .map(|_| rng.gen_range(0x21u8..0x7f) as char)
                .collect(),
        );
    }
    for k in &secrets {
        assert_eq!(ask(&mut shard, &format!("KV SET {k} A-{k}")), "ok");
    }
    // Same plugins, bob first: every key alice wrote, and the usual escapes, are missing for bob.
    let report = rt.reload(&bob_first);
    assert!(report.refused.is_empty());
    let probes = secrets.iter().cloned().chain([
        "alice/secret".into(),
        "alice:secret".into(),
        "alice\u{0}secret".into(),
        "/alice/secret".into(),
        "../alice/secret".into(),
        "alice.secret".into(),
        "*".into(),
        "%".into(),
    ]);
    for k in probes {
        assert_eq!(
            ask(&mut shard, &format!("KV GET {k}")),
            "missing",
            "bob read alice's key {k:?}"
        );
    }
    // bob writing the same key does not touch alice's value.
    assert_eq!(ask(&mut shard, "KV SET secret B"), "ok");
    rt.flush_kv();
    assert_eq!(
        rt.kv_get("alice", b"secret").unwrap().as_deref(),
        Some(&b"A-secret"[..])
    );
    assert_eq!(
        rt.kv_get("bob", b"secret").unwrap().as_deref(),
        Some(&b"B"[..])
    );
    assert_eq!(rt.kv_list("bob").unwrap(), [b"secret".to_vec()]);
    assert_eq!(
        rt.kv_list("alice").unwrap().len(),
        secrets
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
}

#[test]
fn kv_writes_replicate_across_two_shards_on_two_threads() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("probe", "kv-probe", "")
    )));
    let (to_b, from_a) = std::sync::mpsc::channel::<&'static str>();
    let (to_a, from_b) = std::sync::mpsc::channel::<&'static str>();
    let rt_a = rt.clone();
    let a = std::thread::spawn(move || {
        let mut shard = rt_a.shard(0);
        assert_eq!(ask(&mut shard, "KV SET color red"), "ok");
        to_b.send("written").unwrap();
        // Wait for shard B's write to arrive here.
        assert_eq!(from_b.recv().unwrap(), "written");
        wait_until("B's write on shard A", || {
            shard.apply_kv_updates();
            ask(&mut shard, "KV GET color") == "value:blue"
        });
        to_b.send("seen").unwrap();
    });
    let rt_b = rt.clone();
    let b = std::thread::spawn(move || {
        let mut shard = rt_b.shard(1);
        assert_eq!(from_a.recv().unwrap(), "written");
        wait_until("A's write on shard B", || {
            shard.apply_kv_updates();
            ask(&mut shard, "KV GET color") == "value:red"
        });
        assert_eq!(ask(&mut shard, "KV SET color blue"), "ok");
        to_a.send("written").unwrap();
        assert_eq!(from_a.recv().unwrap(), "seen");
        // An admin write reaches the shards too.
        rt_b.kv_put("probe", b"color", b"green").unwrap();
        wait_until("the admin write on shard B", || {
            shard.apply_kv_updates();
            ask(&mut shard, "KV GET color") == "value:green"
        });
        rt_b.kv_delete("probe", b"color").unwrap();
        wait_until("the admin delete on shard B", || {
            shard.apply_kv_updates();
            ask(&mut shard, "KV GET color") == "missing"
        });
    });
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn host_kv_api_reads_seeds_and_deletes() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("probe", "kv-probe", "")
    )));
    let mut shard = rt.shard(0);
    rt.kv_put("probe", b"budget", b"100").unwrap();
    assert_eq!(
        rt.kv_get("probe", b"budget").unwrap(),
        Some(b"100".to_vec())
    );
    wait_until("seed visible to the plugin", || {
        shard.apply_kv_updates();
        ask(&mut shard, "KV GET budget") == "value:100"
    });
    assert_eq!(ask(&mut shard, "KV SET used 7"), "ok");
    rt.flush_kv();
    assert_eq!(
        rt.kv_list("probe").unwrap(),
        [b"budget".to_vec(), b"used".to_vec()]
    );
    rt.kv_delete("probe", b"budget").unwrap();
    assert_eq!(rt.kv_get("probe", b"budget").unwrap(), None);
    assert_eq!(
        rt.kv_get("nobody", b"x"),
        Err(KvError::UnknownPlugin("nobody".into()))
    );
    assert_eq!(
        rt.kv_put("nobody", b"x", b"y"),
        Err(KvError::UnknownPlugin("nobody".into()))
    );
}

#[test]
fn kv_max_value_bytes_caps_values() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\nkv_max_value_bytes = 100\n{}",
        entry("probe", "kv-probe", "")
    )));
    let mut shard = rt.shard(0);
    assert_eq!(ask(&mut shard, "KV BIG k 100"), "ok");
    assert_eq!(ask(&mut shard, "KV BIG k 101"), "refused:OverCap");
    assert_eq!(
        rt.kv_put("probe", b"k", &[0; 101]),
        Err(KvError::ValueTooLarge { len: 101, max: 100 })
    );
}

#[test]
fn kv_max_keys_caps_keys() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\nkv_max_keys = 3\n{}",
        entry("probe", "kv-probe", "")
    )));
    let mut shard = rt.shard(0);
    for k in ["a", "b", "c"] {
        assert_eq!(ask(&mut shard, &format!("KV SET {k} 1")), "ok");
    }
    assert_eq!(ask(&mut shard, "KV SET d 1"), "refused:OverCap");
    assert_eq!(
        ask(&mut shard, "KV SET a 2"),
        "ok",
        "overwriting an existing key is fine"
    );
    assert_eq!(ask(&mut shard, "KV DEL c"), "ok");
    assert_eq!(ask(&mut shard, "KV SET d 1"), "ok");
}

#[test]
fn kv_max_total_bytes_caps_the_namespace() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\nkv_max_value_bytes = 100\nkv_max_total_bytes = 150\n{}",
        entry("probe", "kv-probe", "")
    )));
    let mut shard = rt.shard(0);
    assert_eq!(ask(&mut shard, "KV BIG a 100"), "ok");
    assert_eq!(ask(&mut shard, "KV BIG b 60"), "refused:OverCap");
    assert_eq!(ask(&mut shard, "KV BIG b 40"), "ok");
    rt.flush_kv();
    assert_eq!(
        rt.kv_put("probe", b"c", b"1234567890"),
        Err(KvError::NamespaceFull { max: 150 })
    );
}

#[test]
fn kv_persist_path_keeps_the_store_across_a_restart() {
    let dir = TempDir::new("persist");
    let text = format!(
        "enabled = true\nkv_persist_path = {:?}\n{}",
        dir.join("kv.json").display().to_string(),
        entry("probe", "kv-probe", "")
    );
    {
        let rt = runtime_ok(&config(&text));
        let mut shard = rt.shard(0);
        assert_eq!(ask(&mut shard, "KV SET spent 42"), "ok");
    } // runtime and shard dropped: the KV thread saves at shutdown
    assert!(dir.join("kv.json").exists());
    let rt = runtime_ok(&config(&text));
    let mut shard = rt.shard(0);
    assert_eq!(ask(&mut shard, "KV GET spent"), "value:42");
    // Without the key, a restart starts empty.
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("probe", "kv-probe", "")
    )));
    let mut shard = rt.shard(0);
    assert_eq!(ask(&mut shard, "KV GET spent"), "missing");
}

#[test]
fn plugin_config_is_seeded_into_kv_and_drives_the_plugin() {
    let text = |max: u32| {
        format!(
            "enabled = true\n{}",
            entry(
                "budget",
                "tenant-budget",
                &format!("config = {{ max_queries_per_tenant = {max}, label = \"x\" }}")
            )
        )
    };
    let rt = runtime_ok(&config(&text(2)));
    assert_eq!(
        rt.kv_get("budget", b"max_queries_per_tenant").unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(
        rt.kv_get("budget", b"label").unwrap(),
        Some(b"\"x\"".to_vec())
    );
    let mut shard = rt.shard(0);
    let s = Session {
        attributes: [("helios.tenant".to_string(), "acme".to_string())].into(),
        ..Session::default()
    };
    let run = |shard: &mut helios_plugin_host::ShardPlugins| {
        let d = s.pre_query(shard, "SELECT 1");
        let hc = s.hook_context();
        let qc = QueryContext {
            query: "SELECT 1",
            normalized: "SELECT 1",
            tables: &[],
            is_read_only: true,
            hook_context: &hc,
        };
        if d == PreQueryDecision::Continue {
            shard.post_query(
                &qc,
                &Outcome {
                    success: true,
                    ..Outcome::default()
                },
            );
        }
        d
    };
    assert_eq!(run(&mut shard), PreQueryDecision::Continue);
    assert_eq!(run(&mut shard), PreQueryDecision::Continue);
    assert_eq!(
        answer(run(&mut shard)),
        "tenant acme is over its budget of 2 queries"
    );
    // A reload with a larger budget re-seeds the key; the shard sees it after replication.
    rt.reload(&config(&text(3)));
    wait_until("the new budget on the shard", || {
        shard.apply_kv_updates();
        s.pre_query(&mut shard, "SELECT 1") == PreQueryDecision::Continue
    });
}
