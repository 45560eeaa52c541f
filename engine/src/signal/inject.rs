//! SQL injection signals on a statement's text, from one pass of a small tokenizer (string
//! literals with their escapes, dollar quotes, quoted identifiers, numbers, `$n` parameters,
//! line and block comments, operators), never from regexes over the raw text: a keyword inside
//! a literal or a comment is not a keyword, and a literal that contains `--` is not a comment.
//!
//! Six classes, each a shape that concatenated input produces and that applications rarely
//! write themselves (docs/signal.md lists the rules and the measured false-positive rate):
//!
//! | class | fires on |
//! |---|---|
//! | tautology | `OR` then a comparison of two literals: `OR 1=1`, `OR 'a'='a'` |
//! | union_probe | `UNION [ALL] SELECT` of only NULLs and numbers, or of `version()`/`current_user` |
//! | comment_truncation | a `--` comment running to the end right after a literal, a number or `)`, or with a quote in it after a `WHERE`; an unterminated `/*` |
//! | stacked_query | another statement after `= 'literal';` in a `WHERE` |
//! | time_based | `pg_sleep*` anywhere but as `SELECT pg_sleep(…)` alone; `generate_series` to ≥ 10⁶ after a `WHERE` or `UNION` |
//! | catalog_probe | `information_schema`, `pg_catalog`, `pg_shadow`, `pg_authid`, `pg_user`, `version()` (the session decides whether that is unusual) |
//!
//! The same pass computes the statement's fingerprint (literals and parameters as `?`, keywords
//! lower-cased, comments and spacing dropped). Nothing is allocated.

/// The six injection classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Tautology,
    UnionProbe,
    CommentTruncation,
    StackedQuery,
    TimeBased,
    CatalogProbe,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Tautology,
        Class::UnionProbe,
        Class::CommentTruncation,
        Class::StackedQuery,
        Class::TimeBased,
        Class::CatalogProbe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Tautology => "tautology",
            Class::UnionProbe => "union_probe",
            Class::CommentTruncation => "comment_truncation",
            Class::StackedQuery => "stacked_query",
            Class::TimeBased => "time_based",
            Class::CatalogProbe => "catalog_probe",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// What one scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// One bit per [`Class`] that fired.
    pub classes: u8,
    /// The statement touches the catalog (for the session's catalog_probe decision).
    pub catalog: bool,
    /// The catalog reference is in an injection context (a UNION list, after `';`): a probe
    /// whatever the session did before.
    pub catalog_injected: bool,
    /// The statement has `$n` parameters (a driver's own statement).
    pub params: bool,
    /// FNV-1a of the normalized token stream.
    pub fingerprint: u64,
}

impl Scan {
    pub fn has(&self, c: Class) -> bool {
        self.classes & c.bit() != 0
    }

    pub fn classes(&self) -> impl Iterator<Item = Class> + '_ {
        Class::ALL.into_iter().filter(|c| self.has(*c))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Word,
    QIdent,
    Str,
    Num,
    Param,
    /// An operator character run (`=`, `<>`, `::`, `||`, …).
    Op,
    LineComment,
    BlockComment,
    Semi,
    LParen,
    RParen,
    Comma,
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Tok,
    start: usize,
    end: usize,
    /// A `/*` without its `*/`, or a literal without its closing quote.
    open: bool,
}

struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl<'a> Lexer<'a> {
    /// The next token, or `None` at the end; whitespace is skipped.
    fn next(&mut self) -> Option<Token> {
        let b = self.b;
        while self.i < b.len() && is_space(b[self.i]) {
            self.i += 1;
        }
        if self.i >= b.len() {
            return None;
        }
        let start = self.i;
        let c = b[start];
        let mut open = false;
        let kind = match c {
            b'-' if b.get(start + 1) == Some(&b'-') => {
                let rest = &b[start..];
                self.i = start + memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
                Tok::LineComment
            }
            b'/' if b.get(start + 1) == Some(&b'*') => {
                // Nested, as PostgreSQL's are.
                let mut depth = 1;
                let mut j = start + 2;
                while j < b.len() && depth > 0 {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                open = depth > 0;
                self.i = j.min(b.len());
                Tok::BlockComment
            }
            b'\'' => {
                // E'…' strings take backslash escapes; `''` is a quote in any literal.
                let escapes = start > 0 && matches!(b[start - 1], b'e' | b'E');
                open = !self.quoted(b'\'', escapes);
                Tok::Str
            }
            b'"' => {
                open = !self.quoted(b'"', false);
                Tok::QIdent
            }
            b'$' if b.get(start + 1).is_some_and(|d| d.is_ascii_digit()) => {
                self.i = start + 1;
                while self.i < b.len() && b[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                Tok::Param
            }
            b'$' => {
                // $tag$ … $tag$
                let mut j = start + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j < b.len() && b[j] == b'$' {
                    let tag = &b[start..=j];
                    match memchr::memmem::find(&b[j + 1..], tag) {
                        Some(k) => self.i = j + 1 + k + tag.len(),
                        None => {
                            open = true;
                            self.i = b.len();
                        }
                    }
                    Tok::Str
                } else {
                    self.i = start + 1;
                    Tok::Other
                }
            }
            b'0'..=b'9' => {
                self.i = start;
                while self.i < b.len()
                    && (b[self.i].is_ascii_alphanumeric() || b[self.i] == b'.' || b[self.i] == b'_')
                {
                    self.i += 1;
                }
                Tok::Num
            }
            b'.' if b.get(start + 1).is_some_and(|d| d.is_ascii_digit()) => {
                self.i = start + 1;
                while self.i < b.len() && b[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                Tok::Num
            }
            b';' => {
                self.i = start + 1;
                Tok::Semi
            }
            b'(' => {
                self.i = start + 1;
                Tok::LParen
            }
            b')' => {
                self.i = start + 1;
                Tok::RParen
            }
            b',' => {
                self.i = start + 1;
                Tok::Comma
            }
            b'+' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%' | b'^'
            | b'&' | b'|' | b'`' | b'?' | b':' | b'-' => {
                let mut j = start + 1;
                while j < b.len()
                    && matches!(
                        b[j],
                        b'+' | b'*'
                            | b'<'
                            | b'>'
                            | b'='
                            | b'~'
                            | b'!'
                            | b'@'
                            | b'#'
                            | b'%'
                            | b'^'
                            | b'&'
                            | b'|'
                            | b'`'
                            | b'?'
                            | b':'
                    )
                {
                    j += 1;
                }
                self.i = j;
                Tok::Op
            }
            c if is_ident_start(c) => {
                let mut j = start + 1;
                while j < b.len() && is_ident(b[j]) {
                    j += 1;
                }
                self.i = j;
                // E'…', B'…', X'…', U&'…' prefixes stay words; the literal follows.
                Tok::Word
            }
            _ => {
                self.i = start + 1;
                Tok::Other
            }
        };
        Some(Token {
            kind,
            start,
            end: self.i,
            open,
        })
    }

    /// Past a quoted run starting at `self.i`; false if it never closes.
    fn quoted(&mut self, q: u8, escapes: bool) -> bool {
        let b = self.b;
        let mut j = self.i + 1;
        while j < b.len() {
            let c = b[j];
            if escapes && c == b'\\' {
                j += 2;
                continue;
            }
            if c == q {
                if b.get(j + 1) == Some(&q) {
                    j += 2;
                    continue;
                }
                self.i = j + 1;
                return true;
            }
            j += 1;
        }
        self.i = b.len();
        false
    }
}

fn word_is(b: &[u8], t: &Token, w: &[u8]) -> bool {
    t.kind == Tok::Word && b[t.start..t.end].eq_ignore_ascii_case(w)
}

fn is_literal(t: &Token) -> bool {
    matches!(t.kind, Tok::Str | Tok::Num)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &c in bytes {
        *h ^= c.to_ascii_lowercase() as u64;
        *h = h.wrapping_mul(FNV_PRIME);
    }
}

const CATALOG_WORDS: &[&[u8]] = &[
    b"information_schema",
    b"pg_catalog",
    b"pg_shadow",
    b"pg_authid",
    b"pg_user",
];

/// Where the fingerprint is in a list of literals.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FpList {
    None,
    /// Just hashed (or folded) a literal.
    Literal,
    /// A comma after a literal, not hashed yet.
    Comma,
}

/// What a UNION's select list holds so far.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Union {
    Off,
    /// `UNION` seen: `ALL`/`DISTINCT`, then `SELECT`.
    After,
    /// In the list: items so far, all literals, a catalog function among them.
    List {
        items: u32,
        literal: bool,
        catalog: bool,
    },
}

/// Scans one statement text (a simple query may hold several statements).
pub fn scan(sql: &str) -> Scan {
    let b = sql.as_bytes();
    let mut lx = Lexer { b, i: 0 };
    let mut out = Scan {
        fingerprint: FNV_OFFSET,
        ..Scan::default()
    };
    // The last three significant tokens (comments excluded), newest last.
    let mut prev: [Option<Token>; 3] = [None; 3];
    // Per statement (reset at `;`).
    let mut in_where = false;
    let mut stmt_tokens = 0u32;
    let mut first_select = false;
    // The statement is SET / SHOW / RESET: a catalog name in it is a setting's value
    // (`SET search_path TO pg_catalog`), not a read of the catalog.
    let mut setting = false;
    let mut stacked_after_literal = false;
    // A `;` closed `WHERE … = 'literal'`: the next statement is stacked.
    let mut semi_after_literal = false;
    let mut union = Union::Off;
    let mut union_seen = false;
    // A UNION that follows a WHERE: what an appended `UNION SELECT …` looks like.
    let mut union_after_where = false;
    let mut fp_state = FpList::None;
    while let Some(t) = lx.next() {
        match t.kind {
            Tok::LineComment => {
                if t.end == b.len() {
                    let body = &b[t.start + 2..t.end];
                    let last = prev[2];
                    let adjacent = last.is_some_and(|p| {
                        p.end == t.start
                            && matches!(p.kind, Tok::Str | Tok::Num | Tok::RParen | Tok::QIdent)
                    });
                    let quote = in_where && memchr::memchr2(b'\'', b'"', body).is_some();
                    if adjacent || quote {
                        out.classes |= Class::CommentTruncation.bit();
                    }
                }
                close_union(&mut union, &mut out);
                continue;
            }
            Tok::BlockComment => {
                if t.open {
                    out.classes |= Class::CommentTruncation.bit();
                }
                continue;
            }
            _ => {}
        }
        // Fingerprint: literals and parameters as `?`, and a list of them (`IN (1, 2, 3)`,
        // `VALUES (?, ?)`) as one, so the list's length does not make a new shape.
        let lit = matches!(t.kind, Tok::Str | Tok::Num | Tok::Param);
        match (t.kind, lit, fp_state) {
            (Tok::Comma, _, FpList::Literal) => fp_state = FpList::Comma,
            (_, true, FpList::Comma) => fp_state = FpList::Literal,
            (_, true, _) => {
                fnv(&mut out.fingerprint, b"? ");
                fp_state = FpList::Literal;
            }
            (_, false, st) => {
                if st == FpList::Comma {
                    fnv(&mut out.fingerprint, b", ");
                }
                fnv(&mut out.fingerprint, &b[t.start..t.end]);
                fnv(&mut out.fingerprint, b" ");
                fp_state = FpList::None;
            }
        }
        if t.kind == Tok::Param {
            out.params = true;
        }
        if semi_after_literal && t.kind != Tok::Semi {
            // Something follows `… = 'x';`: a stacked statement.
            out.classes |= Class::StackedQuery.bit();
            stacked_after_literal = true;
            semi_after_literal = false;
        }
        match t.kind {
            Tok::Semi => {
                close_union(&mut union, &mut out);
                let after_cmp_literal = prev[2].is_some_and(|p| p.kind == Tok::Str)
                    && prev[1].is_some_and(|p| {
                        (p.kind == Tok::Op && matches!(&b[p.start..p.end], b"=" | b"<>" | b"!="))
                            || word_is(b, &p, b"like")
                    });
                semi_after_literal = in_where && after_cmp_literal;
                in_where = false;
                stmt_tokens = 0;
                first_select = false;
                setting = false;
                stacked_after_literal = false;
                prev = [None; 3];
                continue;
            }
            Tok::Word => {
                let w = &b[t.start..t.end];
                if stmt_tokens == 0 && w.eq_ignore_ascii_case(b"select") {
                    first_select = true;
                }
                if stmt_tokens == 0
                    && [&b"set"[..], b"show", b"reset"]
                        .iter()
                        .any(|k| w.eq_ignore_ascii_case(k))
                {
                    setting = true;
                }
                if w.eq_ignore_ascii_case(b"where") {
                    in_where = true;
                } else if w.eq_ignore_ascii_case(b"union") {
                    close_union(&mut union, &mut out);
                    union = Union::After;
                    union_seen = true;
                    union_after_where |= in_where;
                } else if CATALOG_WORDS.iter().any(|c| w.eq_ignore_ascii_case(c)) {
                    let injected = matches!(union, Union::List { .. })
                        || stacked_after_literal
                        || union_after_where;
                    out.catalog |= !setting || injected;
                    out.catalog_injected |= injected;
                }
                if is_sleep(w) {
                    let bare = first_select && stmt_tokens == 1 && !stacked_after_literal;
                    if !bare {
                        out.classes |= Class::TimeBased.bit();
                    }
                }
            }
            _ => {}
        }
        if is_literal(&t) {
            if let [Some(or), Some(a), Some(op)] = prev {
                if word_is(b, &or, b"or")
                    && is_literal(&a)
                    && op.kind == Tok::Op
                    && matches!(
                        &b[op.start..op.end],
                        b"=" | b"<>" | b"!=" | b">" | b"<" | b">=" | b"<="
                    )
                {
                    out.classes |= Class::Tautology.bit();
                }
            }
        }
        // generate_series(a, N): the tokens are `generate_series ( a , N`.
        if t.kind == Tok::Num && (in_where || union_seen) && big_number(&b[t.start..t.end]) {
            if let [Some(p0), Some(p1), Some(p2)] = prev {
                if p0.kind == Tok::LParen && p1.kind == Tok::Num && p2.kind == Tok::Comma {
                    // `prev` holds three tokens: the name before `(` is read from the text.
                    if gs_before(b, p0.start) {
                        out.classes |= Class::TimeBased.bit();
                    }
                }
            }
        }
        union = step_union(union, &t, b, &mut out);
        if t.kind == Tok::Word && word_is(b, &t, b"version") {
            // version() — checked when its `(` follows, approximated by the next byte.
            if b[t.end..].iter().find(|c| !is_space(**c)) == Some(&b'(') {
                out.catalog = true;
                if matches!(union, Union::List { .. }) || stacked_after_literal {
                    out.catalog_injected = true;
                }
            }
        }
        prev = [prev[1], prev[2], Some(t)];
        stmt_tokens += 1;
    }
    close_union(&mut union, &mut out);
    out
}

fn is_sleep(w: &[u8]) -> bool {
    w.eq_ignore_ascii_case(b"pg_sleep")
        || w.eq_ignore_ascii_case(b"pg_sleep_for")
        || w.eq_ignore_ascii_case(b"pg_sleep_until")
}

/// A number of a million or more.
fn big_number(n: &[u8]) -> bool {
    let digits = n.iter().take_while(|c| c.is_ascii_digit()).count();
    digits >= 7
}

/// Whether the word just before byte `at` (a `(`) is `generate_series`.
fn gs_before(b: &[u8], at: usize) -> bool {
    let mut j = at;
    while j > 0 && is_space(b[j - 1]) {
        j -= 1;
    }
    let end = j;
    while j > 0 && is_ident(b[j - 1]) {
        j -= 1;
    }
    b[j..end].eq_ignore_ascii_case(b"generate_series")
}

fn step_union(u: Union, t: &Token, b: &[u8], out: &mut Scan) -> Union {
    match u {
        Union::Off => Union::Off,
        Union::After => {
            if word_is(b, t, b"union") || word_is(b, t, b"all") || word_is(b, t, b"distinct") {
                Union::After
            } else if word_is(b, t, b"select") {
                Union::List {
                    items: 0,
                    literal: true,
                    catalog: false,
                }
            } else {
                Union::Off
            }
        }
        Union::List {
            items,
            literal,
            catalog,
        } => {
            let w = &b[t.start..t.end];
            match t.kind {
                Tok::Word if w.eq_ignore_ascii_case(b"from") => {
                    let mut u = u;
                    close_union(&mut u, out);
                    Union::Off
                }
                Tok::Word if w.eq_ignore_ascii_case(b"null") => Union::List {
                    items: items + 1,
                    literal,
                    catalog,
                },
                Tok::Word
                    if w.eq_ignore_ascii_case(b"version")
                        || w.eq_ignore_ascii_case(b"current_user")
                        || w.eq_ignore_ascii_case(b"session_user")
                        || w.eq_ignore_ascii_case(b"current_database") =>
                {
                    Union::List {
                        items: items + 1,
                        literal,
                        catalog: true,
                    }
                }
                Tok::Num | Tok::Str => Union::List {
                    items: items + 1,
                    literal,
                    catalog,
                },
                Tok::Comma | Tok::LParen | Tok::RParen => u,
                // Casts: `NULL::text`.
                Tok::Op if w == b"::" => u,
                Tok::Word if literal_cast_context(b, t) => u,
                _ => Union::List {
                    items,
                    literal: false,
                    catalog,
                },
            }
        }
    }
}

/// A type name right after `::`.
fn literal_cast_context(b: &[u8], t: &Token) -> bool {
    let mut j = t.start;
    while j > 0 && is_space(b[j - 1]) {
        j -= 1;
    }
    j >= 2 && &b[j - 2..j] == b"::"
}

fn close_union(u: &mut Union, out: &mut Scan) {
    if let Union::List {
        items,
        literal,
        catalog,
    } = *u
    {
        if items > 0 && (literal || catalog) {
            out.classes |= Class::UnionProbe.bit();
        }
    }
    *u = Union::Off;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(sql: &str) -> Vec<&'static str> {
        scan(sql).classes().map(|c| c.name()).collect()
    }

    #[test]
    fn classic_payloads_fire_their_class() {
        let cases: &[(&str, &str)] = &[
            ("SELECT * FROM users WHERE name = '' OR 1=1", "tautology"),
            ("SELECT * FROM users WHERE name = '' OR 'a'='a'", "tautology"),
            ("SELECT * FROM users WHERE id = 1 or 2 > 1", "tautology"),
            ("SELECT name FROM users WHERE id = 1 UNION SELECT NULL, NULL", "union_probe"),
            ("SELECT name FROM t WHERE id = 1 UNION ALL SELECT 1,2,3 --", "union_probe"),
            ("SELECT a FROM t WHERE id = 1 UNION SELECT version(), NULL::text", "union_probe"),
            ("SELECT * FROM users WHERE name = 'admin'--' AND password = 'x'", "comment_truncation"),
            ("SELECT * FROM users WHERE name = 'admin' --' AND pass = 'x'", "comment_truncation"),
            ("SELECT * FROM users WHERE id = 1 /* rest", "comment_truncation"),
            ("SELECT * FROM users WHERE name = 'x'; DROP TABLE users", "stacked_query"),
            ("SELECT * FROM t WHERE id = 1 AND pg_sleep(5) IS NOT NULL", "time_based"),
            ("SELECT * FROM t WHERE id = 1 OR (SELECT count(*) FROM generate_series(1, 100000000)) > 0", "time_based"),
        ];
        for (sql, want) in cases {
            let got = classes(sql);
            assert!(got.contains(want), "{sql:?}: {got:?}, wanted {want}");
        }
    }

    #[test]
    fn ordinary_statements_are_clean() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "UPDATE pgbench_accounts SET abalance = abalance + -3271 WHERE aid = 48213;",
            "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
            "BEGIN;",
            "END;",
            "SELECT pg_sleep(0.1)",
            "select 'it''s -- not a comment' as x",
            "SELECT $$ OR 1=1 $$",
            "SELECT a FROM t WHERE b = 'x' OR c = 'y'",
            "SELECT a FROM t UNION SELECT b FROM u",
            "SELECT 1 -- a note",
            "SET application_name = 'x'; SELECT 1",
            "SELECT count(*) FROM generate_series(1, 10000000)",
            "select e'\\'' as q, 1",
        ] {
            assert!(classes(sql).is_empty(), "{sql:?}: {:?}", classes(sql));
        }
    }

    #[test]
    fn catalog_references_and_fingerprints() {
        let s = scan("SELECT table_name FROM information_schema.tables");
        assert!(s.catalog && !s.catalog_injected && !s.params);
        let s = scan("SELECT a FROM t WHERE x = 1 UNION SELECT usename FROM pg_shadow");
        assert!(s.catalog && s.catalog_injected);
        assert!(scan("SELECT version()").catalog);
        assert!(!scan("SELECT version FROM releases").catalog);
        // A setting's value is not a read of the catalog.
        assert!(!scan("SET search_path TO pg_catalog").catalog);
        assert!(!scan("set search_path = pg_catalog, public").catalog);
        assert!(!scan("SHOW search_path").catalog);
        assert!(scan("SET x = 1; SELECT * FROM pg_catalog.pg_class").catalog);
        assert!(scan("SELECT typname FROM pg_catalog.pg_type WHERE oid = $1").params);
        // Literals do not change the shape; keywords' case does not either.
        assert_eq!(
            scan("SELECT a FROM t WHERE id = 5 AND n = 'x'").fingerprint,
            scan("select a  from t where id = 77 and n = 'yy'").fingerprint
        );
        assert_ne!(
            scan("SELECT a FROM t WHERE id = 5").fingerprint,
            scan("SELECT b FROM t WHERE id = 5").fingerprint
        );
        // A list of literals is one shape whatever its length; other commas still count.
        assert_eq!(
            scan("SELECT a FROM t WHERE id IN (1, 2, 3)").fingerprint,
            scan("SELECT a FROM t WHERE id IN ($1)").fingerprint
        );
        assert_ne!(
            scan("SELECT a, b FROM t").fingerprint,
            scan("SELECT a FROM t").fingerprint
        );
        assert_ne!(
            scan("SELECT f(1, a) FROM t").fingerprint,
            scan("SELECT f(1) FROM t").fingerprint
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 7;
        for _ in 0..2000 {
            let mut s = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b"'\"$-/*;()=, OR1aE\\\n\xc3";
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = scan(&String::from_utf8_lossy(&s));
        }
    }
}
