//! Table-driven tests of the protocol core, with no I/O: client messages in, the bytes for the
//! server and the client out, and a scripted server answering in between.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use helios_config::{PoolMode, UnsafeStatements};

use super::*;
use crate::net::codec::{put_command_complete, put_msg, FrameReader};
use crate::proto::prepared::{ParamMap, PreparedSet, StatementRegistry};

/// What the observer heard.
#[derive(Default)]
pub(super) struct Heard {
    readies: Vec<(Tx, bool, bool)>,
    errors: usize,
    /// How each followed execution ended, in order.
    pub executed: Vec<Ended>,
    /// DataRows seen by the result observer.
    rows: u64,
    /// The result observer's rule: drop every DataRow, replace each, or end the result at this
    /// DataRow (1-based).
    drop_rows: bool,
    replace_rows: Option<Bytes>,
    fail_at_row: Option<u64>,
}

impl Observer for Heard {
    fn server_error(&mut self, _code: &[u8], _body: &[u8]) {
        self.errors += 1;
    }
    fn ready(&mut self, tx: Tx, from_server: bool, answered: bool) {
        self.readies.push((tx, from_server, answered));
    }
    fn executed(&mut self, how: Ended) {
        self.executed.push(how);
    }
    fn row(&mut self, tag: u8, _frame: &[u8]) -> RowAction {
        if tag != b'D' {
            return RowAction::Forward;
        }
        self.rows += 1;
        if self.fail_at_row == Some(self.rows) {
            return RowAction::Fail(ProxyError::error(
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                Blame::Client,
                "too many rows",
            ));
        }
        if let Some(b) = &self.replace_rows {
            return RowAction::Replace(b.clone());
        }
        if self.drop_rows {
            return RowAction::Drop;
        }
        RowAction::Forward
    }
}

/// One session's core with an optional attached "server connection" (its buffers and state).
pub(super) struct Rig {
    pub ex: Exchange,
    pub to_client: BytesMut,
    pub to_server: BytesMut,
    pub attached: bool,
    pub prepared: PreparedSet,
    pub applied: Rc<ParamMap>,
    registry: RefCell<StatementRegistry>,
    pub heard: Heard,
    /// Server connections an attach takes (by `pick`) and a release gives back; empty: every
    /// attach is a new connection.
    pub pool: Vec<(PreparedSet, Rc<ParamMap>)>,
    pub pick: usize,
    /// Mark every Query, Execute and FunctionCall as followed (as the pipeline does when a
    /// stage is active).
    pub follow: bool,
    /// The next Bind runs this statement instead (a stage's rewrite).
    rewrite: Option<Bytes>,
}

macro_rules! rig_io {
    ($r:ident) => {
        Io {
            client: &mut $r.to_client,
            server: if $r.attached {
                Some(Server {
                    out: &mut $r.to_server,
                    prepared: &mut $r.prepared,
                    applied: &mut $r.applied,
                })
            } else {
                None
            },
            obs: &mut $r.heard,
            registry: &$r.registry,
            shard: 0,
        }
    };
}

impl Rig {
    pub fn new(mode: PoolMode) -> Rig {
        Rig {
            ex: Exchange::new(mode, UnsafeStatements::Pin, Rc::default()),
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            attached: false,
            prepared: PreparedSet::new(100),
            applied: Rc::default(),
            registry: RefCell::default(),
            heard: Heard::default(),
            pool: Vec::new(),
            pick: 0,
            follow: false,
            rewrite: None,
        }
    }

    /// A client message through the core; attaches the server if the message needs one.
    pub fn client(&mut self, msg: Bytes) -> Result<(), ProxyError> {
        let frame = Frame {
            tag: msg[0],
            bytes: msg,
        };
        match self.ex.client(frame, &mut rig_io!(self))? {
            Step::Server(mut then) => {
                match &mut then {
                    Then::Query { req, .. }
                    | Then::Execute { req, .. }
                    | Then::FunctionCall { req, .. } => *req = self.follow,
                    Then::Bind { rewrite, .. } => *rewrite = self.rewrite.take(),
                    _ => {}
                }
                if !self.attached {
                    self.attach_fresh();
                }
                self.ex.send(then, &mut rig_io!(self))
            }
            _ => Ok(()),
        }
    }

    /// Attaches a new server connection (no statements, no settings).
    pub fn attach_fresh(&mut self) {
        self.attached = true;
        match self.pool.get_mut(self.pick) {
            Some((prepared, applied)) => {
                std::mem::swap(&mut self.prepared, prepared);
                std::mem::swap(&mut self.applied, applied);
            }
            None => {
                self.prepared = PreparedSet::new(100);
                self.applied = Rc::default();
            }
        }
        self.ex.attached(&mut rig_io!(self));
    }

    /// Gives the server connection back if the core allows it (transaction mode's rule).
    pub fn maybe_release(&mut self) -> bool {
        if self.attached && self.ex.may_release() {
            self.attached = false;
            if let Some((prepared, applied)) = self.pool.get_mut(self.pick) {
                std::mem::swap(&mut self.prepared, prepared);
                std::mem::swap(&mut self.applied, applied);
            }
            return true;
        }
        false
    }

    /// A server message through the core.
    pub fn server(&mut self, msg: &[u8]) {
        let frame = FrameRef {
            tag: msg[0],
            bytes: msg,
            shared: None,
        };
        self.ex.server(frame, &mut rig_io!(self));
    }

    pub fn reject(&mut self, e: &ProxyError, extended: bool) {
        self.ex.reject(e, extended, &mut rig_io!(self));
    }

    /// The frames the client was sent since the last call, as tags.
    pub fn client_tags(&mut self) -> String {
        tags(&mut self.to_client)
    }

    /// The frames the server was sent since the last call, as tags.
    pub fn server_tags(&mut self) -> String {
        tags(&mut self.to_server)
    }

    pub fn server_frames(&mut self) -> Vec<Frame> {
        frames(&mut self.to_server)
    }
}

fn frames(buf: &mut BytesMut) -> Vec<Frame> {
    let mut r = FrameReader::new(1 << 20);
    r.buf.extend_from_slice(buf);
    buf.clear();
    let mut out = Vec::new();
    while let Some(f) = r.next_frame().expect("well-formed output") {
        out.push(f);
    }
    assert!(r.buf.is_empty(), "a partial frame was written");
    out
}

fn tags(buf: &mut BytesMut) -> String {
    frames(buf).iter().map(|f| f.tag as char).collect()
}

// ---- message builders ----

pub(super) fn msg(tag: u8, f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::new();
    put_msg(&mut b, tag, f);
    b.freeze()
}

pub(super) fn query(sql: &str) -> Bytes {
    msg(b'Q', |b| put_cstr(b, sql.as_bytes()))
}

pub(super) fn parse(name: &str, sql: &str) -> Bytes {
    msg(b'P', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, sql.as_bytes());
        b.put_i16(0);
    })
}

pub(super) fn bind(portal: &str, stmt: &str) -> Bytes {
    msg(b'B', |b| {
        put_cstr(b, portal.as_bytes());
        put_cstr(b, stmt.as_bytes());
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    })
}

pub(super) fn describe(kind: u8, name: &str) -> Bytes {
    msg(b'D', |b| {
        b.put_u8(kind);
        put_cstr(b, name.as_bytes());
    })
}

pub(super) fn close(kind: u8, name: &str) -> Bytes {
    msg(b'C', |b| {
        b.put_u8(kind);
        put_cstr(b, name.as_bytes());
    })
}

pub(super) fn execute(portal: &str) -> Bytes {
    msg(b'E', |b| {
        put_cstr(b, portal.as_bytes());
        b.put_i32(0);
    })
}

pub(super) fn sync() -> Bytes {
    msg(b'S', |_| {})
}

pub(super) fn flush() -> Bytes {
    msg(b'H', |_| {})
}

pub(super) fn bare(tag: u8) -> Bytes {
    msg(tag, |_| {})
}

pub(super) fn copy_data() -> Bytes {
    msg(b'd', |b| b.put_slice(b"1\n"))
}

pub(super) fn function_call() -> Bytes {
    msg(b'F', |b| {
        b.put_u32(1598);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    })
}

pub(super) fn complete(tag: &str) -> Bytes {
    let mut b = BytesMut::new();
    put_command_complete(&mut b, tag);
    b.freeze()
}

pub(super) fn ready(status: u8) -> Bytes {
    msg(b'Z', |b| b.put_u8(status))
}

pub(super) fn error(code: &str) -> Bytes {
    msg(b'E', |b| {
        for (f, v) in [(b'S', "ERROR"), (b'C', code), (b'M', "boom")] {
            b.put_u8(f);
            put_cstr(b, v.as_bytes());
        }
        b.put_u8(0);
    })
}

/// One step of a scripted exchange.
enum Do {
    /// The client sends this message.
    C(Bytes),
    /// The server sends this message.
    S(Bytes),
    /// Assert the server was sent these tags since the last check.
    ToServer(&'static str),
    /// Assert the client was sent these tags since the last check.
    ToClient(&'static str),
    /// Assert whether the core lets the connection go now, and release it if so.
    Release(bool),
}
use Do::*;

fn run(mode: PoolMode, script: Vec<Do>) -> Rig {
    let mut r = Rig::new(mode);
    for (i, step) in script.into_iter().enumerate() {
        match step {
            C(m) => r.client(m).expect("client message accepted"),
            S(m) => r.server(&m),
            ToServer(t) => assert_eq!(r.server_tags(), t, "step {i}: to the server"),
            ToClient(t) => assert_eq!(r.client_tags(), t, "step {i}: to the client"),
            Release(want) => assert_eq!(r.maybe_release(), want, "step {i}: release"),
        }
    }
    r
}

fn pb() -> Bytes {
    msg(b'1', |_| {})
}
fn bc() -> Bytes {
    msg(b'2', |_| {})
}
fn cc() -> Bytes {
    msg(b'3', |_| {})
}
fn row_desc() -> Bytes {
    msg(b'T', |b| b.put_i16(0))
}
fn data_row() -> Bytes {
    msg(b'D', |b| b.put_i16(0))
}

const TX: PoolMode = PoolMode::Transaction;
const SESSION: PoolMode = PoolMode::Session;

#[test]
fn simple_query_forwards_and_releases_at_idle() {
    run(
        TX,
        vec![
            C(query("select 1")),
            ToServer("Q"),
            Release(false),
            S(row_desc()),
            S(data_row()),
            S(complete("SELECT 1")),
            Release(false),
            S(ready(b'I')),
            ToClient("TDCZ"),
            Release(true),
        ],
    );
}

#[test]
fn a_transaction_block_keeps_the_connection_until_it_ends() {
    run(
        TX,
        vec![
            C(query("begin")),
            S(complete("BEGIN")),
            S(ready(b'T')),
            Release(false),
            C(query("select 1")),
            S(complete("SELECT 1")),
            S(ready(b'T')),
            Release(false),
            C(query("commit")),
            S(complete("COMMIT")),
            S(ready(b'I')),
            ToClient("CZCZCZ"),
            Release(true),
        ],
    );
}

#[test]
fn unnamed_extended_batch_passes_through() {
    run(
        TX,
        vec![
            C(parse("", "select $1")),
            C(bind("", "")),
            C(describe(b'P', "")),
            C(execute("")),
            Release(false),
            C(sync()),
            ToServer("PBDES"),
            S(pb()),
            S(bc()),
            S(row_desc()),
            S(data_row()),
            S(complete("SELECT 1")),
            Release(false),
            S(ready(b'I')),
            ToClient("12TDCZ"),
            Release(true),
        ],
    );
}

#[test]
fn a_batch_without_sync_holds_the_connection() {
    run(
        TX,
        vec![
            C(parse("", "select 1")),
            C(bind("", "")),
            C(execute("")),
            C(flush()),
            ToServer("PBEH"),
            S(pb()),
            S(bc()),
            S(complete("SELECT 1")),
            ToClient("12C"),
            // Everything answered, but the client has not sent its Sync.
            Release(false),
            C(sync()),
            S(ready(b'I')),
            ToClient("Z"),
            Release(true),
        ],
    );
}

#[test]
fn named_parse_is_answered_locally_and_prepared_at_first_bind() {
    let mut r = run(
        TX,
        vec![
            C(parse("s1", "select 1")),
            // No server was taken for the Parse.
            ToClient("1"),
            C(bind("", "s1")),
            C(execute("")),
            C(sync()),
            // The Parse under the proxy's name goes first; its ParseComplete is swallowed.
            ToServer("PBES"),
            S(pb()),
            S(bc()),
            S(complete("SELECT 1")),
            S(ready(b'I')),
            ToClient("2CZ"),
            Release(true),
        ],
    );
    // On the next server connection the statement is prepared again; on this one it is not.
    r.client(bind("", "s1")).unwrap();
    r.client(execute("")).unwrap();
    r.client(sync()).unwrap();
    let sent = r.server_frames();
    assert_eq!(
        sent.iter().map(|f| f.tag as char).collect::<String>(),
        "PBES"
    );
    assert!(sent[0].body().starts_with(b"_hp_"), "proxy-named Parse");
    assert!(sent[1].body()[1..].starts_with(b"_hp_"), "Bind renamed");
}

#[test]
fn a_statement_the_connection_has_is_not_prepared_twice() {
    let mut r = Rig::new(TX);
    r.client(parse("s1", "select 1")).unwrap();
    r.attach_fresh();
    for _ in 0..2 {
        r.client(bind("", "s1")).unwrap();
        r.client(execute("")).unwrap();
        r.client(sync()).unwrap();
    }
    assert_eq!(r.server_tags(), "PBESBES");
    for m in [pb(), bc(), complete("SELECT 1"), ready(b'I')] {
        r.server(&m);
    }
    for m in [bc(), complete("SELECT 1"), ready(b'I')] {
        r.server(&m);
    }
    assert_eq!(r.client_tags(), "12CZ2CZ");
}

#[test]
fn named_parse_inside_a_transaction_goes_to_the_server() {
    run(
        TX,
        vec![
            C(query("begin")),
            S(complete("BEGIN")),
            S(ready(b'T')),
            ToClient("CZ"),
            ToServer("Q"),
            C(parse("s1", "select 1")),
            C(sync()),
            ToServer("PS"),
            S(pb()),
            S(ready(b'T')),
            ToClient("1Z"),
            // Described again: the connection has it, so nothing is prepared.
            C(describe(b'S', "s1")),
            C(sync()),
            ToServer("DS"),
        ],
    );
}

#[test]
fn an_error_mid_batch_skips_to_sync() {
    run(
        TX,
        vec![
            C(parse("", "select nope")),
            C(bind("", "")),
            C(execute("")),
            C(sync()),
            S(error("42703")),
            // The server ignores Bind and Execute: the queue drops them too.
            S(ready(b'I')),
            ToClient("EZ"),
            Release(true),
        ],
    );
}

#[test]
fn pipelined_batches_recover_after_an_error() {
    run(
        TX,
        vec![
            C(parse("", "select nope")),
            C(bind("", "")),
            C(execute("")),
            C(sync()),
            C(parse("", "select 1")),
            C(bind("", "")),
            C(execute("")),
            C(sync()),
            ToServer("PBESPBES"),
            S(error("42703")),
            S(ready(b'I')),
            Release(false),
            S(pb()),
            S(bc()),
            S(complete("SELECT 1")),
            S(ready(b'I')),
            ToClient("EZ12CZ"),
            Release(true),
        ],
    );
}

#[test]
fn an_error_before_the_sync_arrives_drops_what_follows_until_it() {
    let mut r = run(
        TX,
        vec![
            C(parse("", "select nope")),
            C(flush()),
            S(error("42703")),
            ToClient("E"),
            // The server skips these until Sync; the core must not wait for their answers.
            C(bind("", "")),
            C(execute("")),
            C(sync()),
            S(ready(b'I')),
            ToClient("Z"),
        ],
    );
    assert!(r.maybe_release());
}

#[test]
fn unknown_statement_is_refused_until_sync() {
    run(
        TX,
        vec![
            C(parse("", "select 1")),
            C(bind("", "nope")),
            C(execute("")),
            C(sync()),
            // Parse went out; the Bind was refused; the Execute dropped; Sync still sent.
            ToServer("PS"),
            S(pb()),
            S(ready(b'I')),
            ToClient("1EZ"),
            Release(true),
        ],
    );
}

#[test]
fn a_refusal_inside_a_transaction_fails_the_server_transaction_too() {
    let mut r = run(
        TX,
        vec![
            C(query("begin")),
            S(complete("BEGIN")),
            S(ready(b'T')),
            ToClient("CZ"),
            ToServer("Q"),
            C(bind("", "nope")),
            C(sync()),
            // The Sync, then a raise statement whose ReadyForQuery says E.
            ToServer("SQ"),
            S(ready(b'T')),
            S(error("0A000")),
            S(ready(b'E')),
            ToClient("EZ"),
        ],
    );
    assert_eq!(r.ex.tx(), Tx::Failed);
    assert!(!r.maybe_release());
}

#[test]
fn a_simple_query_refusal_in_a_transaction_raises_on_the_server() {
    let mut r = run(
        TX,
        vec![
            C(query("begin")),
            S(complete("BEGIN")),
            S(ready(b'T')),
            ToClient("CZ"),
            ToServer("Q"),
        ],
    );
    r.reject(
        &ProxyError::error(SqlState::FEATURE_NOT_SUPPORTED, Blame::Client, "no"),
        false,
    );
    assert_eq!(r.server_tags(), "Q");
    assert_eq!(r.client_tags(), "E");
    r.server(&error("0A000"));
    r.server(&ready(b'E'));
    assert_eq!(r.client_tags(), "Z");
    assert_eq!(r.ex.tx(), Tx::Failed);
}

#[test]
fn close_of_a_named_statement_is_answered_locally() {
    run(
        TX,
        vec![
            C(parse("s1", "select 1")),
            C(close(b'S', "s1")),
            C(sync()),
            ToClient("13Z"),
            ToServer(""),
            // The name is gone for this client: 26000, then the Sync's answer.
            C(bind("", "s1")),
            C(sync()),
            ToClient("E"),
            ToServer("S"),
            S(ready(b'I')),
            ToClient("Z"),
        ],
    );
}

#[test]
fn portal_close_goes_to_the_server() {
    run(
        TX,
        vec![
            C(parse("", "select 1")),
            C(bind("p", "")),
            C(close(b'P', "p")),
            C(sync()),
            ToServer("PBCS"),
            S(pb()),
            S(bc()),
            S(cc()),
            S(ready(b'I')),
            ToClient("123Z"),
        ],
    );
}

#[test]
fn copy_in_simple_and_extended() {
    run(
        TX,
        vec![
            C(query("copy t from stdin")),
            S(msg(b'G', |b| {
                b.put_u8(0);
                b.put_i16(0)
            })),
            C(copy_data()),
            C(bare(b'c')),
            ToServer("Qdc"),
            S(complete("COPY 1")),
            S(ready(b'I')),
            ToClient("GCZ"),
            Release(true),
            // Extended: the Sync sent during copy-in is ignored by the server.
            C(parse("", "copy t from stdin")),
            C(bind("", "")),
            C(execute("")),
            C(sync()),
            S(pb()),
            S(bc()),
            S(msg(b'G', |b| {
                b.put_u8(0);
                b.put_i16(0)
            })),
            C(copy_data()),
            C(bare(b'f')),
            C(sync()),
            ToServer("PBESdfS"),
            S(error("57014")),
            Release(false),
            S(ready(b'I')),
            ToClient("12GEZ"),
            Release(true),
        ],
    );
}

#[test]
fn copy_out_streams_through() {
    run(
        TX,
        vec![
            C(query("copy t to stdout")),
            S(msg(b'H', |b| {
                b.put_u8(0);
                b.put_i16(0)
            })),
            S(msg(b'd', |b| b.put_slice(b"1\n"))),
            S(msg(b'd', |b| b.put_slice(b"2\n"))),
            S(bare(b'c')),
            S(complete("COPY 2")),
            S(ready(b'I')),
            ToClient("HddcCZ"),
            Release(true),
        ],
    );
}

#[test]
fn function_call_round_trip() {
    run(
        TX,
        vec![
            C(function_call()),
            ToServer("F"),
            S(msg(b'V', |b| b.put_i32(-1))),
            S(ready(b'I')),
            ToClient("VZ"),
            Release(true),
        ],
    );
}

#[test]
fn deallocate_of_tracked_statements_is_answered_locally() {
    run(
        TX,
        vec![
            C(parse("s1", "select 1")),
            C(sync()),
            ToClient("1Z"),
            C(query("DEALLOCATE s1")),
            ToClient("CZ"),
            C(parse("s1", "select 2")),
            C(parse("s2", "select 3")),
            C(sync()),
            C(query("DEALLOCATE ALL")),
            ToClient("11ZCZ"),
            ToServer(""),
            // An unknown name goes to the server (which reports the error).
            C(query("DEALLOCATE s9")),
            ToServer("Q"),
        ],
    );
}

#[test]
fn discard_all_forgets_statements_and_settings() {
    let mut r = run(
        TX,
        vec![
            C(parse("s1", "select 1")),
            C(sync()),
            C(query("SET work_mem = '8MB'")),
            S(complete("SET")),
            S(ready(b'I')),
            Release(true),
            C(query("DISCARD ALL")),
            // The new connection first gets the client's SET (answers swallowed).
            S(complete("SET")),
            S(ready(b'I')),
            S(complete("DISCARD ALL")),
            S(ready(b'I')),
            ToClient("1ZCZCZ"),
        ],
    );
    assert!(r.applied.is_empty());
    r.client(bind("", "s1")).unwrap();
    r.client(sync()).unwrap();
    assert_eq!(r.client_tags(), "E");
}

#[test]
fn a_tracked_set_is_replayed_and_its_answers_swallowed() {
    let mut r = run(
        TX,
        vec![
            C(query("SET work_mem = '8MB'")),
            ToServer("Q"),
            S(complete("SET")),
            S(ready(b'I')),
            ToClient("CZ"),
            Release(true),
        ],
    );
    assert_eq!(r.applied.get("work_mem").map(String::as_str), Some("'8MB'"));
    // A new connection without the setting: it is set first, its answers swallowed.
    r.client(query("show work_mem")).unwrap();
    let sent = r.server_frames();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].body(), b"SET work_mem TO '8MB';\0");
    for m in [complete("SET"), ready(b'I')] {
        r.server(&m);
    }
    assert_eq!(r.client_tags(), "");
    for m in [row_desc(), data_row(), complete("SHOW"), ready(b'I')] {
        r.server(&m);
    }
    assert_eq!(r.client_tags(), "TDCZ");
}

#[test]
fn a_set_in_a_rolled_back_transaction_is_forgotten() {
    let r = run(
        TX,
        vec![
            C(query("begin")),
            S(complete("BEGIN")),
            S(ready(b'T')),
            C(query("SET work_mem = '8MB'")),
            S(complete("SET")),
            S(ready(b'T')),
            C(query("rollback")),
            S(complete("ROLLBACK")),
            S(ready(b'I')),
        ],
    );
    assert!(r.applied.get("work_mem").is_none() || r.ex.desired.get("work_mem").is_none());
    assert!(r.ex.desired.get("work_mem").is_none());
}

#[test]
fn a_set_through_the_extended_protocol_is_tracked() {
    let r = run(
        TX,
        vec![
            C(parse("", "SET work_mem = '8MB'")),
            C(bind("", "")),
            C(execute("")),
            C(sync()),
            S(pb()),
            S(bc()),
            S(complete("SET")),
            S(ready(b'I')),
        ],
    );
    assert_eq!(
        r.ex.desired.get("work_mem").map(String::as_str),
        Some("'8MB'")
    );
}

#[test]
fn session_mode_forwards_statement_names_as_they_are() {
    run(
        SESSION,
        vec![
            C(parse("s1", "select 1")),
            C(bind("", "s1")),
            C(close(b'S', "s1")),
            C(sync()),
            ToServer("PBCS"),
            S(pb()),
            S(bc()),
            S(cc()),
            S(ready(b'I')),
            ToClient("123Z"),
        ],
    );
}

#[test]
fn observer_hears_each_ready_once_with_answered_last() {
    let r = run(
        TX,
        vec![
            C(query("select 1; select 2")),
            S(complete("SELECT 1")),
            S(complete("SELECT 1")),
            S(ready(b'I')),
            C(parse("", "x")),
            C(sync()),
            S(error("42601")),
            S(ready(b'I')),
        ],
    );
    assert_eq!(
        r.heard.readies,
        vec![(Tx::Idle, true, true), (Tx::Idle, true, true)]
    );
    assert_eq!(r.heard.errors, 1);
}

#[test]
fn notices_and_parameter_status_pass_at_any_time() {
    run(
        TX,
        vec![
            S(msg(b'S', |b| {
                put_cstr(b, b"TimeZone");
                put_cstr(b, b"UTC")
            })),
            C(query("select 1")),
            S(msg(b'N', |b| b.put_u8(0))),
            S(complete("SELECT 1")),
            S(ready(b'I')),
            ToClient("SNCZ"),
        ],
    );
}

#[test]
fn an_unknown_frontend_message_is_a_protocol_violation() {
    let mut r = Rig::new(TX);
    let e = r.client(bare(b'?')).unwrap_err();
    assert_eq!(e.code, SqlState::PROTOCOL_VIOLATION);
    let e = r.client(msg(b'B', |b| b.put_slice(b"no-nul"))).unwrap_err();
    assert_eq!(e.code, SqlState::PROTOCOL_VIOLATION);
}

fn rig_with(policy: UnsafeStatements) -> Rig {
    let mut r = Rig::new(TX);
    r.ex = Exchange::new(TX, policy, Rc::default());
    r
}

fn answer(r: &mut Rig, tags: &[&str], status: u8) {
    for t in tags {
        r.server(&complete(t));
    }
    r.server(&ready(status));
}

#[test]
fn every_statement_of_a_simple_query_is_tracked() {
    let mut r = Rig::new(TX);
    r.client(query("SET statement_timeout = '1234ms'; SELECT 1"))
        .unwrap();
    answer(&mut r, &["SET", "SELECT 1"], b'I');
    assert!(r.maybe_release());
    assert_eq!(
        r.ex.desired.get("statement_timeout").map(String::as_str),
        Some("'1234ms'")
    );
    // A failed multi-statement query undoes its SET (one implicit transaction): not tracked,
    // and the connection is dirty because the server's state is not known for sure.
    let mut r = Rig::new(TX);
    r.client(query("SET work_mem = '7MB'; SELECT 1/0")).unwrap();
    r.server(&complete("SET"));
    r.server(&error("22012"));
    r.server(&ready(b'I'));
    assert!(r.ex.desired.get("work_mem").is_none());
    assert!(r.ex.dirty().is_some());
}

#[test]
fn set_config_with_literals_is_tracked_like_set() {
    let mut r = Rig::new(TX);
    r.client(query("SELECT set_config('work_mem', '7MB', false)"))
        .unwrap();
    r.server(&row_desc());
    r.server(&data_row());
    answer(&mut r, &["SELECT 1"], b'I');
    assert_eq!(
        r.ex.desired.get("work_mem").map(String::as_str),
        Some("'7MB'")
    );
    assert!(r.ex.dirty().is_none());
}

#[test]
fn untrackable_statements_pin_by_default() {
    for sql in [
        "DO $$BEGIN PERFORM set_config('work_mem','7MB',false); END$$",
        "CREATE TEMP TABLE t1(x int)",
        "SET ROLE nobody",
        "SET SESSION AUTHORIZATION nobody",
        "PREPARE p AS SELECT 1",
        "SELECT pg_advisory_lock(1)",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "CALL p()",
        "select 1; create temporary table t2 (x int)",
    ] {
        let mut r = rig_with(UnsafeStatements::Pin);
        r.client(query(sql)).unwrap();
        answer(&mut r, &["X"], b'I');
        assert!(r.ex.pinned(), "{sql}");
        assert!(r.ex.dirty().is_some(), "{sql}");
        assert!(
            !r.maybe_release(),
            "{sql}: a pinned client keeps its connection"
        );
    }
}

#[test]
fn untrackable_statements_reset_or_refuse_as_configured() {
    let mut r = rig_with(UnsafeStatements::Reset);
    r.client(query("CREATE TEMP TABLE t1(x int)")).unwrap();
    answer(&mut r, &["CREATE TABLE"], b'I');
    assert!(!r.ex.pinned());
    assert!(r.ex.dirty().is_some());
    assert!(r.maybe_release(), "released, to be reset by the session");
    // Attaching a connection starts clean.
    r.client(query("select 1")).unwrap();
    assert!(r.ex.dirty().is_none());

    let mut r = rig_with(UnsafeStatements::Refuse);
    r.client(query("SET ROLE nobody")).unwrap();
    assert_eq!(r.client_tags(), "EZ");
    assert_eq!(r.server_tags(), "");
    // Extended protocol: refused at Parse, the rest of the batch dropped.
    r.client(parse("", "CREATE TEMP TABLE t(x int)")).unwrap();
    r.client(bind("", "")).unwrap();
    r.client(execute("")).unwrap();
    r.client(sync()).unwrap();
    assert_eq!(r.client_tags(), "EZ");
    assert_eq!(r.server_tags(), "");
}

#[test]
fn a_named_unsafe_statement_taints_each_execution() {
    let mut r = rig_with(UnsafeStatements::Reset);
    r.client(parse("s", "CREATE TEMP TABLE t(x int)")).unwrap();
    r.client(sync()).unwrap();
    assert!(r.ex.dirty().is_none(), "only prepared, not run");
    r.client(bind("", "s")).unwrap();
    r.client(execute("")).unwrap();
    r.client(sync()).unwrap();
    assert!(r.ex.dirty().is_some());
}

#[test]
fn discard_all_makes_a_dirty_connection_clean_again() {
    let mut r = rig_with(UnsafeStatements::Pin);
    r.client(query("CREATE TEMP TABLE t1(x int)")).unwrap();
    answer(&mut r, &["CREATE TABLE"], b'I');
    assert!(r.ex.pinned());
    r.client(query("DISCARD ALL")).unwrap();
    answer(&mut r, &["DISCARD ALL"], b'I');
    assert!(!r.ex.pinned());
    assert!(r.ex.dirty().is_none());
    assert!(r.maybe_release());
}

// ---- the pipeline's seams: followed executions, result observers, rewritten Binds ----

fn follow(mode: PoolMode) -> Rig {
    let mut r = Rig::new(mode);
    r.follow = true;
    r
}

fn step(r: &mut Rig, script: Vec<Do>) {
    for (i, s) in script.into_iter().enumerate() {
        match s {
            C(m) => r.client(m).expect("client message accepted"),
            S(m) => r.server(&m),
            ToServer(t) => assert_eq!(r.server_tags(), t, "step {i}: to the server"),
            ToClient(t) => assert_eq!(r.client_tags(), t, "step {i}: to the client"),
            Release(want) => assert_eq!(r.maybe_release(), want, "step {i}: release"),
        }
    }
}

#[test]
fn each_execution_of_a_prepared_statement_is_reported_once_in_order() {
    for mode in [TX, SESSION] {
        let mut r = follow(mode);
        step(&mut r, vec![C(parse("s", "select 1")), C(sync())]);
        if mode == SESSION {
            step(&mut r, vec![S(pb()), S(ready(b'I'))]);
        }
        r.client_tags();
        for i in 0..3 {
            if i == 0 && mode == TX {
                // Prepared on the server at its first Bind; the ParseComplete is swallowed.
                step(&mut r, vec![C(bind("", "s")), S(pb())]);
            } else {
                r.client(bind("", "s")).unwrap();
            }
            step(
                &mut r,
                vec![
                    C(execute("")),
                    C(sync()),
                    S(bc()),
                    S(data_row()),
                    S(complete("SELECT 1")),
                    S(ready(b'I')),
                ],
            );
        }
        assert_eq!(r.heard.executed, vec![Ended::Complete; 3], "{mode:?}");
    }
}

#[test]
fn an_error_mid_batch_fails_one_execution_and_skips_the_rest() {
    let mut r = follow(TX);
    step(
        &mut r,
        vec![
            C(parse("", "select 1/0")),
            C(bind("", "")),
            C(execute("")),
            C(bind("", "")),
            C(execute("")),
            C(sync()),
            S(pb()),
            S(bc()),
            S(error("22012")),
            S(ready(b'I')),
            ToClient("12EZ"),
        ],
    );
    assert_eq!(r.heard.executed, vec![Ended::Failed, Ended::Skipped]);
    assert!(r.ex.may_release());
    // Pushed while the server skips (the queue ran empty before the Sync was sent): skipped
    // at once.
    let mut r = follow(TX);
    step(
        &mut r,
        vec![
            C(parse("", "select 1/0")),
            C(bind("", "")),
            C(execute("")),
            C(flush()),
            S(pb()),
            S(bc()),
            S(error("22012")),
            C(bind("", "")),
            C(execute("")),
            C(sync()),
            S(ready(b'I')),
        ],
    );
    assert_eq!(r.heard.executed, vec![Ended::Failed, Ended::Skipped]);
}

#[test]
fn a_suspended_portal_is_reported_as_such_and_a_simple_query_at_its_ready() {
    let mut r = follow(SESSION);
    step(
        &mut r,
        vec![
            C(parse("", "select g from generate_series(1,3) g")),
            C(bind("", "")),
            C(execute("")),
            C(sync()),
            S(pb()),
            S(bc()),
            S(data_row()),
            S(msg(b's', |_| {})),
            S(ready(b'T')),
            C(query("select 1")),
            S(row_desc()),
            S(data_row()),
            S(complete("SELECT 1")),
        ],
    );
    assert_eq!(r.heard.executed, vec![Ended::Suspended]);
    step(&mut r, vec![S(ready(b'T'))]);
    assert_eq!(r.heard.executed, vec![Ended::Suspended, Ended::Complete]);
}

#[test]
fn result_observers_drop_and_replace_rows() {
    let mut r = follow(TX);
    r.heard.drop_rows = true;
    step(
        &mut r,
        vec![
            C(query("select 1")),
            S(row_desc()),
            S(data_row()),
            S(data_row()),
            S(complete("SELECT 2")),
            S(ready(b'I')),
            ToClient("TCZ"),
        ],
    );
    let replacement = msg(b'D', |b| {
        b.put_i16(1);
        b.put_i32(1);
        b.put_u8(b'x');
    });
    r.heard.drop_rows = false;
    r.heard.replace_rows = Some(replacement.clone());
    step(
        &mut r,
        vec![
            C(query("select 1")),
            S(row_desc()),
            S(data_row()),
            S(complete("SELECT 1")),
            S(ready(b'I')),
        ],
    );
    let out = frames(&mut r.to_client);
    assert_eq!(out[1].bytes, replacement, "the observer's row went out");
}

#[test]
fn a_result_ended_by_an_observer_becomes_the_statements_error() {
    // Outside a transaction: the rest of the rows and the CommandComplete are dropped, the
    // ReadyForQuery forwarded.
    let mut r = follow(TX);
    r.heard.fail_at_row = Some(2);
    step(
        &mut r,
        vec![
            C(query("select g from t")),
            S(row_desc()),
            S(data_row()),
            S(data_row()),
            S(data_row()),
            S(complete("SELECT 3")),
            S(ready(b'I')),
            ToClient("TDEZ"),
            Release(true),
        ],
    );
    assert_eq!(r.heard.executed, vec![Ended::Complete]);
    // A multi-statement query: what the later statements answer is dropped too.
    let mut r = follow(TX);
    r.heard.fail_at_row = Some(1);
    step(
        &mut r,
        vec![
            C(query("select 1; select 2")),
            S(row_desc()),
            S(data_row()),
            S(complete("SELECT 1")),
            S(row_desc()),
            S(data_row()),
            S(complete("SELECT 1")),
            S(ready(b'I')),
            ToClient("TEZ"),
        ],
    );
}

#[test]
fn a_result_ended_inside_a_transaction_fails_the_servers_transaction_too() {
    let mut r = follow(TX);
    step(
        &mut r,
        vec![
            C(query("begin")),
            ToServer("Q"),
            S(complete("BEGIN")),
            S(ready(b'T')),
            ToClient("CZ"),
        ],
    );
    r.heard.fail_at_row = Some(1);
    step(
        &mut r,
        vec![
            C(query("select g from t")),
            ToServer("Q"),
            S(row_desc()),
            S(data_row()),
            S(complete("SELECT 1")),
            S(ready(b'T')),
            // The raise statement goes to the server; nothing more to the client yet.
            ToServer("Q"),
            ToClient("TE"),
            S(error("P0001")),
            S(ready(b'E')),
            ToClient("Z"),
            Release(false),
        ],
    );
    assert_eq!(r.ex.tx(), Tx::Failed);
    assert_eq!(r.heard.readies.last(), Some(&(Tx::Failed, true, true)));
}

#[test]
fn a_result_ended_in_an_extended_batch_drops_the_rest_of_the_batch() {
    let mut r = follow(SESSION);
    r.heard.fail_at_row = Some(1);
    step(
        &mut r,
        vec![
            C(parse("", "select g from t")),
            C(bind("", "")),
            C(execute("")),
            C(flush()),
            ToServer("PBEH"),
            S(pb()),
            S(bc()),
            S(data_row()),
            S(data_row()),
            S(complete("SELECT 2")),
            ToClient("12E"),
            // The client goes on before it read the error: dropped until its Sync, as the
            // server would after an error.
            C(bind("", "")),
            C(execute("")),
            ToServer(""),
            C(sync()),
            ToServer("S"),
            S(ready(b'I')),
            ToClient("Z"),
        ],
    );
    assert_eq!(r.heard.executed, vec![Ended::Complete]);
}

#[test]
fn a_rewritten_bind_runs_the_new_text_prepared_under_a_proxy_name() {
    for mode in [TX, SESSION] {
        let mut r = Rig::new(mode);
        step(&mut r, vec![C(parse("", "select 1")), ToServer("P")]);
        let mut text = BytesMut::new();
        put_cstr(&mut text, b"select 1 limit 1");
        text.put_i16(0);
        r.rewrite = Some(text.freeze());
        step(
            &mut r,
            vec![
                C(bind("", "")),
                C(execute("")),
                C(sync()),
                // The rewritten statement's Parse, then the Bind aimed at it.
                ToServer("PBES"),
                S(pb()),
                S(pb()),
                S(bc()),
                S(data_row()),
                S(complete("SELECT 1")),
                S(ready(b'I')),
                // The proxy's own ParseComplete is swallowed.
                ToClient("12DCZ"),
            ],
        );
        // Executed again: the connection has the rewritten statement already.
        let mut text = BytesMut::new();
        put_cstr(&mut text, b"select 1 limit 1");
        text.put_i16(0);
        r.rewrite = Some(text.freeze());
        step(
            &mut r,
            vec![C(bind("", "")), C(execute("")), C(sync()), ToServer("BES")],
        );
    }
}
