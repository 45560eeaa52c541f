//! Keeps docs/configuration.md and config/proxy.toml in step with the configuration types.

use std::collections::BTreeSet;
use std::path::Path;

use helios_config::{apply_of, Config, APPLY};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Every key path of a TOML value, with array tables and the database alias folded.
fn keys(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, x) in t {
                let k = if prefix == "databases" {
                    "<alias>"
                } else {
                    k.as_str()
                };
                let p = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                if p == "plugins.plugin.config"
                    || p == "nodes.tags"
                    || p == "auth.groups"
                    || p == "databases.<alias>.defaults"
                {
                    // Free-form: the plugin's own KV seed.
                    out.insert(p);
                    continue;
                }
                keys(x, &p, out);
            }
        }
        toml::Value::Array(a) if a.first().is_some_and(|x| x.is_table()) => {
            for x in a {
                keys(x, prefix, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

fn example() -> Config {
    let path = root().join("config/proxy.toml");
    Config::load(&path).unwrap_or_else(|e| panic!("config/proxy.toml: {e}"))
}

#[test]
fn example_config_parses_and_validates() {
    let c = example();
    assert!(c.databases.contains_key("app"));
}

#[test]
fn example_sets_every_key_of_the_types() {
    // The example sets every key: serializing what it parsed to must give back the same key set
    // as the file itself (a key the types gained but the example lacks shows up as a default).
    let text = std::fs::read_to_string(root().join("config/proxy.toml")).unwrap();
    let file: toml::Value = text.parse().unwrap();
    let mut in_file = BTreeSet::new();
    keys(&file, "", &mut in_file);
    let parsed = toml::Value::try_from(example()).unwrap();
    let mut in_types = BTreeSet::new();
    keys(&parsed, "", &mut in_types);
    // password is never serialized (it is a secret).
    in_types.insert("databases.<alias>.password".into());
    in_types.insert("health.password".into());
    let missing: Vec<_> = in_types.difference(&in_file).collect();
    assert!(
        missing.is_empty(),
        "config/proxy.toml does not set: {missing:?}"
    );
}

/// Every key of the types: what the example serializes to, plus the secrets, which are never
/// serialized.
fn all_keys() -> BTreeSet<String> {
    let parsed = toml::Value::try_from(example()).unwrap();
    let mut all = BTreeSet::new();
    keys(&parsed, "", &mut all);
    all.insert("databases.<alias>.password".into());
    all.insert("admin.token".into());
    all.insert("admin.sql_password".into());
    all.insert("health.password".into());
    all
}

#[test]
fn the_reload_table_covers_every_key() {
    let all = all_keys();
    let table: BTreeSet<String> = APPLY.iter().map(|(k, _)| k.to_string()).collect();
    let missing: Vec<_> = all.difference(&table).collect();
    let stale: Vec<_> = table.difference(&all).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "helios_config::reload::APPLY lacks {missing:?} and names keys that do not exist: {stale:?}"
    );
}

#[test]
fn reference_documents_every_key() {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let all = all_keys();
    let mut undocumented = Vec::new();
    let mut wrong_applies = Vec::new();
    for k in &all {
        let (section, leaf) = k.rsplit_once('.').unwrap_or(("", k));
        let heading = match section {
            "nodes" => "## `[[nodes]]`".to_string(),
            "plugins.plugin" => "## `[[plugins.plugin]]`".to_string(),
            s => format!("## `[{s}]`"),
        };
        let Some(at) = doc.find(&heading) else {
            undocumented.push(format!("{k} (no section {heading})"));
            continue;
        };
        let body = &doc[at + heading.len()..];
        let body = &body[..body.find("\n## ").unwrap_or(body.len())];
        let Some(row) = body
            .lines()
            .find(|l| l.starts_with(&format!("| `{leaf}` |")))
        else {
            undocumented.push(k.clone());
            continue;
        };
        // The section's table says in its `applies` column what the proxy does on reload.
        let cells = |l: &str| -> Vec<String> {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        };
        let header = body
            .lines()
            .find(|l| l.starts_with("| key |"))
            .map(cells)
            .unwrap_or_default();
        let Some(col) = header.iter().position(|c| c == "applies") else {
            wrong_applies.push(format!("{k}: the {heading} table has no `applies` column"));
            continue;
        };
        let want = apply_of(k).map(|a| a.as_str()).unwrap_or("(not in APPLY)");
        let got = cells(row).get(col).cloned().unwrap_or_default();
        if got != want {
            wrong_applies.push(format!(
                "{k}: the reference says {got:?}, the proxy {want:?}"
            ));
        }
    }
    assert!(
        undocumented.is_empty(),
        "docs/configuration.md lacks: {undocumented:?}"
    );
    assert!(
        wrong_applies.is_empty(),
        "docs/configuration.md, `applies` column: {wrong_applies:?}"
    );
}
