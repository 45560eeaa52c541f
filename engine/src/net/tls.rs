//! TLS: rustls configurations built from the `[tls]` table (ring provider), and the
//! per-connection record layer [`Conn`](super::conn::Conn) runs between the socket and the frame
//! buffers.
//!
//! rustls is sans-IO: `Conn` hands it the ciphertext its socket backend received (the io_uring
//! ring or glommio's stream, alike) and sends what it writes, so the code above `Conn` reads and
//! writes plain frames whether a connection is encrypted or not. Certificates are loaded where
//! the configuration is loaded (start-up, reload, `--check`), never on a shard: a file that
//! does not load fails the load, and a reload that fails keeps the running configuration.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use helios_config::{ClientCert, NodeConfig, NodeTls, TlsConfig, TlsMode, TlsVersion};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol PostgreSQL 17 clients offer (and require for direct TLS).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {message}")]
pub struct TlsLoadError {
    what: &'static str,
    path: String,
    message: String,
}

fn load_err(what: &'static str, path: &Path, message: impl ToString) -> TlsLoadError {
    TlsLoadError {
        what,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The client-side TLS policy in effect: the mode, and the server configuration when TLS is on.
#[derive(Clone)]
pub struct ClientTls {
    pub mode: TlsMode,
    pub server: Option<Arc<ServerConfig>>,
    /// `tls-server-end-point` channel binding data of the proxy's certificate (RFC 5929), for
    /// SCRAM-SHA-256-PLUS; `None` if its signature algorithm defines no hash for it.
    pub end_point: Option<Vec<u8>>,
}

impl ClientTls {
    /// TLS off: SSLRequest gets `N`.
    pub fn disabled() -> ClientTls {
        ClientTls {
            mode: TlsMode::Disable,
            server: None,
            end_point: None,
        }
    }
}

/// Loads `[tls]`: with `mode = "disable"` nothing is read.
pub fn client_tls(cfg: &TlsConfig) -> Result<ClientTls, TlsLoadError> {
    let mode = cfg.effective_mode();
    if mode == TlsMode::Disable {
        return Ok(ClientTls::disabled());
    }
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Err(load_err(
            "tls.cert",
            Path::new(""),
            "tls.mode needs tls.cert and tls.key",
        ));
    };
    let certs = load_certs("tls.cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| load_err("tls.key", key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| load_err("tls.min_version", Path::new(""), e))?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs("tls.client_ca", ca)? {
                roots.add(c).map_err(|e| load_err("tls.client_ca", ca, e))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = match cfg.client_cert {
                ClientCert::Require => v,
                ClientCert::Optional => v.allow_unauthenticated(),
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| load_err("tls.client_ca", ca, e))?)
        }
    };
    let end_point = end_point_hash(&certs[0]);
    // with_single_cert checks that the key belongs to the certificate.
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| load_err("tls.cert", cert, e))?;
    server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ClientTls {
        mode,
        server: Some(Arc::new(server)),
        end_point,
    })
}

fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsLoadError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| load_err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_err(what, path, e))?;
    if certs.is_empty() {
        return Err(load_err(what, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// One connection's TLS state: rustls plus the ciphertext on its way in and out.
pub struct Tls {
    pub conn: rustls::Connection,
    /// Ciphertext received and not yet given to rustls.
    pub cin: BytesMut,
    /// Ciphertext written by rustls and not yet handed to the socket.
    pub cout: BytesMut,
}

impl Tls {
    /// The client side of a server connection.
    pub fn client(tls: &UpstreamTls) -> io::Result<Tls> {
        let mut conn = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
            .map_err(io::Error::other)?;
        conn.set_buffer_limit(None);
        Ok(Tls {
            conn: conn.into(),
            cin: BytesMut::new(),
            cout: BytesMut::new(),
        })
    }

    /// The server side of a client connection; `early` is ciphertext already read (direct TLS).
    pub fn server(config: Arc<ServerConfig>, early: &[u8]) -> io::Result<Tls> {
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        // The session queues whole batches; backpressure is `Conn::pending`, not rustls's limit.
        conn.set_buffer_limit(None);
        Ok(Tls {
            conn: conn.into(),
            cin: BytesMut::from(early),
            cout: BytesMut::new(),
        })
    }

    /// Decrypts the buffered ciphertext, appending plaintext to `out`. Returns the plaintext
    /// bytes appended and whether the peer closed the TLS session (close_notify). A TLS error
    /// leaves its alert in `cout` (sent by the caller if it can) and is returned as
    /// `InvalidData`.
    pub fn decrypt_into(&mut self, out: &mut BytesMut) -> io::Result<(usize, bool)> {
        let mut got = 0;
        loop {
            let mut reader = self.conn.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => return Ok((got, true)),
                    Ok(b) => {
                        let n = b.len();
                        out.extend_from_slice(b);
                        reader.consume(n);
                        got += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if self.cin.is_empty() {
                return Ok((got, false));
            }
            let n = self.conn.read_tls(&mut (&self.cin[..]))?;
            self.cin.advance(n);
            if let Err(e) = self.conn.process_new_packets() {
                let _ = self.encrypt_pending();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if n == 0 {
                return Ok((got, false));
            }
        }
    }

    /// Encrypts `plain` and moves every record rustls has to send into `cout`.
    pub fn encrypt(&mut self, plain: &[u8]) -> io::Result<()> {
        if !plain.is_empty() {
            self.conn.writer().write_all(plain)?;
        }
        self.encrypt_pending()
    }

    /// Moves what rustls has to send (handshake, alerts, records) into `cout`.
    pub fn encrypt_pending(&mut self) -> io::Result<()> {
        if self.cout.is_empty() {
            super::codec::rewind(&mut self.cout);
        }
        while self.conn.wants_write() {
            let mut w = (&mut self.cout).writer();
            if self.conn.write_tls(&mut w)? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// The handshake still runs.
    pub fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

/// The names a verified peer certificate gives: its subject's common names, then its DNS
/// subject alternative names. Empty without a certificate (or one that does not parse, which
/// rustls would not have accepted).
pub fn peer_names(conn: &rustls::Connection) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Vec::new();
    };
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names
}

/// TLS to one node (`nodes.tls`, `tls_ca`, `tls_cert`, `tls_key`), loaded.
#[derive(Clone)]
pub struct UpstreamTls {
    pub mode: NodeTls,
    pub config: Arc<rustls::ClientConfig>,
    /// The node's `host`, checked against the certificate with verify-full.
    pub server_name: rustls_pki_types::ServerName<'static>,
    /// SHA-256 of the settings and the files' contents: a reload that changes neither leaves
    /// the pools' targets equal.
    digest: [u8; 32],
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}
impl Eq for UpstreamTls {}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamTls({:?}, {:?})", self.mode, self.server_name)
    }
}

/// Loads a node's TLS settings; `None` with `tls = "disable"`.
pub fn upstream_tls(node: &NodeConfig) -> Result<Option<UpstreamTls>, TlsLoadError> {
    use sha2::{Digest, Sha256};
    if node.tls == NodeTls::Disable {
        return Ok(None);
    }
    let what = "nodes.tls_ca";
    let mut digest = Sha256::new();
    digest.update(format!("{:?}\0{}\0", node.tls, node.host));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = match &node.tls_ca {
        Some(ca) if matches!(node.tls, NodeTls::VerifyCa | NodeTls::VerifyFull) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(what, ca)? {
                digest.update(c.as_ref());
                roots.add(c).map_err(|e| load_err(what, ca, e))?;
            }
            Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| load_err(what, ca, e))?,
            )
        }
        _ => None,
    };
    let verifier = Arc::new(PgVerifier {
        mode: node.tls,
        webpki,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| load_err("nodes.tls", Path::new(""), e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&node.tls_cert, &node.tls_key) {
        (Some(cert), Some(key)) => {
            let certs = load_certs("nodes.tls_cert", cert)?;
            for c in &certs {
                digest.update(c.as_ref());
            }
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| load_err("nodes.tls_key", key, e))?;
            digest.update(key_der.secret_der());
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| load_err("nodes.tls_cert", cert, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    let server_name = rustls_pki_types::ServerName::try_from(node.host.clone())
        .map_err(|e| load_err("nodes.host", Path::new(&node.host), e))?;
    Ok(Some(UpstreamTls {
        mode: node.tls,
        config: Arc::new(config),
        server_name,
        digest: digest.finalize().into(),
    }))
}

/// libpq's `sslmode` semantics for a server certificate: `prefer` / `require` accept any
/// certificate (the handshake's signature is still checked), `verify-ca` the chain to `tls_ca`
/// whatever name it carries, `verify-full` the chain and the host name.
#[derive(Debug)]
struct PgVerifier {
    mode: NodeTls,
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some(webpki) = &self.webpki else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.mode == NodeTls::VerifyCa => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with its signature's hash (SHA-256
/// for MD5 and SHA-1). `None` for algorithms without one (Ed25519, RSA-PSS): no channel
/// binding is offered then.
pub fn end_point_hash(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256, Sha384, Sha512};
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let oid = parsed.signature_algorithm.algorithm.to_id_string();
    let der = cert.as_ref();
    Some(match oid.as_str() {
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1, sha256WithRSA, ecdsa-with-SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.10045.4.1"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.3.2" => Sha256::digest(der).to_vec(),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(der).to_vec(),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(der).to_vec(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    //! The record layer without sockets: a server `Tls` and a client `Tls` exchanging ciphertext
    //! in arbitrary chunks, and a server fed arbitrary bytes.
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (Tls, Tls) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PgVerifier {
                mode: NodeTls::Require,
                webpki: None,
                provider,
            }))
            .with_no_client_auth();
        let up = UpstreamTls {
            mode: NodeTls::Require,
            config: Arc::new(client),
            server_name: rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            digest: [0; 32],
        };
        (
            Tls::server(Arc::new(server), b"").unwrap(),
            Tls::client(&up).unwrap(),
        )
    }

    /// Moves `from`'s ciphertext to `to` in chunks of the sizes in `cuts` (cycled), decrypting
    /// as it goes; returns the plaintext `to` received.
    fn pump(from: &mut Tls, to: &mut Tls, cuts: &[usize], out: &mut BytesMut) {
        from.encrypt_pending().unwrap();
        let mut i = 0;
        while !from.cout.is_empty() {
            let n = cuts[i % cuts.len()].clamp(1, from.cout.len());
            i += 1;
            let chunk = from.cout.split_to(n);
            to.cin.extend_from_slice(&chunk);
            to.decrypt_into(out).unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn plaintext_survives_any_chunking(
            cuts in proptest::collection::vec(1usize..3000, 1..8),
            sizes in proptest::collection::vec(0usize..70_000, 1..6),
        ) {
            let (mut server, mut client) = pair();
            let (mut got_s, mut got_c) = (BytesMut::new(), BytesMut::new());
            for _ in 0..10 {
                pump(&mut client, &mut server, &cuts, &mut got_s);
                pump(&mut server, &mut client, &cuts, &mut got_c);
                if !server.handshaking() && !client.handshaking() {
                    break;
                }
            }
            prop_assert!(!server.handshaking() && !client.handshaking());
            for (k, &n) in sizes.iter().enumerate() {
                let msg: Vec<u8> = (0..n).map(|i| (i * 31 + k) as u8).collect();
                client.encrypt(&msg).unwrap();
                pump(&mut client, &mut server, &cuts, &mut got_s);
                prop_assert_eq!(&got_s[..], &msg[..]);
                got_s.clear();
                server.encrypt(&msg).unwrap();
                pump(&mut server, &mut client, &cuts, &mut got_c);
                prop_assert_eq!(&got_c[..], &msg[..]);
                got_c.clear();
            }
            // close_notify reads as a clean end of stream.
            client.conn.send_close_notify();
            client.encrypt_pending().unwrap();
            server.cin.extend_from_slice(&client.cout.split());
            prop_assert_eq!(server.decrypt_into(&mut got_s).unwrap(), (0, true));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_fail_or_wait(
            prefix in proptest::collection::vec(any::<u8>(), 0..64),
            junk in proptest::collection::vec(any::<u8>(), 0..20_000),
        ) {
            let (mut server, _) = pair();
            let mut out = BytesMut::new();
            // Sometimes a plausible record header, then anything.
            server.cin.extend_from_slice(&prefix);
            server.cin.extend_from_slice(&junk);
            match server.decrypt_into(&mut out) {
                // Not enough for a verdict yet: everything was taken in, nothing came out.
                Ok((n, _)) => {
                    prop_assert_eq!(n, 0);
                    prop_assert!(server.cin.is_empty());
                }
                Err(e) => {
                    prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                    // The alert to send is ready.
                    prop_assert!(!server.cout.is_empty() || !server.conn.wants_write());
                }
            }
        }
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        // rcgen's default key is ECDSA P-256 with SHA-256.
        let h = end_point_hash(ck.cert.der()).unwrap();
        use sha2::Digest;
        assert_eq!(h, sha2::Sha256::digest(ck.cert.der().as_ref()).to_vec());
        assert_eq!(end_point_hash(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
