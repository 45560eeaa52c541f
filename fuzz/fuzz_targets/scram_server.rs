//! The server side of SCRAM-SHA-256 (`helios_engine::auth::ScramServer`, engine/src/auth.rs)
//! driven with arbitrary client messages.
//!
//! Input: `flags`, then the client-first-message, a NUL, then the client-final-message (no NUL:
//! the exchange stops after the first step). Flags bit 0: keys from the userlist's SCRAM
//! verifier (`Secret::Scram`, through `ScramKeys::from_secret`) instead of a plain password.
//! The server nonce is fixed (`SERVER_NONCE`), so a recorded exchange (corpus/scram_server)
//! replays through to a valid proof.
#![no_main]

use std::sync::OnceLock;

use helios_config::Secret;
use helios_engine::auth::{AuthFailure, ChannelBinding, ScramKeys, ScramServer, SCRAM_ITERATIONS};
use libfuzzer_sys::fuzz_target;

/// What the seed exchanges were recorded with: password "pencil", this salt, 4096 rounds.
const PASSWORD: &str = "pencil";
const SALT: &[u8] = b"helios-fuzz-salt";
const SERVER_NONCE: [u8; 18] = *b"helios-fuzz-nonce!";

fn keys(verifier: bool) -> ScramKeys {
    static PLAIN: OnceLock<ScramKeys> = OnceLock::new();
    static VERIFIER: OnceLock<ScramKeys> = OnceLock::new();
    let plain =
        PLAIN.get_or_init(|| ScramKeys::from_password(PASSWORD, SALT.to_vec(), SCRAM_ITERATIONS));
    if !verifier {
        return plain.clone();
    }
    VERIFIER
        .get_or_init(|| {
            let secret = Secret::Scram {
                iterations: plain.iterations,
                salt: plain.salt.clone(),
                stored_key: plain.stored_key,
                server_key: plain.server_key,
            };
            ScramKeys::from_secret(&secret, || unreachable!("a verifier brings its salt"))
                .expect("SCRAM verifier")
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (first, last) = match memchr(rest) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    // Bits 1-2 pick what the connection allows for channel binding.
    const CERT_HASH: [u8; 32] = [0x5a; 32];
    let binding = match (flags >> 1) & 3 {
        0 => ChannelBinding::Unavailable,
        1 => ChannelBinding::Declined,
        _ => ChannelBinding::Plus(&CERT_HASH),
    };
    let Ok((server, server_first)) =
        ScramServer::start(keys(flags & 1 != 0), first, &SERVER_NONCE, binding)
    else {
        return;
    };
    // server-first-message: r=<client nonce><server nonce>,s=<salt>,i=<iterations>
    assert!(server_first.starts_with("r="));
    assert!(server_first.ends_with(&format!(",i={SCRAM_ITERATIONS}")));
    assert!(server_first.is_ascii());
    let Some(last) = last else {
        return;
    };
    match server.finish(last) {
        Ok(server_final) => {
            assert!(server_final.starts_with("v="));
        }
        Err(AuthFailure::Malformed(_)) | Err(AuthFailure::WrongPassword) => {}
    }
});

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x == 0)
}
