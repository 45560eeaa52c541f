//! A minimal, blocking PostgreSQL client: exactly the messages pgbench (libpq) sends, nothing else.
//!
//! Why our own client instead of `postgres`/`tokio-postgres`: the tool exists to quote proxy
//! overhead in microseconds, so the instrument must (1) put the same bytes on the wire as pgbench
//! does — one round trip per statement in extended mode (Parse/Bind/Describe/Execute/Sync with an
//! unnamed statement and untyped text parameters), where `tokio-postgres`'s `query` costs a
//! prepare round trip first — and (2) add as little and as steady a cost of its own as possible:
//! one OS thread per client blocking in `read(2)`, no executor, no wake-ups, one reusable read and
//! write buffer per connection. Message *encoding* reuses `postgres-protocol` (also what SCRAM
//! comes from); decoding the handful of backend messages we care about is done here.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;

use crate::url::ConnParams;
use crate::Error;

/// Largest backend message we accept; a bigger length prefix means a desynchronized stream.
const MAX_MESSAGE_LEN: usize = 256 << 20;

/// A five-character SQLSTATE, kept inline so counting errors never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SqlState(pub [u8; 5]);

impl SqlState {
    fn from_bytes(b: &[u8]) -> SqlState {
        let mut s = *b"XX000";
        if b.len() == 5 {
            s.copy_from_slice(b);
        }
        SqlState(s)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a statement ended, when the connection itself is still fine.
pub type StmtResult = Result<(), SqlState>;

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One backend connection.
pub struct Conn {
    stream: Stream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: BytesMut,
    /// Transaction status from the last ReadyForQuery: `I`dle, in `T`ransaction, `E`rror.
    pub txn_status: u8,
    /// Which prepared statements (by the caller's index) exist on this connection.
    prepared: Vec<bool>,
}

impl Conn {
    /// Connects, authenticates (trust, cleartext, md5, SCRAM-SHA-256) and waits for the first
    /// ReadyForQuery. A server error during start-up comes back as [`Error::Server`] with its
    /// SQLSTATE (e.g. 53300 too many connections, 28P01 bad password).
    pub fn connect(p: &ConnParams) -> Result<Conn, Error> {
        let stream = if p.host.starts_with('/') {
            Stream::Unix(UnixStream::connect(format!(
                "{}/.s.PGSQL.{}",
                p.host, p.port
            ))?)
        } else {
            let s = TcpStream::connect((p.host.as_str(), p.port))?;
            // Every statement is one small write followed by a wait: Nagle would add delay.
            s.set_nodelay(true)?;
            Stream::Tcp(s)
        };
        let mut c = Conn {
            stream,
            rbuf: vec![0; 16 * 1024],
            rstart: 0,
            rend: 0,
            wbuf: BytesMut::with_capacity(4096),
            txn_status: b'I',
            prepared: Vec::new(),
        };
        frontend::startup_message(
            [
                ("user", p.user.as_str()),
                ("database", p.dbname.as_str()),
                ("application_name", p.application_name.as_str()),
            ],
            &mut c.wbuf,
        )?;
        c.send()?;
        c.authenticate(p)?;
        loop {
            let (tag, body) = c.read_msg()?;
            match tag {
                b'Z' => {
                    c.txn_status = body.first().copied().unwrap_or(b'I');
                    return Ok(c);
                }
                b'E' => {
                    let (code, msg) = error_fields(body);
                    return Err(Error::Server { code, message: msg });
                }
                _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
            }
        }
    }

    fn authenticate(&mut self, p: &ConnParams) -> Result<(), Error> {
        let password = || {
            p.password.clone().ok_or_else(|| {
                Error::Protocol("server asks for a password and none was given".into())
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_msg()?;
            match tag {
                b'E' => {
                    let (code, message) = error_fields(body);
                    return Err(Error::Server { code, message });
                }
                b'R' if body.len() >= 4 => {
                    let kind = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = body[4..].to_vec();
                    match kind {
                        0 => return Ok(()),
                        3 => {
                            let pw = password()?;
                            frontend::password_message(pw.as_bytes(), &mut self.wbuf)?;
                        }
                        5 if data.len() >= 4 => {
                            let pw = password()?;
                            let salt = [data[0], data[1], data[2], data[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                p.user.as_bytes(),
                                pw.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                        }
                        10 => {
                            let offered = data
                                .split(|&b| b == 0)
                                .any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(Error::Protocol(
                                    "server offers no SASL mechanism we support (SCRAM-SHA-256)"
                                        .into(),
                                ));
                            }
                            let pw = password()?;
                            let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                s.message(),
                                &mut self.wbuf,
                            )?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                Error::Protocol("SASL continue before SASL start".into())
                            })?;
                            s.update(&data)?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                Error::Protocol("SASL final before SASL start".into())
                            })?;
                            s.finish(&data)?;
                            continue;
                        }
                        other => {
                            return Err(Error::Protocol(format!(
                                "unsupported authentication request {other}"
                            )))
                        }
                    }
                    self.send()?;
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected message {:?} during authentication",
                        other as char
                    )))
                }
            }
        }
    }

    /// Simple protocol: one Query message.
    pub fn simple(&mut self, sql: &str) -> Result<StmtResult, Error> {
        frontend::query(sql, &mut self.wbuf)?;
        self.send()?;
        self.read_until_ready()
    }

    /// Extended protocol with an unnamed statement, as libpq's `PQsendQueryParams` (pgbench
    /// `-M extended`): Parse, Bind, Describe portal, Execute, Sync in one write.
    pub fn extended(&mut self, sql: &str, params: &[&str]) -> Result<StmtResult, Error> {
        frontend::parse("", sql, std::iter::empty(), &mut self.wbuf)?;
        self.bind_execute("", params)?;
        self.send()?;
        self.read_until_ready()
    }

    /// Prepared protocol, as pgbench `-M prepared`: the statement is parsed once per connection
    /// under a name (Parse + Sync), then each execution is Bind, Describe, Execute, Sync.
    pub fn prepared(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&str],
    ) -> Result<StmtResult, Error> {
        let name = format!("P_{index}");
        if !self.prepared.get(index).copied().unwrap_or(false) {
            frontend::parse(&name, sql, std::iter::empty(), &mut self.wbuf)?;
            frontend::sync(&mut self.wbuf);
            self.send()?;
            if let Err(code) = self.read_until_ready()? {
                return Ok(Err(code));
            }
            if self.prepared.len() <= index {
                self.prepared.resize(index + 1, false);
            }
            self.prepared[index] = true;
        }
        self.bind_execute(&name, params)?;
        self.send()?;
        self.read_until_ready()
    }

    fn bind_execute(&mut self, stmt: &str, params: &[&str]) -> Result<(), Error> {
        frontend::bind(
            "",
            stmt,
            std::iter::empty(), // all parameters in text format, like pgbench
            params.iter(),
            |v, buf| {
                buf.put_slice(v.as_bytes());
                Ok(IsNull::No)
            },
            std::iter::empty(), // text results
            &mut self.wbuf,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => Error::Protocol(e.to_string()),
            frontend::BindError::Serialization(e) => Error::Io(e),
        })?;
        frontend::describe(b'P', "", &mut self.wbuf)?;
        frontend::execute("", 0, &mut self.wbuf)?;
        frontend::sync(&mut self.wbuf);
        Ok(())
    }

    /// Runs `sql` (simple protocol) and returns the first column of the first row as an
    /// integer; `Ok(None)` if the statement fails or returns nothing (e.g. no such table).
    pub fn query_one_int(&mut self, sql: &str) -> Result<Option<i64>, Error> {
        frontend::query(sql, &mut self.wbuf)?;
        self.send()?;
        let mut value = None;
        loop {
            let (tag, body) = self.read_msg()?;
            match tag {
                // DataRow: i16 column count, then i32 length + bytes per column.
                b'D' if value.is_none() && body.len() >= 6 => {
                    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    if len >= 0 {
                        let text = body.get(6..6 + len as usize).unwrap_or(&[]);
                        value = std::str::from_utf8(text).ok().and_then(|t| t.parse().ok());
                    }
                }
                b'E' => value = None,
                b'Z' => {
                    self.txn_status = body.first().copied().unwrap_or(b'I');
                    return Ok(value);
                }
                _ => {}
            }
        }
    }

    /// Sends Terminate and closes; errors are irrelevant at this point.
    pub fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.send();
    }

    fn send(&mut self) -> Result<(), Error> {
        self.stream.write_all(&self.wbuf)?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads to ReadyForQuery; the first ErrorResponse's SQLSTATE is the statement's outcome.
    fn read_until_ready(&mut self) -> Result<StmtResult, Error> {
        let mut outcome = Ok(());
        loop {
            let (tag, body) = self.read_msg()?;
            match tag {
                b'Z' => {
                    self.txn_status = body.first().copied().unwrap_or(b'I');
                    return Ok(outcome);
                }
                b'E' if outcome.is_ok() => outcome = Err(error_fields(body).0),
                // A COPY would never end by itself; a benchmark script has no business there.
                b'G' | b'H' | b'W' => {
                    return Err(Error::Protocol("COPY is not supported in scripts".into()))
                }
                _ => {}
            }
        }
    }

    /// The next backend message: its tag and body (valid until the next read).
    fn read_msg(&mut self) -> Result<(u8, &[u8]), Error> {
        self.fill(5)?;
        let h = &self.rbuf[self.rstart..self.rstart + 5];
        let tag = h[0];
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if !(4..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(Error::Protocol(format!(
                "bad length {len} for message {:?}",
                tag as char
            )));
        }
        self.fill(1 + len)?;
        let body = self.rstart + 5..self.rstart + 1 + len;
        self.rstart += 1 + len;
        Ok((tag, &self.rbuf[body]))
    }

    /// Makes sure `n` bytes are buffered from `rstart` on.
    fn fill(&mut self, n: usize) -> Result<(), Error> {
        if self.rend - self.rstart >= n {
            return Ok(());
        }
        if self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rbuf.len() < n {
            self.rbuf.resize(n, 0);
        }
        while self.rend < n {
            let got = self.stream.read(&mut self.rbuf[self.rend..])?;
            if got == 0 {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
            self.rend += got;
        }
        Ok(())
    }
}

/// SQLSTATE and message of an ErrorResponse body (a list of `type byte, cstring`).
fn error_fields(body: &[u8]) -> (SqlState, String) {
    let mut code = SqlState(*b"XX000");
    let mut message = String::new();
    let mut rest = body;
    while let Some((&ty, tail)) = rest.split_first() {
        if ty == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = &tail[..end];
        match ty {
            b'C' => code = SqlState::from_bytes(value),
            b'M' => message = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_parse() {
        let body = b"SERROR\0C22012\0Mdivision by zero\0\0";
        let (c, m) = error_fields(body);
        assert_eq!(c.as_str(), "22012");
        assert_eq!(m, "division by zero");
        // Truncated or odd bodies must not panic.
        assert_eq!(error_fields(b"C22").0.as_str(), "XX000");
        assert_eq!(error_fields(b"").0.as_str(), "XX000");
    }
}
