//! Is this statement a plain read a replica may serve? A cheap scan, no parse, and
//! conservative: anything it cannot vouch for is "not a read" (the primary serves it).
//!
//! A query is a read when every statement in it is one of:
//! - `SELECT …`, `WITH …` (no `INSERT`/`UPDATE`/`DELETE`/`MERGE` anywhere), `TABLE …`,
//!   `VALUES …`, with no locking clause (`FOR UPDATE`/`SHARE`/`NO KEY UPDATE`/`KEY SHARE`), no
//!   `SELECT … INTO` (it creates a table), and no call of a function that is neither in the
//!   built-in side-effect-free list ([`SAFE_FUNCTIONS`]) nor in `read_only_functions`;
//! - `BEGIN`/`START TRANSACTION` with `READ ONLY` (then the whole transaction is), as the first
//!   statement; `COMMIT`/`END`/`ROLLBACK` as the last.
//!
//! Measured with `cargo bench -p helios-benches --bench route` (see its header).

use super::classify::skip_block_comment;

/// Where a leading `/* helios:route=… */` comment sends the statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

impl Hint {
    /// `primary`, `replica` or its synonym `standby` (any case).
    pub fn parse(v: &str) -> Option<Hint> {
        let v = v.trim().trim_matches('\'');
        if v.eq_ignore_ascii_case("primary") {
            Some(Hint::Primary)
        } else if v.eq_ignore_ascii_case("replica") || v.eq_ignore_ascii_case("standby") {
            Some(Hint::Replica)
        } else {
            None
        }
    }
}

/// The hint in a leading block comment: `/* helios:route=replica */ SELECT …`.
pub fn route_hint(sql: &str) -> Option<Hint> {
    let t = sql.trim_start();
    let rest = t.strip_prefix("/*")?;
    let end = rest.find("*/")?;
    let inner = rest[..end].trim();
    let v = inner.strip_prefix("helios:route")?.trim_start();
    Hint::parse(v.strip_prefix('=')?)
}

/// Functions that only read: aggregates, string, math, date/time, JSON builders, and the
/// replication status functions. Anything else (`nextval`, `set_config`, `pg_advisory_lock`,
/// user functions) sends the statement to the primary unless `read_only_functions` names it.
pub const SAFE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "chr",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "current_database",
    "current_schema",
    "current_setting",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "encode",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "initcap",
    "json_agg",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_object_agg",
    "jsonb_set",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "octet_length",
    "overlay",
    "percent_rank",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_postmaster_start_time",
    "position",
    "power",
    "random",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "sha256",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "version",
];

/// Words that take a parenthesis without being a function call.
const NOT_CALLS: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "bit",
    "by",
    "case",
    "cast",
    "char",
    "character",
    "cube",
    "decimal",
    "distinct",
    "else",
    "except",
    "exists",
    "filter",
    "float",
    "from",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "intersect",
    "interval",
    "is",
    "join",
    "lateral",
    "like",
    "limit",
    "materialized",
    "not",
    "numeric",
    "offset",
    "on",
    "or",
    "over",
    "partition",
    "precision",
    "recursive",
    "rollup",
    "row",
    "select",
    "sets",
    "similar",
    "some",
    "then",
    "time",
    "timestamp",
    "union",
    "using",
    "values",
    "varchar",
    "varying",
    "when",
    "where",
    "with",
    "within",
];

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// One token of the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    /// A bare word (possibly `schema.name`), as written.
    Word(&'a [u8]),
    /// A quoted identifier.
    Quoted,
    /// `(`
    Open,
    /// `;`
    Semi,
    /// `::`
    Cast,
    /// Anything else (literals, operators, numbers).
    Other,
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn next(&mut self) -> Option<Tok<'a>> {
        let b = self.b;
        loop {
            let c = *b.get(self.i)?;
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => self.i += 1,
                b'-' if b.get(self.i + 1) == Some(&b'-') => {
                    self.i = memchr::memchr(b'\n', &b[self.i..]).map_or(b.len(), |k| self.i + k);
                }
                b'/' if b.get(self.i + 1) == Some(&b'*') => {
                    self.i = skip_block_comment(b, self.i + 2);
                }
                b'\'' => {
                    let escapes = self.i > 0 && matches!(b[self.i - 1], b'e' | b'E');
                    self.i = skip_string(b, self.i + 1, escapes);
                    return Some(Tok::Other);
                }
                b'"' => {
                    self.i = skip_string(b, self.i + 1, false);
                    return Some(Tok::Quoted);
                }
                b'$' => {
                    // A dollar-quoted string, or a parameter ($1).
                    let mut j = self.i + 1;
                    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                        j += 1;
                    }
                    if b.get(j) == Some(&b'$')
                        && !b[self.i + 1..j].first().is_some_and(u8::is_ascii_digit)
                    {
                        let tag = &b[self.i..=j];
                        self.i = memchr::memmem::find(&b[j + 1..], tag)
                            .map_or(b.len(), |k| j + 1 + k + tag.len());
                    } else {
                        self.i = j.max(self.i + 1);
                    }
                    return Some(Tok::Other);
                }
                b'(' => {
                    self.i += 1;
                    return Some(Tok::Open);
                }
                b';' => {
                    self.i += 1;
                    return Some(Tok::Semi);
                }
                b':' if b.get(self.i + 1) == Some(&b':') => {
                    self.i += 2;
                    return Some(Tok::Cast);
                }
                c if is_ident(c) && !c.is_ascii_digit() => {
                    let start = self.i;
                    while self.i < b.len() && (is_ident(b[self.i]) || b[self.i] == b'.') {
                        self.i += 1;
                    }
                    // `e'…'`: the word is the string's prefix.
                    if self.i - start == 1
                        && matches!(c, b'e' | b'E')
                        && b.get(self.i) == Some(&b'\'')
                    {
                        continue;
                    }
                    return Some(Tok::Word(&b[start..self.i]));
                }
                _ => {
                    self.i += 1;
                    while self.i < b.len()
                        && !is_ident(b[self.i])
                        && !matches!(
                            b[self.i],
                            b'(' | b';' | b'\'' | b'"' | b'$' | b' ' | b'\n' | b'-' | b'/' | b':'
                        )
                    {
                        self.i += 1;
                    }
                    return Some(Tok::Other);
                }
            }
        }
    }
}

/// After an opening quote: past the closing one (`''` is a quote inside; with `escapes`, a
/// backslash escapes the next byte).
fn skip_string(b: &[u8], mut i: usize, escapes: bool) -> usize {
    let q = b[i - 1];
    while i < b.len() {
        let c = b[i];
        if escapes && c == b'\\' {
            i += 2;
        } else if c == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// What the scan of one statement found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stmt {
    Read,
    BeginReadOnly,
    /// `BEGIN`/`START TRANSACTION` without `READ ONLY`.
    Begin,
    End,
    /// Changes no data: `SET`, `SHOW`, `RESET`, `SAVEPOINT`, `RELEASE` (not a read either: a
    /// replica does not serve it).
    Quiet,
    Empty,
    Other,
}

/// Whether `sql` may change data: some statement in it is neither a read (as [`is_read`] sees
/// one), nor transaction control, nor `SET`/`SHOW`/`RESET`/`SAVEPOINT`/`RELEASE`.
/// Conservative like [`is_read`]: what it cannot vouch for may write. Read-your-writes asks it.
pub fn may_write(sql: &str, extra: &[String]) -> bool {
    let mut s = Scan {
        b: sql.as_bytes(),
        i: 0,
    };
    loop {
        let (st, more) = statement(&mut s, extra);
        if st == Stmt::Other {
            return true;
        }
        if !more {
            return false;
        }
    }
}

/// Whether `sql` (a simple query's text, or one extended statement) may run on a replica.
/// `extra` holds `read_only_functions`, lowercase.
pub fn is_read(sql: &str, extra: &[String]) -> bool {
    let mut s = Scan {
        b: sql.as_bytes(),
        i: 0,
    };
    let mut n = 0usize;
    let mut ended = false;
    loop {
        let (st, more) = statement(&mut s, extra);
        match st {
            Stmt::Empty => {}
            _ if ended => return false,
            Stmt::Read => {}
            Stmt::BeginReadOnly if n == 0 => {}
            Stmt::End if n > 0 => ended = true,
            _ => return false,
        }
        if st != Stmt::Empty {
            n += 1;
        }
        if !more {
            return n > 0;
        }
    }
}

/// Scans one statement up to its `;` (`more`: one followed).
fn statement(s: &mut Scan<'_>, extra: &[String]) -> (Stmt, bool) {
    let Some(first) = s.next() else {
        return (Stmt::Empty, false);
    };
    let kind = match first {
        Tok::Semi => return (Stmt::Empty, true),
        Tok::Word(w) if eq(w, "select") || eq(w, "with") || eq(w, "table") || eq(w, "values") => {
            Stmt::Read
        }
        Tok::Word(w) if eq(w, "begin") || eq(w, "start") => Stmt::BeginReadOnly,
        Tok::Word(w) if eq(w, "commit") || eq(w, "end") || eq(w, "rollback") => Stmt::End,
        Tok::Word(w)
            if eq(w, "set")
                || eq(w, "show")
                || eq(w, "reset")
                || eq(w, "savepoint")
                || eq(w, "release") =>
        {
            Stmt::Quiet
        }
        Tok::Open => Stmt::Read, // (SELECT …) UNION …
        _ => Stmt::Other,
    };
    let mut verdict = kind;
    let mut read_only = false;
    let mut prev: Tok<'_> = first;
    let mut before_prev: Tok<'_> = Tok::Other;
    // The word before an `(`: a call unless a keyword or a type after `::`.
    let mut word: Option<&[u8]> = match first {
        Tok::Word(w) => Some(w),
        _ => None,
    };
    loop {
        let Some(t) = s.next() else {
            return (finish(verdict, kind, read_only), false);
        };
        match t {
            Tok::Semi => return (finish(verdict, kind, read_only), true),
            Tok::Word(w) => {
                if verdict == Stmt::Read {
                    if eq(w, "insert")
                        || eq(w, "update")
                        || eq(w, "delete")
                        || eq(w, "merge")
                        || eq(w, "into")
                        || eq(w, "share")
                        || (matches!(prev, Tok::Word(p) if eq(p, "for"))
                            && (eq(w, "no") || eq(w, "key")))
                    {
                        verdict = Stmt::Other;
                    }
                } else if kind == Stmt::BeginReadOnly
                    && eq(w, "only")
                    && matches!(prev, Tok::Word(p) if eq(p, "read"))
                {
                    read_only = true;
                }
                word = Some(w);
            }
            Tok::Open => {
                if verdict == Stmt::Read {
                    if matches!(prev, Tok::Quoted) {
                        verdict = Stmt::Other;
                    } else if let (Tok::Word(_), Some(w)) = (prev, word) {
                        let is_type = matches!(before_prev, Tok::Cast);
                        if !is_type && !safe_call(w, extra) {
                            verdict = Stmt::Other;
                        }
                    }
                }
                word = None;
            }
            _ => word = None,
        }
        before_prev = prev;
        prev = t;
    }
}

fn finish(verdict: Stmt, kind: Stmt, read_only: bool) -> Stmt {
    match kind {
        Stmt::BeginReadOnly if read_only => Stmt::BeginReadOnly,
        Stmt::BeginReadOnly => Stmt::Begin,
        _ => verdict,
    }
}

/// A keyword before `(`, a built-in safe function, or one the operator listed.
fn safe_call(w: &[u8], extra: &[String]) -> bool {
    let name = match w.iter().rposition(|&c| c == b'.') {
        Some(i) => {
            let schema = &w[..i];
            // A listed qualified name matches as written; built-ins only as pg_catalog.x.
            if extra.iter().any(|e| eq(w, e)) {
                return true;
            }
            if !eq(schema, "pg_catalog") {
                return false;
            }
            &w[i + 1..]
        }
        None => w,
    };
    NOT_CALLS.iter().any(|k| eq(name, k))
        || SAFE_FUNCTIONS.iter().any(|k| eq(name, k))
        || extra.iter().any(|e| eq(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str) -> bool {
        is_read(s, &["price_of".into(), "app.fx_rate".into()])
    }

    #[test]
    fn plain_reads() {
        for q in [
            "SELECT 1",
            "select abalance from pgbench_accounts where aid = $1",
            "  /* c */ SELECT count(*), max(x) FROM t WHERE y IN (1, 2) AND z::numeric(10,2) > 3",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "SELECT coalesce(sum(x), 0) FROM t GROUP BY (y)",
            "select now(), pg_is_in_recovery()",
            "SELECT price_of(3)",
            "SELECT app.fx_rate('EUR')",
            "SELECT 'update; insert(' FROM t",
            "SELECT $$ delete $$, e'it\\'s (', \"col\" FROM t",
            "TABLE t",
            "VALUES (1), (2)",
            "SELECT 1; SELECT 2;",
            "SELECT inet_server_port()",
            "BEGIN READ ONLY",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "BEGIN READ ONLY; SELECT 1; COMMIT",
            "(SELECT 1) UNION (SELECT 2)",
            "SELECT exists (SELECT 1 FROM t)",
            "select pg_catalog.count(*) from t",
        ] {
            assert!(read(q), "{q} should be a read");
        }
    }

    #[test]
    fn what_may_write() {
        let w = |q: &str| may_write(q, &["price_of".into()]);
        for q in [
            "BEGIN",
            "BEGIN; SELECT 1; COMMIT",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET statement_timeout = 5",
            "show search_path",
            "SAVEPOINT a; RELEASE a; ROLLBACK",
            "RESET ALL",
            "SELECT price_of(1)",
            "",
        ] {
            assert!(!w(q), "{q} writes nothing");
        }
        for q in [
            "INSERT INTO t VALUES (1)",
            "BEGIN; UPDATE t SET x = 1; COMMIT",
            "WITH a AS (DELETE FROM t RETURNING *) SELECT * FROM a",
            "SELECT nextval('s')",
            "SELECT * FROM t FOR UPDATE",
            "CREATE TABLE t (x int)",
            "SET x = 1; COPY t FROM STDIN",
        ] {
            assert!(w(q), "{q} may write");
        }
    }

    #[test]
    fn everything_else_is_not() {
        for q in [
            "",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET x = 1",
            "BEGIN",
            "BEGIN; SELECT 1",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR KEY SHARE",
            "SELECT * INTO t2 FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT nextval('s')",
            "SELECT set_config('a', 'b', false)",
            "SELECT my_func()",
            "SELECT other.price_of(1)",
            "SELECT \"MyFunc\"(1)",
            "SELECT pg_advisory_lock(1)",
            "SELECT 1; INSERT INTO t VALUES (1)",
            "BEGIN READ ONLY; COMMIT; SELECT 1",
            "BEGIN READ WRITE",
            "SET x = 1",
            "SHOW x",
            "COMMIT",
            "EXPLAIN ANALYZE DELETE FROM t",
            "SELECT x FROM t FOR UPDATE OF t SKIP LOCKED",
        ] {
            assert!(!read(q), "{q} should not be a read");
        }
    }

    #[test]
    fn hints() {
        assert_eq!(
            route_hint("/* helios:route=replica */ SELECT 1"),
            Some(Hint::Replica)
        );
        assert_eq!(
            route_hint(" /*helios:route = primary*/ SELECT 1"),
            Some(Hint::Primary)
        );
        assert_eq!(
            route_hint("/* helios:route=standby */ SELECT 1"),
            Some(Hint::Replica)
        );
        assert_eq!(route_hint("/* helios:route=elsewhere */ SELECT 1"), None);
        assert_eq!(route_hint("SELECT 1 /* helios:route=replica */"), None);
        assert_eq!(Hint::parse("'replica'"), Some(Hint::Replica));
    }
}
