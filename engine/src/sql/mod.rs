//! The little SQL the proxy must understand without a parser: session `SET`/`RESET`,
//! `DEALLOCATE`/`DISCARD`, and the statements transaction pooling cannot honour. One pass over the
//! bytes; nothing here allocates unless it found something to track. [`classify`] splits a
//! simple query into statements and says what each does to session state; the functions here
//! are the older one-statement views of it.

pub mod analyze;
pub mod classify;
pub mod fixed;
pub mod read;

use classify::{Effect, Unsafe};

/// A statement's effect on session state that the proxy tracks under transaction pooling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCommand {
    /// `SET [SESSION] name {TO|=} value`: the value as SQL text.
    Set { name: String, value: String },
    /// `RESET name`
    Reset { name: String },
    /// `RESET ALL`
    ResetAll,
    /// `DEALLOCATE [PREPARE] name`
    Deallocate { name: String },
    /// `DEALLOCATE [PREPARE] ALL`
    DeallocateAll,
    /// `DISCARD ALL`
    DiscardAll,
}

/// Words split on SQL whitespace, skipping leading comments and whitespace.
struct Words<'a> {
    s: &'a str,
}

impl<'a> Words<'a> {
    /// Skips PostgreSQL's whitespace (`[ \t\n\r\f\v]`), `--` comments and nested `/* */`.
    fn skip_space(&mut self) {
        loop {
            let t = self
                .s
                .trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
            if let Some(rest) = t.strip_prefix("--") {
                self.s = rest
                    .find(['\n', '\r'])
                    .map(|i| &rest[i + 1..])
                    .unwrap_or("");
            } else if let Some(rest) = t.strip_prefix("/*") {
                let end = classify::skip_block_comment(rest.as_bytes(), 0);
                self.s = rest.get(end..).unwrap_or("");
            } else {
                self.s = t;
                return;
            }
        }
    }

    /// The next bare word (letters, digits, `_`, `.`), or `None` at something else.
    fn word(&mut self) -> Option<&'a str> {
        self.skip_space();
        let end = self
            .s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(self.s.len());
        if end == 0 {
            return None;
        }
        let w = &self.s[..end];
        self.s = &self.s[end..];
        Some(w)
    }

    fn rest(&mut self) -> &'a str {
        self.skip_space();
        self.s
    }
}

/// Recognises a query string that is exactly one tracked session command (`SET`, `RESET`,
/// `DEALLOCATE`, `DISCARD ALL`); `None` for everything else, including several statements (see
/// [`classify::statements`] for those) and the `SET` forms the proxy cannot replay (`SET ROLE`,
/// `SET SESSION AUTHORIZATION`: [`Unsafe`] there). `SET SESSION CHARACTERISTICS` with one mode
/// is tracked as the `default_transaction_*` parameter it sets.
///
/// Measured: 13 ns on a pgbench SELECT or INSERT (its first word is enough), 123 ns on a SET it
/// tracks, on a quiet core; criterion medians on the loaded development VM: 35–36 ns and 350 ns
/// (benches/benches/sql.rs).
pub fn session_command(sql: &str) -> Option<SessionCommand> {
    let first = Words { s: sql }.word()?;
    if !["set", "reset", "deallocate", "discard"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
    {
        return None;
    }
    let mut all = classify::statements(sql);
    let (_, effect) = all.next()?;
    if all.next().is_some() {
        return None;
    }
    match effect {
        Effect::Track(cmd) => Some(cmd),
        _ => None,
    }
}

fn strip_word<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let t = s.trim_start();
    if t.len() > word.len()
        && t[..word.len()].eq_ignore_ascii_case(word)
        && t.as_bytes()[word.len()].is_ascii_whitespace()
    {
        Some(&t[word.len()..])
    } else {
        None
    }
}

/// `name` → lowercased (ASCII letters only, as PostgreSQL does in a multibyte encoding),
/// `"Name"` → as written (`""` inside stands for `"`).
fn unquote_ident(s: &str) -> Option<String> {
    if let Some(inner) = s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        if inner.is_empty() || inner.replace("\"\"", "").contains('"') {
            return None;
        }
        return Some(inner.replace("\"\"", "\""));
    }
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
    {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

/// `LISTEN channel`, `UNLISTEN channel` or `UNLISTEN *`: a whole simple query of one statement,
/// which transaction pooling serves through the shard's notify hub (`backend/listen.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenCommand {
    /// The channel as the server names it (unquoted: lowercased; at most 63 bytes).
    Listen(String),
    /// `None`: `UNLISTEN *`.
    Unlisten(Option<String>),
}

/// An identifier quoted for SQL text: `a"b` → `"a""b"`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Under transaction pooling these would silently break (the next transaction may run on
/// another server connection); the proxy refuses them with 0A000 instead: `LISTEN`, session
/// advisory locks, `WITH HOLD` cursors, in any statement of the query (from
/// [`classify::statements`]).
///
/// Measured: as [`classify::statements`], 45 ns on the pgbench SELECT, 58 ns on its INSERT on a
/// quiet core; criterion medians on the loaded development VM: 119 ns and 168 ns
/// (benches/benches/sql.rs).
pub fn transaction_mode_unsupported(sql: &str) -> Option<&'static str> {
    classify::statements(sql).find_map(|(_, effect)| match effect {
        Effect::Listen(_) => Some(
            "LISTEN is not supported in transaction pooling mode (use a session-mode database)",
        ),
        Effect::Unsafe(Unsafe::AdvisoryLock) => Some("session-level advisory locks are not supported in transaction pooling mode (use pg_advisory_xact_lock)"),
        Effect::Unsafe(Unsafe::HoldCursor) => {
            Some("WITH HOLD cursors are not supported in transaction pooling mode")
        }
        _ => None,
    })
}

/// ASCII case-insensitive substring search that scans for `needle[anchor]` (pick a byte that
/// is rare in the haystack) and checks around each hit. Yields the start of every match.
pub fn find_ci_anchored<'a>(
    hay: &'a [u8],
    needle: &'a [u8],
    anchor: usize,
) -> impl Iterator<Item = usize> + 'a {
    let (lo, up) = (
        needle[anchor].to_ascii_lowercase(),
        needle[anchor].to_ascii_uppercase(),
    );
    memchr::memchr2_iter(lo, up, hay)
        .filter(move |&at| at >= anchor)
        .map(move |at| at - anchor)
        .filter(move |&start| {
            hay.len() - start >= needle.len()
                && hay[start..start + needle.len()].eq_ignore_ascii_case(needle)
        })
}

/// ASCII case-insensitive substring search.
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    find_ci_anchored(hay, needle, 0).next().is_some()
}

/// A SQL string literal: `'it''s'`.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A statement that makes the server raise `code` with `message`: used to put a server-side
/// transaction into the failed state exactly as a real error would.
pub fn raise_statement(code: &str, message: &str) -> String {
    let mut tag = String::from("helios");
    while message.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    format!(
        "DO ${tag}$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = {}; END${tag}$",
        quote_literal(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionCommand::*;

    fn set(n: &str, v: &str) -> Option<SessionCommand> {
        Some(Set {
            name: n.into(),
            value: v.into(),
        })
    }

    #[test]
    fn recognises_session_commands() {
        assert_eq!(
            session_command("SET search_path TO a, b;"),
            set("search_path", "a, b")
        );
        assert_eq!(
            session_command("set Statement_Timeout = '5s'"),
            set("statement_timeout", "'5s'")
        );
        assert_eq!(
            session_command("SET SESSION TimeZone TO 'UTC'"),
            set("timezone", "'UTC'")
        );
        assert_eq!(
            session_command("SET TIME ZONE 'Europe/Paris'"),
            set("timezone", "'Europe/Paris'")
        );
        assert_eq!(
            session_command("/* c */ SET application_name = x"),
            set("application_name", "x")
        );
        assert_eq!(session_command("SET LOCAL search_path TO a"), None);
        assert_eq!(
            session_command("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            None
        );
        assert_eq!(session_command("SET a = 1; SELECT 1"), None);
        assert_eq!(
            session_command("RESET search_path"),
            Some(Reset {
                name: "search_path".into()
            })
        );
        assert_eq!(session_command("reset all;"), Some(ResetAll));
        assert_eq!(
            session_command("DEALLOCATE PREPARE s1"),
            Some(Deallocate { name: "s1".into() })
        );
        assert_eq!(
            session_command("deallocate \"S1\""),
            Some(Deallocate { name: "S1".into() })
        );
        assert_eq!(session_command("DEALLOCATE ALL"), Some(DeallocateAll));
        assert_eq!(session_command("DISCARD ALL"), Some(DiscardAll));
        assert_eq!(session_command("SELECT 1"), None);
        assert_eq!(session_command(""), None);
        // The splitter reads quotes and comments: one statement, tracked.
        assert_eq!(
            session_command("SET application_name = 'a;b'; -- done"),
            set("application_name", "'a;b'")
        );
        // Session state the proxy does not replay.
        assert_eq!(session_command("SET ROLE bob"), None);
        assert_eq!(session_command("SET SESSION AUTHORIZATION bob"), None);
        assert_eq!(
            session_command("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            set("default_transaction_read_only", "on")
        );
    }

    #[test]
    fn flags_what_transaction_pooling_cannot_do() {
        assert!(transaction_mode_unsupported("LISTEN chan").is_some());
        assert!(transaction_mode_unsupported("select PG_ADVISORY_LOCK(1)").is_some());
        assert!(transaction_mode_unsupported("select pg_advisory_xact_lock(1)").is_none());
        assert!(transaction_mode_unsupported("select pg_try_advisory_lock_shared(1)").is_some());
        assert!(transaction_mode_unsupported("select my_advisory_lock from t").is_none());
        assert!(transaction_mode_unsupported("select advisory_lock(1)").is_none());
        assert!(transaction_mode_unsupported("select y, pg_advisory_lock(2)").is_some());
        assert!(transaction_mode_unsupported("DECLARE c CURSOR WITH HOLD FOR select 1").is_some());
        assert!(transaction_mode_unsupported("select 'with hold'").is_none());
        assert!(transaction_mode_unsupported("select 'pg_advisory_lock(1)'").is_none());
        assert!(transaction_mode_unsupported("select 1; listen chan").is_some());
        assert!(transaction_mode_unsupported("select 1; unlisten chan").is_none());
        assert!(transaction_mode_unsupported("SET a = 1; SELECT pg_advisory_lock(1)").is_some());
    }

    #[test]
    fn raise_statement_quotes() {
        let s = raise_statement("0A000", "it's $helios$ bad");
        assert!(s.contains("'it''s $helios$ bad'"));
        assert!(s.starts_with("DO $heliosx$"));
    }
}
