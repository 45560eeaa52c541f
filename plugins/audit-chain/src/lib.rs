//! `audit-chain`: a hash-chained, tamper-evident audit log of every execution, kept in the
//! plugin's KV namespace.
//!
//! `post_query` appends one [`AuditRecord`] per execution (also refused and failed ones). Each
//! record carries `prev_hash`, the SHA-256 (computed by the host, `sha256_hex`) of the previous
//! record's stored bytes, so changing, removing or reordering any record breaks the link to the
//! next one; `helios-plugin audit verify` (plugin-host/src/bin/helios-plugin.rs, using
//! [`verify_chain`] from this crate) walks the chain and reports the first broken link.
//!
//! **One chain per shard.** Every shard (core) of the proxy runs its own instance, and the KV has
//! no cross-shard atomic increment, so one global chain would fork under concurrent appends.
//! The shard is the top 16 bits of `request_id` (docs/plugin-abi.md); shard `s` keeps:
//!
//! | key | value |
//! |---|---|
//! | `chain:<s>:seq` | next sequence number (decimal text) = number of records |
//! | `chain:<s>:tail_hash` | SHA-256 hex of the last record (64 zeros before the first) |
//! | `chain:<s>:record:<seq>` | the record, JSON |
//!
//! Configuration (plugin `config`, seeded into KV): `include_statement` (bool, default false):
//! also store the normalized statement text (literals replaced by placeholders) besides its
//! fingerprint; `block_when_unwritable` (bool, default true): when an append fails (KV full:
//! `kv_max_keys` / `kv_max_total_bytes`), `pre_query` refuses statements on that shard until an
//! append succeeds again; the first successful append then records how many executions were
//! lost (`lost`), so the gap is itself in the chain.
use std::cell::Cell;

use helios_plugin_abi::*;
use serde::{Deserialize, Serialize};

/// `prev_hash` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited execution. Field order is the stored JSON's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in its shard's chain, from 0.
    pub seq: u64,
    /// When the host reported the outcome: microseconds since the Unix epoch.
    pub timestamp: u64,
    /// SHA-256 hex of the previous record's stored bytes ([`GENESIS`] for seq 0).
    pub prev_hash: String,
    /// The shard whose chain this is.
    pub shard: u64,
    /// The execution's `request_id`.
    pub request_id: u64,
    /// The client's address; `null` for Unix-socket clients.
    pub client_ip: Option<String>,
    /// The authenticated identity's `user_id` (from an `authenticate` plugin), if any.
    pub identity: Option<String>,
    /// The startup user and database.
    pub user: String,
    pub database: String,
    /// SHA-256 hex of the normalized statement (literals replaced by placeholders): the same
    /// statement shape always has the same fingerprint, and no literal value is stored.
    pub fingerprint: String,
    /// The normalized statement, with `include_statement = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    /// The node that ran it; `null` when it never reached a server.
    pub target_node: Option<String>,
    pub elapsed_us: u64,
    pub rows: u64,
    pub success: bool,
    pub sqlstate: Option<String>,
    pub error: Option<String>,
    /// Executions on this shard whose records could not be appended just before this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The KV key of shard `shard`'s `what` (`seq`, `tail_hash`).
pub fn key(shard: u64, what: &str) -> String {
    format!("chain:{shard}:{what}")
}

/// The KV key of a record.
pub fn record_key(shard: u64, seq: u64) -> String {
    format!("chain:{shard}:record:{seq}")
}

/// The shard that ran a request (docs/plugin-abi.md: the top 16 bits of `request_id`).
pub fn shard_of(request_id: u64) -> u64 {
    request_id >> 48
}

/// Builds the record for one execution (pure: no KV).
pub fn build_record(
    ctx: &PostQueryContext,
    seq: u64,
    prev_hash: &str,
    include_statement: bool,
) -> AuditRecord {
    let q = &ctx.query_context;
    let h = &q.hook_context;
    let o = &ctx.outcome;
    AuditRecord {
        seq,
        timestamp: ctx.unix_time_us,
        prev_hash: prev_hash.to_owned(),
        shard: shard_of(h.request_id),
        request_id: h.request_id,
        client_ip: h.client_ip.clone(),
        identity: h.identity.as_ref().map(|i| i.user_id.clone()),
        user: h.user.to_string(),
        database: h.database.to_string(),
        fingerprint: sha256_digest_hex(q.normalized.as_bytes()),
        statement: include_statement.then(|| q.normalized.to_string()),
        target_node: o.target_node.clone(),
        elapsed_us: o.elapsed_us,
        rows: o.rows,
        success: o.success,
        sqlstate: o.sqlstate.clone(),
        error: o.error.clone(),
        lost: 0,
    }
}

thread_local! {
    // Executions on this instance whose record could not be written (reset by a good append).
    static LOST: Cell<u64> = const { Cell::new(0) };
}

fn config_bool(key: &str, default: bool) -> bool {
    kv_read_json::<bool>(key).unwrap_or(default)
}

/// Appends `rec` (its `seq` and `prev_hash` are set here) to shard `shard`'s chain: record,
/// then tail, then seq. `Err` when KV refused a write; the chain is then unchanged (a record
/// written before a refused tail or seq write is overwritten by the next append).
pub fn append(shard: u64, mut rec: AuditRecord) -> Result<u64, KvError> {
    let seq: u64 = kv_read_string(key(shard, "seq"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let prev = kv_read_string(key(shard, "tail_hash")).unwrap_or_else(|| GENESIS.to_owned());
    rec.seq = seq;
    rec.prev_hash = prev;
    rec.lost = LOST.with(Cell::get);
    let bytes = serde_json::to_vec(&rec).expect("a record serialises");
    let hash = sha256_digest_hex(&bytes);
    kv_write(record_key(shard, seq), &bytes)?;
    kv_write(key(shard, "tail_hash"), &hash)?;
    kv_write(key(shard, "seq"), (seq + 1).to_string())?;
    LOST.with(|l| l.set(0));
    Ok(seq)
}

fn observe(ctx: &PostQueryContext) {
    let shard = shard_of(ctx.query_context.hook_context.request_id);
    let rec = build_record(ctx, 0, GENESIS, config_bool("include_statement", false));
    if append(shard, rec).is_err() {
        LOST.with(|l| l.set(l.get() + 1));
    }
}
export_post_query!(observe);

/// While appends fail, refuses statements (with `block_when_unwritable`, the default); first
/// it tries to append a record of the gap, which ends the refusal when KV has room again.
fn guard(ctx: &QueryContext) -> PreQueryResult {
    if LOST.with(Cell::get) == 0 || !config_bool("block_when_unwritable", true) {
        return PreQueryResult::Continue;
    }
    let h = &ctx.hook_context;
    let shard = shard_of(h.request_id);
    let gap = AuditRecord {
        shard,
        request_id: h.request_id,
        user: h.user.to_string(),
        database: h.database.to_string(),
        client_ip: h.client_ip.clone(),
        fingerprint: String::new(),
        error: Some("audit-chain: records could not be appended (KV full)".into()),
        ..Default::default()
    };
    if append(shard, gap).is_ok() {
        return PreQueryResult::Continue;
    }
    PreQueryResult::Block {
        reason: format!(
            "audit-chain: the audit log cannot be written ({} executions unrecorded on this \
             shard; KV full); refusing statements until it can",
            LOST.with(Cell::get)
        ),
    }
}
export_pre_query!(guard);

/// The first broken link of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The sequence number where verification failed.
    pub seq: u64,
    /// What is wrong there.
    pub what: String,
}

/// What [`verify_chain`] found for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub shard: u64,
    /// Records the chain claims (`seq`).
    pub records: u64,
    /// The tail hash it stores.
    pub tail_hash: String,
    /// `None`: every link holds and the tail matches the last record.
    pub broken: Option<Broken>,
}

/// Walks shard `shard`'s chain through `get` (a KV lookup: admin API or a KV export).
/// `None` when the shard has no chain (`seq` absent). Only the stored bytes are hashed, so the
/// check does not depend on how this crate serialises.
///
/// A live chain may grow while it is read (an append writes record, then tail, then seq): the
/// tail is read after the walk, and when it does not match the last record the walk goes on
/// through records appended since, as long as they link.
pub fn verify_chain(
    shard: u64,
    mut get: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Option<ChainReport> {
    let text = |v: Option<Vec<u8>>| v.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let seq_text = text(get(&key(shard, "seq")))?;
    let mut report = ChainReport {
        shard,
        records: 0,
        tail_hash: String::new(),
        broken: None,
    };
    let Ok(records) = seq_text.parse::<u64>() else {
        report.broken = Some(Broken {
            seq: 0,
            what: format!("{} is not a number: {seq_text:?}", key(shard, "seq")),
        });
        return Some(report);
    };
    report.records = records;
    let mut prev = GENESIS.to_owned();
    for seq in 0..records {
        let fail = |what: String| Some(Broken { seq, what });
        let Some(bytes) = get(&record_key(shard, seq)) else {
            report.broken = fail(format!("record {seq} is missing"));
            return Some(report);
        };
        let rec: AuditRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                report.broken = fail(format!("record {seq} is not an audit record: {e}"));
                return Some(report);
            }
        };
        if rec.seq != seq || rec.shard != shard {
            report.broken = fail(format!(
                "record {seq} says it is seq {} of shard {}",
                rec.seq, rec.shard
            ));
            return Some(report);
        }
        if rec.prev_hash != prev {
            report.broken = fail(if seq == 0 {
                format!(
                    "record 0's prev_hash is {}, not the genesis hash",
                    rec.prev_hash
                )
            } else {
                format!(
                    "record {seq}'s prev_hash {} is not the SHA-256 of record {} ({prev}): \
                     record {} (or this one) was altered, or a record was removed or inserted",
                    rec.prev_hash,
                    seq - 1,
                    seq - 1
                )
            });
            return Some(report);
        }
        prev = sha256_digest_hex(&bytes);
    }
    let tail_hash = text(get(&key(shard, "tail_hash"))).unwrap_or_default();
    report.tail_hash = tail_hash.clone();
    // Records appended during the walk.
    let mut next = records;
    while tail_hash != prev {
        let Some(bytes) = get(&record_key(shard, next)) else {
            break;
        };
        match serde_json::from_slice::<AuditRecord>(&bytes) {
            Ok(r) if r.seq == next && r.shard == shard && r.prev_hash == prev => {}
            _ => break,
        }
        prev = sha256_digest_hex(&bytes);
        next += 1;
    }
    report.records = next;
    if tail_hash != prev {
        report.broken = Some(Broken {
            seq: next.saturating_sub(1),
            what: format!(
                "tail_hash {tail_hash} is not the SHA-256 of the last record ({prev}): the last \
                 record was altered, or records were removed from the end"
            ),
        });
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn exec(request_id: u64, normalized: &str, success: bool) -> PostQueryContext<'static> {
        let mut c = PostQueryContext {
            unix_time_us: 1_765_000_000_000_000 + request_id,
            ..Default::default()
        };
        c.query_context.normalized = Cow::Owned(normalized.to_owned());
        c.query_context.query = Cow::Owned(normalized.replace('?', "42"));
        c.query_context.hook_context.request_id = request_id;
        c.query_context.hook_context.user = Cow::Borrowed("alice");
        c.query_context.hook_context.database = Cow::Borrowed("app");
        c.query_context.hook_context.client_ip = Some("10.0.0.7".into());
        c.outcome.success = success;
        c.outcome.target_node = Some("p".into());
        c.outcome.elapsed_us = 1234;
        if !success {
            c.outcome.error = Some("boom".into());
            c.outcome.sqlstate = Some("XX000".into());
        }
        c
    }

    fn kv_get(k: &str) -> Option<Vec<u8>> {
        kv_read(k)
    }

    #[test]
    fn appends_build_a_verifiable_chain_per_shard() {
        kv_clear_for_tests();
        for i in 1..=5 {
            observe(&exec(i, "SELECT * FROM t WHERE id = ?", i != 3));
        }
        // Shard 1's requests have their own chain.
        observe(&exec((1 << 48) | 1, "SELECT ?", true));
        let r = verify_chain(0, kv_get).unwrap();
        assert_eq!((r.records, r.broken.clone()), (5, None), "{r:?}");
        let r1 = verify_chain(1, kv_get).unwrap();
        assert_eq!((r1.records, r1.broken), (1, None));
        assert!(verify_chain(2, kv_get).is_none());

        let rec: AuditRecord = kv_read_json(record_key(0, 2)).unwrap();
        assert_eq!(rec.seq, 2);
        assert_eq!(rec.request_id, 3);
        assert!(!rec.success);
        assert_eq!(rec.error.as_deref(), Some("boom"));
        assert_eq!(rec.client_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(rec.timestamp, 1_765_000_000_000_003);
        let prev = kv_read(record_key(0, 1)).unwrap();
        assert_eq!(rec.prev_hash, sha256_digest_hex(&prev));
        let first: AuditRecord = kv_read_json(record_key(0, 0)).unwrap();
        assert_eq!(first.prev_hash, GENESIS);
        kv_clear_for_tests();
    }

    #[test]
    fn fingerprint_is_the_normalized_shape_not_the_literals() {
        let a = build_record(
            &exec(1, "SELECT * FROM t WHERE id = ?", true),
            0,
            GENESIS,
            false,
        );
        let mut other = exec(2, "SELECT * FROM t WHERE id = ?", true);
        other.query_context.query = Cow::Borrowed("SELECT * FROM t WHERE id = 99");
        let b = build_record(&other, 0, GENESIS, false);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(
            a.fingerprint,
            sha256_digest_hex("SELECT * FROM t WHERE id = ?")
        );
        let c = build_record(&exec(3, "SELECT ?", true), 0, GENESIS, false);
        assert_ne!(a.fingerprint, c.fingerprint);
        // No statement text by default; with include_statement the normalized text only.
        assert_eq!(a.statement, None);
        let s = build_record(&other, 0, GENESIS, true);
        assert_eq!(s.statement.as_deref(), Some("SELECT * FROM t WHERE id = ?"));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("id = 99"), "{json}");
    }

    #[test]
    fn include_statement_is_read_from_kv() {
        kv_clear_for_tests();
        observe(&exec(1, "SELECT ?", true));
        kv_write("include_statement", "true").unwrap();
        observe(&exec(2, "SELECT ?", true));
        let a: AuditRecord = kv_read_json(record_key(0, 0)).unwrap();
        let b: AuditRecord = kv_read_json(record_key(0, 1)).unwrap();
        assert_eq!(
            (a.statement, b.statement.as_deref()),
            (None, Some("SELECT ?"))
        );
        kv_clear_for_tests();
    }

    fn chain_of(n: u64) {
        kv_clear_for_tests();
        for i in 1..=n {
            observe(&exec(i, "SELECT ?", true));
        }
    }

    #[test]
    fn a_modified_record_is_the_first_broken_link() {
        chain_of(6);
        let k = record_key(0, 2);
        let mut rec: AuditRecord = kv_read_json(&k).unwrap();
        rec.success = false;
        kv_write(&k, serde_json::to_vec(&rec).unwrap()).unwrap();
        let b = verify_chain(0, kv_get).unwrap().broken.unwrap();
        assert_eq!(b.seq, 3, "{b:?}");
        assert!(b.what.contains("not the SHA-256 of record 2"), "{b:?}");

        // Even a one-byte change elsewhere (whitespace the JSON parser ignores) is caught.
        chain_of(4);
        let k = record_key(0, 1);
        let mut bytes = kv_read(&k).unwrap();
        bytes.push(b' ');
        kv_write(&k, bytes).unwrap();
        assert_eq!(verify_chain(0, kv_get).unwrap().broken.unwrap().seq, 2);
        kv_clear_for_tests();
    }

    #[test]
    fn a_chain_growing_while_it_is_read_verifies() {
        chain_of(3);
        // An append lands between the reads of `seq` and `tail_hash`.
        let mut appended = false;
        let r = verify_chain(0, |k| {
            if k == key(0, "tail_hash") && !appended {
                appended = true;
                observe(&exec(9, "SELECT ?", true));
            }
            kv_read(k)
        })
        .unwrap();
        assert_eq!((r.records, r.broken), (4, None));
        kv_clear_for_tests();
    }

    #[test]
    fn last_record_removed_or_reordered_records_are_caught() {
        // Last record altered: only the tail shows it.
        chain_of(3);
        let k = record_key(0, 2);
        let mut rec: AuditRecord = kv_read_json(&k).unwrap();
        rec.elapsed_us = 1;
        kv_write(&k, serde_json::to_vec(&rec).unwrap()).unwrap();
        let b = verify_chain(0, kv_get).unwrap().broken.unwrap();
        assert!(b.what.starts_with("tail_hash"), "{b:?}");

        // A record removed.
        chain_of(4);
        kv_remove(record_key(0, 1)).unwrap();
        let b = verify_chain(0, kv_get).unwrap().broken.unwrap();
        assert_eq!((b.seq, b.what.contains("missing")), (1, true));

        // Two records swapped (each still says its own seq: caught by seq, then by hash).
        chain_of(4);
        let (a, b) = (
            kv_read(record_key(0, 1)).unwrap(),
            kv_read(record_key(0, 2)).unwrap(),
        );
        kv_write(record_key(0, 1), &b).unwrap();
        kv_write(record_key(0, 2), &a).unwrap();
        assert_eq!(verify_chain(0, kv_get).unwrap().broken.unwrap().seq, 1);

        // Garbage.
        chain_of(2);
        kv_write(record_key(0, 0), "not json").unwrap();
        let b = verify_chain(0, kv_get).unwrap().broken.unwrap();
        assert_eq!((b.seq, b.what.contains("not an audit record")), (0, true));
        kv_write(key(0, "seq"), "x").unwrap();
        assert!(verify_chain(0, kv_get).unwrap().broken.is_some());
        kv_clear_for_tests();
    }

    #[test]
    fn an_unwritable_log_blocks_until_it_can_record_the_gap() {
        kv_clear_for_tests();
        LOST.with(|l| l.set(0));
        let q = QueryContext::default();
        assert_eq!(guard(&q), PreQueryResult::Continue);
        // Two executions could not be appended (what a KV cap causes).
        LOST.with(|l| l.set(2));
        // KV has room again: the gap record is appended and the statement passes.
        assert_eq!(guard(&q), PreQueryResult::Continue);
        let gap: AuditRecord = kv_read_json(record_key(0, 0)).unwrap();
        assert_eq!(gap.lost, 2);
        assert_eq!(LOST.with(Cell::get), 0);
        assert_eq!(verify_chain(0, kv_get).unwrap().broken, None);
        // With block_when_unwritable = false nothing is attempted or refused.
        kv_write("block_when_unwritable", "false").unwrap();
        LOST.with(|l| l.set(1));
        assert_eq!(guard(&q), PreQueryResult::Continue);
        assert_eq!(verify_chain(0, kv_get).unwrap().records, 1);
        LOST.with(|l| l.set(0));
        kv_clear_for_tests();
    }
}
