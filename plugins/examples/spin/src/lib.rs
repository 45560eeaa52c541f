//! `spin`: misbehaves on purpose to exercise the host's time limits. `spin` loops forever;
//! `burn <n>` does n rounds of work and continues; other queries continue at once.
use helios_plugin_abi::*;

fn spin(ctx: &QueryContext) -> PreQueryResult {
    let q: &str = &ctx.query;
    if q == "spin" {
        let mut x: u64 = 1;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    if let Some(n) = q.strip_prefix("burn ") {
        let n: u64 = n.trim().parse().unwrap_or(0);
        let mut x: u64 = 1;
        for _ in 0..n {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        std::hint::black_box(x);
    }
    PreQueryResult::Continue
}
export_pre_query!(spin);
