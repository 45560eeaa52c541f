//! `column-mask`: per-role column masking by rewriting what a statement selects.
//! `SELECT ssn FROM customers` becomes `SELECT mask_ssn(ssn) AS ssn FROM customers` for a session
//! without the rule's `unmask_role`; the mask function is SQL the operator installs in the
//! database.
//!
//! KV / `config`:
//! - `rules`: JSON array of `{"table", "column", "mask_function", "unmask_role"}`. A `rules`
//!   value that does not parse (or a rule whose names are not plain identifiers) refuses every
//!   statement: a broken policy fails closed.
//! - `trust_session_roles` (bool, default false): take roles from the session attribute
//!   `helios.roles` (which `SET helios.roles = …` can change) when no `authenticate` plugin
//!   established an identity. By default only the identity's roles count; without an identity
//!   the session has no roles and every rule masks.
//! - `allow_predicates` (bool, default false): let a masked column appear outside a select list
//!   (WHERE, ORDER BY, GROUP BY, JOIN … ON, RETURNING, SET). By default such a statement is
//!   refused, because a predicate is an oracle (`WHERE ssn LIKE '1%'` reveals the value one
//!   character at a time).
//!
//! For each rule whose table the statement names (in the proxy's `tables`, or as a word of the
//! statement) and whose `unmask_role` the session lacks:
//! - every reference to the column in a select list — bare, qualified (`c.ssn`), quoted, inside
//!   expressions and at any depth (subqueries, CTEs) — is wrapped: `mask_fn(ref)`, and a
//!   reference that is the whole select item also gets `AS <column>` so the result keeps its
//!   name. Words are whole tokens (sqlparser's PostgreSQL tokenizer), so `ssn_hash`, `'ssn'`,
//!   `"x ssn"` or a comment never match. A reference already inside `mask_fn(…)` is left
//!   alone: applying the plugin twice gives the same text.
//! - `SELECT *` / `t.*`, a whole-row reference to the table or its alias (`SELECT c FROM
//!   customers c`, `row_to_json(c)`), `TABLE customers` and `COPY customers` are refused.
//!
//! What a rewrite does **not** stop (see docs/plugins.md): views, functions and rules that read
//! the column on the server (`SELECT * FROM customer_view`, `SELECT f()`), statements inside
//! function bodies or `DO` blocks, a `mask_function` that a user can shadow through
//! `search_path` (schema-qualify it), and another table's column of the same name being masked
//! too (over-masking, not a leak).
use std::collections::BTreeSet;

use helios_plugin_abi::*;
use serde::Deserialize;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

/// One masking rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MaskRule {
    /// The table (optionally schema-qualified; matched on its last part, case-insensitively).
    pub table: String,
    /// The column.
    pub column: String,
    /// The SQL function applied to it (optionally schema-qualified).
    pub mask_function: String,
    /// Sessions with this role see the column unmasked.
    pub unmask_role: String,
}

/// The block-reason prefix.
const P: &str = "column-mask:";

fn plain_ident(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|p| {
            let mut c = p.chars();
            matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
                && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '$')
        })
}

impl MaskRule {
    fn valid(&self) -> bool {
        plain_ident(&self.table)
            && plain_ident(&self.column)
            && !self.column.contains('.')
            && plain_ident(&self.mask_function)
            && !self.unmask_role.trim().is_empty()
    }

    fn table_name(&self) -> String {
        self.table
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    }
}

/// The session's roles: the identity's; with `trust_session_roles`, else `helios.roles`.
pub fn session_roles(h: &HookContext, trust_session_roles: bool) -> BTreeSet<String> {
    if let Some(id) = &h.identity {
        return id.roles.iter().map(|r| r.trim().to_owned()).collect();
    }
    if trust_session_roles {
        if let Some(r) = h.attributes.get("helios.roles") {
            return r
                .split(',')
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect();
        }
    }
    BTreeSet::new()
}

/// A significant token and its byte range in the statement.
struct Tok {
    t: Token,
    start: usize,
    end: usize,
}

fn tokens(sql: &str) -> Option<Vec<Tok>> {
    let dialect = PostgreSqlDialect {};
    let spanned: Vec<TokenWithSpan> = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .ok()?;
    // Line starts, to turn (line, column in chars) into byte offsets.
    let mut lines = vec![0usize];
    for (i, b) in sql.bytes().enumerate() {
        if b == b'\n' {
            lines.push(i + 1);
        }
    }
    let offset = |line: u64, col: u64| -> Option<usize> {
        let start = *lines.get((line as usize).checked_sub(1)?)?;
        let rest = &sql[start..];
        let skip = (col as usize).checked_sub(1)?;
        Some(
            start
                + rest
                    .char_indices()
                    .nth(skip)
                    .map(|(i, _)| i)
                    .unwrap_or(rest.len()),
        )
    };
    let mut out = Vec::with_capacity(spanned.len());
    for s in spanned {
        if matches!(s.token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        let start = offset(s.span.start.line, s.span.start.column)?;
        let end = offset(s.span.end.line, s.span.end.column)?;
        out.push(Tok {
            t: s.token,
            start,
            end,
        });
    }
    Some(out)
}

fn word(t: &Token) -> Option<&Word> {
    match t {
        Token::Word(w) => Some(w),
        _ => None,
    }
}

fn kw(t: &Token, k: Keyword) -> bool {
    word(t).is_some_and(|w| w.quote_style.is_none() && w.keyword == k)
}

/// Does the word name `name` (lower case)? Unquoted words fold to lower case; quoted ones must
/// match exactly.
fn names(w: &Word, name: &str) -> bool {
    match w.quote_style {
        None => w.value.eq_ignore_ascii_case(name),
        Some('"') => w.value == name,
        Some(_) => false,
    }
}

/// Keywords that end a select list at its own level.
const END_OF_LIST: &[Keyword] = &[
    Keyword::FROM,
    Keyword::INTO,
    Keyword::WHERE,
    Keyword::GROUP,
    Keyword::HAVING,
    Keyword::WINDOW,
    Keyword::ORDER,
    Keyword::LIMIT,
    Keyword::OFFSET,
    Keyword::FETCH,
    Keyword::FOR,
    Keyword::UNION,
    Keyword::INTERSECT,
    Keyword::EXCEPT,
];

/// Keywords after which a word is an operand (so not an alias).
const OPERAND_BEFORE: &[Keyword] = &[
    Keyword::SELECT,
    Keyword::DISTINCT,
    Keyword::ALL,
    Keyword::CASE,
    Keyword::WHEN,
    Keyword::THEN,
    Keyword::ELSE,
    Keyword::AND,
    Keyword::OR,
    Keyword::NOT,
    Keyword::IS,
    Keyword::IN,
    Keyword::LIKE,
    Keyword::ILIKE,
    Keyword::SIMILAR,
    Keyword::BETWEEN,
    Keyword::ON,
    Keyword::BY,
    Keyword::WHERE,
    Keyword::HAVING,
    Keyword::SET,
    Keyword::RETURNING,
    Keyword::USING,
    Keyword::ANY,
    Keyword::SOME,
    Keyword::EXISTS,
    Keyword::ARRAY,
    Keyword::INTERVAL,
    Keyword::VALUES,
];

/// Keywords that follow a table name without being its alias.
const NOT_ALIAS: &[Keyword] = &[
    Keyword::WHERE,
    Keyword::JOIN,
    Keyword::INNER,
    Keyword::LEFT,
    Keyword::RIGHT,
    Keyword::FULL,
    Keyword::CROSS,
    Keyword::NATURAL,
    Keyword::ON,
    Keyword::USING,
    Keyword::GROUP,
    Keyword::ORDER,
    Keyword::LIMIT,
    Keyword::OFFSET,
    Keyword::FETCH,
    Keyword::FOR,
    Keyword::UNION,
    Keyword::INTERSECT,
    Keyword::EXCEPT,
    Keyword::WINDOW,
    Keyword::HAVING,
    Keyword::RETURNING,
    Keyword::SET,
    Keyword::VALUES,
    Keyword::TABLESAMPLE,
    Keyword::DEFAULT,
    Keyword::SELECT,
    Keyword::FROM,
    Keyword::TO,
    Keyword::WITH,
    Keyword::LATERAL,
];

/// A SELECT whose list may be open: the paren depth of its SELECT keyword.
struct Frame {
    depth: i32,
    in_list: bool,
}

/// The outcome of [`apply_rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    /// No rule applies, or every reference is already masked.
    Unchanged,
    /// The statement with masked references.
    Rewritten(String),
    /// Refused, with the reason.
    Refused(String),
}

/// Applies `rules` (those the session is not exempt from) to `sql`. `tables` is what the proxy
/// found the statement to reference.
pub fn apply_rules(
    sql: &str,
    tables: &[&str],
    rules: &[MaskRule],
    roles: &BTreeSet<String>,
    allow_predicates: bool,
) -> Masked {
    let active: Vec<&MaskRule> = rules
        .iter()
        .filter(|r| !roles.contains(r.unmask_role.trim()))
        .collect();
    if active.is_empty() {
        return Masked::Unchanged;
    }
    // No rule's table name in the text at all (the common case): nothing to tokenize.
    let lower = sql.to_ascii_lowercase();
    let mentioned = |r: &MaskRule| {
        lower.contains(&r.table_name())
            || tables.iter().any(|x| {
                x.rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .eq_ignore_ascii_case(&r.table_name())
            })
    };
    if !active.iter().any(|r| mentioned(r)) {
        return Masked::Unchanged;
    }
    let Some(toks) = tokens(sql) else {
        // Unterminated literal or comment: cannot tell where the column is. Refuse when a
        // masked table may be involved (the server would reject the text anyway).
        return match active.iter().find(|r| lower.contains(&r.table_name())) {
            Some(r) => Masked::Refused(format!(
                "{P} cannot tokenize a statement that may read masked table {}",
                r.table
            )),
            None => Masked::Unchanged,
        };
    };
    // The rules whose table the statement names.
    let named = |r: &MaskRule| {
        let t = r.table_name();
        tables.iter().any(|x| {
            x.rsplit('.')
                .next()
                .unwrap_or_default()
                .eq_ignore_ascii_case(&t)
        }) || toks
            .iter()
            .any(|k| word(&k.t).is_some_and(|w| names(w, &t)))
    };
    let live: Vec<&MaskRule> = active.into_iter().filter(|r| named(r)).collect();
    if live.is_empty() {
        return Masked::Unchanged;
    }
    let first_table = &live[0].table;

    // TABLE t / COPY t: every column, unmasked.
    if let Some(first) = toks.first() {
        if kw(&first.t, Keyword::TABLE)
            || (kw(&first.t, Keyword::COPY)
                && !matches!(toks.get(1).map(|t| &t.t), Some(Token::LParen)))
        {
            return Masked::Refused(format!(
                "{P} TABLE/COPY of a table with masked columns ({first_table}) is not allowed; \
                 select the columns"
            ));
        }
    }

    // Names that denote a whole row of a masked table: the table and its aliases.
    let mut row_names: BTreeSet<String> = BTreeSet::new();
    for (i, k) in toks.iter().enumerate() {
        let Some(w) = word(&k.t) else { continue };
        if !live.iter().any(|r| names(w, &r.table_name())) {
            continue;
        }
        if matches!(toks.get(i + 1).map(|t| &t.t), Some(Token::Period)) {
            continue; // a schema or a qualifier: `customers.ssn`
        }
        row_names.insert(w.value.to_ascii_lowercase());
        let mut j = i + 1;
        if toks.get(j).is_some_and(|t| kw(&t.t, Keyword::AS)) {
            j += 1;
        }
        if let Some(a) = toks.get(j).and_then(|t| word(&t.t)) {
            let clause = a.quote_style.is_none() && NOT_ALIAS.contains(&a.keyword);
            if !clause {
                row_names.insert(a.value.to_ascii_lowercase());
            }
        }
    }

    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut depth = 0i32;
    // Index just before the first token of the current select item (SELECT, DISTINCT, ALL,
    // a list comma, or the parenthesis closing DISTINCT ON).
    let mut item_boundary: Vec<usize> = Vec::new();
    let mut distinct_on: Option<i32> = None;
    let n = toks.len();
    let sig = |i: usize| -> Option<&Token> { toks.get(i).map(|t| &t.t) };
    for i in 0..n {
        let t = &toks[i].t;
        let in_list = frames.last().is_some_and(|f| f.in_list);
        let list_depth = frames.last().map(|f| f.depth);
        match t {
            Token::LParen => {
                depth += 1;
                continue;
            }
            Token::RParen => {
                if distinct_on == Some(depth) {
                    distinct_on = None;
                    item_boundary.push(i);
                }
                depth -= 1;
                while frames.last().is_some_and(|f| f.depth > depth) {
                    frames.pop();
                }
                continue;
            }
            Token::SemiColon => {
                frames.clear();
                continue;
            }
            Token::Comma if in_list && list_depth == Some(depth) => {
                item_boundary.push(i);
                continue;
            }
            _ => {}
        }
        if kw(t, Keyword::SELECT) {
            while frames.last().is_some_and(|f| f.depth >= depth) {
                frames.pop();
            }
            frames.push(Frame {
                depth,
                in_list: true,
            });
            item_boundary.push(i);
            continue;
        }
        if in_list && list_depth == Some(depth) {
            if word(t).is_some_and(|w| w.quote_style.is_none() && END_OF_LIST.contains(&w.keyword))
            {
                if let Some(f) = frames.last_mut() {
                    f.in_list = false;
                }
                continue;
            }
            let after_select = i > 0 && kw(&toks[i - 1].t, Keyword::SELECT);
            if after_select && (kw(t, Keyword::DISTINCT) || kw(t, Keyword::ALL)) {
                item_boundary.push(i);
                if kw(t, Keyword::DISTINCT)
                    && sig(i + 1).is_some_and(|x| kw(x, Keyword::ON))
                    && matches!(sig(i + 2), Some(Token::LParen))
                {
                    distinct_on = Some(depth + 1);
                }
                continue;
            }
        }
        let at_item_start = |j: usize| j > 0 && item_boundary.last() == Some(&(j - 1));
        // SELECT * / t.*
        if matches!(t, Token::Mul) && in_list {
            let star = at_item_start(i)
                || (i >= 2
                    && matches!(toks[i - 1].t, Token::Period)
                    && word(&toks[i - 2].t).is_some());
            if star {
                return Masked::Refused(format!(
                    "{P} SELECT * on a table with masked columns ({first_table}) is not allowed; \
                     name the columns"
                ));
            }
            continue;
        }
        let Some(w) = word(t) else { continue };
        let next = sig(i + 1);
        if matches!(next, Some(Token::LParen) | Some(Token::Period)) {
            continue; // a function name or a qualifier
        }
        let prev = if i > 0 { Some(&toks[i - 1].t) } else { None };
        // A whole-row reference in a select list.
        if in_list
            && !matches!(prev, Some(Token::Period))
            && row_names.contains(&w.value.to_ascii_lowercase())
            && !is_alias_position(prev)
        {
            return Masked::Refused(format!(
                "{P} a whole-row reference to {} ({}) would bypass its masked columns",
                first_table, w.value
            ));
        }
        let Some(rule) = live
            .iter()
            .find(|r| names(w, &r.column.to_ascii_lowercase()))
        else {
            continue;
        };
        // The reference starts at its first qualifier.
        let mut start = i;
        while start >= 2
            && matches!(toks[start - 1].t, Token::Period)
            && word(&toks[start - 2].t).is_some()
        {
            start -= 2;
        }
        let before = if start > 0 {
            Some(&toks[start - 1].t)
        } else {
            None
        };
        if start == i && is_alias_position(before) {
            continue; // `x AS ssn`, `x ssn`: an output name, not the column
        }
        // Already masked: `mask_fn(ssn)`.
        if matches!(before, Some(Token::LParen)) && start >= 2 {
            let mut f_end = start - 1;
            let mut f_start = f_end - 1;
            while f_start >= 2
                && matches!(toks[f_start - 1].t, Token::Period)
                && word(&toks[f_start - 2].t).is_some()
            {
                f_start -= 2;
            }
            if word(&toks[f_end - 1].t).is_some() {
                f_end = toks[f_end - 1].end;
                let fname = &sql[toks[f_start].start..f_end];
                if fname.eq_ignore_ascii_case(&rule.mask_function) {
                    continue;
                }
            }
        }
        if !in_list {
            if allow_predicates {
                continue;
            }
            return Masked::Refused(format!(
                "{P} masked column {}.{} may only appear in a select list (a predicate or \
                 ordering on it would reveal it)",
                rule.table, rule.column
            ));
        }
        let (a, b) = (toks[start].start, toks[i].end);
        let whole_item = at_item_start(start)
            && match next {
                None | Some(Token::Comma) | Some(Token::SemiColon) => true,
                Some(Token::RParen) => list_depth == Some(depth),
                Some(x) => word(x)
                    .is_some_and(|w| w.quote_style.is_none() && END_OF_LIST.contains(&w.keyword)),
            };
        let mut text = format!("{}({})", rule.mask_function, &sql[a..b]);
        if whole_item {
            text.push_str(" AS ");
            text.push_str(&sql[toks[i].start..toks[i].end]);
        }
        edits.push((a, b, text));
    }
    if edits.is_empty() {
        return Masked::Unchanged;
    }
    let mut out = String::with_capacity(sql.len() + 32 * edits.len());
    let mut at = 0;
    for (a, b, text) in edits {
        out.push_str(&sql[at..a]);
        out.push_str(&text);
        at = b;
    }
    out.push_str(&sql[at..]);
    Masked::Rewritten(out)
}

/// Is a word after `prev` an output name (alias) rather than an operand?
fn is_alias_position(prev: Option<&Token>) -> bool {
    match prev {
        None => false,
        Some(Token::Word(w)) => {
            if w.quote_style.is_none() && w.keyword == Keyword::AS {
                return true;
            }
            !(w.quote_style.is_none() && OPERAND_BEFORE.contains(&w.keyword))
        }
        Some(Token::RParen)
        | Some(Token::SingleQuotedString(_))
        | Some(Token::Number(..))
        | Some(Token::DollarQuotedString(_)) => true,
        Some(_) => false,
    }
}

fn config_bool(key: &str) -> bool {
    kv_read_json::<bool>(key).unwrap_or(false)
}

/// The last `rules` value read and what it parsed to.
type RulesCache = Option<(Vec<u8>, Result<Vec<MaskRule>, String>)>;

thread_local! {
    // Parsing once per change of `rules`, not per call.
    static RULES: std::cell::RefCell<RulesCache> =
        const { std::cell::RefCell::new(None) };
}

/// The rules from KV: `Ok(empty)` when there are none, `Err` when they do not parse.
pub fn load_rules() -> Result<Vec<MaskRule>, String> {
    let Some(raw) = kv_read("rules") else {
        return Ok(Vec::new());
    };
    RULES.with(|c| {
        let mut c = c.borrow_mut();
        match &*c {
            Some((seen, parsed)) if *seen == raw => parsed.clone(),
            _ => {
                let parsed = parse_rules(&raw);
                *c = Some((raw, parsed.clone()));
                parsed
            }
        }
    })
}

fn parse_rules(raw: &[u8]) -> Result<Vec<MaskRule>, String> {
    let rules: Vec<MaskRule> = serde_json::from_slice(raw)
        .map_err(|e| format!("{P} the rules in KV do not parse: {e}"))?;
    if let Some(bad) = rules.iter().find(|r| !r.valid()) {
        return Err(format!(
            "{P} rule {bad:?} is invalid (table, column and mask_function must be plain \
             identifiers, unmask_role non-empty)"
        ));
    }
    Ok(rules)
}

fn mask(ctx: &QueryContext) -> PreQueryResult {
    let rules = match load_rules() {
        Ok(r) if r.is_empty() => return PreQueryResult::Continue,
        Ok(r) => r,
        Err(reason) => return PreQueryResult::Block { reason },
    };
    let roles = session_roles(&ctx.hook_context, config_bool("trust_session_roles"));
    let tables: Vec<&str> = ctx.tables.iter().map(|t| t.as_ref()).collect();
    match apply_rules(
        &ctx.query,
        &tables,
        &rules,
        &roles,
        config_bool("allow_predicates"),
    ) {
        Masked::Unchanged => PreQueryResult::Continue,
        Masked::Rewritten(sql) => PreQueryResult::Rewrite { sql },
        Masked::Refused(reason) => PreQueryResult::Block { reason },
    }
}
export_pre_query!(mask);

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<MaskRule> {
        vec![
            MaskRule {
                table: "customers".into(),
                column: "ssn".into(),
                mask_function: "mask_ssn".into(),
                unmask_role: "pii_reader".into(),
            },
            MaskRule {
                table: "public.customers".into(),
                column: "email".into(),
                mask_function: "masking.mask_email".into(),
                unmask_role: "support".into(),
            },
        ]
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn run(sql: &str) -> Masked {
        apply_rules(sql, &["customers"], &rules(), &none(), false)
    }

    fn rewritten(sql: &str) -> String {
        match run(sql) {
            Masked::Rewritten(s) => s,
            m => panic!("{sql}: {m:?}"),
        }
    }

    fn refused(sql: &str) -> String {
        match run(sql) {
            Masked::Refused(r) => r,
            m => panic!("{sql}: {m:?}"),
        }
    }

    #[test]
    fn bare_and_qualified_columns_are_masked_and_keep_their_names() {
        assert_eq!(
            rewritten("SELECT id, ssn FROM customers"),
            "SELECT id, mask_ssn(ssn) AS ssn FROM customers"
        );
        assert_eq!(
            rewritten("select c.ssn, c.email from customers c where c.id = $1"),
            "select mask_ssn(c.ssn) AS ssn, masking.mask_email(c.email) AS email from customers c where c.id = $1"
        );
        assert_eq!(
            rewritten("SELECT \"ssn\" FROM public.customers"),
            "SELECT mask_ssn(\"ssn\") AS \"ssn\" FROM public.customers"
        );
        // An alias the user chose stays.
        assert_eq!(
            rewritten("SELECT ssn AS s, ssn t FROM customers"),
            "SELECT mask_ssn(ssn) AS s, mask_ssn(ssn) t FROM customers"
        );
        assert_eq!(
            rewritten("SELECT DISTINCT ssn FROM customers"),
            "SELECT DISTINCT mask_ssn(ssn) AS ssn FROM customers"
        );
        // The last item before the end of the statement and before a closing parenthesis.
        assert_eq!(
            rewritten("SELECT x FROM (SELECT ssn FROM customers) s"),
            "SELECT x FROM (SELECT mask_ssn(ssn) AS ssn FROM customers) s"
        );
    }

    #[test]
    fn expressions_over_the_column_get_the_masked_value() {
        assert_eq!(
            rewritten("SELECT lower(ssn), ssn || '!' AS x FROM customers"),
            "SELECT lower(mask_ssn(ssn)), mask_ssn(ssn) || '!' AS x FROM customers"
        );
        assert_eq!(
            rewritten("SELECT CASE WHEN ssn IS NULL THEN 'none' ELSE ssn END FROM customers"),
            "SELECT CASE WHEN mask_ssn(ssn) IS NULL THEN 'none' ELSE mask_ssn(ssn) END FROM customers"
        );
        assert_eq!(
            rewritten("SELECT (SELECT ssn FROM customers LIMIT 1)"),
            "SELECT (SELECT mask_ssn(ssn) AS ssn FROM customers LIMIT 1)"
        );
    }

    #[test]
    fn whole_words_only() {
        for sql in [
            "SELECT ssn_hash, my_ssn FROM customers",
            "SELECT 'ssn' FROM customers",
            "SELECT id /* ssn */ FROM customers -- ssn",
            "SELECT \"the ssn\" FROM customers",
            "SELECT $$ssn$$ FROM customers",
            "SELECT id AS ssn FROM customers",
            "SELECT ssn(id) FROM customers",
        ] {
            assert_eq!(run(sql), Masked::Unchanged, "{sql}");
        }
        // Quoted identifiers are case-sensitive: "SSN" is another column.
        assert_eq!(run("SELECT \"SSN\" FROM customers"), Masked::Unchanged);
        assert_ne!(run("SELECT SSN FROM customers"), Masked::Unchanged);
    }

    #[test]
    fn idempotent() {
        for sql in [
            "SELECT id, ssn FROM customers",
            "SELECT c.ssn, lower(ssn), c.email FROM customers c",
            "SELECT x FROM (SELECT ssn FROM customers) s",
        ] {
            let once = rewritten(sql);
            assert_eq!(run(&once), Masked::Unchanged, "{once}");
        }
        // Masked by the user already: not masked twice.
        assert_eq!(
            run("SELECT mask_ssn(ssn) AS ssn, MASKING.MASK_EMAIL(email) FROM customers"),
            Masked::Unchanged
        );
    }

    #[test]
    fn star_whole_row_table_and_copy_are_refused() {
        for sql in [
            "SELECT * FROM customers",
            "select id, c.* from customers c",
            "SELECT DISTINCT * FROM customers",
            "WITH x AS (SELECT ssn FROM customers) SELECT * FROM x",
            "SELECT c FROM customers c",
            "SELECT row_to_json(c) FROM customers AS c",
            "SELECT customers FROM customers",
            "TABLE customers",
            "COPY customers TO STDOUT",
        ] {
            let r = refused(sql);
            assert!(r.starts_with("column-mask:"), "{r}");
        }
        assert!(refused("SELECT * FROM customers").contains("SELECT *"));
        // count(*) and multiplication are not star projections.
        assert_eq!(
            run("SELECT count(*), id * 2 FROM customers"),
            Masked::Unchanged
        );
        // COPY of a query is masked like the query.
        assert_eq!(
            rewritten("COPY (SELECT ssn FROM customers) TO STDOUT"),
            "COPY (SELECT mask_ssn(ssn) AS ssn FROM customers) TO STDOUT"
        );
    }

    #[test]
    fn predicates_on_a_masked_column_are_refused_unless_allowed() {
        for sql in [
            "SELECT id FROM customers WHERE ssn = '123-45-6789'",
            "SELECT id FROM customers ORDER BY ssn",
            "SELECT count(*) FROM customers GROUP BY ssn",
            "UPDATE customers SET name = 'x' WHERE ssn LIKE '1%'",
            "DELETE FROM customers WHERE id = 1 RETURNING ssn",
        ] {
            assert!(refused(sql).contains("select list"), "{sql}");
        }
        assert_eq!(
            apply_rules(
                "SELECT ssn FROM customers WHERE ssn = $1",
                &["customers"],
                &rules(),
                &none(),
                true
            ),
            Masked::Rewritten("SELECT mask_ssn(ssn) AS ssn FROM customers WHERE ssn = $1".into())
        );
    }

    #[test]
    fn roles_exempt_and_other_tables_are_untouched() {
        let reader: BTreeSet<String> = ["pii_reader".to_string()].into();
        assert_eq!(
            apply_rules(
                "SELECT ssn, email FROM customers",
                &["customers"],
                &rules(),
                &reader,
                false
            ),
            Masked::Rewritten(
                "SELECT ssn, masking.mask_email(email) AS email FROM customers".into()
            )
        );
        let both: BTreeSet<String> = ["pii_reader".to_string(), "support".to_string()].into();
        assert_eq!(
            apply_rules(
                "SELECT * FROM customers",
                &["customers"],
                &rules(),
                &both,
                false
            ),
            Masked::Unchanged
        );
        assert_eq!(
            apply_rules(
                "SELECT ssn, * FROM employees",
                &["employees"],
                &rules(),
                &none(),
                false
            ),
            Masked::Unchanged
        );
        // Unterminated literal naming the table: refused; not naming it: left to the server.
        assert!(matches!(
            apply_rules(
                "SELECT ssn FROM customers WHERE x = 'oops",
                &[],
                &rules(),
                &none(),
                false
            ),
            Masked::Refused(_)
        ));
        assert_eq!(
            apply_rules("SELECT 'oops", &[], &rules(), &none(), false),
            Masked::Unchanged
        );
    }

    #[test]
    fn roles_come_from_the_identity_or_trusted_session_attributes() {
        let mut h = HookContext::default();
        h.attributes
            .insert("helios.roles".into(), "pii_reader, x".into());
        assert!(session_roles(&h, false).is_empty());
        assert_eq!(
            session_roles(&h, true),
            ["pii_reader".to_string(), "x".to_string()].into()
        );
        h.identity = Some(Identity {
            user_id: "u".into(),
            roles: vec!["analyst".into()],
            ..Default::default()
        });
        // With an identity, SET helios.roles cannot add roles.
        assert_eq!(session_roles(&h, true), ["analyst".to_string()].into());
    }

    fn qc(sql: &str, roles: Option<&str>) -> QueryContext<'static> {
        let mut q = QueryContext {
            query: sql.to_owned().into(),
            tables: vec!["customers".into()],
            ..Default::default()
        };
        if let Some(r) = roles {
            q.hook_context
                .attributes
                .insert("helios.roles".into(), r.into());
        }
        q
    }

    #[test]
    fn the_hook_reads_rules_and_switches_from_kv() {
        kv_clear_for_tests();
        assert_eq!(
            mask(&qc("SELECT ssn FROM customers", None)),
            PreQueryResult::Continue
        );
        kv_write(
            "rules",
            r#"[{"table":"customers","column":"ssn","mask_function":"mask_ssn","unmask_role":"pii_reader"}]"#,
        )
        .unwrap();
        let masked = PreQueryResult::Rewrite {
            sql: "SELECT mask_ssn(ssn) AS ssn FROM customers".into(),
        };
        assert_eq!(mask(&qc("SELECT ssn FROM customers", None)), masked);
        // helios.roles is ignored until trust_session_roles.
        assert_eq!(
            mask(&qc("SELECT ssn FROM customers", Some("pii_reader"))),
            masked
        );
        kv_write("trust_session_roles", "true").unwrap();
        assert_eq!(
            mask(&qc("SELECT ssn FROM customers", Some("pii_reader"))),
            PreQueryResult::Continue
        );
        assert!(matches!(
            mask(&qc("SELECT id FROM customers WHERE ssn = $1", None)),
            PreQueryResult::Block { .. }
        ));
        kv_write("allow_predicates", "true").unwrap();
        assert_eq!(
            mask(&qc("SELECT id FROM customers WHERE ssn = $1", None)),
            PreQueryResult::Continue
        );
        // A broken policy refuses everything.
        kv_write("rules", "[{\"table\": 1}]").unwrap();
        assert!(matches!(
            mask(&qc("SELECT 1", None)),
            PreQueryResult::Block { .. }
        ));
        kv_write(
            "rules",
            r#"[{"table":"customers","column":"ssn","mask_function":"x); drop table t; --","unmask_role":"r"}]"#,
        )
        .unwrap();
        match mask(&qc("SELECT 1", None)) {
            PreQueryResult::Block { reason } => assert!(reason.contains("invalid"), "{reason}"),
            r => panic!("{r:?}"),
        }
        kv_clear_for_tests();
    }
}
