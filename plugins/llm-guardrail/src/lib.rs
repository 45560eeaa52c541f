//! `llm-guardrail`: refuses dangerous SQL from AI traffic.
//!
//! AI traffic is what ai-classifier tagged (`plugin.<classifier>.ai_traffic = "true"`; config
//! `classifier`, default `ai-classifier`), a session that `SET helios.ai_traffic = true`, or —
//! on its own, without ai-classifier — an `application_name` containing one of `keywords`
//! (default gpt, claude, gemini, chatbot, agent, openai, anthropic). For such traffic it refuses:
//!
//! - DROP or TRUNCATE in any form (also `ALTER … DROP …`),
//! - DELETE or UPDATE without a WHERE of its own (a WHERE inside a subquery does not count),
//! - SELECT without LIMIT/FETCH against a table in `large_tables`,
//! - SELECT against a table in `tenant_scoped_tables` whose WHERE does not name
//!   `tenant_column` (default `tenant_id`),
//! - code it cannot inspect: DO blocks, CREATE FUNCTION/PROCEDURE (unless `allow_code = true`).
//!
//! The SQL is tokenized (module [`lex`]) and read as nested groups, so comments, case, string
//! literals, quoted identifiers and dollar quotes cannot fool it, and every statement of a
//! multi-statement query, every CTE and every subquery is checked. Reasons start with
//! `llm-guardrail:`. Docs: docs/plugins.md, "llm-guardrail".
use helios_plugin_abi::*;

pub mod lex;
use lex::{tokenize, Tok};

pub const PREFIX: &str = "llm-guardrail:";
pub const DEFAULT_CLASSIFIER: &str = "ai-classifier";
pub const DEFAULT_KEYWORDS: &[&str] = &[
    "gpt",
    "claude",
    "gemini",
    "chatbot",
    "agent",
    "openai",
    "anthropic",
];

/// A token or a parenthesized group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    T(Tok),
    G(Vec<Item>),
}

impl Item {
    fn word(&self) -> Option<&str> {
        match self {
            Item::T(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }
    fn is_word(&self, w: &str) -> bool {
        self.word() == Some(w)
    }
}

/// The statements of `toks` (split at `;` outside parentheses), each as nested groups.
pub fn statements(toks: Vec<Tok>) -> Vec<Vec<Item>> {
    let mut out = Vec::new();
    let mut stack: Vec<Vec<Item>> = vec![Vec::new()];
    for t in toks {
        match t {
            Tok::LParen => stack.push(Vec::new()),
            Tok::RParen if stack.len() > 1 => {
                let g = stack.pop().expect("len > 1");
                stack.last_mut().expect("root").push(Item::G(g));
            }
            Tok::RParen => {} // unbalanced: the server refuses it anyway
            Tok::Semi if stack.len() == 1 => {
                let s = std::mem::take(&mut stack[0]);
                if !s.is_empty() {
                    out.push(s);
                }
            }
            t => stack.last_mut().expect("root").push(Item::T(t)),
        }
    }
    while stack.len() > 1 {
        let g = stack.pop().expect("len > 1");
        stack.last_mut().expect("root").push(Item::G(g));
    }
    let s = stack.pop().expect("root");
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// A table name as configured: lowercased parts, `schema.table` or `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(pub Vec<String>);

impl Name {
    pub fn parse(s: &str) -> Name {
        Name(s.split('.').map(|p| p.trim().to_lowercase()).collect())
    }

    /// Same table name, and the same schema when both name one. An unqualified reference
    /// matches a qualified entry: the search path may well resolve it there.
    pub fn matches(&self, reference: &[String]) -> bool {
        let (a, b) = (&self.0, reference);
        match (a.last(), b.last()) {
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
        if a.len() >= 2 && b.len() >= 2 {
            return a[a.len() - 2] == b[b.len() - 2];
        }
        true
    }

    fn display(reference: &[String]) -> String {
        reference.join(".")
    }
}

/// What the guardrail enforces (KV config).
#[derive(Debug, Clone)]
pub struct Policy {
    pub large_tables: Vec<Name>,
    pub tenant_tables: Vec<Name>,
    pub tenant_column: String,
    pub allow_code: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            large_tables: Vec::new(),
            tenant_tables: Vec::new(),
            tenant_column: "tenant_id".into(),
            allow_code: false,
        }
    }
}

impl Policy {
    pub fn from_kv() -> Policy {
        let names = |k: &str| -> Vec<Name> {
            kv_read_json::<Vec<String>>(k)
                .unwrap_or_default()
                .iter()
                .map(|s| Name::parse(s))
                .collect()
        };
        Policy {
            large_tables: names("large_tables"),
            tenant_tables: names("tenant_scoped_tables"),
            tenant_column: kv_read_json::<String>("tenant_column")
                .map(|s| s.to_lowercase())
                .unwrap_or_else(|| "tenant_id".into()),
            allow_code: kv_read_json::<bool>("allow_code").unwrap_or(false),
        }
    }
}

/// A refused pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    Drop,
    Unfiltered(&'static str),
    NoLimit(String),
    NoTenant(String),
    Code(&'static str),
}

impl Violation {
    pub fn reason(&self, p: &Policy) -> String {
        match self {
            Violation::Drop => format!("{PREFIX} DROP/TRUNCATE forbidden in LLM-tagged traffic"),
            Violation::Unfiltered(verb) => {
                format!("{PREFIX} DELETE/UPDATE without WHERE forbidden ({verb} without WHERE)")
            }
            Violation::NoLimit(t) => {
                format!("{PREFIX} SELECT without LIMIT against large table {t}")
            }
            Violation::NoTenant(t) => format!(
                "{PREFIX} missing {} filter on tenant-scoped table {t}",
                p.tenant_column
            ),
            Violation::Code(what) => {
                format!("{PREFIX} {what} cannot be inspected; forbidden in LLM-tagged traffic")
            }
        }
    }
}

/// Words that end a FROM list or a WHERE clause at their level.
const CLAUSE_END: &[&str] = &[
    "where",
    "group",
    "having",
    "window",
    "order",
    "limit",
    "offset",
    "fetch",
    "for",
    "union",
    "intersect",
    "except",
    "returning",
    "on",
    "using",
];

fn is_subquery(g: &[Item]) -> bool {
    g.first()
        .and_then(Item::word)
        .is_some_and(|w| matches!(w, "select" | "with" | "values" | "table"))
}

/// Every violation in `sql` (empty: it may run). When a literal holds a backslash both
/// readings (`standard_conforming_strings` on and off) are checked.
pub fn evaluate(sql: &str, p: &Policy) -> Vec<Violation> {
    let mut out = Vec::new();
    for s in statements(tokenize(sql, false)) {
        check_statement(&s, p, &mut out);
    }
    if sql.contains('\\') {
        for s in statements(tokenize(sql, true)) {
            check_statement(&s, p, &mut out);
        }
    }
    out
}

fn check_statement(items: &[Item], p: &Policy, out: &mut Vec<Violation>) {
    let mut s = items;
    // Prefixes that run the statement after them: EXPLAIN [ANALYZE] [VERBOSE] [(…)], PREPARE
    // name [(types)] AS, CREATE … TABLE/VIEW … AS.
    loop {
        match s.first().and_then(Item::word) {
            Some("explain") => {
                s = &s[1..];
                while let Some(first) = s.first() {
                    if matches!(first, Item::G(_))
                        || first
                            .word()
                            .is_some_and(|w| matches!(w, "analyze" | "analyse" | "verbose"))
                    {
                        s = &s[1..];
                    } else {
                        break;
                    }
                }
            }
            Some("prepare") => match s.iter().position(|i| i.is_word("as")) {
                Some(at) => s = &s[at + 1..],
                None => break,
            },
            _ => break,
        }
    }
    let first = s.first().and_then(Item::word).unwrap_or("");
    match first {
        "drop" | "truncate" => out.push(Violation::Drop),
        "alter" if s.iter().any(|i| i.is_word("drop") || i.is_word("truncate")) => {
            out.push(Violation::Drop)
        }
        "do" if !p.allow_code => out.push(Violation::Code("a DO block")),
        "create" => {
            let head: Vec<&str> = s.iter().take(6).filter_map(Item::word).collect();
            if !p.allow_code && head.iter().any(|w| matches!(*w, "function" | "procedure")) {
                out.push(Violation::Code("a function body"));
            }
        }
        _ => {}
    }
    check_group(s, p, out);
}

/// Checks one level (a statement or a parenthesized group) and, first, every group inside it.
fn check_group(items: &[Item], p: &Policy, out: &mut Vec<Violation>) {
    for i in items {
        if let Item::G(g) = i {
            check_group(g, p, out);
        }
    }
    let mut at = 0;
    if items.first().is_some_and(|i| i.is_word("with")) {
        at = skip_ctes(items);
    }
    let Some(verb) = items.get(at).and_then(Item::word) else {
        return;
    };
    let rest = &items[at..];
    match verb {
        "delete" | "update" if !rest.iter().any(|i| i.is_word("where")) => {
            out.push(Violation::Unfiltered(if verb == "delete" {
                "DELETE"
            } else {
                "UPDATE"
            }));
        }
        "select" => check_select(rest, p, out),
        "insert" => {
            if let Some(s) = rest.iter().position(|i| i.is_word("select")) {
                check_select(&rest[s..], p, out);
            }
        }
        "table" => {
            // TABLE name = SELECT * FROM name.
            let name = qualified(&rest[1..]).0;
            let has_limit = has_limit(rest);
            table_rules(&name, has_limit, true, p, out);
        }
        _ => {}
    }
}

/// Index of the main statement after `WITH [RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED]
/// (body), …`.
fn skip_ctes(items: &[Item]) -> usize {
    let mut i = 1;
    if items.get(i).is_some_and(|x| x.is_word("recursive")) {
        i += 1;
    }
    loop {
        i += 1; // the name
        if matches!(items.get(i), Some(Item::G(_))) {
            i += 1;
        }
        if !items.get(i).is_some_and(|x| x.is_word("as")) {
            return i;
        }
        i += 1;
        while items
            .get(i)
            .is_some_and(|x| x.is_word("not") || x.is_word("materialized"))
        {
            i += 1;
        }
        if matches!(items.get(i), Some(Item::G(_))) {
            i += 1;
        }
        if matches!(items.get(i), Some(Item::T(Tok::Comma))) {
            i += 1;
            continue;
        }
        return i;
    }
}

/// A LIMIT (not `LIMIT ALL` / `LIMIT NULL`) or FETCH at this level.
fn has_limit(items: &[Item]) -> bool {
    items.iter().enumerate().any(|(k, i)| {
        (i.is_word("limit")
            && !items
                .get(k + 1)
                .is_some_and(|n| n.is_word("all") || n.is_word("null")))
            || i.is_word("fetch")
    })
}

/// `a`, `a.b`, `a.b.c` at the start of `items`: the parts and how many items they took.
fn qualified(items: &[Item]) -> (Vec<String>, usize) {
    let mut parts = Vec::new();
    let mut k = 0;
    while let Some(Item::T(t)) = items.get(k) {
        let Some(n) = t.name() else { break };
        parts.push(n.to_string());
        k += 1;
        if matches!(items.get(k), Some(Item::T(Tok::Dot))) {
            k += 1;
        } else {
            break;
        }
    }
    (parts, k)
}

fn check_select(items: &[Item], p: &Policy, out: &mut Vec<Violation>) {
    let limited = has_limit(items);
    // UNION / INTERSECT / EXCEPT: each arm has its own FROM and WHERE; a trailing LIMIT limits
    // the whole.
    for arm in items.split(|i| i.is_word("union") || i.is_word("intersect") || i.is_word("except"))
    {
        let filtered = where_names(arm, &p.tenant_column);
        for t in from_tables(arm) {
            table_rules(&t, limited, filtered, p, out);
        }
    }
}

fn table_rules(t: &[String], limited: bool, filtered: bool, p: &Policy, out: &mut Vec<Violation>) {
    if t.is_empty() {
        return;
    }
    if !limited && p.large_tables.iter().any(|n| n.matches(t)) {
        out.push(Violation::NoLimit(Name::display(t)));
    }
    if !filtered && p.tenant_tables.iter().any(|n| n.matches(t)) {
        out.push(Violation::NoTenant(Name::display(t)));
    }
}

/// The tables of the FROM list at this level (subqueries are groups, checked on their own;
/// `name(…)` is a function call).
fn from_tables(items: &[Item]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let Some(start) = items.iter().position(|i| i.is_word("from")) else {
        return out;
    };
    let mut expect = true;
    let mut k = start + 1;
    while k < items.len() {
        let i = &items[k];
        if let Some(w) = i.word() {
            if CLAUSE_END.contains(&w) && w != "on" && w != "using" {
                break;
            }
            match w {
                "join" => {
                    expect = true;
                    k += 1;
                    continue;
                }
                "on" | "using" => {
                    expect = false;
                    k += 1;
                    continue;
                }
                "only" | "lateral" | "natural" | "left" | "right" | "full" | "inner" | "cross"
                | "outer"
                    if expect || w != "only" =>
                {
                    k += 1;
                    continue;
                }
                _ => {}
            }
        }
        match i {
            Item::T(Tok::Comma) => expect = true,
            Item::T(Tok::Word(_) | Tok::Quoted(_)) if expect => {
                let (name, used) = qualified(&items[k..]);
                k += used;
                if !matches!(items.get(k), Some(Item::G(_))) {
                    out.push(name);
                }
                expect = false;
                continue;
            }
            Item::G(_) if expect => expect = false,
            _ => {}
        }
        k += 1;
    }
    out
}

/// Whether the WHERE at this level names `column` (in it or in its parenthesized
/// sub-expressions, not in a subquery).
fn where_names(items: &[Item], column: &str) -> bool {
    fn mentions(items: &[Item], column: &str) -> bool {
        items.iter().any(|i| match i {
            Item::T(t) => t.name() == Some(column),
            Item::G(g) => !is_subquery(g) && mentions(g, column),
        })
    }
    let Some(start) = items.iter().position(|i| i.is_word("where")) else {
        return false;
    };
    let rest = &items[start + 1..];
    let end = rest
        .iter()
        .position(|i| {
            i.word()
                .is_some_and(|w| CLAUSE_END.contains(&w) && w != "on" && w != "using")
        })
        .unwrap_or(rest.len());
    mentions(&rest[..end], column)
}

/// Whether this execution is AI traffic for the guardrail.
pub fn is_ai(h: &HookContext, classifier: &str, keywords: &[String]) -> bool {
    let tag = format!("{}ai_traffic", annotation_prefix(classifier));
    if h.attributes.get(&tag).is_some_and(|v| v == "true") {
        return true;
    }
    if h.attributes.get("helios.ai_traffic").is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "on" | "yes" | "1" | "t" | "y"
        )
    }) {
        return true;
    }
    let app = h.application_name.to_ascii_lowercase();
    keywords
        .iter()
        .any(|k| !k.is_empty() && app.contains(k.as_str()))
}

fn pre(ctx: &QueryContext) -> PreQueryResult {
    let classifier =
        kv_read_json::<String>("classifier").unwrap_or_else(|| DEFAULT_CLASSIFIER.into());
    let keywords: Vec<String> = kv_read_json::<Vec<String>>("keywords")
        .map(|v| v.into_iter().map(|s| s.to_ascii_lowercase()).collect())
        .unwrap_or_else(|| DEFAULT_KEYWORDS.iter().map(|s| s.to_string()).collect());
    if !is_ai(&ctx.hook_context, &classifier, &keywords) {
        return PreQueryResult::Continue;
    }
    let policy = Policy::from_kv();
    match evaluate(&ctx.query, &policy).first() {
        None => PreQueryResult::Continue,
        Some(v) => PreQueryResult::Block {
            reason: v.reason(&policy),
        },
    }
}
export_pre_query!(pre);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            large_tables: vec![Name::parse("events"), Name::parse("public.audit_log")],
            tenant_tables: vec![Name::parse("orders")],
            ..Policy::default()
        }
    }

    fn first(sql: &str) -> Option<Violation> {
        evaluate(sql, &policy()).into_iter().next()
    }

    fn ok(sql: &str) {
        assert_eq!(evaluate(sql, &policy()), vec![], "{sql}");
    }

    #[test]
    fn drop_and_truncate_in_any_form_and_case() {
        for sql in [
            "DROP TABLE users",
            "drop index i",
            "  DrOp SCHEMA s CASCADE",
            "TRUNCATE events",
            "/* hi */ truncate table x",
            "select 1; drop table users",
            "ALTER TABLE users DROP COLUMN email",
            "explain analyze drop table t",
            "PREPARE p AS TRUNCATE t",
        ] {
            assert_eq!(first(sql), Some(Violation::Drop), "{sql}");
        }
        ok("select 'drop table users'");
        ok("select 1 -- drop table users");
        ok("select \"drop\" from t where x = 1");
        ok("select $$ TRUNCATE $$");
        ok("insert into log(msg) values ('DROP TABLE x; TRUNCATE y')");
    }

    #[test]
    fn delete_and_update_need_their_own_where() {
        assert_eq!(
            first("DELETE FROM users"),
            Some(Violation::Unfiltered("DELETE"))
        );
        assert_eq!(
            first("update users set name = 'x'"),
            Some(Violation::Unfiltered("UPDATE"))
        );
        ok("DELETE FROM users WHERE id = 1");
        ok("update users set a = 1 where id = $1");
        ok("delete from t where current of c");
        // A WHERE inside a subquery, a string or a comment does not count.
        for sql in [
            "DELETE FROM users USING (SELECT id FROM x WHERE y) s",
            "update users set a = (select b from c where d = 1)",
            "delete from users -- where id = 1",
            "delete from users /* where */",
            "update t set note = 'where id = 1'",
            "delete from t where_not_a_keyword",
        ] {
            assert!(
                matches!(first(sql), Some(Violation::Unfiltered(_))),
                "{sql}: {:?}",
                first(sql)
            );
        }
        // Data-modifying CTEs and a WITH before the statement.
        assert_eq!(
            first("with d as (delete from t returning *) select * from d"),
            Some(Violation::Unfiltered("DELETE"))
        );
        assert_eq!(
            first("with x as (select 1) delete from t"),
            Some(Violation::Unfiltered("DELETE"))
        );
        ok("with x as (select id from y where z) delete from t where id in (select id from x)");
        ok("insert into t values (1) on conflict (id) do update set a = 1");
    }

    #[test]
    fn large_tables_need_a_limit_at_their_level() {
        assert_eq!(
            first("SELECT * FROM events"),
            Some(Violation::NoLimit("events".into()))
        );
        ok("select * from events limit 100");
        ok("SELECT * FROM Events ORDER BY ts FETCH FIRST 10 ROWS ONLY");
        ok("select * from users");
        assert!(first("select * from events limit all").is_some());
        assert!(first("select * from events -- limit 10").is_some());
        assert!(first("select * from events where note = 'limit 10'").is_some());
        // The limit must be at the level that reads the table.
        assert!(
            first("select * from users where id in (select user_id from events) limit 5").is_some()
        );
        ok("select * from (select * from events limit 10) e");
        assert!(first("select * from (select * from events) e limit 10").is_some());
        // Qualified names, joins, unions, TABLE, INSERT … SELECT, EXPLAIN.
        assert!(first("select * from public.events").is_some());
        assert!(first("select * from users u join events e on e.uid = u.id").is_some());
        assert!(first("select * from users, events").is_some());
        assert!(
            first("select * from audit_log").is_some(),
            "unqualified may resolve there"
        );
        ok("select * from other.audit_log");
        ok("select 1 from users union select 2 from events limit 3");
        assert!(first("select 1 from users union select 2 from events").is_some());
        assert!(first("TABLE events").is_some());
        assert!(first("insert into copy select * from events").is_some());
        assert!(first("explain analyze select * from events").is_some());
        ok("select * from generate_series(1, 10) events");
        ok("select events from users");
    }

    #[test]
    fn tenant_scoped_tables_need_a_tenant_predicate_in_their_where() {
        let v = Some(Violation::NoTenant("orders".into()));
        assert_eq!(first("select * from orders"), v);
        assert_eq!(first("select * from orders where id = 1"), v);
        ok("select * from orders where tenant_id = 7");
        ok("SELECT * FROM orders o WHERE o.TENANT_ID = $1 AND id = 2");
        ok("select * from orders where (status = 'x' and \"tenant_id\" = 1)");
        // Not in a string, a comment, a subquery or the join condition.
        assert_eq!(
            first("select * from orders where note = 'tenant_id = 1'"),
            v
        );
        assert_eq!(
            first("select * from orders where id = 1 -- and tenant_id = 1"),
            v
        );
        assert_eq!(
            first("select * from orders where id in (select id from t where tenant_id = 1)"),
            v
        );
        assert_eq!(
            first("select * from orders o join t on o.tenant_id = t.tenant_id"),
            v
        );
        // Each arm of a UNION is checked.
        assert_eq!(
            first("select id from orders where tenant_id = 1 union select id from orders"),
            v
        );
        // A subquery reading the table is checked too.
        assert_eq!(
            first("select * from users where id in (select uid from orders)"),
            v
        );
        // The configured column name.
        let p = Policy {
            tenant_column: "org_id".into(),
            ..policy()
        };
        assert_eq!(
            evaluate("select * from orders where org_id = 1", &p),
            vec![]
        );
        assert_eq!(
            evaluate("select * from orders where tenant_id = 1", &p)[0].reason(&p),
            "llm-guardrail: missing org_id filter on tenant-scoped table orders"
        );
    }

    #[test]
    fn code_it_cannot_inspect_is_refused_unless_allowed() {
        assert_eq!(
            first("DO $$ BEGIN EXECUTE 'DROP TABLE x'; END $$"),
            Some(Violation::Code("a DO block"))
        );
        assert_eq!(
            first("create or replace function f() returns void as $$ truncate t $$ language sql"),
            Some(Violation::Code("a function body"))
        );
        let p = Policy {
            allow_code: true,
            ..policy()
        };
        assert_eq!(evaluate("do $$ begin end $$", &p), vec![]);
        ok("create table t (id int)");
    }

    #[test]
    fn a_backslash_cannot_move_a_statement_out_of_sight() {
        // Read with standard_conforming_strings = off, this runs DROP TABLE.
        assert_eq!(
            first("select 'a\\'';drop table t;--'"),
            Some(Violation::Drop)
        );
        ok("select 'C:\\path'");
    }

    #[test]
    fn reasons_are_prefixed() {
        let p = policy();
        for v in [
            Violation::Drop,
            Violation::Unfiltered("DELETE"),
            Violation::NoLimit("events".into()),
            Violation::NoTenant("orders".into()),
            Violation::Code("a DO block"),
        ] {
            assert!(v.reason(&p).starts_with("llm-guardrail: "), "{v:?}");
        }
        assert_eq!(
            Violation::Drop.reason(&p),
            "llm-guardrail: DROP/TRUNCATE forbidden in LLM-tagged traffic"
        );
    }

    #[test]
    fn ai_traffic_by_tag_attribute_or_own_heuristic() {
        let kw: Vec<String> = DEFAULT_KEYWORDS.iter().map(|s| s.to_string()).collect();
        let mut h = HookContext {
            application_name: "psql".into(),
            ..HookContext::default()
        };
        assert!(!is_ai(&h, "ai-classifier", &kw));
        h.attributes
            .insert("plugin.ai-classifier.ai_traffic".into(), "true".into());
        assert!(is_ai(&h, "ai-classifier", &kw));
        assert!(!is_ai(&h, "cls", &kw), "another classifier name");
        h.attributes.clear();
        h.attributes.insert("helios.ai_traffic".into(), "on".into());
        assert!(is_ai(&h, "ai-classifier", &kw));
        let h = HookContext {
            application_name: "Claude-Bot".into(),
            ..HookContext::default()
        };
        assert!(is_ai(&h, "ai-classifier", &kw));
        assert!(!is_ai(&h, "ai-classifier", &["robot".to_string()]));
    }

    #[test]
    fn the_hook_reads_its_config_from_kv_and_leaves_humans_alone() {
        kv_clear_for_tests();
        kv_write("large_tables", r#"["events"]"#).unwrap();
        let ctx = |app: &str, sql: &str| QueryContext {
            query: sql.to_string().into(),
            hook_context: HookContext {
                application_name: app.to_string().into(),
                ..HookContext::default()
            },
            ..QueryContext::default()
        };
        assert!(matches!(
            pre(&ctx("claude-agent", "select * from events")),
            PreQueryResult::Block { reason } if reason.contains("large table events")
        ));
        assert_eq!(
            pre(&ctx("psql", "drop table events")),
            PreQueryResult::Continue
        );
        kv_write("keywords", r#"["robot"]"#).unwrap();
        assert_eq!(
            pre(&ctx("claude-agent", "drop table events")),
            PreQueryResult::Continue
        );
        assert!(matches!(
            pre(&ctx("robot-7", "drop table events")),
            PreQueryResult::Block { .. }
        ));
    }
}
