//! The statement pipeline: the stages every execution of a statement passes, in order.
//!
//! ```text
//!   classify      proto::Exchange + sql::classify: session-state effects (tracked, dirty,
//!                 pinned, refused), LISTEN, DEALLOCATE answered locally
//!   anomaly       signal::SignalStage ([anomaly] / [audit]): detection (may refuse, 42501),
//!                 the session's audit tally at the outcome (docs/signal.md)
//!   context       context::ContextGuard (databases whose access context fixes a role or
//!                 defaults): SET ROLE, SET/RESET/set_config of a fixed setting, BEGIN READ
//!                 WRITE in a read-only context → 42501 / 25006 (sql::fixed)
//!   pre_query     plugins::PluginStage: the WASM pre_query chain (may rewrite or refuse)
//!   route         plugins::PluginStage: the WASM route chain (may pick a node, say primary or
//!                 replica, or refuse); then route::RouteStage (databases with a topology):
//!                 hints, SET helios.route, read/write split → the node, from the shard's
//!                 topology copy
//!   forward       the session attaches a server connection (the chosen node's pool) and
//!                 proto::Exchange::send writes the statement
//!   observe rows  guard::ResultGuard (max_result_rows, max_result_bytes): each RowDescription
//!                 and DataRow as it streams; a stage may drop or rewrite a row, or end the
//!                 result with an error
//!   post_query    plugins::PluginStage: the WASM post_query chain, with the outcome (rows from
//!                 CommandComplete, response bytes, elapsed time, SQLSTATE and message)
//! ```
//!
//! Later stages (access guards before `pre_query`, a result cache after it) are one more
//! [`Stage`] in [`Pipeline::new`]; the session loop does not change.
//!
//! An *execution* is one simple Query, one Bind+Execute of the extended protocol (the statement
//! text comes from its Parse, however long ago), or one FunctionCall. Each has its own request
//! id, and stages see every execution: a statement prepared once and executed a thousand times
//! passes `pre_query` and `post_query` a thousand times. A rewrite of an extended statement
//! applies at its Bind: the rewritten text is prepared under a proxy name on the server
//! connection and the Bind retargeted to it (proto::Exchange).
//!
//! With no stage active (no plugin loaded, no limit configured) nothing is allocated and
//! nothing is recorded per execution; the cost is one check per statement
//! (benches/benches/pipeline.rs).

pub mod context;
pub mod guard;
pub mod journal;
pub mod plugins;
pub mod route;
pub mod signal;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProxyError;
use crate::net::codec::{parse_error_fields, read_cstr};
use crate::proto::exchange::{read_cstrs, Ended, RowAction, Then};
use crate::shard::Shard;

/// One stage of the pipeline. Every method has a default that does nothing.
pub trait Stage {
    /// Whether the stage acts on statements now (plugins come and go with a reload).
    fn active(&self, shard: &Shard) -> bool;
    /// Before the execution is forwarded: may rewrite `ex.sql`, pick `ex.node`, or refuse
    /// (the client gets the error; later stages and the server never see the statement).
    fn before(&mut self, _shard: &Shard, _ex: &mut Execution) -> Result<(), ProxyError> {
        Ok(())
    }
    /// Whether [`Stage::row`] should see this execution's rows.
    fn observes_rows(&self, _ex: &Execution) -> bool {
        false
    }
    /// A RowDescription (`T`) or DataRow (`D`) of the execution's result on its way to the
    /// client (`ex.rows_seen` and `ex.bytes` count what went before it).
    fn row(&mut self, _ex: &Execution, _tag: u8, _frame: &[u8]) -> RowAction {
        RowAction::Forward
    }
    /// The execution ended (or was refused): its outcome is in `ex`.
    fn after(&mut self, _shard: &Shard, _ex: &Execution) {}
    /// A transaction ended on its server connection, which is about to be released: a stage
    /// that wants the primary's WAL position at that commit (read-your-writes) returns where
    /// the session should put it.
    fn transaction_ended(&mut self) -> Option<route::Commit> {
        None
    }
}

/// A statement's text as the stages see it: valid UTF-8 in a refcounted [`Bytes`] — a slice of
/// the Query or Parse frame it came in, or of the text a named statement's Parse left — so an
/// execution copies no text (docs/signal.md "Cost"). Text that is not UTF-8 is converted
/// lossily (then it owns a copy), and so is a stage's rewrite (`String` into it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SqlText(Bytes);

impl SqlText {
    /// `b` as text (no copy when it is valid UTF-8).
    pub fn from_bytes(b: Bytes) -> SqlText {
        match std::str::from_utf8(&b) {
            Ok(_) => SqlText(b),
            Err(_) => SqlText(Bytes::from(String::from_utf8_lossy(&b).into_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks (or, from a `String`, knows) that the bytes are
        // valid UTF-8, and they are never changed after.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl std::ops::Deref for SqlText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for SqlText {
    fn from(s: String) -> SqlText {
        SqlText(Bytes::from(s))
    }
}

impl std::fmt::Display for SqlText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for SqlText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What a statement is, for the stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A simple Query (possibly several statements).
    Query,
    /// A Bind+Execute of the extended protocol.
    Execute,
    /// A FunctionCall message (`sql` is `FUNCTION CALL <oid>`).
    FunctionCall,
}

/// One execution of a statement, from the stages' first look to its outcome.
pub struct Execution {
    /// The request id the plugins see (the shard's id in the top 16 bits).
    pub id: u64,
    pub kind: Kind,
    /// The text that runs (a stage's rewrite replaces it: `ex.sql = text.into()`).
    pub sql: SqlText,
    /// A stage rewrote `sql`.
    pub rewritten: bool,
    /// The node a stage chose (`None`: the database's own).
    pub node: Option<String>,
    /// A plugin's `primary` / `replica` verdict, for the route stage.
    pub route: Option<crate::sql::read::Hint>,
    /// The route stage wants the database's primary and it has none now: wait for one.
    pub await_primary: bool,
    /// When the request's first byte arrived.
    pub started: Instant,
    /// Rows returned or affected, from CommandComplete.
    pub rows: u64,
    /// DataRows forwarded so far.
    pub rows_seen: u64,
    /// Response bytes forwarded to the client.
    pub bytes: u64,
    /// The SQLSTATE and message of the error that ended it, if one did.
    pub error: Option<(String, String)>,
    /// Some stage observes the rows.
    pub observed: bool,
    /// Facts the plugin stage computed once for both of its hooks.
    pub plugin: Option<plugins::Facts>,
    /// The portal it runs in (extended protocol).
    portal: Bytes,
    /// With the journal on: the Bind message (whole frame) and the statement's parameter types
    /// as its Parse gave them (`i16` count, then `u32` OIDs); empty otherwise.
    pub bind: Bytes,
    pub param_types: Bytes,
    /// Its CommandComplete said ROLLBACK (a COMMIT of a failed transaction does).
    pub rolled_back: bool,
}

impl Execution {
    pub fn success(&self) -> bool {
        self.error.is_none()
    }
}

/// Where a stage sends the transaction an execution starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// This configured node.
    Node(String),
    /// The database's primary, once it has one (up to `failover.timeout_ms`).
    Primary,
}

/// Statement texts kept per session before the map is cleared (a client that never closes).
const MAX_PARSED: usize = 4096;

/// Where a staged execution goes once its message is sent.
enum Going {
    /// A Bind: to its portal, until an Execute runs it.
    Portal,
    /// An unnamed Parse: until its Bind.
    Unnamed,
    /// A Query, FunctionCall or Execute: in flight until its outcome.
    Server,
}

/// The pipeline of one session: its stages, the statement texts its Parses carried, and the
/// executions between their stages' first look and their outcome.
pub struct Pipeline {
    /// In order.
    stages: Vec<Box<dyn Stage>>,
    /// Statement name → what its Parse carried after the name (text, NUL, parameter types).
    /// Kept for every Parse, whatever is active: a plugin enabled by a reload must see the
    /// text of statements prepared before it. A named statement's is a copy (made once per
    /// Parse; its executions slice it); the unnamed statement's is a slice of its Parse frame
    /// (parsed again for nearly every execution, and so never copied; it keeps at most that
    /// one frame's read buffer alive).
    parsed: HashMap<Bytes, Bytes>,
    /// Between [`Pipeline::before`] and [`Pipeline::sending`].
    staged: Option<(Execution, Going)>,
    /// Begun at an unnamed Parse, waiting for its Bind.
    unnamed: Option<Execution>,
    /// Bound portals not executed yet.
    portals: Vec<Execution>,
    /// Sent; completed in order by [`Pipeline::executed`].
    inflight: VecDeque<Execution>,
    /// A route stage is configured (the database has a topology).
    routes: bool,
    /// A journal stage is configured: executions carry their Bind and parameter types.
    journals: bool,
}

impl Pipeline {
    /// The stages, in the order they run. The plugin stage is always there (plugins enabled by
    /// a reload reach open sessions; it is inert while the shard has none); the others only
    /// when configured.
    pub fn new(
        plugins: Box<plugins::PluginStage>,
        route: Option<route::RouteStage>,
        guard: Option<guard::ResultGuard>,
        signal: Option<signal::SignalStage>,
        journal: Option<journal::JournalStage>,
        context: Option<context::ContextGuard>,
    ) -> Pipeline {
        let mut stages: Vec<Box<dyn Stage>> =
            Vec::with_capacity(1 + route.is_some() as usize + guard.is_some() as usize);
        let routes = route.is_some();
        // classify: the protocol core, before any stage.
        if let Some(s) = signal {
            stages.push(Box::new(s)); // anomaly detection, audit: before pre_query
        }
        if let Some(c) = context {
            stages.push(Box::new(c)); // access context: refuses changes of what it fixes
        }
        stages.push(plugins); // pre_query, route … post_query
        if let Some(r) = route {
            stages.push(Box::new(r)); // the node, after the plugins' say
        }
        // (result cache: here)
        if let Some(g) = guard {
            stages.push(Box::new(g)); // observes rows
        }
        // (audit: here)
        let journals = journal.is_some();
        if let Some(j) = journal {
            stages.push(Box::new(j)); // records what is not a plain read, with its outcome
        }
        Pipeline {
            stages,
            parsed: HashMap::new(),
            staged: None,
            unnamed: None,
            portals: Vec::new(),
            inflight: VecDeque::new(),
            routes,
            journals,
        }
    }

    /// Whether the database has a topology: a server connection taken without a stage's
    /// choice (a Describe before any Bind, a lone Sync) then goes to its current primary (or
    /// first usable node), not to the node the session started on.
    pub fn routes(&self) -> bool {
        self.routes
    }

    /// A transaction ended on its server connection (about to be released): where to put the
    /// primary's WAL position, if a stage wants it (read-your-writes after a write).
    pub fn transaction_ended(&mut self) -> Option<route::Commit> {
        if !self.routes {
            return None;
        }
        self.stages.iter_mut().find_map(|s| s.transaction_ended())
    }

    /// Whether any stage acts on statements now.
    pub fn active(&self, shard: &Shard) -> bool {
        self.stages.iter().any(|s| s.active(shard))
    }

    /// Remembers a Parse's statement text (and parameter types) under its name.
    pub fn parsed(&mut self, frame: &Bytes) {
        let Ok(([name], rest)) = read_cstrs::<1>(&frame[5..], "Parse") else {
            return;
        };
        let rest = if name.is_empty() {
            frame.slice_ref(rest)
        } else {
            Bytes::copy_from_slice(rest)
        };
        match self.parsed.get_mut(name) {
            Some(v) => *v = rest,
            None => {
                if self.parsed.len() >= MAX_PARSED {
                    // A client that never closes its statements: forget the oldest texts
                    // rather than grow without bound (their executions show `EXECUTE name`).
                    self.parsed.clear();
                }
                self.parsed.insert(Bytes::copy_from_slice(name), rest);
            }
        }
    }

    /// The client closed a statement (Close of kind `S`): its text goes. Drivers that name
    /// each statement afresh and close it after use (rust-postgres, asyncpg) would otherwise
    /// grow the map for the life of the session.
    pub fn closed(&mut self, name: &[u8]) {
        if !name.is_empty() {
            self.parsed.remove(name);
        }
    }

    /// Runs the stages' `before` for a message on its way to a server: a Query, a Bind (an
    /// execution begins), a FunctionCall; an Execute picks up its portal's execution. `Ok` with
    /// where a stage sends it; `Err`: refused (the stages' `after` has run; tell the client).
    pub fn before(
        &mut self,
        shard: &Shard,
        then: &mut Then,
        started: Instant,
    ) -> Result<Option<Target>, ProxyError> {
        self.staged = None;
        let (mut bind, mut param_types) = (Bytes::new(), Bytes::new());
        let (kind, sql, portal) = match then {
            Then::Execute { frame, req } => {
                if !self.portals.is_empty() {
                    let mut body = frame.body();
                    let portal = read_cstr(&mut body).unwrap_or_default();
                    if let Some(i) = self.portals.iter().position(|e| e.portal == portal) {
                        self.staged = Some((self.portals.swap_remove(i), Going::Server));
                        *req = true;
                    }
                }
                return Ok(None);
            }
            _ if !self.active(shard) => return Ok(None),
            Then::Query { frame, .. } => {
                let b = frame.body();
                let text = frame.bytes.slice_ref(b.strip_suffix(b"\0").unwrap_or(b));
                (Kind::Query, SqlText::from_bytes(text), Bytes::new())
            }
            Then::Parse(frame) => {
                // An unnamed statement is usually parsed, bound and executed in one batch: its
                // execution starts here, so that a route is chosen before the Parse takes a
                // server connection and a rewrite is what gets parsed. Its Bind goes on with it.
                let ([name, text], types) = read_cstrs::<2>(frame.body(), "Parse")?;
                if !name.is_empty() {
                    return Ok(None);
                }
                if self.journals {
                    param_types = frame.bytes.slice_ref(types);
                }
                let text = SqlText::from_bytes(frame.bytes.slice_ref(text));
                (Kind::Execute, text, Bytes::new())
            }
            Then::Bind { frame, .. } => {
                let ([portal, name], _) = read_cstrs::<2>(frame.body(), "Bind")?;
                if self.journals {
                    bind = frame.bytes.clone();
                }
                if name.is_empty() {
                    if let Some(mut ex) = self.unnamed.take() {
                        ex.bind = bind;
                        ex.portal = frame.bytes.slice_ref(portal);
                        self.staged = Some((ex, Going::Portal));
                        return Ok(None);
                    }
                }
                let text = match self.parsed.get(name) {
                    Some(rest) => {
                        let mut r = &rest[..];
                        let t = read_cstr(&mut r).unwrap_or_default();
                        if self.journals {
                            param_types = rest.slice_ref(r);
                        }
                        SqlText::from_bytes(rest.slice_ref(t))
                    }
                    // Prepared with SQL PREPARE: the stages see what the server will run.
                    None => format!("EXECUTE {}", String::from_utf8_lossy(name)).into(),
                };
                (Kind::Execute, text, frame.bytes.slice_ref(portal))
            }
            Then::FunctionCall { frame, .. } => {
                let oid = frame
                    .body()
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                (
                    Kind::FunctionCall,
                    format!("FUNCTION CALL {oid}").into(),
                    Bytes::new(),
                )
            }
            _ => return Ok(None),
        };
        let mut ex = Execution {
            id: next_request_id(shard),
            kind,
            sql,
            rewritten: false,
            node: None,
            route: None,
            await_primary: false,
            started,
            rows: 0,
            rows_seen: 0,
            bytes: 0,
            error: None,
            observed: false,
            plugin: None,
            portal,
            bind,
            param_types,
            rolled_back: false,
        };
        for s in self.stages.iter_mut() {
            if !s.active(shard) {
                continue;
            }
            if let Err(e) = s.before(shard, &mut ex) {
                ex.error = Some((e.code.0.to_string(), e.message.clone()));
                self.finish(shard, &ex);
                return Err(e);
            }
        }
        ex.observed = self.stages.iter().any(|s| s.observes_rows(&ex));
        if ex.rewritten {
            self.apply_rewrite(then, &ex)?;
        }
        let node = match (&ex.node, ex.await_primary) {
            (Some(n), _) => Some(Target::Node(n.clone())),
            (None, true) => Some(Target::Primary),
            (None, false) => None,
        };
        let going = match then {
            Then::Query { req, .. } | Then::FunctionCall { req, .. } => {
                *req = true;
                Going::Server
            }
            Then::Parse(_) => Going::Unnamed,
            _ => Going::Portal,
        };
        self.staged = Some((ex, going));
        Ok(node)
    }

    /// The rewritten text replaces the Query's, or is what a Bind runs.
    fn apply_rewrite(&self, then: &mut Then, ex: &Execution) -> Result<(), ProxyError> {
        match then {
            Then::Query { frame, .. } => {
                let mut b = BytesMut::new();
                crate::net::codec::put_query(&mut b, &ex.sql);
                frame.bytes = b.freeze();
            }
            Then::Parse(frame) => {
                let ([name, _], types) = read_cstrs::<2>(frame.body(), "Parse")?;
                let mut b = BytesMut::new();
                crate::net::codec::put_msg(&mut b, b'P', |b| {
                    crate::net::codec::put_cstr(b, name);
                    crate::net::codec::put_cstr(b, ex.sql.as_bytes());
                    b.put_slice(types);
                });
                frame.bytes = b.freeze();
            }
            Then::Bind { frame, rewrite } => {
                let ([_, name], _) = read_cstrs::<2>(frame.body(), "Bind")?;
                // The original's parameter types stay.
                let mut b = BytesMut::with_capacity(ex.sql.len() + 8);
                b.put_slice(ex.sql.as_bytes());
                b.put_u8(0);
                match self.parsed.get(name) {
                    Some(rest) => {
                        let mut r = &rest[..];
                        let _ = read_cstr(&mut r);
                        b.put_slice(r);
                    }
                    None => b.put_u16(0),
                }
                *rewrite = Some(b.freeze());
            }
            _ => {}
        }
        Ok(())
    }

    /// The message the last [`Pipeline::before`] passed is about to be sent: its execution
    /// waits for its Execute (a Bind) or its outcome. Called before the core queues the
    /// message, so the core's completions line up with `inflight`.
    pub fn sending(&mut self, shard: &Shard) {
        match self.staged.take() {
            Some((ex, Going::Portal)) => {
                // A new Bind of a portal ends the portal's earlier execution, never run.
                if let Some(i) = self.portals.iter().position(|e| e.portal == ex.portal) {
                    let mut old = self.portals.swap_remove(i);
                    old.error = Some((String::new(), "its portal was never executed".into()));
                    self.finish(shard, &old);
                }
                self.portals.push(ex);
            }
            Some((ex, Going::Unnamed)) => {
                if let Some(mut old) = self.unnamed.replace(ex) {
                    old.error = Some((String::new(), "its statement was never executed".into()));
                    self.finish(shard, &old);
                }
            }
            Some((ex, Going::Server)) => self.inflight.push_back(ex),
            None => {}
        }
    }

    /// The staged message was refused after the stages passed it (no server connection could
    /// be had, for one): its execution ends with that error.
    pub fn refused(&mut self, shard: &Shard, e: &ProxyError) {
        if let Some((mut ex, _)) = self.staged.take() {
            ex.error = Some((e.code.0.to_string(), e.message.clone()));
            self.finish(shard, &ex);
        }
    }

    /// A server frame went to the client: it counts towards the oldest execution in flight.
    pub fn forwarded(&mut self, tag: u8, frame: &[u8]) {
        let Some(ex) = self.inflight.front_mut() else {
            return;
        };
        ex.bytes += frame.len() as u64;
        match tag {
            b'D' => ex.rows_seen += 1,
            b'C' => {
                // "SELECT 5", "INSERT 0 3", "UPDATE 2": the last word counts rows.
                let body = frame.get(5..).unwrap_or_default();
                let body = body.strip_suffix(b"\0").unwrap_or(body);
                ex.rolled_back |= body == b"ROLLBACK";
                if let Some(n) = body
                    .rsplit(|b| *b == b' ')
                    .next()
                    .and_then(|w| std::str::from_utf8(w).ok())
                    .and_then(|w| w.parse::<u64>().ok())
                {
                    ex.rows += n;
                }
            }
            _ => {}
        }
    }

    /// An ErrorResponse from the server went to the client.
    pub fn server_error(&mut self, body: &[u8]) {
        let Some(ex) = self.inflight.front_mut() else {
            return;
        };
        ex.bytes += body.len() as u64 + 5;
        let f = parse_error_fields(body);
        ex.error = Some((
            String::from_utf8_lossy(f.code).into_owned(),
            String::from_utf8_lossy(f.message).into_owned(),
        ));
    }

    /// The result observers' say on a RowDescription or DataRow of the oldest execution in
    /// flight. The first stage that does not forward it decides.
    pub fn row(&mut self, tag: u8, frame: &[u8]) -> RowAction {
        let Some(ex) = self.inflight.front_mut() else {
            return RowAction::Forward;
        };
        if !ex.observed {
            return RowAction::Forward;
        }
        for s in self.stages.iter_mut() {
            match s.row(ex, tag, frame) {
                RowAction::Forward => {}
                RowAction::Fail(e) => {
                    ex.error = Some((e.code.0.to_string(), e.message.clone()));
                    return RowAction::Fail(e);
                }
                other => return other,
            }
        }
        RowAction::Forward
    }

    /// The core saw the oldest execution in flight end.
    pub fn executed(&mut self, shard: &Shard, how: Ended) {
        let Some(mut ex) = self.inflight.pop_front() else {
            return;
        };
        match how {
            Ended::Suspended => {
                // PortalSuspended: the next Execute of the portal goes on with it.
                self.portals.push(ex);
                return;
            }
            Ended::Skipped if ex.error.is_none() => {
                ex.error = Some((
                    String::new(),
                    "not executed: an earlier message of its batch failed".into(),
                ));
            }
            _ => {}
        }
        self.finish(shard, &ex);
    }

    /// Nothing is in flight and no transaction is open: the server has destroyed every portal,
    /// so a bound execution never executed is over.
    pub fn idle(&mut self, shard: &Shard) {
        if self.portals.is_empty() {
            return;
        }
        for mut ex in std::mem::take(&mut self.portals) {
            ex.error = Some((String::new(), "its portal was never executed".into()));
            self.finish(shard, &ex);
        }
    }

    /// The session ends: what never got an outcome gets this one.
    pub fn abandon(&mut self, shard: &Shard, why: &str) {
        let staged = self.staged.take().map(|(ex, _)| ex);
        let pending: Vec<Execution> = staged
            .into_iter()
            .chain(self.unnamed.take())
            .chain(self.portals.drain(..))
            .chain(self.inflight.drain(..))
            .collect();
        for mut ex in pending {
            if ex.error.is_none() {
                ex.error = Some((String::new(), why.to_string()));
            }
            self.finish(shard, &ex);
        }
    }

    fn finish(&mut self, shard: &Shard, ex: &Execution) {
        for s in self.stages.iter_mut() {
            s.after(shard, ex);
        }
    }
}
fn next_request_id(shard: &Shard) -> u64 {
    let n = shard.request_seq.get() + 1;
    shard.request_seq.set(n);
    ((shard.id as u64) << 48) | n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, sql: &str) -> Bytes {
        let mut b = BytesMut::new();
        crate::net::codec::put_msg(&mut b, b'P', |b| {
            crate::net::codec::put_cstr(b, name.as_bytes());
            crate::net::codec::put_cstr(b, sql.as_bytes());
            b.put_u16(0);
        });
        b.freeze()
    }

    #[test]
    fn statement_texts_go_with_close_and_stay_bounded() {
        let mut p = Pipeline::new(
            plugins::PluginStage::new("u", "db", "", None),
            None,
            None,
            None,
            None,
            None,
        );
        // rust-postgres names each statement afresh and closes it after use.
        for i in 0..10_000 {
            let name = format!("s{i}");
            p.parsed(&parse(&name, "select 1"));
            p.closed(name.as_bytes());
        }
        assert!(p.parsed.is_empty());
        p.parsed(&parse("", "select 2"));
        p.closed(b"");
        assert_eq!(
            p.parsed.len(),
            1,
            "the unnamed statement's buffer is kept for reuse"
        );
        // One that never closes: bounded.
        for i in 0..10_000 {
            p.parsed(&parse(&format!("t{i}"), "select 3"));
        }
        assert!(p.parsed.len() <= MAX_PARSED);
    }
}
