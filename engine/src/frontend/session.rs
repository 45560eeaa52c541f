//! One client session: the explicit state machine between a client and the server connection
//! it is attached to (for its whole life in session mode, per transaction in transaction mode).
//!
//! The session keeps a queue of the responses it expects from the server ([`Expect`]), one
//! entry per request it sent, and what to do with each: forward it, swallow it (a Parse or SET
//! the proxy injected), or synthesize a response the server will never send (a ParseComplete
//! for a statement the server connection already has). That queue is what lets transaction
//! pooling move named prepared statements and session settings between server connections,
//! and it tells exactly when a server connection is free: the queue is empty, the client has no
//! unfinished extended-protocol batch, and the server said ReadyForQuery idle.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use helios_config::PoolMode;

use super::login::{queue_error, refuse, Admitted, Login};
use crate::backend::pool::Pool;
use crate::backend::server::{BackendKey, ServerConn};
use crate::error::{Blame, ProxyError, SqlState};
use crate::net::codec::{
    parse_error_fields, put_backend_key, put_command_complete, put_cstr, put_msg,
    put_parameter_status, put_proxy_error, put_query, put_ready, read_cstr, Frame, FrameError,
    FrameReader, FrameRef,
};
use crate::net::conn::{Conn, ZERO_COPY_MIN};
use crate::pipeline::plugins::{Hooks, Verdict};
use crate::shard::{ClientMeta, ParamMap, Shard, Statement};
use crate::sql::{self, SessionCommand};
use crate::stats::{Counters, DbStats};

const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

/// A response the session is waiting for, in request order.
#[derive(Debug, Clone)]
enum Expect {
    /// Sent to the client when it reaches the front (the server will not send it).
    Synthetic(Bytes),
    /// A synthesized ReadyForQuery with the transaction status at that moment.
    SyntheticReady,
    /// ParseComplete; `stmt` is a proxy-named statement, `swallow` if the proxy injected it.
    Parse {
        stmt: Option<u64>,
        swallow: bool,
    },
    Bind,
    /// ParameterDescription (optional) then RowDescription or NoData.
    Describe,
    /// Rows, then CommandComplete / EmptyQueryResponse / PortalSuspended; `track` as for
    /// Query, when the portal runs a tracked SET.
    Execute {
        track: Option<SessionCommand>,
    },
    /// The client ended a COPY (CopyDone/CopyFail): no response of its own. Marks which
    /// Syncs the server ignored because they arrived during copy-in.
    CopyEnd,
    Close {
        swallow: bool,
    },
    Sync,
    /// A simple query, until its ReadyForQuery; `track` is applied on its CommandComplete.
    Query {
        track: Option<SessionCommand>,
    },
    FunctionCall,
    /// The proxy's own query (SET re-application): every response swallowed.
    Internal,
    /// The proxy's raise statement after a refused extended batch: the error is swallowed (the
    /// client already has one), the ReadyForQuery forwarded.
    Abort,
}

impl Expect {
    fn is_extended(&self) -> bool {
        matches!(
            self,
            Expect::Parse { .. }
                | Expect::Bind
                | Expect::Describe
                | Expect::Execute { .. }
                | Expect::Close { .. }
        )
    }
}

/// Where a client message stands after its checks.
enum Next {
    /// Answered, refused or queued: nothing more to do.
    Done,
    /// Terminate.
    Terminate,
    /// It goes to a server: attach one, then finish it with [`Session::then`].
    Server(Then),
}

/// The rest of a client message, once a server connection is attached.
enum Then {
    Query {
        frame: Frame,
        track: Option<SessionCommand>,
    },
    Parse(Frame),
    Bind(Frame),
    Describe(Frame),
    Close(Frame),
    Execute(Frame),
    FunctionCall(Frame),
}

impl Then {
    /// Whether a failure to attach is reported the extended protocol's way.
    fn extended(&self) -> bool {
        !matches!(self, Then::Query { .. } | Then::FunctionCall(_))
    }
}

enum Event {
    Client(io::Result<usize>),
    Server(io::Result<usize>),
    Shutdown,
}

/// Why the session loop ended.
enum End {
    /// The client said Terminate or went away.
    ClientGone,
    /// Send this error, then close.
    Fatal(ProxyError),
    /// The server connection died; the client has been told.
    ServerGone,
}

/// Serves an admitted client until it leaves.
pub async fn serve(shard: Rc<Shard>, a: Admitted) {
    let Admitted {
        client,
        reader,
        login,
        hooks,
        pool,
    } = a;
    let session = match Session::begin(shard.clone(), client, reader, pool, login, hooks).await {
        Ok(s) => s,
        Err((client, e)) => {
            refuse(&shard, client, &e).await;
            return;
        }
    };
    session.run().await;
}

struct Session {
    shard: Rc<Shard>,
    client: Conn,
    creader: FrameReader,
    pool: Rc<Pool>,
    mode: PoolMode,
    server: Option<ServerConn>,
    expect: VecDeque<Expect>,
    /// The transaction status of the last ReadyForQuery: `I`, `T` or `E`.
    tx_status: u8,
    /// The client sent extended-protocol messages since its last Sync.
    ext_open: bool,
    /// The proxy refused a message of the current extended batch: drop the rest until Sync.
    client_skip: bool,
    /// The server failed a message of the current extended batch and ignores the rest until
    /// Sync.
    server_skip: bool,
    /// Session parameters the client wants (SQL text of the value), beyond server defaults.
    /// Shared copy-on-write (`Shard::shared_params`): a server connection last used by a client
    /// with the same settings matches by pointer; otherwise two small ordered maps compare.
    desired: Rc<ParamMap>,
    startup_desired: Rc<ParamMap>,
    /// The client's named prepared statements (transaction mode).
    statements: HashMap<Bytes, Rc<Statement>>,
    cancel_target: Rc<Cell<Option<BackendKey>>>,
    pid: i32,
    /// A FATAL error from the server was forwarded: its connection is ending.
    server_fatal: bool,
    shutdown_registered: bool,
    db_stats: Rc<DbStats>,
    /// When the request being answered started (its first byte arrived).
    request_start: Option<Instant>,
    /// When the first request of the current server exchange was flushed.
    server_sent: Option<Instant>,
    meta: Rc<ClientMeta>,
    /// Transaction mode: statements whose text is a tracked SET/RESET/DISCARD (by client
    /// statement name), and the portals bound to them — so a SET sent through the extended
    /// protocol is tracked like a simple one. Usually empty.
    stmt_cmds: HashMap<Bytes, SessionCommand>,
    portal_cmds: HashMap<Bytes, SessionCommand>,
    /// SETs made inside a transaction block: kept on COMMIT, forgotten on ROLLBACK.
    pending_cmds: Vec<SessionCommand>,
    /// The database's own pool; `pool` is the one the attached server came from (another node's
    /// when a route plugin chose one).
    default_pool: Rc<Pool>,
    /// A route plugin's node for the next server connection.
    route_node: Option<String>,
    /// Plugin hooks (inert while the shard has no plugins: the query path then does nothing
    /// extra).
    hooks: Box<Hooks>,
    /// Transaction mode: the route a plugin chose for a named statement whose Parse was
    /// answered without a server; its Bind checks out that node's connection.
    stmt_routes: HashMap<Bytes, String>,
}

impl Session {
    async fn begin(
        shard: Rc<Shard>,
        mut client: Conn,
        creader: FrameReader,
        pool: Rc<Pool>,
        login: Login,
        mut hooks: Box<Hooks>,
    ) -> Result<Session, (Conn, ProxyError)> {
        // What clients are told at login comes from the pool's first server connection.
        let existing = pool.server_params.borrow().clone();
        let params = match existing {
            Some(p) => p,
            None => match pool.checkout().await {
                Ok(s) => {
                    let p = s.startup_params.clone();
                    pool.release(s);
                    p
                }
                Err(mut e) => {
                    e.fatal = true;
                    return Err((client, e));
                }
            },
        };
        let mut desired = ParamMap::new();
        for (k, v) in &login.params {
            let name = k.to_ascii_lowercase();
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            {
                log::info!("ignoring startup parameter with an invalid name {k:?}");
                continue;
            }
            let server_default = params.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name));
            if server_default.is_some_and(|(_, sv)| sv == v) {
                continue;
            }
            desired.insert(name, sql::quote_literal(v));
        }
        let out = client.queue();
        for (name, value) in params.iter() {
            let client_value = login
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            put_parameter_status(out, name, client_value.unwrap_or(value));
        }
        let cancel_target = Rc::new(Cell::new(None));
        let meta = Rc::new(ClientMeta {
            user: login.user.clone(),
            database: login.database.clone(),
            application_name: login
                .params
                .iter()
                .find(|(k, _)| k == "application_name")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            addr: client
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            connected_at: crate::backend::pool::unix_ms() / 1000,
            state: Cell::new("idle"),
            server: Cell::new(None),
            waker: std::cell::RefCell::new(None),
        });
        let (pid, secret) = shard.register_client(cancel_target.clone(), meta.clone());
        hooks.set_client_id(pid);
        put_backend_key(client.queue(), pid, secret);
        put_ready(client.queue(), b'I');
        let mode = pool.settings.borrow().mode;
        let default_pool = pool.clone();
        let desired = shard.shared_params(desired);
        Ok(Session {
            client,
            creader,
            pool,
            mode,
            server: None,
            expect: VecDeque::new(),
            tx_status: b'I',
            ext_open: false,
            client_skip: false,
            server_skip: false,
            startup_desired: desired.clone(),
            desired,
            statements: HashMap::new(),
            cancel_target,
            pid,
            server_fatal: false,
            shutdown_registered: false,
            db_stats: shard.stats.db(&login.database),
            meta,
            default_pool,
            route_node: None,
            hooks,
            stmt_routes: HashMap::new(),
            stmt_cmds: HashMap::new(),
            portal_cmds: HashMap::new(),
            pending_cmds: Vec::new(),
            request_start: None,
            server_sent: None,
            shard,
        })
    }

    async fn run(mut self) {
        let end = self.main_loop().await;
        match end {
            End::ClientGone => {}
            End::Fatal(e) => {
                log::debug!("session {}: {e}", self.pid);
                queue_error(&mut self.client, &e);
            }
            End::ServerGone => {}
        }
        self.shard.unregister_client(self.pid);
        self.cancel_target.set(None);
        if let Some(server) = self.server.take() {
            let clean = self.expect.is_empty() && self.tx_status == b'I' && !self.server_fatal;
            if clean && self.mode == PoolMode::Session {
                let pool = self.pool.clone();
                glommio::spawn_local(reset_and_release(pool, server)).detach();
            } else if clean && !self.ext_open {
                self.pool.release(server);
            } else {
                self.pool.discard(server);
            }
        }
        self.client.close().await;
    }

    fn can_close_for_shutdown(&self) -> bool {
        match self.mode {
            PoolMode::Transaction => self.server.is_none(),
            PoolMode::Session => self.expect.is_empty() && self.tx_status == b'I' && !self.ext_open,
        }
    }

    async fn next_event(&mut self) -> Event {
        std::future::poll_fn(|cx| {
            if let Some(s) = &mut self.server {
                if let Poll::Ready(r) = s.conn.poll_read_into(cx, &mut s.reader) {
                    return Poll::Ready(Event::Server(r));
                }
            }
            if let Poll::Ready(r) = self.client.poll_read_into(cx, &mut self.creader) {
                return Poll::Ready(Event::Client(r));
            }
            if !self.shutdown_registered {
                // A task's waker stays the same for its life: leave it once where the shard
                // wakes every session at shutdown (it goes with the session's cancel entry).
                self.shutdown_registered = true;
                self.meta.waker.replace(Some(cx.waker().clone()));
            }
            if self.shard.shutdown.is_set() && self.can_close_for_shutdown() {
                return Poll::Ready(Event::Shutdown);
            }
            Poll::Pending
        })
        .await
    }

    async fn main_loop(&mut self) -> End {
        if self.client.flush().await.is_err() {
            return End::ClientGone;
        }
        loop {
            match self.next_event().await {
                Event::Client(Ok(0)) | Event::Client(Err(_)) => return End::ClientGone,
                Event::Client(Ok(n)) => {
                    Counters::add(&self.shard.stats.counters.bytes_in, n as u64);
                    if self.request_start.is_none() {
                        self.request_start = Some(helios_uring::turn_time());
                    }
                    loop {
                        let frame = match self.creader.next_frame() {
                            Ok(Some(f)) => f,
                            Ok(None) => break,
                            Err(e) => return End::Fatal(e.into()),
                        };
                        let then = match self.on_client(frame) {
                            Ok(Next::Done) => continue,
                            Ok(Next::Terminate) => return End::ClientGone,
                            Ok(Next::Server(then)) => then,
                            Err(e) => return End::Fatal(e),
                        };
                        // The one wait of a client message: for a server connection. Its
                        // future exists only while one is taken (the handlers are plain
                        // functions, so no message builds and moves nested futures).
                        if self.server.is_none() {
                            match self.attach(then.extended()).await {
                                Ok(true) => {}
                                Ok(false) => continue,
                                Err(e) => return End::Fatal(e),
                            }
                        }
                        if let Err(e) = self.then(then) {
                            return End::Fatal(e);
                        }
                    }
                    if let Some(end) = self.flush_server().await {
                        return end;
                    }
                    if self.client.flush().await.is_err() {
                        return End::ClientGone;
                    }
                    self.maybe_release();
                }
                Event::Server(Ok(n)) if n > 0 => {
                    Counters::add(&self.shard.stats.counters.bytes_out, n as u64);
                    if let Err(e) = self.server_frames() {
                        log::warn!("session {}: bad frame from server: {e:?}", self.pid);
                        return self.server_lost().await;
                    }
                    // Backpressure: nothing more is read from the server until the client took
                    // this batch.
                    if self.client.flush().await.is_err() {
                        return End::ClientGone;
                    }
                    self.maybe_release();
                    if self.shard.shutdown.is_set() && self.can_close_for_shutdown() {
                        return self.shutdown_end();
                    }
                }
                Event::Server(_) => return self.server_lost().await,
                Event::Shutdown => return self.shutdown_end(),
            }
        }
    }

    fn shutdown_end(&mut self) -> End {
        End::Fatal(ProxyError::fatal(
            SqlState::ADMIN_SHUTDOWN,
            Blame::Proxy,
            "terminating connection: heliosproxy is shutting down",
        ))
    }

    async fn server_lost(&mut self) -> End {
        self.meta.server.set(None);
        self.meta.state.set("idle");
        if let Some(s) = self.server.take() {
            log::info!(
                "session {}: server connection {:?} closed (pid {})",
                self.pid,
                s.id,
                s.key.pid
            );
            self.pool.discard(s);
        }
        self.cancel_target.set(None);
        if !self.server_fatal {
            let e = ProxyError::fatal(
                SqlState::CONNECTION_FAILURE,
                Blame::Server,
                "server closed the connection unexpectedly",
            );
            queue_error(&mut self.client, &e);
        }
        let _ = self.client.flush().await;
        End::ServerGone
    }

    async fn flush_server(&mut self) -> Option<End> {
        let s = self.server.as_mut()?;
        if s.conn.pending() == 0 {
            return None;
        }
        if self.server_sent.is_none() {
            self.server_sent = Some(helios_uring::turn_time());
        }
        if s.conn.flush().await.is_err() {
            return Some(self.server_lost().await);
        }
        None
    }

    /// Transaction mode: hand the server connection back once the transaction is over.
    fn maybe_release(&mut self) {
        if self.mode != PoolMode::Transaction
            || self.tx_status != b'I'
            || self.ext_open
            || self.client_skip
            || self.server_skip
            || !self.expect.is_empty()
        {
            if self.server.is_some() {
                log::trace!(
                    "session {}: keeps its server: tx {} ext_open {} skip {}/{} expect {:?}",
                    self.pid,
                    self.tx_status as char,
                    self.ext_open,
                    self.client_skip,
                    self.server_skip,
                    self.expect
                );
            }
            return;
        }
        if let Some(s) = self.server.take() {
            self.cancel_target.set(None);
            self.meta.state.set("idle");
            self.meta.server.set(None);
            if s.conn.pending() > 0 || self.server_fatal {
                self.pool.discard(s);
            } else {
                self.pool.release(s);
            }
            self.pool = self.default_pool.clone();
        }
    }

    // ---- client → server ----

    /// Handles one client message up to the point where it needs a server connection (then
    /// [`Session::then`] finishes it, once one is attached).
    fn on_client(&mut self, frame: Frame) -> Result<Next, ProxyError> {
        if self.client_skip && frame.tag != b'S' && frame.tag != b'X' {
            return Ok(Next::Done);
        }
        match frame.tag {
            b'X' => return Ok(Next::Terminate),
            b'Q' => return self.on_query(frame),
            b'P' => return self.on_parse(frame),
            b'B' => return self.on_bind(frame),
            b'D' => return self.on_describe(frame),
            b'C' => return self.on_close(frame),
            b'E' => {
                self.ext_open = true;
                return Ok(Next::Server(Then::Execute(frame)));
            }
            b'S' => self.on_sync(frame),
            b'H' => {
                if self.server.is_some() {
                    self.forward(&frame);
                }
            }
            b'F' => {
                if Hooks::active(&self.shard) {
                    let oid = frame
                        .body()
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    let desc = format!("FUNCTION CALL {}", oid.unwrap_or(0));
                    if self.run_hooks(&desc, false).is_none() {
                        return Ok(Next::Done);
                    }
                }
                return Ok(Next::Server(Then::FunctionCall(frame)));
            }
            b'd' | b'c' | b'f' => {
                // COPY data goes to the server the COPY runs on; outside a COPY there is none.
                if self.server.is_some() {
                    self.forward(&frame);
                    if frame.tag != b'd' {
                        self.push(Expect::CopyEnd);
                    }
                }
            }
            t => {
                return Err(ProxyError::protocol(format!(
                    "invalid frontend message type {}",
                    t
                )))
            }
        }
        Ok(Next::Done)
    }

    /// Finishes a client message on the attached server connection.
    fn then(&mut self, then: Then) -> Result<(), ProxyError> {
        match then {
            Then::Query { frame, track } => {
                self.forward(&frame);
                self.push(Expect::Query { track });
            }
            Then::Parse(frame) => self.parse_on_server(frame)?,
            Then::Bind(frame) => self.bind_on_server(frame)?,
            Then::Describe(frame) => self.describe_on_server(frame)?,
            Then::Close(frame) => {
                self.forward(&frame);
                self.push(Expect::Close { swallow: false });
            }
            Then::Execute(frame) => {
                self.forward(&frame);
                let track = if self.portal_cmds.is_empty() {
                    None
                } else {
                    let mut rest = frame.body();
                    read_cstr(&mut rest).and_then(|p| self.portal_cmds.get(p).cloned())
                };
                self.push(Expect::Execute { track });
            }
            Then::FunctionCall(frame) => {
                self.forward(&frame);
                self.push(Expect::FunctionCall);
            }
        }
        Ok(())
    }

    fn forward(&mut self, frame: &Frame) {
        if let Some(s) = &mut self.server {
            s.conn.queue_frame(&frame.bytes);
        }
    }

    /// Makes sure a server connection is attached. On failure the client is told (as an
    /// extended-protocol or simple-query error) and `Ok(false)` returned.
    async fn attach(&mut self, extended: bool) -> Result<bool, ProxyError> {
        if self.server.is_some() {
            return Ok(true);
        }
        self.pool = match self.route_node.take() {
            Some(node) => {
                let (alias, user) = (self.meta.database.clone(), self.meta.user.clone());
                match self.shard.pool_on(&alias, &user, Some(&node)) {
                    Some(p) => p,
                    None => {
                        self.reject(
                            ProxyError::error(
                                SqlState("42000"),
                                Blame::Client,
                                format!("route: node {node:?} is not configured"),
                            ),
                            extended,
                        );
                        return Ok(false);
                    }
                }
            }
            None => self.default_pool.clone(),
        };
        let t0 = helios_uring::turn_time();
        self.meta.state.set("waiting");
        let checked_out = self.pool.checkout().await;
        self.db_stats
            .record_checkout(helios_uring::turn_time().saturating_duration_since(t0));
        match checked_out {
            Ok(s) => {
                self.meta.state.set("active");
                self.meta
                    .server
                    .set(Some((s.id.0, s.key.pid, s.created_unix)));
                self.cancel_target.set(Some(s.key));
                self.server = Some(s);
                self.server_fatal = false;
                self.sync_params();
                Ok(true)
            }
            Err(e) => {
                self.meta.state.set("idle");
                log::info!("session {}: {}", self.pid, e.message);
                self.reject(e, extended);
                Ok(false)
            }
        }
    }

    /// Re-applies the client's session settings where this server connection differs.
    fn sync_params(&mut self) {
        let Some(s) = &mut self.server else { return };
        // Usually the same shared set (clients with the same start-up settings and no SET).
        if Rc::ptr_eq(&s.applied, &self.desired) || s.applied == self.desired {
            s.applied = self.desired.clone();
            return;
        }
        let mut q = String::new();
        for (k, v) in self.desired.iter() {
            if s.applied.get(k) != Some(v) {
                q.push_str(&format!("SET {k} TO {v};"));
            }
        }
        for k in s.applied.keys() {
            if !self.desired.contains_key(k) {
                q.push_str(&format!("RESET {k};"));
            }
        }
        s.applied = self.desired.clone();
        if !q.is_empty() {
            put_query(s.conn.queue(), &q);
            self.expect.push_back(Expect::Internal);
        }
    }

    /// Tells the client that its request was refused, in the shape the protocol expects: an
    /// error then ReadyForQuery for a simple query; an error and the rest of the batch
    /// ignored until Sync for the extended protocol. Inside a transaction the server's
    /// transaction is failed too, so client and server agree it is aborted.
    fn reject(&mut self, e: ProxyError, extended: bool) {
        self.shard.stats.counters.error(e.code.0.as_bytes());
        let mut b = BytesMut::new();
        put_proxy_error(&mut b, &e);
        if extended {
            self.client_skip = true;
        }
        match &mut self.server {
            Some(s) if !extended && self.tx_status != b'I' => {
                // Our error goes to the client; a raise statement fails the server's
                // transaction too (its own error swallowed), so its ReadyForQuery says `E`.
                put_query(s.conn.queue(), &sql::raise_statement(e.code.0, &e.message));
                self.push(Expect::Synthetic(b.freeze()));
                self.push(Expect::Abort);
            }
            Some(_) => {
                self.push(Expect::Synthetic(b.freeze()));
                if !extended {
                    self.push(Expect::SyntheticReady);
                }
            }
            None => {
                self.client.queue().extend_from_slice(&b);
                if !extended {
                    put_ready(self.client.queue(), b'I');
                }
            }
        }
    }

    /// Answers a simple query without the server (DEALLOCATE of a proxy-tracked statement).
    fn respond_locally(&mut self, tag: &str) {
        let mut b = BytesMut::new();
        put_command_complete(&mut b, tag);
        if self.server.is_some() {
            self.push(Expect::Synthetic(b.freeze()));
            self.push(Expect::SyntheticReady);
        } else {
            self.client.queue().extend_from_slice(&b);
            put_ready(self.client.queue(), self.tx_status);
        }
    }

    /// Runs the plugins' pre_query and route hooks; `None`: refused (the client was told).
    fn run_hooks(&mut self, sql: &str, extended: bool) -> Option<Option<String>> {
        let h = &mut self.hooks;
        if let Some(SessionCommand::Set { name, value }) = sql::session_command(sql) {
            if name.starts_with("helios.") {
                h.set_attribute(&name, &value);
            }
        }
        let node = self.pool.settings.borrow().target.node.clone();
        match h.before(&self.shard, sql, &node) {
            Verdict::Go { sql, node } => {
                if self.server.is_none() {
                    // Each statement decides for itself: no route carries over to the next.
                    self.route_node = node;
                }
                Some(sql)
            }
            Verdict::Block(reason) => {
                self.reject(
                    ProxyError::error(
                        SqlState(helios_plugin_host::BLOCK_SQLSTATE),
                        Blame::Client,
                        reason,
                    ),
                    extended,
                );
                None
            }
        }
    }

    fn on_query(&mut self, mut frame: Frame) -> Result<Next, ProxyError> {
        if Hooks::active(&self.shard) {
            let body = frame.body();
            let sql =
                String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into_owned();
            match self.run_hooks(&sql, false) {
                None => return Ok(Next::Done),
                Some(Some(rewritten)) => {
                    let mut b = BytesMut::new();
                    put_query(&mut b, &rewritten);
                    frame = Frame {
                        tag: b'Q',
                        bytes: b.freeze(),
                    };
                }
                Some(None) => {}
            }
        }
        let body = frame.body();
        let text = body.strip_suffix(b"\0").unwrap_or(body);
        let sql_text = std::str::from_utf8(text).unwrap_or("");
        let mut track = None;
        if self.mode == PoolMode::Transaction {
            if let Some(msg) = sql::transaction_mode_unsupported(sql_text) {
                self.reject(
                    ProxyError::error(SqlState::FEATURE_NOT_SUPPORTED, Blame::Client, msg),
                    false,
                );
                return Ok(Next::Done);
            }
            match sql::session_command(sql_text) {
                Some(SessionCommand::Deallocate { name }) => {
                    if self.statements.remove(name.as_bytes()).is_some() {
                        self.respond_locally("DEALLOCATE");
                        return Ok(Next::Done);
                    }
                }
                Some(SessionCommand::DeallocateAll) => {
                    self.statements.clear();
                    self.respond_locally("DEALLOCATE ALL");
                    return Ok(Next::Done);
                }
                other => track = other,
            }
        }
        Ok(Next::Server(Then::Query { frame, track }))
    }

    fn on_parse(&mut self, mut frame: Frame) -> Result<Next, ProxyError> {
        self.ext_open = true;
        if Hooks::active(&self.shard) {
            // Parse carries the SQL: a statement refused here is never prepared, so no later
            // Bind/Execute can run it; a rewrite is what gets prepared and executed.
            let ([name, query], rest) = read_cstrs(frame.body(), "Parse")?;
            let sql = String::from_utf8_lossy(query).into_owned();
            match self.run_hooks(&sql, true) {
                None => return Ok(Next::Done),
                Some(Some(rewritten)) => {
                    let mut b = BytesMut::new();
                    put_msg(&mut b, b'P', |b| {
                        put_cstr(b, name);
                        put_cstr(b, rewritten.as_bytes());
                        b.put_slice(rest);
                    });
                    frame = Frame {
                        tag: b'P',
                        bytes: b.freeze(),
                    };
                }
                Some(None) => {}
            }
        }
        let ([name], after_name) = read_cstrs(frame.body(), "Parse")?;
        let ([query], _) = read_cstrs(after_name, "Parse")?;
        if self.mode == PoolMode::Transaction {
            let text = std::str::from_utf8(query).unwrap_or("");
            if let Some(msg) = sql::transaction_mode_unsupported(text) {
                self.reject(
                    ProxyError::error(SqlState::FEATURE_NOT_SUPPORTED, Blame::Client, msg),
                    true,
                );
                return Ok(Next::Done);
            }
            if !name.is_empty() && self.statements.contains_key(name) {
                self.reject(
                    ProxyError::error(
                        SqlState("42P05"),
                        Blame::Client,
                        format!(
                            "prepared statement \"{}\" already exists",
                            String::from_utf8_lossy(name)
                        ),
                    ),
                    true,
                );
                return Ok(Next::Done);
            }
            match sql::session_command(text) {
                Some(cmd) => {
                    self.stmt_cmds.insert(Bytes::copy_from_slice(name), cmd);
                }
                None if !self.stmt_cmds.is_empty() => {
                    self.stmt_cmds.remove(name);
                }
                None => {}
            }
        }
        if !name.is_empty() && self.mode == PoolMode::Transaction && self.server.is_none() {
            // Outside a transaction a named Parse is answered here and prepared on a server
            // at its first Bind/Describe (a parse error then comes with that message). Taking
            // a server for it could deadlock: libpq's PQprepare blocks the whole client
            // thread (pgbench -j) while its other connections hold every server connection.
            let stmt = self
                .shard
                .statements
                .borrow_mut()
                .intern(self.shard.id, after_name);
            self.statements.insert(Bytes::copy_from_slice(name), stmt);
            match self.route_node.take() {
                Some(node) => {
                    self.stmt_routes.insert(Bytes::copy_from_slice(name), node);
                }
                None if !self.stmt_routes.is_empty() => {
                    self.stmt_routes.remove(name);
                }
                None => {}
            }
            self.client.queue().extend_from_slice(PARSE_COMPLETE);
            return Ok(Next::Done);
        }
        Ok(Next::Server(Then::Parse(frame)))
    }

    fn parse_on_server(&mut self, frame: Frame) -> Result<(), ProxyError> {
        let ([name], after_name) = read_cstrs(frame.body(), "Parse")?;
        if name.is_empty() || self.mode == PoolMode::Session {
            self.forward(&frame);
            self.push(Expect::Parse {
                stmt: None,
                swallow: false,
            });
            return Ok(());
        }
        let stmt = self
            .shard
            .statements
            .borrow_mut()
            .intern(self.shard.id, after_name);
        self.statements
            .insert(Bytes::copy_from_slice(name), stmt.clone());
        let has = self
            .server
            .as_mut()
            .is_some_and(|s| s.prepared.contains(stmt.id));
        if has {
            self.push(Expect::Synthetic(Bytes::from_static(PARSE_COMPLETE)));
        } else {
            self.prepare_on_server(&stmt, false);
        }
        Ok(())
    }

    /// Sends the statement's Parse under its proxy name, closing the least recently used
    /// statement first if the connection's cache is full.
    fn prepare_on_server(&mut self, stmt: &Statement, swallow: bool) {
        let Some(s) = &mut self.server else { return };
        if let Some(evicted) = s.prepared.insert(stmt.id) {
            let name = format!("_hp_{evicted:x}");
            put_msg(s.conn.queue(), b'C', |b| {
                b.put_u8(b'S');
                put_cstr(b, name.as_bytes());
            });
            self.push(Expect::Close { swallow: true });
        }
        if let Some(s) = &mut self.server {
            s.conn.queue_frame(&stmt.parse);
        }
        self.push(Expect::Parse {
            stmt: Some(stmt.id),
            swallow,
        });
    }

    /// The proxy statement for a client statement name, preparing it on the attached server
    /// if that connection does not have it yet. `None`: the client never prepared it (the
    /// client has been sent 26000).
    fn statement_for(&mut self, name: &[u8]) -> Option<Rc<Statement>> {
        let Some(stmt) = self.statements.get(name).cloned() else {
            self.reject(
                ProxyError::error(
                    SqlState::INVALID_SQL_STATEMENT_NAME,
                    Blame::Client,
                    format!(
                        "prepared statement \"{}\" does not exist",
                        String::from_utf8_lossy(name)
                    ),
                ),
                true,
            );
            return None;
        };
        let has = self
            .server
            .as_mut()
            .is_some_and(|s| s.prepared.contains(stmt.id));
        if !has {
            self.prepare_on_server(&stmt, true);
        }
        Some(stmt)
    }

    /// A statement prepared with a route plugin's node runs there when it next takes a server.
    fn route_for_statement(&mut self, name: &[u8]) {
        if self.server.is_none() && !self.stmt_routes.is_empty() {
            self.route_node = self.stmt_routes.get(name).cloned();
        }
    }

    fn on_bind(&mut self, frame: Frame) -> Result<Next, ProxyError> {
        self.ext_open = true;
        let ([portal, name], _) = read_cstrs(frame.body(), "Bind")?;
        if !self.stmt_cmds.is_empty() || !self.portal_cmds.is_empty() {
            match self.stmt_cmds.get(name).cloned() {
                Some(cmd) => {
                    self.portal_cmds.insert(Bytes::copy_from_slice(portal), cmd);
                }
                None => {
                    self.portal_cmds.remove(portal);
                }
            }
        }
        self.route_for_statement(name);
        Ok(Next::Server(Then::Bind(frame)))
    }

    fn bind_on_server(&mut self, frame: Frame) -> Result<(), ProxyError> {
        let ([portal, name], rest) = read_cstrs(frame.body(), "Bind")?;
        if name.is_empty() || self.mode == PoolMode::Session {
            self.forward(&frame);
        } else {
            let Some(stmt) = self.statement_for(name) else {
                return Ok(());
            };
            if let Some(s) = &mut self.server {
                // Rewritten straight into the send buffer: no allocation per Bind.
                put_msg(s.conn.queue(), b'B', |b| {
                    put_cstr(b, portal);
                    b.put_slice(&stmt.name);
                    b.put_slice(rest);
                });
            }
        }
        self.push(Expect::Bind);
        Ok(())
    }

    fn on_describe(&mut self, frame: Frame) -> Result<Next, ProxyError> {
        self.ext_open = true;
        let (kind, name) = kind_and_name(frame.body(), "Describe")?;
        if kind == b'S' {
            self.route_for_statement(name);
        }
        Ok(Next::Server(Then::Describe(frame)))
    }

    fn describe_on_server(&mut self, frame: Frame) -> Result<(), ProxyError> {
        let (kind, name) = kind_and_name(frame.body(), "Describe")?;
        if kind != b'S' || name.is_empty() || self.mode == PoolMode::Session {
            self.forward(&frame);
        } else {
            let Some(stmt) = self.statement_for(name) else {
                return Ok(());
            };
            if let Some(s) = &mut self.server {
                put_msg(s.conn.queue(), b'D', |b| {
                    b.put_u8(b'S');
                    b.put_slice(&stmt.name);
                });
            }
        }
        self.push(Expect::Describe);
        Ok(())
    }

    fn on_close(&mut self, frame: Frame) -> Result<Next, ProxyError> {
        self.ext_open = true;
        let (kind, name) = kind_and_name(frame.body(), "Close")?;
        if kind == b'S' && !name.is_empty() && self.mode == PoolMode::Transaction {
            // The statement stays prepared on server connections (other clients may share it);
            // only this client's name goes.
            self.statements.remove(name);
            self.stmt_cmds.remove(name);
            if self.server.is_some() {
                self.push(Expect::Synthetic(Bytes::from_static(CLOSE_COMPLETE)));
            } else {
                self.client.queue().extend_from_slice(CLOSE_COMPLETE);
            }
            return Ok(Next::Done);
        }
        Ok(Next::Server(Then::Close(frame)))
    }

    fn on_sync(&mut self, frame: Frame) {
        self.ext_open = false;
        let skipped = std::mem::replace(&mut self.client_skip, false);
        if self.server.is_none() {
            put_ready(self.client.queue(), b'I');
            return;
        }
        self.forward(&frame);
        if skipped && self.tx_status != b'I' {
            // The refused message must fail the transaction on the server as well: swallow
            // this Sync's ReadyForQuery, then let a raise statement produce the real one.
            self.push(Expect::Internal);
            if let Some(s) = &mut self.server {
                put_query(
                    s.conn.queue(),
                    &sql::raise_statement("0A000", "statement refused by heliosproxy"),
                );
            }
            self.push(Expect::Abort);
        } else {
            self.push(Expect::Sync);
        }
    }

    fn push(&mut self, e: Expect) {
        if self.server_skip {
            // The server ignores everything up to the next Sync: so must the queue.
            match e {
                Expect::Sync | Expect::Internal | Expect::Abort => self.server_skip = false,
                Expect::Parse { stmt: Some(id), .. } => {
                    if let Some(s) = &mut self.server {
                        s.prepared.remove(id);
                    }
                    return;
                }
                _ => return,
            }
        }
        self.expect.push_back(e);
        self.drain_synthetic();
    }

    /// Emits synthesized responses that have reached the front of the queue.
    fn drain_synthetic(&mut self) {
        loop {
            match self.expect.front() {
                Some(Expect::Synthetic(b)) => {
                    let b = b.clone();
                    self.client.queue_frame(&b);
                }
                Some(Expect::SyntheticReady) => {
                    put_ready(self.client.queue(), self.tx_status);
                    self.ready_sent(false);
                }
                Some(Expect::CopyEnd) => {}
                _ => return,
            }
            self.expect.pop_front();
        }
    }

    // ---- server → client ----

    /// Handles the whole frames in the server connection's read buffer. They are read in
    /// place (the reader is lent out meanwhile): small ones are copied once into the client's
    /// batch, large ones split off and sent by reference.
    fn server_frames(&mut self) -> Result<(), FrameError> {
        let Some(s) = self.server.as_mut() else {
            return Ok(());
        };
        let mut reader = s.reader.take();
        let r = loop {
            match reader.peek_frame() {
                Ok(Some((tag, total))) if total >= ZERO_COPY_MIN => {
                    let b = reader.buf.split_to(total).freeze();
                    self.on_server(FrameRef {
                        tag,
                        bytes: &b,
                        shared: Some(&b),
                    });
                }
                Ok(Some((tag, total))) => {
                    self.on_server(FrameRef {
                        tag,
                        bytes: &reader.buf[..total],
                        shared: None,
                    });
                    reader.consume(total);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // Nothing in `on_server` gives the server connection up (that happens after a batch).
        debug_assert!(self.server.is_some());
        if let Some(s) = self.server.as_mut() {
            s.reader = reader;
        }
        r
    }

    fn on_server(&mut self, frame: FrameRef<'_>) {
        let tag = frame.tag;
        // A cheap clone (a refcount, or nothing) that frees `self` for the handlers below.
        let front = self.expect.front().cloned();
        match tag {
            b'S' | b'A' => {
                self.client.queue_frame_ref(&frame);
                return;
            }
            b'N' => {
                if !matches!(front, Some(Expect::Internal)) {
                    self.client.queue_frame_ref(&frame);
                }
                return;
            }
            _ => {}
        }
        let Some(front) = front else {
            // Unsolicited: a FATAL error before the server closes, most likely.
            if tag == b'E' {
                self.note_fatal(&frame);
            }
            self.client.queue_frame_ref(&frame);
            return;
        };
        match front {
            Expect::Internal => {
                if tag == b'Z' {
                    self.tx_status = frame.body().first().copied().unwrap_or(b'I');
                    self.pop();
                } else if tag == b'E' {
                    let f = parse_error_fields(frame.body());
                    log::warn!(
                        "session {}: re-applying session settings failed: {}",
                        self.pid,
                        String::from_utf8_lossy(f.message)
                    );
                    self.note_fatal(&frame);
                }
                return;
            }
            Expect::Abort => {
                if tag == b'Z' {
                    self.tx_status = frame.body().first().copied().unwrap_or(b'I');
                    self.client.queue_frame_ref(&frame);
                    self.pop();
                    self.ready_sent(true);
                }
                return;
            }
            _ => {}
        }
        if tag == b'E' {
            self.note_fatal(&frame);
            self.shard
                .stats
                .counters
                .error(parse_error_fields(frame.body()).code);
            self.client.queue_frame_ref(&frame);
            if front.is_extended() {
                // The server now skips to the next Sync: drop what it will not answer.
                while let Some(e) = self.expect.front() {
                    if matches!(e, Expect::Sync | Expect::Internal | Expect::Abort) {
                        break;
                    }
                    if let Some(Expect::Parse { stmt: Some(id), .. }) = self.expect.pop_front() {
                        if let Some(s) = &mut self.server {
                            s.prepared.remove(id);
                        }
                    }
                }
                if self.expect.is_empty() {
                    self.server_skip = true;
                }
                self.drain_synthetic();
            }
            return;
        }
        if tag == b'C' && !self.pending_cmds.is_empty() {
            self.end_transaction(frame.body());
        }
        let mut forward = true;
        let done = match (front, tag) {
            (Expect::Parse { swallow, .. }, b'1') => {
                forward = !swallow;
                true
            }
            (Expect::Bind, b'2') => true,
            (Expect::Describe, b'T' | b'n') => true,
            (Expect::Execute { track }, b'C' | b'I' | b's') => {
                if let (Some(cmd), b'C') = (track, tag) {
                    self.apply_session_command(cmd, frame.body());
                }
                true
            }
            (Expect::Execute { .. }, b'G') => {
                // Extended-protocol COPY FROM STDIN: the server ignores every Sync that reaches it
                // during copy-in, i.e. those the client sent before its CopyDone/CopyFail.
                let mut i = 1;
                while i < self.expect.len() {
                    match self.expect[i] {
                        Expect::CopyEnd => break,
                        Expect::Sync => {
                            self.expect.remove(i);
                        }
                        _ => i += 1,
                    }
                }
                false
            }
            (Expect::Close { swallow }, b'3') => {
                forward = !swallow;
                true
            }
            (Expect::Sync | Expect::Query { .. } | Expect::FunctionCall, b'Z') => {
                self.tx_status = frame.body().first().copied().unwrap_or(b'I');
                if self.tx_status == b'I' {
                    // The transaction is over whichever way; its undecided SETs die with it.
                    self.pending_cmds.clear();
                }
                true
            }
            (Expect::Query { track: Some(cmd) }, b'C') => {
                self.apply_session_command(cmd, frame.body());
                false
            }
            _ => false,
        };
        if forward {
            self.client.queue_frame_ref(&frame);
            self.hooks.observe(tag, frame.bytes);
        }
        if done {
            self.pop();
            if tag == b'Z' {
                self.ready_sent(true);
            }
        }
    }

    /// A ReadyForQuery went to the client: one query answered (and a transaction, if the
    /// status is idle). Latency runs from the request's first byte; the server round trip
    /// from the flush to the server.
    fn ready_sent(&mut self, from_server: bool) {
        let c = &self.shard.stats.counters;
        Counters::add(&c.queries, 1);
        if self.tx_status == b'I' {
            Counters::add(&c.transactions, 1);
        }
        // The start of this loop turn: when the answer's completion was reaped.
        let now = helios_uring::turn_time();
        if let Some(t) = self.request_start {
            self.db_stats.record_query(now.saturating_duration_since(t));
        }
        if from_server {
            if let Some(t) = self.server_sent {
                self.db_stats
                    .record_server(now.saturating_duration_since(t));
            }
        }
        if self.expect.is_empty() {
            self.request_start = None;
            self.server_sent = None;
            self.hooks.after(&self.shard);
        }
    }

    fn pop(&mut self) {
        self.expect.pop_front();
        self.drain_synthetic();
    }

    fn note_fatal(&mut self, frame: &FrameRef<'_>) {
        let f = parse_error_fields(frame.body());
        if f.severity == b"FATAL" || f.severity == b"PANIC" {
            self.server_fatal = true;
        }
    }

    /// A tracked SET/RESET/DISCARD completed: remember what the client now wants and what
    /// this server connection now has.
    fn apply_session_command(&mut self, cmd: SessionCommand, complete: &[u8]) {
        let tag = complete.strip_suffix(b"\0").unwrap_or(complete);
        let ok = matches!(
            (&cmd, tag),
            (SessionCommand::Set { .. }, b"SET")
                | (
                    SessionCommand::Reset { .. } | SessionCommand::ResetAll,
                    b"RESET"
                )
                | (SessionCommand::DiscardAll, b"DISCARD ALL")
        );
        if !ok {
            return;
        }
        if self.tx_status != b'I' {
            // Inside a transaction block: it only lasts if the transaction commits.
            self.pending_cmds.push(cmd);
            return;
        }
        self.commit_session_command(cmd);
    }

    /// A transaction ended (CommandComplete COMMIT or ROLLBACK): keep or drop its SETs.
    fn end_transaction(&mut self, complete: &[u8]) {
        let tag = complete.strip_suffix(b"\0").unwrap_or(complete);
        if tag == b"COMMIT" {
            for cmd in std::mem::take(&mut self.pending_cmds) {
                self.commit_session_command(cmd);
            }
        } else if tag == b"ROLLBACK" {
            self.pending_cmds.clear();
        }
    }

    fn commit_session_command(&mut self, cmd: SessionCommand) {
        let Some(s) = &mut self.server else { return };
        match cmd {
            SessionCommand::Set { name, value } => {
                Rc::make_mut(&mut self.desired).insert(name.clone(), value.clone());
                Rc::make_mut(&mut s.applied).insert(name, value);
            }
            SessionCommand::Reset { name } => {
                Rc::make_mut(&mut s.applied).remove(&name);
                match self.startup_desired.get(&name) {
                    Some(v) => {
                        Rc::make_mut(&mut self.desired).insert(name, v.clone());
                    }
                    None => {
                        Rc::make_mut(&mut self.desired).remove(&name);
                    }
                }
            }
            SessionCommand::ResetAll => {
                s.applied = Rc::default();
                self.desired = self.startup_desired.clone();
            }
            SessionCommand::DiscardAll => {
                s.applied = Rc::default();
                s.prepared.clear();
                self.desired = self.startup_desired.clone();
                self.statements.clear();
                self.stmt_cmds.clear();
                self.portal_cmds.clear();
            }
            SessionCommand::Deallocate { .. } | SessionCommand::DeallocateAll => {}
        }
    }
}

/// The NUL-terminated strings a message body starts with, and what follows them. A body cut
/// short is a protocol violation naming the message. (Bind, Describe and Parse are read in their
/// checks and again when sent: a few bytes each, already in cache.)
fn read_cstrs<'a, const N: usize>(
    mut body: &'a [u8],
    message: &str,
) -> Result<([&'a [u8]; N], &'a [u8]), ProxyError> {
    let mut out = [&[][..]; N];
    for s in &mut out {
        *s = read_cstr(&mut body)
            .ok_or_else(|| ProxyError::protocol(format!("malformed {message}")))?;
    }
    Ok((out, body))
}

/// Describe's and Close's body: a kind byte (`S`tatement or `P`ortal) and a name.
fn kind_and_name<'a>(body: &'a [u8], message: &str) -> Result<(u8, &'a [u8]), ProxyError> {
    let (&kind, rest) = body
        .split_first()
        .ok_or_else(|| ProxyError::protocol(format!("malformed {message}")))?;
    let ([name], _) = read_cstrs(rest, message)?;
    Ok((kind, name))
}

/// Session mode: a released server connection is reset with DISCARD ALL before anyone else
/// gets it; one that does not answer cleanly is closed.
async fn reset_and_release(pool: Rc<Pool>, mut s: ServerConn) {
    put_query(s.conn.queue(), "DISCARD ALL");
    let ok = glommio::timer::timeout(Duration::from_secs(5), async {
        if s.conn.flush().await.is_err() {
            return Ok(false);
        }
        loop {
            match s.reader.next_frame() {
                Ok(Some(f)) if f.tag == b'Z' => return Ok(f.body() == b"I"),
                Ok(Some(f)) if f.tag == b'E' => {
                    log::warn!("DISCARD ALL failed on {:?}", s.id);
                }
                Ok(Some(_)) => {}
                Ok(None) => match s.conn.read_into(&mut s.reader).await {
                    Ok(n) if n > 0 => {}
                    _ => return Ok(false),
                },
                Err(_) => return Ok(false),
            }
        }
    })
    .await
    .unwrap_or(false);
    if ok {
        s.applied = Rc::default();
        s.prepared.clear();
        pool.release(s);
    } else {
        pool.discard(s);
    }
}
