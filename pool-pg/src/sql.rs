//! Rendering SQL text on the client side: positional placeholders, string literals and
//! identifiers.
//!
//! [`substitute_placeholders`] replaces the positional placeholders `$1`, `$2`, ... of a
//! statement with ready-made SQL text (typically produced by [`quote_literal`]), which is
//! what the simple query protocol needs because it has no separate parameters.
//! [`max_placeholder`] tells how many values a statement expects. [`quote_literal`],
//! [`quote_identifier`] and [`quote_qualified_name`] turn arbitrary text into SQL that
//! means exactly that text.
//!
//! # Lexing
//!
//! Placeholders are found with a small lexer that follows PostgreSQL's own rules closely
//! enough to tell code from everything else:
//!
//! - string literals `'...'` with `''` escapes, including the `B'...'`, `X'...'`,
//!   `N'...'` and `U&'...'` forms; `E'...'` strings additionally treat a backslash as an
//!   escape character (`E'\''` is one literal), but only when the `E` is a word of its own
//!   (`type'x'` is the identifier `type` followed by the literal `'x'`);
//! - quoted identifiers `"..."` with `""` escapes;
//! - dollar-quoted strings `$$...$$` and `$tag$...$tag$`, where the tag is an identifier
//!   without `$`;
//! - line comments `-- ...` and block comments `/* ... */`, which nest;
//! - identifiers, which may contain `$` after their first character, so `a$1` is one
//!   identifier and not `a` followed by a placeholder.
//!
//! A placeholder is `$` followed by all the decimal digits after it (`$10` is parameter
//! ten), wherever `$` is not part of an identifier or of one of the constructs above. A
//! statement whose literal, identifier, dollar quote or block comment is not closed is
//! rejected with [`SqlTextError::UnterminatedQuote`].
//!
//! Plain `'...'` literals are lexed as PostgreSQL does with `standard_conforming_strings`
//! on (the default since PostgreSQL 9.1): a backslash in them is an ordinary character.

use std::fmt;

/// Why a statement or name cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlTextError {
    /// The statement uses the placeholder `$index`, but only `given` values were supplied.
    ///
    /// `index` is 0 for the placeholder `$0` (parameters are numbered from 1) and
    /// saturates at `usize::MAX` for numbers too large to represent.
    MissingParameter {
        /// The number of the placeholder.
        index: usize,
        /// How many values were supplied.
        given: usize,
    },
    /// A NUL byte in text that must go into a literal or an identifier; PostgreSQL cannot
    /// store it in either.
    NulByte,
    /// An empty identifier, or an empty part in a qualified name (`a..b`, `.a`, `a.`).
    EmptyName,
    /// The SQL has an unterminated string literal, quoted identifier, dollar quote or block
    /// comment; or a name has an unterminated or misplaced double quote (such as `"a"b`
    /// or `a"b"`).
    UnterminatedQuote,
}

impl fmt::Display for SqlTextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingParameter { index: 0, .. } => {
                f.write_str("parameter $0 is used but parameters are numbered from $1")
            }
            Self::MissingParameter { index, given: 0 } => {
                write!(f, "parameter ${index} is used but no values were given")
            }
            Self::MissingParameter { index, given: 1 } => {
                write!(f, "parameter ${index} is used but only 1 value was given")
            }
            Self::MissingParameter { index, given } => {
                write!(
                    f,
                    "parameter ${index} is used but only {given} values were given"
                )
            }
            Self::NulByte => f.write_str("a NUL byte cannot appear in a literal or identifier"),
            Self::EmptyName => f.write_str("empty identifier or empty part in a qualified name"),
            Self::UnterminatedQuote => f.write_str(
                "unterminated or misplaced quote, quoted identifier, dollar quote or comment",
            ),
        }
    }
}

impl std::error::Error for SqlTextError {}

/// Replaces every positional placeholder `$1`, `$2`, ... that appears in code (not inside
/// a string literal, quoted identifier, dollar-quoted string or comment) with
/// `literals[n - 1]` and returns the new SQL.
///
/// Everything else is copied unchanged, so `$1::int` becomes `<literal>::int`. A single
/// space is put between an inserted literal and its neighbour only where the two would
/// otherwise run together into a different token: two word characters (`1$1` with `2`
/// would read as `12`), two operator characters (`1-$1` with `-5` would start a `--`
/// comment), two `'` (`'a'$1` with `'b'` would read as the single literal `a'b`) or two
/// `"`.
///
/// # Errors
///
/// [`SqlTextError::MissingParameter`] if a placeholder has no value (including `$0`), and
/// [`SqlTextError::UnterminatedQuote`] if the SQL does not lex.
pub(crate) fn substitute_placeholders(
    sql: &str,
    literals: &[String],
) -> Result<String, SqlTextError> {
    let mut out =
        String::with_capacity(sql.len() + literals.iter().map(String::len).sum::<usize>());
    let mut copied = 0;
    for token in Lexer::new(sql) {
        let token = token?;
        let TokenKind::Placeholder(index) = token.kind else {
            continue;
        };
        let literal = index.checked_sub(1).and_then(|i| literals.get(i)).ok_or(
            SqlTextError::MissingParameter {
                index,
                given: literals.len(),
            },
        )?;
        out.push_str(&sql[copied..token.start]);
        push_separated(&mut out, literal, sql.as_bytes().get(token.end).copied());
        copied = token.end;
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// The highest placeholder number used in code (0 if there is none), found with the same
/// lexing rules as [`substitute_placeholders`].
///
/// # Errors
///
/// [`SqlTextError::UnterminatedQuote`] if the SQL does not lex.
pub(crate) fn max_placeholder(sql: &str) -> Result<usize, SqlTextError> {
    let mut max = 0;
    for token in Lexer::new(sql) {
        if let TokenKind::Placeholder(index) = token?.kind {
            max = max.max(index);
        }
    }
    Ok(max)
}

/// A string literal for arbitrary text: `'...'` with every `'` doubled.
///
/// If the text contains a backslash, the `E'...'` form is used, with backslashes doubled
/// as well, so that the literal means the same text whatever `standard_conforming_strings`
/// is set to.
///
/// # Errors
///
/// [`SqlTextError::NulByte`] if the text contains a NUL byte.
#[cfg(test)]
pub(crate) fn quote_literal(text: &str) -> Result<String, SqlTextError> {
    if text.contains('\0') {
        return Err(SqlTextError::NulByte);
    }
    let backslash = text.contains('\\');
    let mut out = String::with_capacity(text.len() + 3);
    if backslash {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

/// A quoted identifier: `"..."` with every `"` doubled. The name is taken as written, with
/// no case folding.
///
/// # Errors
///
/// [`SqlTextError::EmptyName`] if the name is empty, [`SqlTextError::NulByte`] if it
/// contains a NUL byte.
pub(crate) fn quote_identifier(name: &str) -> Result<String, SqlTextError> {
    if name.is_empty() {
        return Err(SqlTextError::EmptyName);
    }
    if name.contains('\0') {
        return Err(SqlTextError::NulByte);
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// A possibly schema-qualified function or table name from user input, such as `my_func`,
/// `public.my_func`, `"Weird.Name"` or `sch."Mixed Case"`, rendered as SQL.
///
/// The name is split on the dots outside double quotes. A part that is in double quotes
/// is kept verbatim after checking that it is properly closed (with `""` as the escaped
/// quote). Any other part is quoted with [`quote_identifier`] as written: there is no case
/// folding (`MyFunc` becomes `"MyFunc"`) and no trimming of white space. The parts are
/// joined with `.`.
///
/// # Errors
///
/// - [`SqlTextError::EmptyName`] for an empty name, an empty part (`a..b`, `.a`, `a.`) or
///   an empty quoted part (`""`);
/// - [`SqlTextError::UnterminatedQuote`] for a double quote that is not closed, or that
///   does not enclose a whole part (`"a"b`, `a"b"`);
/// - [`SqlTextError::NulByte`] for a NUL byte.
pub(crate) fn quote_qualified_name(name: &str) -> Result<String, SqlTextError> {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len() + 2);
    let mut start = 0;
    loop {
        let end = if bytes.get(start) == Some(&b'"') {
            let end = scan_quoted(bytes, start + 1, b'"', false)?;
            if end == start + 2 {
                return Err(SqlTextError::EmptyName);
            }
            let part = &name[start..end];
            if part.contains('\0') {
                return Err(SqlTextError::NulByte);
            }
            out.push_str(part);
            end
        } else {
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'.' || b == b'"')
                .map_or(bytes.len(), |p| start + p);
            out.push_str(&quote_identifier(&name[start..end])?);
            end
        };
        match bytes.get(end) {
            None => return Ok(out),
            Some(b'.') => {
                out.push('.');
                start = end + 1;
            }
            Some(_) => return Err(SqlTextError::UnterminatedQuote),
        }
    }
}

/// Appends `literal` to `out`, with a space on either side where it would otherwise run
/// together with the text before it (the end of `out`) or after it (`next`).
fn push_separated(out: &mut String, literal: &str, next: Option<u8>) {
    let prev = out.as_bytes().last().copied();
    let (Some(&first), Some(&last)) = (literal.as_bytes().first(), literal.as_bytes().last())
    else {
        // Nothing to insert, but the text on both sides now meets.
        if let (Some(prev), Some(next)) = (prev, next)
            && glues(prev, next)
        {
            out.push(' ');
        }
        return;
    };
    if prev.is_some_and(|prev| glues(prev, first)) {
        out.push(' ');
    }
    out.push_str(literal);
    if next.is_some_and(|next| glues(last, next)) {
        out.push(' ');
    }
}

/// Whether the bytes `left` and `right`, written next to each other, could lex as part of
/// one token (or start a comment) where they were meant to end and start two.
fn glues(left: u8, right: u8) -> bool {
    (is_word_byte(left) && is_word_byte(right))
        || (is_operator_byte(left) && is_operator_byte(right))
        || (left == right && matches!(left, b'\'' | b'"'))
        || (left == b'.' && right.is_ascii_digit())
        || (left.is_ascii_digit() && right == b'.')
}

/// A byte that can be part of an identifier, keyword, number or placeholder.
fn is_word_byte(b: u8) -> bool {
    is_ident_cont(b)
}

/// A byte that can be part of an operator (or of `--` and `/*`).
fn is_operator_byte(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

/// A byte that can start an identifier (and a dollar-quote tag). Every byte of a non-ASCII
/// character counts, as in PostgreSQL.
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// A byte that can continue a dollar-quote tag.
fn is_tag_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

/// A byte that can continue an identifier.
fn is_ident_cont(b: u8) -> bool {
    is_tag_cont(b) || b == b'$'
}

/// Scans the body of a quoted construct whose opening quote is just before `start` and
/// returns the index just past the closing `quote`. A doubled quote is an escaped quote;
/// with `backslash`, a backslash escapes the byte after it.
fn scan_quoted(
    bytes: &[u8],
    start: usize,
    quote: u8,
    backslash: bool,
) -> Result<usize, SqlTextError> {
    let mut i = start;
    while let Some(&b) = bytes.get(i) {
        if b == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return Ok(i + 1);
            }
        } else if backslash && b == b'\\' {
            i += 2;
        } else {
            i += 1;
        }
    }
    Err(SqlTextError::UnterminatedQuote)
}

/// What a [`Token`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    /// Code other than a placeholder: an identifier or keyword, or a single other byte.
    Code,
    /// A positional placeholder `$n`, with its number (saturating at `usize::MAX`).
    Placeholder(usize),
    /// A string literal, including its prefix (`E`) if any and its quotes.
    Literal,
    /// A quoted identifier, including its quotes.
    QuotedIdentifier,
    /// A dollar-quoted string, including both delimiters.
    DollarQuoted,
    /// A line or block comment.
    Comment,
}

/// A piece of SQL text: `sql[start..end]`. Both ends are on character boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    /// What the piece is.
    kind: TokenKind,
    /// Index of its first byte.
    start: usize,
    /// Index just past its last byte.
    end: usize,
}

/// Splits SQL text into [`Token`]s that cover it completely, in order. Stops after the
/// first error.
#[derive(Debug)]
struct Lexer<'a> {
    /// The SQL text.
    sql: &'a str,
    /// Where the next token starts.
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer for `sql`.
    fn new(sql: &'a str) -> Self {
        Self { sql, pos: 0 }
    }

    /// The kind and end of the token that starts at `start`, which is before the end.
    fn token_at(&self, start: usize) -> Result<(TokenKind, usize), SqlTextError> {
        let bytes = self.sql.as_bytes();
        let at = |i: usize| bytes.get(i).copied();
        match bytes[start] {
            b'\'' => Ok((
                TokenKind::Literal,
                scan_quoted(bytes, start + 1, b'\'', false)?,
            )),
            b'"' => Ok((
                TokenKind::QuotedIdentifier,
                scan_quoted(bytes, start + 1, b'"', false)?,
            )),
            b'-' if at(start + 1) == Some(b'-') => {
                let end = bytes[start..]
                    .iter()
                    .position(|&b| b == b'\n' || b == b'\r')
                    .map_or(bytes.len(), |p| start + p);
                Ok((TokenKind::Comment, end))
            }
            b'/' if at(start + 1) == Some(b'*') => {
                Ok((TokenKind::Comment, self.block_comment_end(start + 2)?))
            }
            b'$' => Ok(self.after_dollar(start)?),
            b if is_ident_start(b) => {
                let end = bytes[start..]
                    .iter()
                    .position(|&b| !is_ident_cont(b))
                    .map_or(bytes.len(), |p| start + p);
                if end == start + 1 && matches!(b, b'E' | b'e') && at(end) == Some(b'\'') {
                    Ok((
                        TokenKind::Literal,
                        scan_quoted(bytes, end + 1, b'\'', true)?,
                    ))
                } else {
                    Ok((TokenKind::Code, end))
                }
            }
            _ => Ok((TokenKind::Code, start + 1)),
        }
    }

    /// The end of a block comment whose opening `/*` is just before `start`.
    ///
    /// Follows PostgreSQL's rules for the inside of a comment: every `/*` opens a nested
    /// comment and every `*/` closes one.
    fn block_comment_end(&self, start: usize) -> Result<usize, SqlTextError> {
        let bytes = self.sql.as_bytes();
        let mut depth = 1_usize;
        let mut i = start;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'/' if bytes.get(i + 1) == Some(&b'*') => {
                    depth += 1;
                    i += 2;
                }
                b'*' => {
                    while bytes.get(i) == Some(&b'*') {
                        i += 1;
                    }
                    if bytes.get(i) == Some(&b'/') {
                        i += 1;
                        depth -= 1;
                        if depth == 0 {
                            return Ok(i);
                        }
                    }
                }
                _ => i += 1,
            }
        }
        Err(SqlTextError::UnterminatedQuote)
    }

    /// The token that starts with the `$` at `start` (not inside an identifier): a
    /// placeholder, a dollar-quoted string, or a lone `$`.
    fn after_dollar(&self, start: usize) -> Result<(TokenKind, usize), SqlTextError> {
        let bytes = self.sql.as_bytes();
        let digits = bytes[start + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 {
            let end = start + 1 + digits;
            let number = bytes[start + 1..end].iter().fold(0_usize, |n, &d| {
                n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
            });
            return Ok((TokenKind::Placeholder(number), end));
        }
        let tag_len = match bytes.get(start + 1) {
            Some(&b) if is_ident_start(b) => bytes[start + 1..]
                .iter()
                .take_while(|&&b| is_tag_cont(b))
                .count(),
            _ => 0,
        };
        let delimiter_end = start + 1 + tag_len + 1;
        if bytes.get(delimiter_end - 1) != Some(&b'$') {
            // `$abc` without a closing `$`: PostgreSQL reads a lone `$`, then goes on.
            return Ok((TokenKind::Code, start + 1));
        }
        let delimiter = &self.sql[start..delimiter_end];
        match self.sql[delimiter_end..].find(delimiter) {
            Some(p) => Ok((TokenKind::DollarQuoted, delimiter_end + p + delimiter.len())),
            None => Err(SqlTextError::UnterminatedQuote),
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Result<Token, SqlTextError>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos;
        if start >= self.sql.len() {
            return None;
        }
        match self.token_at(start) {
            Ok((kind, end)) => {
                self.pos = end;
                Some(Ok(Token { kind, start, end }))
            }
            Err(e) => {
                self.pos = self.sql.len();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    fn sub(sql: &str, values: &[&str]) -> Result<String, SqlTextError> {
        substitute_placeholders(sql, &lits(values))
    }

    fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
        Lexer::new(sql)
            .map(|t| {
                let t = t.unwrap();
                (t.kind, &sql[t.start..t.end])
            })
            .filter(|(k, _)| *k != TokenKind::Code)
            .collect()
    }

    #[test]
    fn basic_substitution() {
        assert_eq!(
            sub("SELECT $1, $2", &["'a'", "42"]).unwrap(),
            "SELECT 'a', 42"
        );
        assert_eq!(sub("SELECT 1", &[]).unwrap(), "SELECT 1");
        assert_eq!(sub("", &[]).unwrap(), "");
        assert_eq!(sub("$1", &["x"]).unwrap(), "x");
        assert_eq!(
            sub("SELECT $2, $1, $2", &["1", "2"]).unwrap(),
            "SELECT 2, 1, 2"
        );
        assert_eq!(
            sub("SELECT 'é', $1 -- ü", &["'ö'"]).unwrap(),
            "SELECT 'é', 'ö' -- ü"
        );
    }

    #[test]
    fn ten_is_not_one_followed_by_zero() {
        let values: Vec<String> = (1..=10).map(|i| format!("v{i}")).collect();
        assert_eq!(
            substitute_placeholders("SELECT $1, $10", &values).unwrap(),
            "SELECT v1, v10"
        );
        assert_eq!(
            sub("SELECT $10", &["a", "b"]),
            Err(SqlTextError::MissingParameter {
                index: 10,
                given: 2
            })
        );
        assert_eq!(max_placeholder("SELECT $1, $10").unwrap(), 10);
    }

    #[test]
    fn placeholders_in_strings_identifiers_and_comments_are_untouched() {
        let v = &["X", "Y"];
        for sql in [
            "SELECT '$1'",
            "SELECT 'it''s $1'",
            "SELECT E'\\'$1'",
            "SELECT e'a\\\\' || $2",
            "SELECT \"$1\"",
            "SELECT \"a\"\"$1\"",
            "SELECT $$ $1 $$",
            "SELECT $tag$ $1 $ $$ $tag $tag$",
            "SELECT $a_1$ $1 $a_1$",
            "SELECT 1 -- $1",
            "SELECT 1 /* $1 */",
            "SELECT 1 /* /* $1 */ $1 */",
            "SELECT U&'$1', B'$1', X'$1', N'$1'",
        ] {
            let expected = sql.replace("$2", "Y");
            assert_eq!(sub(sql, v).unwrap(), expected, "{sql}");
        }
        assert_eq!(
            sub("SELECT '$1', $1 -- $1\n, $1 /* $1 */", &["'z'"]).unwrap(),
            "SELECT '$1', 'z' -- $1\n, 'z' /* $1 */"
        );
        assert_eq!(
            sub("SELECT $q$ $1 $q$ || $1", &["'z'"]).unwrap(),
            "SELECT $q$ $1 $q$ || 'z'"
        );
        assert_eq!(
            sub("SELECT E'\\'$1' || $1", &["'z'"]).unwrap(),
            "SELECT E'\\'$1' || 'z'"
        );
        assert_eq!(
            sub("SELECT /* a /* b */ $1 */ $1", &["'z'"]).unwrap(),
            "SELECT /* a /* b */ $1 */ 'z'"
        );
        assert_eq!(sub("-- $1\r$1", &["7"]).unwrap(), "-- $1\r7");
    }

    #[test]
    fn e_must_be_a_word_of_its_own() {
        // `type'x\'` is the identifier `type` followed by a plain literal `'x\'`, whose
        // backslash is ordinary, so the `$1` after it is code.
        assert_eq!(
            sub("SELECT type'x\\' = $1", &["'z'"]).unwrap(),
            "SELECT type'x\\' = 'z'"
        );
        assert_eq!(
            kinds("e'a\\'b' E'c' xe'd'"),
            vec![
                (TokenKind::Literal, "e'a\\'b'"),
                (TokenKind::Literal, "E'c'"),
                (TokenKind::Literal, "'d'"),
            ]
        );
    }

    #[test]
    fn dollar_inside_identifiers_is_not_a_placeholder() {
        assert_eq!(sub("SELECT a$1, $1", &["9"]).unwrap(), "SELECT a$1, 9");
        assert_eq!(sub("SELECT a$b$ $1", &["9"]).unwrap(), "SELECT a$b$ 9");
        assert_eq!(max_placeholder("SELECT x$1, _$2, é$3").unwrap(), 0);
        // A lone `$` or an unclosed tag is just a `$`.
        assert_eq!(
            sub("SELECT $abc, $1, $", &["9"]).unwrap(),
            "SELECT $abc, 9, $"
        );
    }

    #[test]
    fn casts_after_placeholders() {
        assert_eq!(
            sub("SELECT $1::int, $2::text[]", &["'5'", "'{a}'"]).unwrap(),
            "SELECT '5'::int, '{a}'::text[]"
        );
        assert_eq!(sub("SELECT $1::int", &["5"]).unwrap(), "SELECT 5::int");
    }

    #[test]
    fn literals_do_not_run_into_their_neighbours() {
        assert_eq!(sub("SELECT 1-$1", &["-5"]).unwrap(), "SELECT 1- -5");
        assert_eq!(sub("SELECT 4/$1", &["*"]).unwrap(), "SELECT 4/ *");
        assert_eq!(sub("SELECT 'a'$1", &["'b'"]).unwrap(), "SELECT 'a' 'b'");
        assert_eq!(sub("SELECT $1$2", &["1", "2"]).unwrap(), "SELECT 1 2");
        assert_eq!(
            sub("SELECT $1$2", &["'a'", "'b'"]).unwrap(),
            "SELECT 'a' 'b'"
        );
        assert_eq!(sub("SELECT 1$1", &["2"]).unwrap(), "SELECT 1 2");
        assert_eq!(sub("SELECT $1.5", &["1"]).unwrap(), "SELECT 1 .5");
        assert_eq!(sub("SELECT 1-$1-1", &[""]).unwrap(), "SELECT 1- -1");
        assert_eq!(sub("SELECT ($1)", &[""]).unwrap(), "SELECT ()");
    }

    #[test]
    fn missing_parameters() {
        assert_eq!(
            sub("SELECT $1, $3", &["a", "b"]),
            Err(SqlTextError::MissingParameter { index: 3, given: 2 })
        );
        assert_eq!(
            sub("SELECT $1", &[]),
            Err(SqlTextError::MissingParameter { index: 1, given: 0 })
        );
        assert_eq!(
            sub("SELECT $0", &["a"]),
            Err(SqlTextError::MissingParameter { index: 0, given: 1 })
        );
        assert_eq!(
            sub("SELECT $99999999999999999999999999", &["a"]),
            Err(SqlTextError::MissingParameter {
                index: usize::MAX,
                given: 1
            })
        );
        assert_eq!(
            SqlTextError::MissingParameter { index: 3, given: 2 }.to_string(),
            "parameter $3 is used but only 2 values were given"
        );
        assert_eq!(
            SqlTextError::MissingParameter { index: 2, given: 1 }.to_string(),
            "parameter $2 is used but only 1 value was given"
        );
        assert_eq!(
            SqlTextError::MissingParameter { index: 1, given: 0 }.to_string(),
            "parameter $1 is used but no values were given"
        );
    }

    #[test]
    fn unterminated() {
        for sql in [
            "SELECT 'abc",
            "SELECT 'it''",
            "SELECT E'abc\\'",
            "SELECT E'abc\\",
            "SELECT \"abc",
            "SELECT \"a\"\"",
            "SELECT $$abc",
            "SELECT $$abc$",
            "SELECT $a$ abc $b$",
            "SELECT $a$ abc $A$",
            "SELECT /* abc",
            "SELECT /* /* abc */",
            "SELECT /* abc /*/ */",
            "SELECT /*/",
            "SELECT /* //* */",
        ] {
            assert_eq!(
                sub(sql, &["x"]),
                Err(SqlTextError::UnterminatedQuote),
                "{sql}"
            );
            assert_eq!(
                max_placeholder(sql),
                Err(SqlTextError::UnterminatedQuote),
                "{sql}"
            );
        }
        // The error wins even when a placeholder comes first.
        assert_eq!(
            sub("SELECT $1, 'abc", &["x"]),
            Err(SqlTextError::UnterminatedQuote)
        );
        // A line comment may end the text.
        assert_eq!(
            sub("SELECT $1 -- 'abc", &["x"]).unwrap(),
            "SELECT x -- 'abc"
        );
        assert_eq!(sub("/* //* */ */ $1", &["x"]).unwrap(), "/* //* */ */ x");
        assert_eq!(sub("/* /*/ */ */ $1", &["x"]).unwrap(), "/* /*/ */ */ x");
        assert_eq!(sub("/* **/ $1", &["x"]).unwrap(), "/* **/ x");
        assert_eq!(sub("/***/ $1", &["x"]).unwrap(), "/***/ x");
    }

    #[test]
    fn max_placeholder_counts_code_only() {
        assert_eq!(max_placeholder("").unwrap(), 0);
        assert_eq!(max_placeholder("SELECT 1").unwrap(), 0);
        assert_eq!(max_placeholder("SELECT $2, $1").unwrap(), 2);
        assert_eq!(max_placeholder("SELECT $3::int, '$9', \"$9\"").unwrap(), 3);
        assert_eq!(max_placeholder("SELECT $$ $9 $$, $1 -- $9").unwrap(), 1);
        assert_eq!(max_placeholder("SELECT /* /* $9 */ */ $0").unwrap(), 0);
        assert_eq!(max_placeholder("SELECT $007").unwrap(), 7);
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("").unwrap(), "''");
        assert_eq!(quote_literal("abc").unwrap(), "'abc'");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal("''").unwrap(), "''''''");
        assert_eq!(quote_literal("a\\b").unwrap(), "E'a\\\\b'");
        assert_eq!(quote_literal("\\'").unwrap(), "E'\\\\'''");
        assert_eq!(quote_literal("héllo ☃ 𝄞").unwrap(), "'héllo ☃ 𝄞'");
        assert_eq!(quote_literal("$1 -- \"x\"").unwrap(), "'$1 -- \"x\"'");
        assert_eq!(quote_literal("a\0b"), Err(SqlTextError::NulByte));
        assert_eq!(quote_literal("\\\0"), Err(SqlTextError::NulByte));
    }

    #[test]
    fn identifiers() {
        assert_eq!(quote_identifier("a").unwrap(), "\"a\"");
        assert_eq!(quote_identifier("MyTable").unwrap(), "\"MyTable\"");
        assert_eq!(quote_identifier("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_identifier("\"").unwrap(), "\"\"\"\"");
        assert_eq!(quote_identifier("a.b c").unwrap(), "\"a.b c\"");
        assert_eq!(quote_identifier("ü").unwrap(), "\"ü\"");
        assert_eq!(quote_identifier(""), Err(SqlTextError::EmptyName));
        assert_eq!(quote_identifier("a\0"), Err(SqlTextError::NulByte));
    }

    #[test]
    fn qualified_names() {
        let q = quote_qualified_name;
        assert_eq!(q("f").unwrap(), "\"f\"");
        assert_eq!(q("public.f").unwrap(), "\"public\".\"f\"");
        assert_eq!(q("\"a.b\".c").unwrap(), "\"a.b\".\"c\"");
        assert_eq!(q("MyFunc").unwrap(), "\"MyFunc\"");
        assert_eq!(q("s.\"x\"\"y\"").unwrap(), "\"s\".\"x\"\"y\"");
        assert_eq!(q("\"Weird.Name\"").unwrap(), "\"Weird.Name\"");
        assert_eq!(q("sch.\"Mixed Case\"").unwrap(), "\"sch\".\"Mixed Case\"");
        assert_eq!(q("db.s.t").unwrap(), "\"db\".\"s\".\"t\"");
        assert_eq!(q("\"a\".\"b\"").unwrap(), "\"a\".\"b\"");
        for empty in ["", "a..b", ".a", "a.", ".", "\"\"", "a.\"\""] {
            assert_eq!(q(empty), Err(SqlTextError::EmptyName), "{empty}");
        }
        for bad in [
            "\"a", "s.\"a", "\"a\"\"", "\"a\"b", "a\"b\"", "a\"b", "\"a\" .b",
        ] {
            assert_eq!(q(bad), Err(SqlTextError::UnterminatedQuote), "{bad}");
        }
        assert_eq!(q("a\0.b"), Err(SqlTextError::NulByte));
        assert_eq!(q("a.\"b\0\""), Err(SqlTextError::NulByte));
    }

    #[test]
    fn error_messages() {
        for e in [
            SqlTextError::MissingParameter { index: 0, given: 0 },
            SqlTextError::NulByte,
            SqlTextError::EmptyName,
            SqlTextError::UnterminatedQuote,
        ] {
            let message = e.to_string();
            assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    /// A tiny xorshift generator, for reproducible random tests.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }

    /// Decodes a literal produced by `quote_literal`: only `''` and (in `E'...'`) `\\`
    /// escapes can occur.
    fn decode_literal(literal: &str) -> String {
        let (escaped, body) = match literal.strip_prefix('E') {
            Some(rest) => (true, rest),
            None => (false, literal),
        };
        let body = &body[1..body.len() - 1];
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' => assert_eq!(chars.next(), Some('\''), "{literal}"),
                '\\' if escaped => assert_eq!(chars.next(), Some('\\'), "{literal}"),
                _ => {}
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn random_text_quotes_to_one_complete_literal() {
        const PIECES: &[&str] = &[
            "'", "''", "\\", "\\'", "\"", "$", "$$", "$1", "$a$", "--", "/*", "*/", "\n", "\r",
            " ", "a", "E", "e'", "é", "☃", "𝄞", "\0", ";", "x",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut nul_errors = 0;
        for _ in 0..5000 {
            let len = rng.below(12);
            let text: String = (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            let literal = match quote_literal(&text) {
                Ok(literal) => literal,
                Err(e) => {
                    assert_eq!(e, SqlTextError::NulByte);
                    assert!(text.contains('\0'));
                    nul_errors += 1;
                    continue;
                }
            };
            let tokens: Vec<Token> = Lexer::new(&literal).map(Result::unwrap).collect();
            assert_eq!(
                tokens,
                vec![Token {
                    kind: TokenKind::Literal,
                    start: 0,
                    end: literal.len()
                }],
                "{text:?} -> {literal:?}"
            );
            assert_eq!(decode_literal(&literal), text);
            // And it stays one literal in context: the placeholder after it is found.
            let sql = format!("SELECT {literal}, $1");
            assert_eq!(max_placeholder(&sql).unwrap(), 1, "{sql}");
            assert_eq!(
                substitute_placeholders(&sql, &lits(&["7"])).unwrap(),
                format!("SELECT {literal}, 7")
            );
        }
        assert!(nul_errors > 0);
    }
}

/// The longest keyword the checks below look for ("deallocate").
const KEYWORD_MAX: usize = 10;

/// For each `;`-separated statement of `sql`: its first word (a run of ASCII letters, anything
/// before it skipped), lowercased, and the rest of the statement after that word. A word too
/// long to be a keyword comes back empty. A rough look at the first word only, which makes
/// the callers' answers err towards yes (see [`statements`] for unterminated text).
///
/// Runs before every statement, so it works on bytes and allocates nothing.
fn statement_heads(sql: &str) -> impl Iterator<Item = ([u8; KEYWORD_MAX], usize, &[u8])> {
    statements(sql).map(|statement| {
        let (word, rest) = next_word(statement);
        let (lower, len) = keyword(word);
        (lower, len, rest)
    })
}

/// `word` in lowercase and its length, or nothing (length 0) if it is longer than any keyword
/// looked for.
fn keyword(word: &[u8]) -> ([u8; KEYWORD_MAX], usize) {
    let mut lower = [0u8; KEYWORD_MAX];
    if word.len() > KEYWORD_MAX {
        return (lower, 0);
    }
    for (to, from) in lower.iter_mut().zip(word) {
        *to = from.to_ascii_lowercase();
    }
    (lower, word.len())
}

/// `sql` cut at each `;` that PostgreSQL would read as one: not inside a string literal (`E''`
/// escapes included), a quoted identifier, a dollar-quoted string or a comment ([`Lexer`]'s
/// rules). From a construct left unterminated on, every `;` cuts: the callers above can only
/// see more statements then, and so say yes more often, never less.
fn statements(sql: &str) -> impl Iterator<Item = &[u8]> {
    let bytes = sql.as_bytes();
    let mut lexer = Lexer::new(sql);
    let mut start = 0;
    // Without a `;` there is nothing to cut, and no need to lex (most statements).
    let mut rough = !bytes.contains(&b';');
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while !rough {
            match lexer.next() {
                Some(Ok(token)) if token.kind == TokenKind::Code && bytes[token.start] == b';' => {
                    let statement = &bytes[start..token.start];
                    start = token.end;
                    return Some(statement);
                }
                // A backslash in a plain literal ends it early where the server runs with
                // `standard_conforming_strings = off`: `'a\'';` is a finished literal there.
                // Read either way, that text is cut at every `;` from here on.
                Some(Ok(token))
                    if token.kind == TokenKind::Literal
                        && bytes[token.start] == b'\''
                        && bytes[token.start..token.end].contains(&b'\\') =>
                {
                    rough = true;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => rough = true,
                None => {
                    done = true;
                    return Some(&bytes[start..]);
                }
            }
        }
        match bytes[start..].iter().position(|&b| b == b';') {
            Some(at) => {
                let statement = &bytes[start..start + at];
                start += at + 1;
                Some(statement)
            }
            None => {
                done = true;
                Some(&bytes[start..])
            }
        }
    })
}

/// `text` without the blanks and comments (`-- ...` to the end of the line, `/* ... */`,
/// nested) it starts with. An unterminated block comment takes the rest.
fn skip_blanks_and_comments(mut text: &[u8]) -> &[u8] {
    loop {
        let blank = text
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(text.len());
        text = &text[blank..];
        if let Some(rest) = text.strip_prefix(b"--") {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            text = &rest[end..];
        } else if text.starts_with(b"/*") {
            let mut depth = 0usize;
            let mut i = 0;
            while i < text.len() {
                if text[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if text[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            text = &text[i.min(text.len())..];
        } else {
            return text;
        }
    }
}

/// The first run of ASCII letters in `text` after its leading blanks and comments, and what
/// follows it.
fn next_word(text: &[u8]) -> (&[u8], &[u8]) {
    let text = skip_blanks_and_comments(text);
    let start = text
        .iter()
        .position(u8::is_ascii_alphabetic)
        .unwrap_or(text.len());
    let text = &text[start..];
    let end = text
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Whether `sql` may leave a transaction open: any of its statements starts with `BEGIN` or
/// `START` (a rough look that may say yes too often, which only costs a `ROLLBACK` round
/// trip before the connection's next use).
pub(crate) fn may_open_transaction(sql: &str) -> bool {
    statement_heads(sql).any(|(word, len, _)| matches!(&word[..len], b"begin" | b"start"))
}

/// Whether `sql` may end the transaction it runs in: any of its statements starts with
/// `COMMIT`, `END`, `ABORT`, `ROLLBACK` (but not `ROLLBACK TO`, which stays in the
/// transaction) or `PREPARE TRANSACTION`. A look by first keywords that may say yes too
/// often (on unterminated text, say), which only makes a lost connection's outcome reported
/// as unknown where it was known; it must never say no to a statement that ends it.
pub(crate) fn may_end_transaction(sql: &str) -> bool {
    statement_heads(sql).any(|(word, len, rest)| match &word[..len] {
        b"commit" | b"end" | b"abort" => true,
        b"rollback" => {
            // ROLLBACK [ WORK | TRANSACTION ] TO [ SAVEPOINT ] name
            let (mut next, after) = next_word(rest);
            if next.eq_ignore_ascii_case(b"work") || next.eq_ignore_ascii_case(b"transaction") {
                next = next_word(after).0;
            }
            !next.eq_ignore_ascii_case(b"to")
        }
        b"prepare" => next_word(rest).0.eq_ignore_ascii_case(b"transaction"),
        _ => false,
    })
}

/// Whether `sql` may drop the session's prepared statements: any of its statements starts
/// with `DEALLOCATE` or `DISCARD`. A look by first keyword that may say yes too often, which
/// only costs preparing statements again; one it misses (inside a `DO` block, say) shows
/// itself when a dropped statement is next used, which is then prepared again too.
pub(crate) fn may_drop_statements(sql: &str) -> bool {
    statement_heads(sql).any(|(word, len, _)| matches!(&word[..len], b"deallocate" | b"discard"))
}

/// Whether `sql` may change the session's state (transaction control, settings, cursors,
/// listening, prepared statements, temporary objects, locks, `DO` blocks, `COPY`, and the
/// built-in functions of [`calls_session_function`]), which would leak to other callers
/// sharing the connection. A rough look that errs on the side of yes; a function of the
/// caller's own that changes the session is not spotted.
pub(crate) fn may_change_session(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    // Most statements are one statement and call nothing: their first word says it all,
    // found without the lexer's care for where a statement ends.
    if !bytes.iter().any(|&b| b == b';' || b == b'(') {
        let (word, rest) = next_word(bytes);
        let (lower, len) = keyword(word);
        return changes_session(&lower[..len], rest);
    }
    calls_session_function(sql)
        || statement_heads(sql).any(|(word, len, rest)| changes_session(&word[..len], rest))
}

/// Whether a statement that starts with `keyword` (lowercase), followed by `rest`, may change
/// the session's state; see [`may_change_session`].
fn changes_session(keyword: &[u8], rest: &[u8]) -> bool {
    match keyword {
        b"begin" | b"start" | b"commit" | b"rollback" | b"end" | b"abort" | b"savepoint"
        | b"release" | b"set" | b"reset" | b"listen" | b"unlisten" | b"declare" | b"prepare"
        | b"deallocate" | b"discard" | b"lock" | b"fetch" | b"move" | b"do" | b"close"
        | b"copy" => true,
        b"create" => {
            let (next, _) = next_word(rest);
            next.eq_ignore_ascii_case(b"temp") || next.eq_ignore_ascii_case(b"temporary")
        }
        _ => false,
    }
}

/// Whether `sql` calls, by name, a built-in function whose effect outlives its statement:
/// session-level advisory locks (`pg_advisory_lock`, `pg_try_advisory_lock_shared`,
/// `pg_advisory_unlock_all`, ..., but not the `_xact_` ones, which go with the transaction),
/// `set_config` (its third argument, which can make it last only for the transaction, is not
/// read) and `setseed`. Any such name before a `(` counts, in a string or a comment too: this
/// errs on the side of yes.
fn calls_session_function(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    let mut from = 0;
    while let Some(at) = bytes[from..].iter().position(|&b| b == b'(') {
        let open = from + at;
        from = open + 1;
        let before = bytes[..open].trim_ascii_end();
        let name = match before.strip_suffix(b"\"") {
            // A quoted name: what is between the quotes.
            Some(quoted) => {
                let start = quoted.iter().rposition(|&b| b == b'"').map_or(0, |p| p + 1);
                &quoted[start..]
            }
            None => {
                let start = before
                    .iter()
                    .rposition(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
                    .map_or(0, |p| p + 1);
                &before[start..]
            }
        };
        if is_session_function(name) {
            return true;
        }
    }
    false
}

/// See [`calls_session_function`].
fn is_session_function(name: &[u8]) -> bool {
    const LONGEST: usize = "pg_try_advisory_lock_shared".len();
    if name.len() < "setseed".len() || name.len() > LONGEST {
        return false;
    }
    let mut lower = [0u8; LONGEST];
    for (to, from) in lower.iter_mut().zip(name) {
        *to = from.to_ascii_lowercase();
    }
    let name = &lower[..name.len()];
    match name {
        b"set_config" | b"setseed" => true,
        _ => {
            (name.starts_with(b"pg_advisory_") || name.starts_with(b"pg_try_advisory_"))
                && !name.windows(5).any(|w| w == b"xact_")
        }
    }
}

#[cfg(test)]
mod transaction_tests {
    use super::may_open_transaction;

    #[test]
    fn spots_transaction_starts() {
        assert!(may_open_transaction("BEGIN"));
        assert!(may_open_transaction(
            "select 1; begin isolation level serializable"
        ));
        assert!(may_open_transaction("  START TRANSACTION"));
        assert!(!may_open_transaction("SELECT begin_date FROM t"));
        assert!(!may_open_transaction("COMMIT"));
        assert!(!may_open_transaction("beginning"));
        assert!(may_open_transaction(
            "SELECT 1;\tStart transaction read only"
        ));
        // Comments before the keyword, of both kinds, nested, and unterminated.
        assert!(may_open_transaction("/* tag: job 7 */ BEGIN"));
        assert!(may_open_transaction("-- a note\n  begin"));
        assert!(may_open_transaction(
            "/* outer /* inner */ still */ -- x\n/**/START TRANSACTION"
        ));
        assert!(!may_open_transaction("/* BEGIN */ SELECT 1"));
        assert!(!may_open_transaction("-- BEGIN\nSELECT 1"));
        assert!(!may_open_transaction("/* BEGIN"));
        // A `;` inside a comment or a quoted string does not end the statement.
        assert!(may_open_transaction("/* req=1; user=2 */ BEGIN"));
        assert!(may_open_transaction("-- see; note\nBEGIN"));
        assert!(may_open_transaction("/* a */ /* b; c */ START TRANSACTION"));
        assert!(!may_open_transaction("SELECT ';begin'"));
        assert!(!may_open_transaction("SELECT \"a;begin\" FROM t"));
        assert!(may_open_transaction("SELECT 'it''s; fine'; BEGIN"));
        // With `standard_conforming_strings = off` the server reads `'a\''` as a finished
        // literal, and runs the `BEGIN`: a backslash in a plain literal makes every `;` cut.
        assert!(may_open_transaction("SELECT 'a\\''; BEGIN; --'"));
        // An escape string means the same to either setting.
        assert!(!may_open_transaction("SELECT E'a\\'; BEGIN'"));
        // Quotes inside dollar quotes and escaped ones hide nothing after them.
        assert!(may_open_transaction("SELECT $$it's$$; BEGIN"));
        assert!(may_open_transaction("SELECT E'\\''; BEGIN"));
        assert!(!may_open_transaction("SELECT $q$; BEGIN $q$"));
    }

    #[test]
    fn spots_transaction_ends() {
        use super::may_end_transaction;
        assert!(may_end_transaction("COMMIT"));
        assert!(may_end_transaction("insert into t values (1); commit"));
        assert!(may_end_transaction("/* done */ END"));
        assert!(may_end_transaction("abort"));
        assert!(may_end_transaction("ROLLBACK"));
        assert!(may_end_transaction("ROLLBACK WORK"));
        assert!(may_end_transaction("COMMIT AND CHAIN"));
        assert!(may_end_transaction("PREPARE TRANSACTION 'tx1'"));
        assert!(!may_end_transaction("ROLLBACK TO SAVEPOINT a"));
        assert!(!may_end_transaction("rollback transaction to a"));
        assert!(!may_end_transaction("Rollback Work To Savepoint a"));
        assert!(!may_end_transaction("PREPARE q AS SELECT 1"));
        assert!(!may_end_transaction("SELECT committed FROM t"));
        assert!(!may_end_transaction("SELECT 'commit'"));
        assert!(!may_end_transaction("SAVEPOINT a; RELEASE SAVEPOINT a"));
        // A `;` inside a dollar-quoted body does not cut (a DO block cannot end the
        // transaction it runs in)...
        assert!(!may_end_transaction("DO $$ BEGIN PERFORM 1; END $$"));
        assert!(!may_end_transaction(
            "DO $f$ BEGIN PERFORM 1; COMMIT; END $f$"
        ));
        // ...and a quote inside one, or an escaped quote, does not hide what follows.
        assert!(may_end_transaction("SELECT $$it's$$; COMMIT"));
        assert!(may_end_transaction(
            "INSERT INTO t VALUES (E'it\\'s'); COMMIT"
        ));
        assert!(may_end_transaction("SELECT $$ a \" b $$; COMMIT"));
        assert!(may_end_transaction("SELECT $tag$ ' $tag$; end"));
        assert!(may_end_transaction("SELECT \"it's\"; COMMIT"));
        // Unterminated text: every `;` cuts from there on.
        assert!(may_end_transaction("SELECT 'oops; COMMIT"));
        assert!(may_end_transaction("SELECT $$ oops; COMMIT"));
        assert!(may_end_transaction("SELECT 1 /* oops; COMMIT"));
    }

    #[test]
    fn spots_session_changes() {
        use super::may_change_session;
        assert!(may_change_session("SET search_path TO x"));
        assert!(may_change_session("select 1; begin"));
        assert!(may_change_session("CREATE TEMP TABLE t (x int)"));
        assert!(may_change_session(
            "/* from the web app */ SET search_path TO x"
        ));
        assert!(may_change_session(
            "CREATE /* short-lived */ TEMP TABLE t (x int)"
        ));
        assert!(may_change_session("DO $$ BEGIN PERFORM 1; END $$"));
        assert!(!may_change_session("SELECT settings FROM t"));
        assert!(!may_change_session("CREATE TABLE t (x int)"));
        assert!(!may_change_session("INSERT INTO t VALUES (1)"));
        assert!(may_change_session("copy t from stdin"));
        assert!(may_change_session("Create Temporary Table t (x int)"));
        assert!(may_change_session("\n  (DEALLOCATE ALL)"));
        assert!(!may_change_session("deallocated")); // not a keyword: one letter too many
        assert!(!may_change_session("SELECT 'é'; SELECT 2"));
        assert!(!may_change_session(""));
        assert!(may_change_session("SELECT $$it's$$; SET search_path TO x"));
        assert!(may_change_session("SELECT 'a\\'; LISTEN x; --'"));
        // Built-in functions whose effect outlives the statement, wherever they are called.
        assert!(may_change_session("SELECT pg_advisory_lock(42)"));
        assert!(may_change_session(
            "select PG_TRY_ADVISORY_LOCK_SHARED (1, 2)"
        ));
        assert!(may_change_session(
            "SELECT pg_catalog.pg_advisory_unlock_all()"
        ));
        assert!(may_change_session(
            "SELECT x FROM t WHERE set_config('app.user', $1, false) IS NOT NULL"
        ));
        assert!(may_change_session("SELECT setseed(0.5)"));
        assert!(may_change_session("SELECT \"pg_advisory_lock\"(1)"));
        assert!(!may_change_session("SELECT pg_advisory_xact_lock(42)"));
        assert!(!may_change_session(
            "SELECT pg_try_advisory_xact_lock_shared(42)"
        ));
        assert!(!may_change_session(
            "SELECT my_set_config(1), count(*) FROM t"
        ));
        assert!(!may_change_session("SELECT (1)"));
        assert!(!may_change_session("("));
    }

    #[test]
    fn spots_statement_drops() {
        use super::may_drop_statements;
        assert!(may_drop_statements("DISCARD ALL"));
        assert!(may_drop_statements("select 1; deallocate all"));
        assert!(may_drop_statements("/* reset */ Deallocate s1"));
        assert!(!may_drop_statements("SELECT discard FROM t"));
        assert!(!may_drop_statements(
            "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"
        ));
    }
}
