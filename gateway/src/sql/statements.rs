//! Upstream prepared statements standing in for a client's unnamed ones.
//!
//! Most drivers (pgbench `-M extended`, psycopg, JDBC below its prepare threshold, Npgsql) send every
//! statement as Parse of the unnamed statement, Bind, Execute, Sync, so the server parses, analyses and
//! plans the same text again each time. The relay prepares such a text once upstream under a name of its
//! own (`tessera_unnamed_<n>`) and, while the client's unnamed statement is that text, points the client's
//! Bind and Describe of the unnamed statement at it. The client's next Parse of the same text goes
//! upstream as a Parse of the empty statement, which answers ParseComplete in its place; after a Close or a
//! Query (which drop the unnamed statement) the client's references to it go to a name that is never
//! prepared, so they fail as on the server and never reach that empty statement.
//!
//! What may differ from parsing each time is kept out:
//! - texts with string constants, and texts that change settings, are parsed each time: the server fixes
//!   a constant's value when it analyses the text (`'2024-06-01'` by TimeZone and DateStyle, `'today'` and
//!   `'now'` by the clock);
//! - a kept statement may run on a generic plan (from its first run when it has no parameters, as the
//!   server's own prepared statements do), where constant expressions are folded by the settings of that
//!   moment (`(2::float8 / 3)::text` by `extra_float_digits`): every `SET` or `RESET` the client sends
//!   forgets the kept texts;
//! - an error of class `0A` (a kept statement whose result changed shape: "cached plan must not change
//!   result type"), `42` (a name or type that no longer resolves as it did) or `26` forgets them too, so
//!   the next Parse of each prepares it afresh; the run that met the change fails once, as a driver's own
//!   prepared statement does.
//!
//! The text was checked when first prepared (the check is a function of the text alone), so a repeated
//! text skips the check; the statements live in the client's server session, whose `DISCARD ALL` drops
//! them before another client gets the connection. A session prepares at most [`MAX_STATEMENTS`] times
//! (counting texts prepared again after an error or forgetting), each text at most [`MAX_TEXT`] bytes;
//! then it parses as asked.
//!
//! A prepared text is remembered once its batch is answered without an error: each Sync (or Query) sent
//! upstream is queued with the relay's Parses before it, an error marks the oldest unanswered one, and
//! ReadyForQuery settles it. (The relay refuses a Query inside an unsynced batch, whose ReadyForQuery the
//! server would skip after an error.) Not mirrored: a client that, after an error in a batch, Binds the
//! unnamed statement without parsing it again reaches the text of the Parse the server skipped.

use std::collections::{HashMap, VecDeque};

/// The prefix of the relay's statement names; a client may not name a statement with it.
pub(crate) const PREFIX: &str = "tessera_unnamed_";

/// What a client's reference to a statement name with the relay's prefix is sent upstream as: a name the
/// relay never prepares, so a Bind or Describe of it fails as for any missing statement and a Close does
/// nothing.
pub(crate) const RESERVED: &str = "tessera_unnamed_reserved";

/// The most statements the relay prepares in one client session.
pub(crate) const MAX_STATEMENTS: u32 = 256;

/// The longest Parse (text and parameter types) the relay prepares; longer ones go as they are.
pub(crate) const MAX_TEXT: usize = 16 * 1024;

/// SQLSTATE classes of errors after which the kept texts are forgotten (prepared afresh at their next
/// Parse): `0A` (a statement's result changed shape since it was prepared: "cached plan must not change
/// result type"), `42` (a name or type that no longer resolves as it did), `26` (a statement that is gone).
const STALE_CLASSES: [&str; 3] = ["0A", "42", "26"];

/// How to send the client's Parse of its unnamed statement.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unnamed {
    /// The text is prepared upstream under this number: send a Parse of the empty statement instead.
    Prepared(u32),
    /// Prepare the text under this number (once the check passed, and if it has no string constants).
    Prepare(u32),
    /// Send it as it is.
    AsIs,
}

/// A request the server answers with ReadyForQuery (a Sync, or a Query), with the relay's Parses sent
/// before it since the previous one.
#[derive(Debug, Default)]
struct Request {
    parses: Vec<(Box<[u8]>, u32)>,
    failed: bool,
}

/// What the client's unnamed statement is upstream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The server's own unnamed statement (or none).
    #[default]
    Server,
    /// The relay's statement `n`.
    Relay(u32),
    /// None: the client closed it, or a Query dropped it, while it was one of the relay's (the server's own
    /// unnamed statement is then the empty one, which the client must not reach).
    Gone,
}

/// One client session's statements of the relay's, and the requests in flight.
#[derive(Debug, Default)]
pub(crate) struct Statements {
    /// Parse bodies past the statement name (text, parameter types) prepared upstream, by number.
    prepared: HashMap<Box<[u8]>, u32>,
    /// The batch the client is sending (not yet ended by a Sync).
    batch: Request,
    /// Requests sent whose ReadyForQuery has not come back, oldest first.
    pending: VecDeque<Request>,
    unnamed: Target,
    next: u32,
}

/// The relay's name for statement `n`.
pub(crate) fn name(n: u32) -> String {
    format!("{PREFIX}{n}")
}

impl Statements {
    /// How to send a Parse of the unnamed statement whose body past the name is `text` (query, parameter
    /// types). `Prepare` still needs the check, and becomes `AsIs` for a text with string constants.
    pub(crate) fn unnamed(&self, text: &[u8]) -> Unnamed {
        if let Some(&n) = self.prepared.get(text) {
            Unnamed::Prepared(n)
        } else if self.next < MAX_STATEMENTS && text.len() <= MAX_TEXT {
            Unnamed::Prepare(self.next)
        } else {
            Unnamed::AsIs
        }
    }

    /// A Parse of the client's unnamed statement went upstream as `how` (`text` as in
    /// [`Statements::unnamed`]). A refused text goes as it is (`AsIs`): the server fails it and its unnamed
    /// statement is gone, as it would be.
    pub(crate) fn sent_unnamed(&mut self, text: &[u8], how: &Unnamed) {
        match how {
            Unnamed::Prepared(n) => self.unnamed = Target::Relay(*n),
            Unnamed::Prepare(n) => {
                self.unnamed = Target::Relay(*n);
                self.next = self.next.max(n + 1);
                self.batch.parses.push((text.into(), *n));
            }
            Unnamed::AsIs => self.unnamed = Target::Server,
        }
    }

    /// A Sync went upstream.
    pub(crate) fn sent_sync(&mut self) {
        self.pending.push_back(std::mem::take(&mut self.batch));
    }

    /// A simple Query went upstream (never inside an extended-protocol batch: the relay refuses that). The
    /// server drops its unnamed statement for it.
    pub(crate) fn sent_query(&mut self) {
        self.gone();
        self.pending.push_back(Request::default());
    }

    /// The client changed a session setting: the kept texts were planned under the old settings (a
    /// constant expression such as `(2::float8 / 3)::text` is folded by `extra_float_digits`), so they are
    /// prepared afresh at their next Parse.
    pub(crate) fn settings_changed(&mut self) {
        self.prepared.clear();
    }

    /// The client closes its unnamed statement (the Close goes upstream as it is, to the server's own).
    pub(crate) fn closed_unnamed(&mut self) {
        self.gone();
    }

    fn gone(&mut self) {
        if self.unnamed != Target::Server {
            self.unnamed = Target::Gone;
        }
    }

    /// The statement name the client's unnamed one goes upstream as, when not the server's own unnamed one.
    pub(crate) fn for_unnamed(&self) -> Option<String> {
        match self.unnamed {
            Target::Server => None,
            Target::Relay(n) => Some(name(n)),
            Target::Gone => Some(RESERVED.to_owned()),
        }
    }

    /// The server answered an error (its SQLSTATE): the oldest unanswered request failed.
    pub(crate) fn error(&mut self, code: &str) {
        match self.pending.front_mut() {
            Some(request) => request.failed = true,
            None => self.batch.failed = true,
        }
        if STALE_CLASSES.iter().any(|class| code.starts_with(class)) {
            self.prepared.clear();
        }
    }

    /// The server answered ReadyForQuery: the oldest request is done; its Parses are prepared unless it
    /// failed.
    pub(crate) fn ready(&mut self) {
        if let Some(request) = self.pending.pop_front()
            && !request.failed
        {
            for (text, n) in request.parses {
                self.prepared.entry(text).or_insert(n);
            }
        }
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"select 1\0\0\0";
    const B: &[u8] = b"select 2\0\0\0";

    fn parse(s: &mut Statements, text: &[u8]) -> Unnamed {
        let how = s.unnamed(text);
        s.sent_unnamed(text, &how);
        how
    }

    fn relay(n: u32) -> Option<String> {
        Some(name(n))
    }

    #[test]
    fn a_text_is_prepared_once_and_reused_after_its_batch_went_through() {
        let mut s = Statements::default();
        assert_eq!(parse(&mut s, A), Unnamed::Prepare(0));
        // Pipelined before the answer came back: prepared again under a new number.
        assert_eq!(parse(&mut s, A), Unnamed::Prepare(1));
        s.sent_sync();
        assert_eq!(s.unnamed(A), Unnamed::Prepare(2), "not before ReadyForQuery");
        s.ready();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
        assert_eq!(s.for_unnamed(), relay(0));
        assert_eq!(parse(&mut s, B), Unnamed::Prepare(2));
        assert_eq!(s.for_unnamed(), relay(2));
    }

    #[test]
    fn a_batch_with_an_error_prepares_nothing_and_errors_go_to_the_oldest_request() {
        let mut s = Statements::default();
        parse(&mut s, A);
        s.sent_sync();
        parse(&mut s, B);
        s.sent_sync();
        // The first batch fails (its Parse, or anything after it): nothing of it is remembered.
        s.error("22012");
        s.ready();
        s.ready();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.unnamed(A), Unnamed::Prepare(2));
        assert_eq!(s.unnamed(B), Unnamed::Prepared(1));
        // An error before the batch's Sync went out marks that batch.
        parse(&mut s, A);
        s.error("22012");
        s.sent_sync();
        s.ready();
        assert_eq!(s.unnamed(A), Unnamed::Prepare(3));
        assert_eq!(s.unnamed(B), Unnamed::Prepared(1), "an error of another class forgets nothing");
    }

    #[test]
    fn stale_statements_and_changed_settings_forget_every_prepared_text() {
        for forget in [
            |s: &mut Statements| s.error("0A000"),
            |s: &mut Statements| s.error("42883"),
            |s: &mut Statements| s.error("26000"),
            |s: &mut Statements| s.settings_changed(),
        ] {
            let mut s = Statements::default();
            parse(&mut s, A);
            s.sent_sync();
            s.ready();
            assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
            s.sent_sync();
            forget(&mut s);
            s.ready();
            assert_eq!(s.unnamed(A), Unnamed::Prepare(1));
        }
    }

    #[test]
    fn queries_and_closes_leave_the_unnamed_statement_gone_never_the_empty_one() {
        let mut s = Statements::default();
        parse(&mut s, A);
        s.sent_sync();
        s.ready();
        assert_eq!(s.for_unnamed(), relay(0));
        s.sent_query();
        assert_eq!(s.for_unnamed().as_deref(), Some(RESERVED));
        s.ready();
        assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
        s.closed_unnamed();
        assert_eq!(s.for_unnamed().as_deref(), Some(RESERVED));
        // Parsed as it is (refused, say): the server's own unnamed statement is the client's again.
        assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
        s.sent_unnamed(B, &Unnamed::AsIs);
        assert_eq!(s.for_unnamed(), None);
        // And closing or a query then concern the server's own.
        s.closed_unnamed();
        s.sent_query();
        assert_eq!(s.for_unnamed(), None);
    }

    #[test]
    fn statements_are_bounded_in_number_and_length() {
        let mut s = Statements::default();
        for i in 0..MAX_STATEMENTS {
            let text = format!("select {i}\0\0\0").into_bytes();
            assert_eq!(parse(&mut s, &text), Unnamed::Prepare(i));
            s.sent_sync();
            s.ready();
        }
        assert_eq!(s.unnamed(b"select 1000\0\0\0"), Unnamed::AsIs);
        assert_eq!(s.unnamed(b"select 0\0\0\0"), Unnamed::Prepared(0));
        let long = vec![b'x'; MAX_TEXT + 1];
        assert_eq!(Statements::default().unnamed(&long), Unnamed::AsIs);
    }
}
