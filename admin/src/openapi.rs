//! The OpenAPI 3 description of the whole admin API, served at `/openapi.json`. Written by hand
//! next to the route table ([`crate::api::ROUTES`]); a test checks that both name the same
//! paths and methods.

/// `GET /openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::api::ROUTES;

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let mut out = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} documents no response"
                );
                out.insert((path.clone(), method.to_ascii_uppercase()));
            }
        }
        out
    }

    #[test]
    fn openapi_names_every_route() {
        let routes: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(move |m| (p.to_string(), m.to_string())))
            .collect();
        let doc = documented();
        let missing: Vec<_> = routes.difference(&doc).collect();
        let stale: Vec<_> = doc.difference(&routes).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "openapi.json lacks {missing:?} and describes routes that do not exist: {stale:?} \
             (edit admin/openapi-gen.py and run it)"
        );
    }

    /// Every route has a section or a row in docs/admin-api.md.
    #[test]
    fn the_reference_names_every_route() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin-api.md"),
        )
        .unwrap();
        let missing: Vec<&str> = ROUTES
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !doc.contains(&format!("`{p}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/admin-api.md does not name {missing:?}"
        );
    }
}
