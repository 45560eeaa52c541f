//! `pgvector-router`: sends pgvector top-K queries — a distance operator (`<->` L2, `<#>` inner
//! product, `<=>` cosine) inside an `ORDER BY` — to the node tagged for vector search, so the
//! HNSW/IVF index stays hot on one replica. Everything else gets the proxy's default routing.
//!
//! - The target is the session attribute `helios.<tag>_node` the proxy derives from the topology
//!   (`tags = { vector = true }` on a node gives `helios.vector_node`, the first usable node with
//!   the tag). No attribute (no tagged node, or none usable) → default routing.
//! - KV / `config`: `tag` (JSON string, default `"vector"`) picks which node tag to follow.
//! - The statement is tokenized (sqlparser's PostgreSQL tokenizer): operators inside string
//!   literals, dollar quotes, quoted identifiers and comments are not operators; an operator
//!   outside an `ORDER BY` (a distance in the select list or a CTE) does not route.
//! - Only statements the proxy classified read-only are moved: a write with a vector `ORDER BY`
//!   (`DELETE … WHERE id IN (SELECT … ORDER BY v <-> $1 LIMIT 5)`) keeps default routing, which
//!   sends it to the primary.
use helios_plugin_abi::*;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The node tag followed when the KV has no `tag`.
pub const DEFAULT_TAG: &str = "vector";

fn is_distance_op(t: &Token) -> bool {
    match t {
        Token::TwoWayArrow | Token::Spaceship => true,
        Token::CustomBinaryOperator(op) => op == "<#>",
        _ => false,
    }
}

/// True when `sql` is a read that has a pgvector distance operator inside an `ORDER BY` clause
/// (at any nesting: a subquery's or a window's `ORDER BY` counts). A statement that does not
/// tokenize is not a vector query (the server reports its syntax error wherever it runs).
///
/// A read here: it starts with `SELECT`, `WITH`, `TABLE`, `VALUES` or `(`, and has no
/// `INSERT`/`UPDATE`/`DELETE`/`MERGE` (a data-modifying CTE), `INTO` or locking `FOR` word — on
/// top of the proxy's own `is_read_only`, which counts a data-modifying CTE as a query.
pub fn is_vector_top_k(sql: &str) -> bool {
    // Most statements have none of the operators' text at all: no tokenizing for them.
    if !["<->", "<#>", "<=>"].iter().any(|op| sql.contains(op)) {
        return false;
    }
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return false;
    };
    let sig: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let kw = |t: &Token, ks: &[Keyword]| matches!(t, Token::Word(w) if w.quote_style.is_none() && ks.contains(&w.keyword));
    let starts_as_read = sig.first().is_some_and(|t| {
        matches!(t, Token::LParen)
            || kw(
                t,
                &[
                    Keyword::SELECT,
                    Keyword::WITH,
                    Keyword::TABLE,
                    Keyword::VALUES,
                ],
            )
    });
    let writes = sig.iter().any(|t| {
        kw(
            t,
            &[
                Keyword::INSERT,
                Keyword::UPDATE,
                Keyword::DELETE,
                Keyword::MERGE,
                Keyword::INTO,
                Keyword::FOR,
            ],
        )
    });
    if !starts_as_read || writes {
        return false;
    }
    // The paren depths at which an ORDER BY clause is open.
    let mut open: Vec<i32> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < sig.len() {
        let t = sig[i];
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                open.retain(|&d| d < depth);
                depth -= 1;
            }
            Token::SemiColon => open.clear(),
            Token::Word(w) if w.quote_style.is_none() => match w.keyword {
                Keyword::ORDER if matches!(sig.get(i + 1), Some(Token::Word(b)) if b.keyword == Keyword::BY && b.quote_style.is_none()) =>
                {
                    open.push(depth);
                    i += 1;
                }
                // What ends an ORDER BY at its own level.
                Keyword::LIMIT
                | Keyword::OFFSET
                | Keyword::FETCH
                | Keyword::FOR
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::WINDOW
                | Keyword::RETURNING => open.retain(|&d| d < depth),
                _ => {}
            },
            t if is_distance_op(t) && !open.is_empty() => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// The decision, apart from the hook glue: `tag` from KV, the statement, the attributes.
pub fn decide(ctx: &QueryContext, tag: &str) -> RouteResult {
    if !ctx.is_read_only || !is_vector_top_k(&ctx.query) {
        return RouteResult::Default;
    }
    match ctx
        .hook_context
        .attributes
        .get(&format!("helios.{tag}_node"))
    {
        Some(node) if !node.trim().is_empty() => RouteResult::Node {
            target: node.trim().to_owned(),
        },
        _ => RouteResult::Default,
    }
}

fn route(ctx: &QueryContext) -> RouteResult {
    // The KV read only for the statements that need it.
    if !ctx.is_read_only || !is_vector_top_k(&ctx.query) {
        return RouteResult::Default;
    }
    let tag = kv_read_json::<String>("tag").unwrap_or_else(|| DEFAULT_TAG.to_owned());
    decide(ctx, &tag)
}
export_route!(route);

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn ctx<'a>(sql: &'a str, read_only: bool, attrs: &[(&str, &str)]) -> QueryContext<'a> {
        QueryContext {
            query: Cow::Borrowed(sql),
            is_read_only: read_only,
            hook_context: HookContext {
                attributes: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    const VEC: &[(&str, &str)] = &[("helios.vector_node", "r1")];

    fn node(t: &str) -> RouteResult {
        RouteResult::Node { target: t.into() }
    }

    #[test]
    fn each_operator_in_order_by_routes_to_the_vector_node() {
        for op in ["<->", "<#>", "<=>"] {
            let sql = format!("SELECT id FROM items ORDER BY embedding {op} '[1,2,3]' LIMIT 5");
            assert_eq!(
                decide(&ctx(&sql, true, VEC), DEFAULT_TAG),
                node("r1"),
                "{op}"
            );
            // Without spaces, with a parameter, lower case.
            let sql = format!("select id from items order by embedding{op}$1 limit 5");
            assert_eq!(
                decide(&ctx(&sql, true, VEC), DEFAULT_TAG),
                node("r1"),
                "{op}"
            );
        }
    }

    #[test]
    fn subquery_and_window_order_by_count() {
        let sql = "SELECT * FROM (SELECT id FROM items ORDER BY v <-> $1 LIMIT 10) s WHERE id > 3";
        assert!(is_vector_top_k(sql));
        assert!(is_vector_top_k(
            "SELECT id, row_number() OVER (ORDER BY v <=> $1) FROM items"
        ));
    }

    #[test]
    fn operator_without_order_by_is_default() {
        for sql in [
            "SELECT embedding <-> '[1,2]' AS d FROM items",
            "WITH d AS (SELECT v <#> $1 AS dist FROM items) SELECT * FROM d ORDER BY dist",
            // The ORDER BY ended at LIMIT; the operator comes after it, outside.
            "SELECT id FROM items ORDER BY id LIMIT (SELECT count(*) FROM t WHERE a <-> b < 1)",
            // Writes, also when the proxy's classification calls them read-only.
            "WITH d AS (DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY v <-> $1 LIMIT 1) RETURNING 1) SELECT 1",
            "SELECT id INTO x FROM items ORDER BY v <-> $1",
            "SELECT id FROM items ORDER BY v <-> $1 LIMIT 1 FOR UPDATE",
            "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY v <-> $1 LIMIT 5)",
            // The subquery's ORDER BY ended with its parenthesis.
            "SELECT id FROM (SELECT id FROM t ORDER BY id) s WHERE v <-> $1 < 0.5",
            "SELECT 1",
        ] {
            assert!(!is_vector_top_k(sql), "{sql}");
        }
    }

    #[test]
    fn not_fooled_by_literals_comments_or_quoted_identifiers() {
        for sql in [
            "SELECT id FROM items ORDER BY id, 'a <-> b' LIMIT 5",
            "SELECT id FROM items ORDER BY id /* v <-> $1 */ LIMIT 5",
            "SELECT id FROM items ORDER BY id -- v <=> $1\n LIMIT 5",
            "SELECT id FROM items ORDER BY $$ <#> $$ LIMIT 5",
            "SELECT id FROM items ORDER BY \"<->\" LIMIT 5",
            "SELECT id FROM items ORDER BY E'\\' <-> ' LIMIT 5",
            // "order by" inside a string does not open an ORDER BY.
            "SELECT 'order by', v <-> $1 FROM items",
        ] {
            assert!(!is_vector_top_k(sql), "{sql}");
        }
        // A comment between ORDER and BY still is an ORDER BY.
        assert!(is_vector_top_k(
            "SELECT id FROM items ORDER /* x */ BY v <-> $1"
        ));
    }

    #[test]
    fn no_tagged_node_or_a_write_is_default() {
        let sql = "SELECT id FROM items ORDER BY v <-> $1 LIMIT 5";
        assert_eq!(
            decide(&ctx(sql, true, &[]), DEFAULT_TAG),
            RouteResult::Default
        );
        assert_eq!(
            decide(&ctx(sql, true, &[("helios.vector_node", " ")]), DEFAULT_TAG),
            RouteResult::Default
        );
        let w = "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY v <-> $1 LIMIT 5)";
        assert_eq!(
            decide(&ctx(w, false, VEC), DEFAULT_TAG),
            RouteResult::Default
        );
        // Unterminated string: does not tokenize, not a vector query.
        assert_eq!(
            decide(&ctx("SELECT 1 ORDER BY v <-> 'x", true, VEC), DEFAULT_TAG),
            RouteResult::Default
        );
    }

    #[test]
    fn the_tag_comes_from_kv() {
        let sql = "SELECT id FROM items ORDER BY v <-> $1 LIMIT 5";
        let attrs = [("helios.vector_node", "r1"), ("helios.ann_node", "r2")];
        let c = ctx(sql, true, &attrs);
        kv_clear_for_tests();
        assert_eq!(route(&c), node("r1"));
        kv_write("tag", "\"ann\"").unwrap();
        assert_eq!(route(&c), node("r2"));
        kv_write("tag", "\"gpu\"").unwrap();
        assert_eq!(route(&c), RouteResult::Default);
        kv_clear_for_tests();
    }
}
