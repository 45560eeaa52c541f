//! `rewrite`: caps unbounded reads. A read-only `SELECT` without `LIMIT` gets `LIMIT 1000`.
use helios_plugin_abi::*;

fn cap(ctx: &QueryContext) -> PreQueryResult {
    let q = ctx.query.trim().trim_end_matches(';');
    let upper = q.to_ascii_uppercase();
    if ctx.is_read_only && upper.starts_with("SELECT") && !upper.contains(" LIMIT ") {
        return PreQueryResult::Rewrite {
            sql: format!("{q} LIMIT 1000"),
        };
    }
    PreQueryResult::Continue
}
export_pre_query!(cap);
