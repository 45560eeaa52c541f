//! `kv-probe`: a test and demo plugin driven by its query text; it answers by blocking with the
//! answer as the reason. Commands: `KV GET <key>`, `KV SET <key> <value>`, `KV DEL <key>`,
//! `KV BIG <key> <bytes>` (write a value of that size), `SHA <text>`, `CALLS` (calls served by
//! this instance: shows linear memory persists between calls). Other queries continue.
//! `post_query` counts completed queries in the key `post_count`.
use helios_plugin_abi::*;
use std::sync::atomic::{AtomicU64, Ordering};

static CALLS: AtomicU64 = AtomicU64::new(0);

fn answer(reason: String) -> PreQueryResult {
    PreQueryResult::Block { reason }
}

fn probe(ctx: &QueryContext) -> PreQueryResult {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    let q: &str = &ctx.query;
    if let Some(key) = q.strip_prefix("KV GET ") {
        return answer(match kv_read(key) {
            Some(v) => format!("value:{}", String::from_utf8_lossy(&v)),
            None => "missing".into(),
        });
    }
    if let Some(rest) = q.strip_prefix("KV SET ") {
        let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
        return answer(match kv_write(k, v) {
            Ok(()) => "ok".into(),
            Err(e) => format!("refused:{e:?}"),
        });
    }
    if let Some(rest) = q.strip_prefix("KV BIG ") {
        let (k, n) = rest.split_once(' ').unwrap_or((rest, "0"));
        let n: usize = n.trim().parse().unwrap_or(0);
        return answer(match kv_write(k, vec![b'x'; n]) {
            Ok(()) => "ok".into(),
            Err(e) => format!("refused:{e:?}"),
        });
    }
    if let Some(key) = q.strip_prefix("KV DEL ") {
        return answer(match kv_remove(key) {
            Ok(()) => "ok".into(),
            Err(e) => format!("refused:{e:?}"),
        });
    }
    if let Some(text) = q.strip_prefix("SHA ") {
        return answer(sha256_digest_hex(text));
    }
    if q == "CALLS" {
        return answer(format!("calls:{calls}"));
    }
    if q == "CONTEXT" {
        // Echo what the host sent, to check the input format end to end.
        return answer(serde_json_like(ctx));
    }
    PreQueryResult::Continue
}
export_pre_query!(probe);

fn serde_json_like(ctx: &QueryContext) -> String {
    let h = &ctx.hook_context;
    format!(
        "request_id={} client_id={} user={} database={} app={} ip={:?} tables={:?} ro={} attrs={:?} identity={:?}",
        h.request_id,
        h.client_id,
        h.user,
        h.database,
        h.application_name,
        h.client_ip,
        ctx.tables,
        ctx.is_read_only,
        h.attributes,
        h.identity.as_ref().map(|i| &i.user_id)
    )
}

fn observe(ctx: &PostQueryContext) {
    let n: u64 = kv_read_string("post_count")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let _ = kv_write("post_count", (n + 1).to_string());
    if !ctx.outcome.success {
        let _ = kv_write("last_error", ctx.outcome.error.clone().unwrap_or_default());
    }
    let _ = kv_write(
        "last_request_id",
        ctx.query_context.hook_context.request_id.to_string(),
    );
}
export_post_query!(observe);
