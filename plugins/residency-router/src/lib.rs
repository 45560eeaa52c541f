//! `residency-router`: per-user data-residency routing. A session's statements go to the node
//! that serves its user's region; with `enforce`, a session whose region has no node is refused
//! ("no in-region replica for user") instead of being served elsewhere.
//!
//! - The region: the identity's `helios.region` attribute when an `authenticate` plugin set one
//!   (a client cannot change it), else the session attribute `helios.region`
//!   (`SET helios.region = 'eu'`). Compared trimmed and case-insensitively.
//! - KV / `config`: `regions` (JSON object region → node name, e.g. `{"eu": "r1"}`) and
//!   `enforce` (JSON bool, default false).
//!
//! | condition | result |
//! |---|---|
//! | no region | default routing |
//! | region in `regions` | that node |
//! | region not in `regions`, `enforce` | block "no in-region replica for user" |
//! | region not in `regions`, no `enforce` | default routing |
//!
//! A missing or malformed `regions` with `enforce` refuses every session that has a region
//! (fails closed); without `enforce` it routes by default.
use std::collections::BTreeMap;

use helios_plugin_abi::*;

/// The block reason (prefixed with the plugin name and followed by the region).
pub const NO_REPLICA: &str = "no in-region replica for user";

/// The plugin's configuration, from KV.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Residency {
    /// Region (lower case) → node; `None` when the key is missing or not a JSON object of
    /// strings.
    pub regions: Option<BTreeMap<String, String>>,
    /// Refuse sessions whose region has no node.
    pub enforce: bool,
}

impl Residency {
    /// Reads `regions` and `enforce` from KV.
    pub fn load() -> Residency {
        Residency {
            regions: kv_read_json::<BTreeMap<String, String>>("regions").map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect()
            }),
            enforce: kv_read_json::<bool>("enforce").unwrap_or(false),
        }
    }
}

/// The user's region: the authenticated identity's, else the session's.
pub fn user_region(h: &HookContext) -> Option<String> {
    let from_identity = h
        .identity
        .as_ref()
        .and_then(|i| i.attributes.get("helios.region"));
    from_identity
        .or_else(|| h.attributes.get("helios.region"))
        .map(|r| r.trim().to_ascii_lowercase())
        .filter(|r| !r.is_empty())
}

/// The pure decision over the user's region and the configuration.
pub fn decide(region: Option<&str>, cfg: &Residency) -> RouteResult {
    let Some(region) = region else {
        return RouteResult::Default;
    };
    match cfg.regions.as_ref().and_then(|m| m.get(region)) {
        Some(node) if !node.is_empty() => RouteResult::Node {
            target: node.clone(),
        },
        _ if cfg.enforce => RouteResult::Block {
            reason: format!("residency-router: {NO_REPLICA} (region {region})"),
        },
        _ => RouteResult::Default,
    }
}

fn route(ctx: &QueryContext) -> RouteResult {
    let region = user_region(&ctx.hook_context);
    if region.is_none() {
        return RouteResult::Default;
    }
    decide(region.as_deref(), &Residency::load())
}
export_route!(route);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)], enforce: bool) -> Residency {
        Residency {
            regions: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            enforce,
        }
    }

    fn node(t: &str) -> RouteResult {
        RouteResult::Node { target: t.into() }
    }

    #[test]
    fn no_region_is_default_even_when_enforcing() {
        assert_eq!(
            decide(None, &cfg(&[("eu", "r1")], true)),
            RouteResult::Default
        );
    }

    #[test]
    fn a_mapped_region_goes_to_its_node() {
        let c = cfg(&[("eu", "r1"), ("us", "r2")], false);
        assert_eq!(decide(Some("eu"), &c), node("r1"));
        assert_eq!(decide(Some("us"), &c), node("r2"));
        let c = cfg(&[("eu", "r1")], true);
        assert_eq!(decide(Some("eu"), &c), node("r1"));
    }

    #[test]
    fn an_unmapped_region_blocks_only_when_enforcing() {
        let c = cfg(&[("eu", "r1")], true);
        match decide(Some("in"), &c) {
            RouteResult::Block { reason } => {
                assert!(reason.contains(NO_REPLICA), "{reason}");
                assert!(reason.contains("region in"), "{reason}");
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(
            decide(Some("in"), &cfg(&[("eu", "r1")], false)),
            RouteResult::Default
        );
        // An empty node name is no node.
        assert!(matches!(
            decide(Some("eu"), &cfg(&[("eu", "")], true)),
            RouteResult::Block { .. }
        ));
    }

    #[test]
    fn missing_map_fails_closed_when_enforcing() {
        let none = Residency {
            regions: None,
            enforce: true,
        };
        assert!(matches!(
            decide(Some("eu"), &none),
            RouteResult::Block { .. }
        ));
        let none = Residency {
            regions: None,
            enforce: false,
        };
        assert_eq!(decide(Some("eu"), &none), RouteResult::Default);
    }

    #[test]
    fn the_identity_region_wins_over_the_session_attribute() {
        let mut h = HookContext::default();
        assert_eq!(user_region(&h), None);
        h.attributes.insert("helios.region".into(), " EU ".into());
        assert_eq!(user_region(&h).as_deref(), Some("eu"));
        let mut id = Identity::default();
        id.attributes.insert("helios.region".into(), "us".into());
        h.identity = Some(id);
        assert_eq!(user_region(&h).as_deref(), Some("us"));
    }

    #[test]
    fn configuration_comes_from_kv() {
        kv_clear_for_tests();
        assert_eq!(Residency::load(), Residency::default());
        kv_write("regions", r#"{"EU": "r1", "us": " r2 "}"#).unwrap();
        kv_write("enforce", "true").unwrap();
        assert_eq!(Residency::load(), cfg(&[("eu", "r1"), ("us", "r2")], true));
        let mut qc = QueryContext::default();
        qc.hook_context
            .attributes
            .insert("helios.region".into(), "us".into());
        assert_eq!(route(&qc), node("r2"));
        qc.hook_context
            .attributes
            .insert("helios.region".into(), "apac".into());
        assert!(matches!(route(&qc), RouteResult::Block { .. }));
        kv_write("enforce", "false").unwrap();
        assert_eq!(route(&qc), RouteResult::Default);
        // Not a JSON object of strings: no map.
        kv_write("regions", "[1, 2]").unwrap();
        assert_eq!(Residency::load().regions, None);
        kv_clear_for_tests();
    }
}
