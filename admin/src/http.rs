//! A deliberately small HTTP/1.1 server: one request per connection, served to completion on the
//! admin thread, with every size and wait bounded.
//!
//! Why not tiny_http: tiny_http 0.12 (the latest release) drains an unread request body on drop
//! with `vec![0; declared Content-Length]`, before any handler can refuse it, so one
//! unauthenticated request declaring a huge body makes the process allocate that much (tiny-http
//! issue #252, PR #290, unreleased); it also starts a thread per connection. The admin API needs
//! none of HTTP's harder parts (keep-alive, chunked bodies, pipelining), so serving it here keeps
//! the admin to exactly one thread whose memory use is bounded by the config.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long one connection may take to send its request: a slow client holds the admin thread
/// at most this long.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path and optional `?query`.
    pub target: String,
    /// Header names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (give it lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response; always sent with `Content-Length` and `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// Why a request could not be read; each maps to the error response sent before closing.
#[derive(Debug)]
pub enum ReadError {
    /// The peer went away or timed out: nothing is sent.
    Io(io::Error),
    /// A response to send (400, 411, 413, 431) instead of handling the request.
    Reject(Response),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Reads one request from `stream`, refusing a body larger than `max_body` before reading it.
pub fn read_request(stream: &mut TcpStream, max_body: usize) -> Result<Request, ReadError> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(ReadError::Reject(Response::error(
                431,
                format!("request head is larger than {MAX_HEAD_BYTES} bytes"),
            )));
        }
        let n = read_some(stream, &mut chunk, deadline)?;
        if n == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD_BYTES {
        return Err(ReadError::Reject(Response::error(
            431,
            format!("request head is larger than {MAX_HEAD_BYTES} bytes"),
        )));
    }
    let bad = |m: &str| ReadError::Reject(Response::error(400, m.to_string()));
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && t.starts_with('/') => (m, t, v),
        _ => return Err(bad("malformed request line")),
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Reject(Response::error(
            505,
            "only HTTP/1.0 and HTTP/1.1 are served",
        )));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header line"))?;
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(bad("malformed header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Reject(Response::error(
            411,
            "chunked request bodies are not accepted; send Content-Length",
        )));
    }
    let mut length: Option<usize> = None;
    for (n, v) in &req.headers {
        if n == "content-length" {
            let l: usize = v.parse().map_err(|_| bad("malformed Content-Length"))?;
            if length.is_some_and(|p| p != l) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(l);
        }
    }
    let length = length.unwrap_or(0);
    if length > max_body {
        return Err(ReadError::Reject(Response::error(
            413,
            format!("request body of {length} bytes is larger than the limit of {max_body}"),
        )));
    }
    if length > 0
        && req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = buf.split_off(head_end + 4);
    body.truncate(length);
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..want], deadline)?;
        if n == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    req.body = body;
    Ok(req)
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// Writes `resp` (without its body for HEAD) and closes the connection. After a refusal the
/// client may still be sending a body we will not read: closing with unread data would reset
/// the connection before the client reads our answer, so half-close and discard a bounded
/// amount first (a "lingering close").
pub fn write_response(stream: &mut TcpStream, resp: &Response, head_only: bool, linger: bool) {
    let mut out = Vec::with_capacity(resp.body.len() + 256);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (n, v) in &resp.headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    if let Err(e) = stream.write_all(&out) {
        log::debug!("admin: writing a response: {e}");
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    if linger {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut sink = [0u8; 4096];
        let mut left = 256 * 1024;
        while left > 0 {
            match stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn roundtrip(raw: &[u8], max_body: usize) -> Result<Request, ReadError> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.write_all(raw).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let (mut s, _) = l.accept().unwrap();
        read_request(&mut s, max_body)
    }

    fn rejected(r: Result<Request, ReadError>) -> u16 {
        match r {
            Err(ReadError::Reject(resp)) => resp.status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn parses_head_and_body() {
        let r = roundtrip(
            b"POST /reload?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello",
            10,
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/reload?x=1");
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn refuses_bad_input_with_the_right_status() {
        assert_eq!(rejected(roundtrip(b"GARBAGE\r\n\r\n", 10)), 400);
        assert_eq!(rejected(roundtrip(b"GET / HTTP/2.0\r\n\r\n", 10)), 505);
        assert_eq!(
            rejected(roundtrip(b"GET / HTTP/1.1\r\nbad\r\n\r\n", 10)),
            400
        );
        assert_eq!(
            rejected(roundtrip(
                b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                10
            )),
            400
        );
        assert_eq!(
            rejected(roundtrip(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                10
            )),
            400
        );
        assert_eq!(
            rejected(roundtrip(
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n",
                10
            )),
            413
        );
        assert_eq!(
            rejected(roundtrip(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                10
            )),
            411
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(rejected(roundtrip(&big, 10)), 431);
    }

    #[test]
    fn truncated_body_is_an_io_error() {
        let r = roundtrip(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc", 10);
        assert!(matches!(r, Err(ReadError::Io(_))), "{r:?}");
    }
}
