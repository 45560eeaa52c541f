//! The session's side of the WASM plugins: building hook inputs, calling the shard's plugin
//! instances, and turning their verdicts into what the session does.
//!
//! Every statement a client can run passes here first — a simple Query, a Parse (so a
//! statement blocked at Parse is never prepared and cannot be bound or executed), and a
//! FunctionCall (described as `FUNCTION CALL <oid>`), so no message type bypasses the hooks.
//! All hooks of one statement share one `request_id`. With no plugin loaded a session has no
//! `Hooks` at all and the query path does nothing extra.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Instant;

use helios_plugin_host::{
    AuthDecision, Hook, HookContext, Identity, Outcome, PreQueryDecision, QueryContext,
    RouteDecision,
};

/// Session attributes (`helios.<name>` → value).
pub type Attributes = std::collections::BTreeMap<String, String>;

use crate::shard::Shard;
use crate::sql::analyze::{normalize, Analysis};

/// What the session should do with a statement.
pub enum Verdict {
    /// Run it: `sql` replaces the text if a plugin rewrote it; `node` is a route plugin's choice.
    Go {
        sql: Option<String>,
        node: Option<String>,
    },
    /// Refuse it with 42000 and this message.
    Block(String),
}

/// A statement on its way, kept for `post_query`.
struct Request {
    id: u64,
    query: String,
    normalized: String,
    analysis: Rc<Analysis>,
    started: Instant,
    rows: u64,
    bytes: u64,
    error: Option<String>,
    node: String,
}

pub struct Hooks {
    pub identity: Option<Identity>,
    /// `helios.*` session attributes: from `authenticate` and `SET helios.<name> = …`.
    pub attributes: Attributes,
    user: String,
    database: String,
    application_name: String,
    client_ip: Option<IpAddr>,
    client_id: u64,
    norm: String,
    current: Option<Request>,
}

impl Hooks {
    /// Every session has one, so plugins enabled by a reload reach open connections too; its
    /// methods do nothing while the shard has no plugins (`Hooks::active`).
    pub fn new(
        user: &str,
        database: &str,
        application_name: &str,
        client_ip: Option<IpAddr>,
    ) -> Box<Hooks> {
        Box::new(Hooks {
            identity: None,
            attributes: Attributes::new(),
            user: user.to_string(),
            database: database.to_string(),
            application_name: application_name.to_string(),
            client_ip,
            client_id: 0,
            norm: String::new(),
            current: None,
        })
    }

    /// Does the shard run plugins at all? (One borrow: the query path's only cost without them.)
    pub fn active(shard: &Shard) -> bool {
        shard.plugins.borrow().is_some()
    }

    pub fn set_client_id(&mut self, id: i32) {
        self.client_id = id as u32 as u64;
    }

    fn next_request_id(shard: &Shard) -> u64 {
        let n = shard.request_seq.get() + 1;
        shard.request_seq.set(n);
        ((shard.id as u64) << 48) | n
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
        let hc = HookContext {
            request_id: Self::next_request_id(shard),
            client_id: self.client_id,
            identity: None,
            database: &self.database,
            user: &self.user,
            application_name: &self.application_name,
            client_ip: self.client_ip,
            attributes: &self.attributes,
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

    /// Runs `pre_query` then `route` for a statement about to be sent.
    pub fn before(&mut self, shard: &Shard, sql: &str, default_node: &str) -> Verdict {
        let go = Verdict::Go {
            sql: None,
            node: None,
        };
        let mut guard = shard.plugins.borrow_mut();
        let Some(p) = guard.as_mut() else { return go };
        let (pre, route, post) = (
            p.has_hook(Hook::PreQuery),
            p.has_hook(Hook::Route),
            p.has_hook(Hook::PostQuery),
        );
        self.current = None;
        if !(pre || route || post) {
            return go;
        }
        p.apply_kv_updates();
        let id = Self::next_request_id(shard);
        normalize(sql, &mut self.norm);
        let analysis = shard.analysis.borrow_mut().get(&self.norm, sql);
        let hc = HookContext {
            request_id: id,
            client_id: self.client_id,
            identity: self.identity.as_ref(),
            database: &self.database,
            user: &self.user,
            application_name: &self.application_name,
            client_ip: self.client_ip,
            attributes: &self.attributes,
        };
        let mut qc = QueryContext {
            query: sql,
            normalized: &self.norm,
            tables: &analysis.tables,
            is_read_only: analysis.is_read_only,
            hook_context: &hc,
        };
        // A refused statement still gets its post_query (success false, the reason as the
        // error), when the session tells its client (`after`).
        let refused = |reason: String, current: &mut Option<Request>| {
            if post {
                *current = Some(Request {
                    id,
                    query: sql.to_string(),
                    normalized: self.norm.clone(),
                    analysis: analysis.clone(),
                    started: Instant::now(),
                    rows: 0,
                    bytes: 0,
                    error: Some(reason.clone()),
                    node: default_node.to_string(),
                });
            }
            Verdict::Block(reason)
        };
        let mut rewritten = None;
        if pre {
            match p.pre_query(&qc) {
                PreQueryDecision::Continue => {}
                PreQueryDecision::Rewrite { sql } => rewritten = Some(sql),
                PreQueryDecision::Block(b) => return refused(b.reason, &mut self.current),
            }
        }
        if let Some(r) = &rewritten {
            qc.query = r;
        }
        let mut node = None;
        if route {
            match p.route(&qc) {
                RouteDecision::Default | RouteDecision::Primary => {}
                // No replicas are configured yet: the database's own node serves reads.
                RouteDecision::Replica => {}
                RouteDecision::Node(n) => node = Some(n),
                RouteDecision::Block(b) => return refused(b.reason, &mut self.current),
            }
        }
        if post {
            self.current = Some(Request {
                id,
                query: rewritten.clone().unwrap_or_else(|| sql.to_string()),
                normalized: self.norm.clone(),
                analysis: analysis.clone(),
                started: Instant::now(),
                rows: 0,
                bytes: 0,
                error: None,
                node: node.clone().unwrap_or_else(|| default_node.to_string()),
            });
        }
        Verdict::Go {
            sql: rewritten,
            node,
        }
    }

    /// Sees a response frame forwarded to the client (only while a post_query is pending).
    pub fn observe(&mut self, tag: u8, frame: &[u8]) {
        let Some(r) = &mut self.current else { return };
        r.bytes += frame.len() as u64;
        match tag {
            b'C' => {
                // "SELECT 5", "INSERT 0 3", "UPDATE 2": the last word counts rows.
                let body = &frame[5..];
                let body = body.strip_suffix(b"\0").unwrap_or(body);
                if let Some(n) = body
                    .rsplit(|b| *b == b' ')
                    .next()
                    .and_then(|w| std::str::from_utf8(w).ok())
                    .and_then(|w| w.parse::<u64>().ok())
                {
                    r.rows += n;
                }
            }
            b'E' => {
                let f = crate::net::codec::parse_error_fields(&frame[5..]);
                r.error = Some(String::from_utf8_lossy(f.message).into_owned());
            }
            _ => {}
        }
    }

    /// The statement's ReadyForQuery went out: `post_query`.
    pub fn after(&mut self, shard: &Shard) {
        let Some(r) = self.current.take() else { return };
        let mut guard = shard.plugins.borrow_mut();
        let Some(p) = guard.as_mut() else { return };
        let hc = HookContext {
            request_id: r.id,
            client_id: self.client_id,
            identity: self.identity.as_ref(),
            database: &self.database,
            user: &self.user,
            application_name: &self.application_name,
            client_ip: self.client_ip,
            attributes: &self.attributes,
        };
        let qc = QueryContext {
            query: &r.query,
            normalized: &r.normalized,
            tables: &r.analysis.tables,
            is_read_only: r.analysis.is_read_only,
            hook_context: &hc,
        };
        let outcome = Outcome {
            success: r.error.is_none(),
            target_node: Some(&r.node),
            elapsed_us: r.started.elapsed().as_micros() as u64,
            rows: r.rows,
            response_bytes: r.bytes,
            error: r.error.as_deref(),
        };
        p.post_query(&qc, &outcome);
    }
}
