//! The sans-io protocol core (`helios_engine::proto::exchange::Exchange`) fed arbitrary client
//! and server frame sequences, as the session would: client frames through `client` (and `send`
//! once a server is attached), server frames through `server` while one is attached, release
//! whenever the core allows it. Whatever arrives, it must not panic, and it may only allow a
//! release with nothing in flight.
//!
//! Input: a sequence of ops. Each op is one byte: bits 0–1 choose client frame (0, 1), server
//! frame (2), or a release attempt / switch of server connection (3); a frame op is followed by
//! a tag byte, a length byte and that many body bytes.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use helios_config::{PoolMode, UnsafeStatements};
use helios_engine::net::codec::{Frame, FrameRef};
use helios_engine::proto::exchange::{Exchange, Io, Server, Step};
use helios_engine::proto::prepared::{ParamMap, PreparedSet, StatementRegistry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut data)) = data.split_first() else {
        return;
    };
    let (mode, policy) = (
        if mode & 1 == 0 {
            PoolMode::Transaction
        } else {
            PoolMode::Session
        },
        match (mode >> 1) % 3 {
            0 => UnsafeStatements::Pin,
            1 => UnsafeStatements::Reset,
            _ => UnsafeStatements::Refuse,
        },
    );
    let mut ex = Exchange::new(mode, policy, Rc::new(ParamMap::new()));
    let registry = RefCell::new(StatementRegistry::default());
    let mut to_client = BytesMut::new();
    let mut to_server = BytesMut::new();
    let mut prepared = PreparedSet::new(4);
    let mut applied: Rc<ParamMap> = Rc::default();
    let mut attached = false;
    let mut obs = ();
    macro_rules! io {
        () => {
            Io {
                client: &mut to_client,
                server: if attached {
                    Some(Server {
                        out: &mut to_server,
                        prepared: &mut prepared,
                        applied: &mut applied,
                    })
                } else {
                    None
                },
                obs: &mut obs,
                registry: &registry,
                shard: 0,
            }
        };
    }
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        if op & 3 == 3 {
            if attached && ex.may_release() {
                assert_eq!(ex.expecting(), 0, "released with responses in flight");
                attached = false;
                if op & 4 != 0 {
                    // Another server connection next time.
                    prepared = PreparedSet::new(4);
                    applied = Rc::default();
                }
            }
            continue;
        }
        let [tag, len, ..] = *data else { return };
        let len = (len as usize).min(data.len() - 2);
        let body = &data[2..2 + len];
        data = &data[2 + len..];
        let mut b = BytesMut::with_capacity(len + 5);
        b.put_u8(tag);
        b.put_u32(len as u32 + 4);
        b.put_slice(body);
        let bytes = b.freeze();
        if op & 3 == 2 {
            if attached {
                let frame = FrameRef {
                    tag,
                    bytes: &bytes,
                    shared: None,
                };
                ex.server(frame, &mut io!());
            }
        } else {
            match ex.client(Frame { tag, bytes }, &mut io!()) {
                Ok(Step::Server(then)) => {
                    if !attached {
                        attached = true;
                        ex.attached(&mut io!());
                    }
                    if ex.send(then, &mut io!()).is_err() {
                        return;
                    }
                }
                Ok(Step::Terminate) | Err(_) => return,
                Ok(_) => {}
            }
        }
        to_client.clear();
        to_server.clear();
    }
});
