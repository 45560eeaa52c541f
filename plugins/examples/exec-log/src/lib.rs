//! `exec-log`: a test plugin that checks how the proxy calls the query hooks. `pre_query`
//! counts calls in `pre_count` and marks `open:<request_id>` (a second pre_query with the same
//! id counts in `dup_ids`); `post_query` counts in `post_count`, clears the mark (a post_query
//! without one counts in `orphan_posts`) and keeps its outcome as JSON in `last_outcome` and
//! its query text in `last_query`. It never blocks or rewrites.
use helios_plugin_abi::*;

fn bump(key: &str) {
    let n: u64 = kv_read_string(key)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let _ = kv_write(key, (n + 1).to_string());
}

fn pre(ctx: &QueryContext) -> PreQueryResult {
    bump("pre_count");
    let open = format!("open:{}", ctx.hook_context.request_id);
    if kv_read(&open).is_some() {
        bump("dup_ids");
    }
    let _ = kv_write(open, "1");
    PreQueryResult::Continue
}
export_pre_query!(pre);

fn post(ctx: &PostQueryContext) {
    let open = format!("open:{}", ctx.query_context.hook_context.request_id);
    if kv_read(&open).is_none() {
        bump("orphan_posts");
    }
    let _ = kv_remove(open);
    let _ = kv_write("last_query", ctx.query_context.query.as_bytes());
    if let Ok(json) = serde_json::to_vec(&ctx.outcome) {
        let _ = kv_write("last_outcome", json);
    }
    // Last: a reader that sees the count sees this call's outcome.
    bump("post_count");
}
export_post_query!(post);
