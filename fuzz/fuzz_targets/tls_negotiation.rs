//! The TLS negotiation of a client connection as login runs it (engine/src/frontend/login.rs,
//! `startup` and `handshake`; engine/src/net/conn.rs, `Conn::handshake`), without a socket:
//! the startup packets off a `FrameReader`, an SSLRequest answered `S` (refused if plaintext
//! follows it in the same read, CVE-2021-23214) or a first byte 0x16 taken as direct TLS, then
//! every following byte fed to the server-side `Tls` record layer (`Tls::server`,
//! `decrypt_into`, `encrypt_pending`) in reads of a size the input picks, with the server
//! configuration built by the engine's own `client_tls` (with and without `client_ca`, TLS 1.2
//! allowed or 1.3 only). If a handshake completes, the plaintext goes on to the startup parser.
//!
//! Input: one flags byte, then the client's bytes. Flags: bit 0 mTLS (`client_ca`, optional
//! client certificate), bit 1 `min_version = "1.3"`, bits 2-7 the read size - 1 (1..64 bytes).
//!
//! Checked: no panic; an accepted read leaves no ciphertext behind (what rustls cannot take
//! yet it refuses as an error, so a peer cannot make `cin` grow); after an error the record
//! layer says no more and the connection ends, as login does.
#![no_main]

use std::sync::OnceLock;

use helios_config::{ClientCert, TlsConfig, TlsVersion};
use helios_engine::net::codec::{self, FrameReader, GSSENC_REQUEST, SSL_REQUEST};
use helios_engine::net::tls::{client_tls, ClientTls, Tls, ALPN_POSTGRESQL};
use libfuzzer_sys::fuzz_target;

/// A throwaway self-signed P-256 certificate for `localhost` (also the `client_ca` of the mTLS
/// configuration), made with openssl for this target only.
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUDLiJAIa+CgFpNiSsXUG2WkdY/vIwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMjE3NDUyN1oYDzIxMjYxMTA4
MTc0NTI3WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAASIEouPWLL9+6BnJSg4S3Uf6kflndmN4IEzqMzhCzx8+nBwmFiUo0a8
eIt4kAx0H9CE6WdORBj70AiaLKMmWHnRo2kwZzAdBgNVHQ4EFgQU7bz+Ox/+yn5o
qpWNs9IHO3svf0UwHwYDVR0jBBgwFoAU7bz+Ox/+yn5oqpWNs9IHO3svf0UwDwYD
VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZIzj0EAwID
SAAwRQIgGs6MgLLL67aMrannaeUVDc/Tp7JDsdEM1LTq5bC7QcYCIQCXHUadhLn3
/oZv/nl7yxVH0blpFOkINGVYwOQN8c9JzQ==
-----END CERTIFICATE-----
";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmVq2n4TgQilGSasl
OOFqfTTeJ8lttcIwkjikDsUKYGqhRANCAASIEouPWLL9+6BnJSg4S3Uf6kflndmN
4IEzqMzhCzx8+nBwmFiUo0a8eIt4kAx0H9CE6WdORBj70AiaLKMmWHnR
-----END PRIVATE KEY-----
";

/// `limits.max_message_size_bytes`' default.
const MAX_MESSAGE: usize = 64 << 20;

/// The four server configurations, by flags bits 0-1, built once.
fn configs() -> &'static [ClientTls; 4] {
    static C: OnceLock<[ClientTls; 4]> = OnceLock::new();
    C.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("helios-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), CERT).unwrap();
        std::fs::write(dir.join("key.pem"), KEY).unwrap();
        let make = |i: usize| {
            let cfg = TlsConfig {
                cert: Some(dir.join("cert.pem")),
                key: Some(dir.join("key.pem")),
                mode: None,
                min_version: if i & 2 != 0 {
                    TlsVersion::V1_3
                } else {
                    TlsVersion::V1_2
                },
                client_ca: (i & 1 != 0).then(|| dir.join("cert.pem")),
                client_cert: ClientCert::Optional,
            };
            client_tls(&cfg).unwrap()
        };
        let c = [make(0), make(1), make(2), make(3)];
        let _ = std::fs::remove_dir_all(&dir);
        c
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    let config = configs()[(flags & 3) as usize]
        .server
        .clone()
        .expect("TLS on");
    let read = (flags >> 2) as usize + 1;
    let mut reads = stream.chunks(read);
    let mut reader = FrameReader::new(MAX_MESSAGE);
    // The first read (login reads at least one byte before it decides).
    let Some(first) = reads.next() else {
        return;
    };
    reader.buf.extend_from_slice(first);
    let direct = reader.buf[0] == 0x16;
    if !direct {
        // Startup packets until the SSLRequest; GSSENCRequest is answered `N` and the client
        // goes on. Anything else ends this target's interest (startup_packet covers it).
        loop {
            match reader.next_startup() {
                Ok(Some(p)) => {
                    let mut body = &p[4..];
                    match codec::read_i32(&mut body) {
                        Some(SSL_REQUEST) if p.len() == 8 => break,
                        Some(GSSENC_REQUEST) if p.len() == 8 => continue,
                        _ => return,
                    }
                }
                Ok(None) => match reads.next() {
                    Some(r) => reader.buf.extend_from_slice(r),
                    None => return,
                },
                Err(_) => return,
            }
        }
        if !reader.buf.is_empty() {
            // Plaintext after the SSLRequest in the same read: refused before `S`.
            return;
        }
    }
    let early = reader.buf.split();
    let mut tls = Tls::server(config, &early).unwrap();
    let mut sent = 0usize;
    loop {
        match tls.decrypt_into(&mut reader.buf) {
            Ok((_, true)) => return,
            Ok((_, false)) => assert!(
                tls.cin.is_empty(),
                "{} bytes of ciphertext left after an accepted read",
                tls.cin.len()
            ),
            Err(e) => {
                // The alert (if any) goes out; login then closes the connection.
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
                return;
            }
        }
        tls.encrypt_pending().unwrap();
        sent += tls.cout.len();
        tls.cout.clear();
        assert!(
            sent < 1 << 20,
            "the server wrote {sent} bytes to a peer that sent garbage"
        );
        if !tls.handshaking() {
            break;
        }
        match reads.next() {
            Some(r) => tls.cin.extend_from_slice(r),
            None => return,
        }
    }
    // Handshake done: direct TLS needs ALPN `postgresql`; then the startup packet is plaintext.
    if direct && tls.conn.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        return;
    }
    for r in reads {
        tls.cin.extend_from_slice(r);
        if tls.decrypt_into(&mut reader.buf).is_err() {
            return;
        }
        while let Ok(Some(p)) = reader.next_startup() {
            assert!(p.len() >= 8 && p.len() <= codec::MAX_STARTUP);
        }
    }
});
