//! Property test of the protocol core: random valid client message sequences against a simple
//! model of a PostgreSQL server. Every request gets exactly one answer, in order; nothing the
//! server needs is lost (a statement is always prepared on the connection that runs it), no
//! error appears that the client did not ask for, the server connection goes back to the
//! pool only at a transaction boundary with nothing in flight, and every execution the pipeline
//! follows is reported ended exactly once, in order.

use std::collections::HashSet;

use bytes::{Buf, BytesMut};
use helios_config::PoolMode;
use proptest::prelude::*;

use super::tests::*;
use crate::net::codec::read_cstr;
use crate::proto::prepared::PreparedSet;
use std::rc::Rc;

/// What a client does next.
#[derive(Clone, Debug)]
enum Op {
    /// A simple query: `select`, `begin`, `commit`, `set`, or one that fails.
    Simple(&'static str),
    /// An extended batch: (statement index, named?) executions, then Sync; `fail` makes the
    /// statement at that position fail on the server.
    Batch(Vec<(u8, bool)>, Option<usize>),
    /// Another server connection for the next transaction (the pool's choice).
    SwitchServer,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::sample::select(vec!["select 1", "begin", "commit", "rollback", "SET work_mem = '8MB'", "fail"])
            .prop_map(Op::Simple),
        4 => (prop::collection::vec((0u8..4, any::<bool>()), 1..4), prop::option::of(0usize..4))
            .prop_map(|(v, f)| Op::Batch(v, f)),
        1 => Just(Op::SwitchServer),
    ]
}

/// A PostgreSQL server connection, as far as the core can tell.
#[derive(Default)]
struct ModelServer {
    /// Statement names prepared on this connection.
    prepared: HashSet<Vec<u8>>,
    /// `I`, `T` or `E`.
    status: u8,
    /// An error in an extended batch: skip to Sync.
    skipping: bool,
}

impl ModelServer {
    fn new() -> ModelServer {
        ModelServer {
            status: b'I',
            ..Default::default()
        }
    }

    /// Answers every whole frame sent to it.
    fn answer(&mut self, sent: &mut BytesMut) -> Vec<bytes::Bytes> {
        let mut out = Vec::new();
        while sent.len() >= 5 {
            let tag = sent[0];
            let len = u32::from_be_bytes([sent[1], sent[2], sent[3], sent[4]]) as usize;
            let frame = sent.split_to(1 + len);
            let mut body = &frame[5..];
            if self.skipping && tag != b'S' {
                continue;
            }
            match tag {
                b'Q' => {
                    let text = String::from_utf8_lossy(read_cstr(&mut body).unwrap()).into_owned();
                    for stmt in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                        if self.status == b'E' && stmt != "rollback" {
                            out.push(error("25P02"));
                            break;
                        }
                        match stmt {
                            "begin" => {
                                self.status = b'T';
                                out.push(complete("BEGIN"));
                            }
                            "commit" | "rollback" => {
                                self.status = b'I';
                                out.push(complete(if stmt == "commit" {
                                    "COMMIT"
                                } else {
                                    "ROLLBACK"
                                }));
                            }
                            "fail" => {
                                out.push(error("22012"));
                                if self.status == b'T' {
                                    self.status = b'E';
                                }
                                break;
                            }
                            s if s.starts_with("SET") => out.push(complete("SET")),
                            s if s.starts_with("RESET") => out.push(complete("RESET")),
                            _ => out.push(complete("SELECT 1")),
                        }
                    }
                    out.push(ready(self.status));
                }
                b'P' => {
                    let name = read_cstr(&mut body).unwrap().to_vec();
                    if !name.is_empty() {
                        assert!(
                            self.prepared.insert(name.clone()),
                            "statement {:?} prepared twice on one connection",
                            String::from_utf8_lossy(&name)
                        );
                    }
                    out.push(msg(b'1', |_| {}));
                }
                b'B' => {
                    let _portal = read_cstr(&mut body).unwrap();
                    let name = read_cstr(&mut body).unwrap();
                    if !name.is_empty() && !self.prepared.contains(name) {
                        panic!(
                            "Bind of {:?}, which this connection does not have",
                            String::from_utf8_lossy(name)
                        );
                    }
                    out.push(msg(b'2', |_| {}));
                }
                b'E' => {
                    let portal = read_cstr(&mut body).unwrap();
                    if portal == b"fail" {
                        out.push(error("22012"));
                        self.skipping = true;
                        if self.status == b'T' {
                            self.status = b'E';
                        }
                    } else {
                        out.push(complete("SELECT 1"));
                    }
                }
                b'C' => {
                    body.advance(1);
                    let name = read_cstr(&mut body).unwrap();
                    self.prepared.remove(name);
                    out.push(msg(b'3', |_| {}));
                }
                b'S' => {
                    self.skipping = false;
                    out.push(ready(self.status));
                }
                t => panic!("unexpected message {:?} to the server", t as char),
            }
        }
        out
    }
}

/// Counts of what the client was sent.
fn count(buf: &mut BytesMut, tag: u8) -> (usize, usize) {
    let mut n = 0;
    let mut errors = 0;
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let f = buf.split_to(1 + len);
        if f[0] == tag {
            n += 1;
        }
        if f[0] == b'E' {
            errors += 1;
        }
    }
    (n, errors)
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut r = Rig::new(PoolMode::Transaction);
    r.follow = true;
    // Two server connections in the pool, each with its own statements and settings (the rig
    // swaps the chosen one in at attach and back at release).
    r.pool = (0..2)
        .map(|_| (PreparedSet::new(100), Rc::default()))
        .collect();
    let mut servers = [ModelServer::new(), ModelServer::new()];
    let mut current = 0usize;
    let mut client_tx_open = false;
    for op in ops {
        let mut readies_expected = 0;
        let mut errors_allowed = 0;
        let executed_before = r.heard.executed.len();
        let mut executions = 0;
        match op {
            Op::SwitchServer => {
                if !r.attached {
                    current = 1 - current;
                    r.pick = current;
                }
                continue;
            }
            Op::Simple(sql) => {
                r.client(query(sql)).unwrap();
                readies_expected += 1;
                executions += 1;
                errors_allowed += 1;
                match sql {
                    "begin" => client_tx_open = true,
                    "commit" | "rollback" => client_tx_open = false,
                    _ => {}
                }
            }
            Op::Batch(execs, fail) => {
                for (i, (stmt, named)) in execs.iter().enumerate() {
                    let name = if *named {
                        format!("s{stmt}")
                    } else {
                        String::new()
                    };
                    if !*named || !r.ex.statements.contains_key(name.as_bytes()) {
                        r.client(parse(&name, &format!("select {stmt}"))).unwrap();
                    }
                    let portal = if fail == Some(i) { "fail" } else { "" };
                    r.client(bind(portal, &name)).unwrap();
                    r.client(execute(portal)).unwrap();
                }
                r.client(sync()).unwrap();
                readies_expected += 1;
                errors_allowed += 1;
                executions += execs.len();
            }
        }
        let mut readies = 0;
        let mut errors = 0;
        for _ in 0..20 {
            let (z, e) = count(&mut r.to_client, b'Z');
            readies += z;
            errors += e;
            if !r.attached {
                break;
            }
            let answers = servers[current].answer(&mut r.to_server);
            if answers.is_empty() {
                break;
            }
            for a in answers {
                r.server(&a);
            }
        }
        let (z, e) = count(&mut r.to_client, b'Z');
        readies += z;
        errors += e;
        prop_assert_eq!(readies, readies_expected, "one ReadyForQuery per request");
        prop_assert!(errors <= errors_allowed, "{} errors", errors);
        prop_assert_eq!(r.ex.expecting(), 0, "every response arrived");
        prop_assert_eq!(
            r.heard.executed.len() - executed_before,
            executions,
            "each execution reported once"
        );
        if r.maybe_release() {
            prop_assert_eq!(
                servers[current].status,
                b'I',
                "released inside a transaction"
            );
            prop_assert!(!client_tx_open);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_sessions_against_a_model_server(ops in prop::collection::vec(op(), 1..40)) {
        check(ops)?;
    }
}
