//! What each statement of a simple query does to session state, so that under transaction
//! pooling one client's session state never reaches another client of the same server
//! connection.
//!
//! [`statements`] splits a query string the way PostgreSQL's lexer does (strings, `E''` strings,
//! quoted identifiers, dollar quotes, nested comments) and gives each statement an [`Effect`]:
//! nothing (the common case), something the proxy tracks and replays ([`SessionCommand`]),
//! `LISTEN`/`UNLISTEN`, or a change it cannot replay ([`Unsafe`]: the server connection is
//! dirty once the statement has run).
//!
//! It is cheap, not a parser, and allocates nothing for an ordinary statement: the first word,
//! SIMD searches for the bytes that can start a string or a comment or end a statement, and one
//! for the rare names that matter (`advisory_lock`, `set_config`, `into`). Only CREATE
//! statements, whose `;`s may sit inside parentheses (`CREATE RULE … (a; b)`) or a routine body
//! (`BEGIN ATOMIC … END`), and statements where such a name shows up are lexed token by token.
//! It is conservative where it matters: a session-level form it cannot read exactly is
//! [`Unsafe::Other`], never `None`; a name found where it does nothing (`WITH … INSERT INTO
//! temp …`, a column named `set_config`) errs towards `Unsafe`.
//!
//! What it relies on:
//! - PostgreSQL parses the whole simple-query string before running any of it, so a string the
//!   lexer rejects runs nothing: only syntactically valid SQL has to be split as the server
//!   splits it.
//! - `standard_conforming_strings` is on (the default since 9.1): `'…\'` ends at the second
//!   quote. Turning it off, or switching to a client encoding whose multibyte characters contain
//!   ASCII bytes (SJIS, BIG5, GBK, UHC, GB18030, JOHAB), is [`Unsafe::Other`]: the proxy could no
//!   longer split that client's queries reliably.
//! - What a function does when called is invisible: `SELECT my_func()` is `None` even if the
//!   function sets a parameter or creates a temporary table. Only `set_config`, the session
//!   advisory lock functions, `DO` and `CALL` are recognised by name.
//!
//! The statement text handed out starts at its first token and ends at its last one (no
//! surrounding whitespace or comments, no `;`), so `SET name TO value` values can be replayed
//! as they are.

use super::{contains_ci, unquote_ident, SessionCommand, Words};

/// What one statement does to session state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing that outlives the transaction: the overwhelmingly common case.
    None,
    /// Exactly trackable: the proxy replays it on the other server connections the client uses.
    /// From `SET`/`RESET`/`DISCARD ALL`/`DEALLOCATE` (CommandComplete `SET`, `RESET`, …) and
    /// from `SELECT set_config('name', 'value', false)` (CommandComplete `SELECT 1`).
    Track(SessionCommand),
    /// Several tracked settings from one statement, applied in order:
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY`.
    TrackMany(Vec<SessionCommand>),
    /// `LISTEN channel`: the channel normalised like an identifier (lowercased unless
    /// double-quoted, truncated to 63 bytes).
    Listen(String),
    /// `UNLISTEN channel` (`Some`) or `UNLISTEN *` (`None`).
    Unlisten(Option<String>),
    /// Changes session state the proxy cannot replay: the server connection becomes dirty.
    Unsafe(Unsafe),
}

impl Effect {
    /// The tracked commands, in order (empty unless `Track`/`TrackMany`).
    pub fn tracked(&self) -> &[SessionCommand] {
        match self {
            Effect::Track(c) => std::slice::from_ref(c),
            Effect::TrackMany(v) => v,
            _ => &[],
        }
    }
}

/// The kinds of session state the proxy cannot carry to another server connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsafe {
    /// `DO …`
    DoBlock,
    /// `CALL …`
    Call,
    /// A session-level `set_config` that cannot be tracked exactly: an argument that is not a
    /// string literal, an `is_local` that is not the literal `true`/`false`, a call among other
    /// expressions, or a list parameter (`search_path`: its `set_config` string is a list, a
    /// `SET` string one quoted element).
    SetConfig,
    /// `CREATE [GLOBAL|LOCAL] TEMP|TEMPORARY …`, `CREATE … pg_temp.x`, `SELECT … INTO TEMP …`
    TempObject,
    /// `SET ROLE`, `RESET ROLE`, `SET role = …`, `set_config('role', …)`
    Role,
    /// `SET SESSION AUTHORIZATION`, `RESET SESSION AUTHORIZATION`
    SessionAuthorization,
    /// SQL-level `PREPARE name AS …` (not `PREPARE TRANSACTION 'id'`)
    SqlPrepare,
    /// `pg_advisory_lock[_shared]` / `pg_try_advisory_lock[_shared]` (not the `_xact_` ones)
    AdvisoryLock,
    /// `DECLARE … WITH HOLD`
    HoldCursor,
    /// `LOAD 'library'`
    Load,
    /// `DISCARD TEMP|TEMPORARY|PLANS|SEQUENCES`
    Discard,
    /// Any other session-level change: a `SET`/`RESET`/`LISTEN`… form this module cannot read
    /// exactly, `SET x FROM CURRENT`, `SET TIME ZONE INTERVAL …`, `standard_conforming_strings`
    /// off, an ASCII-unsafe client encoding.
    Other,
}

impl Unsafe {
    /// A human name for error messages and docs.
    pub fn class(self) -> &'static str {
        match self {
            Unsafe::DoBlock => "DO block",
            Unsafe::Call => "CALL",
            Unsafe::SetConfig => "set_config",
            Unsafe::TempObject => "CREATE TEMP",
            Unsafe::Role => "SET ROLE",
            Unsafe::SessionAuthorization => "SET SESSION AUTHORIZATION",
            Unsafe::SqlPrepare => "PREPARE",
            Unsafe::AdvisoryLock => "session-level advisory lock",
            Unsafe::HoldCursor => "DECLARE ... WITH HOLD",
            Unsafe::Load => "LOAD",
            Unsafe::Discard => "DISCARD",
            Unsafe::Other => "session state change",
        }
    }
}

/// Splits a simple-query string into its statements and classifies each one.
///
/// Empty statements (`;;`, whitespace or comments only) are skipped: PostgreSQL sends no
/// CommandComplete for them, so the items match the server's CommandCompletes one for one.
/// Each statement is a slice of `sql` without surrounding whitespace, comments or `;`.
/// Never panics and always ends, whatever the input.
///
/// Measured, split and classified (no allocation) — pgbench SELECT / UPDATE / INSERT:
/// 45 / 47 / 58 ns on a quiet core (minimum over 400 runs of 10 000 calls), 130 / 131 / 144 ns
/// as criterion medians on the 2-vCPU development VM shared with other builds (load ~5–6;
/// benches/benches/sql.rs). `SET application_name = 'pgbench';` (tracked: allocates name and
/// value): 113 ns quiet, 285 ns criterion.
pub fn statements(sql: &str) -> Statements<'_> {
    Statements { sql, pos: 0 }
}

/// The iterator [`statements`] returns.
#[derive(Clone, Debug)]
pub struct Statements<'a> {
    sql: &'a str,
    pos: usize,
}

impl<'a> Iterator for Statements<'a> {
    type Item = (&'a str, Effect);

    fn next(&mut self) -> Option<(&'a str, Effect)> {
        while self.pos < self.sql.len() {
            let from = self.pos;
            let stmt = scan(self.sql, &mut self.pos);
            // `scan` always moves on by at least one byte; the max only guards that.
            self.pos = self.pos.max(from + 1);
            if stmt.is_some() {
                return stmt;
            }
        }
        None
    }
}

impl std::iter::FusedIterator for Statements<'_> {}

/// `&s[a..b]` widened to character boundaries (they always are: every position the lexer
/// stops at follows an ASCII byte or ends a run of non-ASCII bytes).
fn slice(s: &str, mut a: usize, mut b: usize) -> &str {
    b = b.min(s.len());
    a = a.min(b);
    while !s.is_char_boundary(a) {
        a -= 1;
    }
    while !s.is_char_boundary(b) {
        b += 1;
    }
    &s[a..b]
}

// ---------------------------------------------------------------------------------------------
// The lexer: PostgreSQL's token boundaries, nothing more.

const C_OTHER: u8 = 0;
const C_SPACE: u8 = 1;
const C_SEMI: u8 = 2;
const C_DASH: u8 = 3;
const C_SLASH: u8 = 4;
const C_QUOTE: u8 = 5;
const C_DQUOTE: u8 = 6;
const C_DOLLAR: u8 = 7;
const C_IDENT: u8 = 8;
const C_DIGIT: u8 = 9;
const C_OPEN: u8 = 10;
const C_CLOSE: u8 = 11;

/// Each byte's class. PostgreSQL's whitespace is `[ \t\n\r\f\v]`; identifiers start with a
/// letter, `_` or any byte >= 0x80.
static CLASS: [u8; 256] = {
    let mut t = [C_OTHER; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => C_SPACE,
            b';' => C_SEMI,
            b'-' => C_DASH,
            b'/' => C_SLASH,
            b'\'' => C_QUOTE,
            b'"' => C_DQUOTE,
            b'$' => C_DOLLAR,
            b'(' => C_OPEN,
            b')' => C_CLOSE,
            b'0'..=b'9' => C_DIGIT,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | 0x80..=0xff => C_IDENT,
            _ => C_OTHER,
        };
        i += 1;
    }
    t
};

/// Bytes that continue an identifier: letters, digits, `_`, `$`, >= 0x80.
static IDENT_CONT: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = matches!(CLASS[i], C_IDENT | C_DIGIT | C_DOLLAR);
        i += 1;
    }
    t
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An unquoted identifier or keyword.
    Word,
    /// `"…"`
    QIdent,
    /// `'…'`, `E'…'` or `$tag$…$tag$`
    Str,
    Number,
    Semi,
    Open,
    Close,
    /// Any other single byte (operators, `,`, `.`, a `$` that starts no dollar quote).
    Punct(u8),
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// The next token at or after `i`, skipping whitespace and comments; `None` at the end.
/// `end > start` always.
#[inline(always)]
fn next_token(b: &[u8], mut i: usize) -> Option<Token> {
    loop {
        let c = *b.get(i)?;
        let class = CLASS[c as usize];
        match class {
            C_SPACE => i += 1,
            C_DASH if b.get(i + 1) == Some(&b'-') => i = skip_line(b, i + 2),
            C_SLASH if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i + 2),
            _ => return Some(token_at(b, i, class)),
        }
    }
}

/// The end of the run of identifier bytes (letters, digits, `_`, `$`, >= 0x80) from `j`.
#[inline(always)]
fn ident_run(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && IDENT_CONT[b[j] as usize] {
        j += 1;
    }
    j
}

/// The token at `i` (of class `class`). Where PostgreSQL would reject the text anyway, the
/// choices match [`split_fast`]'s one-byte look-behind rules: a `$` right after an identifier
/// byte, or an `e'` right after one, starts nothing.
#[inline(always)]
fn token_at(b: &[u8], i: usize, class: u8) -> Token {
    let after_ident = i > 0 && IDENT_CONT[b[i - 1] as usize];
    let (kind, end) = match class {
        C_IDENT => {
            let j = ident_run(b, i + 1);
            if j == i + 1 && (b[i] | 0x20) == b'e' && b.get(j) == Some(&b'\'') && !after_ident {
                (Kind::Str, skip_escape_string(b, j + 1))
            } else {
                (Kind::Word, j)
            }
        }
        C_DIGIT => (Kind::Number, ident_run(b, i + 1)),
        C_QUOTE => (Kind::Str, skip_quoted(b, i + 1, b'\'')),
        C_DQUOTE => (Kind::QIdent, skip_quoted(b, i + 1, b'"')),
        C_DOLLAR if after_ident => (Kind::Word, ident_run(b, i + 1)),
        C_DOLLAR => match skip_dollar_quote(b, i) {
            Some(end) => (Kind::Str, end),
            // A parameter `$1`, or a `$` PostgreSQL rejects.
            None => (Kind::Punct(b'$'), ident_run(b, i + 1)),
        },
        C_SEMI => (Kind::Semi, i + 1),
        C_OPEN => (Kind::Open, i + 1),
        C_CLOSE => (Kind::Close, i + 1),
        _ => (Kind::Punct(b[i]), i + 1),
    };
    Token {
        kind,
        start: i,
        end,
    }
}

/// After `--`: to the end of the line (`\n` or `\r`).
fn skip_line(b: &[u8], i: usize) -> usize {
    let i = i.min(b.len());
    memchr::memchr2(b'\n', b'\r', &b[i..]).map_or(b.len(), |k| i + k + 1)
}

/// After `/*`: past the matching `*/`; comments nest.
pub(super) fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1u32;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'*', b'/') => {
                i += 2;
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            (b'/', b'*') => {
                i += 2;
                depth += 1;
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// After an opening `q` (`'` or `"`): past the closing one; `qq` inside stands for `q`.
fn skip_quoted(b: &[u8], mut i: usize, q: u8) -> usize {
    loop {
        let Some(k) = memchr::memchr(q, b.get(i..).unwrap_or_default()) else {
            return b.len();
        };
        let after = i + k + 1;
        if b.get(after) == Some(&q) {
            i = after + 1;
        } else {
            return after;
        }
    }
}

/// After `E'`: past the closing `'`; `\x` and `''` inside are escapes.
fn skip_escape_string(b: &[u8], mut i: usize) -> usize {
    loop {
        let Some(k) = memchr::memchr2(b'\'', b'\\', b.get(i..).unwrap_or_default()) else {
            return b.len();
        };
        let at = i + k;
        if b[at] == b'\\' || b.get(at + 1) == Some(&b'\'') {
            i = at + 2;
        } else {
            return at + 1;
        }
    }
}

/// At a `$` that does not continue an identifier: the end of the `$tag$…$tag$` string starting
/// here (the end of input if it is not closed), or `None` if no dollar quote starts here (a
/// parameter `$1`, or a `$` PostgreSQL would reject).
fn skip_dollar_quote(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if j < b.len() && CLASS[b[j] as usize] == C_IDENT {
        j += 1;
        while j < b.len() && matches!(CLASS[b[j] as usize], C_IDENT | C_DIGIT) {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        return None;
    }
    let tag = &b[i..=j];
    Some(memchr::memmem::find(&b[j + 1..], tag).map_or(b.len(), |k| j + 1 + k + tag.len()))
}

// ---------------------------------------------------------------------------------------------
// The splitter: one statement, and what its tokens hint at.

/// The first word, when it decides or may decide the statement's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Kw {
    #[default]
    Other,
    Set,
    Reset,
    Deallocate,
    Discard,
    Listen,
    Unlisten,
    Do,
    Call,
    Create,
    Prepare,
    Declare,
    Load,
    Explain,
    Insert,
    Merge,
}

fn keyword(w: &[u8]) -> Kw {
    let is = |k: &[u8]| w.eq_ignore_ascii_case(k);
    match w.len() {
        2 if is(b"do") => Kw::Do,
        3 if is(b"set") => Kw::Set,
        4 if is(b"call") => Kw::Call,
        4 if is(b"load") => Kw::Load,
        5 if is(b"reset") => Kw::Reset,
        5 if is(b"merge") => Kw::Merge,
        6 if is(b"listen") => Kw::Listen,
        6 if is(b"create") => Kw::Create,
        6 if is(b"insert") => Kw::Insert,
        7 if is(b"discard") => Kw::Discard,
        7 if is(b"prepare") => Kw::Prepare,
        7 if is(b"declare") => Kw::Declare,
        7 if is(b"explain") => Kw::Explain,
        8 if is(b"unlisten") => Kw::Unlisten,
        10 if is(b"deallocate") => Kw::Deallocate,
        _ => Kw::Other,
    }
}

/// One statement as the splitter saw it.
#[derive(Debug, Default)]
struct Found {
    /// Its first and past-its-last significant byte (`start == end`: empty statement).
    start: usize,
    end: usize,
    first: Kw,
    /// Calls `pg_[try_]advisory_lock[_shared]`.
    advisory: bool,
    /// Names `set_config`.
    set_config: bool,
    /// `INTO TEMP|TEMPORARY|LOCAL|GLOBAL …` or `INTO [TABLE] pg_temp…` (not after INSERT/MERGE).
    into_temp: bool,
    /// Names the `pg_temp` schema (only looked for in CREATE and EXPLAIN).
    pg_temp: bool,
}

/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE … BEGIN ATOMIC … END` bodies and `CREATE RULE …
/// (a; b)` actions hold `;`s that end no statement: as psql, count parentheses and, in a
/// routine, `BEGIN ATOMIC`/`CASE` … `END`, in CREATE statements only.
#[derive(Default)]
struct Create {
    words: usize,
    initials: [u8; 4],
    parens: u32,
    body: u32,
    begin_at: u32,
}

impl Create {
    fn word(&mut self, w: &[u8], token: u32) {
        let is = |k: &[u8]| w.eq_ignore_ascii_case(k);
        if self.words < 4 {
            self.initials[self.words] = match w.len() {
                2 if is(b"or") => b'o',
                6 if is(b"create") => b'c',
                7 if is(b"replace") => b'r',
                8 if is(b"function") => b'f',
                9 if is(b"procedure") => b'p',
                _ => 0,
            };
        }
        self.words += 1;
        let i = self.initials;
        let routine = i[0] == b'c'
            && (matches!(i[1], b'f' | b'p')
                || (i[1] == b'o' && i[2] == b'r' && matches!(i[3], b'f' | b'p')));
        if !routine {
            return;
        }
        if self.body == 0 {
            if self.parens == 0 && is(b"begin") {
                self.begin_at = token + 1;
            } else if self.begin_at == token && token > 0 && is(b"atomic") {
                self.body = 1;
            }
        } else if is(b"case") {
            self.body += 1;
        } else if is(b"end") {
            self.body -= 1;
        }
    }
}

/// Splits off the statement at `*pos` and classifies it (`None`: it was empty); moves `*pos`
/// to where the next one starts (past its `;`).
///
/// The common case takes the fast path: the first word, then a loop that stops only at the
/// bytes that can start a string, a comment or end the statement (`; ' " $ - /`), then a few
/// SIMD substring searches for the rare names that matter (`advisory_lock`, `set_config`,
/// `into`). Only a CREATE statement (its `;`s may be inside parentheses or a routine body) or
/// one where a search hit (or whose first word needs them) is lexed token by token.
#[inline(always)]
fn scan<'a>(sql: &'a str, pos: &mut usize) -> Option<(&'a str, Effect)> {
    let b = sql.as_bytes();
    let Some(first) = next_token(b, *pos) else {
        *pos = b.len();
        return None;
    };
    let kw = match first.kind {
        Kind::Word => keyword(&b[first.start..first.end]),
        Kind::Semi => {
            *pos = first.end;
            return None;
        }
        _ => Kw::Other,
    };
    if kw == Kw::Create {
        let (f, next) = scan_precise(sql, *pos);
        *pos = next;
        let stmt = slice(sql, f.start, f.end);
        return Some((stmt, classify(stmt, &f)));
    }
    let (end, next) = split_fast(b, first.start);
    *pos = next;
    let stmt = slice(sql, first.start, end);
    let precise = match kw {
        Kw::Other | Kw::Insert | Kw::Merge => maybe_flagged(stmt.as_bytes(), kw),
        Kw::Set
        | Kw::Reset
        | Kw::Deallocate
        | Kw::Discard
        | Kw::Listen
        | Kw::Unlisten
        | Kw::Load => false, // decided by their words alone
        Kw::Do | Kw::Call | Kw::Prepare | Kw::Declare | Kw::Explain | Kw::Create => true,
    };
    let effect = if precise {
        classify(stmt, &scan_precise(stmt, 0).0)
    } else if kw == Kw::Other {
        Effect::None // the common case: nothing to look at
    } else {
        let f = Found {
            first: kw,
            ..Found::default()
        };
        classify(stmt, &f)
    };
    Some((stmt, effect))
}

/// Where the next `; ' " $ - /` is (a byte that can start a string, a quoted identifier or a
/// comment, or end a statement): two SIMD searches of three bytes each, whose results are kept
/// while they lie ahead.
struct Specials {
    at: [usize; 2],
}

impl Specials {
    fn search(b: &[u8], i: usize, set: usize) -> usize {
        let hay = b.get(i..).unwrap_or_default();
        let k = if set == 0 {
            memchr::memchr3(b';', b'\'', b'"', hay)
        } else {
            memchr::memchr3(b'$', b'-', b'/', hay)
        };
        k.map_or(b.len(), |k| i + k)
    }

    fn new(b: &[u8], i: usize) -> Specials {
        Specials {
            at: [Self::search(b, i, 0), Self::search(b, i, 1)],
        }
    }

    /// The first special byte at or after `i` (`b.len()` if none).
    #[inline(always)]
    fn next(&mut self, b: &[u8], i: usize) -> usize {
        for set in 0..2 {
            if self.at[set] < i {
                self.at[set] = Self::search(b, i, set);
            }
        }
        self.at[0].min(self.at[1])
    }
}

/// From `i` (not inside a token): the end of the statement's last token and where the next
/// statement starts. A `;` ends the statement wherever it is outside strings and comments.
fn split_fast(b: &[u8], mut i: usize) -> (usize, usize) {
    let n = b.len();
    let mut end = i;
    let mut specials = Specials::new(b, i);
    loop {
        let run = i;
        i = specials.next(b, i);
        // [run, i) holds words, numbers, operators and whitespace: it ends at its last non-space.
        let mut e = i;
        while e > run && CLASS[b[e - 1] as usize] == C_SPACE {
            e -= 1;
        }
        if e > run {
            end = e;
        }
        let Some(&c) = b.get(i) else {
            return (end, n);
        };
        let next = b.get(i + 1).copied();
        i = match c {
            b';' => return (end, i + 1),
            b'-' if next == Some(b'-') => skip_line(b, i + 2),
            b'/' if next == Some(b'*') => skip_block_comment(b, i + 2),
            b'\'' => {
                // E'…': an `e` that is a word of its own just before the quote.
                let escape = i >= 1
                    && (b[i - 1] | 0x20) == b'e'
                    && (i < 2 || !IDENT_CONT[b[i - 2] as usize]);
                end = if escape {
                    skip_escape_string(b, i + 1)
                } else {
                    skip_quoted(b, i + 1, b'\'')
                };
                end
            }
            b'"' => {
                end = skip_quoted(b, i + 1, b'"');
                end
            }
            b'$' if i == 0 || !IDENT_CONT[b[i - 1] as usize] => {
                end = skip_dollar_quote(b, i).unwrap_or(i + 1);
                end
            }
            _ => {
                // `$` inside an identifier, a lone `-` or `/`.
                end = i + 1;
                end
            }
        };
    }
}

/// Could this statement name one of the functions, or hold an `INTO`, that [`Found`] flags?
/// A cheap superset (substrings, even inside strings); a hit sends it to the precise lexer.
/// `advisory_lock`, `set_config` and `into` all have an `o`: one SIMD search for it, and a look
/// around each (pgbench's statements have one to three).
fn maybe_flagged(stmt: &[u8], kw: Kw) -> bool {
    let into = !matches!(kw, Kw::Insert | Kw::Merge);
    let at = |o: usize, before: usize, needle: &[u8]| {
        o >= before
            && stmt
                .get(o - before..o - before + needle.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(needle))
    };
    memchr::memchr2_iter(b'o', b'O', stmt).any(|o| {
        at(o, 5, b"advisory_lock")
            || at(o, 10, b"advisory_lock")
            || at(o, 5, b"set_config")
            || (into && at(o, 3, b"into"))
    })
}

/// Lexes one statement from `i` token by token: what it holds, and where the next one starts.
fn scan_precise(sql: &str, mut i: usize) -> (Found, usize) {
    let b = sql.as_bytes();
    let mut f = Found {
        start: usize::MAX,
        ..Found::default()
    };
    let mut create = Create::default();
    let mut n = 0u32;
    let mut next = b.len();
    while let Some(t) = next_token(b, i) {
        i = t.end;
        match t.kind {
            Kind::Semi if create.parens == 0 && create.body == 0 => {
                next = t.end;
                break;
            }
            Kind::Word => {
                let w = &b[t.start..t.end];
                if n == 0 {
                    f.first = keyword(w);
                } else {
                    f.note(w);
                    if w.len() == 4
                        && w.eq_ignore_ascii_case(b"into")
                        && !matches!(f.first, Kw::Insert | Kw::Merge)
                        && into_temp(sql.get(t.end..).unwrap_or_default())
                    {
                        f.into_temp = true;
                    }
                }
                if f.first == Kw::Create {
                    create.word(w, n);
                }
            }
            Kind::QIdent if t.end - t.start >= 2 => f.note(&b[t.start + 1..t.end - 1]),
            Kind::Open if f.first == Kw::Create => create.parens += 1,
            Kind::Close => create.parens = create.parens.saturating_sub(1),
            _ => {}
        }
        if f.start == usize::MAX {
            f.start = t.start;
        }
        f.end = t.end;
        n = n.saturating_add(1);
    }
    if f.start == usize::MAX {
        f.start = f.end;
    }
    (f, next)
}

impl Found {
    /// An identifier that is not the first word (bare, or the inside of a quoted one).
    #[inline(always)]
    fn note(&mut self, w: &[u8]) {
        let is = |k: &[u8]| w.eq_ignore_ascii_case(k);
        match w.len() {
            10 if is(b"set_config") => self.set_config = true,
            16 if is(b"pg_advisory_lock") => self.advisory = true,
            20 if is(b"pg_try_advisory_lock") => self.advisory = true,
            23 if is(b"pg_advisory_lock_shared") => self.advisory = true,
            27 if is(b"pg_try_advisory_lock_shared") => self.advisory = true,
            _ => {}
        }
        if matches!(self.first, Kw::Create | Kw::Explain) && is_pg_temp(w) {
            self.pg_temp = true;
        }
    }
}

/// `pg_temp` or `pg_temp_N`, any case.
fn is_pg_temp(w: &[u8]) -> bool {
    w.len() >= 7 && w[..7].eq_ignore_ascii_case(b"pg_temp") && (w.len() == 7 || w[7] == b'_')
}

/// After an `INTO`: does a temporary table name follow?
fn into_temp(rest: &str) -> bool {
    let mut w = Words { s: rest };
    let mut x = w.word();
    if x.is_some_and(|x| x.eq_ignore_ascii_case("table")) {
        x = w.word();
    }
    match x {
        Some(x) => {
            ["temp", "temporary", "local", "global"]
                .iter()
                .any(|k| x.eq_ignore_ascii_case(k))
                || is_pg_temp(x.split('.').next().unwrap_or("").as_bytes())
        }
        None => {
            let r = w.rest().as_bytes();
            r.len() >= 9 && r[..9].eq_ignore_ascii_case(b"\"pg_temp\"")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Classification of one statement.

fn classify(stmt: &str, f: &Found) -> Effect {
    let first = match f.first {
        Kw::Other | Kw::Insert | Kw::Merge => None,
        Kw::Set => return set(stmt),
        Kw::Reset => return reset(stmt),
        Kw::Deallocate => return deallocate(stmt),
        Kw::Discard => return discard(stmt),
        Kw::Listen => return listen(stmt),
        Kw::Unlisten => return unlisten(stmt),
        Kw::Load => return Effect::Unsafe(Unsafe::Load),
        Kw::Do => Some(Unsafe::DoBlock),
        Kw::Call => Some(Unsafe::Call),
        Kw::Prepare => prepare(stmt),
        Kw::Declare => declare(stmt),
        Kw::Create => create(stmt, f.pg_temp),
        Kw::Explain => explain(stmt, f.pg_temp),
    };
    // The advisory lock first: it is the one transaction pooling refuses outright.
    if f.advisory {
        return Effect::Unsafe(Unsafe::AdvisoryLock);
    }
    if let Some(u) = first {
        return Effect::Unsafe(u);
    }
    if f.into_temp {
        return Effect::Unsafe(Unsafe::TempObject);
    }
    if f.set_config {
        return set_config(stmt);
    }
    Effect::None
}

fn is(w: Option<&str>, k: &str) -> bool {
    w.is_some_and(|w| w.eq_ignore_ascii_case(k))
}

const OTHER: Effect = Effect::Unsafe(Unsafe::Other);

fn set_cmd(name: &str, value: &str) -> SessionCommand {
    SessionCommand::Set {
        name: name.into(),
        value: value.into(),
    }
}

/// `SET …` (the statement starts with SET).
fn set(stmt: &str) -> Effect {
    let mut w = Words { s: stmt };
    w.word();
    let Some(mut name) = w.word() else {
        return OTHER; // SET "Quoted" …
    };
    let eq = |n: &str, k: &str| n.eq_ignore_ascii_case(k);
    if eq(name, "local") {
        return Effect::None; // lasts until the end of the transaction
    }
    if eq(name, "session") {
        let Some(n) = w.word() else { return OTHER };
        if eq(n, "authorization") {
            return Effect::Unsafe(Unsafe::SessionAuthorization);
        }
        if eq(n, "characteristics") {
            return characteristics(w);
        }
        name = n;
    }
    if eq(name, "transaction") || eq(name, "constraints") {
        return Effect::None; // transaction-scoped
    }
    if eq(name, "role") {
        return Effect::Unsafe(Unsafe::Role);
    }
    if eq(name, "time") {
        if !is(w.word(), "zone") {
            return OTHER;
        }
        let value = w.rest();
        let mut v = Words { s: value };
        let first = v.word();
        if (is(first, "local") || is(first, "default")) && v.rest().is_empty() {
            return Effect::Track(set_cmd("timezone", "DEFAULT"));
        }
        if value.is_empty() || is(first, "interval") {
            return OTHER;
        }
        return Effect::Track(set_cmd("timezone", value));
    }
    if eq(name, "names") {
        let value = w.rest();
        return tracked_set(
            "client_encoding",
            if value.is_empty() { "DEFAULT" } else { value },
        );
    }
    if eq(name, "schema") {
        let value = w.rest();
        if value.is_empty() {
            return OTHER;
        }
        return Effect::Track(set_cmd("search_path", value));
    }
    if eq(name, "xml") {
        if !is(w.word(), "option") {
            return OTHER;
        }
        let Some(v) = w.word() else { return OTHER };
        if !(eq(v, "document") || eq(v, "content")) || !w.rest().is_empty() {
            return OTHER;
        }
        return Effect::Track(set_cmd("xmloption", &v.to_ascii_lowercase()));
    }
    let rest = w.rest();
    let value = if let Some(v) = rest.strip_prefix('=') {
        v
    } else {
        let mut w2 = Words { s: rest };
        if !is(w2.word(), "to") {
            return OTHER; // SET x FROM CURRENT, or not SQL
        }
        w2.rest()
    };
    let value = value.trim();
    if value.is_empty() {
        return OTHER;
    }
    tracked_set(&name.to_ascii_lowercase(), value)
}

/// A session-level `name = value` (from SET or set_config), unless it is one of the parameters
/// the proxy must not carry over.
fn tracked_set(name: &str, value: &str) -> Effect {
    match name {
        "role" => Effect::Unsafe(Unsafe::Role),
        "session_authorization" => Effect::Unsafe(Unsafe::SessionAuthorization),
        "standard_conforming_strings" if !is_on(value) => OTHER,
        "client_encoding" if ascii_unsafe_encoding(value) => OTHER,
        _ => Effect::Track(set_cmd(name, value)),
    }
}

/// A SQL value PostgreSQL reads as boolean true (or DEFAULT, on by default).
fn is_on(value: &str) -> bool {
    let v = value.trim();
    let v = v
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(v);
    ["on", "true", "yes", "1", "default"]
        .iter()
        .any(|k| v.eq_ignore_ascii_case(k))
}

/// Client-only encodings whose multibyte characters may contain `\`, `'` … bytes.
fn ascii_unsafe_encoding(value: &str) -> bool {
    let norm: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    [
        "sjis",
        "shiftjis",
        "mskanji",
        "big5",
        "gbk",
        "uhc",
        "gb18030",
        "johab",
        "win932",
        "win936",
        "win949",
        "win950",
        "windows932",
        "windows936",
        "windows949",
        "windows950",
        "cp932",
        "cp936",
        "cp949",
        "cp950",
    ]
    .contains(&norm.as_str())
}

/// `SET SESSION CHARACTERISTICS AS TRANSACTION mode [, …]` after CHARACTERISTICS.
fn characteristics(mut w: Words<'_>) -> Effect {
    if !is(w.word(), "as") || !is(w.word(), "transaction") {
        return OTHER;
    }
    let mut out = Vec::new();
    loop {
        let mode = w.word();
        let cmd = if is(mode, "isolation") {
            if !is(w.word(), "level") {
                return OTHER;
            }
            let level = match w.word() {
                l if is(l, "serializable") => "'serializable'",
                l if is(l, "repeatable") && is(w.word(), "read") => "'repeatable read'",
                l if is(l, "read") => match w.word() {
                    c if is(c, "committed") => "'read committed'",
                    c if is(c, "uncommitted") => "'read uncommitted'",
                    _ => return OTHER,
                },
                _ => return OTHER,
            };
            set_cmd("default_transaction_isolation", level)
        } else if is(mode, "read") {
            match w.word() {
                m if is(m, "only") => set_cmd("default_transaction_read_only", "on"),
                m if is(m, "write") => set_cmd("default_transaction_read_only", "off"),
                _ => return OTHER,
            }
        } else if is(mode, "not") {
            if !is(w.word(), "deferrable") {
                return OTHER;
            }
            set_cmd("default_transaction_deferrable", "off")
        } else if is(mode, "deferrable") {
            set_cmd("default_transaction_deferrable", "on")
        } else {
            return OTHER;
        };
        out.push(cmd);
        let rest = w.rest();
        if rest.is_empty() {
            break;
        }
        w.s = rest.strip_prefix(',').unwrap_or(rest);
    }
    if out.len() == 1 {
        Effect::Track(out.remove(0))
    } else {
        Effect::TrackMany(out)
    }
}

/// `RESET …`
fn reset(stmt: &str) -> Effect {
    let mut w = Words { s: stmt };
    w.word();
    let Some(name) = w.word() else { return OTHER };
    let eq = |k: &str| name.eq_ignore_ascii_case(k);
    let effect = if eq("role") {
        Effect::Unsafe(Unsafe::Role)
    } else if eq("session_authorization") {
        Effect::Unsafe(Unsafe::SessionAuthorization)
    } else if eq("session") {
        if !is(w.word(), "authorization") {
            return OTHER;
        }
        Effect::Unsafe(Unsafe::SessionAuthorization)
    } else if eq("transaction") {
        return Effect::None; // RESET TRANSACTION ISOLATION LEVEL
    } else if eq("time") {
        if !is(w.word(), "zone") {
            return OTHER;
        }
        Effect::Track(SessionCommand::Reset {
            name: "timezone".into(),
        })
    } else if eq("all") {
        Effect::Track(SessionCommand::ResetAll)
    } else {
        Effect::Track(SessionCommand::Reset {
            name: name.to_ascii_lowercase(),
        })
    };
    if w.rest().is_empty() {
        effect
    } else {
        OTHER
    }
}

/// `DEALLOCATE [PREPARE] name | ALL`
fn deallocate(stmt: &str) -> Effect {
    let mut w = Words { s: stmt };
    w.word();
    let mut name = w.rest();
    if let Some(n) = super::strip_word(name, "prepare") {
        name = n;
    }
    let name = name.trim();
    let quoted = name.starts_with('"');
    let Some(name) = unquote_ident(name) else {
        return OTHER;
    };
    Effect::Track(if name == "all" && !quoted {
        SessionCommand::DeallocateAll
    } else {
        SessionCommand::Deallocate { name }
    })
}

/// `DISCARD ALL | TEMP | TEMPORARY | PLANS | SEQUENCES`
fn discard(stmt: &str) -> Effect {
    let mut w = Words { s: stmt };
    w.word();
    let what = w.word();
    if !w.rest().is_empty() {
        return OTHER;
    }
    if is(what, "all") {
        Effect::Track(SessionCommand::DiscardAll)
    } else if ["temp", "temporary", "plans", "sequences"]
        .iter()
        .any(|k| is(what, k))
    {
        Effect::Unsafe(Unsafe::Discard)
    } else {
        OTHER
    }
}

/// A channel name as PostgreSQL stores it: an identifier, truncated to NAMEDATALEN - 1 bytes.
fn channel(s: &str) -> Option<String> {
    let mut name = unquote_ident(s)?;
    if name.len() > 63 {
        let mut k = 63;
        while !name.is_char_boundary(k) {
            k -= 1;
        }
        name.truncate(k);
    }
    Some(name)
}

/// `LISTEN channel`
fn listen(stmt: &str) -> Effect {
    let mut w = Words { s: stmt };
    w.word();
    channel(w.rest()).map_or(OTHER, Effect::Listen)
}

/// `UNLISTEN channel | *`
fn unlisten(stmt: &str) -> Effect {
    let mut w = Words { s: stmt };
    w.word();
    let rest = w.rest();
    if rest == "*" {
        return Effect::Unlisten(None);
    }
    channel(rest).map_or(OTHER, |c| Effect::Unlisten(Some(c)))
}

/// `PREPARE name AS …`; `PREPARE TRANSACTION 'id'` is not session state.
fn prepare(stmt: &str) -> Option<Unsafe> {
    let mut w = Words { s: stmt };
    w.word();
    if is(w.word(), "transaction") && w.rest().starts_with('\'') {
        return None;
    }
    Some(Unsafe::SqlPrepare)
}

/// `DECLARE name [options] CURSOR [WITH HOLD | WITHOUT HOLD] FOR query`: the words before FOR.
fn declare(stmt: &str) -> Option<Unsafe> {
    let mut w = Words { s: stmt };
    w.word();
    loop {
        let word = match w.word() {
            Some(x) => x,
            None => {
                // A quoted cursor name; anything else is not a DECLARE we can read.
                let rest = w.rest();
                match rest.strip_prefix('"') {
                    Some(r) => {
                        let end = skip_quoted(r.as_bytes(), 0, b'"');
                        w.s = slice(r, end, r.len());
                        if end >= r.len() {
                            break;
                        }
                        continue;
                    }
                    None => break,
                }
            }
        };
        if word.eq_ignore_ascii_case("for") {
            return None;
        }
        if word.eq_ignore_ascii_case("with") && is(w.word(), "hold") {
            return Some(Unsafe::HoldCursor);
        }
    }
    contains_ci(stmt.as_bytes(), b"with hold").then_some(Unsafe::HoldCursor)
}

/// `CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP | TEMPORARY …`, or anything created in pg_temp.
fn create(stmt: &str, pg_temp: bool) -> Option<Unsafe> {
    let mut w = Words { s: stmt };
    w.word();
    let mut x = w.word();
    if is(x, "or") {
        w.word();
        x = w.word();
    }
    if is(x, "global") || is(x, "local") {
        x = w.word();
    }
    (is(x, "temp") || is(x, "temporary") || pg_temp).then_some(Unsafe::TempObject)
}

/// `EXPLAIN [(options)] [ANALYZE] [VERBOSE] statement`: a CREATE … AS inside is looked at.
fn explain(stmt: &str, pg_temp: bool) -> Option<Unsafe> {
    let mut w = Words { s: stmt };
    w.word();
    let mut rest = w.rest();
    if rest.starts_with('(') {
        let close = rest.find(')')?;
        rest = &rest[close + 1..];
    }
    let mut w = Words { s: rest };
    loop {
        let at = w.rest();
        match w.word() {
            Some(x)
                if ["analyze", "analyse", "verbose"]
                    .iter()
                    .any(|k| x.eq_ignore_ascii_case(k)) => {}
            Some(x) if x.eq_ignore_ascii_case("create") => return create(at, pg_temp),
            _ => return None,
        }
    }
}

/// Parameters whose `set_config` string is a list and whose `SET 'string'` is one quoted
/// element: `set_config('search_path', 'a, b', false)` is `SET search_path TO a, b`, not
/// `SET search_path TO 'a, b'` (one schema named "a, b").
const LIST_PARAMETERS: [&str; 5] = [
    "search_path",
    "temp_tablespaces",
    "local_preload_libraries",
    "session_preload_libraries",
    "shared_preload_libraries",
];

/// A statement naming set_config: `SELECT [pg_catalog.]set_config('name', 'value', false)
/// [AS alias]` is tracked; calls with a literal `true` (local) are nothing; anything else is
/// `Unsafe(SetConfig)`.
fn set_config(stmt: &str) -> Effect {
    let b = stmt.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(t) = next_token(b, i) {
        i = t.end;
        toks.push(t);
    }
    let text = |t: &Token| slice(stmt, t.start, t.end);
    let is_name = |t: &Token| match t.kind {
        Kind::Word => text(t).eq_ignore_ascii_case("set_config"),
        Kind::QIdent => text(t).eq_ignore_ascii_case("\"set_config\""),
        _ => false,
    };
    let is_word = |t: Option<&Token>, k: &str| {
        t.is_some_and(|t| t.kind == Kind::Word && text(t).eq_ignore_ascii_case(k))
    };
    // Each call's is_local argument: Some(true) local, Some(false) session, None unknown.
    let mut session_calls = 0;
    for (at, _) in toks.iter().enumerate().filter(|(_, t)| is_name(t)) {
        if toks.get(at + 1).map(|t| t.kind) != Some(Kind::Open) {
            return Effect::Unsafe(Unsafe::SetConfig);
        }
        let (mut depth, mut commas, mut third) = (0u32, 0, Vec::new());
        for t in &toks[at + 1..] {
            match t.kind {
                Kind::Open => depth += 1,
                Kind::Close => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Kind::Punct(b',') if depth == 1 => {
                    commas += 1;
                    continue;
                }
                _ => {}
            }
            if depth >= 1 && commas == 2 {
                third.push(t);
            }
        }
        match third.as_slice() {
            [t] if is_word(Some(t), "true") => {}
            [t] if is_word(Some(t), "false") => session_calls += 1,
            _ => return Effect::Unsafe(Unsafe::SetConfig),
        }
    }
    if session_calls == 0 {
        return Effect::None; // only set_config(…, true): transaction-scoped
    }
    // SELECT [pg_catalog .] set_config ( 'name' , 'value' , false ) [AS alias]
    let mut t = toks.iter();
    let mut next = || t.next();
    let select = next();
    let mut call = next();
    if is_word(call, "pg_catalog") && next().map(|t| t.kind) == Some(Kind::Punct(b'.')) {
        call = next();
    }
    let (open, name, c1, value, c2, _local, close) =
        (next(), next(), next(), next(), next(), next(), next());
    let kind = |t: Option<&Token>| t.map(|t| t.kind);
    let exact = session_calls == 1
        && is_word(select, "select")
        && call.is_some_and(is_name)
        && kind(open) == Some(Kind::Open)
        && kind(name) == Some(Kind::Str)
        && kind(c1) == Some(Kind::Punct(b','))
        && kind(value) == Some(Kind::Str)
        && kind(c2) == Some(Kind::Punct(b','))
        && kind(close) == Some(Kind::Close)
        && match (next(), next(), next()) {
            (None, _, _) => true,
            (a, Some(alias), None) => {
                is_word(a, "as") && matches!(alias.kind, Kind::Word | Kind::QIdent)
            }
            _ => false,
        };
    let (Some(name), Some(value)) = (name.filter(|_| exact), value) else {
        return Effect::Unsafe(Unsafe::SetConfig);
    };
    let Some(name) = literal_text(text(name)).filter(|n| is_parameter_name(n)) else {
        return Effect::Unsafe(Unsafe::SetConfig);
    };
    let name = name.to_ascii_lowercase();
    if LIST_PARAMETERS.contains(&name.as_str()) {
        return Effect::Unsafe(Unsafe::SetConfig);
    }
    tracked_set(&name, text(value))
}

/// The text of a `'…'` or `$$…$$` literal (`E'…'` only without backslashes).
/// The setting each `set_config(…)` call of a statement names (lowercased), for access
/// contexts (`sql::fixed`); `None` when a call's first argument is not a string literal (or the
/// name is not followed by `(`): it could name anything.
pub(crate) fn set_config_names(stmt: &str) -> Option<Vec<String>> {
    let b = stmt.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(t) = next_token(b, i) {
        i = t.end;
        toks.push(t);
    }
    let text = |t: &Token| slice(stmt, t.start, t.end);
    let mut names = Vec::new();
    for (at, t) in toks.iter().enumerate() {
        let named = match t.kind {
            Kind::Word => text(t).eq_ignore_ascii_case("set_config"),
            Kind::QIdent => text(t).eq_ignore_ascii_case("\"set_config\""),
            _ => false,
        };
        if !named {
            continue;
        }
        match (toks.get(at + 1), toks.get(at + 2), toks.get(at + 3)) {
            (Some(o), Some(n), Some(c))
                if o.kind == Kind::Open && n.kind == Kind::Str && c.kind == Kind::Punct(b',') =>
            {
                names.push(literal_text(text(n))?.to_ascii_lowercase());
            }
            _ => return None,
        }
    }
    Some(names)
}

fn literal_text(lit: &str) -> Option<String> {
    if let Some(inner) = lit.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')) {
        return Some(inner.replace("''", "'"));
    }
    if let Some(inner) = lit
        .strip_prefix(['e', 'E'])
        .and_then(|l| l.strip_prefix('\''))
        .and_then(|l| l.strip_suffix('\''))
    {
        return (!inner.contains('\\')).then(|| inner.replace("''", "'"));
    }
    let tag_end = lit.get(1..)?.find('$')? + 2;
    let tag = &lit[..tag_end];
    let inner = lit.get(tag_end..)?.strip_suffix(tag)?;
    Some(inner.to_string())
}

/// Dotted simple identifiers: what `SET name TO …` accepts unquoted.
fn is_parameter_name(n: &str) -> bool {
    !n.is_empty()
        && n.split('.').all(|part| {
            part.bytes()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                && part.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use SessionCommand::*;

    fn set(n: &str, v: &str) -> Effect {
        Effect::Track(set_cmd(n, v))
    }
    fn unsafe_(u: Unsafe) -> Effect {
        Effect::Unsafe(u)
    }
    fn all(sql: &str) -> Vec<(&str, Effect)> {
        statements(sql).collect()
    }
    /// The effect of a one-statement string.
    fn one(sql: &str) -> Effect {
        let v = all(sql);
        assert_eq!(v.len(), 1, "{sql:?} → {v:?}");
        v.into_iter().next().unwrap().1
    }

    #[test]
    fn ordinary_statements_are_none() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
            "UPDATE pgbench_accounts SET abalance = abalance + -2788 WHERE aid = 4711;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 4711, -2788, CURRENT_TIMESTAMP);",
            "BEGIN",
            "END;",
            "CREATE TABLE t (a int)",
            "CREATE UNLOGGED TABLE t (a int)",
            "CREATE TABLE temp_x AS SELECT 1",
            "SELECT 'pg_advisory_lock(1)', \"my col\" FROM t",
            "select my_advisory_lock from t",
            "select advisory_lock(1)",
            "select pg_advisory_xact_lock(1)",
            "select pg_advisory_unlock(1)",
            "SELECT 'set_config(''a'', ''b'', false)'",
            "SELECT 'DO', $$CALL x$$, 'into temp x'",
            "INSERT INTO temp VALUES (1)",
            "SELECT * INTO t2 FROM t",
            "SELECT * INTO TABLE t2 FROM t",
            "DECLARE c CURSOR FOR SELECT 'with hold'",
            "DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1",
            "PREPARE TRANSACTION 'tx1'",
            "COMMIT PREPARED 'tx1'",
            "SET LOCAL search_path TO a",
            "SET LOCAL ROLE bob",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "RESET TRANSACTION ISOLATION LEVEL",
            "SELECT set_config('a.b', 'c', true)",
            "SELECT set_config('a.b', current_setting('x') || 'y', true), 1",
            "EXPLAIN ANALYZE SELECT 1",
            "EXPLAIN (ANALYZE, BUFFERS) CREATE TABLE t AS SELECT 1",
            "NOTIFY chan, 'x'",
            "SELECT pg_notify('chan', 'x')",
            "COPY t FROM STDIN",
            "(SELECT 1)",
            "VALUES (1)",
        ] {
            assert_eq!(one(sql), Effect::None, "{sql}");
        }
    }

    #[test]
    fn track_forms() {
        let cases: &[(&str, Effect)] = &[
            ("SET search_path TO a, b;", set("search_path", "a, b")),
            ("set Statement_Timeout = '5s'", set("statement_timeout", "'5s'")),
            ("SET SESSION TimeZone TO 'UTC'", set("timezone", "'UTC'")),
            ("SET TIME ZONE 'Europe/Paris'", set("timezone", "'Europe/Paris'")),
            ("SET TIME ZONE LOCAL", set("timezone", "DEFAULT")),
            ("SET TIME ZONE -7", set("timezone", "-7")),
            ("/* c */ SET application_name = x", set("application_name", "x")),
            ("SET application_name = 'a;b' -- c", set("application_name", "'a;b'")),
            ("SET a.b = 1 /* trailing */ ;", set("a.b", "1")),
            ("SET x TO DEFAULT", set("x", "DEFAULT")),
            ("SET NAMES 'UTF8'", set("client_encoding", "'UTF8'")),
            ("SET client_encoding = 'LATIN1'", set("client_encoding", "'LATIN1'")),
            ("SET SCHEMA 'app'", set("search_path", "'app'")),
            ("SET XML OPTION DOCUMENT", set("xmloption", "document")),
            ("SET standard_conforming_strings = on", set("standard_conforming_strings", "on")),
            ("RESET search_path", Effect::Track(Reset { name: "search_path".into() })),
            ("RESET TIME ZONE", Effect::Track(Reset { name: "timezone".into() })),
            ("reset all;", Effect::Track(ResetAll)),
            ("DISCARD ALL", Effect::Track(DiscardAll)),
            ("DEALLOCATE PREPARE s1", Effect::Track(Deallocate { name: "s1".into() })),
            ("deallocate \"S1\"", Effect::Track(Deallocate { name: "S1".into() })),
            ("DEALLOCATE ALL", Effect::Track(DeallocateAll)),
            ("DEALLOCATE \"all\"", Effect::Track(Deallocate { name: "all".into() })),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                set("default_transaction_isolation", "'repeatable read'"),
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                set("default_transaction_read_only", "on"),
            ),
            (
                "set session characteristics as transaction isolation level read committed, read write not deferrable",
                Effect::TrackMany(vec![
                    set_cmd("default_transaction_isolation", "'read committed'"),
                    set_cmd("default_transaction_read_only", "off"),
                    set_cmd("default_transaction_deferrable", "off"),
                ]),
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION DEFERRABLE ISOLATION LEVEL READ UNCOMMITTED",
                Effect::TrackMany(vec![
                    set_cmd("default_transaction_deferrable", "on"),
                    set_cmd("default_transaction_isolation", "'read uncommitted'"),
                ]),
            ),
            ("SELECT set_config('Work_Mem', '64MB', false)", set("work_mem", "'64MB'")),
            (
                "select pg_catalog.set_config('app.user', 'it''s', FALSE);",
                set("app.user", "'it''s'"),
            ),
            ("SELECT set_config('a.b', E'x\\'y', false) AS s", set("a.b", "E'x\\'y'")),
            ("SELECT set_config($$a.b$$, $v$x$v$, false)", set("a.b", "$v$x$v$")),
        ];
        for (sql, want) in cases {
            assert_eq!(&one(sql), want, "{sql}");
        }
        let e = one("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, DEFERRABLE");
        assert_eq!(e.tracked().len(), 2);
        assert_eq!(Effect::None.tracked(), &[]);
    }

    #[test]
    fn listen_and_unlisten() {
        assert_eq!(one("LISTEN Chan"), Effect::Listen("chan".into()));
        assert_eq!(
            one("listen \"Chan\"\"x\";"),
            Effect::Listen("Chan\"x".into())
        );
        assert_eq!(one("UNLISTEN chan"), Effect::Unlisten(Some("chan".into())));
        assert_eq!(one("UNLISTEN *"), Effect::Unlisten(None));
        let long = "x".repeat(70);
        assert_eq!(
            one(&format!("LISTEN {long}")),
            Effect::Listen("x".repeat(63))
        );
        assert_eq!(one("LISTEN a b"), unsafe_(Unsafe::Other));
        assert_eq!(one("LISTEN"), unsafe_(Unsafe::Other));
    }

    #[test]
    fn every_unsafe_class() {
        use Unsafe::*;
        let cases: &[(&str, Unsafe)] = &[
            ("DO $$BEGIN PERFORM 1; END$$", DoBlock),
            ("do language plpgsql 'begin end'", DoBlock),
            ("CALL p(1)", Call),
            ("SELECT set_config('a.b', current_user, false)", SetConfig),
            ("SELECT set_config(name, 'v', false) FROM t", SetConfig),
            ("SELECT set_config('a.b', 'c', is_local)", SetConfig),
            ("SELECT 1, set_config('a.b', 'c', false)", SetConfig),
            (
                "SELECT set_config('a.b', 'c', false), set_config('d.e', 'f', false)",
                SetConfig,
            ),
            ("SELECT set_config('search_path', 'a, b', false)", SetConfig),
            ("SELECT \"set_config\"('a.b', x, false)", SetConfig),
            ("UPDATE t SET c = set_config('a.b', 'c', false)", SetConfig),
            ("SELECT set_config('bad name', 'c', false)", SetConfig),
            ("SELECT set_config('a.b', 'c', false) FROM t", SetConfig),
            ("CREATE TEMP TABLE t (a int)", TempObject),
            ("create temporary table t as select 1", TempObject),
            ("CREATE GLOBAL TEMPORARY TABLE t (a int)", TempObject),
            ("CREATE LOCAL TEMP SEQUENCE s", TempObject),
            ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", TempObject),
            ("CREATE TABLE pg_temp.t (a int)", TempObject),
            (
                "CREATE FUNCTION pg_temp.f() RETURNS int AS 'select 1' LANGUAGE sql",
                TempObject,
            ),
            ("CREATE VIEW \"pg_temp\".v AS SELECT 1", TempObject),
            ("SELECT * INTO TEMP t2 FROM t", TempObject),
            ("SELECT * INTO TEMPORARY TABLE t2 FROM t", TempObject),
            ("select 1 as a into local temp t2", TempObject),
            ("SELECT 1 INTO pg_temp.t2", TempObject),
            ("SELECT 1 INTO TABLE \"pg_temp\".t2", TempObject),
            ("(SELECT 1 INTO TEMP t2)", TempObject),
            (
                "WITH x AS (SELECT 1) SELECT * INTO TEMP t2 FROM x",
                TempObject,
            ),
            (
                "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
                TempObject,
            ),
            ("SET ROLE bob", Role),
            ("SET SESSION ROLE bob", Role),
            ("SET role = bob", Role),
            ("RESET ROLE", Role),
            ("SELECT set_config('role', 'bob', false)", Role),
            ("SET SESSION AUTHORIZATION bob", SessionAuthorization),
            ("RESET SESSION AUTHORIZATION", SessionAuthorization),
            ("SET session_authorization TO bob", SessionAuthorization),
            ("PREPARE p AS SELECT 1", SqlPrepare),
            ("PREPARE p (int) AS SELECT $1", SqlPrepare),
            ("select PG_ADVISORY_LOCK(1)", AdvisoryLock),
            ("select pg_try_advisory_lock_shared(1)", AdvisoryLock),
            ("select pg_advisory_lock_shared(1)", AdvisoryLock),
            ("select pg_catalog.pg_try_advisory_lock(1)", AdvisoryLock),
            ("select y, pg_advisory_lock(2)", AdvisoryLock),
            (
                "UPDATE t SET a = 1 WHERE pg_try_advisory_lock(id)",
                AdvisoryLock,
            ),
            ("CALL p(pg_advisory_lock(1))", AdvisoryLock),
            ("SELECT \"pg_advisory_lock\"(1)", AdvisoryLock),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", HoldCursor),
            (
                "declare \"C\" binary no scroll cursor with hold for select 1",
                HoldCursor,
            ),
            ("LOAD 'auto_explain'", Load),
            ("DISCARD TEMP", Discard),
            ("DISCARD TEMPORARY", Discard),
            ("DISCARD PLANS", Discard),
            ("discard sequences;", Discard),
            ("SET \"search_path\" TO a", Other),
            ("SET x FROM CURRENT", Other),
            ("SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE", Other),
            ("SET x", Other),
            ("SET x =", Other),
            ("SET", Other),
            ("RESET a b", Other),
            ("DISCARD", Other),
            ("SET standard_conforming_strings = off", Other),
            ("SET client_encoding TO 'SJIS'", Other),
            ("SET NAMES 'Shift_JIS'", Other),
            (
                "SELECT set_config('standard_conforming_strings', 'off', false)",
                Other,
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(one(sql), unsafe_(*want), "{sql}");
        }
        for u in [
            DoBlock,
            Call,
            SetConfig,
            TempObject,
            Role,
            SessionAuthorization,
            SqlPrepare,
            AdvisoryLock,
            HoldCursor,
            Load,
            Discard,
            Other,
        ] {
            assert!(!u.class().is_empty());
        }
        assert_eq!(TempObject.class(), "CREATE TEMP");
    }

    #[test]
    fn splitting() {
        let stmts = |sql| all(sql).into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        let cases: &[(&str, &[&str])] = &[
            ("SET a = 1; SELECT 1", &["SET a = 1", "SELECT 1"]),
            ("SELECT 1;", &["SELECT 1"]),
            ("SELECT 1;;  ; ", &["SELECT 1"]),
            (";;", &[]),
            ("", &[]),
            ("  -- only a comment\n /* and /* nested */ one */ ;", &[]),
            ("SELECT 'a;b''c;'; SELECT 2", &["SELECT 'a;b''c;'", "SELECT 2"]),
            ("SELECT E'\\';' ; SELECT 2", &["SELECT E'\\';'", "SELECT 2"]),
            ("SELECT e'\\\\'; SELECT 2", &["SELECT e'\\\\'", "SELECT 2"]),
            ("SELECT 'x\\'; SELECT 2", &["SELECT 'x\\'", "SELECT 2"]),
            ("SELECT \"a;\"\"b\"; SELECT 2", &["SELECT \"a;\"\"b\"", "SELECT 2"]),
            ("SELECT $$a;b$$; SELECT 2", &["SELECT $$a;b$$", "SELECT 2"]),
            ("SELECT $t$a;$$;$x$;$t$; SELECT 2", &["SELECT $t$a;$$;$x$;$t$", "SELECT 2"]),
            ("SELECT $1; SELECT 2", &["SELECT $1", "SELECT 2"]),
            ("SELECT a$b$c; SELECT 2", &["SELECT a$b$c", "SELECT 2"]),
            ("SELECT 1 -- ; x\n; SELECT 2", &["SELECT 1", "SELECT 2"]),
            ("SELECT 1 -- ; x\r; SELECT 2", &["SELECT 1", "SELECT 2"]),
            ("SELECT /* ; /* ; */ ; */ 1; SELECT 2", &["SELECT /* ; /* ; */ ; */ 1", "SELECT 2"]),
            ("SELECT 2*/*c;*/3; SELECT 4", &["SELECT 2*/*c;*/3", "SELECT 4"]),
            ("SELECT (1; 2)", &["SELECT (1", "2)"]),
            ("SELECT 'unterminated; SELECT 2", &["SELECT 'unterminated; SELECT 2"]),
            ("SELECT E'unterminated\\", &["SELECT E'unterminated\\"]),
            ("SELECT \"unterminated; x", &["SELECT \"unterminated; x"]),
            ("SELECT $$unterminated; x", &["SELECT $$unterminated; x"]),
            ("SELECT 1 /* unterminated; x", &["SELECT 1"]),
            ("SELECT 1 -- unterminated; x", &["SELECT 1"]),
            ("SELECT 'é;ü'; SELECT 'ö'", &["SELECT 'é;ü'", "SELECT 'ö'"]),
            ("SELECT été; SELECT 2", &["SELECT été", "SELECT 2"]),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; SELECT 3",
                &[
                    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END",
                    "SELECT 3",
                ],
            ),
            (
                "create or replace procedure p(begin int) begin atomic insert into t values (1); end; select 3",
                &[
                    "create or replace procedure p(begin int) begin atomic insert into t values (1); end",
                    "select 3",
                ],
            ),
            (
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); SELECT 3",
                &[
                    "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
                    "SELECT 3",
                ],
            ),
            ("BEGIN; SELECT 1; END;", &["BEGIN", "SELECT 1", "END"]),
        ];
        for (sql, want) in cases {
            assert_eq!(&stmts(sql), want, "{sql}");
        }
        // Effects per statement.
        assert_eq!(
            all("SET a = 1; SELECT 1; SET ROLE x; LISTEN c"),
            vec![
                ("SET a = 1", set("a", "1")),
                ("SELECT 1", Effect::None),
                ("SET ROLE x", unsafe_(Unsafe::Role)),
                ("LISTEN c", Effect::Listen("c".into())),
            ]
        );
        assert_eq!(
            all("SELECT 'x'; SET ROLE y")[1].1,
            unsafe_(Unsafe::Role),
            "a statement after a string"
        );
        // `xe'…'` is a type name and a standard string, not an E'' string: `\` escapes nothing.
        assert_eq!(
            all("SELECT xe'\\'; SET ROLE x; --'"),
            vec![
                ("SELECT xe'\\'", Effect::None),
                ("SET ROLE x", unsafe_(Unsafe::Role)),
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn splits_any_string(sql in any::<String>()) {
            check_split(&sql)?;
        }

        #[test]
        fn splits_sql_like_strings(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("'"), Just("''"), Just("E'"), Just("e'\\'"), Just("\\"), Just("\""),
                    Just("$$"), Just("$a$"), Just("$"), Just("$1"), Just("--"), Just("\n"),
                    Just("\r"), Just("/*"), Just("*/"), Just("/"), Just("*"), Just("-"),
                    Just(";"), Just(" "), Just("("), Just(")"), Just("é"), Just("set "),
                    Just("create function "), Just("begin atomic "), Just("end "), Just("case "),
                    Just("a"), Just("e"), Just("1"), Just("$e'"), Just("$$x$$"), Just("into temp "), Just("set_config('a.b', 'c', false)"),
                    Just("pg_advisory_lock(1)"), Just("listen x"), Just("declare c cursor with hold for "),
                ],
                0..40,
            )
        ) {
            check_split(&parts.concat())?;
        }
    }

    /// Statement boundaries from the token-by-token lexer alone.
    fn split_precise(sql: &str) -> Vec<(usize, usize)> {
        let (mut pos, mut out) = (0, Vec::new());
        while pos < sql.len() {
            let (f, next) = scan_precise(sql, pos);
            if f.start < f.end {
                out.push((f.start, f.end));
            }
            pos = next.max(pos + 1);
        }
        out
    }

    /// No panic; statements are non-empty slices of `sql`, in order, apart (a `;` at least
    /// between two); the fast splitter agrees with the token-by-token lexer.
    fn check_split(sql: &str) -> Result<(), TestCaseError> {
        let base = sql.as_ptr() as usize;
        let mut last_end: Option<usize> = None;
        let mut total = 0;
        let mut count = 0;
        let mut bounds = Vec::new();
        for (stmt, _effect) in statements(sql) {
            let start = stmt.as_ptr() as usize - base;
            let end = start + stmt.len();
            bounds.push((start, end));
            prop_assert!(end <= sql.len());
            prop_assert_eq!(&sql[start..end], stmt);
            prop_assert!(!stmt.is_empty());
            if let Some(prev) = last_end {
                // At least a `;` between two statements.
                prop_assert!(start > prev, "overlap or no separator in {:?}", sql);
            }
            last_end = Some(end);
            total += stmt.len();
            count += 1;
        }
        prop_assert!(total + count.max(1) - 1 <= sql.len());
        prop_assert_eq!(
            bounds,
            split_precise(sql),
            "fast and precise disagree on {:?}",
            sql
        );
        Ok(())
    }
}
