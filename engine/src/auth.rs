//! Client authentication terminated at the proxy: the server side of SCRAM-SHA-256 (RFC 5802 /
//! RFC 7677, as PostgreSQL speaks it) and md5, as sans-io steps the session drives.
//!
//! No maintained tokio-free crate implements the server side of SCRAM, so it is built here from
//! sha2 + hmac + pbkdf2 + base64; the client side (proxy → PostgreSQL) uses postgres-protocol,
//! and the tests check one against the other.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use helios_config::Secret;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const SCRAM_ITERATIONS: u32 = 4096;

/// What the server keeps to check a SCRAM client.
#[derive(Clone, Debug)]
pub struct ScramKeys {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramKeys {
    /// Derives the verifier from a plain password (4096 PBKDF2 rounds: cache the result).
    pub fn from_password(password: &str, salt: Vec<u8>, iterations: u32) -> ScramKeys {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        ScramKeys {
            iterations,
            salt,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    pub fn from_secret(secret: &Secret, fresh_salt: impl FnOnce() -> Vec<u8>) -> Option<ScramKeys> {
        match secret {
            Secret::Plain(p) => Some(Self::from_password(p, fresh_salt(), SCRAM_ITERATIONS)),
            Secret::Scram {
                iterations,
                salt,
                stored_key,
                server_key,
            } => Some(ScramKeys {
                iterations: *iterations,
                salt: salt.clone(),
                stored_key: *stored_key,
                server_key: *server_key,
            }),
            Secret::Md5(_) => None,
        }
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// Why an authentication exchange failed. The client only ever learns "password authentication
/// failed" (28P01) or a protocol violation; details go to the log.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// The client's messages did not follow the SCRAM grammar.
    Malformed(&'static str),
    /// Well-formed, but the proof is wrong.
    WrongPassword,
}

/// The server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer {
    keys: ScramKeys,
    nonce: String,
    client_first_bare: String,
    server_first: String,
    /// What the client-final-message's `c=` must decode to: the gs2 header, plus the channel
    /// binding data with SCRAM-SHA-256-PLUS.
    expected_cbind: Vec<u8>,
}

/// Channel binding (RFC 5802 section 6, `tls-server-end-point` of RFC 5929) as the connection
/// and the client's mechanism choice allow it.
#[derive(Clone, Copy, Debug)]
pub enum ChannelBinding<'a> {
    /// No TLS: SCRAM-SHA-256-PLUS was not advertised; the client may say `n` or `y`.
    Unavailable,
    /// SCRAM-SHA-256-PLUS was advertised and the client chose SCRAM-SHA-256: `n` only (a `y`
    /// says the client saw no PLUS offer, so someone removed it).
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS: `p=tls-server-end-point`, bound to this hash of the
    /// proxy's certificate.
    Plus(&'a [u8]),
}

impl ScramServer {
    /// Handles the client-first-message; returns the server-first-message.
    pub fn start(
        keys: ScramKeys,
        client_first: &[u8],
        server_nonce_raw: &[u8; 18],
        binding: ChannelBinding<'_>,
    ) -> Result<(ScramServer, String), AuthFailure> {
        let msg = std::str::from_utf8(client_first).map_err(|_| AuthFailure::Malformed("utf8"))?;
        // gs2-header: channel binding flag, optional authzid, then the bare message.
        let (cbind, rest) = msg.split_once(',').ok_or(AuthFailure::Malformed("gs2"))?;
        let cb_data: &[u8] = match (cbind, binding) {
            ("n", ChannelBinding::Unavailable | ChannelBinding::Declined) => &[],
            ("y", ChannelBinding::Unavailable) => &[],
            ("y", _) => {
                return Err(AuthFailure::Malformed(
                    "channel binding was offered but the client says it was not (downgrade)",
                ))
            }
            ("p=tls-server-end-point", ChannelBinding::Plus(data)) => data,
            (_, ChannelBinding::Plus(_)) => {
                return Err(AuthFailure::Malformed(
                    "SCRAM-SHA-256-PLUS needs channel binding type tls-server-end-point",
                ))
            }
            _ if cbind.starts_with("p=") => {
                return Err(AuthFailure::Malformed(
                    "channel binding requested without SCRAM-SHA-256-PLUS",
                ));
            }
            _ => return Err(AuthFailure::Malformed("gs2 flag")),
        };
        let (authzid, bare) = rest.split_once(',').ok_or(AuthFailure::Malformed("gs2"))?;
        if !authzid.is_empty() {
            return Err(AuthFailure::Malformed("authzid not supported"));
        }
        let mut expected_cbind = format!("{cbind},{authzid},").into_bytes();
        expected_cbind.extend_from_slice(cb_data);
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(AuthFailure::Malformed("client nonce"))?;
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce_raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&keys.salt),
            keys.iterations
        );
        Ok((
            ScramServer {
                keys,
                nonce,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                expected_cbind,
            },
            server_first,
        ))
    }

    /// Checks the client-final-message; returns the server-final-message (`v=…`).
    pub fn finish(self, client_final: &[u8]) -> Result<String, AuthFailure> {
        let msg = std::str::from_utf8(client_final).map_err(|_| AuthFailure::Malformed("utf8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(AuthFailure::Malformed("proof"))?;
        let mut cbind = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                cbind = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let cbind = B64
            .decode(cbind.ok_or(AuthFailure::Malformed("channel binding"))?)
            .map_err(|_| AuthFailure::Malformed("channel binding"))?;
        if !constant_time_eq(&cbind, &self.expected_cbind) {
            return Err(AuthFailure::Malformed("channel binding mismatch"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(AuthFailure::Malformed("nonce mismatch"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(AuthFailure::Malformed("proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.keys.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&computed, &self.keys.stored_key) {
            return Err(AuthFailure::WrongPassword);
        }
        let server_signature = hmac(&self.keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `md5` + hex(md5(password + user)): what PostgreSQL and PgBouncer store.
pub fn md5_stored(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// Checks an md5 PasswordMessage against the stored `md5…` hash and the salt we sent.
pub fn md5_check(stored: &str, salt: &[u8; 4], response: &[u8]) -> bool {
    let Some(inner) = stored.strip_prefix("md5") else {
        return false;
    };
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    let expected = format!("md5{}", hex(&h.finalize()));
    constant_time_eq(expected.as_bytes(), response)
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A SCRAM exchange with channel binding: `client` binds to `client_data`, the server
    /// expects `server`.
    fn run_bound(
        client: ChannelBinding,
        server: super::ChannelBinding<'_>,
    ) -> Result<(), AuthFailure> {
        let keys = ScramKeys::from_password("pw", b"0123456789abcdef".to_vec(), 4096);
        let mut c = ScramSha256::new(b"pw", client);
        let (s, first) = ScramServer::start(keys, c.message(), &[7u8; 18], server)?;
        c.update(first.as_bytes())
            .expect("client accepts server-first");
        let fin = s.finish(c.message())?;
        c.finish(fin.as_bytes())
            .expect("client verifies the server");
        Ok(())
    }

    #[test]
    fn scram_plus_binds_to_the_certificate_hash() {
        use super::ChannelBinding as Cb;
        let hash = [9u8; 32];
        run_bound(
            ChannelBinding::tls_server_end_point(hash.to_vec()),
            Cb::Plus(&hash),
        )
        .unwrap();
        // Another certificate's hash (a man in the middle): refused.
        assert!(run_bound(
            ChannelBinding::tls_server_end_point(vec![8u8; 32]),
            Cb::Plus(&hash)
        )
        .is_err());
        // PLUS chosen without binding data, or binding without PLUS: refused.
        assert!(run_bound(ChannelBinding::unsupported(), Cb::Plus(&hash)).is_err());
        assert!(run_bound(
            ChannelBinding::tls_server_end_point(hash.to_vec()),
            Cb::Declined
        )
        .is_err());
        // 'y' after a PLUS offer is a downgrade; without one it is fine.
        assert!(run_bound(ChannelBinding::unrequested(), Cb::Declined).is_err());
        run_bound(ChannelBinding::unrequested(), Cb::Unavailable).unwrap();
        run_bound(ChannelBinding::unsupported(), Cb::Declined).unwrap();
    }

    fn run(client_pw: &str, server_pw: &str) -> Result<(), AuthFailure> {
        let keys = ScramKeys::from_password(server_pw, b"0123456789abcdef".to_vec(), 4096);
        let mut client = ScramSha256::new(client_pw.as_bytes(), ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(
            keys,
            client.message(),
            &[7u8; 18],
            super::ChannelBinding::Unavailable,
        )?;
        client
            .update(first.as_bytes())
            .expect("client accepts server-first");
        let fin = server.finish(client.message())?;
        client
            .finish(fin.as_bytes())
            .expect("client verifies the server signature");
        Ok(())
    }

    #[test]
    fn scram_against_the_postgres_protocol_client() {
        run("pa ss", "pa ss").unwrap();
        assert_eq!(run("wrong", "right"), Err(AuthFailure::WrongPassword));
    }

    #[test]
    fn scram_refuses_garbage() {
        let keys = ScramKeys::from_password("x", b"salt".to_vec(), 4096);
        for bad in [
            &b""[..],
            b"n",
            b"x,,n=,r=abc",
            b"n,,n=,r=",
            b"\xff\xfe",
            b"p=tls-server-end-point,,n=,r=a",
        ] {
            assert!(
                ScramServer::start(
                    keys.clone(),
                    bad,
                    &[0; 18],
                    super::ChannelBinding::Unavailable
                )
                .is_err(),
                "{bad:?}"
            );
        }
        let (s, _) = ScramServer::start(
            keys,
            b"n,,n=,r=abc",
            &[0; 18],
            super::ChannelBinding::Unavailable,
        )
        .unwrap();
        assert!(s.finish(b"c=biws,r=abcWRONG,p=AAAA").is_err());
    }

    #[test]
    fn md5_matches_postgres() {
        let stored = md5_stored("alice", "secret");
        let salt = [1, 2, 3, 4];
        let resp = postgres_protocol::authentication::md5_hash(b"alice", b"secret", salt);
        assert!(md5_check(&stored, &salt, resp.as_bytes()));
        assert!(!md5_check(&stored, &[9, 9, 9, 9], resp.as_bytes()));
    }
}
