//! `hog`: grabs memory on purpose to exercise the host's memory limit. `hog <MiB>` allocates and
//! keeps that many MiB (touching every page); other queries continue.
use helios_plugin_abi::*;
use std::cell::RefCell;

thread_local! {
    static HELD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn hog(ctx: &QueryContext) -> PreQueryResult {
    if let Some(n) = ctx.query.strip_prefix("hog ") {
        let mib: usize = n.trim().parse().unwrap_or(0);
        for _ in 0..mib {
            HELD.with(|h| h.borrow_mut().push(vec![1u8; 1 << 20]));
        }
        let held = HELD.with(|h| h.borrow().len());
        return PreQueryResult::Block {
            reason: format!("holding {held} MiB"),
        };
    }
    PreQueryResult::Continue
}
export_pre_query!(hog);
