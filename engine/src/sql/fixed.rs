//! Access contexts: does a statement try to change what its context fixes (the upstream role,
//! enforced session defaults)? One pass over each statement of a query, only for databases that
//! fix something (docs/contexts.md); nothing here runs otherwise.
//!
//! What counts as a change of a fixed setting `x`:
//! - `SET [SESSION | LOCAL] x …`, `RESET x`, `set_config('x', …)` (session or local), and the
//!   special forms of the same parameters (`SET ROLE`, `RESET ROLE`, `SET SESSION
//!   AUTHORIZATION`, `SET TIME ZONE` = `timezone`, `SET SCHEMA` = `search_path`, `SET NAMES` =
//!   `client_encoding`, `SET XML OPTION` = `xmloption`);
//! - a `default_transaction_*` default is also changed by `SET SESSION CHARACTERISTICS AS
//!   TRANSACTION …` naming its mode, and overridden for one transaction by `BEGIN`/`START
//!   TRANSACTION`/`SET TRANSACTION` naming it (a fixed `default_transaction_read_only` refuses
//!   `READ WRITE` only: `READ ONLY` asks for what is already fixed);
//! - `set_config` whose setting name is not a string literal, and `DO` blocks (they can run any
//!   of the above through `EXECUTE`): refused whole.
//!
//! `RESET ALL` and `DISCARD ALL` pass: the context's role and defaults are startup parameters of
//! the server session, which both return to.

use super::classify::{self, set_config_names, Effect, Unsafe};
use super::{contains_ci, unquote_ident, Words};

/// What a context fixes: lowercase setting names, `role` and `session_authorization` among them
/// when it sets a role (`DatabaseConfig::fixed_settings`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fixed {
    names: Vec<String>,
}

/// Why a statement is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Breach {
    /// It changes this fixed setting: 42501.
    Setting(String),
    /// A read-write transaction where `default_transaction_read_only` is fixed: 25006.
    ReadWrite,
    /// A statement that could change anything (`DO`, `set_config` of an unreadable name): 42501.
    Statement(&'static str),
}

fn is(w: Option<&str>, k: &str) -> bool {
    w.is_some_and(|w| w.eq_ignore_ascii_case(k))
}

impl Fixed {
    /// `None` when nothing is fixed (the check then never runs).
    pub fn new(names: Vec<String>) -> Option<Fixed> {
        (!names.is_empty()).then_some(Fixed { names })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    fn name(&self, name: &str) -> Result<(), Breach> {
        if self.contains(name) {
            Err(Breach::Setting(name.to_string()))
        } else {
            Ok(())
        }
    }

    /// Every statement of `sql` (a simple query's several, or one extended statement).
    pub fn check(&self, sql: &str) -> Result<(), Breach> {
        for (stmt, effect) in classify::statements(sql) {
            if effect == Effect::Unsafe(Unsafe::DoBlock) {
                return Err(Breach::Statement("DO block"));
            }
            self.statement(stmt)?;
            if contains_ci(stmt.as_bytes(), b"set_config") {
                match set_config_names(stmt) {
                    Some(names) => names.iter().try_for_each(|n| self.name(n))?,
                    None => {
                        return Err(Breach::Statement(
                            "set_config with a setting name that is not a string literal",
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn statement(&self, stmt: &str) -> Result<(), Breach> {
        let mut w = Words { s: stmt };
        let first = w.word();
        if is(first, "set") {
            let mut n = w.word();
            if is(n, "local") || is(n, "session") {
                let scope = n;
                n = w.word();
                if is(scope, "session") && is(n, "authorization") {
                    return self.name("session_authorization");
                }
                if is(scope, "session") && is(n, "characteristics") {
                    return self.modes(w.rest(), true);
                }
            }
            return match n {
                Some(n) if n.eq_ignore_ascii_case("transaction") => self.modes(w.rest(), false),
                Some(n) => self.name(&special(n).unwrap_or_else(|| n.to_ascii_lowercase())),
                None => self.quoted(w.rest()),
            };
        }
        if is(first, "reset") {
            return match w.word() {
                Some(n) if n.eq_ignore_ascii_case("all") => Ok(()),
                Some(n) if n.eq_ignore_ascii_case("session") => self.name("session_authorization"),
                Some(n) => self.name(&special(n).unwrap_or_else(|| n.to_ascii_lowercase())),
                None => self.quoted(w.rest()),
            };
        }
        if is(first, "begin") || is(first, "start") {
            return self.modes(w.rest(), false);
        }
        Ok(())
    }

    /// `SET "Name" …`: the quoted identifier as written.
    fn quoted(&self, rest: &str) -> Result<(), Breach> {
        let end = rest
            .get(1..)
            .and_then(|r| r.find('"'))
            .map_or(rest.len(), |i| i + 2);
        match unquote_ident(&rest[..end]) {
            Some(n) => self.name(&n.to_ascii_lowercase()),
            None => Err(Breach::Statement(
                "SET of a setting name heliosproxy cannot read",
            )),
        }
    }

    /// Transaction modes: for one transaction (`session = false`: BEGIN, START TRANSACTION,
    /// SET TRANSACTION) or as the session's defaults (SET SESSION CHARACTERISTICS).
    fn modes(&self, rest: &str, session: bool) -> Result<(), Breach> {
        let words: Vec<&str> = rest
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        let has = |a: &str, b: Option<&str>| {
            words.windows(if b.is_some() { 2 } else { 1 }).any(|p| {
                p[0].eq_ignore_ascii_case(a) && b.is_none_or(|b| p[1].eq_ignore_ascii_case(b))
            })
        };
        let (read_write, read_any) = (has("read", Some("write")), has("read", None));
        let isolation = has("isolation", None);
        let deferrable = has("deferrable", None);
        if session {
            for (named, setting) in [
                (read_any, "default_transaction_read_only"),
                (isolation, "default_transaction_isolation"),
                (deferrable, "default_transaction_deferrable"),
            ] {
                if named {
                    self.name(setting)?;
                }
            }
            return Ok(());
        }
        if read_write && self.contains("default_transaction_read_only") {
            return Err(Breach::ReadWrite);
        }
        if isolation && self.contains("default_transaction_isolation") {
            return Err(Breach::Setting("default_transaction_isolation".into()));
        }
        if deferrable && self.contains("default_transaction_deferrable") {
            return Err(Breach::Setting("default_transaction_deferrable".into()));
        }
        Ok(())
    }
}

/// `SET ROLE`, `SET TIME ZONE`, `SET SCHEMA`, `SET NAMES`, `SET XML OPTION`: their parameter.
fn special(word: &str) -> Option<String> {
    let w = word.to_ascii_lowercase();
    Some(
        match w.as_str() {
            "time" => "timezone",
            "schema" => "search_path",
            "names" => "client_encoding",
            "xml" => "xmloption",
            _ => return None,
        }
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ro() -> Fixed {
        Fixed::new(
            [
                "role",
                "session_authorization",
                "default_transaction_read_only",
                "transaction_read_only",
                "search_path",
                "timezone",
            ]
            .map(String::from)
            .to_vec(),
        )
        .unwrap()
    }

    fn setting(s: &str) -> Result<(), Breach> {
        Err(Breach::Setting(s.into()))
    }

    #[test]
    fn changes_of_fixed_settings_are_named() {
        let f = ro();
        for (sql, want) in [
            ("SET ROLE postgres", setting("role")),
            ("set role = 'postgres'", setting("role")),
            ("SET LOCAL ROLE postgres", setting("role")),
            ("RESET ROLE", setting("role")),
            (
                "SET SESSION AUTHORIZATION postgres",
                setting("session_authorization"),
            ),
            (
                "SET SESSION AUTHORIZATION DEFAULT",
                setting("session_authorization"),
            ),
            (
                "RESET SESSION AUTHORIZATION",
                setting("session_authorization"),
            ),
            (
                "SET default_transaction_read_only = off",
                setting("default_transaction_read_only"),
            ),
            (
                "set session default_transaction_read_only to off",
                setting("default_transaction_read_only"),
            ),
            (
                "SET \"default_transaction_read_only\" = off",
                setting("default_transaction_read_only"),
            ),
            (
                "RESET default_transaction_read_only",
                setting("default_transaction_read_only"),
            ),
            (
                "SET transaction_read_only = off",
                setting("transaction_read_only"),
            ),
            ("SET LOCAL search_path = public", setting("search_path")),
            ("SET SCHEMA 'public'", setting("search_path")),
            ("SET TIME ZONE 'UTC'", setting("timezone")),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                setting("default_transaction_read_only"),
            ),
            ("BEGIN READ WRITE", Err(Breach::ReadWrite)),
            (
                "start transaction isolation level serializable, read write",
                Err(Breach::ReadWrite),
            ),
            ("SET TRANSACTION READ WRITE", Err(Breach::ReadWrite)),
            (
                "SELECT set_config('default_transaction_read_only', 'off', false)",
                setting("default_transaction_read_only"),
            ),
            (
                "select set_config('role', 'postgres', true)",
                setting("role"),
            ),
            (
                "SELECT 1; SET default_transaction_read_only = off; SELECT 2",
                setting("default_transaction_read_only"),
            ),
            (
                "select set_config(current_setting('x'), 'y', false)",
                Err(Breach::Statement(
                    "set_config with a setting name that is not a string literal",
                )),
            ),
            (
                "DO $$ BEGIN EXECUTE 'RESET ROLE'; END $$",
                Err(Breach::Statement("DO block")),
            ),
        ] {
            assert_eq!(f.check(sql), want, "{sql}");
        }
    }

    #[test]
    fn everything_else_passes() {
        let f = ro();
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "BEGIN",
            "BEGIN READ ONLY",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET statement_timeout = 1000",
            "SET LOCAL lock_timeout = '1s'",
            "RESET statement_timeout",
            "RESET ALL",
            "DISCARD ALL",
            "SELECT set_config('application_name', 'x', false)",
            "SELECT 'SET ROLE postgres'",
            "-- SET ROLE postgres\nSELECT 1",
            "COMMIT; ROLLBACK",
        ] {
            assert_eq!(f.check(sql), Ok(()), "{sql}");
        }
        assert!(Fixed::new(Vec::new()).is_none());
        // A context that fixes no defaults leaves them to the client.
        let role_only = Fixed::new(vec!["role".into(), "session_authorization".into()]).unwrap();
        assert_eq!(role_only.check("BEGIN READ WRITE"), Ok(()));
        assert_eq!(
            role_only.check("SET default_transaction_read_only = off"),
            Ok(())
        );
        assert_eq!(role_only.check("SET ROLE x"), setting("role"));
    }
}
