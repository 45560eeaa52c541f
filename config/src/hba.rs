//! Host-based access rules (`auth.hba`): a file in PostgreSQL's `pg_hba.conf` format, with the
//! part of its semantics a proxy can decide.
//!
//! One rule per line: `TYPE DATABASE USER ADDRESS METHOD`. TYPE is `host`, `hostssl` (TLS
//! only) or `hostnossl` (plain text only). DATABASE and USER are comma-separated lists of
//! names, `all`, or `@file` (names read from a file, relative to the HBA file); DATABASE may
//! also be `sameuser`. ADDRESS is `all` or a CIDR block (IPv4 or IPv6; a bare address is a
//! single host). METHOD is `scram-sha-256`, `md5`, `cert`, `trust` or `reject`. Quoted names
//! are literal (`"all"` is a database called all); `#` starts a comment. The first matching line
//! decides; no match is a rejection. A file with an error is refused whole, naming the line.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::{AuthMethod, ConfigError};

/// The parsed rules, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hba {
    pub rules: Vec<HbaRule>,
}

/// One line of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HbaRule {
    /// 1-based line number, for logs.
    pub line: usize,
    pub conn: ConnType,
    pub databases: Vec<NameMatch>,
    pub users: Vec<NameMatch>,
    pub address: AddrMatch,
    pub method: HbaMethod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnType {
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameMatch {
    All,
    /// DATABASE only: the database named like the user.
    SameUser,
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrMatch {
    All,
    Net { addr: IpAddr, prefix: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HbaMethod {
    Auth(AuthMethod),
    Reject,
}

/// What the rules say about one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HbaDecision {
    /// Authenticate with this method (the rule's line number).
    Allow(AuthMethod, usize),
    /// A `reject` line matched.
    Reject(usize),
    /// No line matched.
    NoMatch,
}

impl Hba {
    /// Reads and parses `path`; `@file` lists are read relative to its directory.
    pub fn load(path: &Path) -> Result<Hba, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Hba::parse(&text, path)
    }

    /// Parses the text of an HBA file at `path` (which names it in errors and anchors `@file`).
    pub fn parse(text: &str, path: &Path) -> Result<Hba, ConfigError> {
        let err = |line: usize, message: String| ConfigError::Hba {
            path: path.to_path_buf(),
            line,
            message,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let fields = tokenize(raw).map_err(|m| err(line, m))?;
            if fields.is_empty() {
                continue;
            }
            if fields[0].len() == 1 && fields[0][0].text == "local" {
                return Err(err(
                    line,
                    "local: the proxy does not listen on Unix sockets; use host, hostssl or hostnossl".into(),
                ));
            }
            if fields.len() != 5 {
                return Err(err(
                    line,
                    format!(
                        "expected 5 fields (TYPE DATABASE USER ADDRESS METHOD), found {}{}",
                        fields.len(),
                        if fields.len() > 5 {
                            " (options after METHOD are not supported)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            let single = |f: &Vec<Token>, what: &str| -> Result<String, ConfigError> {
                match f.as_slice() {
                    [t] => Ok(t.text.clone()),
                    _ => Err(err(line, format!("{what}: a single value expected"))),
                }
            };
            let conn = match single(&fields[0], "TYPE")?.as_str() {
                "host" => ConnType::Host,
                "hostssl" => ConnType::HostSsl,
                "hostnossl" => ConnType::HostNoSsl,
                t => return Err(err(line, format!("unknown connection type {t:?}"))),
            };
            let databases = names(&fields[1], true, base).map_err(|m| err(line, m))?;
            let users = names(&fields[2], false, base).map_err(|m| err(line, m))?;
            let address = parse_addr(&single(&fields[3], "ADDRESS")?).map_err(|m| err(line, m))?;
            let method = match single(&fields[4], "METHOD")?.as_str() {
                "scram-sha-256" => HbaMethod::Auth(AuthMethod::ScramSha256),
                "md5" => HbaMethod::Auth(AuthMethod::Md5),
                "cert" => HbaMethod::Auth(AuthMethod::Cert),
                "trust" => HbaMethod::Auth(AuthMethod::Trust),
                "reject" => HbaMethod::Reject,
                m => {
                    return Err(err(
                        line,
                        format!(
                            "unsupported method {m:?} (scram-sha-256, md5, cert, trust, reject)"
                        ),
                    ))
                }
            };
            if method == HbaMethod::Auth(AuthMethod::Cert) && conn != ConnType::HostSsl {
                return Err(err(
                    line,
                    "cert authentication is only supported on hostssl lines".into(),
                ));
            }
            rules.push(HbaRule {
                line,
                conn,
                databases,
                users,
                address,
                method,
            });
        }
        Ok(Hba { rules })
    }

    /// The first rule matching a connection from `addr` over TLS or not, for `user` and
    /// `database`.
    pub fn decide(&self, addr: IpAddr, tls: bool, user: &str, database: &str) -> HbaDecision {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        for r in &self.rules {
            let conn_ok = match r.conn {
                ConnType::Host => true,
                ConnType::HostSsl => tls,
                ConnType::HostNoSsl => !tls,
            };
            let db_ok = r.databases.iter().any(|m| match m {
                NameMatch::All => true,
                NameMatch::SameUser => database == user,
                NameMatch::Name(n) => n == database,
            });
            let user_ok = r.users.iter().any(|m| match m {
                NameMatch::All => true,
                NameMatch::SameUser => false,
                NameMatch::Name(n) => n == user,
            });
            if conn_ok && db_ok && user_ok && r.address.contains(addr) {
                return match r.method {
                    HbaMethod::Auth(m) => HbaDecision::Allow(m, r.line),
                    HbaMethod::Reject => HbaDecision::Reject(r.line),
                };
            }
        }
        HbaDecision::NoMatch
    }

    /// The methods the rules use (for validation against the rest of the configuration).
    pub fn methods(&self) -> impl Iterator<Item = AuthMethod> + '_ {
        self.rules.iter().filter_map(|r| match r.method {
            HbaMethod::Auth(m) => Some(m),
            HbaMethod::Reject => None,
        })
    }
}

impl AddrMatch {
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (*self, addr) {
            (AddrMatch::All, _) => true,
            (
                AddrMatch::Net {
                    addr: IpAddr::V4(n),
                    prefix,
                },
                IpAddr::V4(a),
            ) => {
                let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (
                AddrMatch::Net {
                    addr: IpAddr::V6(n),
                    prefix,
                },
                IpAddr::V6(a),
            ) => {
                let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn parse_addr(s: &str) -> Result<AddrMatch, String> {
    if s == "all" {
        return Ok(AddrMatch::All);
    }
    if matches!(s, "samehost" | "samenet") {
        return Err(format!("{s} is not supported: write the CIDR block"));
    }
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| format!("invalid address {s:?} (a CIDR block like 10.0.0.0/8 or all; host names are not supported)"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("invalid CIDR mask in {s:?}"))?,
        None => max,
    };
    Ok(AddrMatch::Net { addr, prefix })
}

/// One item of a field: its text, and whether it was quoted (no keyword meaning).
#[derive(Clone, Debug)]
struct Token {
    text: String,
    quoted: bool,
}

/// Splits a line into fields (whitespace-separated), each a comma-separated list of tokens.
/// A field ending in a comma continues into the next (`db1, db2`).
fn tokenize(line: &str) -> Result<Vec<Vec<Token>>, String> {
    let mut fields: Vec<Vec<Token>> = Vec::new();
    let mut chars = line.chars().peekable();
    let mut continues = false;
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            None | Some('#') => break,
            _ => {}
        }
        let mut field = if continues {
            fields.pop().unwrap_or_default()
        } else {
            Vec::new()
        };
        continues = false;
        loop {
            let mut text = String::new();
            let mut quoted = false;
            loop {
                match chars.peek().copied() {
                    Some('"') => {
                        chars.next();
                        quoted = true;
                        loop {
                            match chars.next() {
                                Some('"') if chars.peek() == Some(&'"') => {
                                    chars.next();
                                    text.push('"');
                                }
                                Some('"') => break,
                                Some(c) => text.push(c),
                                None => return Err("unterminated quoted string".into()),
                            }
                        }
                    }
                    Some(c) if c.is_whitespace() || c == ',' || c == '#' => break,
                    Some(c) => {
                        chars.next();
                        text.push(c);
                    }
                    None => break,
                }
            }
            if text.is_empty() && !quoted {
                return Err("empty list item".into());
            }
            field.push(Token { text, quoted });
            if chars.peek() == Some(&',') {
                chars.next();
                if chars.peek().is_none_or(|c| c.is_whitespace()) {
                    continues = true;
                    break;
                }
                continue;
            }
            break;
        }
        fields.push(field);
    }
    if continues {
        return Err("the line ends with a comma".into());
    }
    Ok(fields)
}

fn names(field: &[Token], database: bool, base: &Path) -> Result<Vec<NameMatch>, String> {
    let mut out = Vec::new();
    for t in field {
        if t.quoted {
            out.push(NameMatch::Name(t.text.clone()));
            continue;
        }
        match t.text.as_str() {
            "all" => out.push(NameMatch::All),
            "sameuser" if database => out.push(NameMatch::SameUser),
            "samerole" | "samegroup" | "replication" if database => {
                return Err(format!("database keyword {:?} is not supported", t.text))
            }
            s if s.starts_with('+') => {
                return Err(format!(
                    "{s}: group membership (+group) is not supported; list the users or use @file"
                ))
            }
            s if s.starts_with('@') => {
                let p = PathBuf::from(&s[1..]);
                let p = if p.is_relative() { base.join(p) } else { p };
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| format!("{s}: cannot read {}: {e}", p.display()))?;
                for l in text.lines() {
                    let l = l.split('#').next().unwrap_or("");
                    for n in l.split([',', ' ', '\t']).filter(|n| !n.is_empty()) {
                        out.push(NameMatch::Name(n.trim_matches('"').to_string()));
                    }
                }
            }
            s => out.push(NameMatch::Name(s.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Hba, ConfigError> {
        Hba::parse(text, Path::new("/nonexistent/hba.conf"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_match_wins_and_no_match_rejects() {
        let h = parse(
            "# comment\n\
             host all all 127.0.0.2/32 reject\n\
             hostssl app alice,bob 127.0.0.0/8 cert   # trailing comment\n\
             hostnossl \"all\" all 127.0.0.1 md5\n\
             host app, other all ::1/128 trust\n\
             host sameuser all 10.0.0.0/8 scram-sha-256\n",
        )
        .unwrap();
        assert_eq!(h.rules.len(), 5);
        assert_eq!(
            h.decide(ip("127.0.0.2"), true, "alice", "app"),
            HbaDecision::Reject(2)
        );
        assert_eq!(
            h.decide(ip("127.0.0.1"), true, "alice", "app"),
            HbaDecision::Allow(AuthMethod::Cert, 3)
        );
        // hostssl does not match plain text; "all" quoted is a database named all.
        assert_eq!(
            h.decide(ip("127.0.0.1"), false, "alice", "app"),
            HbaDecision::NoMatch
        );
        assert_eq!(
            h.decide(ip("127.0.0.1"), false, "x", "all"),
            HbaDecision::Allow(AuthMethod::Md5, 4)
        );
        assert_eq!(
            h.decide(ip("::1"), false, "x", "other"),
            HbaDecision::Allow(AuthMethod::Trust, 5)
        );
        assert_eq!(
            h.decide(ip("::1"), false, "x", "third"),
            HbaDecision::NoMatch
        );
        // IPv4-mapped IPv6 peers match IPv4 rules.
        assert_eq!(
            h.decide(ip("::ffff:10.1.2.3"), false, "zed", "zed"),
            HbaDecision::Allow(AuthMethod::ScramSha256, 6)
        );
        assert_eq!(
            h.decide(ip("10.1.2.3"), false, "zed", "app"),
            HbaDecision::NoMatch
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, what) in [
            (
                "host all all all trust\nhost all all all password\n",
                2,
                "unsupported method",
            ),
            ("host all all 10.0.0.0/33 trust\n", 1, "mask"),
            ("\n\nlocal all all trust\n", 3, "Unix"),
            ("host all all all\n", 1, "5 fields"),
            (
                "host all all all trust clientcert=verify-full\n",
                1,
                "options",
            ),
            ("host all +admins all trust\n", 1, "+group"),
            ("host all all db.example.com trust\n", 1, "host names"),
            ("host all all all cert\n", 1, "hostssl"),
            ("host \"unterminated all all trust\n", 1, "unterminated"),
            ("host all @missing.txt all trust\n", 1, "missing.txt"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("hba.conf:{line}:")) && e.contains(what),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn at_file_lists() {
        let dir = std::env::temp_dir().join(format!("helios-hba-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("users.txt"), "carol, dave\n# no one else\nerin\n").unwrap();
        let h = Hba::parse("host all @users.txt all trust\n", &dir.join("hba.conf")).unwrap();
        for u in ["carol", "dave", "erin"] {
            assert!(matches!(
                h.decide(ip("1.2.3.4"), false, u, "d"),
                HbaDecision::Allow(..)
            ));
        }
        assert_eq!(
            h.decide(ip("1.2.3.4"), false, "frank", "d"),
            HbaDecision::NoMatch
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
