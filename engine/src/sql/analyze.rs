//! What plugins are told about a statement: its fingerprint (`normalized`), the tables it names
//! and whether it only reads.
//!
//! The fingerprint is one pass over the text (literals become `?`, whitespace folds), well
//! under a microsecond for a pgbench query. The tables and the read-only verdict need a real
//! parser (sqlparser: 8–50 µs a query), so they are computed once per fingerprint and kept in a
//! bounded per-shard cache. None of this runs unless a plugin has a query hook.

use std::collections::HashMap;
use std::rc::Rc;

use sqlparser::ast::{visit_relations, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// The parsed facts of one fingerprint.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    pub tables: Vec<String>,
    pub is_read_only: bool,
}

/// Replaces string, numeric and dollar-quoted literals with `?` and folds whitespace.
pub fn normalize(sql: &str, out: &mut String) {
    out.clear();
    let b = sql.as_bytes();
    let mut i = 0;
    let mut space = false;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        match c {
            b'\'' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if i + 1 < b.len() && b[i + 1] == b'\'' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                out.push('?');
            }
            b'$' if i + 1 < b.len() && (b[i + 1] == b'$' || b[i + 1].is_ascii_alphabetic()) => {
                // $tag$ … $tag$
                let start = i;
                let mut j = i + 1;
                while j < b.len() && b[j] != b'$' && (b[j].is_ascii_alphanumeric() || b[j] == b'_')
                {
                    j += 1;
                }
                if j < b.len() && b[j] == b'$' {
                    let tag = &sql[start..=j];
                    match sql[j + 1..].find(tag) {
                        Some(end) => {
                            i = j + 1 + end + tag.len();
                            out.push('?');
                            continue;
                        }
                        None => {
                            out.push_str(&sql[start..]);
                            return;
                        }
                    }
                }
                out.push('$');
                i += 1;
            }
            b'0'..=b'9' => {
                let prev = out.as_bytes().last().copied();
                if prev.is_some_and(|p| p.is_ascii_alphanumeric() || p == b'_' || p == b'$') {
                    // Part of an identifier or a $1 parameter.
                    out.push(c as char);
                    i += 1;
                    continue;
                }
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                out.push('?');
            }
            _ => {
                // Copy one UTF-8 character.
                let len = utf8_len(c);
                let end = (i + len).min(b.len());
                out.push_str(&sql[i..end]);
                i = end;
            }
        }
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Tables and read-only verdict of `sql` (parsed with sqlparser; unparsable text names no
/// tables and is not read-only).
pub fn analyze(sql: &str) -> Analysis {
    let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Analysis::default();
    };
    let mut tables = Vec::new();
    let _ = visit_relations(&stmts, |name| {
        let n = name.to_string();
        if !tables.contains(&n) {
            tables.push(n);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    let is_read_only = !stmts.is_empty()
        && stmts.iter().all(|s| match s {
            Statement::Query(q) => {
                q.locks.is_empty() && !format!("{q}").to_ascii_uppercase().contains(" INTO ")
            }
            Statement::ShowVariable { .. } | Statement::ExplainTable { .. } => true,
            Statement::Explain { analyze, .. } => !analyze,
            _ => false,
        });
    Analysis {
        tables,
        is_read_only,
    }
}

const CACHE_CAP: usize = 4096;

/// Per-shard cache: fingerprint → analysis.
#[derive(Default)]
pub struct AnalysisCache {
    map: HashMap<String, Rc<Analysis>>,
}

impl AnalysisCache {
    pub fn get(&mut self, normalized: &str, sql: &str) -> Rc<Analysis> {
        if let Some(a) = self.map.get(normalized) {
            return a.clone();
        }
        if self.map.len() >= CACHE_CAP {
            self.map.clear();
        }
        let a = Rc::new(analyze(sql));
        self.map.insert(normalized.to_string(), a.clone());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        let mut o = String::new();
        normalize(s, &mut o);
        o
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            norm("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"
        );
        assert_eq!(
            norm("select 'it''s',  $1, t1.c2, 3.14, $q$x$q$"),
            "select ?, $1, t1.c2, ?, ?"
        );
        assert_eq!(
            norm("insert into t values ('é', 2)"),
            "insert into t values (?, ?)"
        );
    }

    #[test]
    fn tables_and_read_only() {
        let a = analyze("SELECT * FROM a JOIN s.b ON a.id = b.id");
        assert_eq!(a.tables, vec!["a".to_string(), "s.b".to_string()]);
        assert!(a.is_read_only);
        let a = analyze("UPDATE t SET x = 1");
        assert_eq!(a.tables, vec!["t".to_string()]);
        assert!(!a.is_read_only);
        assert!(!analyze("SELECT * FROM t FOR UPDATE").is_read_only);
        assert!(!analyze("DROP TABLE t").is_read_only);
        assert!(!analyze("this is not sql").is_read_only);
    }
}
