//! `tenant-budget`: per-tenant query budgets kept in the plugin KV.
//!
//! The budget comes from the plugin's `config` (seeded by the host into KV as JSON):
//! `max_queries_per_tenant = 100`. `post_query` counts each completed query under
//! `used:<tenant>` (and each refused or failed one under `failed:<tenant>`); `pre_query` blocks a tenant whose count reached the budget. The tenant is the
//! identity's `tenant_id`, else the session attribute `helios.tenant`, else the user name.
use helios_plugin_abi::*;

fn tenant(h: &HookContext) -> String {
    if let Some(t) = h.identity.as_ref().and_then(|i| i.tenant_id.clone()) {
        return t;
    }
    if let Some(t) = h.attributes.get("helios.tenant") {
        return t.clone();
    }
    h.user.to_string()
}

fn used(t: &str) -> u64 {
    kv_read_string(format!("used:{t}"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn check(ctx: &QueryContext) -> PreQueryResult {
    let Some(max) = kv_read_json::<u64>("max_queries_per_tenant") else {
        return PreQueryResult::Continue;
    };
    let t = tenant(&ctx.hook_context);
    if used(&t) >= max {
        return PreQueryResult::Block {
            reason: format!("tenant {t} is over its budget of {max} queries"),
        };
    }
    PreQueryResult::Continue
}
export_pre_query!(check);

fn count(ctx: &PostQueryContext) {
    let t = tenant(&ctx.query_context.hook_context);
    if ctx.outcome.success {
        let _ = kv_write(format!("used:{t}"), (used(&t) + 1).to_string());
    } else {
        // Refused (by this plugin or another stage) or failed on the server.
        let key = format!("failed:{t}");
        let n: u64 = kv_read_string(&key)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let _ = kv_write(key, (n + 1).to_string());
    }
}
export_post_query!(count);
