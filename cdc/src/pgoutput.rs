//! A decoder for PostgreSQL's `pgoutput` logical replication messages (protocol version 1), as carried in
//! the XLogData payload of a `START_REPLICATION … LOGICAL … (proto_version '1', publication_names …,
//! messages 'true')` stream. Message layouts follow the PostgreSQL 15 documentation, "Logical Replication
//! Message Formats" (protocol-logicalrep-message-formats).
//!
//! Decoding is total: any input, truncated, malformed or hostile, yields a [`Message`] or a
//! [`DecodeError`], never a panic, and no length read from the input is trusted before the bytes are there.
//!
//! An unchanged TOASTed column arrives as [`Datum::UnchangedToast`], kept distinct from
//! [`Datum::Null`] so that no consumer can mistake "not sent" for "null".

use std::fmt;

/// A WAL position.
pub type Lsn = u64;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
pub type PgTimestamp = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_time: PgTimestamp,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: PgTimestamp,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation_id: u32,
        new: Tuple,
    },
    /// `old` is the key (`K`, a key column changed) or the whole old row (`O`, REPLICA IDENTITY FULL).
    Update {
        relation_id: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        relation_id: u32,
        old: OldTuple,
    },
    Truncate {
        options: u8,
        relation_ids: Vec<u32>,
    },
    /// A message written with `pg_logical_emit_message`.
    LogicalMessage {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

impl Relation {
    pub fn has_full_identity(&self) -> bool {
        self.replica_identity == b'f'
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    Key(Tuple),
    Full(Tuple),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Datum>);

#[derive(Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// An unchanged TOASTed value that was not sent: not null, just not here.
    UnchangedToast,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

impl fmt::Debug for Datum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Datum::Null => f.write_str("Null"),
            Datum::UnchangedToast => f.write_str("UnchangedToast"),
            Datum::Text(t) => write!(f, "Text({:?})", String::from_utf8_lossy(t)),
            Datum::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    #[error("unknown message type {0:#04x}")]
    UnknownMessage(u8),
    #[error("unknown tuple marker {0:#04x}")]
    UnknownTupleMarker(u8),
    #[error("unknown column kind {0:#04x}")]
    UnknownColumnKind(u8),
    #[error("negative length {0} for {1}")]
    NegativeLength(i64, &'static str),
    #[error("{0} is not valid UTF-8")]
    InvalidString(&'static str),
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8("message type").map_err(|_| DecodeError::Empty)?;
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.i64("commit time")?,
        },
        b'O' => Message::Origin { commit_lsn: r.u64("origin LSN")?, name: r.string("origin name")? },
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type {
            oid: r.u32("type oid")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let relation_id = r.u32("relation id")?;
            match r.u8("tuple marker")? {
                b'N' => Message::Insert { relation_id, new: r.tuple()? },
                other => return Err(DecodeError::UnknownTupleMarker(other)),
            }
        }
        b'U' => {
            let relation_id = r.u32("relation id")?;
            let (old, marker) = match r.u8("tuple marker")? {
                b'K' => (Some(OldTuple::Key(r.tuple()?)), r.u8("tuple marker")?),
                b'O' => (Some(OldTuple::Full(r.tuple()?)), r.u8("tuple marker")?),
                other => (None, other),
            };
            if marker != b'N' {
                return Err(DecodeError::UnknownTupleMarker(marker));
            }
            Message::Update { relation_id, old, new: r.tuple()? }
        }
        b'D' => {
            let relation_id = r.u32("relation id")?;
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => return Err(DecodeError::UnknownTupleMarker(other)),
            };
            Message::Delete { relation_id, old }
        }
        b'T' => {
            let count = r.i32("relation count")?;
            let count =
                usize::try_from(count).map_err(|_| DecodeError::NegativeLength(count.into(), "relations"))?;
            let options = r.u8("truncate options")?;
            // Four bytes per id must be present before anything is allocated for them.
            r.ensure(count.saturating_mul(4), "truncated relation ids")?;
            let relation_ids = (0..count).map(|_| r.u32("relation id")).collect::<Result<_, _>>()?;
            Message::Truncate { options, relation_ids }
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.u64("message LSN")?;
            let prefix = r.string("message prefix")?;
            let len = r.len("message content")?;
            Message::LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes(len, "message content")?.to_vec(),
            }
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    match r.buf.len() - r.pos {
        0 => Ok(message),
        n => Err(DecodeError::TrailingBytes(n)),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn ensure(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.len() - self.pos >= n { Ok(()) } else { Err(DecodeError::Truncated(what)) }
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        self.ensure(n, what)?;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// An Int32 length that must not be negative.
    fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n.into(), what))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let end = rest.iter().position(|&b| b == 0).ok_or(DecodeError::Truncated(what))?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::InvalidString(what))?;
        self.pos += end + 1;
        Ok(s.to_owned())
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation id")?;
        let namespace = self.string("relation namespace")?;
        let name = self.string("relation name")?;
        let replica_identity = self.u8("replica identity")?;
        let count = self.i16("column count")?;
        let count =
            usize::try_from(count).map_err(|_| DecodeError::NegativeLength(count.into(), "columns"))?;
        let mut columns = Vec::with_capacity(count.min(self.buf.len()));
        for _ in 0..count {
            columns.push(Column {
                is_key: self.u8("column flags")? & 1 == 1,
                name: self.string("column name")?,
                type_oid: self.u32("column type")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation { id, namespace, name, replica_identity, columns })
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.i16("tuple column count")?;
        let count =
            usize::try_from(count).map_err(|_| DecodeError::NegativeLength(count.into(), "tuple columns"))?;
        let mut datums = Vec::with_capacity(count.min(self.buf.len()));
        for _ in 0..count {
            let datum = match self.u8("column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.len("text value")?;
                    Datum::Text(self.bytes(len, "text value")?.to_vec())
                }
                b'b' => {
                    let len = self.len("binary value")?;
                    Datum::Binary(self.bytes(len, "binary value")?.to_vec())
                }
                other => return Err(DecodeError::UnknownColumnKind(other)),
            };
            datums.push(datum);
        }
        Ok(Tuple(datums))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The inverse of [`decode`], for tests: what a server would send.
    pub(crate) fn encode(message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend(s.as_bytes());
            out.push(0);
        };
        let tuple = |out: &mut Vec<u8>, t: &Tuple| {
            out.extend((t.0.len() as i16).to_be_bytes());
            for d in &t.0 {
                match d {
                    Datum::Null => out.push(b'n'),
                    Datum::UnchangedToast => out.push(b'u'),
                    Datum::Text(v) | Datum::Binary(v) => {
                        out.push(if matches!(d, Datum::Text(_)) { b't' } else { b'b' });
                        out.extend((v.len() as i32).to_be_bytes());
                        out.extend(v);
                    }
                }
            }
        };
        let old = |out: &mut Vec<u8>, o: &OldTuple| match o {
            OldTuple::Key(t) => {
                out.push(b'K');
                tuple(out, t);
            }
            OldTuple::Full(t) => {
                out.push(b'O');
                tuple(out, t);
            }
        };
        match message {
            Message::Begin { final_lsn, commit_time, xid } => {
                out.push(b'B');
                out.extend(final_lsn.to_be_bytes());
                out.extend(commit_time.to_be_bytes());
                out.extend(xid.to_be_bytes());
            }
            Message::Commit { flags, commit_lsn, end_lsn, commit_time } => {
                out.push(b'C');
                out.push(*flags);
                out.extend(commit_lsn.to_be_bytes());
                out.extend(end_lsn.to_be_bytes());
                out.extend(commit_time.to_be_bytes());
            }
            Message::Origin { commit_lsn, name } => {
                out.push(b'O');
                out.extend(commit_lsn.to_be_bytes());
                string(&mut out, name);
            }
            Message::Relation(r) => {
                out.push(b'R');
                out.extend(r.id.to_be_bytes());
                string(&mut out, &r.namespace);
                string(&mut out, &r.name);
                out.push(r.replica_identity);
                out.extend((r.columns.len() as i16).to_be_bytes());
                for c in &r.columns {
                    out.push(u8::from(c.is_key));
                    string(&mut out, &c.name);
                    out.extend(c.type_oid.to_be_bytes());
                    out.extend(c.type_modifier.to_be_bytes());
                }
            }
            Message::Type { oid, namespace, name } => {
                out.push(b'Y');
                out.extend(oid.to_be_bytes());
                string(&mut out, namespace);
                string(&mut out, name);
            }
            Message::Insert { relation_id, new } => {
                out.push(b'I');
                out.extend(relation_id.to_be_bytes());
                out.push(b'N');
                tuple(&mut out, new);
            }
            Message::Update { relation_id, old: o, new } => {
                out.push(b'U');
                out.extend(relation_id.to_be_bytes());
                if let Some(o) = o {
                    old(&mut out, o);
                }
                out.push(b'N');
                tuple(&mut out, new);
            }
            Message::Delete { relation_id, old: o } => {
                out.push(b'D');
                out.extend(relation_id.to_be_bytes());
                old(&mut out, o);
            }
            Message::Truncate { options, relation_ids } => {
                out.push(b'T');
                out.extend((relation_ids.len() as i32).to_be_bytes());
                out.push(*options);
                for id in relation_ids {
                    out.extend(id.to_be_bytes());
                }
            }
            Message::LogicalMessage { transactional, lsn, prefix, content } => {
                out.push(b'M');
                out.push(u8::from(*transactional));
                out.extend(lsn.to_be_bytes());
                string(&mut out, prefix);
                out.extend((content.len() as i32).to_be_bytes());
                out.extend(content);
            }
        }
        out
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z_][a-z0-9_é]{0,20}"
    }

    fn datum() -> impl Strategy<Value = Datum> {
        prop_oneof![
            Just(Datum::Null),
            Just(Datum::UnchangedToast),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Datum::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Datum::Binary),
        ]
    }

    fn tuple() -> impl Strategy<Value = Tuple> {
        proptest::collection::vec(datum(), 0..8).prop_map(Tuple)
    }

    fn old_tuple() -> impl Strategy<Value = OldTuple> {
        prop_oneof![tuple().prop_map(OldTuple::Key), tuple().prop_map(OldTuple::Full)]
    }

    fn message() -> impl Strategy<Value = Message> {
        let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
            |(is_key, name, type_oid, type_modifier)| Column { is_key, name, type_oid, type_modifier },
        );
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>())
                .prop_map(|(final_lsn, commit_time, xid)| Message::Begin { final_lsn, commit_time, xid }),
            (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_time)| {
                    Message::Commit { flags, commit_lsn, end_lsn, commit_time }
                }
            ),
            (any::<u64>(), name()).prop_map(|(commit_lsn, name)| Message::Origin { commit_lsn, name }),
            (
                any::<u32>(),
                name(),
                name(),
                prop_oneof![Just(b'd'), Just(b'f'), Just(b'n'), Just(b'i')],
                proptest::collection::vec(column, 0..6)
            )
                .prop_map(|(id, namespace, name, replica_identity, columns)| Message::Relation(
                    Relation { id, namespace, name, replica_identity, columns }
                )),
            (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| Message::Type {
                oid,
                namespace,
                name
            }),
            (any::<u32>(), tuple()).prop_map(|(relation_id, new)| Message::Insert { relation_id, new }),
            (any::<u32>(), proptest::option::of(old_tuple()), tuple())
                .prop_map(|(relation_id, old, new)| Message::Update { relation_id, old, new }),
            (any::<u32>(), old_tuple()).prop_map(|(relation_id, old)| Message::Delete { relation_id, old }),
            (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..5))
                .prop_map(|(options, relation_ids)| Message::Truncate { options, relation_ids }),
            (any::<bool>(), any::<u64>(), name(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
                |(transactional, lsn, prefix, content)| Message::LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_message_round_trips(m in message()) {
            prop_assert_eq!(decode(&encode(&m)), Ok(m));
        }

        #[test]
        fn every_truncation_is_an_error_not_a_panic(m in message()) {
            let bytes = encode(&m);
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes[..cut]).is_err(), "cut at {} of {}", cut, bytes.len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn corrupted_messages_never_panic(m in message(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = encode(&m);
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn absurd_lengths_are_refused_without_allocating() {
        let mut insert = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
        insert.extend(i32::MAX.to_be_bytes());
        assert_eq!(decode(&insert), Err(DecodeError::Truncated("text value")));
        let mut negative = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
        negative.extend((-5i32).to_be_bytes());
        assert!(matches!(decode(&negative), Err(DecodeError::NegativeLength(-5, _))));
        let mut truncate = vec![b'T'];
        truncate.extend(i32::MAX.to_be_bytes());
        truncate.push(0);
        assert_eq!(decode(&truncate), Err(DecodeError::Truncated("truncated relation ids")));
    }

    #[test]
    fn unchanged_toast_is_not_null() {
        let update = Message::Update {
            relation_id: 7,
            old: None,
            new: Tuple(vec![Datum::Text(b"1".to_vec()), Datum::UnchangedToast, Datum::Null]),
        };
        match decode(&encode(&update)) {
            Ok(Message::Update { new, .. }) => {
                assert_eq!(new.0[1], Datum::UnchangedToast);
                assert_ne!(new.0[1], Datum::Null);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn trailing_bytes_and_unknown_tags_are_errors() {
        let mut begin = encode(&Message::Begin { final_lsn: 1, commit_time: 2, xid: 3 });
        begin.push(0);
        assert_eq!(decode(&begin), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownMessage(b'Z')));
        assert_eq!(decode(b""), Err(DecodeError::Empty));
    }
}
