//! A client's first bytes: SSL/GSS negotiation, CancelRequest, the startup packet, and
//! authentication against the userlist.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use glommio::net::TcpStream;
use helios_config::hba::HbaDecision;
use helios_config::{AuthMethod, Secret, TlsMode};

use crate::auth::{
    md5_check, md5_stored, AuthFailure, ChannelBinding, ScramKeys, ScramServer, SCRAM_ITERATIONS,
};
use crate::backend::pool::Pool;
use crate::error::{Blame, ProxyError, SqlState};
use crate::ids::ClientPid;
use crate::net::codec::{
    parse_startup_params, put_auth, put_msg, read_cstr, read_i32, FrameReader, CANCEL_REQUEST,
    GSSENC_REQUEST, PROTOCOL_3_0, SSL_REQUEST,
};
use crate::net::conn::Conn;
use crate::net::tls::ALPN_POSTGRESQL;
use crate::pipeline::plugins::PluginStage;
use crate::shard::{RuntimeConfig, Shard, ShardMsg};
use crate::stats::Counters;

/// A client that completed startup and authentication.
pub struct Login {
    pub user: String,
    pub database: String,
    /// Startup parameters other than user/database, `options -c` settings included.
    pub params: Vec<(String, String)>,
}

/// What the first packets asked for.
pub enum Startup {
    Login(Login),
    /// A CancelRequest (handled) or a client that went away: close without a word.
    Done,
}

fn io_gone(_: std::io::Error) -> Option<ProxyError> {
    None
}

/// Reads until `reader` yields a startup packet; `Ok(None)` on EOF.
async fn read_startup(
    client: &mut Conn,
    reader: &mut FrameReader,
) -> Result<Option<bytes::Bytes>, Option<ProxyError>> {
    loop {
        if let Some(p) = reader.next_startup().map_err(|e| Some(e.into()))? {
            return Ok(Some(p));
        }
        if client.read_into(reader).await.map_err(io_gone)? == 0 {
            return Ok(None);
        }
    }
}

/// True if the client opened with a TLS record (direct TLS, PostgreSQL 17's
/// `sslnegotiation=direct`) rather than a startup packet, whose first byte is always 0 (its
/// length is below 16 MiB). Reads until one byte is there.
async fn direct_tls(
    client: &mut Conn,
    reader: &mut FrameReader,
) -> Result<bool, Option<ProxyError>> {
    while reader.buf.is_empty() {
        if client.read_into(reader).await.map_err(io_gone)? == 0 {
            return Err(None);
        }
    }
    Ok(reader.buf[0] == TLS_HANDSHAKE_RECORD)
}

/// A TLS record's content type for handshake messages: the first byte of a ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The server side of the TLS handshake. A failure closes the connection without a word (there
/// is no channel to send a PostgreSQL error on); it is logged.
async fn handshake(
    client: &mut Conn,
    reader: &mut FrameReader,
    config: std::sync::Arc<rustls::ServerConfig>,
) -> Result<(), Option<ProxyError>> {
    client.accept_tls(config, reader).await.map_err(|e| {
        log::info!("client {:?}: TLS handshake failed: {e}", client.peer_addr());
        None
    })
}

/// Reads the next typed message of the authentication exchange, which must be `p`.
async fn read_password_msg(
    client: &mut Conn,
    reader: &mut FrameReader,
) -> Result<bytes::Bytes, Option<ProxyError>> {
    loop {
        if let Some(f) = reader.next_frame().map_err(|e| Some(e.into()))? {
            if f.tag != b'p' {
                return Err(Some(ProxyError::protocol(format!(
                    "expected a password message, got message type {:?}",
                    f.tag as char
                ))));
            }
            return Ok(f.bytes);
        }
        if client.read_into(reader).await.map_err(io_gone)? == 0 {
            return Err(None);
        }
    }
}

/// Startup and authentication. `Err(None)`: the client went away; `Err(Some(e))`: send `e`.
pub async fn startup(
    shard: &Rc<Shard>,
    client: &mut Conn,
    reader: &mut FrameReader,
    over_limit: bool,
) -> Result<Startup, Option<ProxyError>> {
    let cfg = shard.config();
    let tls = &cfg.client_tls;
    let packet = loop {
        if tls.server.is_some() && !client.is_tls() && direct_tls(client, reader).await? {
            let config = tls.server.clone().expect("checked");
            handshake(client, reader, config).await?;
            if client.tls().and_then(|t| t.alpn_protocol()) != Some(ALPN_POSTGRESQL) {
                return Err(Some(ProxyError::protocol(
                    "received direct TLS connection request without ALPN protocol negotiation extension",
                )));
            }
            continue;
        }
        let Some(p) = read_startup(client, reader).await? else {
            return Ok(Startup::Done);
        };
        let mut body = &p[4..];
        let code = read_i32(&mut body).unwrap_or(0);
        match code {
            SSL_REQUEST if p.len() == 8 && !client.is_tls() => match &tls.server {
                Some(config) => {
                    if !reader.buf.is_empty() {
                        // Bytes sent before the handshake would pass as if they had come
                        // encrypted (CVE-2021-23214).
                        return Err(Some(ProxyError::protocol(
                            "received unencrypted data after SSL request",
                        )));
                    }
                    client.queue().extend_from_slice(b"S");
                    client.flush_all().await.map_err(io_gone)?;
                    handshake(client, reader, config.clone()).await?;
                }
                None => {
                    client.queue().extend_from_slice(b"N");
                    client.flush().await.map_err(io_gone)?;
                }
            },
            GSSENC_REQUEST if p.len() == 8 && !client.is_tls() => {
                // GSSAPI encryption is not offered: the client goes on to SSLRequest or plain.
                client.queue().extend_from_slice(b"N");
                client.flush().await.map_err(io_gone)?;
            }
            CANCEL_REQUEST if p.len() == 16 => {
                let pid = ClientPid(read_i32(&mut body).unwrap_or(0));
                let secret = read_i32(&mut body).unwrap_or(0);
                let owner = Shard::owner_of(pid);
                if owner == shard.id {
                    shard.cancel_local(pid, secret);
                } else if !shard.shared.send(owner, ShardMsg::Cancel { pid, secret }) {
                    log::warn!("cancel for shard {owner} dropped: no such shard or inbox full");
                }
                return Ok(Startup::Done);
            }
            v if v >> 16 == 3 => break (p, v),
            _ => {
                return Err(Some(ProxyError::protocol(format!(
                    "unsupported frontend protocol {}.{}: server supports 3.0",
                    code >> 16,
                    code & 0xffff
                ))))
            }
        }
    };
    let (packet, version) = packet;
    if tls.mode == TlsMode::Require && !client.is_tls() {
        return Err(Some(ProxyError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            Blame::Client,
            "TLS is required: connect with sslmode=require (or verify-ca, verify-full)",
        )));
    }
    let params = parse_startup_params(&packet[8..])
        .ok_or_else(|| Some(ProxyError::protocol("malformed startup packet")))?;
    if version != PROTOCOL_3_0 {
        // A newer 3.x minor: say we speak 3.0 (NegotiateProtocolVersion), as PostgreSQL does.
        let unknown: Vec<&String> = params
            .iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("_pq_."))
            .collect();
        put_msg(client.queue(), b'v', |b| {
            // Newest minor version we support: 0.
            b.extend_from_slice(&0i32.to_be_bytes());
            b.extend_from_slice(&(unknown.len() as i32).to_be_bytes());
            for k in &unknown {
                crate::net::codec::put_cstr(b, k.as_bytes());
            }
        });
    }
    let mut user = None;
    let mut database = None;
    let mut rest = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" => user = Some(v),
            "database" => database = Some(v),
            "replication" if v != "false" && v != "0" && v != "off" => {
                return Err(Some(ProxyError::fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    Blame::Client,
                    "replication connections are not supported through heliosproxy",
                )))
            }
            "options" => rest.extend(parse_options(&v)),
            _ if k.starts_with("_pq_.") => {}
            _ => rest.push((k, v)),
        }
    }
    let user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
        Some(ProxyError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            Blame::Client,
            "no PostgreSQL user name specified in startup packet",
        ))
    })?;
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if over_limit {
        return Err(Some(ProxyError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            Blame::Client,
            "sorry, too many clients already",
        )));
    }
    let method = access(&cfg, client, &user, &database)?;
    let watch = cfg.config.anomaly.enabled;
    let address = if watch {
        client
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    if watch {
        let sig = shard.signal.borrow();
        let now = sig.seconds(std::time::Instant::now());
        if sig.login_blocked(&cfg.config.anomaly, &address, now) {
            log::info!("login of {user:?} from {address} refused: credential stuffing");
            return Err(Some(ProxyError::fatal(
                SqlState("42501"),
                Blame::Client,
                "heliosproxy refused the login: anomaly detection (credential_stuffing)",
            )));
        }
    }
    let auth = authenticate(shard, client, reader, &user, method).await;
    if watch {
        // The real outcome of the password check feeds credential stuffing.
        let mut sig = shard.signal.borrow_mut();
        match &auth {
            Ok(()) => sig.login_succeeded(&user, &address),
            Err(Some(e)) if e.code == SqlState::INVALID_PASSWORD => {
                let now = sig.seconds(std::time::Instant::now());
                let view = crate::signal::SessionView {
                    database: database.clone(),
                    user: user.clone(),
                    tenant: user.clone(),
                    address: address.clone(),
                    statements: 0,
                    uses_catalog: false,
                };
                sig.login_failed(&cfg.config.anomaly, &view, now);
            }
            _ => {}
        }
    }
    auth?;
    if let Some(db) = cfg.config.databases.get(&database) {
        context_startup_allowed(db, &database, &rest)?;
    }
    Ok(Startup::Login(Login {
        user,
        database,
        params: rest,
    }))
}

/// An access context that fixes a setting refuses a login whose startup parameters (or
/// `options=-c …`) would set it: FATAL 42501 naming the setting.
fn context_startup_allowed(
    db: &helios_config::DatabaseConfig,
    alias: &str,
    params: &[(String, String)],
) -> Result<(), Option<ProxyError>> {
    if db.role.is_none() && !db.enforces_defaults() {
        return Ok(());
    }
    let fixed = db.fixed_settings();
    match params
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .find(|k| fixed.contains(k))
    {
        Some(k) => Err(Some(ProxyError::fatal(
            SqlState("42501"),
            Blame::Client,
            format!(
                "permission denied to set \"{k}\" at login: it is fixed by access context \"{alias}\" (heliosproxy)"
            ),
        ))),
        None => Ok(()),
    }
}

/// `-c name=value` and `--name=value` from the `options` startup parameter. Public for the
/// fuzz target `startup_packet` (fuzz/).
pub fn parse_options(opts: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = opts.split_whitespace();
    while let Some(w) = words.next() {
        let kv = if w == "-c" {
            words.next()
        } else {
            w.strip_prefix("-c").or_else(|| w.strip_prefix("--"))
        };
        if let Some((k, v)) = kv.and_then(|kv| kv.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

fn password_failed(user: &str) -> Option<ProxyError> {
    Some(ProxyError::fatal(
        SqlState::INVALID_PASSWORD,
        Blame::Client,
        format!("password authentication failed for user \"{user}\""),
    ))
}

/// The authentication method for this connection: `auth.method`, or what the first matching
/// `auth.hba` line says (a `reject` line, or no match, refuses with PostgreSQL's wording).
fn access(
    cfg: &RuntimeConfig,
    client: &Conn,
    user: &str,
    database: &str,
) -> Result<AuthMethod, Option<ProxyError>> {
    let Some(hba) = &cfg.hba else {
        return Ok(cfg.auth_method());
    };
    let ip = client
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let tls = client.is_tls();
    let enc = if tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let refuse = |message: String| {
        Some(ProxyError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            Blame::Client,
            message,
        ))
    };
    match hba.decide(ip, tls, user, database) {
        HbaDecision::Allow(m, _) => Ok(m),
        HbaDecision::Reject(line) => {
            log::info!("auth.hba line {line} rejects {ip} for user {user:?}, database {database:?}");
            Err(refuse(format!(
                "pg_hba.conf rejects connection for host \"{ip}\", user \"{user}\", database \"{database}\", {enc}"
            )))
        }
        HbaDecision::NoMatch => Err(refuse(format!(
            "no pg_hba.conf entry for host \"{ip}\", user \"{user}\", database \"{database}\", {enc}"
        ))),
    }
}

async fn authenticate(
    shard: &Rc<Shard>,
    client: &mut Conn,
    reader: &mut FrameReader,
    user: &str,
    method: AuthMethod,
) -> Result<(), Option<ProxyError>> {
    let cfg = shard.config();
    let entry = cfg.users.get(user).map(|u| u.secret.clone());
    match method {
        AuthMethod::Trust => {}
        AuthMethod::Cert => {
            // rustls verified the certificate against tls.client_ca during the handshake.
            let names = client
                .tls()
                .map(crate::net::tls::peer_names)
                .unwrap_or_default();
            if names.is_empty() {
                return Err(Some(ProxyError::fatal(
                    SqlState::INVALID_AUTHORIZATION,
                    Blame::Client,
                    "connection requires a valid client certificate",
                )));
            }
            if !names.iter().any(|n| n == user) {
                log::info!(
                    "certificate authentication failed: user {user:?} is not the certificate's {names:?}"
                );
                return Err(Some(ProxyError::fatal(
                    SqlState::INVALID_AUTHORIZATION,
                    Blame::Client,
                    format!("certificate authentication failed for user \"{user}\""),
                )));
            }
        }
        AuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            put_auth(client.queue(), 5, &salt);
            client.flush().await.map_err(io_gone)?;
            let msg = read_password_msg(client, reader).await?;
            let mut body = &msg[5..];
            let response = read_cstr(&mut body).unwrap_or_default();
            let stored = match &entry {
                Some(Secret::Md5(h)) => Some(h.clone()),
                Some(Secret::Plain(p)) => Some(md5_stored(user, p)),
                Some(Secret::Scram { .. }) => {
                    log::warn!("user {user}: md5 authentication is impossible with a SCRAM verifier in the userlist");
                    None
                }
                None => None,
            };
            if !stored.is_some_and(|s| md5_check(&s, &salt, response)) {
                log::info!("md5 authentication failed for user {user}");
                return Err(password_failed(user));
            }
        }
        AuthMethod::ScramSha256 => {
            let keys = match &entry {
                Some(Secret::Plain(p)) => Some(cached_keys(shard, user, p)),
                Some(s @ Secret::Scram { .. }) => ScramKeys::from_secret(s, Vec::new),
                Some(Secret::Md5(_)) => {
                    log::warn!("user {user}: SCRAM authentication is impossible with an md5 hash in the userlist");
                    None
                }
                None => None,
            };
            // An unknown user still goes through the exchange (with keys nobody can match), so
            // the reply does not reveal which users exist.
            let keys = keys.unwrap_or_else(|| ScramKeys {
                iterations: SCRAM_ITERATIONS,
                salt: rand::random::<[u8; 16]>().to_vec(),
                stored_key: rand::random(),
                server_key: rand::random(),
            });
            // On TLS, SCRAM-SHA-256-PLUS too: the client binds its proof to the proxy's
            // certificate, so a man in the middle with another certificate cannot relay it.
            let end_point = if client.is_tls() {
                cfg.client_tls.end_point.as_deref()
            } else {
                None
            };
            put_auth(
                client.queue(),
                10,
                if end_point.is_some() {
                    b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
                } else {
                    b"SCRAM-SHA-256\0\0"
                },
            );
            client.flush().await.map_err(io_gone)?;
            let msg = read_password_msg(client, reader).await?;
            let mut body = &msg[5..];
            let mech = read_cstr(&mut body).unwrap_or_default();
            let binding = match (mech, end_point) {
                (b"SCRAM-SHA-256", None) => ChannelBinding::Unavailable,
                (b"SCRAM-SHA-256", Some(_)) => ChannelBinding::Declined,
                (b"SCRAM-SHA-256-PLUS", Some(data)) => ChannelBinding::Plus(data),
                _ => {
                    return Err(Some(ProxyError::protocol(
                        "client selected an invalid SASL authentication mechanism",
                    )))
                }
            };
            let len = read_i32(&mut body).unwrap_or(-1);
            if len < 0 || len as usize != body.len() {
                return Err(Some(ProxyError::protocol("malformed SASLInitialResponse")));
            }
            let nonce: [u8; 18] = rand::random();
            let (server, first) = match ScramServer::start(keys, body, &nonce, binding) {
                Ok(x) => x,
                Err(e) => return Err(scram_failure(user, e)),
            };
            put_auth(client.queue(), 11, first.as_bytes());
            client.flush().await.map_err(io_gone)?;
            let msg = read_password_msg(client, reader).await?;
            let final_msg = match server.finish(&msg[5..]) {
                Ok(f) => f,
                Err(e) => return Err(scram_failure(user, e)),
            };
            if entry.is_none() {
                return Err(password_failed(user));
            }
            put_auth(client.queue(), 12, final_msg.as_bytes());
        }
    }
    put_auth(client.queue(), 0, b"");
    Ok(())
}

fn scram_failure(user: &str, e: AuthFailure) -> Option<ProxyError> {
    match e {
        AuthFailure::WrongPassword => {
            log::info!("SCRAM authentication failed for user {user}");
            password_failed(user)
        }
        AuthFailure::Malformed(what) => Some(ProxyError::protocol(format!(
            "malformed SCRAM message ({what})"
        ))),
    }
}

/// The SCRAM verifier for a plain-text password, derived once per (user, password) per shard.
fn cached_keys(shard: &Shard, user: &str, password: &str) -> ScramKeys {
    if let Some((pw, keys)) = shard.scram_cache.borrow().get(user) {
        if pw == password {
            return keys.clone();
        }
    }
    let keys = ScramKeys::from_password(
        password,
        rand::random::<[u8; 16]>().to_vec(),
        SCRAM_ITERATIONS,
    );
    shard
        .scram_cache
        .borrow_mut()
        .insert(user.to_string(), (password.to_string(), keys.clone()));
    keys
}

/// Reads a client's startup, authenticates it and finds its pool; refusals are sent and the
/// connection closed here. The console database is handed back as [`Entry::Console`].
pub async fn admit(shard: &Rc<Shard>, stream: TcpStream) -> Option<Entry> {
    let cfg = shard.config();
    let limits = cfg.config.limits.clone();
    let mut client = Conn::new(stream);
    let ring = shard.ring.borrow().clone();
    if let Some(ring) = ring {
        client = match client.into_ring(&ring) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("client connection not taken by the ring: {e}");
                return None;
            }
        };
    }
    let mut reader = FrameReader::new(limits.max_message_size_bytes);
    let over_limit = shard
        .shared
        .clients
        .load(std::sync::atomic::Ordering::Relaxed)
        > limits.max_client_connections;
    let started =
        glommio::timer::timeout(Duration::from_millis(limits.startup_timeout_ms), async {
            Ok(startup(shard, &mut client, &mut reader, over_limit).await)
        })
        .await;
    let login = match started {
        Ok(Ok(Startup::Login(l))) => l,
        Ok(Ok(Startup::Done)) | Ok(Err(None)) => return None,
        Ok(Err(Some(e))) => {
            log::debug!("client {:?}: {e}", client.peer_addr());
            refuse(shard, client, &e).await;
            return None;
        }
        Err(_) => {
            log::info!(
                "client {:?}: startup/authentication timed out",
                client.peer_addr()
            );
            let e = ProxyError::fatal(
                SqlState::CONNECTION_FAILURE,
                Blame::Client,
                "canceling authentication due to timeout",
            );
            refuse(shard, client, &e).await;
            return None;
        }
    };
    let mut hooks = PluginStage::new(
        &login.user,
        &login.database,
        login
            .params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.as_str())
            .unwrap_or(""),
        client.peer_addr().map(|a| a.ip()),
    );
    {
        if let Err(message) = hooks.authenticate(shard) {
            let e = ProxyError::fatal(SqlState::INVALID_AUTHORIZATION, Blame::Client, message);
            refuse(shard, client, &e).await;
            return None;
        }
    }
    if login.database == cfg.config.admin.console_database {
        if !cfg.config.auth.admin_users.contains(&login.user) {
            let e = ProxyError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                Blame::Client,
                format!(
                    "user \"{}\" is not allowed to connect to the admin console (auth.admin_users)",
                    login.user
                ),
            );
            refuse(shard, client, &e).await;
            return None;
        }
        return Some(Entry::Console(client, reader));
    }
    let Some(pool) = shard.pool(&login.database, &login.user) else {
        let e = ProxyError::fatal(
            SqlState::INVALID_CATALOG_NAME,
            Blame::Client,
            format!("database \"{}\" does not exist", login.database),
        );
        refuse(shard, client, &e).await;
        return None;
    };
    Some(Entry::Session(Admitted {
        client,
        reader,
        login,
        hooks,
        pool,
    }))
}

/// A logged-in client, its pool and its plugin hooks: ready for a session.
pub struct Admitted {
    pub client: Conn,
    pub reader: FrameReader,
    pub login: Login,
    pub hooks: Box<PluginStage>,
    pub pool: Rc<Pool>,
}

/// Where an admitted client goes.
pub enum Entry {
    Session(Admitted),
    /// The admin console database (`admin.console_database`), for an `auth.admin_users` user.
    Console(Conn, FrameReader),
}

/// Refuses a client at login: the error, counted, then the connection closed.
pub async fn refuse(shard: &Shard, mut client: Conn, e: &ProxyError) {
    Counters::add(&shard.stats.counters.connections_refused, 1);
    queue_error(&mut client, e);
    client.close().await;
}

/// Writes the error to the client (best effort).
pub fn queue_error(client: &mut Conn, e: &ProxyError) {
    let mut b = BytesMut::new();
    crate::net::codec::put_proxy_error(&mut b, e);
    client.queue().extend_from_slice(&b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_settings() {
        assert_eq!(
            parse_options("-c search_path=a -cstatement_timeout=5s --lock-timeout=1s"),
            vec![
                ("search_path".to_string(), "a".to_string()),
                ("statement_timeout".to_string(), "5s".to_string()),
                ("lock_timeout".to_string(), "1s".to_string()),
            ]
        );
    }
}
