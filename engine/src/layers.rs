//! The engine's layers, checked: a module may import only from layers below its own (or from
//! itself). Lower layers know nothing of higher ones, so there is no import circle and each
//! question ("where does a Bind go?", "who owns a pool?") has one home.

/// Each top-level module and its layer, lowest first (see the table in `lib.rs`).
pub const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("ids", 0),
    ("stats", 0),
    ("sql", 0),
    ("auth", 0),
    ("net", 1),
    ("signal", 1),
    ("journal", 1),
    ("proto", 2),
    ("backend", 3),
    ("shard", 4),
    ("pipeline", 5),
    ("frontend", 6),
    ("ops", 7),
    ("runtime", 8),
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::path::Path;

    fn layer(module: &str) -> Option<u8> {
        LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
    }

    fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rs_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn no_module_imports_a_higher_layer() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rs_files(&src, &mut files);
        let mut bad = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&src).unwrap();
            let top = rel.iter().next().unwrap().to_str().unwrap();
            let top = top.strip_suffix(".rs").unwrap_or(top);
            if matches!(top, "lib" | "main" | "layers") {
                continue;
            }
            let own = layer(top).unwrap_or_else(|| panic!("{top} is not in LAYERS"));
            let text = std::fs::read_to_string(&f).unwrap();
            for (at, _) in text.match_indices("crate::") {
                let rest = &text[at + 7..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let target = &rest[..end];
                if target == top {
                    continue;
                }
                match layer(target) {
                    Some(l) if l < own => {}
                    _ => bad.push(format!("{} imports crate::{target}", rel.display())),
                }
            }
        }
        assert!(
            bad.is_empty(),
            "imports against the layers:\n{}",
            bad.join("\n")
        );
    }
}
