//! Which settings a reload (SIGHUP, `POST /reload`, console `RELOAD`) applies and which need a
//! restart: one table, [`APPLY`], read by the reload path (warnings), the psql console
//! (`SHOW CONFIG`) and the reference test of docs/configuration.md.
//!
//! Keys are written as in docs/configuration.md: `section.key`, with the array tables folded
//! (`nodes.host` for every `[[nodes]]` entry, `plugins.plugin.source`) and the database alias
//! written `<alias>` (`databases.<alias>.pool_size`). [`key_of`] turns a concrete path
//! (`nodes[1].host`, `databases.app.pool_size`) into that form.

use std::collections::BTreeMap;

use crate::Config;

/// When a change to a setting takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// At the next reload, without dropping connections (settings read per connection apply to
    /// the connections opened after it).
    Reload,
    /// Only at start-up: a reload that changes it logs a warning and keeps the running value.
    Restart,
}

impl Apply {
    /// `reload` or `restart`, as the console and the reference show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Apply::Reload => "reload",
            Apply::Restart => "restart",
        }
    }
}

use Apply::{Reload, Restart};

/// Every key of the configuration file and when a change to it applies. A test checks that it
/// names every key of the types, and docs/configuration.md against it.
pub const APPLY: &[(&str, Apply)] = &[
    // The listeners, the shard threads and their placement exist from start-up on.
    ("server.listen", Restart),
    ("server.cores", Restart),
    ("server.sched_slice_us", Restart),
    ("server.pin_shards", Restart),
    ("server.shutdown_timeout_ms", Reload),
    // Read for each client connection as it is accepted.
    ("limits.max_client_connections", Reload),
    ("limits.max_message_size_bytes", Reload),
    ("limits.startup_timeout_ms", Reload),
    // Read per login.
    ("auth.method", Reload),
    ("auth.userlist", Reload),
    ("auth.admin_users", Reload),
    // Read again on reload; a file with an error fails the reload (the old rules stay).
    ("auth.hba", Reload),
    // Resolved into the HBA rules, which are loaded again on every reload.
    ("auth.groups", Reload),
    // Each shard's io_uring ring is built at start-up.
    ("io.backend", Restart),
    ("io.recv_buffers", Restart),
    ("io.recv_buffer_size_bytes", Restart),
    ("io.max_pending_send_bytes", Restart),
    ("io.ring_entries", Restart),
    ("io.ring_wait_us", Restart),
    // The admin thread and the shards' snapshot timers start once.
    ("admin.enabled", Restart),
    ("admin.listen", Restart),
    ("admin.token", Restart),
    ("admin.snapshot_interval_ms", Restart),
    ("admin.max_body_bytes", Restart),
    ("admin.console_database", Reload),
    // Read by the admin thread when it starts.
    ("admin.sql_user", Restart),
    ("admin.sql_password", Restart),
    ("admin.sql_max_rows", Restart),
    ("admin.sql_timeout_ms", Restart),
    // Pools take new targets and sizes in place; host names are resolved again.
    ("nodes.name", Reload),
    ("nodes.host", Reload),
    ("nodes.port", Reload),
    ("nodes.connect_timeout_ms", Reload),
    // Read again on reload (a file that does not load fails it); new server connections use
    // them, open ones keep their session.
    ("nodes.tls", Reload),
    ("nodes.tls_ca", Reload),
    ("nodes.tls_cert", Reload),
    ("nodes.tls_key", Reload),
    // The health checker and every shard's topology take the new roles, weights and tags.
    ("nodes.role", Reload),
    ("nodes.weight", Reload),
    ("nodes.tags", Reload),
    ("databases.<alias>.nodes", Reload),
    ("databases.<alias>.read_write_split", Reload),
    ("databases.<alias>.load_balance", Reload),
    ("databases.<alias>.max_replica_lag_bytes", Reload),
    ("databases.<alias>.max_replica_lag_ms", Reload),
    ("databases.<alias>.read_your_writes_ms", Reload),
    ("databases.<alias>.read_only_functions", Reload),
    // The checker reads its settings before each round.
    ("health.interval_ms", Reload),
    ("health.timeout_ms", Reload),
    ("health.failures", Reload),
    ("health.successes", Reload),
    ("health.query", Reload),
    ("health.user", Reload),
    ("health.password", Reload),
    ("health.dbname", Reload),
    // Read by the checker each round and by sessions when they wait for a primary.
    ("failover.timeout_ms", Reload),
    ("failover.auto_promote", Reload),
    ("databases.<alias>.node", Reload),
    ("databases.<alias>.dbname", Reload),
    ("databases.<alias>.user", Reload),
    ("databases.<alias>.password", Reload),
    ("databases.<alias>.pool_mode", Reload),
    ("databases.<alias>.pool_size", Reload),
    ("databases.<alias>.min_idle", Reload),
    ("databases.<alias>.idle_timeout_ms", Reload),
    ("databases.<alias>.max_lifetime_ms", Reload),
    ("databases.<alias>.checkout_timeout_ms", Reload),
    (
        "databases.<alias>.prepared_statements_per_connection",
        Reload,
    ),
    // Read when a client logs in: sessions already open keep the policy they started with.
    ("databases.<alias>.unsafe_statements", Reload),
    ("databases.<alias>.max_result_rows", Reload),
    ("databases.<alias>.max_result_bytes", Reload),
    ("databases.<alias>.anomaly", Reload),
    ("databases.<alias>.drift", Reload),
    // Access contexts: role and defaults are part of the pool's target (a change replaces the
    // pool's connections as they come back); enforcement applies to sessions that start after
    // the reload.
    ("databases.<alias>.role", Reload),
    ("databases.<alias>.defaults", Reload),
    ("databases.<alias>.enforce_defaults", Reload),
    // Read by the lease registry at the reload: a changed source is fetched at once.
    ("databases.<alias>.credentials", Reload),
    ("databases.<alias>.lease_ttl_s", Reload),
    ("databases.<alias>.lease_refresh_window_s", Reload),
    ("databases.<alias>.lease_refresh_jitter", Reload),
    // The plugin host reloads in place. It keeps the start-up value of memory_limit_mb and
    // max_plugins when a reload raises them, and of fuel_per_call when a reload switches fuel
    // on or off (and logs that); lowering them, or changing the budget, applies.
    ("plugins.enabled", Reload),
    ("plugins.plugin_dir", Reload),
    ("plugins.trust_root", Reload),
    ("plugins.timeout_ms", Reload),
    ("plugins.memory_limit_mb", Reload),
    ("plugins.max_plugins", Reload),
    ("plugins.fuel_per_call", Reload),
    ("plugins.compiled_cache_dir", Reload),
    ("plugins.kv_max_value_bytes", Reload),
    ("plugins.kv_max_keys", Reload),
    ("plugins.kv_max_total_bytes", Reload),
    ("plugins.kv_persist_path", Restart),
    // The journal's writer thread and its file are set up at start-up.
    ("journal.enabled", Restart),
    ("journal.path", Restart),
    ("journal.max_file_bytes", Restart),
    ("journal.max_files", Restart),
    ("plugins.plugin.name", Reload),
    ("plugins.plugin.source", Reload),
    ("plugins.plugin.hooks", Reload),
    ("plugins.plugin.on_error", Reload),
    ("plugins.plugin.config", Reload),
    ("plugins.plugin.optional", Reload),
    // Certificates and keys are read again on reload (a broken one fails the reload, and the
    // running ones stay); new handshakes use them, open connections keep theirs.
    ("tls.cert", Reload),
    ("tls.key", Reload),
    ("tls.mode", Reload),
    ("tls.min_version", Reload),
    ("tls.client_ca", Reload),
    ("tls.client_cert", Reload),
    // The audit thread and its sink start once.
    ("audit.sink", Restart),
    ("audit.interval_s", Restart),
    ("audit.max_file_bytes", Restart),
    // Read by sessions opened after the reload (thresholds: at each check).
    ("anomaly.enabled", Reload),
    ("anomaly.z", Reload),
    ("anomaly.min_count", Reload),
    ("anomaly.warmup_s", Reload),
    ("anomaly.auth_window_s", Reload),
    ("anomaly.auth_failures_per_user", Reload),
    ("anomaly.auth_failures_per_address", Reload),
    ("anomaly.max_fingerprints", Reload),
    ("anomaly.action.tautology", Reload),
    ("anomaly.action.union_probe", Reload),
    ("anomaly.action.comment_truncation", Reload),
    ("anomaly.action.stacked_query", Reload),
    ("anomaly.action.time_based", Reload),
    ("anomaly.action.catalog_probe", Reload),
    ("anomaly.action.rate_spike", Reload),
    ("anomaly.action.credential_stuffing", Reload),
    // The drift engine runs on the audit thread, set up once.
    ("drift.enabled", Restart),
    ("drift.window_s", Restart),
    ("drift.tick_s", Restart),
    ("drift.baseline_windows", Restart),
    ("drift.z", Restart),
    ("drift.error_rate_high", Restart),
];

/// The free-form table under which every key is the plugin's own (its KV seed).
const FREE_FORM: &str = "plugins.plugin.config";
/// A node's free labels.
const TAGS: &str = "nodes.tags";
/// The HBA groups, each key a group name.
const GROUPS: &str = "auth.groups";
/// An access context's session defaults, each key a setting name.
const DEFAULTS: &str = "databases.<alias>.defaults";

/// The table's form of a concrete key path: array indices dropped (`nodes[1].host` →
/// `nodes.host`), the database alias as `<alias>`, and keys inside a plugin's free-form
/// `config` table as that table.
pub fn key_of(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '[' {
            for d in chars.by_ref() {
                if d == ']' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    if let Some(rest) = out.strip_prefix("databases.") {
        if let Some((_alias, key)) = rest.split_once('.') {
            out = format!("databases.<alias>.{key}");
        }
    }
    for table in [FREE_FORM, TAGS, GROUPS, DEFAULTS] {
        if out.starts_with(table) && out[table.len()..].starts_with('.') {
            out.truncate(table.len());
        }
    }
    out
}

/// When a change to the key at `path` (concrete or in the table's form) applies. A path above
/// keys (`plugins.plugin`, an empty list of entries) has their verdict if they all agree.
/// `None` for a path that names no key.
pub fn apply_of(path: &str) -> Option<Apply> {
    let key = key_of(path);
    if let Some((_, a)) = APPLY.iter().find(|(k, _)| *k == key) {
        return Some(*a);
    }
    let mut under = APPLY
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(key.as_str())
                .is_some_and(|r| r.starts_with('.'))
        })
        .map(|(_, a)| *a);
    let first = under.next()?;
    under.all(|a| a == first).then_some(first)
}

/// The keys (in the table's form, in table order) whose values differ between `old` and `new`,
/// secrets included (compared, never shown), with when each change applies.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<(&'static str, Apply)> {
    let (a, b) = (flatten(old), flatten(new));
    let mut changed = std::collections::BTreeSet::new();
    for (path, v) in &a {
        if b.get(path) != Some(v) {
            changed.insert(key_of(path));
        }
    }
    for path in b.keys() {
        if !a.contains_key(path) {
            changed.insert(key_of(path));
        }
    }
    APPLY
        .iter()
        .filter(|(k, _)| changed.contains(*k))
        .copied()
        .collect()
}

/// Every value of `c` by concrete key path (`nodes[0].host`), with the secrets that are never
/// serialized (`admin.token`, `databases.<alias>.password`) added.
fn flatten(c: &Config) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(c) {
        walk("", &v, &mut out);
    }
    if let Some(t) = &c.admin.token {
        out.insert("admin.token".into(), toml::Value::String(t.clone()));
    }
    if let Some(p) = &c.admin.sql_password {
        out.insert("admin.sql_password".into(), toml::Value::String(p.clone()));
    }
    if let Some(p) = &c.health.password {
        out.insert("health.password".into(), toml::Value::String(p.clone()));
    }
    for (alias, db) in &c.databases {
        if let Some(p) = &db.password {
            out.insert(
                format!("databases.{alias}.password"),
                toml::Value::String(p.clone()),
            );
        }
    }
    out
}

fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t)
            if key_of(prefix) != FREE_FORM
                && key_of(prefix) != TAGS
                && key_of(prefix) != DEFAULTS =>
        {
            for (k, x) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&p, x, out);
            }
        }
        toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
            for (i, x) in a.iter().enumerate() {
                walk(&format!("{prefix}[{i}]"), x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

impl Config {
    /// Gives every restart-only key ([`Apply::Restart`]) the value it has in `running`: what a
    /// reload hands to the shards is then what is in effect (the listeners, the rings, the admin
    /// thread keep their start-up settings until a restart).
    pub fn keep_restart_only(&mut self, running: &Config) {
        let (s, r) = (&mut self.server, &running.server);
        s.listen.clone_from(&r.listen);
        s.cores = r.cores;
        s.sched_slice_us = r.sched_slice_us;
        s.pin_shards = r.pin_shards;
        self.io = running.io.clone();
        let (a, r) = (&mut self.admin, &running.admin);
        a.enabled = r.enabled;
        a.listen.clone_from(&r.listen);
        a.token.clone_from(&r.token);
        a.snapshot_interval_ms = r.snapshot_interval_ms;
        a.max_body_bytes = r.max_body_bytes;
        a.sql_user.clone_from(&r.sql_user);
        a.sql_password.clone_from(&r.sql_password);
        a.sql_max_rows = r.sql_max_rows;
        a.sql_timeout_ms = r.sql_timeout_ms;
        self.plugins
            .kv_persist_path
            .clone_from(&running.plugins.kv_persist_path);
        self.journal = running.journal.clone();
        self.audit = running.audit.clone();
        self.drift = running.drift.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml"), &|_| None).unwrap()
    }

    fn changed(old: &Config, new: &Config) -> Vec<&'static str> {
        changed_keys(old, new).into_iter().map(|(k, _)| k).collect()
    }

    const BASE: &str = r#"
        [auth]
        method = "trust"
        [[nodes]]
        name = "pg"
        host = "127.0.0.1"
        [databases.app]
        user = "app"
        password = "one"
    "#;

    /// BASE with every restart-only key changed.
    const EVERY_RESTART_KEY: &str = r#"
        [server]
        listen = ["127.0.0.1:7777"]
        cores = 3
        sched_slice_us = 200
        pin_shards = false
        [io]
        backend = "glommio"
        recv_buffers = 64
        recv_buffer_size_bytes = 4096
        max_pending_send_bytes = 8192
        ring_entries = 64
        ring_wait_us = 0
        [admin]
        enabled = false
        listen = "127.0.0.1:9999"
        token = "t"
        snapshot_interval_ms = 500
        max_body_bytes = 100
        sql_user = "ops"
        sql_password = "pw"
        sql_max_rows = 7
        sql_timeout_ms = 70
        [plugins]
        kv_persist_path = "kv.json"
        [journal]
        enabled = true
        path = "j"
        max_file_bytes = 5000
        max_files = 2
        [audit]
        sink = "stdout"
        interval_s = 9
        max_file_bytes = 5000
        [drift]
        enabled = true
        window_s = 9
        tick_s = 3
        baseline_windows = 4
        z = 2.5
        error_rate_high = 0.5
    "#;

    #[test]
    fn concrete_paths_map_to_table_keys() {
        assert_eq!(key_of("nodes[1].host"), "nodes.host");
        assert_eq!(
            key_of("databases.app.pool_size"),
            "databases.<alias>.pool_size"
        );
        assert_eq!(key_of("plugins.plugin[0].source"), "plugins.plugin.source");
        assert_eq!(
            key_of("plugins.plugin[2].config.max_rows"),
            "plugins.plugin.config"
        );
        assert_eq!(apply_of("server.listen"), Some(Apply::Restart));
        assert_eq!(apply_of("databases.x.pool_size"), Some(Apply::Reload));
        assert_eq!(
            apply_of("plugins.plugin[0].config.a.b"),
            Some(Apply::Reload)
        );
        assert_eq!(apply_of("server.nope"), None);
        assert_eq!(apply_of("plugins.plugin"), Some(Apply::Reload));
        assert_eq!(apply_of("io"), Some(Apply::Restart));
        assert_eq!(apply_of("server"), None, "server has keys of both kinds");
    }

    #[test]
    fn the_table_names_each_key_once() {
        let mut seen = std::collections::HashSet::new();
        for (k, _) in APPLY {
            assert!(seen.insert(k), "{k} is listed twice");
        }
    }

    #[test]
    fn changes_are_named_by_key_secrets_included() {
        let old = parse(BASE);
        let new = parse(
            &BASE
                .replace("\"one\"", "\"two\"")
                .replace("host = \"127.0.0.1\"", "host = \"127.0.0.2\"\nport = 5433"),
        );
        assert_eq!(
            changed(&old, &new),
            ["nodes.host", "nodes.port", "databases.<alias>.password"]
        );
        assert!(changed(&old, &old).is_empty());
        let more = parse(&format!(
            "{BASE}\n[databases.other]\npool_size = 3\n[plugins]\n[[plugins.plugin]]\nsource = \"a.wasm\"\nconfig = {{ x = 1 }}\n"
        ));
        // A new database brings all its keys (defaults included); a new plugin its own.
        let got = changed(&old, &more);
        assert!(got.contains(&"databases.<alias>.pool_size"), "{got:?}");
        assert!(!got.contains(&"databases.<alias>.password"), "{got:?}");
        assert!(
            got.ends_with(&[
                "plugins.plugin.source",
                "plugins.plugin.config",
                "plugins.plugin.optional"
            ]),
            "{got:?}"
        );
    }

    #[test]
    fn restart_only_keys_keep_their_running_values() {
        let running = parse(BASE);
        let mut new = parse(&format!(
            "{EVERY_RESTART_KEY}\n{}",
            BASE.replace("\"one\"", "\"two\"")
        ));
        let restart: Vec<&str> = APPLY
            .iter()
            .filter(|(_, a)| *a == Apply::Restart)
            .map(|(k, _)| *k)
            .collect();
        let mut restart_changed = changed_keys(&running, &new);
        restart_changed.retain(|(_, a)| *a == Apply::Restart);
        // EVERY_RESTART_KEY must change each of them, or what follows proves nothing.
        assert_eq!(
            restart_changed.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            restart
        );
        new.keep_restart_only(&running);
        assert_eq!(changed(&running, &new), ["databases.<alias>.password"]);
    }
}
