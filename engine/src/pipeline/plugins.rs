//! The plugin stage: the session's side of the WASM plugins — building hook inputs, calling the
//! shard's plugin instances, and turning their verdicts into what the pipeline does.
//!
//! Every execution passes here: a simple Query, each Bind+Execute of a prepared or unnamed
//! statement, a FunctionCall (described as `FUNCTION CALL <oid>`), so no message type bypasses
//! the hooks. `pre_query` and `route` run before the execution is forwarded, `post_query` at
//! its outcome, all three with the execution's `request_id`. While the shard has no plugins
//! the stage is inactive and costs one check per statement.

use std::net::IpAddr;
use std::rc::Rc;

use helios_plugin_host::{
    AuthDecision, Hook, HookContext, Identity, Outcome, PreQueryDecision, QueryContext,
    RouteDecision,
};

/// Session attributes (`helios.<name>` → value).
pub type Attributes = std::collections::BTreeMap<String, String>;

use super::{Execution, Stage};
use crate::error::{Blame, ProxyError, SqlState};
use crate::shard::Shard;
use crate::sql::analyze::{normalize, Analysis};
use crate::sql::{self, SessionCommand};

/// What the plugin stage worked out about an execution at `pre_query`, for `post_query`.
pub struct Facts {
    normalized: String,
    analysis: Rc<Analysis>,
    /// The node the database's pool is on (when no route plugin chose one).
    default_node: String,
    /// The session's attributes plus what `pre_query` plugins annotated (`plugin.<name>.<key>`),
    /// when one did: what this execution's `route` and `post_query` see.
    attributes: Option<Attributes>,
}

pub struct PluginStage {
    pub identity: Option<Identity>,
    /// `helios.*` session attributes: from `authenticate` and `SET helios.<name> = …`.
    pub attributes: Attributes,
    user: String,
    database: String,
    application_name: String,
    client_ip: Option<IpAddr>,
    client_id: u64,
    /// The database's own node (a route plugin may choose another).
    default_node: String,
    /// The topology version the node attributes were taken from, and the keys they set.
    topo_seen: Option<u64>,
    topo_keys: Vec<String>,
}

impl PluginStage {
    /// Every session has one, so plugins enabled by a reload reach open connections too; it
    /// does nothing while the shard has no plugins.
    pub fn new(
        user: &str,
        database: &str,
        application_name: &str,
        client_ip: Option<IpAddr>,
    ) -> Box<PluginStage> {
        Box::new(PluginStage {
            identity: None,
            attributes: Attributes::new(),
            user: user.to_string(),
            database: database.to_string(),
            application_name: application_name.to_string(),
            client_ip,
            client_id: 0,
            default_node: String::new(),
            topo_seen: None,
            topo_keys: Vec::new(),
        })
    }

    pub fn set_client_id(&mut self, id: i32) {
        self.client_id = id as u32 as u64;
    }

    pub fn set_default_node(&mut self, node: &str) {
        self.default_node = node.to_string();
    }

    fn hook_context(&self, request_id: u64) -> HookContext<'_> {
        HookContext {
            request_id,
            client_id: self.client_id,
            identity: self.identity.as_ref(),
            database: &self.database,
            user: &self.user,
            application_name: &self.application_name,
            client_ip: self.client_ip,
            attributes: &self.attributes,
        }
    }

    /// Runs the `authenticate` chain once the password check passed. `Err(message)`: deny.
    pub fn authenticate(&mut self, shard: &Shard) -> Result<(), String> {
        let mut guard = shard.plugins.borrow_mut();
        let Some(p) = guard.as_mut() else {
            return Ok(());
        };
        if !p.has_hook(Hook::Authenticate) {
            return Ok(());
        }
        p.apply_kv_updates();
        let n = shard.request_seq.get() + 1;
        shard.request_seq.set(n);
        let hc = HookContext {
            identity: None,
            ..self.hook_context(((shard.id as u64) << 48) | n)
        };
        match p.authenticate(&hc) {
            AuthDecision::Allow { identity, plugin } => {
                log::debug!("plugin {plugin} allowed user {}", self.user);
                for (k, v) in identity.session_attributes() {
                    self.attributes.insert(k, v);
                }
                self.identity = Some(identity);
                Ok(())
            }
            AuthDecision::Deny { message, plugin } => {
                log::info!("plugin {plugin} denied user {}: {message}", self.user);
                Err(message)
            }
            AuthDecision::Defer => Ok(()),
        }
    }

    /// The nodes as plugins see them (hook_context attributes), refreshed when the shard's
    /// topology changed: `helios.primary_node`, `helios.node.<name>.<tag>` for every tag, and
    /// `helios.<tag>_node`: the first usable node whose `<tag>` is set (`helios.vector_node`).
    fn refresh_topology(&mut self, shard: &Shard) {
        let t = shard.topology.borrow();
        if self.topo_seen == Some(t.version) {
            return;
        }
        self.topo_seen = Some(t.version);
        for k in self.topo_keys.drain(..) {
            self.attributes.remove(&k);
        }
        let mut set = |k: String, v: String, attrs: &mut Attributes| {
            attrs.insert(k.clone(), v);
            self.topo_keys.push(k);
        };
        if let Some(p) = t.current_primary() {
            set(
                "helios.primary_node".into(),
                p.name.clone(),
                &mut self.attributes,
            );
        }
        for n in &t.nodes {
            for (tag, v) in &n.tags {
                set(
                    format!("helios.node.{}.{tag}", n.name),
                    v.to_string(),
                    &mut self.attributes,
                );
                let key = format!("helios.{tag}_node");
                if !self.attributes.contains_key(&key) {
                    if let Some(first) = t.tagged(tag) {
                        set(key, first.name.clone(), &mut self.attributes);
                    }
                }
            }
        }
    }

    /// `SET helios.<name> = value` becomes a session attribute.
    pub fn set_attribute(&mut self, name: &str, sql_value: &str) {
        let v = sql_value.trim();
        let v = v
            .strip_prefix('\'')
            .and_then(|x| x.strip_suffix('\''))
            .map(|x| x.replace("''", "'"))
            .unwrap_or_else(|| v.to_string());
        self.attributes.insert(name.to_string(), v);
    }
}

impl Stage for PluginStage {
    /// One borrow: the query path's only cost while the shard has no plugins.
    fn active(&self, shard: &Shard) -> bool {
        shard.plugins.borrow_mut().as_mut().is_some_and(|p| {
            p.has_hook(Hook::PreQuery) || p.has_hook(Hook::Route) || p.has_hook(Hook::PostQuery)
        })
    }

    /// `pre_query` (may rewrite or block), then `route` on the text that will run.
    fn before(&mut self, shard: &Shard, ex: &mut Execution) -> Result<(), ProxyError> {
        if let Some(SessionCommand::Set { name, value }) = sql::session_command(&ex.sql) {
            if name.starts_with("helios.") {
                self.set_attribute(&name, &value);
            }
        }
        self.refresh_topology(shard);
        let mut guard = shard.plugins.borrow_mut();
        let Some(p) = guard.as_mut() else {
            return Ok(());
        };
        p.apply_kv_updates();
        let mut normalized = String::new();
        normalize(&ex.sql, &mut normalized);
        let analysis = shard.analysis.borrow_mut().get(&normalized, &ex.sql);
        let block = |reason: String| {
            ProxyError::error(
                SqlState(helios_plugin_host::BLOCK_SQLSTATE),
                Blame::Client,
                reason,
            )
        };
        let hc = self.hook_context(ex.id);
        let hc_annotated;
        let mut qc = QueryContext {
            query: &ex.sql,
            normalized: &normalized,
            tables: &analysis.tables,
            is_read_only: analysis.is_read_only,
            hook_context: &hc,
        };
        let mut rewritten = None;
        let mut verdict = Ok(());
        if p.has_hook(Hook::PreQuery) {
            match p.pre_query(&qc) {
                PreQueryDecision::Continue => {}
                PreQueryDecision::Rewrite { sql } => rewritten = Some(sql),
                PreQueryDecision::Block(b) => verdict = Err(block(b.reason)),
            }
        }
        // Tags of earlier plugins (ai-classifier's) reach route and post_query of this
        // execution only.
        let annotations = p.take_annotations();
        let attributes = (!annotations.is_empty()).then(|| {
            let mut m = self.attributes.clone();
            m.extend(annotations);
            m
        });
        if let Some(m) = &attributes {
            hc_annotated = HookContext {
                attributes: m,
                ..hc
            };
            qc.hook_context = &hc_annotated;
        }
        if let Some(r) = &rewritten {
            qc.query = r;
        }
        if verdict.is_ok() && p.has_hook(Hook::Route) {
            match p.route(&qc) {
                RouteDecision::Default => {}
                // The route stage acts on these (databases with a topology; a single-node
                // database has only its node).
                RouteDecision::Primary => ex.route = Some(crate::sql::read::Hint::Primary),
                RouteDecision::Replica => ex.route = Some(crate::sql::read::Hint::Replica),
                RouteDecision::Node(n) => ex.node = Some(n),
                RouteDecision::Block(b) => verdict = Err(block(b.reason)),
            }
        }
        if let Some(sql) = rewritten {
            ex.sql = sql.into();
            ex.rewritten = true;
        }
        ex.plugin = Some(Facts {
            normalized,
            analysis,
            default_node: self.default_node.clone(),
            attributes,
        });
        verdict
    }

    /// `post_query`, also for executions a stage refused (`success: false`).
    fn after(&mut self, shard: &Shard, ex: &Execution) {
        let Some(f) = &ex.plugin else { return };
        let mut guard = shard.plugins.borrow_mut();
        let Some(p) = guard.as_mut() else { return };
        if !p.has_hook(Hook::PostQuery) {
            return;
        }
        let mut hc = self.hook_context(ex.id);
        if let Some(m) = &f.attributes {
            hc.attributes = m;
        }
        let qc = QueryContext {
            query: &ex.sql,
            normalized: &f.normalized,
            tables: &f.analysis.tables,
            is_read_only: f.analysis.is_read_only,
            hook_context: &hc,
        };
        let (sqlstate, error) = match &ex.error {
            Some((code, message)) => (
                (!code.is_empty()).then_some(code.as_str()),
                Some(message.as_str()),
            ),
            None => (None, None),
        };
        let outcome = Outcome {
            success: ex.success(),
            target_node: Some(ex.node.as_deref().unwrap_or(&f.default_node)),
            elapsed_us: ex.started.elapsed().as_micros() as u64,
            rows: ex.rows,
            response_bytes: ex.bytes,
            error,
            sqlstate,
        };
        p.post_query(&qc, &outcome);
    }
}
