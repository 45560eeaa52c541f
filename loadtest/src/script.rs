//! Transaction scripts: pgbench's built-ins and custom files in a pgbench-compatible subset.
//!
//! Syntax (a subset of pgbench's, so the same file runs under both tools):
//!
//! ```text
//! -- comment
//! \set aid random(1, 100000 * :scale)
//! \set delta random(-5000, 5000)
//! UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
//! ```
//!
//! * `\set NAME EXPR` — EXPR is integers, `:var`, `+ - * / %`, parentheses and
//!   `random(lo, hi)` (uniform over `lo..=hi`, inclusive, as pgbench's `random`).
//! * Every other non-blank line is SQL; a statement ends at a line ending with `;` (or at the
//!   end of the file). Each statement is sent on its own, as pgbench does.
//! * `:name` in SQL is replaced by the variable's value: spliced in as text in simple mode, sent
//!   as a `$n` text parameter in extended and prepared modes. `::type` casts and text inside
//!   single quotes are left alone.
//! * Predefined: `:scale` (from `--scale`, else `count(*)` of `pgbench_branches`, else 1),
//!   `:client_id`, and any `--define NAME=VALUE`.
//!
//! Parsing is separated from execution and has no I/O, so it is unit-tested here.

use std::fmt::Write as _;

use rand::Rng;

use crate::Error;

/// pgbench's built-in "TPC-B (sort of)" script, verbatim (PostgreSQL 16 `pgbench.c`).
pub const TPCB_LIKE: &str = r"\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// pgbench's built-in "select only" script, verbatim.
pub const SELECT_ONLY: &str = r"\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
";

/// Names of the variables every script can use before any `\set`.
pub const PREDEFINED: [&str; 2] = ["scale", "client_id"];

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Int(i64),
    Var(usize),
    Neg(Box<Expr>),
    Bin(u8, Box<Expr>, Box<Expr>),
    Random(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(usize),
}

/// One SQL statement, pre-rendered for each protocol.
#[derive(Debug, Clone)]
pub struct Statement {
    /// For simple mode: text with variable slots.
    pieces: Vec<Piece>,
    /// For extended/prepared modes: the text with `$1..$n`, and which variable each `$i` is.
    pub param_sql: String,
    params: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Command {
    Set(usize, Expr),
    Sql(Statement),
}

/// A parsed script. Variables are numbered; [`Script::new_vars`] makes a per-client value array.
#[derive(Debug, Clone)]
pub struct Script {
    commands: Vec<Command>,
    var_names: Vec<String>,
    defines: Vec<(usize, i64)>,
}

/// Per-client evaluation state; reusing it keeps the per-transaction path allocation-light.
pub struct Vars {
    values: Vec<i64>,
    text: Vec<String>,
}

impl Script {
    /// Parses `src`. `defines` are extra predefined variables (`--define`).
    pub fn parse(src: &str, defines: &[(String, i64)]) -> Result<Script, Error> {
        let mut s = Script {
            commands: Vec::new(),
            var_names: PREDEFINED.iter().map(|v| v.to_string()).collect(),
            defines: Vec::new(),
        };
        for (name, v) in defines {
            let i = s.var_index_or_add(name);
            s.defines.push((i, *v));
        }
        let mut pending = String::new();
        let mut pending_line = 0;
        for (lineno, line) in src.lines().enumerate() {
            let lineno = lineno + 1;
            let t = line.trim();
            if pending.is_empty() && (t.is_empty() || t.starts_with("--")) {
                continue;
            }
            if pending.is_empty() && t.starts_with('\\') {
                s.parse_meta(t, lineno)?;
                continue;
            }
            if pending.is_empty() {
                pending_line = lineno;
            } else {
                pending.push('\n');
            }
            pending.push_str(line);
            if t.ends_with(';') {
                s.push_sql(&pending, pending_line)?;
                pending.clear();
            }
        }
        if !pending.trim().is_empty() {
            s.push_sql(&pending, pending_line)?;
        }
        if !s.commands.iter().any(|c| matches!(c, Command::Sql(_))) {
            return Err(Error::Script("the script has no SQL statement".into()));
        }
        Ok(s)
    }

    fn var_index(&self, name: &str) -> Option<usize> {
        self.var_names.iter().position(|n| n == name)
    }

    fn var_index_or_add(&mut self, name: &str) -> usize {
        self.var_index(name).unwrap_or_else(|| {
            self.var_names.push(name.to_string());
            self.var_names.len() - 1
        })
    }

    fn parse_meta(&mut self, line: &str, lineno: usize) -> Result<(), Error> {
        let err = |m: String| Error::Script(format!("line {lineno}: {m}"));
        let rest = line
            .strip_prefix("\\set")
            .filter(|r| r.starts_with(char::is_whitespace))
            .ok_or_else(|| err(format!("unsupported meta-command {line:?} (only \\set)")))?
            .trim();
        let (name, expr) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| err("\\set needs a name and an expression".into()))?;
        if !is_ident(name) {
            return Err(err(format!("bad variable name {name:?}")));
        }
        let mut p = ExprParser {
            s: expr.trim().as_bytes(),
            i: 0,
            script: self,
        };
        let e = p.expr().map_err(&err)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(err(format!("unexpected text at {:?}", &expr.trim()[p.i..])));
        }
        let idx = self.var_index_or_add(name);
        self.commands.push(Command::Set(idx, e));
        Ok(())
    }

    fn push_sql(&mut self, text: &str, lineno: usize) -> Result<(), Error> {
        let text = text.trim().trim_end_matches(';').trim_end();
        let b = text.as_bytes();
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        let mut in_quote = false;
        while i < b.len() {
            let c = b[i];
            if c == b'\'' {
                in_quote = !in_quote;
            } else if !in_quote
                && c == b':'
                && (i == 0 || b[i - 1] != b':')
                && b.get(i + 1)
                    .is_some_and(|&n| n.is_ascii_alphabetic() || n == b'_')
            {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                    end += 1;
                }
                let name = &text[start..end];
                let idx = self.var_index(name).ok_or_else(|| {
                    Error::Script(format!("line {lineno}: variable :{name} is never set"))
                })?;
                if !lit.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Var(idx));
                i = end;
                continue;
            }
            // Copy the whole UTF-8 character.
            let len = utf8_len(c);
            lit.push_str(&text[i..(i + len).min(b.len())]);
            i += len;
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        let mut params: Vec<usize> = Vec::new();
        let mut param_sql = String::new();
        for p in &pieces {
            match p {
                Piece::Text(t) => param_sql.push_str(t),
                Piece::Var(v) => {
                    let n = match params.iter().position(|x| x == v) {
                        Some(n) => n,
                        None => {
                            params.push(*v);
                            params.len() - 1
                        }
                    };
                    let _ = write!(param_sql, "${}", n + 1);
                }
            }
        }
        self.commands.push(Command::Sql(Statement {
            pieces,
            param_sql,
            params,
        }));
        Ok(())
    }

    /// Whether the script uses `:scale` (so the runner knows to look up pgbench's scale).
    pub fn uses_scale(&self) -> bool {
        self.commands.iter().any(|c| match c {
            Command::Set(_, e) => expr_uses(e, 0),
            Command::Sql(s) => s.pieces.contains(&Piece::Var(0)),
        })
    }

    /// Number of SQL statements (used to index prepared statements).
    pub fn statements(&self) -> impl Iterator<Item = &Statement> {
        self.commands.iter().filter_map(|c| match c {
            Command::Sql(s) => Some(s),
            Command::Set(..) => None,
        })
    }

    pub fn new_vars(&self, scale: i64, client_id: i64) -> Vars {
        let mut values = vec![0; self.var_names.len()];
        values[0] = scale;
        values[1] = client_id;
        for &(i, v) in &self.defines {
            values[i] = v;
        }
        Vars {
            values,
            text: Vec::new(),
        }
    }

    /// Runs one transaction: evaluates `\set`s and hands each statement to `exec` as
    /// `(statement index, simple-mode SQL, parameter values as text)`. Stops at the first
    /// `Err` from `exec`. `Err(ScriptError)` for an expression that cannot be evaluated.
    pub fn run<R: Rng, E>(
        &self,
        vars: &mut Vars,
        rng: &mut R,
        simple_sql: bool,
        mut exec: impl FnMut(usize, &Statement, &str, &[&str]) -> Result<(), E>,
        script_error: impl Fn(String) -> E,
    ) -> Result<(), E> {
        let mut stmt_index = 0;
        let mut sql = String::new();
        for cmd in &self.commands {
            match cmd {
                Command::Set(i, e) => {
                    vars.values[*i] = eval(e, &vars.values, rng).map_err(&script_error)?;
                }
                Command::Sql(st) => {
                    sql.clear();
                    vars.text.clear();
                    if simple_sql {
                        for p in &st.pieces {
                            match p {
                                Piece::Text(t) => sql.push_str(t),
                                Piece::Var(v) => {
                                    let _ = write!(sql, "{}", vars.values[*v]);
                                }
                            }
                        }
                    } else {
                        for &v in &st.params {
                            vars.text.push(vars.values[v].to_string());
                        }
                    }
                    let params: Vec<&str> = vars.text.iter().map(String::as_str).collect();
                    exec(stmt_index, st, &sql, &params)?;
                    stmt_index += 1;
                }
            }
        }
        Ok(())
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn expr_uses(e: &Expr, var: usize) -> bool {
    match e {
        Expr::Int(_) => false,
        Expr::Var(v) => *v == var,
        Expr::Neg(a) => expr_uses(a, var),
        Expr::Bin(_, a, b) | Expr::Random(a, b) => expr_uses(a, var) || expr_uses(b, var),
    }
}

fn eval<R: Rng>(e: &Expr, vars: &[i64], rng: &mut R) -> Result<i64, String> {
    Ok(match e {
        Expr::Int(v) => *v,
        Expr::Var(i) => vars[*i],
        Expr::Neg(a) => eval(a, vars, rng)?.wrapping_neg(),
        Expr::Bin(op, a, b) => {
            let (a, b) = (eval(a, vars, rng)?, eval(b, vars, rng)?);
            match op {
                b'+' => a.wrapping_add(b),
                b'-' => a.wrapping_sub(b),
                b'*' => a.wrapping_mul(b),
                b'/' => a.checked_div(b).ok_or("division by zero in \\set")?,
                _ => a.checked_rem(b).ok_or("division by zero in \\set")?,
            }
        }
        Expr::Random(lo, hi) => {
            let (lo, hi) = (eval(lo, vars, rng)?, eval(hi, vars, rng)?);
            if lo > hi {
                return Err(format!("random({lo}, {hi}): empty range"));
            }
            rng.gen_range(lo..=hi)
        }
    })
}

struct ExprParser<'a> {
    s: &'a [u8],
    i: usize,
    script: &'a Script,
}

impl ExprParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut a = self.term()?;
        loop {
            self.ws();
            match self.s.get(self.i) {
                Some(&op @ (b'+' | b'-')) => {
                    self.i += 1;
                    a = Expr::Bin(op, Box::new(a), Box::new(self.term()?));
                }
                _ => return Ok(a),
            }
        }
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut a = self.factor()?;
        loop {
            self.ws();
            match self.s.get(self.i) {
                Some(&op @ (b'*' | b'/' | b'%')) => {
                    self.i += 1;
                    a = Expr::Bin(op, Box::new(a), Box::new(self.factor()?));
                }
                _ => return Ok(a),
            }
        }
    }

    fn factor(&mut self) -> Result<Expr, String> {
        self.ws();
        let start = self.i;
        match self.s.get(self.i) {
            None => Err("expression ends early".into()),
            Some(b'-') => {
                self.i += 1;
                Ok(Expr::Neg(Box::new(self.factor()?)))
            }
            Some(b'(') => {
                self.i += 1;
                let e = self.expr()?;
                if !self.eat(b')') {
                    return Err("missing )".into());
                }
                Ok(e)
            }
            Some(c) if c.is_ascii_digit() => {
                while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                t.parse()
                    .map(Expr::Int)
                    .map_err(|_| format!("integer {t} out of range"))
            }
            Some(b':') => {
                self.i += 1;
                let name = self.ident();
                self.script
                    .var_index(&name)
                    .map(Expr::Var)
                    .ok_or_else(|| format!("variable :{name} is never set"))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let f = self.ident();
                if f != "random" {
                    return Err(format!("unsupported function {f} (only random)"));
                }
                if !self.eat(b'(') {
                    return Err("random needs (lo, hi)".into());
                }
                let lo = self.expr()?;
                if !self.eat(b',') {
                    return Err("random needs two arguments".into());
                }
                let hi = self.expr()?;
                if !self.eat(b')') {
                    return Err("missing ) after random(lo, hi".into());
                }
                Ok(Expr::Random(Box::new(lo), Box::new(hi)))
            }
            Some(&c) => Err(format!("unexpected {:?}", c as char)),
        }
    }

    fn ident(&mut self) -> String {
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn collect(script: &Script, simple: bool, scale: i64) -> Vec<(String, Vec<String>)> {
        let mut vars = script.new_vars(scale, 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut out = Vec::new();
        script
            .run(
                &mut vars,
                &mut rng,
                simple,
                |_, st, sql, params| {
                    let text = if simple { sql } else { &st.param_sql };
                    out.push((
                        text.to_string(),
                        params.iter().map(|s| s.to_string()).collect(),
                    ));
                    Ok::<(), String>(())
                },
                |e| e,
            )
            .unwrap();
        out
    }

    #[test]
    fn tpcb_renders_like_pgbench() {
        let s = Script::parse(TPCB_LIKE, &[]).unwrap();
        assert!(s.uses_scale());
        assert_eq!(s.statements().count(), 7);
        let ext = collect(&s, false, 3);
        assert_eq!(ext[0].0, "BEGIN");
        assert_eq!(
            ext[1].0,
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
        );
        assert_eq!(
            ext[5].0,
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
        );
        let aid: i64 = ext[1].1[1].parse().unwrap();
        assert!((1..=300_000).contains(&aid));
        let simple = collect(&s, true, 3);
        assert!(simple[1]
            .0
            .starts_with("UPDATE pgbench_accounts SET abalance = abalance + "));
        assert!(!simple[1].0.contains(':'));
    }

    #[test]
    fn random_is_inclusive_and_uniformish() {
        let s = Script::parse("\\set x random(1, 3)\nselect :x", &[]).unwrap();
        let mut vars = s.new_vars(1, 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = [0u32; 4];
        for _ in 0..3000 {
            s.run(
                &mut vars,
                &mut rng,
                true,
                |_, _, sql, _| {
                    let v: usize = sql.trim_start_matches("select ").parse().unwrap();
                    seen[v] += 1;
                    Ok::<(), String>(())
                },
                |e| e,
            )
            .unwrap();
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1..].iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn casts_quotes_multiline_and_defines() {
        let src =
            "-- c\n\\set a 2 * (3 + :k) % 7\nselect :a::int, ':a', 'x''y:a'\n  , :a;\nselect 1";
        let s = Script::parse(src, &[("k".into(), 4)]).unwrap();
        let out = collect(&s, false, 1);
        assert_eq!(out[0].0, "select $1::int, ':a', 'x''y:a'\n  , $1");
        assert_eq!(out[0].1, vec!["0".to_string()]); // 2*7 % 7
        assert_eq!(out[1].0, "select 1");
    }

    #[test]
    fn errors_name_the_line() {
        for (src, want) in [
            ("select :nope;", "line 1: variable :nope is never set"),
            ("\\set x random(1)\nselect 1;", "line 1"),
            ("\\sleep 1\nselect 1;", "unsupported meta-command"),
            ("\\set x 1\n", "no SQL statement"),
            (
                "\n\\set x foo(1)\nselect 1;",
                "line 2: unsupported function foo",
            ),
        ] {
            let e = Script::parse(src, &[]).unwrap_err().to_string();
            assert!(e.contains(want), "{src:?}: {e}");
        }
    }

    #[test]
    fn eval_errors_are_reported_not_panics() {
        let s = Script::parse("\\set z 1 / 0\nselect 1;", &[]).unwrap();
        let mut vars = s.new_vars(1, 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let r = s.run(&mut vars, &mut rng, true, |_, _, _, _| Ok(()), |e| e);
        assert!(r.unwrap_err().contains("division by zero"));
    }
}
