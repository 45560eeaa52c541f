//! A guest that skips the SDK and misuses the raw ABI (`plugins/examples/evil`): the host checks
//! every pointer it is given and every result it reads.

use crate::common::*;
use helios_plugin_host::PreQueryDecision;

#[test]
fn imports_refuse_pointers_outside_guest_memory() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("evil", "evil", "")
    )));
    let mut shard = rt.shard(0);
    // kv_get ×3, kv_set ×2 (one with a 2000-byte key), kv_delete: -3; sha256_hex ×2: -1.
    assert_eq!(
        answer(pre(&mut shard, "badptr")),
        "[-3,-3,-3,-3,-3,-3,-1,-1]"
    );
    assert_eq!(pre(&mut shard, "SELECT 1"), PreQueryDecision::Continue);
}

#[test]
fn malformed_results_fail_the_call_not_the_host() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("evil", "evil", "")
    )));
    let mut shard = rt.shard(0);
    assert_eq!(
        answer(pre(&mut shard, "result-oob")),
        "plugin 'evil' returned an invalid result: result region is outside memory; refused (on_error = fail_closed)"
    );
    let garbage = answer(pre(&mut shard, "result-garbage"));
    assert!(
        garbage.starts_with("plugin 'evil' returned an invalid result: not a pre_query result:"),
        "{garbage}"
    );
    // The tag is `action`; the earlier implementation's `kind` is an error, not a silent continue.
    let kind = answer(pre(&mut shard, "result-kind"));
    assert!(kind.contains("missing field `action`"), "{kind}");
    assert_eq!(pre(&mut shard, "SELECT 1"), PreQueryDecision::Continue);
    assert_eq!(
        shard.stats()[0].instantiations,
        1,
        "a bad result does not cost the instance"
    );
}
