//! Quoting for the statements PostgreSQL cannot take bind parameters in (`CREATE ROLE`,
//! `CREATE DATABASE`, `GRANT`). Everything interpolated into SQL in this crate goes through
//! here; nothing else builds SQL from strings.

use thiserror::Error;

/// A value PostgreSQL cannot hold in a string literal or an identifier.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("contains a NUL byte, which PostgreSQL cannot store in a name or a string")]
pub(crate) struct NulByte;

/// `text` as a string literal that reads back as `text` whatever `standard_conforming_strings`
/// is set to: single quotes doubled, and, when the text holds a backslash, the `E''` form with
/// backslashes doubled (what PostgreSQL's own `quote_literal` does).
pub(crate) fn quote_literal(text: &str) -> Result<String, NulByte> {
    if text.contains('\0') {
        return Err(NulByte);
    }
    let mut quoted = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        quoted.push('E');
    }
    quoted.push('\'');
    for c in text.chars() {
        if c == '\'' || c == '\\' {
            quoted.push(c);
        }
        quoted.push(c);
    }
    quoted.push('\'');
    Ok(quoted)
}

/// `name` as a quoted identifier: double quotes doubled, the whole in double quotes, so the
/// name keeps its case and can never end the identifier early.
pub(crate) fn quote_ident(name: &str) -> Result<String, NulByte> {
    if name.contains('\0') {
        return Err(NulByte);
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_and_backslashes() {
        let cases = [
            ("", "''"),
            ("pencil", "'pencil'"),
            ("it's", "'it''s'"),
            ("''", "''''''"),
            (r"back\slash", r"E'back\\slash'"),
            (r"it's\", r"E'it''s\\'"),
            ("'; DROP ROLE x; --", "'''; DROP ROLE x; --'"),
            ("ünïcödé", "'ünïcödé'"),
        ];
        for (text, quoted) in cases {
            assert_eq!(quote_literal(text), Ok(quoted.to_owned()), "{text:?}");
        }
    }

    #[test]
    fn identifiers_double_double_quotes() {
        assert_eq!(
            quote_ident("maintainpro_app"),
            Ok("\"maintainpro_app\"".to_owned())
        );
        assert_eq!(quote_ident("a\"b"), Ok("\"a\"\"b\"".to_owned()));
        assert_eq!(quote_ident("Mixed Case"), Ok("\"Mixed Case\"".to_owned()));
    }

    #[test]
    fn nul_bytes_are_rejected() {
        assert_eq!(quote_literal("a\0b"), Err(NulByte));
        assert_eq!(quote_ident("a\0b"), Err(NulByte));
    }
}
