//! Framing of PostgreSQL protocol messages (tag byte, length, body) in both directions, and the few
//! backend messages the endpoint writes itself (encoded with pgwire's message types).

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest message the endpoint accepts from a client (PostgreSQL's own limit for most messages is
/// 1 GB; reporting queries and their parameters are far smaller).
pub const MAX_CLIENT_MESSAGE: usize = 16 * 1024 * 1024;
/// The largest message accepted from the upstream server in the endpoint's own exchanges (the relay
/// bounds data rows by the byte limit instead).
pub const MAX_UPSTREAM_MESSAGE: usize = 64 * 1024 * 1024;

/// One whole message: the tag byte, the length and the body, as they travel.
#[derive(Debug)]
pub struct Frame {
    bytes: BytesMut,
}

impl Frame {
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The message without its tag and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// The whole message, ready to forward.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The length of the whole message on the wire.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid message length {0}")]
    Length(i64),
}

/// Reads one message. `Ok(None)` when the peer closed the connection between messages.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; 5];
    match reader.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    reader.read_exact(&mut header[1..]).await?;
    let (_, total) = header_length(header, max)?;
    let mut bytes = BytesMut::with_capacity(total);
    bytes.extend_from_slice(&header);
    bytes.resize(total, 0);
    reader.read_exact(&mut bytes[5..]).await?;
    Ok(Some(Frame { bytes }))
}

/// The tag and whole length (tag included) of the message whose header starts `buf`, once its five header
/// bytes are there; an error for a length below 4 or a body over `max`.
pub fn frame_header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    match buf.get(..5) {
        Some(&[tag, a, b, c, d]) => header_length([tag, a, b, c, d], max).map(Some),
        _ => Ok(None),
    }
}

/// The tag and whole length of a message from its five header bytes (see [`frame_header`]).
fn header_length(header: [u8; 5], max: usize) -> Result<(u8, usize), FrameError> {
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 || len as usize - 4 > max {
        return Err(FrameError::Length(len.into()));
    }
    Ok((header[0], len as usize + 1))
}

/// Takes one whole message off the front of `buf`, when it holds one. Cancel-safe reading: fill `buf` with
/// `read_buf`, then split frames off it.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    let Some((_, total)) = frame_header(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame { bytes: buf.split_to(total) }))
}

/// Reads an untagged startup-phase packet (SSLRequest, StartupMessage, CancelRequest): length first.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(reader: &mut R) -> Result<BytesMut, FrameError> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = i32::from_be_bytes(len);
    // PostgreSQL's own bounds: at least the length and a code, at most 10,000 bytes.
    if !(8..=10_000).contains(&len) {
        return Err(FrameError::Length(len.into()));
    }
    let mut bytes = BytesMut::with_capacity(len as usize);
    bytes.put_i32(len);
    bytes.resize(len as usize, 0);
    reader.read_exact(&mut bytes[4..]).await?;
    Ok(bytes)
}

/// The 4-byte code after the length of a startup-phase packet.
pub fn startup_code(packet: &[u8]) -> i32 {
    i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// Reads a NUL-terminated string at the start of `body`, returning it and the rest.
pub fn cstr(body: &[u8]) -> Option<(&str, &[u8])> {
    let end = body.iter().position(|b| *b == 0)?;
    let s = std::str::from_utf8(&body[..end]).ok()?;
    Some((s, &body[end + 1..]))
}

/// The SQL text of a Query message.
pub fn query_text(frame: &Frame) -> Option<&str> {
    let (sql, rest) = cstr(frame.body())?;
    rest.is_empty().then_some(sql)
}

/// The statement name and SQL text of a Parse message (statement name, query, parameter types).
pub fn parse_parts(frame: &Frame) -> Option<(&str, &str)> {
    let (name, rest) = cstr(frame.body())?;
    let (sql, mut rest) = cstr(rest)?;
    if rest.len() < 2 {
        return None;
    }
    let count = rest.get_i16();
    (count >= 0 && rest.len() == count as usize * 4).then_some((name, sql))
}

/// The SQLSTATE and the message of an ErrorResponse body (each empty when absent).
pub fn error_code_and_message(body: &[u8]) -> (String, String) {
    let field = |wanted| error_field(body, wanted).unwrap_or_default().to_owned();
    (field(b'C'), field(b'M'))
}

/// One field of an ErrorResponse or NoticeResponse body (`b'P'`: the position, …).
pub fn error_field(body: &[u8], wanted: u8) -> Option<&str> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let (value, tail) = cstr(tail)?;
        if field == wanted {
            return Some(value);
        }
        rest = tail;
    }
    None
}

/// The name and value of a ParameterStatus body.
pub fn parameter_status_of(body: &[u8]) -> Option<(String, String)> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((name.to_owned(), value.to_owned()))
}

fn encode(message: PgWireBackendMessage, out: &mut BytesMut) {
    // Encoding into a growable buffer fails only for messages over pgwire's size limits, which these
    // small messages never reach.
    if let Err(e) = message.encode(out) {
        tracing::error!(error = %e, "could not encode a backend message");
    }
}

/// An ErrorResponse. `fatal` ends the session.
pub fn error(out: &mut BytesMut, fatal: bool, sqlstate: &str, message: &str) {
    let severity = if fatal { "FATAL" } else { "ERROR" };
    let fields = vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (b'C', sqlstate.to_owned()),
        (b'M', message.to_owned()),
    ];
    encode(PgWireBackendMessage::ErrorResponse(ErrorResponse::new(fields)), out);
}

pub fn ready_for_query(out: &mut BytesMut) {
    encode(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(TransactionStatus::Idle)), out);
}

pub fn authentication_ok(out: &mut BytesMut) {
    encode(PgWireBackendMessage::Authentication(Authentication::Ok), out);
}

pub fn ask_password(out: &mut BytesMut) {
    encode(PgWireBackendMessage::Authentication(Authentication::CleartextPassword), out);
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    encode(
        PgWireBackendMessage::ParameterStatus(ParameterStatus::new(name.to_owned(), value.to_owned())),
        out,
    );
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    encode(PgWireBackendMessage::BackendKeyData(BackendKeyData::new(pid, SecretKey::I32(secret))), out);
}

/// The length-prefixed message of `message` without a tag (used for the checks in tests of this module).
#[cfg(test)]
fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Encodes a frontend message the endpoint sends upstream itself.
pub fn frontend(tag: u8, body: &[u8], out: &mut BytesMut) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_refused() {
        let mut input: &[u8] = &tagged(b'Q', b"select 1\0");
        let frame = read_frame(&mut input, 100).await.expect("read").expect("a frame");
        assert_eq!(frame.tag(), b'Q');
        assert_eq!(query_text(&frame), Some("select 1"));
        assert!(read_frame(&mut input, 100).await.expect("eof").is_none());

        let mut absurd: &[u8] = &[b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut absurd, 100).await, Err(FrameError::Length(_))));
        let mut negative: &[u8] = &[b'Q', 0, 0, 0, 3];
        assert!(matches!(read_frame(&mut negative, 100).await, Err(FrameError::Length(_))));
        let mut truncated: &[u8] = &[b'Q', 0, 0, 0, 20, b's'];
        assert!(matches!(read_frame(&mut truncated, 100).await, Err(FrameError::Io(_))));
    }

    #[test]
    fn frames_split_off_a_buffer_only_when_whole() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&tagged(b'S', b""));
        buf.extend_from_slice(&tagged(b'Q', b"select 1\0")[..7]);
        assert_eq!(split_frame(&mut buf, 100).expect("ok").expect("sync").tag(), b'S');
        assert!(split_frame(&mut buf, 100).expect("ok").is_none());
        buf.extend_from_slice(&tagged(b'Q', b"select 1\0")[7..]);
        assert_eq!(query_text(&split_frame(&mut buf, 100).expect("ok").expect("query")), Some("select 1"));
        let mut absurd = BytesMut::from(&[b'B', 0x40, 0, 0, 0][..]);
        assert!(split_frame(&mut absurd, 100).is_err());
    }

    #[test]
    fn parse_messages_give_their_sql() {
        let frame = Frame { bytes: BytesMut::from(&tagged(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17")[..]) };
        assert_eq!(parse_parts(&frame), Some(("s1", "select $1")));
        let short = Frame { bytes: BytesMut::from(&tagged(b'P', b"s1\0select $1\0\0\x02\0\0\0\x17")[..]) };
        assert_eq!(parse_parts(&short), None);
    }
}
