//! PgBouncer-compatible `userlist.txt`: one `"user" "secret"` pair per line, `;` or `#` starts a
//! comment line, `""` inside quotes is a literal quote.

use std::collections::HashMap;
use std::path::Path;

use crate::ConfigError;

/// What the userlist holds for one user.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plain-text password: works with every auth method, and lets the proxy log in upstream
    /// as this user.
    Plain(String),
    /// `md5` + hex(md5(password + user)): md5 auth only.
    Md5(String),
    /// A SCRAM-SHA-256 verifier as PostgreSQL stores it (`SCRAM-SHA-256$iter:salt$stored:server`):
    /// scram-sha-256 auth only.
    Scram {
        iterations: u32,
        salt: Vec<u8>,
        stored_key: [u8; 32],
        server_key: [u8; 32],
    },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets in logs or the /config endpoint.
        f.write_str(match self {
            Secret::Plain(_) => "Plain(<redacted>)",
            Secret::Md5(_) => "Md5(<redacted>)",
            Secret::Scram { .. } => "Scram(<redacted>)",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub secret: Secret,
}

/// Users by name.
pub type Userlist = HashMap<String, UserEntry>;

pub(crate) fn load_userlist(path: &Path) -> Result<Userlist, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_userlist(&text, path)
}

/// Parses userlist text; `path` only names the source in errors.
pub fn parse_userlist(text: &str, path: &Path) -> Result<Userlist, ConfigError> {
    let mut users = Userlist::new();
    for (i, line) in text.lines().enumerate() {
        let err = |message: String| ConfigError::Userlist {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let (name, rest) = quoted(line).map_err(err)?;
        let (secret, rest) = quoted(rest.trim_start()).map_err(err)?;
        if !rest.trim().is_empty() {
            return Err(err(format!(
                "unexpected text after the secret: {:?}",
                rest.trim()
            )));
        }
        if name.is_empty() {
            return Err(err("empty user name".into()));
        }
        let secret = parse_secret(&secret).map_err(err)?;
        users.insert(name.clone(), UserEntry { name, secret });
    }
    Ok(users)
}

/// Reads one `"…"` token; returns it unescaped and the rest of the line.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let Some(body) = s.strip_prefix('"') else {
        return Err(format!("expected a double-quoted string at {s:?}"));
    };
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if let Some((_, '"')) = chars.peek() {
                chars.next();
                out.push('"');
                continue;
            }
            return Ok((out, &body[i + 1..]));
        }
        out.push(c);
    }
    Err("unterminated double quote".into())
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    if let Some(rest) = s.strip_prefix("SCRAM-SHA-256$") {
        return parse_scram(rest).ok_or_else(|| {
            "malformed SCRAM verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
                .to_string()
        });
    }
    if let Some(hex) = s.strip_prefix("md5") {
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Secret::Md5(s.to_ascii_lowercase()));
        }
    }
    Ok(Secret::Plain(s.to_string()))
}

fn parse_scram(s: &str) -> Option<Secret> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (iter_salt, keys) = s.split_once('$')?;
    let (iter, salt) = iter_salt.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    Some(Secret::Scram {
        iterations: iter.parse().ok().filter(|n| *n > 0)?,
        salt: b64.decode(salt).ok()?,
        stored_key: b64.decode(stored).ok()?.try_into().ok()?,
        server_key: b64.decode(server).ok()?.try_into().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_secret_kinds_and_quotes() {
        let text = r#"
; comment
"alice" "plain ""pw"""
"bob" "md5a3556571e93b0d20722ba62be61e8c2d"
"carol" "SCRAM-SHA-256$4096:c2FsdA==$dHJhbnNwb3J0dHJhbnNwb3J0dHJhbnNwb3J0dHJhbnM=:c2VydmVyc2VydmVyc2VydmVyc2VydmVyc2VydmVyc2U="
"#;
        let u = parse_userlist(text, Path::new("u")).unwrap();
        assert_eq!(u["alice"].secret, Secret::Plain("plain \"pw\"".into()));
        assert!(matches!(u["bob"].secret, Secret::Md5(_)));
        match &u["carol"].secret {
            Secret::Scram {
                iterations, salt, ..
            } => {
                assert_eq!(*iterations, 4096);
                assert_eq!(salt, b"salt");
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_userlist("\"a\" \"b\"\n\"broken \"x\"", Path::new("u")).unwrap_err();
        assert!(e.to_string().contains(":2:"), "{e}");
        let e = parse_userlist("\"a\" \"SCRAM-SHA-256$x\"", Path::new("u")).unwrap_err();
        assert!(e.to_string().contains("SCRAM"), "{e}");
    }
}
