//! Upstream prepared statements standing in for a client's unnamed ones.
//!
//! Most drivers (pgbench `-M extended`, psycopg, JDBC below its prepare threshold, Npgsql, Grafana's Go
//! driver) send every statement as Parse of the unnamed statement, Bind, Execute, Sync, so the server
//! parses, analyses and plans the same text again each time. The relay prepares such a text once upstream
//! under a name of its own (`tessera_unnamed_<n>`) and, while the client's unnamed statement is that text,
//! points the client's Bind, Describe and Close at it. The client's next Parse of the same text goes
//! upstream as a Parse of the empty statement: it still answers ParseComplete in its place, and it still
//! replaces the server's unnamed statement, so nothing the client does later can reach an older one.
//!
//! What the client sees stays what PostgreSQL gives: the same ParseComplete, descriptions, rows and
//! errors, in order. The text was checked when first prepared (the check is a function of the text alone),
//! so a repeated text skips the check; a text that fails to parse or is refused is never remembered. The
//! statements live in the client's server session, whose `DISCARD ALL` drops them before another client
//! gets the connection, and there are at most [`MAX_STATEMENTS`] of them per session, each at most
//! [`MAX_TEXT`] bytes, so a client cannot grow the server's memory through them.
//!
//! The server's answers are matched to the requests by order: each Parse sent upstream and each request
//! that ends in ReadyForQuery (Sync, Query) is queued; ParseComplete settles the oldest Parse, an error
//! drops the Parses up to the next Sync (the server skips them) and ReadyForQuery ends a Sync's batch.

use std::collections::{HashMap, VecDeque};

/// The prefix of the relay's statement names; a client may not name a statement with it.
pub(crate) const PREFIX: &str = "tessera_unnamed_";

/// The most statements the relay prepares in one client session.
pub(crate) const MAX_STATEMENTS: u32 = 256;

/// The longest Parse (text and parameter types) the relay prepares; longer ones go as they are.
pub(crate) const MAX_TEXT: usize = 16 * 1024;

/// A request sent upstream whose answer has not come back.
#[derive(Debug)]
enum Pending {
    /// A Parse; `Some` when it prepares a statement of the relay's (its text and number).
    Parse(Option<(Box<[u8]>, u32)>),
    /// A Sync or a Query: answered by ReadyForQuery.
    Sync,
}

/// How to send the client's Parse of its unnamed statement.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unnamed {
    /// The text is prepared upstream under this number: send a Parse of the empty statement instead.
    Prepared(u32),
    /// Prepare the text under this number (once the check passed).
    Prepare(u32),
    /// Send it as it is: no room left, or the text is too long.
    AsIs,
}

/// One client session's statements of the relay's, and the requests in flight.
#[derive(Debug, Default)]
pub(crate) struct Statements {
    /// Parse bodies past the statement name (text, parameter types) prepared upstream, by number.
    prepared: HashMap<Box<[u8]>, u32>,
    pending: VecDeque<Pending>,
    /// The statement the client's unnamed one is upstream, when it is one of the relay's.
    unnamed: Option<u32>,
    next: u32,
}

/// The relay's name for statement `n`.
pub(crate) fn name(n: u32) -> String {
    format!("{PREFIX}{n}")
}

impl Statements {
    /// How to send a Parse of the unnamed statement whose body past the name is `text` (query, parameter
    /// types). `Prepared` is settled at once; `Prepare` and `AsIs` wait for [`Statements::sent_unnamed`].
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
            Unnamed::Prepared(n) => {
                self.unnamed = Some(*n);
                self.pending.push_back(Pending::Parse(None));
            }
            Unnamed::Prepare(n) => {
                self.unnamed = Some(*n);
                self.next = self.next.max(n + 1);
                self.pending.push_back(Pending::Parse(Some((text.into(), *n))));
            }
            Unnamed::AsIs => {
                self.unnamed = None;
                self.pending.push_back(Pending::Parse(None));
            }
        }
    }

    /// A Parse of a named statement of the client's went upstream.
    pub(crate) fn sent_named(&mut self) {
        self.pending.push_back(Pending::Parse(None));
    }

    /// A Sync went upstream.
    pub(crate) fn sent_sync(&mut self) {
        self.pending.push_back(Pending::Sync);
    }

    /// A simple Query went upstream: it ends in ReadyForQuery, and the server drops its unnamed statement.
    pub(crate) fn sent_query(&mut self) {
        self.unnamed = None;
        self.pending.push_back(Pending::Sync);
    }

    /// The client closes its unnamed statement (the Close goes upstream as it is, to the server's own).
    pub(crate) fn closed_unnamed(&mut self) {
        self.unnamed = None;
    }

    /// The client closes a statement by a name of the relay's: it is no longer prepared.
    pub(crate) fn closed_named(&mut self, name: &str) {
        if let Some(n) = name.strip_prefix(PREFIX).and_then(|n| n.parse::<u32>().ok()) {
            self.prepared.retain(|_, v| *v != n);
            if self.unnamed == Some(n) {
                self.unnamed = None;
            }
        }
    }

    /// The upstream statement the client's unnamed one stands for, when it is one of the relay's.
    pub(crate) fn for_unnamed(&self) -> Option<u32> {
        self.unnamed
    }

    /// The server answered ParseComplete (for the oldest Parse in flight).
    pub(crate) fn parse_complete(&mut self) {
        if let Some(Pending::Parse(prepared)) = self.pending.front() {
            if let Some((text, n)) = prepared {
                self.prepared.entry(text.clone()).or_insert(*n);
            }
            self.pending.pop_front();
        }
    }

    /// The server answered an error: it skips the rest of the batch up to Sync, so no Parse before that
    /// Sync will complete.
    pub(crate) fn error(&mut self) {
        while matches!(self.pending.front(), Some(Pending::Parse(_))) {
            self.pending.pop_front();
        }
    }

    /// The server answered ReadyForQuery: the oldest Sync (or Query) is done, with what was before it.
    pub(crate) fn ready(&mut self) {
        while let Some(request) = self.pending.pop_front() {
            if matches!(request, Pending::Sync) {
                break;
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
    fn a_text_is_prepared_once_and_reused_after_it_parsed() {
        let mut s = Statements::default();
        assert_eq!(parse(&mut s, A), Unnamed::Prepare(0));
        // Pipelined before the answer came back: prepared again under a new number.
        assert_eq!(parse(&mut s, A), Unnamed::Prepare(1));
        s.sent_sync();
        s.parse_complete();
        s.parse_complete();
        s.ready();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
        assert_eq!(s.for_unnamed(), Some(0));
        assert_eq!(parse(&mut s, B), Unnamed::Prepare(2));
        assert_eq!(s.for_unnamed(), Some(2));
    }

    #[test]
    fn a_failed_parse_is_not_remembered_and_an_error_skips_to_sync() {
        let mut s = Statements::default();
        parse(&mut s, A);
        parse(&mut s, B);
        s.sent_sync();
        parse(&mut s, B);
        s.sent_sync();
        // The first Parse fails: the second is skipped by the server, up to the first Sync.
        s.error();
        s.ready();
        // The second batch goes through.
        s.parse_complete();
        s.ready();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.unnamed(A), Unnamed::Prepare(3));
        assert_eq!(s.unnamed(B), Unnamed::Prepared(2));
    }

    #[test]
    fn queries_and_closes_end_what_the_unnamed_statement_stood_for() {
        let mut s = Statements::default();
        parse(&mut s, A);
        s.sent_sync();
        s.parse_complete();
        s.ready();
        assert_eq!(s.for_unnamed(), Some(0));
        s.sent_query();
        assert_eq!(s.for_unnamed(), None);
        s.ready();
        assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
        s.closed_unnamed();
        assert_eq!(s.for_unnamed(), None);
        assert_eq!(parse(&mut s, A), Unnamed::Prepared(0));
        s.closed_named(&name(0));
        assert_eq!(s.for_unnamed(), None);
        assert_eq!(s.unnamed(A), Unnamed::Prepare(1));
        // Parsed as it is (refused, say): the server's own unnamed statement is the client's again.
        let how = Unnamed::AsIs;
        s.sent_unnamed(B, &how);
        assert_eq!(s.for_unnamed(), None);
    }

    #[test]
    fn statements_are_bounded_in_number_and_length() {
        let mut s = Statements::default();
        for i in 0..MAX_STATEMENTS {
            let text = format!("select {i}\0\0\0").into_bytes();
            assert_eq!(parse(&mut s, &text), Unnamed::Prepare(i));
            s.parse_complete();
        }
        assert_eq!(s.unnamed(b"select 'one more'\0\0\0"), Unnamed::AsIs);
        assert_eq!(s.unnamed(b"select 0\0\0\0"), Unnamed::Prepared(0));
        let long = vec![b'x'; MAX_TEXT + 1];
        assert_eq!(Statements::default().unnamed(&long), Unnamed::AsIs);
    }
}
