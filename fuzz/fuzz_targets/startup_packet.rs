//! A client's first bytes as login reads them (engine/src/frontend/login.rs, `startup`):
//! startup-phase packets off a `FrameReader` (`next_startup`), SSLRequest/GSSENCRequest
//! answered and skipped, CancelRequest's key and owning shard, then the StartupMessage's
//! parameters (`parse_startup_params`), the NegotiateProtocolVersion reply for a newer 3.x, and
//! the `options` parameter's `-c name=value` settings (`parse_options`).
//!
//! Input: the client's byte stream. The dispatch below mirrors `startup`, which itself needs a
//! shard and a socket; the parsers it calls are the engine's own.
#![no_main]

use bytes::BytesMut;
use helios_engine::frontend::login::parse_options;
use helios_engine::net::codec::{
    self, FrameReader, CANCEL_REQUEST, GSSENC_REQUEST, PROTOCOL_3_0, SSL_REQUEST,
};
use helios_engine::shard::Shard;
use libfuzzer_sys::fuzz_target;

/// `limits.max_message_size_bytes`' default; startup packets are capped at `MAX_STARTUP` anyway.
const MAX_MESSAGE: usize = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let mut r = FrameReader::new(MAX_MESSAGE);
    r.buf.extend_from_slice(data);
    loop {
        let p = match r.next_startup() {
            Ok(Some(p)) => p,
            // More bytes needed (the client went quiet) or a bad length: login ends here.
            Ok(None) | Err(_) => return,
        };
        assert!(p.len() >= 8 && p.len() <= codec::MAX_STARTUP);
        let mut body = &p[4..];
        let code = codec::read_i32(&mut body).unwrap_or(0);
        match code {
            SSL_REQUEST | GSSENC_REQUEST if p.len() == 8 => continue,
            CANCEL_REQUEST if p.len() == 16 => {
                let pid = codec::read_i32(&mut body).unwrap_or(0);
                let _secret = codec::read_i32(&mut body).unwrap_or(0);
                assert!(Shard::owner_of(helios_engine::ids::ClientPid(pid)) < 256);
                return;
            }
            v if v >> 16 == 3 => return login(&p[8..], v),
            _ => return,
        }
    }
});

fn login(body: &[u8], version: i32) {
    let Some(params) = codec::parse_startup_params(body) else {
        return;
    };
    if version != PROTOCOL_3_0 {
        let unknown: Vec<&String> = params
            .iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("_pq_."))
            .collect();
        let mut out = BytesMut::new();
        codec::put_msg(&mut out, b'v', |b| {
            b.extend_from_slice(&0i32.to_be_bytes());
            b.extend_from_slice(&(unknown.len() as i32).to_be_bytes());
            for k in &unknown {
                codec::put_cstr(b, k.as_bytes());
            }
        });
        let mut reader = FrameReader::new(usize::MAX);
        reader.buf.extend_from_slice(&out);
        let f = reader.next_frame().unwrap().unwrap();
        assert_eq!(f.tag, b'v');
        assert!(reader.buf.is_empty());
    }
    let mut user = None;
    let mut database = None;
    let mut rest = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" => user = Some(v),
            "database" => database = Some(v),
            "replication" if v != "false" && v != "0" && v != "off" => return,
            "options" => {
                let opts = parse_options(&v);
                for (name, value) in &opts {
                    assert!(!name.contains('-') && !name.contains('='));
                    assert!(!name.contains(char::is_whitespace));
                    assert!(!value.contains(char::is_whitespace));
                    assert!(v.contains(value.as_str()));
                }
                rest.extend(opts)
            }
            _ if k.starts_with("_pq_.") => {}
            _ => rest.push((k, v)),
        }
    }
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return;
    };
    let database = database.filter(|d| !d.is_empty()).unwrap_or(user.clone());
    assert!(!database.is_empty());
    let _application_name = rest.iter().find(|(k, _)| k == "application_name");
}
