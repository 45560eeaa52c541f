//! The little SQL the proxy must understand without a parser: session `SET`/`RESET`,
//! `DEALLOCATE`/`DISCARD`, and the statements transaction pooling cannot honour. One pass over the
//! leading bytes; nothing here allocates unless it found something to track.

pub mod analyze;

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
    fn skip_space(&mut self) {
        loop {
            let t = self.s.trim_start();
            if let Some(rest) = t.strip_prefix("--") {
                self.s = rest.find('\n').map(|i| &rest[i + 1..]).unwrap_or("");
            } else if let Some(rest) = t.strip_prefix("/*") {
                self.s = rest.find("*/").map(|i| &rest[i + 2..]).unwrap_or("");
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

/// Strips one trailing `;` and whitespace; `None` if another `;` remains (several statements,
/// which the proxy does not track).
fn single_statement(sql: &str) -> Option<&str> {
    let t = sql.trim_end();
    let t = t.strip_suffix(';').unwrap_or(t).trim_end();
    (!t.contains(';')).then_some(t)
}

/// Recognises the session commands the proxy tracks; `None` for everything else.
///
/// Measured: 27 ns on a pgbench SELECT or INSERT, 149 ns on a SET it tracks (benches/benches/sql.rs).
pub fn session_command(sql: &str) -> Option<SessionCommand> {
    let mut w = Words { s: sql };
    let first = w.word()?;
    if first.eq_ignore_ascii_case("set") {
        let stmt = single_statement(sql)?;
        let mut w = Words { s: stmt };
        w.word();
        let mut name = w.word()?;
        if name.eq_ignore_ascii_case("local") {
            return None; // lasts only until the end of the transaction
        }
        if name.eq_ignore_ascii_case("session") {
            name = w.word()?;
            if name.eq_ignore_ascii_case("authorization")
                || name.eq_ignore_ascii_case("characteristics")
            {
                return None;
            }
        }
        if name.eq_ignore_ascii_case("transaction") || name.eq_ignore_ascii_case("constraints") {
            return None;
        }
        if name.eq_ignore_ascii_case("time") {
            let zone = w.word()?;
            if !zone.eq_ignore_ascii_case("zone") {
                return None;
            }
            return Some(SessionCommand::Set {
                name: "timezone".into(),
                value: w.rest().to_string(),
            });
        }
        if name.eq_ignore_ascii_case("names") {
            return Some(SessionCommand::Set {
                name: "client_encoding".into(),
                value: w.rest().to_string(),
            });
        }
        let rest = w.rest();
        let value = if let Some(v) = rest.strip_prefix('=') {
            v
        } else {
            let mut w2 = Words { s: rest };
            let to = w2.word()?;
            if !to.eq_ignore_ascii_case("to") {
                return None;
            }
            w2.rest()
        };
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        return Some(SessionCommand::Set {
            name: name.to_ascii_lowercase(),
            value: value.to_string(),
        });
    }
    if first.eq_ignore_ascii_case("reset") {
        let stmt = single_statement(sql)?;
        let mut w = Words { s: stmt };
        w.word();
        let name = w.word()?;
        if !w.rest().is_empty() {
            return None;
        }
        return Some(if name.eq_ignore_ascii_case("all") {
            SessionCommand::ResetAll
        } else {
            SessionCommand::Reset {
                name: name.to_ascii_lowercase(),
            }
        });
    }
    if first.eq_ignore_ascii_case("deallocate") {
        let stmt = single_statement(sql)?;
        let mut w = Words { s: stmt };
        w.word();
        let mut name = w.rest();
        if let Some(n) = strip_word(name, "prepare") {
            name = n;
        }
        let name = unquote_ident(name.trim())?;
        return Some(if name.eq_ignore_ascii_case("all") {
            SessionCommand::DeallocateAll
        } else {
            SessionCommand::Deallocate { name }
        });
    }
    if first.eq_ignore_ascii_case("discard") {
        let stmt = single_statement(sql)?;
        let mut w = Words { s: stmt };
        w.word();
        if w.word().is_some_and(|x| x.eq_ignore_ascii_case("all")) && w.rest().is_empty() {
            return Some(SessionCommand::DiscardAll);
        }
    }
    None
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

/// `name` → lowercased, `"Name"` → as written.
fn unquote_ident(s: &str) -> Option<String> {
    if let Some(inner) = s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        return Some(inner.replace("\"\"", "\""));
    }
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
    {
        return None;
    }
    Some(s.to_lowercase())
}

/// Under transaction pooling these would silently break (the next transaction may run on
/// another server connection); the proxy refuses them with 0A000 instead.
///
/// Measured: 63 ns on the pgbench SELECT, 83 ns on its INSERT (benches/benches/sql.rs).
pub fn transaction_mode_unsupported(sql: &str) -> Option<&'static str> {
    let mut w = Words { s: sql };
    let first = w.word().unwrap_or("");
    if first.eq_ignore_ascii_case("listen") {
        return Some(
            "LISTEN is not supported in transaction pooling mode (use a session-mode database)",
        );
    }
    let b = sql.as_bytes();
    // pg_advisory_lock[_shared], pg_try_advisory_lock[_shared] (not the _xact_ ones): found by
    // their rare `y` first, which ordinary queries seldom contain.
    if find_ci_anchored(b, b"advisory_lock", 7).any(|at| {
        let before = &b[..at];
        ends_with_ci(before, b"pg_") || ends_with_ci(before, b"pg_try_")
    }) {
        return Some("session-level advisory locks are not supported in transaction pooling mode (use pg_advisory_xact_lock)");
    }
    if first.eq_ignore_ascii_case("declare") && contains_ci(b, b"with hold") {
        return Some("WITH HOLD cursors are not supported in transaction pooling mode");
    }
    None
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

fn ends_with_ci(hay: &[u8], suffix: &[u8]) -> bool {
    hay.len() >= suffix.len() && hay[hay.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
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
    }

    #[test]
    fn raise_statement_quotes() {
        let s = raise_statement("0A000", "it's $helios$ bad");
        assert!(s.contains("'it''s $helios$ bad'"));
        assert!(s.starts_with("DO $heliosx$"));
    }
}
