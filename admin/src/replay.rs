//! `GET/POST /api/replay`: the write journal (engine/src/pipeline/journal.rs, `[journal]`)
//! replayed onto a chosen node, from the admin thread, as `admin.sql_user`.
//!
//! Entries are applied in journal order (`seq`: the order in which executions ended across all
//! shards), each on a connection of its own original session, so that transactions that were
//! open side by side stay apart and each session's `SET`s stay its own. A simple query is sent as
//! a simple query; an extended-protocol execution is prepared with the parameter types its
//! Parse gave and executed with the very bytes it was bound with (text or binary, as the
//! client sent them). An entry that failed originally is skipped (its transaction, if it was in
//! one, ended in ROLLBACK, which the journal recorded: a COMMIT answered by ROLLBACK is replayed
//! as ROLLBACK). The replay stops at the first error, at a gap (entries the journal dropped)
//! and at an entry it cannot replay (COPY FROM STDIN data, fast-path function calls); a
//! transaction still open when it stops or when the window ends is rolled back.
//!
//! What cannot be replayed faithfully is listed in [`CAVEATS`] and docs/replay.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine as _;
use postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};
use postgres::Client;
use serde::Serialize;
use serde_json::Value;

use crate::sql::{SqlSettings, Target};

pub const CAVEATS: &[&str] = &[
    "volatile functions (now(), random(), gen_random_uuid(), clock_timestamp()) give new values",
    "sequences (serial, identity, nextval) hand out the target's next values, not the recorded ones",
    "concurrent sessions are applied one statement at a time in the order their statements ended; \
     interleavings that depended on locks or timing can come out differently",
    "statements that ran outside the window, writes made directly on the node, and the effects of \
     triggers that differ between nodes are not accounted for",
];

/// One line of the journal, as replay needs it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub ts_ms: u64,
    pub database: String,
    key: (u64, u64),
    kind: String,
    pub sql: String,
    types: Vec<u32>,
    params: Vec<Param>,
    ok: bool,
    rolled_back: bool,
    unreplayable: Option<String>,
    /// Entries the journal dropped before this point (a gap line).
    gap: Option<u64>,
}

#[derive(Debug, Clone)]
enum Param {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Null,
}

impl ToSql for Param {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Text(b) | Param::Binary(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
            Param::Null => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Param::Binary(_) => Format::Binary,
            _ => Format::Text,
        }
    }

    to_sql_checked!();
}

/// The journal's files, oldest first (rotated ones, then `journal.jsonl`).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("journal.") && n.ends_with(".jsonl") && n != "journal.jsonl"
            })
        })
        .collect();
    v.sort();
    v.push(dir.join("journal.jsonl"));
    v
}

fn parse(line: &str) -> Option<Entry> {
    let v: Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let params = v["params"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    if let Some(t) = p["t"].as_str() {
                        Param::Text(t.as_bytes().to_vec())
                    } else if let Some(b) = p["b"].as_str() {
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map(Param::Binary)
                            .unwrap_or(Param::Null)
                    } else {
                        Param::Null
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Entry {
        seq: v["seq"].as_u64()?,
        ts_ms: v["ts_ms"].as_u64().unwrap_or(0),
        database: s("database"),
        key: (
            v["shard"].as_u64().unwrap_or(0),
            v["session"].as_u64().unwrap_or(0),
        ),
        kind: s("kind"),
        sql: s("sql"),
        types: v["types"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_u64().map(|t| t as u32))
                    .collect()
            })
            .unwrap_or_default(),
        params,
        ok: v["ok"].as_bool().unwrap_or(false),
        rolled_back: v["rolled_back"].as_bool().unwrap_or(false),
        unreplayable: v["unreplayable"].as_str().map(str::to_string),
        gap: v["gap"].as_u64(),
    })
}

/// Every entry on disk, in `seq` order.
pub fn read(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for f in files(dir) {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // A line being written as we read has no end yet: parse skips it.
        out.extend(text.lines().filter_map(parse));
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

/// `GET /api/replay`: what the journal holds.
pub fn status(dir: &Path) -> Value {
    let entries = read(dir).unwrap_or_default();
    let bytes: u64 = files(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    serde_json::json!({
        "enabled": true,
        "path": dir.display().to_string(),
        "entries": entries.iter().filter(|e| e.gap.is_none()).count(),
        "gaps": entries.iter().filter_map(|e| e.gap).sum::<u64>(),
        "bytes": bytes,
        "first_ts_ms": entries.first().map(|e| e.ts_ms),
        "last_ts_ms": entries.last().map(|e| e.ts_ms),
        "first_seq": entries.first().map(|e| e.seq),
        "last_seq": entries.last().map(|e| e.seq),
        "caveats": CAVEATS,
    })
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct Request {
    pub from_ms: u64,
    pub to_ms: u64,
    /// Only this database alias (all when None).
    pub database: Option<String>,
    pub dry_run: bool,
}

impl Request {
    /// With the node it goes to (parsed together from the request body).
    pub fn with_node(self, node: String) -> (String, Request) {
        (node, self)
    }
}

/// Where the replay stopped, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stop {
    pub seq: u64,
    pub sql: String,
    pub sqlstate: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub node: String,
    pub dry_run: bool,
    /// Entries in the window (gap lines excluded).
    pub total: usize,
    pub applied: usize,
    /// Entries that had failed originally (not applied).
    pub skipped_failed: usize,
    pub first_seq: Option<u64>,
    pub last_applied_seq: Option<u64>,
    pub stopped: Option<Stop>,
    /// Transactions still open at the end (or at the stop), rolled back on the node.
    pub open_transactions_rolled_back: usize,
    pub elapsed_ms: u64,
    pub caveats: &'static [&'static str],
}

/// A COMMIT (or END) alone: replayed as ROLLBACK when the original was answered ROLLBACK.
fn is_commit(sql: &str) -> bool {
    let t = sql.trim().trim_end_matches(';').trim().to_ascii_lowercase();
    t == "commit" || t == "end" || t.starts_with("commit ") || t.starts_with("end ")
}

/// Replays the window onto the node `node` (`dbname` maps an entry's database alias to the name
/// on that node). Connections: one per original session.
pub fn replay(
    settings: &SqlSettings,
    node: &Target,
    dbname: &dyn Fn(&str) -> String,
    dir: &Path,
    req: &Request,
) -> Result<Report, crate::sql::SqlFailure> {
    let started = Instant::now();
    let all = read(dir)
        .map_err(|e| crate::sql::SqlFailure::Unreachable(format!("reading the journal: {e}")))?;
    let window: Vec<&Entry> = all
        .iter()
        .filter(|e| e.ts_ms >= req.from_ms && e.ts_ms <= req.to_ms)
        .filter(|e| e.gap.is_some() || req.database.as_ref().is_none_or(|d| *d == e.database))
        .collect();
    let mut report = Report {
        node: node.node.clone(),
        dry_run: req.dry_run,
        total: window.iter().filter(|e| e.gap.is_none()).count(),
        applied: 0,
        skipped_failed: 0,
        first_seq: window.iter().find(|e| e.gap.is_none()).map(|e| e.seq),
        last_applied_seq: None,
        stopped: None,
        open_transactions_rolled_back: 0,
        elapsed_ms: 0,
        caveats: CAVEATS,
    };
    let mut conns: HashMap<(u64, u64), Client> = HashMap::new();
    for e in window {
        if let Some(n) = e.gap {
            report.stopped = Some(Stop {
                seq: e.seq,
                sql: String::new(),
                sqlstate: None,
                message: format!("the journal lost {n} entries here (its queue was full): the history has a hole"),
            });
            break;
        }
        if !e.ok {
            report.skipped_failed += 1;
            continue;
        }
        if let Some(why) = &e.unreplayable {
            report.stopped = Some(Stop {
                seq: e.seq,
                sql: e.sql.clone(),
                sqlstate: None,
                message: format!("cannot be replayed: {why}"),
            });
            break;
        }
        if req.dry_run {
            report.applied += 1;
            report.last_applied_seq = Some(e.seq);
            continue;
        }
        let client = match conns.entry(e.key) {
            std::collections::hash_map::Entry::Occupied(c) => c.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let t = Target {
                    dbname: dbname(&e.database),
                    ..node.clone()
                };
                v.insert(crate::sql::connect(settings, &t)?)
            }
        };
        let r = if e.kind == "execute" {
            let types: Option<Vec<Type>> = e.types.iter().map(|o| Type::from_oid(*o)).collect();
            let stmt = match types {
                Some(t) if !t.is_empty() => client.prepare_typed(&e.sql, &t),
                _ => client.prepare(&e.sql),
            };
            let params: Vec<&(dyn ToSql + Sync)> =
                e.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            stmt.and_then(|s| client.execute(&s, &params).map(|_| ()))
        } else if e.rolled_back && is_commit(&e.sql) {
            client.batch_execute("ROLLBACK")
        } else {
            client.batch_execute(&e.sql)
        };
        match r {
            Ok(()) => {
                report.applied += 1;
                report.last_applied_seq = Some(e.seq);
            }
            Err(err) => {
                let (sqlstate, message) = match err.as_db_error() {
                    Some(d) => (Some(d.code().code().to_string()), d.message().to_string()),
                    None => (None, err.to_string()),
                };
                report.stopped = Some(Stop {
                    seq: e.seq,
                    sql: e.sql.clone(),
                    sqlstate,
                    message,
                });
                break;
            }
        }
    }
    for (_, mut c) in conns {
        if c.is_valid(std::time::Duration::from_secs(2)).is_ok() && c.transaction_status_open() {
            let _ = c.batch_execute("ROLLBACK");
            report.open_transactions_rolled_back += 1;
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Whether a client is inside a transaction block (the postgres crate does not say: ask).
trait TxStatus {
    fn transaction_status_open(&mut self) -> bool;
}

impl TxStatus for Client {
    fn transaction_status_open(&mut self) -> bool {
        // now() is the transaction's start time; statement_timestamp() this statement's: they
        // differ only inside a transaction block that began before this statement.
        self.simple_query("SELECT now() <> statement_timestamp()")
            .ok()
            .and_then(|m| {
                m.into_iter().find_map(|x| match x {
                    postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
                    _ => None,
                })
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_commits_are_recognised() {
        let e = parse(r#"{"seq":3,"ts_ms":9,"shard":1,"session":7,"database":"app","user":"u","kind":"execute","sql":"insert into t values ($1, $2)","types":[23,25],"params":[{"t":"1"},{"b":"AAAABw=="},null],"ok":true}"#).unwrap();
        assert_eq!((e.seq, e.key, e.types.clone()), (3, (1, 7), vec![23, 25]));
        assert!(matches!(e.params[1], Param::Binary(ref b) if b == &[0, 0, 0, 7]));
        assert!(matches!(e.params[2], Param::Null));
        assert_eq!(
            parse(r#"{"seq":4,"ts_ms":9,"gap":5}"#).unwrap().gap,
            Some(5)
        );
        assert!(
            parse("{\"seq\":5,\"ts_ms\"").is_none(),
            "a line cut short is skipped"
        );
        assert!(
            is_commit(" COMMIT; ")
                && is_commit("end")
                && !is_commit("commit; insert into t values (1)")
        );
    }
}
