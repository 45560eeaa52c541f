//! The protocol core of one client session, sans I/O: client and server frames go in; bytes for
//! the client and the server come out (into [`Sink`]s), together with what the session must do
//! next ([`Step`]) and what it may do now ([`Exchange::may_release`]).
//!
//! It keeps a queue of the responses it expects from the server ([`Expect`]), one entry per
//! request it sent, and what to do with each: forward it, swallow it (a Parse or SET the proxy
//! injected), or synthesize a response the server will never send (a ParseComplete for a
//! statement the server connection already has). That queue is what lets transaction pooling
//! move named prepared statements and session settings between server connections, and it tells
//! exactly when a server connection is free: the queue is empty, the client has no unfinished
//! extended-protocol batch, and the server said ReadyForQuery idle.
//!
//! It owns no socket, pool or shard: the session lends it the buffers of the two connections
//! ([`Io`]) for each call, so every rule here is tested without a server (see the tests below
//! and `tests/exchange_model.rs`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use helios_config::{PoolMode, UnsafeStatements};

use super::prepared::{ParamMap, PreparedSet, Statement, StatementRegistry};
use crate::error::{Blame, ProxyError, SqlState};
use crate::net::codec::{
    parse_error_fields, put_command_complete, put_cstr, put_msg, put_proxy_error, put_query,
    put_ready, read_cstr, Frame, FrameRef,
};
use crate::net::conn::Conn;
use crate::sql::classify::{self, Effect, Unsafe};
use crate::sql::{self, ListenCommand, SessionCommand};

pub const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
pub const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

/// Where the core writes: a connection's send buffer, or a plain buffer in tests.
pub trait Sink {
    /// The send buffer, for messages the core builds.
    fn buf(&mut self) -> &mut BytesMut;
    /// Queues a frame being forwarded (by reference where the sink can).
    fn frame(&mut self, f: &FrameRef<'_>);
    /// Queues an encoded frame the core keeps (a synthesized response).
    fn bytes(&mut self, b: &Bytes);
}

impl Sink for Conn {
    fn buf(&mut self) -> &mut BytesMut {
        self.queue()
    }
    fn frame(&mut self, f: &FrameRef<'_>) {
        self.queue_frame_ref(f)
    }
    fn bytes(&mut self, b: &Bytes) {
        self.queue_frame(b)
    }
}

impl Sink for BytesMut {
    fn buf(&mut self) -> &mut BytesMut {
        self
    }
    fn frame(&mut self, f: &FrameRef<'_>) {
        self.extend_from_slice(f.bytes)
    }
    fn bytes(&mut self, b: &Bytes) {
        self.extend_from_slice(b)
    }
}

/// What the session wants to hear about as responses pass: statistics and the statement
/// pipeline's stages (pipeline/mod.rs). Every method has a no-op default.
pub trait Observer {
    /// A server frame was forwarded to the client.
    fn forwarded(&mut self, _tag: u8, _frame: &[u8]) {}
    /// An ErrorResponse from the server reached the client (its SQLSTATE, and its body).
    fn server_error(&mut self, _code: &[u8], _body: &[u8]) {}
    /// A ReadyForQuery went to the client. `from_server`: the server sent it (not synthesized);
    /// `answered`: nothing more is expected, the request is complete.
    fn ready(&mut self, _tx: Tx, _from_server: bool, _answered: bool) {}
    /// A RowDescription or DataRow is about to go to the client: the result observers' say.
    fn row(&mut self, _tag: u8, _frame: &[u8]) -> RowAction {
        RowAction::Forward
    }
    /// An execution the session marked (`req` in [`Then`]) ended, in the order they were sent.
    fn executed(&mut self, _how: Ended) {}
}

/// A result observer's answer for one row.
pub enum RowAction {
    Forward,
    /// The client does not get it.
    Drop,
    /// The client gets this frame instead (a whole DataRow message).
    Replace(Bytes),
    /// The result ends here: the client gets this error in place of the rest of it (the
    /// remaining rows and its completion), as if the statement had failed.
    Fail(ProxyError),
}

/// How a marked execution ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// CommandComplete, EmptyQueryResponse, or a simple query's / FunctionCall's ReadyForQuery.
    Complete,
    /// PortalSuspended: the portal's next Execute continues it.
    Suspended,
    /// An ErrorResponse ended it.
    Failed,
    /// Never run: an earlier message of its extended batch failed.
    Skipped,
}

impl Observer for () {}

/// The attached server connection, as the core sees it.
pub struct Server<'a, S: Sink> {
    pub out: &'a mut S,
    /// The proxy-named statements this connection has.
    pub prepared: &'a mut PreparedSet,
    /// The session settings the proxy has set on it.
    pub applied: &'a mut Rc<ParamMap>,
}

/// Everything outside the core that one call may touch.
pub struct Io<'a, C: Sink, S: Sink> {
    pub client: &'a mut C,
    pub server: Option<Server<'a, S>>,
    pub obs: &'a mut dyn Observer,
    /// The shard's registry of proxy-named statements, and the shard's id (statement ids carry it).
    pub registry: &'a RefCell<StatementRegistry>,
    pub shard: usize,
}

/// The transaction status of the last ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tx {
    /// `I`: no transaction block.
    Idle,
    /// `T`: in a transaction block.
    Block,
    /// `E`: in a failed transaction block.
    Failed,
}

impl Tx {
    pub fn from_byte(b: u8) -> Tx {
        match b {
            b'T' => Tx::Block,
            b'E' => Tx::Failed,
            _ => Tx::Idle,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Tx::Idle => b'I',
            Tx::Block => b'T',
            Tx::Failed => b'E',
        }
    }
}

/// The client's extended-protocol batch: the messages since its last Sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Batch {
    /// No batch open (the last message was a Sync, or the client only sent simple queries).
    Closed,
    /// Extended-protocol messages arrived since the last Sync.
    Open,
    /// The proxy refused a message of this batch: the rest is dropped until Sync.
    Refused,
}

/// A response the session is waiting for, in request order.
#[derive(Debug, Clone)]
pub enum Expect {
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
    /// Query, when the portal runs a tracked SET; `req`: the session follows this execution.
    Execute {
        track: Option<SessionCommand>,
        req: bool,
    },
    /// The client ended a COPY (CopyDone/CopyFail): no response of its own. Marks which
    /// Syncs the server ignored because they arrived during copy-in.
    CopyEnd,
    Close {
        swallow: bool,
    },
    Sync,
    /// A simple query, until its ReadyForQuery; `track`: the session commands of its
    /// statements, applied as their CommandCompletes arrive.
    Query {
        track: Option<Rc<RefCell<QueryTrack>>>,
        req: bool,
    },
    FunctionCall {
        req: bool,
    },
    /// The proxy's own query (SET re-application): every response swallowed.
    Internal,
    /// The proxy's raise statement after a refused message: the error is swallowed (the client
    /// already has one), the ReadyForQuery forwarded.
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

    /// Ends a stretch the server skips after an error in an extended batch.
    fn ends_skip(&self) -> bool {
        matches!(self, Expect::Sync | Expect::Internal | Expect::Abort)
    }

    /// An execution the session follows.
    fn followed(&self) -> bool {
        matches!(
            self,
            Expect::Execute { req: true, .. }
                | Expect::Query { req: true, .. }
                | Expect::FunctionCall { req: true }
        )
    }
}

/// The tracked session commands of one simple query, statement by statement (most carry none).
#[derive(Clone, Debug, Default)]
pub struct QueryTrack {
    /// One entry per statement still to complete, in order.
    per_statement: VecDeque<Vec<SessionCommand>>,
    /// More than one statement: the commands wait for the query's end (it is one implicit
    /// transaction, undone whole by an error).
    several: bool,
    /// Commands whose statements completed, waiting for the end of a multi-statement query.
    completed: Vec<SessionCommand>,
    /// An error ended the query.
    failed: bool,
    /// The transaction status when the query was sent.
    tx_before: Option<Tx>,
}

/// Where a client message stands after its checks.
pub enum Step {
    /// Answered, refused or queued: nothing more to do.
    Done,
    /// A named Parse answered without a server (transaction mode): it is prepared on a server at
    /// its first Bind or Describe.
    ParsedLocally,
    /// Terminate.
    Terminate,
    /// Transaction mode: a LISTEN/UNLISTEN alone in a simple query, for the session's notify
    /// hub (no server connection is taken); answer it with [`Exchange::respond_locally`].
    Listen(ListenCommand),
    /// It goes to a server: attach one, then finish it with [`Exchange::send`].
    Server(Then),
}

/// The rest of a client message, once a server connection is attached. `req`: the session
/// follows this execution ([`Observer::executed`] reports its end).
#[derive(Clone)]
pub enum Then {
    Query {
        frame: Frame,
        track: Option<QueryTrack>,
        req: bool,
    },
    Parse(Frame),
    /// `rewrite`: run this statement instead (what a Parse carries after the name: text, NUL,
    /// parameter types); it is prepared under a proxy name and the Bind retargeted to it.
    Bind {
        frame: Frame,
        rewrite: Option<Bytes>,
    },
    Describe(Frame),
    Close(Frame),
    Execute {
        frame: Frame,
        req: bool,
    },
    FunctionCall {
        frame: Frame,
        req: bool,
    },
}

impl Then {
    /// Whether a failure to attach is reported the extended protocol's way.
    pub fn extended(&self) -> bool {
        !matches!(self, Then::Query { .. } | Then::FunctionCall { .. })
    }
}

/// The protocol state of one client session.
pub struct Exchange {
    mode: PoolMode,
    expect: VecDeque<Expect>,
    tx: Tx,
    batch: Batch,
    /// The server failed a message of the current extended batch and ignores the rest until
    /// Sync, and the queue ran empty before that Sync was sent: drop what is pushed until then.
    server_skips: bool,
    /// A FATAL error from the server was forwarded: its connection is ending.
    server_fatal: bool,
    /// Session parameters the client wants (SQL text of the value), beyond server defaults.
    /// Shared copy-on-write: a server connection last used by a client with the same settings
    /// matches by pointer; otherwise two small ordered maps compare.
    desired: Rc<ParamMap>,
    startup_desired: Rc<ParamMap>,
    /// The client's named prepared statements (transaction mode).
    statements: HashMap<Bytes, Rc<Statement>>,
    /// Transaction mode: statements whose text is a tracked SET/RESET/DISCARD (by client
    /// statement name), and the portals bound to them — so a SET sent through the extended
    /// protocol is tracked like a simple one. Usually empty.
    stmt_cmds: HashMap<Bytes, SessionCommand>,
    portal_cmds: HashMap<Bytes, SessionCommand>,
    /// SETs made inside a transaction block: kept on COMMIT, forgotten on ROLLBACK.
    pending_cmds: Vec<SessionCommand>,
    /// Transaction mode: what to do with statements whose session state cannot be tracked.
    policy: UnsafeStatements,
    /// The attached server connection ran a statement whose effect the proxy does not track:
    /// it is reset (DISCARD ALL) before anyone else uses it.
    dirty: Option<Unsafe>,
    /// `unsafe_statements = "pin"` and such a statement ran: the client keeps its server
    /// connection until it leaves.
    pinned: bool,
    /// The client message being handled will leave session state behind on the server.
    taint: Option<Unsafe>,
    /// Named statements (by client name) that leave untracked session state when executed.
    stmt_unsafe: HashMap<Bytes, Unsafe>,
    /// A DISCARD ALL completed (it includes UNLISTEN *): the session's listener must forget.
    discarded: bool,
    /// A result observer ended the current result with this error: the server's answers are
    /// dropped until the request's ReadyForQuery.
    cut: Option<(SqlState, String)>,
    /// Something was answered (by the server, or synthesized) since the server connection was
    /// attached.
    touched: bool,
}

impl Exchange {
    /// A session that starts with `desired` settings (its startup parameters).
    pub fn new(mode: PoolMode, policy: UnsafeStatements, desired: Rc<ParamMap>) -> Exchange {
        Exchange {
            mode,
            expect: VecDeque::new(),
            tx: Tx::Idle,
            batch: Batch::Closed,
            server_skips: false,
            server_fatal: false,
            startup_desired: desired.clone(),
            desired,
            statements: HashMap::new(),
            stmt_cmds: HashMap::new(),
            portal_cmds: HashMap::new(),
            pending_cmds: Vec::new(),
            policy,
            dirty: None,
            pinned: false,
            taint: None,
            stmt_unsafe: HashMap::new(),
            discarded: false,
            cut: None,
            touched: false,
        }
    }

    /// Whether a DISCARD ALL completed since the last call (the session then unlistens).
    pub fn take_discarded(&mut self) -> bool {
        std::mem::take(&mut self.discarded)
    }

    /// Why the attached server connection must be reset before anyone else uses it, if it must.
    pub fn dirty(&self) -> Option<Unsafe> {
        self.dirty
    }

    /// The client keeps its server connection until it leaves (`unsafe_statements = "pin"`).
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    pub fn tx(&self) -> Tx {
        self.tx
    }

    pub fn expecting(&self) -> usize {
        self.expect.len()
    }

    /// The client is inside an extended-protocol batch (no Sync yet).
    pub fn batch_open(&self) -> bool {
        self.batch != Batch::Closed
    }

    pub fn server_fatal(&self) -> bool {
        self.server_fatal
    }

    /// Transaction mode: the server connection may go back to the pool now — the transaction
    /// is over, every response has arrived, and no extended batch is half sent.
    pub fn may_release(&self) -> bool {
        self.tx == Tx::Idle
            && !self.pinned
            && self.batch == Batch::Closed
            && !self.server_skips
            && self.expect.is_empty()
    }

    /// Nothing is in flight and no transaction is open: the server connection is in a state
    /// another client (after a reset, in session mode) can use.
    pub fn clean(&self) -> bool {
        self.expect.is_empty() && self.tx == Tx::Idle && !self.server_fatal
    }

    /// A server connection was attached: it starts with no FATAL seen, and the client's
    /// settings are re-applied where it differs.
    pub fn attached<C: Sink, S: Sink>(&mut self, io: &mut Io<'_, C, S>) {
        self.server_fatal = false;
        self.dirty = None;
        self.touched = false;
        let Some(s) = &mut io.server else { return };
        // Usually the same shared set (clients with the same start-up settings and no SET).
        if Rc::ptr_eq(s.applied, &self.desired) || **s.applied == *self.desired {
            *s.applied = self.desired.clone();
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
        *s.applied = self.desired.clone();
        if !q.is_empty() {
            put_query(s.out.buf(), &q);
            self.expect.push_back(Expect::Internal);
        }
    }

    /// Nothing has been answered since the server connection was attached: if it turns out to
    /// be dead, what was sent to it can go to another one ([`Exchange::replace_server`]).
    pub fn untouched(&self) -> bool {
        !self.touched
    }

    /// Another server connection replaces one found dead before it answered anything: what
    /// was expected of the old one is forgotten (the session sends the same messages again),
    /// the client's settings are re-applied on the new one, and what the client's statements
    /// will leave on it (`dirty`) is kept.
    pub fn replace_server<C: Sink, S: Sink>(&mut self, io: &mut Io<'_, C, S>) {
        debug_assert!(!self.touched);
        let dirty = self.dirty;
        self.expect.clear();
        self.server_skips = false;
        self.cut = None;
        self.attached(io);
        self.dirty = dirty;
    }

    /// Whether the client message with this tag is dropped unseen: the proxy refused an earlier
    /// message of the same extended batch, so everything up to its Sync is ignored.
    pub fn drops(&self, tag: u8) -> bool {
        self.batch == Batch::Refused && tag != b'S' && tag != b'X'
    }

    // ---- client → server ----

    /// Handles one client message up to the point where it needs a server connection (then
    /// [`Exchange::send`] finishes it, once one is attached).
    pub fn client<C: Sink, S: Sink>(
        &mut self,
        frame: Frame,
        io: &mut Io<'_, C, S>,
    ) -> Result<Step, ProxyError> {
        self.taint = None;
        if self.drops(frame.tag) {
            return Ok(Step::Done);
        }
        match frame.tag {
            b'X' => return Ok(Step::Terminate),
            b'Q' => return Ok(self.on_query(frame, io)),
            b'P' => return self.on_parse(frame, io),
            b'B' => return self.on_bind(frame),
            b'D' | b'C' => {
                self.open_batch();
                let message = if frame.tag == b'D' {
                    "Describe"
                } else {
                    "Close"
                };
                let (kind, name) = kind_and_name(frame.body(), message)?;
                if frame.tag == b'C'
                    && kind == b'S'
                    && !name.is_empty()
                    && self.mode == PoolMode::Transaction
                {
                    // The statement stays prepared on server connections (other clients may
                    // share it); only this client's name goes.
                    self.statements.remove(name);
                    self.stmt_cmds.remove(name);
                    self.synthesize(Bytes::from_static(CLOSE_COMPLETE), io);
                    return Ok(Step::Done);
                }
                return Ok(Step::Server(if frame.tag == b'D' {
                    Then::Describe(frame)
                } else {
                    Then::Close(frame)
                }));
            }
            b'E' => {
                self.open_batch();
                return Ok(Step::Server(Then::Execute { frame, req: false }));
            }
            b'S' => self.on_sync(frame, io),
            b'H' => {
                if let Some(s) = &mut io.server {
                    s.out.bytes(&frame.bytes);
                }
            }
            b'F' => return Ok(Step::Server(Then::FunctionCall { frame, req: false })),
            b'd' | b'c' | b'f' => {
                // COPY data goes to the server the COPY runs on; outside a COPY there is none.
                if let Some(s) = &mut io.server {
                    s.out.bytes(&frame.bytes);
                    if frame.tag != b'd' {
                        self.push(Expect::CopyEnd, io);
                    }
                }
            }
            t => {
                return Err(ProxyError::protocol(format!(
                    "invalid frontend message type {t}"
                )))
            }
        }
        Ok(Step::Done)
    }

    fn open_batch(&mut self) {
        if self.batch == Batch::Closed {
            self.batch = Batch::Open;
        }
    }

    /// Finishes a client message on the attached server connection.
    pub fn send<C: Sink, S: Sink>(
        &mut self,
        then: Then,
        io: &mut Io<'_, C, S>,
    ) -> Result<(), ProxyError> {
        if let Some(u) = self.taint.take() {
            // The message goes to the server: from now on its connection is not what the
            // proxy tracks.
            self.dirty = self.dirty.or(Some(u));
            if self.policy == UnsafeStatements::Pin && !self.pinned {
                log::info!(
                    "transaction pooling: a client ran a {} and keeps its server connection \
                     until it leaves (unsafe_statements = \"pin\")",
                    u.class()
                );
                self.pinned = true;
            }
        }
        match then {
            Then::Query { frame, track, req } => {
                forward(io, &frame);
                let track = track.map(|mut t| {
                    t.tx_before = Some(self.tx);
                    Rc::new(RefCell::new(t))
                });
                self.push(Expect::Query { track, req }, io);
            }
            Then::Parse(frame) => self.parse_on_server(frame, io)?,
            Then::Bind { frame, rewrite } => self.bind_on_server(frame, rewrite, io)?,
            Then::Describe(frame) => self.describe_on_server(frame, io)?,
            Then::Close(frame) => {
                forward(io, &frame);
                self.push(Expect::Close { swallow: false }, io);
            }
            Then::Execute { frame, req } => {
                forward(io, &frame);
                let track = if self.portal_cmds.is_empty() {
                    None
                } else {
                    let mut rest = frame.body();
                    read_cstr(&mut rest).and_then(|p| self.portal_cmds.get(p).cloned())
                };
                self.push(Expect::Execute { track, req }, io);
            }
            Then::FunctionCall { frame, req } => {
                forward(io, &frame);
                self.push(Expect::FunctionCall { req }, io);
            }
        }
        Ok(())
    }

    /// Tells the client that its request was refused, in the shape the protocol expects: an
    /// error then ReadyForQuery for a simple query; an error and the rest of the batch
    /// ignored until Sync for the extended protocol. Inside a transaction the server's
    /// transaction is failed too, so client and server agree it is aborted.
    pub fn reject<C: Sink, S: Sink>(
        &mut self,
        e: &ProxyError,
        extended: bool,
        io: &mut Io<'_, C, S>,
    ) {
        // The refused message never reaches a server: what it would have done to the session
        // (a SET ROLE or DO a stage refused) does not taint the connection.
        self.taint = None;
        let mut b = BytesMut::new();
        put_proxy_error(&mut b, e);
        if extended {
            self.batch = Batch::Refused;
        }
        match &mut io.server {
            Some(s) if !extended && self.tx != Tx::Idle => {
                // Our error goes to the client; a raise statement fails the server's
                // transaction too (its own error swallowed), so its ReadyForQuery says `E`.
                put_query(s.out.buf(), &sql::raise_statement(e.code.0, &e.message));
                self.push(Expect::Synthetic(b.freeze()), io);
                self.push(Expect::Abort, io);
            }
            Some(_) => {
                self.push(Expect::Synthetic(b.freeze()), io);
                if !extended {
                    self.push(Expect::SyntheticReady, io);
                }
            }
            None => {
                io.client.buf().extend_from_slice(&b);
                if !extended {
                    put_ready(io.client.buf(), Tx::Idle.byte());
                    io.obs.ready(Tx::Idle, false, true);
                }
            }
        }
    }

    /// A response the server will never send, in its place in the response order.
    fn synthesize<C: Sink, S: Sink>(&mut self, b: Bytes, io: &mut Io<'_, C, S>) {
        if io.server.is_some() {
            self.push(Expect::Synthetic(b), io);
        } else {
            io.client.bytes(&b);
        }
    }

    /// Answers a simple query without the server (DEALLOCATE of a proxy-tracked statement,
    /// LISTEN served by the notify hub).
    pub fn respond_locally<C: Sink, S: Sink>(&mut self, tag: &str, io: &mut Io<'_, C, S>) {
        let mut b = BytesMut::new();
        put_command_complete(&mut b, tag);
        if io.server.is_some() {
            self.push(Expect::Synthetic(b.freeze()), io);
            self.push(Expect::SyntheticReady, io);
        } else {
            io.client.buf().extend_from_slice(&b);
            put_ready(io.client.buf(), self.tx.byte());
            io.obs.ready(self.tx, false, true);
        }
    }

    fn on_query<C: Sink, S: Sink>(&mut self, frame: Frame, io: &mut Io<'_, C, S>) -> Step {
        if self.mode == PoolMode::Session {
            return Step::Server(Then::Query {
                frame,
                track: None,
                req: false,
            });
        }
        let body = frame.body();
        let text = body.strip_suffix(b"\0").unwrap_or(body);
        let sql_text = std::str::from_utf8(text).unwrap_or("");
        // Every statement of the query is considered (one pass; nothing allocated unless a
        // statement changes session state).
        let mut track: Option<QueryTrack> = None;
        let mut unsafe_ = None;
        let mut listen = None;
        let mut n = 0;
        for (_, effect) in classify::statements(sql_text) {
            match effect {
                Effect::None => {}
                Effect::Track(c) => track_at(&mut track, n, vec![c]),
                Effect::TrackMany(v) => track_at(&mut track, n, v),
                Effect::Listen(ch) => listen = Some(ListenCommand::Listen(ch)),
                Effect::Unlisten(ch) => listen = Some(ListenCommand::Unlisten(ch)),
                Effect::Unsafe(u) => unsafe_ = unsafe_.or(Some(u)),
            }
            n += 1;
        }
        if let Some(cmd) = listen {
            if n == 1 {
                return Step::Listen(cmd);
            }
            // With other statements it would run on whichever server connection they take.
            self.refuse_unsafe(LISTEN_REFUSED, false, io);
            return Step::Done;
        }
        if let Some(t) = &mut track {
            t.per_statement.resize_with(n, Vec::new);
            t.several = n > 1;
            if n == 1 {
                match t.per_statement[0].as_slice() {
                    [SessionCommand::Deallocate { name }]
                        if self.statements.remove(name.as_bytes()).is_some() =>
                    {
                        self.respond_locally("DEALLOCATE", io);
                        return Step::Done;
                    }
                    [SessionCommand::DeallocateAll] => {
                        self.statements.clear();
                        self.respond_locally("DEALLOCATE ALL", io);
                        return Step::Done;
                    }
                    _ => {}
                }
            }
        }
        if let Some(u) = unsafe_ {
            if self.policy == UnsafeStatements::Refuse {
                self.refuse_unsafe(&refusal(u), false, io);
                return Step::Done;
            }
            self.taint = Some(u);
        }
        Step::Server(Then::Query {
            frame,
            track,
            req: false,
        })
    }

    fn refuse_unsafe<C: Sink, S: Sink>(
        &mut self,
        msg: &str,
        extended: bool,
        io: &mut Io<'_, C, S>,
    ) {
        self.reject(
            &ProxyError::error(SqlState::FEATURE_NOT_SUPPORTED, Blame::Client, msg),
            extended,
            io,
        );
    }

    fn on_parse<C: Sink, S: Sink>(
        &mut self,
        frame: Frame,
        io: &mut Io<'_, C, S>,
    ) -> Result<Step, ProxyError> {
        self.open_batch();
        let ([name], after_name) = read_cstrs(frame.body(), "Parse")?;
        let ([query], _) = read_cstrs(after_name, "Parse")?;
        if self.mode == PoolMode::Transaction {
            let text = std::str::from_utf8(query).unwrap_or("");
            // The extended protocol takes one statement per Parse.
            let effect = classify::statements(text)
                .next()
                .map_or(Effect::None, |(_, e)| e);
            let unsafe_ = match &effect {
                Effect::Listen(_) | Effect::Unlisten(_) => {
                    self.refuse_unsafe(LISTEN_REFUSED, true, io);
                    return Ok(Step::Done);
                }
                Effect::Unsafe(u) => Some(*u),
                // Several settings from one extended statement: rare, and not tracked.
                Effect::TrackMany(_) => Some(Unsafe::Other),
                _ => None,
            };
            if let Some(u) = unsafe_ {
                if self.policy == UnsafeStatements::Refuse {
                    self.refuse_unsafe(&refusal(u), true, io);
                    return Ok(Step::Done);
                }
            }
            if !name.is_empty() && self.statements.contains_key(name) {
                self.reject(
                    &ProxyError::error(
                        SqlState("42P05"),
                        Blame::Client,
                        format!(
                            "prepared statement \"{}\" already exists",
                            String::from_utf8_lossy(name)
                        ),
                    ),
                    true,
                    io,
                );
                return Ok(Step::Done);
            }
            match effect {
                Effect::Track(cmd) => {
                    self.stmt_cmds.insert(Bytes::copy_from_slice(name), cmd);
                }
                _ if !self.stmt_cmds.is_empty() => {
                    self.stmt_cmds.remove(name);
                }
                _ => {}
            }
            match unsafe_ {
                // An unnamed statement runs now; a named one each time it is bound.
                Some(u) if name.is_empty() => self.taint = Some(u),
                Some(u) => {
                    self.stmt_unsafe.insert(Bytes::copy_from_slice(name), u);
                }
                None if !self.stmt_unsafe.is_empty() => {
                    self.stmt_unsafe.remove(name);
                }
                None => {}
            }
            if !name.is_empty() && io.server.is_none() {
                // Outside a transaction a named Parse is answered here and prepared on a server
                // at its first Bind/Describe (a parse error then comes with that message).
                // Taking a server for it could deadlock: libpq's PQprepare blocks the whole
                // client thread (pgbench -j) while its other connections hold every server
                // connection.
                let stmt = io.registry.borrow_mut().intern(io.shard, after_name);
                self.statements.insert(Bytes::copy_from_slice(name), stmt);
                io.client.buf().extend_from_slice(PARSE_COMPLETE);
                return Ok(Step::ParsedLocally);
            }
        }
        Ok(Step::Server(Then::Parse(frame)))
    }

    fn parse_on_server<C: Sink, S: Sink>(
        &mut self,
        frame: Frame,
        io: &mut Io<'_, C, S>,
    ) -> Result<(), ProxyError> {
        let ([name], after_name) = read_cstrs(frame.body(), "Parse")?;
        if name.is_empty() || self.mode == PoolMode::Session {
            forward(io, &frame);
            self.push(
                Expect::Parse {
                    stmt: None,
                    swallow: false,
                },
                io,
            );
            return Ok(());
        }
        let stmt = io.registry.borrow_mut().intern(io.shard, after_name);
        self.statements
            .insert(Bytes::copy_from_slice(name), stmt.clone());
        let has = io
            .server
            .as_mut()
            .is_some_and(|s| s.prepared.contains(stmt.id));
        if has {
            self.push(Expect::Synthetic(Bytes::from_static(PARSE_COMPLETE)), io);
        } else {
            self.prepare_on_server(&stmt, false, io);
        }
        Ok(())
    }

    /// Sends the statement's Parse under its proxy name, closing the least recently used
    /// statement first if the connection's cache is full.
    fn prepare_on_server<C: Sink, S: Sink>(
        &mut self,
        stmt: &Statement,
        swallow: bool,
        io: &mut Io<'_, C, S>,
    ) {
        let Some(s) = &mut io.server else { return };
        if let Some(evicted) = s.prepared.insert(stmt.id) {
            let name = format!("_hp_{evicted:x}");
            put_msg(s.out.buf(), b'C', |b| {
                b.put_u8(b'S');
                put_cstr(b, name.as_bytes());
            });
            self.push(Expect::Close { swallow: true }, io);
        }
        if let Some(s) = &mut io.server {
            s.out.bytes(&stmt.parse);
        }
        self.push(
            Expect::Parse {
                stmt: Some(stmt.id),
                swallow,
            },
            io,
        );
    }

    /// The proxy statement for a client statement name, preparing it on the attached server
    /// if that connection does not have it yet. `None`: the client never prepared it (the
    /// client has been sent 26000).
    fn statement_for<C: Sink, S: Sink>(
        &mut self,
        name: &[u8],
        io: &mut Io<'_, C, S>,
    ) -> Option<Rc<Statement>> {
        let Some(stmt) = self.statements.get(name).cloned() else {
            self.reject(
                &ProxyError::error(
                    SqlState::INVALID_SQL_STATEMENT_NAME,
                    Blame::Client,
                    format!(
                        "prepared statement \"{}\" does not exist",
                        String::from_utf8_lossy(name)
                    ),
                ),
                true,
                io,
            );
            return None;
        };
        let has = io
            .server
            .as_mut()
            .is_some_and(|s| s.prepared.contains(stmt.id));
        if !has {
            self.prepare_on_server(&stmt, true, io);
        }
        Some(stmt)
    }

    fn on_bind(&mut self, frame: Frame) -> Result<Step, ProxyError> {
        self.open_batch();
        let ([portal, name], _) = read_cstrs(frame.body(), "Bind")?;
        if !self.stmt_unsafe.is_empty() {
            self.taint = self.stmt_unsafe.get(name).copied();
        }
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
        Ok(Step::Server(Then::Bind {
            frame,
            rewrite: None,
        }))
    }

    fn bind_on_server<C: Sink, S: Sink>(
        &mut self,
        frame: Frame,
        rewrite: Option<Bytes>,
        io: &mut Io<'_, C, S>,
    ) -> Result<(), ProxyError> {
        let ([portal, name], rest) = read_cstrs(frame.body(), "Bind")?;
        if let Some(text) = rewrite {
            // A stage rewrote the statement: prepare the new text under its proxy name (once
            // per server connection) and bind that instead, in either pool mode.
            let stmt = io.registry.borrow_mut().intern(io.shard, &text);
            if !io
                .server
                .as_mut()
                .is_some_and(|s| s.prepared.contains(stmt.id))
            {
                self.prepare_on_server(&stmt, true, io);
            }
            if let Some(s) = &mut io.server {
                put_msg(s.out.buf(), b'B', |b| {
                    put_cstr(b, portal);
                    b.put_slice(&stmt.name);
                    b.put_slice(rest);
                });
            }
        } else if name.is_empty() || self.mode == PoolMode::Session {
            forward(io, &frame);
        } else {
            let Some(stmt) = self.statement_for(name, io) else {
                return Ok(());
            };
            if let Some(s) = &mut io.server {
                // Rewritten straight into the send buffer: no allocation per Bind.
                put_msg(s.out.buf(), b'B', |b| {
                    put_cstr(b, portal);
                    b.put_slice(&stmt.name);
                    b.put_slice(rest);
                });
            }
        }
        self.push(Expect::Bind, io);
        Ok(())
    }

    fn describe_on_server<C: Sink, S: Sink>(
        &mut self,
        frame: Frame,
        io: &mut Io<'_, C, S>,
    ) -> Result<(), ProxyError> {
        let (kind, name) = kind_and_name(frame.body(), "Describe")?;
        if kind != b'S' || name.is_empty() || self.mode == PoolMode::Session {
            forward(io, &frame);
        } else {
            let Some(stmt) = self.statement_for(name, io) else {
                return Ok(());
            };
            if let Some(s) = &mut io.server {
                put_msg(s.out.buf(), b'D', |b| {
                    b.put_u8(b'S');
                    b.put_slice(&stmt.name);
                });
            }
        }
        self.push(Expect::Describe, io);
        Ok(())
    }

    fn on_sync<C: Sink, S: Sink>(&mut self, frame: Frame, io: &mut Io<'_, C, S>) {
        let refused = self.batch == Batch::Refused;
        self.batch = Batch::Closed;
        let Some(s) = &mut io.server else {
            put_ready(io.client.buf(), Tx::Idle.byte());
            io.obs.ready(Tx::Idle, false, true);
            return;
        };
        s.out.bytes(&frame.bytes);
        if refused && self.tx != Tx::Idle {
            // The refused message must fail the transaction on the server as well: swallow
            // this Sync's ReadyForQuery, then let a raise statement produce the real one.
            put_query(
                s.out.buf(),
                &sql::raise_statement("0A000", "statement refused by heliosproxy"),
            );
            self.push(Expect::Internal, io);
            self.push(Expect::Abort, io);
        } else {
            self.push(Expect::Sync, io);
        }
    }

    fn push<C: Sink, S: Sink>(&mut self, e: Expect, io: &mut Io<'_, C, S>) {
        if self.server_skips {
            // The server ignores everything up to the next Sync: so must the queue.
            match e {
                ref x if x.ends_skip() => self.server_skips = false,
                Expect::Parse { stmt: Some(id), .. } => {
                    if let Some(s) = &mut io.server {
                        s.prepared.remove(id);
                    }
                    return;
                }
                ref x if x.followed() => {
                    io.obs.executed(Ended::Skipped);
                    return;
                }
                _ => return,
            }
        }
        self.expect.push_back(e);
        self.drain_synthetic(io);
    }

    /// Emits synthesized responses that have reached the front of the queue.
    fn drain_synthetic<C: Sink, S: Sink>(&mut self, io: &mut Io<'_, C, S>) {
        loop {
            let front = self.expect.front();
            if matches!(front, Some(Expect::Synthetic(_) | Expect::SyntheticReady)) {
                self.touched = true;
            }
            match front {
                Some(Expect::Synthetic(b)) => {
                    if self.cut.is_none() {
                        io.client.bytes(b)
                    }
                }
                Some(Expect::SyntheticReady) => {
                    put_ready(io.client.buf(), self.tx.byte());
                    io.obs.ready(self.tx, false, self.expect.len() == 1);
                }
                Some(Expect::CopyEnd) => {}
                _ => return,
            }
            self.expect.pop_front();
        }
    }

    fn pop<C: Sink, S: Sink>(&mut self, io: &mut Io<'_, C, S>) {
        self.expect.pop_front();
        self.drain_synthetic(io);
    }

    // ---- server → client ----

    /// Handles one frame from the server.
    pub fn server<C: Sink, S: Sink>(&mut self, frame: FrameRef<'_>, io: &mut Io<'_, C, S>) {
        self.touched = true;
        let tag = frame.tag;
        match tag {
            b'S' | b'A' => {
                io.client.frame(&frame);
                return;
            }
            b'N' => {
                if !matches!(self.expect.front(), Some(Expect::Internal)) && self.cut.is_none() {
                    io.client.frame(&frame);
                }
                return;
            }
            _ => {}
        }
        // A cheap clone (a refcount, or nothing) that frees `self` for the handlers below.
        let Some(front) = self.expect.front().cloned() else {
            // Unsolicited: a FATAL error before the server closes, most likely.
            if tag == b'E' {
                self.note_fatal(&frame);
            }
            io.client.frame(&frame);
            return;
        };
        match front {
            Expect::Internal => {
                if tag == b'Z' {
                    self.tx = Tx::from_byte(frame.body().first().copied().unwrap_or(b'I'));
                    // A cut extended batch ends at its Sync, answered here.
                    self.cut = None;
                    self.pop(io);
                } else if tag == b'E' {
                    let f = parse_error_fields(frame.body());
                    log::warn!(
                        "re-applying session settings failed: {}",
                        String::from_utf8_lossy(f.message)
                    );
                    self.note_fatal(&frame);
                }
                return;
            }
            Expect::Abort => {
                if tag == b'Z' {
                    self.cut = None;
                    self.tx = Tx::from_byte(frame.body().first().copied().unwrap_or(b'I'));
                    io.client.frame(&frame);
                    self.pop(io);
                    io.obs.ready(self.tx, true, self.expect.is_empty());
                }
                return;
            }
            _ => {}
        }
        if tag == b'E' {
            if let Expect::Query { track: Some(t), .. } = &front {
                t.borrow_mut().failed = true;
            }
            self.note_fatal(&frame);
            io.obs
                .server_error(parse_error_fields(frame.body()).code, frame.body());
            if self.cut.is_none() {
                io.client.frame(&frame);
            }
            if front.is_extended() {
                // The server now skips to the next Sync: drop what it will not answer.
                let mut how = Ended::Failed;
                while let Some(e) = self.expect.front() {
                    if e.ends_skip() {
                        break;
                    }
                    match self.expect.pop_front() {
                        Some(Expect::Parse { stmt: Some(id), .. }) => {
                            if let Some(s) = &mut io.server {
                                s.prepared.remove(id);
                            }
                        }
                        Some(e) if e.followed() => io.obs.executed(how),
                        _ => {}
                    }
                    how = Ended::Skipped;
                }
                if self.expect.is_empty() {
                    self.server_skips = true;
                }
                self.drain_synthetic(io);
            }
            return;
        }
        if tag == b'C' && !self.pending_cmds.is_empty() {
            self.end_transaction(frame.body(), io);
        }
        let mut forward = true;
        let mut how = Ended::Complete;
        let done = match (&front, tag) {
            (Expect::Parse { swallow, .. }, b'1') => {
                forward = !swallow;
                true
            }
            (Expect::Bind, b'2') => true,
            (Expect::Describe, b'T' | b'n') => true,
            (Expect::Execute { track, .. }, b'C' | b'I' | b's') => {
                if tag == b's' {
                    how = Ended::Suspended;
                }
                if let (Some(cmd), b'C') = (track, tag) {
                    self.apply_session_command(cmd.clone(), frame.body(), io);
                }
                true
            }
            (Expect::Execute { .. }, b'G') => {
                // Extended-protocol COPY FROM STDIN: the server ignores every Sync that reaches
                // it during copy-in, i.e. those the client sent before its CopyDone/CopyFail.
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
            (
                Expect::Sync | Expect::FunctionCall { .. } | Expect::Query { track: None, .. },
                b'Z',
            ) => {
                self.ready_from_server(frame.body(), None, io);
                true
            }
            (Expect::Query { track: Some(t), .. }, b'Z') => {
                self.ready_from_server(frame.body(), Some(&mut t.borrow_mut()), io);
                true
            }
            (Expect::Query { track: Some(t), .. }, b'C') => {
                let mut t = t.borrow_mut();
                let cmds = t.per_statement.pop_front().unwrap_or_default();
                for cmd in cmds {
                    if !confirms(&cmd, frame.body()) {
                        continue;
                    }
                    if t.several {
                        t.completed.push(cmd);
                    } else {
                        self.apply_session_command(cmd, frame.body(), io);
                    }
                }
                false
            }
            _ => false,
        };
        if tag == b'Z' {
            if let Some((code, message)) = self.cut.take() {
                // The error that ended the result stands for the statement. In a transaction
                // block the server's transaction is failed too (its own error swallowed, its
                // ReadyForQuery `E` forwarded), so client and server agree it is aborted.
                if self.tx == Tx::Block && self.expect.len() == 1 {
                    if let Some(s) = &mut io.server {
                        put_query(s.out.buf(), &sql::raise_statement(code.0, &message));
                        if front.followed() {
                            io.obs.executed(how);
                        }
                        self.expect.pop_front();
                        self.push(Expect::Abort, io);
                        return;
                    }
                }
            }
        }
        if forward && self.cut.is_none() && matches!(tag, b'D' | b'T') {
            match io.obs.row(tag, frame.bytes) {
                RowAction::Forward => {}
                RowAction::Drop => forward = false,
                RowAction::Replace(b) => {
                    io.client.bytes(&b);
                    io.obs.forwarded(tag, &b);
                    forward = false;
                }
                RowAction::Fail(e) => {
                    self.cut_result(e, &front, io);
                    forward = false;
                }
            }
        }
        if forward && self.cut.is_none() {
            io.client.frame(&frame);
            io.obs.forwarded(tag, frame.bytes);
        }
        if done {
            if front.followed() {
                io.obs.executed(how);
            }
            self.pop(io);
            if tag == b'Z' {
                io.obs.ready(self.tx, true, self.expect.is_empty());
            }
        }
    }

    /// A result observer ended the result at the front with an error: the client gets it in
    /// place of the rest of the result, and nothing more of the server's answers until the
    /// request ends (the simple query's ReadyForQuery, the extended batch's Sync), as if the
    /// server had failed the statement. The rest of an extended batch not yet sent is dropped
    /// like a refused message's.
    fn cut_result<C: Sink, S: Sink>(
        &mut self,
        e: ProxyError,
        front: &Expect,
        io: &mut Io<'_, C, S>,
    ) {
        put_proxy_error(io.client.buf(), &e);
        if let Expect::Query { track: Some(t), .. } = front {
            t.borrow_mut().failed = true;
        }
        if front.is_extended() && self.batch == Batch::Open {
            self.batch = Batch::Refused;
        }
        self.cut = Some((e.code, e.message));
    }

    /// A ReadyForQuery answering the client's request: the new transaction status, and the end
    /// of a simple query's tracked commands.
    fn ready_from_server<C: Sink, S: Sink>(
        &mut self,
        body: &[u8],
        track: Option<&mut QueryTrack>,
        io: &mut Io<'_, C, S>,
    ) {
        self.tx = Tx::from_byte(body.first().copied().unwrap_or(b'I'));
        if let Some(t) = track {
            self.end_query(t, io);
        }
        if self.tx == Tx::Idle {
            // The transaction is over whichever way; its undecided SETs die with it.
            self.pending_cmds.clear();
        }
    }

    fn note_fatal(&mut self, frame: &FrameRef<'_>) {
        let f = parse_error_fields(frame.body());
        if f.severity == b"FATAL" || f.severity == b"PANIC" {
            self.server_fatal = true;
        }
    }

    /// A tracked SET/RESET/DISCARD completed: remember what the client now wants and what
    /// this server connection now has.
    fn apply_session_command<C: Sink, S: Sink>(
        &mut self,
        cmd: SessionCommand,
        complete: &[u8],
        io: &mut Io<'_, C, S>,
    ) {
        if !confirms(&cmd, complete) {
            return;
        }
        if self.tx != Tx::Idle {
            // Inside a transaction block: it only lasts if the transaction commits.
            self.pending_cmds.push(cmd);
            return;
        }
        self.commit_session_command(cmd, io);
    }

    /// A multi-statement query ended (its ReadyForQuery). It ran as one implicit transaction
    /// unless it opened or closed blocks itself: its tracked settings are kept when it ran
    /// whole from idle to idle, wait for the block's end when it left one open, and otherwise
    /// the server's state is uncertain, so the connection is dirty.
    fn end_query<C: Sink, S: Sink>(&mut self, t: &mut QueryTrack, io: &mut Io<'_, C, S>) {
        let completed = std::mem::take(&mut t.completed);
        if completed.is_empty() {
            return;
        }
        match (t.failed, t.tx_before, self.tx) {
            (false, Some(Tx::Idle), Tx::Idle) => {
                for cmd in completed {
                    self.commit_session_command(cmd, io);
                }
            }
            (false, _, Tx::Block) => self.pending_cmds.extend(completed),
            _ => self.dirty = self.dirty.or(Some(Unsafe::Other)),
        }
    }

    /// A transaction ended (CommandComplete COMMIT or ROLLBACK): keep or drop its SETs.
    fn end_transaction<C: Sink, S: Sink>(&mut self, complete: &[u8], io: &mut Io<'_, C, S>) {
        let tag = complete.strip_suffix(b"\0").unwrap_or(complete);
        if tag == b"COMMIT" {
            for cmd in std::mem::take(&mut self.pending_cmds) {
                self.commit_session_command(cmd, io);
            }
        } else if tag == b"ROLLBACK" {
            self.pending_cmds.clear();
        }
    }

    fn commit_session_command<C: Sink, S: Sink>(
        &mut self,
        cmd: SessionCommand,
        io: &mut Io<'_, C, S>,
    ) {
        let Some(s) = &mut io.server else { return };
        match cmd {
            SessionCommand::Set { name, value } => {
                Rc::make_mut(&mut self.desired).insert(name.clone(), value.clone());
                Rc::make_mut(s.applied).insert(name, value);
            }
            SessionCommand::Reset { name } => {
                Rc::make_mut(s.applied).remove(&name);
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
                *s.applied = Rc::default();
                self.desired = self.startup_desired.clone();
            }
            SessionCommand::DiscardAll => {
                *s.applied = Rc::default();
                s.prepared.clear();
                // The server connection is back to its defaults: nothing untracked remains.
                self.dirty = None;
                self.pinned = false;
                self.stmt_unsafe.clear();
                self.discarded = true;
                self.desired = self.startup_desired.clone();
                self.statements.clear();
                self.stmt_cmds.clear();
                self.portal_cmds.clear();
            }
            SessionCommand::Deallocate { .. } | SessionCommand::DeallocateAll => {}
        }
    }
}

/// Whether a CommandComplete tag confirms a tracked command (`set_config` answers `SELECT 1`).
fn confirms(cmd: &SessionCommand, complete: &[u8]) -> bool {
    let tag = complete.strip_suffix(b"\0").unwrap_or(complete);
    matches!(
        (cmd, tag),
        (SessionCommand::Set { .. }, b"SET" | b"SELECT 1")
            | (
                SessionCommand::Reset { .. } | SessionCommand::ResetAll,
                b"RESET"
            )
            | (SessionCommand::DiscardAll, b"DISCARD ALL")
    )
}

const LISTEN_REFUSED: &str = "in transaction pooling mode LISTEN and UNLISTEN must be sent alone, \
     as a simple query (not with other statements or through the extended protocol); or use a \
     session-mode database";

/// Records statement `n`'s tracked commands (statements before it that had none get empty
/// entries: one entry per statement, matched to CommandCompletes in order).
fn track_at(track: &mut Option<QueryTrack>, n: usize, cmds: Vec<SessionCommand>) {
    let t = track.get_or_insert_with(QueryTrack::default);
    t.per_statement.resize_with(n, Vec::new);
    t.per_statement.push_back(cmds);
}

/// The 0A000 message for a statement `unsafe_statements = "refuse"` turns away.
fn refusal(u: Unsafe) -> String {
    format!(
        "{} is not allowed under transaction pooling: it changes session state the proxy cannot \
         carry between server connections (this database has unsafe_statements = \"refuse\")",
        u.class()
    )
}

fn forward<C: Sink, S: Sink>(io: &mut Io<'_, C, S>, frame: &Frame) {
    if let Some(s) = &mut io.server {
        s.out.bytes(&frame.bytes);
    }
}

/// The NUL-terminated strings a message body starts with, and what follows them. A body cut
/// short is a protocol violation naming the message.
pub fn read_cstrs<'a, const N: usize>(
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
pub fn kind_and_name<'a>(body: &'a [u8], message: &str) -> Result<(u8, &'a [u8]), ProxyError> {
    let (&kind, rest) = body
        .split_first()
        .ok_or_else(|| ProxyError::protocol(format!("malformed {message}")))?;
    let ([name], _) = read_cstrs(rest, message)?;
    Ok((kind, name))
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "exchange_model.rs"]
mod model;
