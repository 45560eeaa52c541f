//! `block-drop`: refuses `DROP TABLE` (any case, any spacing) in `pre_query`. Written with the
//! SDK's `#[hook(...)]` attribute.
use helios_plugin_abi::*;

#[hook(PreQuery)]
fn check(ctx: &QueryContext) -> PreQueryResult {
    if is_drop_table(&ctx.query) {
        return PreQueryResult::Block {
            reason: "DROP TABLE is not allowed through HeliosProxy".into(),
        };
    }
    PreQueryResult::Continue
}
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

#[cfg(test)]
mod hook_tests {
    use helios_plugin_abi::*;

    #[test]
    fn the_attributed_function_stays_callable() {
        let ctx = QueryContext {
            query: "drop table t".into(),
            ..QueryContext::default()
        };
        assert!(matches!(super::check(&ctx), PreQueryResult::Block { .. }));
        let ctx = QueryContext {
            query: "select 1".into(),
            ..QueryContext::default()
        };
        assert_eq!(super::check(&ctx), PreQueryResult::Continue);
    }
}
