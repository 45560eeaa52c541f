//! One client session: the thin I/O loop around the protocol core ([`Exchange`]) between a
//! client and the server connection attached to it (for its whole life in session mode, per
//! transaction in transaction mode).
//!
//! The loop waits on both sockets at once. A batch of client messages is checked (local
//! answers, refusals, plugin hooks, statement tracking: [`Exchange::client`]), a server
//! connection attached if one is needed (the loop's one wait), and sent ([`Exchange::send`])
//! with one flush; a batch of server messages goes through [`Exchange::server`] and to the
//! client with one flush, and nothing more is read from the server until the client has taken
//! it (backpressure). The core decides when the server connection may go back to the pool.

use std::cell::Cell;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use helios_config::PoolMode;

use super::login::{queue_error, refuse, Admitted, Login};
use crate::backend::health::{parse_lsn, simple_query};
use crate::backend::listen::Listener;
use crate::backend::pool::Pool;
use crate::backend::server::{BackendKey, ServerConn};
use crate::error::{Blame, ProxyError, SqlState};
use crate::ids::ClientPid;
use crate::net::codec::{
    put_backend_key, put_parameter_status, put_ready, Frame, FrameError, FrameReader, FrameRef,
};
use crate::net::conn::{Conn, ZERO_COPY_MIN};
use crate::pipeline::context::ContextGuard;
use crate::pipeline::guard::ResultGuard;
use crate::pipeline::journal::JournalStage;
use crate::pipeline::plugins::PluginStage;
use crate::pipeline::route::{Commit, RouteStage};
use crate::pipeline::signal::SignalStage;
use crate::pipeline::{Pipeline, Target};
use crate::proto::exchange::{
    kind_and_name, Ended, Exchange, Io, Observer, RowAction, Server, Step, Then, Tx,
};
use crate::shard::{ClientMeta, ParamMap, Shard};
use crate::sql::{self, ListenCommand};
use crate::stats::{Counters, DbStats};

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Shutdown,
    /// Notifications wait for the client and it is idle: deliver them.
    Notify,
}

/// A message sent to a server connection that has not answered yet, kept to send again.
enum Replay {
    /// Finished with [`Exchange::send`].
    Send(Then),
    /// A Sync, Flush or COPY message the core writes itself ([`Exchange::client`]).
    Client(Frame),
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
    /// The protocol state: expected responses, transaction status, batches, statements.
    ex: Exchange,
    cancel_target: Rc<Cell<Option<BackendKey>>>,
    pid: ClientPid,
    shutdown_registered: bool,
    db_stats: Rc<DbStats>,
    /// When the request being answered started (its first byte arrived).
    request_start: Option<Instant>,
    /// When the first request of the current server exchange was flushed.
    server_sent: Option<Instant>,
    meta: Rc<ClientMeta>,
    /// The database's own pool; `pool` is the one the attached server came from (another node's
    /// when a route plugin chose one).
    default_pool: Rc<Pool>,
    /// The node a stage chose for the next server connection.
    route_node: Option<Target>,
    /// The stages every execution passes (pipeline/mod.rs).
    pipeline: Pipeline,
    /// What was sent to the attached server connection since it was attached, while it has not
    /// answered: sent again to another connection if this one turns out dead on first use.
    replay: Vec<Replay>,
    /// `replay` is being kept (cleared at the first answer, and after one retry).
    replay_armed: bool,
    /// Transaction mode: the client's LISTEN subscriptions (dropped with the session).
    listener: Listener,
    /// The session's audit counters, while the audit thread runs (docs/signal.md).
    tally: Option<Rc<crate::signal::audit::Tally>>,
}

/// The session's side of [`Observer`]: statistics and the pipeline's stages as responses pass.
struct Watch<'a> {
    shard: &'a Shard,
    db_stats: &'a DbStats,
    pipeline: &'a mut Pipeline,
    request_start: &'a mut Option<Instant>,
    server_sent: &'a mut Option<Instant>,
    tally: Option<&'a crate::signal::audit::Tally>,
}

impl Observer for Watch<'_> {
    fn forwarded(&mut self, tag: u8, frame: &[u8]) {
        if let Some(t) = self.tally {
            crate::signal::audit::Tally::add(&t.backend_messages, 1);
        }
        self.pipeline.forwarded(tag, frame);
    }

    fn server_error(&mut self, code: &[u8], body: &[u8]) {
        self.shard.stats.counters.error(code);
        self.pipeline.server_error(body);
    }

    fn row(&mut self, tag: u8, frame: &[u8]) -> RowAction {
        let action = self.pipeline.row(tag, frame);
        if let RowAction::Fail(e) = &action {
            self.shard.stats.counters.error(e.code.0.as_bytes());
        }
        action
    }

    fn executed(&mut self, how: Ended) {
        self.pipeline.executed(self.shard, how);
    }

    /// One query answered (and a transaction, if the status is idle). Latency runs from the
    /// request's first byte; the server round trip from the flush to the server.
    fn ready(&mut self, tx: Tx, from_server: bool, answered: bool) {
        let c = &self.shard.stats.counters;
        Counters::add(&c.queries, 1);
        if tx == Tx::Idle {
            Counters::add(&c.transactions, 1);
        }
        // The start of this loop turn: when the answer's completion was reaped.
        let now = helios_uring::turn_time();
        if let Some(t) = *self.request_start {
            self.db_stats.record_query(now.saturating_duration_since(t));
        }
        if from_server {
            if let Some(t) = *self.server_sent {
                self.db_stats
                    .record_server(now.saturating_duration_since(t));
            }
        }
        if answered {
            *self.request_start = None;
            *self.server_sent = None;
            if tx == Tx::Idle {
                self.pipeline.idle(self.shard);
            }
        }
    }
}

/// Lends the core what one call may touch. A macro, not a method: it borrows the session's
/// fields one by one, so the core (`self.ex`) stays free to be called.
macro_rules! io {
    ($s:ident) => {
        Io {
            client: &mut $s.client,
            server: $s.server.as_mut().map(|c| Server {
                out: &mut c.conn,
                prepared: &mut c.prepared,
                applied: &mut c.applied,
            }),
            obs: &mut Watch {
                shard: &$s.shard,
                db_stats: &$s.db_stats,
                pipeline: &mut $s.pipeline,
                request_start: &mut $s.request_start,
                server_sent: &mut $s.server_sent,
                tally: $s.tally.as_deref(),
            },
            registry: &$s.shard.statements,
            shard: $s.shard.id,
        }
    };
}

impl Session {
    async fn begin(
        shard: Rc<Shard>,
        mut client: Conn,
        creader: FrameReader,
        pool: Rc<Pool>,
        login: Login,
        mut hooks: Box<PluginStage>,
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
        hooks.set_client_id(pid.0);
        hooks.set_default_node(&pool.settings.borrow().target.node);
        put_backend_key(client.queue(), pid.0, secret);
        put_ready(client.queue(), b'I');
        let mode = pool.settings.borrow().mode;
        let (policy, guard) = match shard.config().config.databases.get(&login.database) {
            Some(d) => (
                d.unsafe_statements,
                ResultGuard::configured(&login.database, d.max_result_rows, d.max_result_bytes),
            ),
            None => (Default::default(), None),
        };
        let default_pool = pool.clone();
        let desired = shard.shared_params(desired);
        let (signal, tally) = signal_stage(&shard, &login, &client, &pool);
        Ok(Session {
            client,
            creader,
            pool,
            mode,
            server: None,
            ex: Exchange::new(mode, policy, desired),
            cancel_target,
            pid,
            shutdown_registered: false,
            db_stats: shard.stats.db(&login.database),
            meta,
            default_pool,
            route_node: None,
            pipeline: Pipeline::new(
                hooks,
                RouteStage::configured(&shard.config().config, &login.database, &login.user),
                guard,
                signal,
                JournalStage::configured(&shard, &login.database, &login.user, pid.0 as u32),
                ContextGuard::configured(&shard.config().config, &login.database),
            ),
            replay: Vec::new(),
            replay_armed: false,
            request_start: None,
            server_sent: None,
            listener: Listener::default(),
            tally,
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
        self.pipeline
            .abandon(&self.shard, "the session ended before its outcome");
        if let Some(t) = self.tally.take() {
            let s = t.cut(crate::signal::unix_ms(), self.shard.id, true);
            self.shard.shared.signal.audit(s);
        }
        self.shard.unregister_client(self.pid);
        self.cancel_target.set(None);
        if let Some(server) = self.server.take() {
            let clean = self.ex.clean();
            if clean && (self.mode == PoolMode::Session || self.ex.dirty().is_some()) {
                let pool = self.pool.clone();
                glommio::spawn_local(settle_and_release(pool, server, None, true)).detach();
            } else if clean && !self.ex.batch_open() {
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
            PoolMode::Session => {
                self.ex.expecting() == 0 && self.ex.tx() == Tx::Idle && !self.ex.batch_open()
            }
        }
    }

    async fn next_event(&mut self) -> Event {
        std::future::poll_fn(|cx| {
            // As PostgreSQL does: only between transactions, never inside a response.
            if self.listener.poll_pending(cx)
                && self.ex.tx() == Tx::Idle
                && self.ex.expecting() == 0
                && !self.ex.batch_open()
            {
                return Poll::Ready(Event::Notify);
            }
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
                    if let Some(t) = &self.tally {
                        crate::signal::audit::Tally::add(&t.bytes_in, n as u64);
                    }
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
                            Ok(Step::Done | Step::ParsedLocally) => continue,
                            Ok(Step::Terminate) => return End::ClientGone,
                            Ok(Step::Listen(cmd)) => {
                                self.listen(cmd).await;
                                continue;
                            }
                            Ok(Step::Server(then)) => then,
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
                        self.pipeline.sending(&self.shard);
                        if self.replay_armed {
                            // Refcounts: the frames are not copied.
                            self.replay.push(Replay::Send(then.clone()));
                        }
                        if let Err(e) = self.ex.send(then, &mut io!(self)) {
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
                    if let Some(t) = &self.tally {
                        crate::signal::audit::Tally::add(&t.bytes_out, n as u64);
                    }
                    if self.replay_armed {
                        match self.first_answer_is_fatal() {
                            // A connection killed while idle says FATAL (57P01 …) and closes.
                            Some(true) => match self.server_failed().await {
                                Some(end) => return end,
                                None => continue,
                            },
                            Some(false) => {
                                self.replay_armed = false;
                                self.replay.clear();
                            }
                            None => {}
                        }
                    }
                    if let Err(e) = self.server_frames() {
                        log::warn!("session {}: bad frame from server: {e:?}", self.pid);
                        return self.server_lost().await;
                    }
                    // Backpressure: nothing more is read from the server until the client took
                    // this batch.
                    if self.client.flush().await.is_err() {
                        return End::ClientGone;
                    }
                    if self.ex.take_discarded() {
                        // DISCARD ALL includes UNLISTEN *.
                        self.listener.unlisten(None);
                    }
                    self.maybe_release();
                    if self.shard.shutdown.is_set() && self.can_close_for_shutdown() {
                        return self.shutdown_end();
                    }
                }
                Event::Server(_) => {
                    if let Some(end) = self.server_failed().await {
                        return end;
                    }
                }
                Event::Shutdown => return self.shutdown_end(),
                Event::Notify => {
                    self.listener.deliver(&mut self.client);
                    if self.client.flush().await.is_err() {
                        return End::ClientGone;
                    }
                }
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
        if !self.ex.server_fatal() {
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
            return self.server_failed().await;
        }
        None
    }

    /// Whether the first thing the attached server connection says is a FATAL error; `None`
    /// until a whole frame is in.
    fn first_answer_is_fatal(&mut self) -> Option<bool> {
        let s = self.server.as_mut()?;
        let (tag, total) = s.reader.peek_frame().ok()??;
        if tag != b'E' {
            return Some(false);
        }
        let f = crate::net::codec::parse_error_fields(&s.reader.buf[5..total]);
        Some(f.severity == b"FATAL" || f.severity == b"PANIC")
    }

    /// The attached server connection failed. One that had answered nothing since it was
    /// attached (found dead on first use: killed or restarted while idle in the pool) is
    /// replaced once, transparently: what was sent to it goes to another connection. Otherwise
    /// the client is told (08006) and the session ends.
    async fn server_failed(&mut self) -> Option<End> {
        if self.replay_armed && self.ex.untouched() && self.retry().await {
            return None;
        }
        Some(self.server_lost().await)
    }

    async fn retry(&mut self) -> bool {
        self.replay_armed = false;
        let Some(dead) = self.server.take() else {
            return false;
        };
        log::info!(
            "session {}: server connection {:?} (pid {}) was found dead on first use; its \
             requests go to another connection",
            self.pid,
            dead.id,
            dead.key.pid
        );
        self.pool.discard(dead);
        self.cancel_target.set(None);
        let checked_out = self.pool.checkout().await;
        let Ok(s) = checked_out else {
            self.replay.clear();
            return false;
        };
        self.meta
            .server
            .set(Some((s.id.0, s.key.pid, s.created_unix)));
        self.cancel_target.set(Some(s.key));
        self.server = Some(s);
        self.ex.replace_server(&mut io!(self));
        let mut replay = std::mem::take(&mut self.replay);
        for r in replay.drain(..) {
            let sent = match r {
                Replay::Send(then) => self.ex.send(then, &mut io!(self)),
                Replay::Client(frame) => self.ex.client(frame, &mut io!(self)).map(|_| ()),
            };
            if sent.is_err() {
                return false;
            }
        }
        self.replay = replay;
        let Some(s) = self.server.as_mut() else {
            return false;
        };
        s.conn.flush().await.is_ok()
    }

    /// Transaction mode: hand the server connection back once the transaction is over.
    fn maybe_release(&mut self) {
        if self.mode != PoolMode::Transaction || !self.ex.may_release() {
            return;
        }
        if let Some(s) = self.server.take() {
            self.cancel_target.set(None);
            self.meta.state.set("idle");
            self.meta.server.set(None);
            // Read-your-writes: the transaction wrote; the primary's WAL position is read on
            // this connection before anyone else gets it.
            let commit = self.pipeline.transaction_ended();
            if s.conn.pending() > 0 || self.ex.server_fatal() {
                if let Some(c) = commit {
                    c.set(None);
                }
                self.pool.discard(s);
            } else if commit.is_some() || self.ex.dirty().is_some() {
                // Untracked session state (a temporary table, a role, …) must not reach the
                // next client: DISCARD ALL first; the next user's settings and statements are
                // re-established on it as on any connection.
                let reset = self.ex.dirty().map(|why| {
                    log::debug!(
                        "session {}: resetting its server connection after a {}",
                        self.pid,
                        why.class()
                    );
                });
                glommio::spawn_local(settle_and_release(
                    self.pool.clone(),
                    s,
                    commit,
                    reset.is_some(),
                ))
                .detach();
            } else {
                self.pool.release(s);
            }
            self.pool = self.default_pool.clone();
        }
    }

    // ---- client → server ----

    /// One client message: the core's checks (classify, local answers, refusals), then the
    /// pipeline's stages for a message on its way to a server (pipeline/mod.rs).
    fn on_client(&mut self, frame: Frame) -> Result<Step, ProxyError> {
        if let Some(t) = &self.tally {
            crate::signal::audit::Tally::add(&t.frontend_messages, 1);
        }
        if self.ex.drops(frame.tag) {
            return Ok(Step::Done);
        }
        if frame.tag == b'C' {
            if let Ok((b'S', name)) = kind_and_name(frame.body(), "Close") {
                self.pipeline.closed(name);
            }
        }
        // A Parse's text is kept for the stages that see its executions, and what the core
        // writes to a server connection that has not answered yet for a retry (refcounts).
        let parse = (frame.tag == b'P').then(|| frame.bytes.clone());
        let kept = (self.replay_armed
            && self.server.is_some()
            && matches!(frame.tag, b'S' | b'H' | b'd' | b'c' | b'f'))
        .then(|| frame.clone());
        let mut step = self.ex.client(frame, &mut io!(self))?;
        if let Some(f) = kept {
            self.replay.push(Replay::Client(f));
        }
        match &mut step {
            Step::ParsedLocally => {
                if let Some(p) = &parse {
                    self.pipeline.parsed(p);
                }
            }
            Step::Server(then) => {
                if let Then::Parse(f) = then {
                    self.pipeline.parsed(&f.bytes);
                }
                let started = self.request_start.unwrap_or_else(helios_uring::turn_time);
                match self.pipeline.before(&self.shard, then, started) {
                    Ok(node) => {
                        if self.server.is_none() {
                            // Each execution decides for itself: no route carries over.
                            self.route_node = node;
                        }
                    }
                    Err(e) => {
                        let extended = then.extended();
                        self.reject(e, extended);
                        return Ok(Step::Done);
                    }
                }
            }
            _ => {}
        }
        Ok(step)
    }

    /// Transaction mode: a LISTEN/UNLISTEN alone in a simple query is answered here once the
    /// pool's notify hub has it (backend/listen.rs); no server connection is taken. A route
    /// plugin's node does not apply: the hub listens on the database's own node.
    async fn listen(&mut self, cmd: ListenCommand) {
        self.route_node = None;
        if self.ex.tx() == Tx::Failed {
            let e = ProxyError::error(
                SqlState("25P02"),
                Blame::Client,
                "current transaction is aborted, commands ignored until end of transaction block",
            );
            self.reject(e, false);
            return;
        }
        // Boxed: the session loop's future does not carry its size.
        match Box::pin(self.listener.run(&self.default_pool, cmd)).await {
            Ok(tag) => self.ex.respond_locally(tag, &mut io!(self)),
            Err(e) => self.reject(e, false),
        }
    }

    /// The client is told its request was refused ([`Exchange::reject`]), and it is counted; a
    /// staged execution ends with the error.
    fn reject(&mut self, e: ProxyError, extended: bool) {
        self.shard.stats.counters.error(e.code.0.as_bytes());
        self.pipeline.refused(&self.shard, &e);
        self.ex.reject(&e, extended, &mut io!(self));
    }

    /// Makes sure a server connection is attached. On failure the client is told (as an
    /// extended-protocol or simple-query error) and `Ok(false)` returned.
    async fn attach(&mut self, extended: bool) -> Result<bool, ProxyError> {
        if self.server.is_some() {
            return Ok(true);
        }
        let route = match self.route_node.take() {
            // No primary now (a failover under way): wait for one, boxed so the session's
            // future does not carry the wait.
            Some(Target::Primary) => {
                let (shard, alias) = (self.shard.clone(), self.meta.database.clone());
                match Box::pin(wait_for_primary(shard, alias)).await {
                    Ok(node) => Some(node),
                    Err(e) => {
                        self.reject(e, extended);
                        return Ok(false);
                    }
                }
            }
            Some(Target::Node(n)) => Some(n),
            None => None,
        };
        self.pool = match route {
            Some(node) => {
                let (alias, user) = (self.meta.database.clone(), self.meta.user.clone());
                // A database that lists its nodes may use only those (a plugin's node{target}).
                let outside = self
                    .shard
                    .config()
                    .config
                    .databases
                    .get(&alias)
                    .is_some_and(|d| !d.nodes.is_empty() && !d.nodes.contains(&node));
                if outside {
                    self.reject(
                        ProxyError::error(
                            SqlState("42000"),
                            Blame::Client,
                            format!("route: node {node:?} is not one of database {alias}'s nodes"),
                        ),
                        extended,
                    );
                    return Ok(false);
                }
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
            // A topology's primary may have moved since the session began (failover).
            None if self.pipeline.routes() => {
                let (alias, user) = (self.meta.database.clone(), self.meta.user.clone());
                self.shard
                    .pool(&alias, &user)
                    .unwrap_or_else(|| self.default_pool.clone())
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
                self.ex.attached(&mut io!(self));
                self.replay.clear();
                self.replay_armed = true;
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
                    let frame = FrameRef {
                        tag,
                        bytes: &b,
                        shared: Some(&b),
                    };
                    self.ex.server(frame, &mut io!(self));
                }
                Ok(Some((tag, total))) => {
                    let frame = FrameRef {
                        tag,
                        bytes: &reader.buf[..total],
                        shared: None,
                    };
                    self.ex.server(frame, &mut io!(self));
                    reader.consume(total);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // Nothing in the core gives the server connection up (that happens after a batch).
        debug_assert!(self.server.is_some());
        if let Some(s) = self.server.as_mut() {
            s.reader = reader;
        }
        r
    }
}

/// Before a server connection goes back to its pool: read the primary's WAL position for a
/// client's read-your-writes (`commit`), and reset one with session state another client must
/// not see (session mode, or a dirty one in transaction mode) with DISCARD ALL. One that does
/// not answer cleanly is closed.
pub(crate) async fn settle_and_release(
    pool: Rc<Pool>,
    mut s: ServerConn,
    commit: Option<Commit>,
    reset: bool,
) {
    let ok = glommio::timer::timeout(Duration::from_secs(5), async {
        if let Some(c) = &commit {
            match simple_query(&mut s, "SELECT pg_current_wal_insert_lsn()").await {
                Ok(v) => c.set(v.as_deref().and_then(parse_lsn)),
                Err(e) => {
                    log::warn!(
                        "read-your-writes: pg_current_wal_insert_lsn() on {:?}: {e}",
                        s.id
                    );
                    c.set(None);
                    return Ok(false);
                }
            }
        }
        if reset {
            if let Err(e) = simple_query(&mut s, "DISCARD ALL").await {
                log::warn!("DISCARD ALL failed on {:?}: {e}", s.id);
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .unwrap_or(false);
    if let Some(c) = &commit {
        if c.lsn().is_none() {
            c.set(None);
        }
    }
    if ok {
        if reset {
            s.applied = Rc::default();
            s.prepared.clear();
        }
        pool.release(s);
    } else {
        pool.discard(s);
    }
}

/// The database's primary once it has a usable one (failover: a replica promoted, the old
/// primary back), polled in the shard's topology copy up to `failover.timeout_ms`; then 08006.
async fn wait_for_primary(shard: Rc<Shard>, alias: String) -> Result<String, ProxyError> {
    let timeout = Duration::from_millis(shard.config().config.failover.timeout_ms);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = shard.topology.borrow().primary_of(&alias) {
            return Ok(n.name.clone());
        }
        if Instant::now() >= deadline {
            return Err(ProxyError::error(
                SqlState::CONNECTION_FAILURE,
                Blame::Server,
                format!("database {alias} has no primary: none answered within failover.timeout_ms ({timeout:?})"),
            ));
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// The signal stage and audit tally of a session, when `[anomaly]` watches its database or the
/// audit thread runs (docs/signal.md).
fn signal_stage(
    shard: &Shard,
    login: &Login,
    client: &Conn,
    pool: &Pool,
) -> (Option<SignalStage>, Option<Rc<crate::signal::audit::Tally>>) {
    let cfg = shard.config.borrow();
    let db = cfg.config.databases.get(&login.database);
    let detect = cfg.config.anomaly.enabled && db.is_some_and(|d| d.anomaly);
    let audit = shard.shared.signal.audit.is_some();
    if !detect && !audit {
        return (None, None);
    }
    let peer = client.peer_addr();
    let address = peer.map(|a| a.ip().to_string()).unwrap_or_default();
    let tally = audit.then(|| {
        Rc::new(crate::signal::audit::Tally::new(
            crate::signal::audit::Identity {
                context: login.database.clone(),
                user: login.user.clone(),
                upstream_user: pool.settings.borrow().target.user.clone(),
                upstream_role: db
                    .and_then(|d| d.role.clone())
                    .unwrap_or_else(|| pool.settings.borrow().target.user.clone()),
                client_addr: peer.map(|a| a.to_string()).unwrap_or_default(),
                tls: client.is_tls(),
                started_ms: crate::signal::unix_ms(),
                drift: cfg.config.drift.enabled && db.is_some_and(|d| d.drift),
            },
        ))
    });
    let view = crate::signal::SessionView {
        database: login.database.clone(),
        user: login.user.clone(),
        tenant: if login.user.is_empty() {
            address.clone()
        } else {
            login.user.clone()
        },
        address,
        statements: 0,
        uses_catalog: false,
    };
    (SignalStage::configured(detect, view, tally.clone()), tally)
}
