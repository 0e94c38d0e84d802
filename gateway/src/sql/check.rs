//! A strict lexical check of the SQL text tenants send to the SQL endpoint.
//!
//! The proxy calls [`check`] on the text of every simple-protocol Query and
//! extended-protocol Parse message before forwarding it. The check is one
//! layer of defence in depth: it tokenizes the text by PostgreSQL's lexical
//! rules (so comments, quoting, case and whitespace cannot hide anything),
//! splits it into statements and allows only read-only queries, `COPY … TO
//! STDOUT`, `SHOW`, `EXPLAIN` without `ANALYZE` and `SET`/`RESET` of a few
//! harmless session settings.
//!
//! The tokenizer assumes what the proxy must guarantee for the session:
//! `standard_conforming_strings = on` (backslashes in `'…'` are plain
//! characters), UTF-8 client and server encodings, and PostgreSQL's
//! ASCII-only case folding of unquoted identifiers.

use std::borrow::Cow;
use std::fmt;

/// Why a statement was refused: a SQLSTATE and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The SQLSTATE to send in the ErrorResponse, e.g. `"42501"`.
    pub sqlstate: &'static str,
    /// A lowercase message that starts with what was refused.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}

impl std::error::Error for Refusal {}

const INSUFFICIENT_PRIVILEGE: &str = "42501";
const FEATURE_NOT_SUPPORTED: &str = "0A000";
const SYNTAX_ERROR: &str = "42601";

fn refuse(message: impl Into<String>) -> Refusal {
    Refusal { sqlstate: INSUFFICIENT_PRIVILEGE, message: message.into() }
}

fn unsupported(message: impl Into<String>) -> Refusal {
    Refusal { sqlstate: FEATURE_NOT_SUPPORTED, message: message.into() }
}

fn syntax(message: impl Into<String>) -> Refusal {
    Refusal { sqlstate: SYNTAX_ERROR, message: message.into() }
}

/// Session settings a client may `SET` or `RESET` (`time zone` is folded to `timezone`).
const ALLOWED_SETTINGS: &[&str] = &[
    "application_name",
    "extra_float_digits",
    "datestyle",
    "intervalstyle",
    "timezone",
    "client_min_messages",
    "bytea_output",
    "search_path",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
];

/// Functions refused by exact (lowercased) name.
const BLOCKED_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_notify",
    "ts_stat",
    "ts_rewrite",
    "loread",
    "lowrite",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "txid_current",
    "pg_current_xact_id",
    "nextval",
    "setval",
    "pg_stat_get_activity",
    "pg_stat_activity",
    "pg_create_restore_point",
    "pg_promote",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_import_system_collations",
    "pg_log_backend_memory_contexts",
];

/// Functions refused by name prefix.
const BLOCKED_PREFIXES: &[&str] = &[
    "pg_advisory",
    "pg_try_advisory",
    "lo_",
    "dblink",
    "pg_ls_",
    "pg_file_",
    "pg_logical_",
    "pg_stat_reset",
    "pg_stat_get_backend",
];

/// Functions refused when their name contains one of these.
const BLOCKED_INFIXES: &[&str] = &["_to_xml", "to_xmlschema", "replication_slot"];

/// Checks the SQL text of one Query or Parse message. Ok(()) when every statement in it may run.
///
/// The text is split into statements on every `;` token; empty statements are
/// ignored. The first refused statement decides the [`Refusal`].
pub fn check(sql: &str) -> Result<(), Refusal> {
    inspect(sql).map(|_| ())
}

/// What the check learnt about a text that passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// It holds a string constant (`'…'`, `E'…'`, `$$…$$` …), whose value the server fixes when it
    /// analyses the text.
    pub string_constants: bool,
    /// It changes a session setting (`SET`, `RESET`).
    pub settings: bool,
}

/// [`check`], and what it learnt about the text.
pub fn inspect(sql: &str) -> Result<Facts, Refusal> {
    let tokens = tokenize(sql)?;
    let mut settings = false;
    for stmt in tokens.split(|t| *t == Tok::Semicolon).filter(|stmt| !stmt.is_empty()) {
        settings |= matches!(check_statement(stmt)?, Kind::Set | Kind::Reset);
    }
    Ok(Facts { string_constants: tokens.contains(&Tok::Str), settings })
}

// ---------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------

/// One lexical token; comments and whitespace are dropped.
/// Tokens borrow from the SQL text where they can (most identifiers, every operator), so checking a
/// statement allocates little.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'a> {
    /// An identifier or keyword: unquoted ones are ASCII-lowercased, quoted
    /// ones (`"…"`, `U&"…"`) keep their exact, decoded text.
    Ident {
        text: Cow<'a, str>,
        quoted: bool,
    },
    /// Any string constant (`'…'`, `E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'`, `$tag$…$tag$`).
    Str,
    Number,
    /// A positional parameter such as `$1`.
    Param,
    /// An operator or punctuation other than `;`.
    Punct(&'a str),
    Semicolon,
}

fn tokenize(sql: &str) -> Result<Vec<Tok<'_>>, Refusal> {
    if sql.contains('\0') {
        return Err(syntax("a NUL character in SQL text is not allowed on the SQL endpoint"));
    }
    // About one token per five bytes of SQL, so the list seldom grows (a huge text grows it as it goes).
    let capacity = (sql.len() / 5 + 8).min(4096);
    Lexer { src: sql, pos: 0, tokens: Vec::with_capacity(capacity), unicode_idents: Vec::new() }.run()
}

/// PostgreSQL whitespace (`\v` since PostgreSQL 16).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// `[A-Za-z_\x80-\xff]`: every non-ASCII character is an identifier character.
fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

fn is_op_char(c: char) -> bool {
    "~!@#^&|`?+-*/%<>=".contains(c)
}

fn unterminated(what: &str) -> Refusal {
    syntax(format!("an unterminated {what} is not allowed on the SQL endpoint"))
}

struct Lexer<'a> {
    src: &'a str,
    /// Byte offset into `src`; always on a char boundary.
    pos: usize,
    tokens: Vec<Tok<'a>>,
    /// Indices of `U&"…"` identifiers in `tokens`.
    unicode_idents: Vec<usize>,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_nth(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, prefix: &str) -> bool {
        let found = self.rest().starts_with(prefix);
        if found {
            self.pos += prefix.len();
        }
        found
    }

    fn eat_while(&mut self, pred: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&pred) {
            self.bump();
        }
    }

    fn run(mut self) -> Result<Vec<Tok<'a>>, Refusal> {
        loop {
            self.skip_trivia()?;
            let Some(c) = self.peek() else { break };
            let tok = match c {
                ';' => {
                    self.bump();
                    Tok::Semicolon
                }
                '\'' => {
                    self.bump();
                    self.string_body(false)?
                }
                '"' => {
                    self.bump();
                    Tok::Ident { text: Cow::Owned(self.quoted_ident_body()?), quoted: true }
                }
                '$' => self.dollar()?,
                '0'..='9' => self.number(),
                '.' if self.peek_nth(1).is_some_and(|d| d.is_ascii_digit()) => self.number(),
                c if is_ident_start(c) => self.word()?,
                c if is_op_char(c) => self.operator(),
                ':' if self.eat("::") => Tok::Punct("::"),
                _ => {
                    let start = self.pos;
                    self.bump();
                    Tok::Punct(self.src.get(start..self.pos).unwrap_or(""))
                }
            };
            self.tokens.push(tok);
        }
        for &i in &self.unicode_idents {
            if is_kw(self.tokens.get(i + 1), "uescape") {
                return Err(syntax("UESCAPE after a U&\"…\" identifier is not allowed on the SQL endpoint"));
            }
        }
        Ok(self.tokens)
    }

    /// Skips whitespace, `--` comments and nested `/* */` comments.
    fn skip_trivia(&mut self) -> Result<(), Refusal> {
        loop {
            if self.peek().is_some_and(is_space) {
                self.bump();
            } else if self.eat("--") {
                self.eat_while(|c| c != '\n' && c != '\r');
            } else if self.eat("/*") {
                let mut depth = 1usize;
                while depth > 0 {
                    if self.eat("/*") {
                        depth += 1;
                    } else if self.eat("*/") {
                        depth -= 1;
                    } else if self.bump().is_none() {
                        return Err(unterminated("block comment"));
                    }
                }
            } else {
                return Ok(());
            }
        }
    }

    /// Identifiers, keywords and the prefixed string forms `E'`, `B'`, `X'`,
    /// `N'`, `U&'` and `U&"`.
    fn word(&mut self) -> Result<Tok<'a>, Refusal> {
        let first = self.peek().map(|c| c.to_ascii_lowercase());
        match (first, self.peek_nth(1), self.peek_nth(2)) {
            (Some('e'), Some('\''), _) => {
                self.pos += 2;
                self.string_body(true)
            }
            (Some('b' | 'x' | 'n'), Some('\''), _) => {
                self.pos += 2;
                self.string_body(false)
            }
            (Some('u'), Some('&'), Some('\'')) => {
                self.pos += 3;
                self.string_body(false)
            }
            (Some('u'), Some('&'), Some('"')) => {
                self.pos += 3;
                let raw = self.quoted_ident_body()?;
                let text = decode_unicode_ident(&raw).ok_or_else(|| {
                    syntax("an invalid Unicode escape in a U&\"…\" identifier is not allowed on the SQL endpoint")
                })?;
                self.unicode_idents.push(self.tokens.len());
                Ok(Tok::Ident { text: Cow::Owned(text), quoted: true })
            }
            _ => {
                let start = self.pos;
                self.eat_while(is_ident_cont);
                let word = self.src.get(start..self.pos).unwrap_or("");
                let text = if word.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(word.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(word)
                };
                Ok(Tok::Ident { text, quoted: false })
            }
        }
    }

    /// The rest of a `'…'` string after its opening quote, including any
    /// continuation (`'a'` newline `'b'`), which keeps the escape mode.
    fn string_body(&mut self, backslash_escapes: bool) -> Result<Tok<'a>, Refusal> {
        loop {
            match self.bump() {
                None => return Err(unterminated("quoted string")),
                Some('\\') if backslash_escapes => {
                    if self.bump().is_none() {
                        return Err(unterminated("quoted string"));
                    }
                }
                Some('\'') => {
                    if self.eat("'") {
                        continue;
                    }
                    match self.quote_continuation() {
                        Some(next) => self.pos = next,
                        None => return Ok(Tok::Str),
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// PostgreSQL's `quotecontinue`: whitespace and `--` comments holding at
    /// least one newline, then a quote. Returns the offset after that quote.
    fn quote_continuation(&self) -> Option<usize> {
        let bytes = self.rest().as_bytes();
        let mut i = 0;
        let mut newline = false;
        loop {
            match bytes.get(i) {
                Some(b' ' | b'\t' | b'\x0b' | b'\x0c') => i += 1,
                Some(b'\n' | b'\r') => {
                    newline = true;
                    i += 1;
                }
                Some(b'-') if bytes.get(i + 1) == Some(&b'-') => {
                    while bytes.get(i).is_some_and(|&b| b != b'\n' && b != b'\r') {
                        i += 1;
                    }
                }
                Some(b'\'') if newline => return Some(self.pos + i + 1),
                _ => return None,
            }
        }
    }

    /// The rest of a `"…"` identifier after its opening quote.
    fn quoted_ident_body(&mut self) -> Result<String, Refusal> {
        let mut text = String::new();
        loop {
            match self.bump() {
                None => return Err(unterminated("quoted identifier")),
                Some('"') if self.eat("\"") => text.push('"'),
                Some('"') => break,
                Some(c) => text.push(c),
            }
        }
        if text.is_empty() {
            return Err(syntax("a zero-length quoted identifier is not allowed on the SQL endpoint"));
        }
        Ok(text)
    }

    /// `$1` parameters and `$tag$…$tag$` strings; a lone `$` is punctuation.
    fn dollar(&mut self) -> Result<Tok<'a>, Refusal> {
        if self.peek_nth(1).is_some_and(|d| d.is_ascii_digit()) {
            self.bump();
            self.eat_while(|c| c.is_ascii_digit());
            return Ok(Tok::Param);
        }
        let rest = self.rest();
        let after = rest.get(1..).unwrap_or("");
        let tag_len = after
            .char_indices()
            .find(|&(_, c)| !(is_ident_start(c) || c.is_ascii_digit()))
            .map_or(after.len(), |(i, _)| i);
        let closed = after.get(tag_len..).is_some_and(|s| s.starts_with('$'));
        let Some(delim) = rest.get(..tag_len + 2).filter(|_| closed) else {
            self.bump();
            return Ok(Tok::Punct("$"));
        };
        self.pos += delim.len();
        match self.rest().find(delim) {
            Some(offset) => {
                self.pos += offset + delim.len();
                Ok(Tok::Str)
            }
            None => Err(unterminated("dollar-quoted string")),
        }
    }

    /// Digits, an optional fraction and exponent. Trailing letters start a
    /// new token, as in PostgreSQL before version 15.
    fn number(&mut self) -> Tok<'a> {
        self.eat_while(|c| c.is_ascii_digit());
        if self.peek() == Some('.') && self.peek_nth(1) != Some('.') {
            self.bump();
            self.eat_while(|c| c.is_ascii_digit());
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let digit_at = |n| self.peek_nth(n).is_some_and(|c: char| c.is_ascii_digit());
            let skip = if digit_at(1) {
                1
            } else if matches!(self.peek_nth(1), Some('+' | '-')) && digit_at(2) {
                2
            } else {
                0
            };
            self.pos += skip;
            self.eat_while(|c| c.is_ascii_digit());
        }
        Tok::Number
    }

    /// An operator, cut before any `/*` or `--` and without trailing `+`/`-`
    /// unless it holds one of `~!@#^&|`?%` (PostgreSQL's rules).
    fn operator(&mut self) -> Tok<'a> {
        let rest = self.rest();
        let len = rest.bytes().take_while(|&b| is_op_char(char::from(b))).count();
        let mut op = rest.get(..len).unwrap_or("");
        for comment in ["/*", "--"] {
            if let Some(cut) = op.find(comment) {
                op = op.get(..cut).unwrap_or("");
            }
        }
        let body = op.get(..op.len().saturating_sub(1)).unwrap_or("");
        if op.len() > 1 && op.ends_with(['+', '-']) && !body.contains(|c| "~!@#^&|`?%".contains(c)) {
            let trimmed = op.trim_end_matches(['+', '-']);
            op = if trimmed.is_empty() { op.get(..1).unwrap_or("") } else { trimmed };
        }
        if op.is_empty() {
            // Unreachable: comments were skipped before the operator started.
            op = rest.get(..1).unwrap_or("");
        }
        if op.is_empty() {
            self.bump();
        }
        self.pos += op.len();
        Tok::Punct(op)
    }
}

/// Decodes the `\XXXX`, `\+XXXXXX` and `\\` escapes of a `U&"…"` identifier.
fn decode_unicode_ident(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = raw.chars();
    let mut high_surrogate: Option<u32> = None;
    while let Some(c) = chars.next() {
        let code = match c {
            '\\' => {
                let digits = match chars.clone().next() {
                    Some('\\') => {
                        chars.next();
                        u32::from('\\')
                    }
                    Some('+') => {
                        chars.next();
                        hex(&mut chars, 6)?
                    }
                    _ => hex(&mut chars, 4)?,
                };
                if digits == 0 {
                    return None;
                }
                digits
            }
            c => u32::from(c),
        };
        let code = match (high_surrogate.take(), code) {
            (None, 0xD800..=0xDBFF) => {
                high_surrogate = Some(code);
                continue;
            }
            (Some(high), 0xDC00..=0xDFFF) => 0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00),
            (Some(_), _) => return None,
            (None, code) => code,
        };
        out.push(char::from_u32(code)?);
    }
    high_surrogate.is_none().then_some(out)
}

fn hex(chars: &mut std::str::Chars<'_>, n: usize) -> Option<u32> {
    (0..n).try_fold(0u32, |acc, _| Some(acc * 16 + chars.next()?.to_digit(16)?))
}

// ---------------------------------------------------------------------------
// Statement rules
// ---------------------------------------------------------------------------

/// The kinds of statements the endpoint may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Empty,
    Query,
    Show,
    Copy,
    Set,
    Reset,
}

/// The keyword of an unquoted identifier token.
fn keyword<'t>(tok: Option<&'t Tok<'_>>) -> Option<&'t str> {
    match tok {
        Some(Tok::Ident { text, quoted: false }) => Some(text),
        _ => None,
    }
}

fn is_kw(tok: Option<&Tok<'_>>, kw: &str) -> bool {
    keyword(tok) == Some(kw)
}

fn is_punct(tok: Option<&Tok<'_>>, p: &str) -> bool {
    matches!(tok, Some(Tok::Punct(s)) if *s == p)
}

fn paren_delta(tok: &Tok<'_>) -> i64 {
    match tok {
        Tok::Punct(p) if *p == "(" => 1,
        Tok::Punct(p) if *p == ")" => -1,
        _ => 0,
    }
}

/// The index of the `)` matching the `(` at `open`.
fn matching_close(toks: &[Tok<'_>], open: usize) -> Option<usize> {
    let mut depth = 0i64;
    for (i, tok) in toks.iter().enumerate().skip(open) {
        depth += paren_delta(tok);
        if depth <= 0 {
            return (depth == 0 && i > open).then_some(i);
        }
    }
    None
}

/// At most 64 characters of client-supplied text for a message.
fn shown(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or("")),
        None => text.to_owned(),
    }
}

fn check_statement(stmt: &[Tok<'_>]) -> Result<Kind, Refusal> {
    let kind = classify(stmt)?;
    check_functions(stmt)?;
    check_row_locks(stmt)?;
    match kind {
        Kind::Empty | Kind::Show => Ok(()),
        Kind::Query => check_query(stmt),
        Kind::Copy => check_copy(stmt),
        Kind::Set => check_set(stmt),
        Kind::Reset => check_setting("RESET", stmt.get(1..).unwrap_or_default()),
    }?;
    Ok(kind)
}

/// The first token decides the kind; every other kind is refused here.
fn classify(stmt: &[Tok<'_>]) -> Result<Kind, Refusal> {
    match stmt.first() {
        None => Ok(Kind::Empty),
        Some(Tok::Punct(p)) if *p == "(" => Ok(Kind::Query),
        Some(Tok::Ident { text, quoted: false }) => match text.as_ref() {
            "select" | "with" | "values" | "table" => Ok(Kind::Query),
            "show" => Ok(Kind::Show),
            // Even without ANALYZE, the planner's row estimates come from statistics over every tenant's
            // rows (`… where email = 'cfo@other.example'`), and ANALYZE shows rows removed by the policies.
            "explain" => Err(refuse(
                "EXPLAIN is not allowed on the SQL endpoint: its estimates come from every tenant's rows",
            )),
            "copy" => Ok(Kind::Copy),
            "set" => Ok(Kind::Set),
            "reset" => Ok(Kind::Reset),
            kw => Err(refused_kind(kw, stmt.get(1))),
        },
        Some(Tok::Ident { quoted: true, .. }) => {
            Err(refuse("a quoted identifier at the start of a statement is not allowed on the SQL endpoint"))
        }
        Some(_) => {
            Err(refuse("this statement is not allowed on the SQL endpoint: it runs read-only queries"))
        }
    }
}

fn refused_kind(kw: &str, next: Option<&Tok<'_>>) -> Refusal {
    let name = shown(&kw.to_uppercase());
    let transaction = |what: &str| {
        refuse(format!(
            "transaction control ({what}) is not allowed on the SQL endpoint: \
             every statement runs in its own read-only transaction"
        ))
    };
    match kw {
        "begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release" => {
            transaction(&name)
        }
        "prepare" if is_kw(next, "transaction") => transaction("PREPARE TRANSACTION"),
        "do" | "discard" => refuse(format!("{name} is not allowed on the SQL endpoint")),
        "listen" | "notify" | "unlisten" => {
            refuse(format!("{name} is not allowed on the SQL endpoint: notifications are not available"))
        }
        "declare" | "fetch" | "move" | "close" => {
            refuse(format!("{name} is not allowed on the SQL endpoint: cursors are not available"))
        }
        "prepare" | "execute" | "deallocate" => refuse(format!(
            "{name} is not allowed on the SQL endpoint: use the extended query protocol instead"
        )),
        "call" => refuse("CALL is not allowed on the SQL endpoint: it runs procedures"),
        "lock" => refuse("LOCK is not allowed on the SQL endpoint: it takes table locks"),
        "load" => refuse("LOAD is not allowed on the SQL endpoint: it loads shared libraries"),
        "vacuum" | "analyze" | "analyse" => {
            refuse(format!("{name} is not allowed on the SQL endpoint: it runs maintenance"))
        }
        _ => refuse(format!("{name} is not allowed on the SQL endpoint: it runs read-only queries")),
    }
}

fn is_blocked_function(name: &str) -> bool {
    // Quoted names keep their case; they are compared lowercased all the same (refusing more, never less).
    let lowered;
    let name = if name.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        name
    } else {
        lowered = name.to_lowercase();
        lowered.as_str()
    };
    BLOCKED_FUNCTIONS.contains(&name)
        || BLOCKED_PREFIXES.iter().any(|p| name.starts_with(p))
        || BLOCKED_INFIXES.iter().any(|p| name.contains(p))
}

/// Every identifier, quoted or not, is compared to the blocklist.
fn check_functions(stmt: &[Tok<'_>]) -> Result<(), Refusal> {
    for tok in stmt {
        if let Tok::Ident { text, .. } = tok
            && is_blocked_function(text)
        {
            return Err(refuse(format!(
                "the function {} is not allowed on the SQL endpoint",
                shown(&text.to_lowercase())
            )));
        }
    }
    Ok(())
}

/// `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`, at any depth.
fn check_row_locks(stmt: &[Tok<'_>]) -> Result<(), Refusal> {
    let locks = stmt.windows(2).any(|pair| {
        is_kw(pair.first(), "for") && matches!(keyword(pair.get(1)), Some("update" | "share" | "no" | "key"))
    });
    if locks {
        return Err(refuse("row locks (FOR UPDATE/SHARE) are not allowed on the SQL endpoint"));
    }
    Ok(())
}

/// A `SELECT`/`WITH`/`VALUES`/`TABLE`/`(` query: no `SELECT INTO` and no
/// data-modifying statement (e.g. in a `WITH` clause).
fn check_query(stmt: &[Tok<'_>]) -> Result<(), Refusal> {
    let mut depth = 0i64;
    let mut prev: Option<&Tok<'_>> = None;
    for tok in stmt {
        match keyword(Some(tok)) {
            Some("into") if depth <= 0 => {
                return Err(refuse(
                    "SELECT INTO is not allowed on the SQL endpoint: it runs read-only queries",
                ));
            }
            Some(kw @ ("insert" | "update" | "delete" | "merge"))
                if (depth <= 0 && !is_punct(prev, ".")) || is_punct(prev, "(") || is_punct(prev, ")") =>
            {
                return Err(refuse(format!(
                    "data-modifying statements ({}) are not allowed on the SQL endpoint: \
                     it runs read-only queries",
                    kw.to_uppercase()
                )));
            }
            _ => {}
        }
        depth += paren_delta(tok);
        prev = Some(tok);
    }
    Ok(())
}

/// The statement inside `EXPLAIN` or `COPY (…)`: it must be a query.
fn check_inner(inner: &[Tok<'_>], context: &str) -> Result<(), Refusal> {
    match classify(inner)? {
        Kind::Query => check_query(inner),
        Kind::Empty => Err(refuse(format!("{context} without a query is not allowed on the SQL endpoint"))),
        _ => Err(refuse(format!(
            "{} inside {context} is not allowed on the SQL endpoint: only queries are",
            shown(&keyword(inner.first()).unwrap_or_default().to_uppercase())
        ))),
    }
}

/// Only `COPY table [(columns)] TO STDOUT …` and `COPY (query) TO STDOUT …`.
fn check_copy(stmt: &[Tok<'_>]) -> Result<(), Refusal> {
    let rest = stmt.get(1..).unwrap_or_default();
    let after = if is_punct(rest.first(), "(") {
        let close = matching_close(rest, 0)
            .ok_or_else(|| syntax("an unbalanced parenthesis in COPY is not allowed on the SQL endpoint"))?;
        check_inner(rest.get(1..close).unwrap_or_default(), "COPY")?;
        rest.get(close + 1..).unwrap_or_default()
    } else {
        rest
    };
    // The direction is the first top-level `TO` or `FROM`.
    let mut depth = 0i64;
    let mut direction = None;
    for (i, tok) in after.iter().enumerate() {
        if depth <= 0
            && let Some(kw @ ("to" | "from")) = keyword(Some(tok))
        {
            direction = Some((kw, i));
            break;
        }
        depth += paren_delta(tok);
    }
    const ONLY: &str = "only COPY … TO STDOUT is";
    match direction {
        Some(("to", i)) if is_kw(after.get(i + 1), "stdout") => Ok(()),
        Some(("to", _)) => {
            Err(unsupported(format!("COPY to a file or program is not allowed on the SQL endpoint: {ONLY}")))
        }
        Some(_) => Err(unsupported(format!("COPY FROM is not allowed on the SQL endpoint: {ONLY}"))),
        None => {
            Err(unsupported(format!("COPY without TO STDOUT is not allowed on the SQL endpoint: {ONLY}")))
        }
    }
}

/// `SET [SESSION | LOCAL] name {TO | =} …` and `SET [SESSION | LOCAL] TIME ZONE …`.
fn check_set(stmt: &[Tok<'_>]) -> Result<(), Refusal> {
    let mut start = 1;
    let scope = keyword(stmt.get(start));
    let next = keyword(stmt.get(start + 1));
    if scope == Some("local")
        || (scope == Some("session") && !matches!(next, Some("authorization" | "characteristics")))
    {
        start += 1;
    }
    check_setting("SET", stmt.get(start..).unwrap_or_default())
}

/// The setting named at the start of `toks` (after `SET [scope]` or `RESET`).
fn check_setting(verb: &str, toks: &[Tok<'_>]) -> Result<(), Refusal> {
    let word = |i: usize| keyword(toks.get(i));
    let special = match (word(0), word(1)) {
        (Some("time"), Some("zone")) => return Ok(()),
        (Some("session"), Some("authorization")) => Some("SESSION AUTHORIZATION"),
        (Some("session"), Some("characteristics")) => Some("SESSION CHARACTERISTICS"),
        (Some("role"), _) => Some("ROLE"),
        (Some("transaction"), _) => Some("TRANSACTION"),
        (Some("all"), _) => Some("ALL"),
        _ => None,
    };
    match special {
        Some(what @ ("TRANSACTION" | "SESSION CHARACTERISTICS")) => Err(refuse(format!(
            "{verb} {what} is not allowed on the SQL endpoint: \
             every statement runs in its own read-only transaction"
        ))),
        Some(what) => Err(refuse(format!("{verb} {what} is not allowed on the SQL endpoint"))),
        None => match setting_name(toks) {
            Some(name) if ALLOWED_SETTINGS.contains(&name.as_str()) => Ok(()),
            Some(name) => Err(refuse(format!("{verb} {} is not allowed on the SQL endpoint", shown(&name)))),
            None => Err(refuse(format!("this form of {verb} is not allowed on the SQL endpoint"))),
        },
    }
}

/// A possibly dotted setting name (`tessera . sql_claim` → `tessera.sql_claim`),
/// lowercased: setting names are case-insensitive even when quoted.
fn setting_name(toks: &[Tok<'_>]) -> Option<String> {
    let mut name = String::new();
    let mut i = 0;
    loop {
        let Some(Tok::Ident { text, .. }) = toks.get(i) else {
            return None;
        };
        name.push_str(&text.to_lowercase());
        if !is_punct(toks.get(i + 1), ".") {
            return Some(name);
        }
        name.push('.');
        i += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSQL_D_LOOKUP: &str = "SELECT c.oid,\n  n.nspname,\n  c.relname\nFROM pg_catalog.pg_class c\n     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\nWHERE c.relname OPERATOR(pg_catalog.~) '^(deals)$' COLLATE pg_catalog.default\n  AND pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 2, 3;";

    const PSQL_D_DETAILS: &str = "SELECT c.relchecks, c.relkind, c.relhasindex, c.relhasrules, c.relhastriggers, c.relrowsecurity, c.relforcerowsecurity, false AS relhasoids, c.relispartition, pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ')\n, c.reltablespace, CASE WHEN c.reloftype = 0 THEN '' ELSE c.reloftype::pg_catalog.regtype::pg_catalog.text END, c.relpersistence, c.relreplident, am.amname\nFROM pg_catalog.pg_class c\n LEFT JOIN pg_catalog.pg_class tc ON (c.reltoastrelid = tc.oid)\nLEFT JOIN pg_catalog.pg_am am ON (c.relam = am.oid)\nWHERE c.oid = '16384';";

    const PSQL_D_COLUMNS: &str = "SELECT a.attname,\n  pg_catalog.format_type(a.atttypid, a.atttypmod),\n  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)\n   FROM pg_catalog.pg_attrdef d\n   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),\n  a.attnotnull,\n  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t\n   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,\n  a.attidentity,\n  a.attgenerated\nFROM pg_catalog.pg_attribute a\nWHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped\nORDER BY a.attnum;";

    const PSQL_L: &str = "SELECT\n  d.datname as \"Name\",\n  pg_catalog.pg_get_userbyid(d.datdba) as \"Owner\",\n  pg_catalog.pg_encoding_to_char(d.encoding) as \"Encoding\",\n  CASE d.datlocprovider WHEN 'c' THEN 'libc' WHEN 'i' THEN 'icu' END AS \"Locale Provider\",\n  d.datcollate as \"Collate\",\n  d.datctype as \"Ctype\",\n  d.daticulocale as \"ICU Locale\",\n  d.daticurules as \"ICU Rules\",\n  pg_catalog.array_to_string(d.datacl, E'\\n') AS \"Access privileges\"\nFROM pg_catalog.pg_database d\nORDER BY 1;";

    const PSQL_DT: &str = "SELECT n.nspname as \"Schema\",\n  c.relname as \"Name\",\n  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as \"Type\",\n  pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\"\nFROM pg_catalog.pg_class c\n     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam\nWHERE c.relkind IN ('r','p','')\n      AND n.nspname <> 'pg_catalog'\n      AND n.nspname !~ '^pg_toast'\n      AND n.nspname <> 'information_schema'\n  AND pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 1,2;";

    const ALLOWED: &[&str] = &[
        PSQL_D_LOOKUP,
        PSQL_D_DETAILS,
        PSQL_D_COLUMNS,
        PSQL_L,
        PSQL_DT,
        "select 1; select 2",
        "with x as (select 1) select * from x",
        "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n+1 FROM t WHERE n < 5) SELECT sum(n) FROM t",
        "copy (select * from crm.deals) to stdout with (format csv, header)",
        "COPY crm.deals TO STDOUT",
        "COPY crm.deals (id, name) TO STDOUT (FORMAT binary)",
        "copy \"to\" to stdout",
        "SELECT $1::int",
        "select 'set_config' as s",
        "select $$ commit $$",
        "select $a$ ; drop table x; $a$",
        "select /* ; do $$ */ 1",
        "select /* outer /* nested ; commit */ still comment */ 1",
        "select 1 -- ; commit\n",
        "select 1 --; drop table x",
        "select E'it\\'s ; commit' as s",
        "select 'a''b; commit'",
        "select U&'d\\0061t\\+000061' UESCAPE '!'",
        "select x'1f', b'101', n'nat'",
        "SHOW server_version",
        "show all",
        "SET application_name = 'x'",
        "SET application_name = 'PostgreSQL JDBC Driver'",
        "set datestyle to iso, mdy",
        "SET TIME ZONE 'UTC'",
        "set local time zone interval '+00:00' hour to minute",
        "set extra_float_digits = 3",
        "SET SESSION search_path TO crm, public",
        "set \"Application_Name\" = 'x'",
        "RESET application_name",
        "reset time zone",
        "",
        ";;",
        "  -- only a comment",
        "/* only */ /* comments */ ; -- here",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
        "select * from pg_catalog.pg_type where oid = $1",
        "SELECT current_schema(), session_user",
        "select version()",
        "values (1), (2)",
        "TABLE crm.deals",
        "(select 1) union (select 2)",
        "select a from t order by a limit 10 offset 5",
        "select substring('abc' from 1 for 2)",
        "select t.update from t",
        "select pg_sleep(1)",
        "select * from pg_locks",
        "select 1.5e-3, .5, 1e10, 0x1f, 1..2",
        "select 1=-1, 2 <>-3, a->>'k'",
        "select \"ConfigSet\" from t",
        "select now() at time zone 'UTC'",
    ];

    /// (SQL, SQLSTATE) pairs that must be refused.
    const REFUSED: &[(&str, &str)] = &[
        ("set tessera.sql_claim = 'x'", "42501"),
        ("SET \"tessera.sql_claim\" TO 'x'", "42501"),
        ("select 1; set tessera.tenant_id = 'b'", "42501"),
        ("select set_config('tessera.sql_claim', 'x', false)", "42501"),
        ("select \"set_config\"('a','b',false)", "42501"),
        ("select pg_catalog.set_config($1, $2, false)", "42501"),
        ("SeLeCt SET_CONFIG('a','b',true)", "42501"),
        ("select U&\"set\\005fconfig\"('a','b',false)", "42501"),
        ("select U&\"set\\+00005fconfig\"('a','b',false)", "42501"),
        ("select U&\"set!005fconfig\" UESCAPE '!' ('a','b',false)", "42601"),
        ("select U&\"bad\\zz\"", "42601"),
        ("do $$ begin end $$", "42501"),
        ("DO language plpgsql 'begin end'", "42501"),
        ("reset tessera.sql_claim", "42501"),
        ("RESET ALL", "42501"),
        ("reset role", "42501"),
        ("reset session authorization", "42501"),
        ("select 1; commit; select 2", "42501"),
        ("BEGIN", "42501"),
        ("begin read only", "42501"),
        ("start transaction", "42501"),
        ("end", "42501"),
        ("abort", "42501"),
        ("rollback", "42501"),
        ("savepoint a", "42501"),
        ("release savepoint a", "42501"),
        ("prepare transaction 'x'", "42501"),
        ("set role postgres", "42501"),
        ("SET SESSION AUTHORIZATION x", "42501"),
        ("set local role x", "42501"),
        ("set \"role\" = 'postgres'", "42501"),
        ("set session characteristics as transaction read write", "42501"),
        ("set transaction read write", "42501"),
        ("set default_transaction_read_only = off", "42501"),
        ("set transaction_read_only = off", "42501"),
        ("set statement_timeout = 0", "42501"),
        ("set constraints all deferred", "42501"),
        ("set", "42501"),
        ("copy crm.deals from stdin", "0A000"),
        ("copy crm.deals to '/tmp/x'", "0A000"),
        ("copy (select 1) to program 'id'", "0A000"),
        ("copy crm.deals", "0A000"),
        ("copy (insert into t values (1) returning *) to stdout", "42501"),
        ("copy (select 1 into t) to stdout", "42501"),
        ("copy (select 1 to stdout", "42601"),
        ("explain analyze select 1", "42501"),
        ("EXPLAIN (ANALYZE) select 1", "42501"),
        ("EXPLAIN (ANALYZE true, BUFFERS) select 1", "42501"),
        ("explain (format json, analyse on) select 1", "42501"),
        ("explain verbose analyze select 1", "42501"),
        ("explain (\"analyze\") select 1", "42501"),
        ("explain ((analyze)) select 1", "42501"),
        ("explain insert into t values (1)", "42501"),
        ("explain execute p", "42501"),
        ("explain create table t as select 1", "42501"),
        ("explain show all", "42501"),
        ("explain", "42501"),
        ("explain select 1", "42501"),
        ("explain (costs off, verbose) select 1", "42501"),
        ("EXPLAIN VERBOSE SELECT * FROM crm.deals", "42501"),
        ("select pg_stat_get_backend_activity(b) from pg_stat_get_backend_idset() b", "42501"),
        ("listen x", "42501"),
        ("notify x", "42501"),
        ("unlisten *", "42501"),
        ("select pg_notify('tessera_events','x')", "42501"),
        ("prepare p as select 1", "42501"),
        ("execute p", "42501"),
        ("deallocate all", "42501"),
        ("declare c cursor with hold for select 1", "42501"),
        ("fetch 10 from c", "42501"),
        ("move next in c", "42501"),
        ("close c", "42501"),
        ("discard all", "42501"),
        ("select pg_advisory_lock(1)", "42501"),
        ("select pg_try_advisory_xact_lock(1,2)", "42501"),
        ("select (1::bigint).pg_advisory_lock", "42501"),
        ("select pg_terminate_backend(123)", "42501"),
        ("select pg_cancel_backend(123)", "42501"),
        ("select lo_from_bytea(0, 'x')", "42501"),
        ("select lo_import('/etc/passwd')", "42501"),
        ("select loread(0, 1)", "42501"),
        ("select query_to_xml('select 1', true, true, '')", "42501"),
        ("select table_to_xmlschema('t', true, true, '')", "42501"),
        ("select * from ts_stat('select 1')", "42501"),
        ("select ts_rewrite('a'::tsquery, 'select 1')", "42501"),
        ("select * from dblink('host=x', 'select 1') as t(a int)", "42501"),
        ("select pg_read_file('/etc/passwd')", "42501"),
        ("select * from pg_ls_dir('.')", "42501"),
        ("select pg_reload_conf()", "42501"),
        ("select * from pg_stat_activity", "42501"),
        ("select 1 into t", "42501"),
        ("with x as (select 1) select * into t from x", "42501"),
        ("with x as (delete from t returning *) select * from x", "42501"),
        ("with x as (select 1) insert into t select * from x", "42501"),
        ("with x as (select 1) update t set a = 1", "42501"),
        ("select * from crm.deals for update", "42501"),
        ("select * from crm.deals FOR NO KEY UPDATE", "42501"),
        ("select * from (select * from t for share) s", "42501"),
        ("select * from t for key share skip locked", "42501"),
        ("insert into crm.deals values (1)", "42501"),
        ("update crm.deals set a = 1", "42501"),
        ("delete from crm.deals", "42501"),
        ("merge into t using s on true when matched then delete", "42501"),
        ("create temp table t (a int)", "42501"),
        ("alter system set x = 1", "42501"),
        ("drop table t", "42501"),
        ("grant all on t to public", "42501"),
        ("truncate t", "42501"),
        ("vacuum", "42501"),
        ("analyze t", "42501"),
        ("lock table crm.deals", "42501"),
        ("load 'plpgsql'", "42501"),
        ("call p()", "42501"),
        ("checkpoint", "42501"),
        ("\"select\" 1", "42501"),
        ("'select' 1", "42501"),
        ("select 'abc", "42601"),
        ("select E'abc\\'", "42601"),
        ("select $x$ abc", "42601"),
        ("select $$ abc $x$", "42601"),
        ("/* abc", "42601"),
        ("select /* a /* b */ 1", "42601"),
        ("select \"abc", "42601"),
        ("select \"\" from t", "42601"),
        ("select 1\0; drop table t", "42601"),
        ("select 1; select pg_sleep(1); set role x", "42501"),
        ("select nextval('s')", "42501"),
        ("select setval('s', 1)", "42501"),
        ("select txid_current()", "42501"),
        ("select pg_current_xact_id()", "42501"),
        // Comment and whitespace tricks.
        ("select 1;/**/commit", "42501"),
        ("select 1;--\ncommit", "42501"),
        ("\tCoMmIt\n", "42501"),
        ("select 1 +/*x*/; commit", "42501"),
        ("select 1 -/**/-1; commit", "42501"),
        ("select set_config/**/('a','b',false)", "42501"),
        // A string continued on the next line keeps its escape mode.
        ("select E'a'\n'\\' x ' ; commit ; --'", "42501"),
        ("select E'a' -- c\n'\\' x ' ; commit ; --'", "42501"),
    ];

    fn refused(sql: &str) -> Refusal {
        match check(sql) {
            Ok(()) => panic!("expected a refusal for {sql:?}"),
            Err(refusal) => refusal,
        }
    }

    #[test]
    fn inspect_tells_whether_a_text_holds_string_constants() {
        let facts = |sql| inspect(sql).map(|f| f.string_constants);
        assert_eq!(
            facts("select * from crm.deals where amount > $1 and id = md5($2::text)::uuid"),
            Ok(false)
        );
        assert_eq!(facts("select 1.5, now(), \"quoted\" from t -- 'a comment'"), Ok(false));
        let settings = |sql| inspect(sql).map(|f| f.settings);
        assert_eq!(settings("set extra_float_digits = 0"), Ok(true));
        assert_eq!(settings("select 1; reset timezone"), Ok(true));
        assert_eq!(settings("select 'set'"), Ok(false));
        for sql in [
            "select * from t where d >= '2024-06-01'",
            "select date 'today'",
            "select E'x'",
            "select $$x$$",
            "select U&'x'",
            "select B'101'",
        ] {
            assert_eq!(facts(sql), Ok(true), "{sql}");
        }
    }

    #[test]
    fn allowed_statements_pass() {
        for sql in ALLOWED {
            assert_eq!(check(sql), Ok(()), "{sql:?}");
        }
    }

    #[test]
    fn refused_statements_fail_with_their_sqlstate() {
        for (sql, sqlstate) in REFUSED {
            let refusal = refused(sql);
            assert_eq!(refusal.sqlstate, *sqlstate, "{sql:?}: {refusal:?}");
            assert!(refusal.message.contains("not allowed"), "{sql:?}: {refusal:?}");
        }
    }

    #[test]
    fn refusals_survive_a_harmless_prefix_and_suffix() {
        for (sql, sqlstate) in REFUSED {
            let refusal = refused(&format!("select 1; {sql}"));
            assert_eq!(refusal.sqlstate, *sqlstate, "{sql:?}");
            assert!(check(&format!("{sql}\n; select 1")).is_err(), "{sql:?}");
        }
    }

    #[test]
    fn messages_name_what_was_refused() {
        let cases = [
            ("set tessera.sql_claim = 'x'", "SET tessera.sql_claim is not allowed on the SQL endpoint"),
            ("set Tessera . Sql_Claim = 'x'", "SET tessera.sql_claim is not allowed on the SQL endpoint"),
            ("SET \"tessera.sql_claim\" TO 'x'", "SET tessera.sql_claim is not allowed on the SQL endpoint"),
            ("reset tessera.sql_claim", "RESET tessera.sql_claim is not allowed on the SQL endpoint"),
            ("RESET ALL", "RESET ALL is not allowed on the SQL endpoint"),
            ("set role x", "SET ROLE is not allowed on the SQL endpoint"),
            ("set session authorization x", "SET SESSION AUTHORIZATION is not allowed on the SQL endpoint"),
            (
                "COMMIT",
                "transaction control (COMMIT) is not allowed on the SQL endpoint: every statement runs in its own read-only transaction",
            ),
            ("do $$ $$", "DO is not allowed on the SQL endpoint"),
            (
                "select set_config('a','b',false)",
                "the function set_config is not allowed on the SQL endpoint",
            ),
            ("select \"SET_CONFIG\"()", "the function set_config is not allowed on the SQL endpoint"),
            (
                "INSERT INTO t VALUES (1)",
                "INSERT is not allowed on the SQL endpoint: it runs read-only queries",
            ),
            (
                "explain analyze select 1",
                "EXPLAIN is not allowed on the SQL endpoint: its estimates come from every tenant's rows",
            ),
            ("copy t from stdin", "COPY FROM is not allowed on the SQL endpoint: only COPY … TO STDOUT is"),
            (
                "select * from t for update",
                "row locks (FOR UPDATE/SHARE) are not allowed on the SQL endpoint",
            ),
            ("select 1 into t", "SELECT INTO is not allowed on the SQL endpoint: it runs read-only queries"),
            ("select 'abc", "an unterminated quoted string is not allowed on the SQL endpoint"),
            ("select 1; select pg_sleep(1); set role x", "SET ROLE is not allowed on the SQL endpoint"),
        ];
        for (sql, message) in cases {
            assert_eq!(refused(sql).message, message, "{sql:?}");
        }
    }

    #[test]
    fn long_names_are_shortened_in_messages() {
        let name = "a".repeat(1000);
        let message = refused(&format!("set {name} = 1")).message;
        assert!(message.len() < 120, "{message}");
    }

    #[test]
    fn tokenizer_follows_postgres_rules() {
        let ident = |text: &'static str, quoted| Tok::Ident { text: Cow::Borrowed(text), quoted };
        let punct = |p: &'static str| Tok::Punct(p);
        assert_eq!(
            tokenize("SELECT \"A\"\"b\", $1, $a$x$a$, e'\\'', 1.5e3 FROM t;"),
            Ok(vec![
                ident("select", false),
                ident("A\"b", true),
                punct(","),
                Tok::Param,
                punct(","),
                Tok::Str,
                punct(","),
                Tok::Str,
                punct(","),
                Tok::Number,
                ident("from", false),
                ident("t", false),
                Tok::Semicolon,
            ])
        );
        assert_eq!(tokenize("a$b$ $"), Ok(vec![ident("a$b$", false), punct("$")]));
        assert_eq!(tokenize("x=-1"), Ok(vec![ident("x", false), punct("="), punct("-"), Tok::Number]));
        assert_eq!(tokenize("a@-b"), Ok(vec![ident("a", false), punct("@-"), ident("b", false)]));
        assert_eq!(tokenize("1+/*c*/2"), Ok(vec![Tok::Number, punct("+"), Tok::Number]));
        assert_eq!(tokenize("ÉtÉ"), Ok(vec![ident("ÉtÉ", false)]));
        assert_eq!(tokenize("select\u{a0}1"), Ok(vec![ident("select\u{a0}1", false)]));
        assert_eq!(tokenize("'a'\n'b' 'c'").map(|t| t.len()), Ok(2));
        assert_eq!(tokenize("U&\"\\D83D\\DE00\""), Ok(vec![ident("\u{1F600}", true)]));
        assert!(tokenize("U&\"\\D83D\"").is_err());
        assert!(tokenize("U&\"\\0000\"").is_err());
    }

    #[test]
    fn statement_with_non_breaking_space_is_not_a_select() {
        assert_eq!(refused("select\u{a0}1").sqlstate, "42501");
    }

    /// A tiny deterministic xorshift PRNG.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).expect("below n")
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..4000 {
            let len = rng.below(80);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let b = rng.next().to_le_bytes()[0];
                    // Mostly printable ASCII, sometimes anything.
                    if rng.below(8) == 0 { b } else { 0x20 + b % 0x5f }
                })
                .collect();
            let sql = String::from_utf8_lossy(&bytes);
            let first = check(&sql);
            assert_eq!(first, check(&sql), "{sql:?}");
        }
    }

    #[test]
    fn random_token_soup_never_panics() {
        const PIECES: &[&str] = &[
            "select",
            "SET",
            "copy",
            "to",
            "from",
            "stdout",
            "explain",
            "analyze",
            "(",
            ")",
            ";",
            "'",
            "''",
            "\"",
            "\"\"",
            "E'",
            "\\",
            "$",
            "$$",
            "$a$",
            "$1",
            "/*",
            "*/",
            "--",
            "\n",
            " ",
            "U&\"",
            "U&'",
            "\\005f",
            "uescape",
            ".",
            "::",
            "1",
            "1e",
            ".5",
            "é",
            "\u{a0}",
            "set_config",
            "for",
            "update",
            "into",
            "with",
            "as",
            "-",
            "+",
            "*",
            "/",
            "\r",
            "tessera",
            "role",
            "time",
            "zone",
            "reset",
            "all",
            "\u{1F600}",
            "x'",
            "b'",
        ];
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..6000 {
            let sql: String = (0..1 + rng.below(24)).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            let first = check(&sql);
            assert_eq!(first, check(&sql), "{sql:?}");
            if let Err(refusal) = first {
                assert!(
                    [INSUFFICIENT_PRIVILEGE, FEATURE_NOT_SUPPORTED, SYNTAX_ERROR].contains(&refusal.sqlstate),
                    "{sql:?}"
                );
            }
        }
    }
}
