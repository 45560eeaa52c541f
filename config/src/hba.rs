//! Host-based access rules (`auth.hba`): a file in PostgreSQL's `pg_hba.conf` format, with the
//! part of its semantics a proxy can decide.
//!
//! One rule per line: `TYPE DATABASE USER ADDRESS METHOD`. TYPE is `host`, `hostssl` (TLS
//! only) or `hostnossl` (plain text only). DATABASE and USER are comma-separated lists of
//! names, `all`, or `@file` (items read from a file, relative to the HBA file); USER may also be
//! `+group` (the members of `auth.groups.group`, resolved when the file is loaded: an unknown
//! group is an error), DATABASE `sameuser` or `samerole` / `samegroup` (the user is a member of
//! the group named like the database). A group is exactly its list: unlike a PostgreSQL role, its
//! own name is not a member. ADDRESS is `all` or a CIDR block (IPv4 or IPv6; a bare address is a
//! single host). METHOD is `scram-sha-256`, `md5`, `cert`, `trust` or `reject`. Quoted names
//! are literal (`"all"` is a database called all); `#` starts a comment. The first matching line
//! decides; no match is a rejection. A file with an error is refused whole, naming the line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::{AuthMethod, ConfigError};

/// The parsed rules, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hba {
    pub rules: Vec<HbaRule>,
    /// `auth.groups` as it was when the file was loaded (for `samerole`): group → members.
    pub groups: BTreeMap<String, BTreeSet<String>>,
}

/// `auth.groups`: group name → its members (user names).
pub type Groups = BTreeMap<String, Vec<String>>;

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
    /// DATABASE only (`samerole` / `samegroup`): the user is a member of the group named like
    /// the database.
    SameGroup,
    Name(String),
    /// USER only (`+group`): the group's members, resolved at load.
    Group {
        name: String,
        members: BTreeSet<String>,
    },
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
    /// Reads and parses `path`; `@file` lists are read relative to its directory, `+group`
    /// names are looked up in `groups` (`auth.groups`).
    pub fn load(path: &Path, groups: &Groups) -> Result<Hba, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Hba::parse(&text, path, groups)
    }

    /// Parses the text of an HBA file at `path` (which names it in errors and anchors `@file`),
    /// resolving `+group` against `groups`.
    pub fn parse(text: &str, path: &Path, groups: &Groups) -> Result<Hba, ConfigError> {
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
            let ctx = NameCtx { base, groups };
            let databases = names(&fields[1], true, &ctx).map_err(|m| err(line, m))?;
            let users = names(&fields[2], false, &ctx).map_err(|m| err(line, m))?;
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
        let groups = groups
            .iter()
            .map(|(g, m)| (g.clone(), m.iter().cloned().collect()))
            .collect();
        Ok(Hba { rules, groups })
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
                NameMatch::SameGroup => self.groups.get(database).is_some_and(|g| g.contains(user)),
                NameMatch::Name(n) => n == database,
                NameMatch::Group { .. } => false,
            });
            let user_ok = r.users.iter().any(|m| match m {
                NameMatch::All => true,
                NameMatch::SameUser | NameMatch::SameGroup => false,
                NameMatch::Name(n) => n == user,
                NameMatch::Group { members, .. } => members.contains(user),
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

/// What resolving a name list needs: where `@file` paths are relative to, and the groups.
struct NameCtx<'a> {
    base: &'a Path,
    groups: &'a Groups,
}

fn names(field: &[Token], database: bool, ctx: &NameCtx) -> Result<Vec<NameMatch>, String> {
    let mut out = Vec::new();
    for t in field {
        name(t, database, ctx, true, &mut out)?;
    }
    Ok(out)
}

/// One item of a DATABASE (`database`) or USER list; `top`: on the HBA line itself, not inside
/// an `@file` (which may not include another).
fn name(
    t: &Token,
    database: bool,
    ctx: &NameCtx,
    top: bool,
    out: &mut Vec<NameMatch>,
) -> Result<(), String> {
    if t.quoted {
        out.push(NameMatch::Name(t.text.clone()));
        return Ok(());
    }
    match t.text.as_str() {
        "all" => out.push(NameMatch::All),
        "sameuser" if database => out.push(NameMatch::SameUser),
        "samerole" | "samegroup" if database => out.push(NameMatch::SameGroup),
        "replication" if database => {
            return Err("database keyword \"replication\" is not supported".into())
        }
        s if s.starts_with('+') && database => {
            return Err(format!(
                "{s}: +group is for the USER column (for the database, use samegroup)"
            ))
        }
        s if s.starts_with('+') => {
            let g = &s[1..];
            let Some(members) = ctx.groups.get(g) else {
                return Err(format!(
                    "{s}: no group {g:?} in auth.groups ({})",
                    if ctx.groups.is_empty() {
                        "none is defined".to_string()
                    } else {
                        let known: Vec<&str> = ctx.groups.keys().map(String::as_str).collect();
                        format!("defined: {}", known.join(", "))
                    }
                ));
            };
            out.push(NameMatch::Group {
                name: g.to_string(),
                members: members.iter().cloned().collect(),
            });
        }
        s if s.starts_with('@') && !top => {
            return Err(format!("{s}: an @file may not include another @file"))
        }
        s if s.starts_with('@') => {
            let p = PathBuf::from(&s[1..]);
            let p = if p.is_relative() { ctx.base.join(p) } else { p };
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("{s}: cannot read {}: {e}", p.display()))?;
            for (i, l) in text.lines().enumerate() {
                let fields =
                    tokenize(l).map_err(|e| format!("{s}: {}:{}: {e}", p.display(), i + 1))?;
                for t in fields.iter().flatten() {
                    name(t, database, ctx, false, out)
                        .map_err(|e| format!("{s}: {}:{}: {e}", p.display(), i + 1))?;
                }
            }
        }
        s => out.push(NameMatch::Name(s.to_string())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Hba, ConfigError> {
        Hba::parse(text, Path::new("/nonexistent/hba.conf"), &Groups::new())
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
            (
                "host all +admins all trust\n",
                1,
                "no group \"admins\" in auth.groups",
            ),
            ("host +admins all all trust\n", 1, "samegroup"),
            ("host replication all all trust\n", 1, "replication"),
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
        let h = Hba::parse(
            "host all @users.txt all trust\n",
            &dir.join("hba.conf"),
            &Groups::new(),
        )
        .unwrap();
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

    fn groups(pairs: &[(&str, &[&str])]) -> Groups {
        pairs
            .iter()
            .map(|(g, m)| (g.to_string(), m.iter().map(|u| u.to_string()).collect()))
            .collect()
    }

    #[test]
    fn plus_group_matches_its_members_only() {
        let g = groups(&[("admins", &["alice", "bob"]), ("ops", &["carol"])]);
        let h = Hba::parse(
            "host all +admins,dave 10.0.0.0/8 trust\n\
             host all +ops all md5\n\
             host all \"+admins\" all scram-sha-256\n",
            Path::new("/nonexistent/hba.conf"),
            &g,
        )
        .unwrap();
        let at = |u: &str, a: &str| h.decide(ip(a), false, u, "db");
        assert_eq!(
            at("alice", "10.1.1.1"),
            HbaDecision::Allow(AuthMethod::Trust, 1)
        );
        assert_eq!(
            at("bob", "10.1.1.1"),
            HbaDecision::Allow(AuthMethod::Trust, 1)
        );
        assert_eq!(
            at("dave", "10.1.1.1"),
            HbaDecision::Allow(AuthMethod::Trust, 1)
        );
        // Outside 10/8 alice is in no group of a matching line.
        assert_eq!(at("alice", "192.168.0.1"), HbaDecision::NoMatch);
        assert_eq!(
            at("carol", "192.168.0.1"),
            HbaDecision::Allow(AuthMethod::Md5, 2)
        );
        // The group's own name is not a member; a quoted "+admins" is a user of that name.
        assert_eq!(at("admins", "10.1.1.1"), HbaDecision::NoMatch);
        assert_eq!(
            at("+admins", "192.168.0.1"),
            HbaDecision::Allow(AuthMethod::ScramSha256, 3)
        );
    }

    #[test]
    fn samerole_needs_membership_of_the_group_named_like_the_database() {
        let g = groups(&[("sales", &["alice"])]);
        let h = Hba::parse(
            "host samerole all all trust\nhost samegroup all 10.0.0.0/8 md5\n",
            Path::new("/nonexistent/hba.conf"),
            &g,
        )
        .unwrap();
        assert_eq!(
            h.decide(ip("1.2.3.4"), false, "alice", "sales"),
            HbaDecision::Allow(AuthMethod::Trust, 1)
        );
        assert_eq!(
            h.decide(ip("1.2.3.4"), false, "bob", "sales"),
            HbaDecision::NoMatch
        );
        assert_eq!(
            h.decide(ip("1.2.3.4"), false, "alice", "other"),
            HbaDecision::NoMatch
        );
        // No group named like the database: no match (not an error: databases come and go).
        assert_eq!(
            h.decide(ip("1.2.3.4"), false, "sales", "sales"),
            HbaDecision::NoMatch
        );
        assert_eq!(
            h.decide(ip("10.2.3.4"), false, "bob", "sales"),
            HbaDecision::NoMatch
        );
    }

    #[test]
    fn at_file_for_users_may_name_groups_but_not_other_files() {
        let dir = std::env::temp_dir().join(format!("helios-hba-g-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("users.txt"), "+admins\nfrank # and the admins\n").unwrap();
        std::fs::write(dir.join("nested.txt"), "@users.txt\n").unwrap();
        std::fs::write(dir.join("unknown.txt"), "erin\n+nobody\n").unwrap();
        let g = groups(&[("admins", &["alice"])]);
        let h = Hba::parse("host all @users.txt all trust\n", &dir.join("hba.conf"), &g).unwrap();
        for (u, ok) in [
            ("alice", true),
            ("frank", true),
            ("admins", false),
            ("zed", false),
        ] {
            assert_eq!(
                matches!(
                    h.decide(ip("1.2.3.4"), false, u, "d"),
                    HbaDecision::Allow(..)
                ),
                ok,
                "{u}"
            );
        }
        let e = Hba::parse(
            "\nhost all @nested.txt all trust\n",
            &dir.join("hba.conf"),
            &g,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("hba.conf:2:") && e.contains("may not include"),
            "{e}"
        );
        let e = Hba::parse(
            "host all @unknown.txt all trust\n",
            &dir.join("hba.conf"),
            &g,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("hba.conf:1:") && e.contains("unknown.txt:2") && e.contains("nobody"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
