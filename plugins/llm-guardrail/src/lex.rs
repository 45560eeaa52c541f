//! A PostgreSQL lexer, enough to see statement structure: comments are dropped, string
//! literals, quoted identifiers and dollar-quoted bodies become single tokens whose content is
//! never read as keywords, unquoted words are lowercased, parentheses are kept for nesting.

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// An unquoted word (keyword or identifier), lowercased.
    Word(String),
    /// A quoted identifier, exactly as written (quotes removed, `""` unescaped).
    Quoted(String),
    /// A string literal or dollar-quoted body (content not kept).
    Str,
    /// A number or a `$n` parameter.
    Num,
    LParen,
    RParen,
    Comma,
    Semi,
    Dot,
    /// Any operator or other punctuation.
    Op(String),
}

impl Tok {
    pub fn is_word(&self, w: &str) -> bool {
        matches!(self, Tok::Word(x) if x == w)
    }

    /// The name of a word or quoted identifier.
    pub fn name(&self) -> Option<&str> {
        match self {
            Tok::Word(w) | Tok::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

fn ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || !c.is_ascii()
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

const OP_CHARS: &str = "+-*/<>=~!@#%^&|`?";

/// Tokenizes `sql`. `backslash_escapes`: read backslashes in plain `'…'` literals as escapes,
/// as a session with `standard_conforming_strings = off` does (the guardrail checks both
/// readings when a literal holds a backslash, so neither can hide a statement).
pub fn tokenize(sql: &str, backslash_escapes: bool) -> Vec<Tok> {
    let chars: Vec<char> = sql.chars().collect();
    let n = chars.len();
    let mut out = Vec::new();
    let mut i = 0;
    // Skips a quoted run starting after the opening `q`; returns the index after the closing one.
    let skip_quoted = |mut j: usize, q: char, escapes: bool, buf: &mut Option<String>| -> usize {
        while j < n {
            let c = chars[j];
            if escapes && c == '\\' {
                j += 2;
                continue;
            }
            if c == q {
                if j + 1 < n && chars[j + 1] == q {
                    if let Some(b) = buf.as_mut() {
                        b.push(q);
                    }
                    j += 2;
                    continue;
                }
                return j + 1;
            }
            if let Some(b) = buf.as_mut() {
                b.push(c);
            }
            j += 1;
        }
        n
    };
    while i < n {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && next == Some('-') {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 1;
            i += 2;
            while i < n && depth > 0 {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' {
            i = skip_quoted(i + 1, '\'', backslash_escapes, &mut None);
            out.push(Tok::Str);
        } else if c == '"' {
            let mut name = Some(String::new());
            i = skip_quoted(i + 1, '"', false, &mut name);
            out.push(Tok::Quoted(name.unwrap_or_default()));
        } else if c == '$' {
            if next.is_some_and(|d| d.is_ascii_digit()) {
                i += 1;
                while i < n && chars[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Tok::Num);
                continue;
            }
            // $tag$ … $tag$
            let mut j = i + 1;
            while j < n && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if j < n && chars[j] == '$' {
                let tag: String = chars[i..=j].iter().collect();
                let tag: Vec<char> = tag.chars().collect();
                let mut k = j + 1;
                let mut end = n;
                while k + tag.len() <= n {
                    if chars[k..k + tag.len()] == tag[..] {
                        end = k + tag.len();
                        break;
                    }
                    k += 1;
                }
                i = end;
                out.push(Tok::Str);
            } else {
                out.push(Tok::Op("$".into()));
                i += 1;
            }
        } else if ident_start(c) {
            // Prefixed literals: E'…' (escapes), B'…', X'…', N'…', U&'…', U&"…".
            let lc = c.to_ascii_lowercase();
            if next == Some('\'') && matches!(lc, 'e' | 'b' | 'x' | 'n') {
                i = skip_quoted(i + 2, '\'', lc == 'e' || backslash_escapes, &mut None);
                out.push(Tok::Str);
                continue;
            }
            if lc == 'u' && next == Some('&') {
                match chars.get(i + 2) {
                    Some('\'') => {
                        i = skip_quoted(i + 3, '\'', backslash_escapes, &mut None);
                        out.push(Tok::Str);
                        continue;
                    }
                    Some('"') => {
                        let mut name = Some(String::new());
                        i = skip_quoted(i + 3, '"', false, &mut name);
                        out.push(Tok::Quoted(name.unwrap_or_default()));
                        continue;
                    }
                    _ => {}
                }
            }
            let start = i;
            while i < n && ident_char(chars[i]) {
                i += 1;
            }
            let w: String = chars[start..i].iter().collect();
            out.push(Tok::Word(w.to_lowercase()));
        } else if c.is_ascii_digit() || (c == '.' && next.is_some_and(|d| d.is_ascii_digit())) {
            while i < n
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || chars[i] == '_'
                    || ((chars[i] == '+' || chars[i] == '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            out.push(Tok::Num);
        } else {
            match c {
                '(' => out.push(Tok::LParen),
                ')' => out.push(Tok::RParen),
                ',' => out.push(Tok::Comma),
                ';' => out.push(Tok::Semi),
                '.' => out.push(Tok::Dot),
                _ if OP_CHARS.contains(c) => {
                    let start = i;
                    // An operator ends where a comment starts (never at `start`: a comment
                    // there was handled above).
                    while i < n && OP_CHARS.contains(chars[i]) {
                        let nx = chars.get(i + 1).copied();
                        if i > start
                            && ((chars[i] == '-' && nx == Some('-'))
                                || (chars[i] == '/' && nx == Some('*')))
                        {
                            break;
                        }
                        i += 1;
                    }
                    out.push(Tok::Op(chars[start..i].iter().collect()));
                    continue;
                }
                _ => out.push(Tok::Op(c.to_string())),
            }
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<String> {
        tokenize(sql, false)
            .into_iter()
            .filter_map(|t| match t {
                Tok::Word(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_strings_and_quotes_hide_their_content() {
        assert_eq!(words("SELECT 1 -- DROP TABLE x\n"), ["select"]);
        assert_eq!(words("/* DROP /* nested */ TABLE */ Select"), ["select"]);
        assert_eq!(
            words("select 'drop table x', $$drop$$, $f$ drop $f$"),
            ["select"]
        );
        assert_eq!(words("select E'it\\'s drop', 'it''s drop'"), ["select"]);
        assert_eq!(
            words("select U&'d\\0072op', X'ff', B'01', N'x'"),
            ["select"]
        );
        assert_eq!(
            tokenize("select \"DROP\"\"x\"", false)[1],
            Tok::Quoted("DROP\"x".into())
        );
        assert_eq!(
            words("select a$b, $1 from t"),
            ["select", "a$b", "from", "t"]
        );
    }

    #[test]
    fn operators_stop_at_comments_and_numbers_stay_whole() {
        let t = tokenize("1+-- c\n2 <->/* x */3 1.5e-3", false);
        assert_eq!(
            t,
            [
                Tok::Num,
                Tok::Op("+".into()),
                Tok::Num,
                Tok::Op("<->".into()),
                Tok::Num,
                Tok::Num
            ]
        );
    }

    #[test]
    fn backslash_reading_changes_where_a_literal_ends() {
        // With standard_conforming_strings = off the literal ends early and DROP is code.
        let sql = "select 'a\\'';drop table t;--'";
        assert!(!words(sql).contains(&"drop".to_string()));
        let off: Vec<Tok> = tokenize(sql, true);
        assert!(off.iter().any(|t| t.is_word("drop")), "{off:?}");
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for s in [
            "'abc", "\"abc", "$$abc", "/* abc", "E'\\", "U&", "$", "$a", "é",
        ] {
            let _ = tokenize(s, false);
            let _ = tokenize(s, true);
        }
    }
}
