//! `POST /api/sql` and `POST /api/shadow`: statements run on a node directly (not through the
//! shards' pools), as the configured admin role (`admin.sql_user`), from the admin thread.
//!
//! The `postgres` crate's blocking client does the protocol; each request opens one connection
//! per node and closes it. Reads run inside `BEGIN READ ONLY` with `SET LOCAL statement_timeout`,
//! through a cursor (`DECLARE … NO SCROLL CURSOR FOR <sql>`, then `FETCH FORWARD n`): the server
//! enforces that the statement is a query (a cursor can only be declared for one), that it
//! writes nothing (the transaction is read-only), and the row limit is applied while fetching,
//! so a huge result is never held. The statement is sent with the extended protocol, which
//! takes exactly one statement: `select 1; commit; drop table t` is refused by the server, not
//! by a scanner of ours.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, SimpleQueryMessage};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Rows fetched per `FETCH` round trip.
const FETCH_BATCH: usize = 500;
const CURSOR: &str = "helios_admin_cursor";

/// What `admin.sql_*` configures.
#[derive(Clone, Debug)]
pub struct SqlSettings {
    pub user: Option<String>,
    pub password: Option<String>,
    pub max_rows: usize,
    pub timeout: Duration,
}

/// Where a statement runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

/// Why a statement did not give a result; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlFailure {
    /// `admin.sql_user` is not set (503).
    NotConfigured,
    /// The node could not be reached or refused the login (502).
    Unreachable(String),
    /// The statement is not acceptable as sent: not a read where one is required, a syntax
    /// error, an unknown table (400).
    Refused { sqlstate: String, message: String },
    /// The server failed it while running: the statement timeout, a division by zero (422).
    Failed { sqlstate: String, message: String },
    /// More rows than `admin.sql_max_rows` where the whole result is needed (422).
    TooManyRows(usize),
}

impl SqlFailure {
    pub fn status(&self) -> u16 {
        match self {
            SqlFailure::NotConfigured => 503,
            SqlFailure::Unreachable(_) => 502,
            SqlFailure::Refused { .. } => 400,
            SqlFailure::Failed { .. } | SqlFailure::TooManyRows(_) => 422,
        }
    }

    pub fn to_json(&self, node: &str) -> serde_json::Value {
        match self {
            SqlFailure::NotConfigured => serde_json::json!({
                "error": "admin SQL not enabled: set admin.sql_user (and admin.sql_password)"
            }),
            SqlFailure::Unreachable(m) => serde_json::json!({
                "error": format!("node {node}: {m}"), "node": node
            }),
            SqlFailure::Refused { sqlstate, message }
            | SqlFailure::Failed { sqlstate, message } => {
                serde_json::json!({
                    "error": format!("node {node}: {message}"), "sqlstate": sqlstate, "node": node
                })
            }
            SqlFailure::TooManyRows(n) => serde_json::json!({
                "error": format!("node {node}: the result has more than {n} rows (admin.sql_max_rows)"),
                "node": node
            }),
        }
    }
}

/// A result in text form, as psql shows it (`None` is NULL).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// More rows existed than were kept.
    pub truncated: bool,
    /// Rows affected, for a statement that is not a query (write mode).
    pub affected: Option<u64>,
    pub elapsed_ms: u64,
}

pub(crate) fn connect(s: &SqlSettings, t: &Target) -> Result<Client, SqlFailure> {
    let user = s.user.as_deref().ok_or(SqlFailure::NotConfigured)?;
    let mut c = postgres::Config::new();
    c.host(&t.host)
        .port(t.port)
        .user(user)
        .dbname(&t.dbname)
        .application_name("heliosproxy-admin")
        .connect_timeout(s.timeout);
    if let Some(p) = &s.password {
        c.password(p);
    }
    c.connect(NoTls)
        .map_err(|e| SqlFailure::Unreachable(describe(&e)))
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// A server error while preparing or running the statement.
fn classify(e: postgres::Error) -> SqlFailure {
    let Some(d) = e.as_db_error() else {
        return SqlFailure::Unreachable(e.to_string());
    };
    let code = d.code().code().to_string();
    let message = d.message().to_string();
    // Class 42 (syntax, unknown objects, privileges), read-only violations, what a cursor
    // cannot be declared for: the request is wrong. Anything else happened while running.
    let refused = code.starts_with("42") || code == "25006" || code == "0A000" || code == "34000";
    if refused {
        SqlFailure::Refused {
            sqlstate: code,
            message,
        }
    } else {
        SqlFailure::Failed {
            sqlstate: code,
            message,
        }
    }
}

fn trimmed(sql: &str) -> &str {
    sql.trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

/// Runs `sql` on `t`. Read-only: in a `READ ONLY` transaction through a cursor, keeping at most
/// `limit` rows (`strict`: more is [`SqlFailure::TooManyRows`]). Otherwise (write mode): in a
/// transaction that commits, at most `limit` rows of its output kept.
pub fn run(
    s: &SqlSettings,
    t: &Target,
    sql: &str,
    read_only: bool,
    limit: usize,
    strict: bool,
) -> Result<ResultSet, SqlFailure> {
    let started = Instant::now();
    let sql = trimmed(sql);
    if sql.is_empty() {
        return Err(SqlFailure::Refused {
            sqlstate: "42601".into(),
            message: "empty statement".into(),
        });
    }
    let mut client = connect(s, t)?;
    let mut tx = client
        .build_transaction()
        .read_only(read_only)
        .start()
        .map_err(classify)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        s.timeout.as_millis().max(1)
    ))
    .map_err(classify)?;
    // Parse and describe only: one statement, its columns, nothing run yet.
    let stmt = tx.prepare(sql).map_err(classify)?;
    let mut out = ResultSet {
        columns: stmt
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        ..ResultSet::default()
    };
    if read_only {
        tx.execute(
            format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR {sql}").as_str(),
            &[],
        )
        .map_err(|e| match classify(e) {
            // It parsed on its own (prepared above), so the cursor's grammar refused it: it is
            // not a query.
            SqlFailure::Refused { sqlstate, .. } if sqlstate == "42601" => SqlFailure::Refused {
                sqlstate,
                message: "not a read: only a query (SELECT, VALUES, TABLE, WITH … SELECT) runs \
                          read-only; send \"read_only\": false to run anything else"
                    .into(),
            },
            other => other,
        })?;
        loop {
            let want = FETCH_BATCH.min(limit + 1 - out.rows.len());
            let msgs = tx
                .simple_query(&format!("FETCH FORWARD {want} FROM {CURSOR}"))
                .map_err(classify)?;
            let mut got = 0;
            for m in msgs {
                if let SimpleQueryMessage::Row(r) = m {
                    got += 1;
                    out.rows
                        .push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                }
            }
            if out.rows.len() > limit {
                if strict {
                    return Err(SqlFailure::TooManyRows(limit));
                }
                out.rows.truncate(limit);
                out.truncated = true;
                break;
            }
            if got < want {
                break;
            }
        }
        let _ = tx.rollback();
    } else {
        for m in tx.simple_query(sql).map_err(classify)? {
            match m {
                SimpleQueryMessage::Row(r) if out.rows.len() < limit => out
                    .rows
                    .push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
                SimpleQueryMessage::Row(_) => out.truncated = true,
                SimpleQueryMessage::CommandComplete(n) => out.affected = Some(n),
                _ => {}
            }
        }
        tx.commit().map_err(classify)?;
    }
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(out)
}

/// SHA-256 of one row's values, each length-prefixed (NULL distinct from every string).
fn row_hash(row: &[Option<String>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in row {
        match v {
            None => h.update([0xff]),
            Some(s) => {
                h.update([0]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    h.finalize().into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One side of a shadow comparison.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Side {
    pub node: String,
    pub database: String,
    pub rows: usize,
    /// Order-independent hash of the result: SHA-256 over the sorted row hashes (a multiset:
    /// duplicate rows count).
    pub hash: String,
    pub elapsed_ms: u64,
}

/// What `/api/shadow` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShadowReport {
    pub source: Side,
    pub target: Side,
    pub columns_match: bool,
    #[serde(rename = "match")]
    pub matches: bool,
    /// The first row (in the source's order) the target lacks, and the first row (in the
    /// target's order) the source lacks; both null when the results match.
    pub first_difference: Option<serde_json::Value>,
}

fn side(t: &Target, r: &ResultSet) -> (Side, Vec<[u8; 32]>) {
    let hashes: Vec<[u8; 32]> = r.rows.iter().map(|row| row_hash(row)).collect();
    let mut sorted = hashes.clone();
    sorted.sort_unstable();
    let mut h = Sha256::new();
    for x in &sorted {
        h.update(x);
    }
    (
        Side {
            node: t.node.clone(),
            database: t.dbname.clone(),
            rows: r.rows.len(),
            hash: hex(&h.finalize()),
            elapsed_ms: r.elapsed_ms,
        },
        hashes,
    )
}

/// The first row of `a` (in order) with no partner left in `b`, counting duplicates.
fn first_missing<'a>(
    a: &'a ResultSet,
    ah: &[[u8; 32]],
    bh: &[[u8; 32]],
) -> Option<&'a Vec<Option<String>>> {
    let mut left: HashMap<&[u8; 32], usize> = HashMap::new();
    for h in bh {
        *left.entry(h).or_default() += 1;
    }
    for (row, h) in a.rows.iter().zip(ah) {
        match left.get_mut(h) {
            Some(n) if *n > 0 => *n -= 1,
            _ => return Some(row),
        }
    }
    None
}

/// Compares two results already fetched (pure: tested without a server).
pub fn compare(st: &Target, s: &ResultSet, tt: &Target, t: &ResultSet) -> ShadowReport {
    let (source, sh) = side(st, s);
    let (target, th) = side(tt, t);
    let columns_match = s.columns == t.columns;
    let matches = columns_match && source.hash == target.hash;
    let first_difference = (!matches).then(|| {
        serde_json::json!({
            "source_row": first_missing(s, &sh, &th),
            "target_row": first_missing(t, &th, &sh),
            "source_columns": s.columns,
            "target_columns": t.columns,
        })
    });
    ShadowReport {
        source,
        target,
        columns_match,
        matches,
        first_difference,
    }
}

/// Runs `sql` read-only on both nodes (one after the other) and compares the results.
pub fn shadow(
    s: &SqlSettings,
    source: &Target,
    target: &Target,
    sql: &str,
) -> Result<ShadowReport, (String, SqlFailure)> {
    let a = run(s, source, sql, true, s.max_rows, true).map_err(|e| (source.node.clone(), e))?;
    let b = run(s, target, sql, true, s.max_rows, true).map_err(|e| (target.node.clone(), e))?;
    Ok(compare(source, &a, target, &b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(rows: &[&[Option<&str>]]) -> ResultSet {
        ResultSet {
            columns: vec!["a".into(), "b".into()],
            rows: rows
                .iter()
                .map(|r| r.iter().map(|v| v.map(str::to_string)).collect())
                .collect(),
            ..ResultSet::default()
        }
    }

    fn t(node: &str) -> Target {
        Target {
            node: node.into(),
            host: "h".into(),
            port: 1,
            dbname: "d".into(),
        }
    }

    #[test]
    fn order_does_not_matter_duplicates_and_nulls_do() {
        let a = rs(&[&[Some("1"), Some("x")], &[Some("2"), None]]);
        let b = rs(&[&[Some("2"), None], &[Some("1"), Some("x")]]);
        let r = compare(&t("s"), &a, &t("t"), &b);
        assert!(r.matches && r.columns_match, "{r:?}");
        assert_eq!(r.source.hash, r.target.hash);
        assert!(r.first_difference.is_none());

        // A duplicate row is a difference.
        let c = rs(&[&[Some("1"), Some("x")], &[Some("1"), Some("x")]]);
        let d = rs(&[&[Some("1"), Some("x")]]);
        let r = compare(&t("s"), &c, &t("t"), &d);
        assert!(!r.matches);
        let diff = r.first_difference.unwrap();
        assert_eq!(diff["source_row"], serde_json::json!(["1", "x"]));
        assert!(diff["target_row"].is_null());

        // NULL is not the empty string, and values do not run together.
        let e = rs(&[&[None, Some("")]]);
        let f = rs(&[&[Some(""), None]]);
        assert!(!compare(&t("s"), &e, &t("t"), &f).matches);
        let g = rs(&[&[Some("ab"), Some("c")]]);
        let h = rs(&[&[Some("a"), Some("bc")]]);
        assert!(!compare(&t("s"), &g, &t("t"), &h).matches);

        // Same rows under other column names: no match.
        let mut i = a.clone();
        i.columns = vec!["a".into(), "c".into()];
        let r = compare(&t("s"), &a, &t("t"), &i);
        assert!(!r.columns_match && !r.matches);
    }

    #[test]
    fn statuses() {
        assert_eq!(SqlFailure::NotConfigured.status(), 503);
        assert_eq!(SqlFailure::Unreachable("x".into()).status(), 502);
        assert_eq!(SqlFailure::TooManyRows(3).status(), 422);
        assert_eq!(trimmed(" select 1 ;; \n"), "select 1");
    }
}
