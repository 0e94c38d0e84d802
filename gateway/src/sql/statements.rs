//! Upstream prepared statements standing in for a client's unnamed ones.
//!
//! Most drivers (pgbench `-M extended`, psycopg, JDBC below its prepare threshold, Npgsql) send every
//! statement as Parse of the unnamed statement, Bind, Execute, Sync, so the server parses, analyses and
//! plans the same text again each time. The relay prepares such a text once upstream under a name of its
//! own (`tessera_unnamed_<n>`) and, while the client's unnamed statement is that text, points the client's
//! Bind, Describe and Close of the unnamed statement at it. The client's next Parse of the same text goes
//! upstream as a Parse of the empty statement, which answers ParseComplete in its place.
//!
//! Only texts without string constants are prepared so: the server turns a constant into its type once,
//! when it analyses the text, by the settings of that moment (`'2024-06-01'` by TimeZone and DateStyle,
//! `'today'` and `'now'` by the clock), so a kept statement would keep an old value where a new Parse gives
//! a new one. Numbers, parameters and function calls (`now()`) are read or run at each execution. What else
//! differs from parsing each time is what a driver's own prepared statements (psycopg's and JDBC's after
//! five runs) differ by: after five runs the server may run the statement on a generic plan, a change to a
//! table the statement reads that changes its result's shape fails its next run once (`0A000`, after which
//! the relay prepares the text afresh), and an error from analysing the text, which a Parse would give,
//! comes from the Bind instead.
//!
//! The text was checked when first prepared (the check is a function of the text alone), so a repeated
//! text skips the check; the statements live in the client's server session, whose `DISCARD ALL` drops
//! them before another client gets the connection; at most [`MAX_STATEMENTS`] of them per session, each at
//! most [`MAX_TEXT`] bytes.
//!
//! A prepared text is remembered once its batch is answered without an error: each Sync (or Query) sent
//! upstream is queued with the relay's Parses before it, an error marks the oldest unanswered one, and
//! ReadyForQuery settles it. A client that sends a Query inside an unsynced batch (whose ReadyForQuery the
//! server skips after an error) turns this off for the rest of its session, as the answers can then no
//! longer be matched. Not mirrored: a client that, after an error, Binds the unnamed statement without
//! parsing it again runs the text it parsed last, where the server could still hold an older one.

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

/// The server's error when a statement's result changed shape since it was prepared.
const RESULT_TYPE_CHANGED: &str = "cached plan must not change result type";

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

/// One client session's statements of the relay's, and the requests in flight.
#[derive(Debug, Default)]
pub(crate) struct Statements {
    /// Parse bodies past the statement name (text, parameter types) prepared upstream, by number.
    prepared: HashMap<Box<[u8]>, u32>,
    /// The batch the client is sending (not yet ended by a Sync).
    batch: Request,
    /// Requests sent whose ReadyForQuery has not come back, oldest first.
    pending: VecDeque<Request>,
    /// The statement the client's unnamed one is upstream, when it is one of the relay's.
    unnamed: Option<u32>,
    next: u32,
    /// No more statements are prepared in this session.
    off: bool,
}

/// The relay's name for statement `n`.
pub(crate) fn name(n: u32) -> String {
    format!("{PREFIX}{n}")
}

impl Statements {
    /// How to send a Parse of the unnamed statement whose body past the name is `text` (query, parameter
    /// types). `Prepare` still needs the check, and becomes `AsIs` for a text with string constants.
    pub(crate) fn unnamed(&self, text: &[u8]) -> Unnamed {
        if self.off {
            Unnamed::AsIs
        } else if let Some(&n) = self.prepared.get(text) {
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
            Unnamed::Prepared(n) => self.unnamed = Some(*n),
            Unnamed::Prepare(n) => {
                self.unnamed = Some(*n);
                self.next = self.next.max(n + 1);
                self.batch.parses.push((text.into(), *n));
            }
            Unnamed::AsIs => self.unnamed = None,
        }
    }

    /// A Sync went upstream.
    pub(crate) fn sent_sync(&mut self) {
        if !self.off {
            self.pending.push_back(std::mem::take(&mut self.batch));
        }
    }

    /// A simple Query went upstream (`in_batch`: inside an extended-protocol batch not yet synced). The
    /// server drops its unnamed statement for it.
    pub(crate) fn sent_query(&mut self, in_batch: bool) {
        self.unnamed = None;
        if in_batch {
            // After an error in the batch the server skips the Query and its ReadyForQuery: the answers can
            // no longer be matched to the requests.
            self.off = true;
            self.prepared.clear();
            self.pending.clear();
            self.batch = Request::default();
        } else if !self.off {
            self.pending.push_back(Request::default());
        }
    }

    /// The client closes its unnamed statement (the Close goes upstream as it is, to the server's own).
    pub(crate) fn closed_unnamed(&mut self) {
        self.unnamed = None;
    }

    /// The upstream statement the client's unnamed one stands for, when it is one of the relay's.
    pub(crate) fn for_unnamed(&self) -> Option<u32> {
        self.unnamed
    }

    /// The server answered an error (its SQLSTATE and message): the oldest unanswered request failed.
    pub(crate) fn error(&mut self, code: &str, message: &str) {
        if self.off {
            return;
        }
        match self.pending.front_mut() {
            Some(request) => request.failed = true,
            None => self.batch.failed = true,
        }
        if code == "0A000" && message == RESULT_TYPE_CHANGED {
            // Prepared afresh at the next Parse of each text.
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
        assert_eq!(s.for_unnamed(), Some(0));
        assert_eq!(parse(&mut s, B), Unnamed::Prepare(2));
        assert_eq!(s.for_unnamed(), Some(2));
    }

    #[test]
    fn a_batch_with_an_error_prepares_nothing_and_errors_go_to_the_oldest_request() {
        let mut s = Statements::default();
        parse(&mut s, A);
        s.sent_sync();
        parse(&mut s, B);
        s.sent_sync();
        // The first batch fails (its Parse, or anything after it): nothing of it is remembered.
        s.error("42601", "syntax error");
        s.ready();
        s.ready();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.unnamed(A), Unnamed::Prepare(2));
        assert_eq!(s.unnamed(B), Unnamed::Prepared(1));
        // An error before the batch's Sync went out marks that batch.
        parse(&mut s, A);
        s.error("22012", "division by zero");
        s.sent_sync();
        s.ready();
        assert_eq!(s.unnamed(A), Unnamed::Prepare(3));
    }

    #[test]
    fn a_changed_result_type_forgets_every_prepared_text() {
        let mut s = Statements::default();
        parse(&mut s, A);
        s.sent_sync();
        s.ready();
        assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
        s.sent_sync();
        s.error("0A000", RESULT_TYPE_CHANGED);
        s.ready();
        assert_eq!(s.unnamed(A), Unnamed::Prepare(1));
    }

    #[test]
    fn queries_and_closes_end_what_the_unnamed_statement_stood_for() {
        let mut s = Statements::default();
        parse(&mut s, A);
        s.sent_sync();
        s.ready();
        assert_eq!(s.for_unnamed(), Some(0));
        s.sent_query(false);
        assert_eq!(s.for_unnamed(), None);
        s.ready();
        assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
        s.closed_unnamed();
        assert_eq!(s.for_unnamed(), None);
        // Parsed as it is (refused, say): the server's own unnamed statement is the client's again.
        assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
        s.sent_unnamed(B, &Unnamed::AsIs);
        assert_eq!(s.for_unnamed(), None);
    }

    #[test]
    fn a_query_inside_a_batch_turns_preparing_off() {
        let mut s = Statements::default();
        parse(&mut s, A);
        s.sent_sync();
        s.ready();
        parse(&mut s, B);
        s.sent_query(true);
        s.sent_sync();
        s.ready();
        s.ready();
        assert_eq!(s.unnamed(A), Unnamed::AsIs);
        assert_eq!(s.unnamed(B), Unnamed::AsIs);
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
