//! `block-drop`: refuses `DROP TABLE` (any case, any spacing) in `pre_query`.
use helios_plugin_abi::*;

fn check(ctx: &QueryContext) -> PreQueryResult {
    if is_drop_table(&ctx.query) {
        return PreQueryResult::Block {
            reason: "DROP TABLE is not allowed through HeliosProxy".into(),
        };
    }
    PreQueryResult::Continue
}
export_pre_query!(check);

/// True when some statement in `sql` starts with `DROP TABLE` (words separated by any whitespace).
pub fn is_drop_table(sql: &str) -> bool {
    let mut words = sql
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty());
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("drop") {
            if let Some(next) = words.clone().next() {
                if next.eq_ignore_ascii_case("table") {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn detects_drop_table() {
        assert!(super::is_drop_table("drop   TABLE t"));
        assert!(super::is_drop_table("select 1; DROP\ntable t"));
        assert!(!super::is_drop_table("select 'dropped' from tables"));
    }
}
