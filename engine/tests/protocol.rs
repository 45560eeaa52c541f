//! Bytes no well-behaved client sends: each malformed frame gets an ErrorResponse with SQLSTATE
//! 08P01 and a closed connection, and the proxy keeps serving everyone else. A client that
//! never finishes its startup is dropped after limits.startup_timeout_ms.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use helios_testkit::proxy::Proxy;
use helios_testkit::SUPERUSER;

const MAX_MESSAGE: usize = 4096;
const STARTUP_TIMEOUT_MS: u64 = 800;

fn proxy(db: &str) -> Proxy {
    let pg = shared_pg();
    start_proxy(
        &config(
            &pg,
            TRUST,
            &format!(
                "max_message_size_bytes = {MAX_MESSAGE}\nstartup_timeout_ms = {STARTUP_TIMEOUT_MS}"
            ),
            &db_section("app", db, "transaction", 8, ""),
        ),
        None,
    )
}

/// Sends `bytes` and expects a FATAL 08P01 ErrorResponse, then the connection closed.
fn expect_protocol_violation(mut r: Raw, bytes: &[u8], what: &str) {
    // The proxy may close while we are still writing: that is fine.
    let _ = r.stream.write_all(bytes);
    let msgs = r.until_closed();
    let err = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("{what}: no ErrorResponse before the close, got {msgs:?}"));
    assert_eq!(err.code().as_deref(), Some("08P01"), "{what}: {err:?}");
    assert_eq!(err.field(b'S').as_deref(), Some("FATAL"), "{what}: {err:?}");
}

/// A typed message header with an arbitrary length field.
fn header(tag: u8, len: i32) -> Vec<u8> {
    let mut b = vec![tag];
    b.extend_from_slice(&len.to_be_bytes());
    b
}

#[test]
fn malformed_frames_get_08p01_and_a_close_while_others_are_served() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "malformed");
    let proxy = proxy(&db);
    let port = proxy.port();
    // A bystander in the middle of a transaction on each shard, and a Rust client.
    let mut bystanders: Vec<Raw> = Vec::new();
    for _ in 0..40 {
        let mut r = Raw::trust(port, "app");
        if bystanders.iter().any(|b| b.shard() == r.shard()) {
            continue;
        }
        r.query("begin");
        r.query("create temp table by (x int)");
        bystanders.push(r);
        if bystanders.len() == 2 {
            break;
        }
    }
    assert_eq!(bystanders.len(), 2, "no client landed on the second shard");
    let mut rust = connect(&proxy, SUPERUSER, "", "app");

    // Before startup.
    expect_protocol_violation(
        Raw::connect(port),
        b"GET / HTTP/1.1\r\n\r\n",
        "HTTP request",
    );
    expect_protocol_violation(Raw::connect(port), &3i32.to_be_bytes(), "startup length 3");
    expect_protocol_violation(
        Raw::connect(port),
        &(-1i32).to_be_bytes(),
        "startup length -1",
    );
    expect_protocol_violation(
        Raw::connect(port),
        &1_000_000i32.to_be_bytes(),
        "startup of 1 MB",
    );
    let mut bad_version = 8i32.to_be_bytes().to_vec();
    bad_version.extend_from_slice(&0x0002_0000i32.to_be_bytes());
    expect_protocol_violation(Raw::connect(port), &bad_version, "protocol 2.0");

    // After startup (trust).
    for _ in 0..2 {
        // Twice, so both shards are likely to see each case.
        expect_protocol_violation(Raw::trust(port, "app"), &header(b'Q', 3), "length 3");
        expect_protocol_violation(Raw::trust(port, "app"), &header(b'Q', 0), "length 0");
        expect_protocol_violation(
            Raw::trust(port, "app"),
            &header(b'Q', -5),
            "negative length",
        );
        expect_protocol_violation(
            Raw::trust(port, "app"),
            &header(b'Q', 1 << 20),
            "a 1 MiB header over max_message_size_bytes",
        );
        let mut big = header(b'Q', (MAX_MESSAGE + 100) as i32);
        big.resize(MAX_MESSAGE + 101, b' ');
        expect_protocol_violation(
            Raw::trust(port, "app"),
            &big,
            "a whole query over the maximum",
        );
        expect_protocol_violation(
            Raw::trust(port, "app"),
            &header(b'z', 4),
            "unknown type 'z'",
        );
        expect_protocol_violation(Raw::trust(port, "app"), &header(0, 4), "unknown type 0");
        // Inside a transaction holding a server connection: the connection goes too.
        let mut r = Raw::trust(port, "app");
        r.query("begin");
        expect_protocol_violation(r, &header(b'z', 4), "unknown type in a transaction");
    }
    // Just under the limit is fine.
    let mut r = Raw::trust(port, "app");
    let sql = format!("select '{}'", "x".repeat(MAX_MESSAGE - 100));
    assert_eq!(
        first_value(&r.query(&sql)).map(|v| v.len()),
        Some(MAX_MESSAGE - 100)
    );

    // Everyone else carried on.
    for b in &mut bystanders {
        let msgs = b.query("insert into by values (1) returning x");
        assert_eq!(
            first_value(&msgs).as_deref(),
            Some("1"),
            "bystander on shard {}",
            b.shard()
        );
        assert_eq!(ready_status(&b.query("commit")), b'I');
    }
    assert_eq!(
        rust.query_one("select 42", &[]).unwrap().get::<_, i32>(0),
        42
    );
    let mut fresh = connect(&proxy, SUPERUSER, "", "app");
    assert_eq!(
        fresh.query_one("select 43", &[]).unwrap().get::<_, i32>(0),
        43
    );
}

#[test]
fn a_client_that_never_finishes_startup_is_dropped_after_the_timeout() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "slowstart");
    let proxy = proxy(&db);
    let port = proxy.port();
    let timeout = Duration::from_millis(STARTUP_TIMEOUT_MS);
    let cases: [(&str, &[u8]); 3] = [
        ("says nothing", b""),
        ("half a length", &[0, 0]),
        (
            "half a startup packet",
            &[0, 0, 0, 40, 0, 3, 0, 0, b'u', b's'],
        ),
    ];
    let clients: Vec<(&str, Raw, Instant)> = cases
        .iter()
        .map(|(what, bytes)| {
            let mut r = Raw::connect(port);
            r.send(bytes);
            (*what, r, Instant::now())
        })
        .collect();
    // A well-behaved client logs in meanwhile.
    let mut ok = connect(&proxy, SUPERUSER, "", "app");
    assert_eq!(ok.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
    for (what, mut r, started) in clients {
        let msgs = r.until_closed();
        let after = started.elapsed();
        assert!(
            after >= timeout - Duration::from_millis(100),
            "{what}: dropped after {after:?}, before the {timeout:?} timeout"
        );
        assert!(
            after < timeout + Duration::from_secs(3),
            "{what}: dropped only after {after:?}"
        );
        assert!(
            msgs.iter().all(|m| m.tag == b'E'),
            "{what}: unexpected messages {msgs:?}"
        );
    }
    // The logged-in client is past startup: the timeout does not apply to it.
    assert_eq!(ok.query_one("select 2", &[]).unwrap().get::<_, i32>(0), 2);
}
