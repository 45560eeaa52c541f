//! A connection to a PostgreSQL server: opening it and logging in with the proxy's credentials
//! (SCRAM-SHA-256, md5, cleartext or trust), then the per-connection state pooling needs.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::net::TcpStream;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};

use crate::error::{Blame, ProxyError, SqlState};
use crate::ids::BackendPid;
use crate::net::codec::FrameReader;
use crate::net::codec::SSL_REQUEST;
use crate::net::conn::Conn;
use crate::net::tls::UpstreamTls;
use helios_config::NodeTls;

pub use crate::proto::prepared::{ParamMap, PreparedSet};

/// Where and as whom a pool connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTarget {
    pub node: String,
    /// As configured: for messages.
    pub host: String,
    pub port: u16,
    /// `host:port` resolved when the configuration was loaded (off the shards: a shard never
    /// waits for DNS); tried in order.
    pub addrs: Vec<SocketAddr>,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    /// `nodes.tls` and its files, loaded; `None`: plain text.
    pub tls: Option<crate::net::tls::UpstreamTls>,
    /// Extra startup parameters: an access context's `role` and `defaults`
    /// (`DatabaseConfig::context_startup`), which become the session's own defaults.
    pub startup: Vec<(String, String)>,
    /// An access context's credential lease (`credentials`): login and password come from it
    /// when a connection is opened, instead of `user`/`password`.
    pub lease: Option<crate::backend::lease::LeaseRef>,
}

/// Identifies a server connection in logs and the cancel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerId(pub u64);

/// The key a backend process is cancelled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendKey {
    pub addr: SocketAddr,
    pub pid: BackendPid,
    pub secret: i32,
    /// The connection's socket (-1 until known): a shard shuts it down when the node's health
    /// checks fail, so a statement waiting on a hung server ends with 08006 instead of hanging.
    pub fd: std::os::fd::RawFd,
}

pub struct ServerConn {
    pub id: ServerId,
    pub conn: Conn,
    pub reader: FrameReader,
    pub key: BackendKey,
    /// ParameterStatus values the server reported at login.
    pub startup_params: Rc<Vec<(String, String)>>,
    /// Session parameters the proxy has SET on this connection (absent = server default).
    pub applied: Rc<ParamMap>,
    /// Proxy-named prepared statements that exist on this connection, with their last use.
    pub prepared: PreparedSet,
    pub created: Instant,
    /// `created` in unix seconds (for the console and the admin API).
    pub created_unix: u64,
    pub last_used: Instant,
    /// The generation of the credential lease it was opened with (0: no lease); a newer
    /// active lease makes it draining.
    pub lease_gen: u64,
}

impl ServerConn {
    /// Opens a connection and logs in. Errors name the node.
    pub async fn connect(
        target: &ServerTarget,
        id: ServerId,
        max_frame: usize,
        prepared_cap: usize,
        ring: Option<&Rc<helios_uring::Ring>>,
    ) -> Result<ServerConn, ProxyError> {
        let fail = |what: String| {
            ProxyError::error(
                SqlState::CONNECTION_FAILURE,
                Blame::Server,
                format!(
                    "heliosproxy cannot connect to server {} ({}:{}): {what}",
                    target.node, target.host, target.port
                ),
            )
        };
        // A context with a credential lease logs in with the active lease; none (the source is
        // down and the last lease expired): fail closed, naming the context.
        let leased;
        let (target, lease_gen) = match &target.lease {
            None => (target, 0),
            Some(l) => {
                let lease = l.0.current().map_err(|m| {
                    ProxyError::error(SqlState::INVALID_AUTHORIZATION, Blame::Proxy, m)
                })?;
                let mut t = target.clone();
                t.user = lease.user.clone();
                t.password = Some(lease.password.clone());
                leased = t;
                (&leased, lease.generation)
            }
        };
        let login = async {
            let (stream, addr) = connect_any(&target.addrs).await.map_err(fail)?;
            let mut conn = Conn::new(stream);
            let mut reader = FrameReader::new(max_frame);
            let (key, params) = login(&mut conn, &mut reader, target, addr)
                .await
                .map_err(|e| {
                    if e.code == SqlState::CONNECTION_FAILURE {
                        e
                    } else {
                        // Keep the server's own SQLSTATE (28P01, 3D000, 53300…) but say where it came from.
                        ProxyError::error(
                            e.code,
                            Blame::Server,
                            format!(
                                "server {} refused the proxy's login: {}",
                                target.node, e.message
                            ),
                        )
                    }
                })?;
            Ok::<_, ProxyError>((conn, reader, key, params))
        };
        let (conn, reader, key, params) = match glommio::timer::timeout(
            target.connect_timeout,
            async { Ok(login.await) },
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(fail(format!(
                    "timed out after {:?}",
                    target.connect_timeout
                )))
            }
        };
        // Logged in over glommio's stream; the hot path runs on the shard's ring.
        let conn = match ring {
            Some(r) => conn
                .into_ring(r)
                .map_err(|e| fail(format!("io_uring: {e}")))?,
            None => conn,
        };
        let now = Instant::now();
        let key = BackendKey {
            fd: conn.raw_fd(),
            ..key
        };
        Ok(ServerConn {
            id,
            conn,
            reader,
            key,
            startup_params: Rc::new(params),
            applied: Rc::default(),
            prepared: PreparedSet::new(prepared_cap),
            created: now,
            created_unix: crate::backend::pool::unix_ms() / 1000,
            last_used: now,
            lease_gen,
        })
    }
}

/// A TCP connection to the first of `addrs` that accepts (a name may resolve to an IPv6 and an
/// IPv4 address of which the server listens on one).
async fn connect_any(addrs: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), String> {
    let mut failed = Vec::new();
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok((s, addr)),
            Err(e) => failed.push(format!("{addr}: {e}")),
        }
    }
    Err(if failed.is_empty() {
        "no address resolved".into()
    } else {
        failed.join("; ")
    })
}

async fn read_msg(
    conn: &mut Conn,
    reader: &mut FrameReader,
) -> Result<backend::Message, ProxyError> {
    loop {
        if let Some(frame) = reader.next_frame().map_err(ProxyError::from)? {
            let mut b = BytesMut::from(&frame.bytes[..]);
            return match backend::Message::parse(&mut b) {
                Ok(Some(m)) => Ok(m),
                _ => Err(ProxyError::error(
                    SqlState::PROTOCOL_VIOLATION,
                    Blame::Server,
                    "malformed message from server during login",
                )),
            };
        }
        let n = conn.read_into(reader).await.map_err(|e| {
            ProxyError::error(SqlState::CONNECTION_FAILURE, Blame::Server, e.to_string())
        })?;
        if n == 0 {
            return Err(ProxyError::error(
                SqlState::CONNECTION_FAILURE,
                Blame::Server,
                "server closed the connection during login",
            ));
        }
    }
}

async fn flush(conn: &mut Conn) -> Result<(), ProxyError> {
    conn.flush()
        .await
        .map_err(|e| ProxyError::error(SqlState::CONNECTION_FAILURE, Blame::Server, e.to_string()))
}

fn need_password(target: &ServerTarget) -> Result<&[u8], ProxyError> {
    target.password.as_deref().map(str::as_bytes).ok_or_else(|| {
        ProxyError::error(
            SqlState::INVALID_AUTHORIZATION,
            Blame::Proxy,
            format!(
                "server asks for a password for user {:?} and the proxy has none (set databases.*.password or a plain password in the userlist)",
                target.user
            ),
        )
    })
}

fn encode_err(e: std::io::Error) -> ProxyError {
    ProxyError::error(SqlState::INTERNAL_ERROR, Blame::Proxy, e.to_string())
}

/// Startup and authentication; returns the backend key and the reported parameters.
/// SSLRequest, then a handshake if the server answers `S`; `N` is plain text for `prefer` and a
/// failure otherwise.
async fn negotiate_tls(
    conn: &mut Conn,
    reader: &mut FrameReader,
    tls: &UpstreamTls,
) -> Result<(), ProxyError> {
    let failed =
        |what: String| ProxyError::error(SqlState::CONNECTION_FAILURE, Blame::Server, what);
    conn.queue().extend_from_slice(&8i32.to_be_bytes());
    conn.queue().extend_from_slice(&SSL_REQUEST.to_be_bytes());
    conn.flush_all().await.map_err(|e| failed(e.to_string()))?;
    while reader.buf.is_empty() {
        if conn
            .read_into(reader)
            .await
            .map_err(|e| failed(e.to_string()))?
            == 0
        {
            return Err(failed(
                "server closed the connection after SSLRequest".into(),
            ));
        }
    }
    match reader.buf[0] {
        b'S' if reader.buf.len() == 1 => {
            reader.buf.clear();
            conn.connect_tls(tls, reader)
                .await
                .map_err(|e| failed(format!("TLS handshake ({:?}): {e}", tls.mode)))
        }
        // Bytes after the `S` would pass as if they had come encrypted (CVE-2021-23222).
        b'S' => Err(failed(
            "server sent unencrypted data after its SSL response".into(),
        )),
        b'N' if tls.mode == NodeTls::Prefer => {
            reader.buf.clear();
            Ok(())
        }
        b'N' => Err(failed(format!(
            "server does not support TLS, and nodes.tls = {:?} requires it",
            tls.mode
        ))),
        _ => Err(failed("unexpected answer to SSLRequest".into())),
    }
}

async fn login(
    conn: &mut Conn,
    reader: &mut FrameReader,
    target: &ServerTarget,
    addr: SocketAddr,
) -> Result<(BackendKey, Vec<(String, String)>), ProxyError> {
    if let Some(tls) = &target.tls {
        negotiate_tls(conn, reader, tls).await?;
    }
    frontend::startup_message(
        [
            ("user", target.user.as_str()),
            ("database", target.dbname.as_str()),
        ]
        .into_iter()
        .chain(target.startup.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        conn.queue(),
    )
    .map_err(encode_err)?;
    flush(conn).await?;
    let mut scram: Option<ScramSha256> = None;
    let mut params = Vec::new();
    let mut key = None;
    loop {
        match read_msg(conn, reader).await? {
            backend::Message::AuthenticationOk => {}
            backend::Message::AuthenticationCleartextPassword => {
                frontend::password_message(need_password(target)?, conn.queue())
                    .map_err(encode_err)?;
                flush(conn).await?;
            }
            backend::Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    target.user.as_bytes(),
                    need_password(target)?,
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), conn.queue()).map_err(encode_err)?;
                flush(conn).await?;
            }
            backend::Message::AuthenticationSasl(body) => {
                let mut mechs = body.mechanisms();
                let mut ok = false;
                let mut plus = false;
                while let Ok(Some(m)) = fallible_iterator::FallibleIterator::next(&mut mechs) {
                    ok |= m == sasl::SCRAM_SHA_256;
                    plus |= m == sasl::SCRAM_SHA_256_PLUS;
                }
                if !ok && !plus {
                    return Err(ProxyError::error(
                        SqlState::INVALID_AUTHORIZATION,
                        Blame::Server,
                        "server offers no SASL mechanism the proxy supports",
                    ));
                }
                // Over TLS, bind the proof to the server's certificate when the server offers
                // it; otherwise `n` (which PostgreSQL accepts).
                let end_point = conn
                    .tls()
                    .and_then(|t| t.peer_certificates())
                    .and_then(|c| c.first())
                    .and_then(crate::net::tls::end_point_hash)
                    .filter(|_| plus);
                let (mech, binding) = match end_point {
                    Some(h) => (
                        sasl::SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(h),
                    ),
                    None if ok => (sasl::SCRAM_SHA_256, ChannelBinding::unsupported()),
                    None => {
                        return Err(ProxyError::error(
                            SqlState::INVALID_AUTHORIZATION,
                            Blame::Server,
                            "server offers only SCRAM-SHA-256-PLUS, and the connection has no channel binding",
                        ))
                    }
                };
                let s = ScramSha256::new(need_password(target)?, binding);
                frontend::sasl_initial_response(mech, s.message(), conn.queue())
                    .map_err(encode_err)?;
                scram = Some(s);
                flush(conn).await?;
            }
            backend::Message::AuthenticationSaslContinue(body) => {
                let s = scram.as_mut().ok_or_else(|| unexpected("SASLContinue"))?;
                s.update(body.data()).map_err(|e| {
                    ProxyError::error(
                        SqlState::INVALID_AUTHORIZATION,
                        Blame::Server,
                        e.to_string(),
                    )
                })?;
                frontend::sasl_response(s.message(), conn.queue()).map_err(encode_err)?;
                flush(conn).await?;
            }
            backend::Message::AuthenticationSaslFinal(body) => {
                let mut s = scram.take().ok_or_else(|| unexpected("SASLFinal"))?;
                s.finish(body.data()).map_err(|e| {
                    ProxyError::error(
                        SqlState::INVALID_AUTHORIZATION,
                        Blame::Server,
                        format!("server's SCRAM signature did not verify: {e}"),
                    )
                })?;
            }
            backend::Message::ParameterStatus(p) => {
                if let (Ok(n), Ok(v)) = (p.name(), p.value()) {
                    params.push((n.to_string(), v.to_string()));
                }
            }
            backend::Message::BackendKeyData(k) => {
                key = Some(BackendKey {
                    addr,
                    pid: BackendPid(k.process_id()),
                    secret: k.secret_key(),
                    fd: -1,
                });
            }
            backend::Message::NoticeResponse(_) => {}
            backend::Message::ReadyForQuery(_) => {
                let key = key.ok_or_else(|| unexpected("ReadyForQuery before BackendKeyData"))?;
                return Ok((key, params));
            }
            backend::Message::ErrorResponse(body) => {
                let mut code = String::new();
                let mut message = String::new();
                let mut fields = body.fields();
                while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
                    match f.type_() {
                        b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                        b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                        _ => {}
                    }
                }
                // The server's own SQLSTATE, whatever it is (42501 for a revoked CONNECT
                // privilege, 3D000, 28P01, 53300, …): the client must be able to tell them apart.
                let code = SqlState::from_server(&code, SqlState::CONNECTION_EXCEPTION);
                return Err(ProxyError::error(code, Blame::Server, message));
            }
            _ => return Err(unexpected("message during login")),
        }
    }
}

fn unexpected(what: &str) -> ProxyError {
    ProxyError::error(
        SqlState::PROTOCOL_VIOLATION,
        Blame::Server,
        format!("unexpected {what} from server"),
    )
}
