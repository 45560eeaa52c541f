//! `faulty`: implements every hook and panics (a trap, for the host) when the query or the
//! application name contains `panic`; otherwise it has no opinion. It exists to show that a
//! failing plugin fails only its call, with the outcome set by `on_error`.
use helios_plugin_abi::*;

fn check(text: &str) {
    if text.contains("panic") {
        panic!("faulty plugin asked to fail");
    }
}

fn pre(ctx: &QueryContext) -> PreQueryResult {
    check(&ctx.query);
    PreQueryResult::Continue
}
export_pre_query!(pre);

fn route(ctx: &QueryContext) -> RouteResult {
    check(&ctx.query);
    RouteResult::Default
}
export_route!(route);

fn post(ctx: &PostQueryContext) {
    check(&ctx.query_context.query);
}
export_post_query!(post);

fn auth(ctx: &AuthContext) -> AuthResult {
    check(&ctx.hook_context.application_name);
    AuthResult::Defer
}
export_authenticate!(auth);
