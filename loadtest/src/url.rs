//! `postgres://` URL parsing.
//!
//! We parse the URL ourselves (rather than pulling in a URL crate) because the tool only needs
//! the libpq subset: user, password, host (TCP or a Unix socket directory), port, database and
//! `application_name`. Anything we would silently ignore — `sslmode=require`, other options — is
//! an error instead, so a benchmark never runs against something other than what was asked.

use std::fmt;

use crate::Error;

/// Where and as whom to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// A host name or IP address, or an absolute Unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// From the URL, else `PGPASSWORD`.
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: String,
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password: the Debug form ends up in logs and JSON reports.
        write!(f, "{}", self.redacted())
    }
}

impl ConnParams {
    /// Parses `postgres://[user[:password]@][host][:port][/dbname][?k=v&...]`
    /// (`postgresql://` too). A `host` query parameter or a percent-encoded host starting with
    /// `/` selects a Unix socket directory, as in libpq.
    pub fn parse(url: &str) -> Result<ConnParams, Error> {
        let bad = |why: &str| Error::Url(format!("{}: {why}", redact_url(url)));
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("must start with postgres:// or postgresql://"))?;
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match main.split_once('/') {
            Some((a, p)) => (a, p),
            None => (main, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(decode(u, url)?), Some(decode(p, url)?)),
                None => (Some(decode(u, url)?), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or_else(|| bad("unclosed [ in host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (decode(h, url)?, Some(p)),
                None => (decode(hostport, url)?, None),
            }
        };
        let mut params = ConnParams {
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host
            },
            port: match port {
                Some(p) => p.parse().map_err(|_| bad("port is not a number"))?,
                None => 5432,
            },
            user: user
                .filter(|u| !u.is_empty())
                .or_else(|| std::env::var("PGUSER").ok())
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "postgres".into()),
            password: password.or_else(|| std::env::var("PGPASSWORD").ok()),
            dbname: decode(path, url)?,
            application_name: "helios-loadtest".into(),
        };
        if params.dbname.is_empty() {
            params.dbname = params.user.clone();
        }
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = decode(v, url)?;
            match k {
                "host" => params.host = v,
                "port" => params.port = v.parse().map_err(|_| bad("port is not a number"))?,
                "user" => params.user = v,
                "password" => params.password = Some(v),
                "dbname" => params.dbname = v,
                "application_name" => params.application_name = v,
                "sslmode" if v == "disable" || v == "prefer" || v == "allow" => {}
                "connect_timeout" => {}
                _ => {
                    return Err(bad(&format!(
                        "unsupported parameter {k}={v} (no TLS support)"
                    )))
                }
            }
        }
        Ok(params)
    }

    /// The URL with the password replaced, for reports.
    pub fn redacted(&self) -> String {
        let pw = if self.password.is_some() { ":***" } else { "" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgres://{}{pw}@{host}:{}/{}",
            self.user, self.port, self.dbname
        )
    }
}

/// `url` with the password part blanked, for error messages.
pub fn redact_url(url: &str) -> String {
    match ConnParamsParts::split(url) {
        Some((head, tail)) => format!("{head}:***@{tail}"),
        None => url.to_string(),
    }
}

struct ConnParamsParts;

impl ConnParamsParts {
    fn split(url: &str) -> Option<(&str, &str)> {
        let scheme_end = url.find("://")? + 3;
        let at = url[scheme_end..].find('@')? + scheme_end;
        let colon = url[scheme_end..at].find(':')? + scheme_end;
        Some((&url[..colon], &url[at + 1..]))
    }
}

fn decode(s: &str, url: &str) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Url(format!("{}: bad %-escape", redact_url(url))))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Url(format!("{}: not UTF-8", redact_url(url))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let p = ConnParams::parse("postgres://bob:p%40ss@127.0.0.1:6432/app?application_name=x")
            .unwrap();
        assert_eq!(p.user, "bob");
        assert_eq!(p.password.as_deref(), Some("p@ss"));
        assert_eq!(p.host, "127.0.0.1");
        assert_eq!(p.port, 6432);
        assert_eq!(p.dbname, "app");
        assert_eq!(p.application_name, "x");
        assert_eq!(p.redacted(), "postgres://bob:***@127.0.0.1:6432/app");
        assert!(!format!("{p:?}").contains("p@ss"));
    }

    #[test]
    fn unix_socket_and_defaults() {
        let p = ConnParams::parse("postgresql://u@%2Ftmp%2Fpg/db").unwrap();
        assert_eq!(p.host, "/tmp/pg");
        assert_eq!(p.port, 5432);
        let p = ConnParams::parse("postgres://u@/db?host=/run/pg&port=5433").unwrap();
        assert_eq!(p.host, "/run/pg");
        assert_eq!(p.port, 5433);
        let p = ConnParams::parse("postgres://u@[::1]:7/").unwrap();
        assert_eq!(p.host, "::1");
        assert_eq!(p.dbname, "u");
    }

    #[test]
    fn rejects_what_it_cannot_honour() {
        assert!(ConnParams::parse("mysql://x").is_err());
        assert!(ConnParams::parse("postgres://u@h/db?sslmode=require").is_err());
        assert!(ConnParams::parse("postgres://u@h:notaport/db").is_err());
        let e = ConnParams::parse("postgres://u:secret@h/db?sslmode=require").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
