//! `route`: routing by a leading SQL comment, e.g. `/* route: primary */ SELECT …`.
//! Directives: `primary`, `replica`, `node=<name>`, `block`, `block=<reason>`; none → default.
//! `node_of=<attribute>` routes to the node named by a hook-context attribute (for example
//! `helios.vector_node`, the first healthy node tagged `vector`), so no node name is hard-coded;
//! default while the attribute is absent. `echo=<attribute>` blocks with `<attribute>=<value>`
//! as the reason (`<attribute> unset` when absent): how a test sees what the plugin sees.
//! Sessions whose attributes carry `helios.region = eu` are refused on `audit_log`.
use helios_plugin_abi::*;

fn choose(ctx: &QueryContext) -> RouteResult {
    if ctx
        .hook_context
        .attributes
        .get("helios.region")
        .map(String::as_str)
        == Some("eu")
        && ctx.tables.iter().any(|t| t == "audit_log")
    {
        return RouteResult::Block {
            reason: "cross-region read of audit_log forbidden".into(),
        };
    }
    let q = ctx.query.trim_start();
    let Some(rest) = q.strip_prefix("/* route:") else {
        return RouteResult::Default;
    };
    let Some(end) = rest.find("*/") else {
        return RouteResult::Default;
    };
    let directive = rest[..end].trim();
    let attr = |name: &str| ctx.hook_context.attributes.get(name.trim());
    match directive.split_once('=') {
        Some(("node", name)) => RouteResult::Node {
            target: name.trim().to_owned(),
        },
        Some(("node_of", name)) => match attr(name) {
            Some(node) => RouteResult::Node {
                target: node.clone(),
            },
            None => RouteResult::Default,
        },
        Some(("echo", name)) => RouteResult::Block {
            reason: match attr(name) {
                Some(v) => format!("{}={v}", name.trim()),
                None => format!("{} unset", name.trim()),
            },
        },
        Some(("block", reason)) => RouteResult::Block {
            reason: reason.trim().to_owned(),
        },
        _ => match directive {
            "primary" => RouteResult::Primary,
            "replica" => RouteResult::Replica,
            // An empty reason is replaced by the host with "blocked by plugin".
            "block" => RouteResult::Block {
                reason: String::new(),
            },
            _ => RouteResult::Default,
        },
    }
}
export_route!(choose);
