//! Framing of the protobuf messages on a QUIC stream, shared by edge and cloud.
//!
//! One bidirectional stream per request. Every frame is a 1-byte kind, a
//! big-endian `u32` payload length and the payload (protobuf bytes of the
//! `offramp.v1` messages, or the raw token for [`Kind::Auth`]):
//!
//! ```text
//! +------+----------------+---------------------+
//! | kind | length (u32 BE)| payload (length B)  |
//! +------+----------------+---------------------+
//! ```
//!
//! The edge writes an optional [`Kind::Auth`] frame (its bearer token, needed
//! when the cloud has a token table) and one request frame
//! ([`Kind::ModelInfoRequest`] or [`Kind::InferRequest`]), then finishes its
//! side of the stream. The cloud answers with exactly one frame: the response
//! ([`Kind::ModelInfo`] or [`Kind::InferResponse`]) or [`Kind::Error`]
//! carrying a `pb::Error` (a gRPC code and message, with the same codes the
//! gRPC service would return). A bad frame fails its own stream only, never
//! the connection.
//!
//! Decoder sessions use the same framing: [`Kind::DecoderInfoRequest`] is
//! answered by one [`Kind::DecoderInfo`] frame, and a stream whose first
//! request frame is a [`Kind::GenerateRequest`] is one generation session,
//! the QUIC form of the gRPC `Generate` stream: the edge writes any number
//! of `GenerateRequest` frames (open, then steps), the cloud any number of
//! [`Kind::GenerateResponse`] frames, and an [`Kind::Error`] frame ends the
//! session with its status. Either side finishing its half ends it cleanly.

//!
//! Everything here but [`read_frame`] is pure: [`decode_header`] and
//! [`Frame::parse`] work on bytes in memory (and are what the tests and
//! fuzzers drive), the async read loop only moves bytes from the stream.

use bytes::{BufMut, Bytes, BytesMut};
use offramp_proto as pb;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};
use tonic::{Code, Status};

/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 5;

/// Largest token an [`Kind::Auth`] frame may carry.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// `pb::ModelInfoRequest` (edge → cloud).
    ModelInfoRequest = 0x01,
    /// `pb::InferRequest` (edge → cloud).
    InferRequest = 0x02,
    /// The bearer token as UTF-8 (edge → cloud, before the request).
    Auth = 0x03,
    /// `pb::ModelInfoRequest` asking for the decoders a cloud holds (edge → cloud).
    DecoderInfoRequest = 0x04,
    /// `pb::GenerateRequest`: a message of a generation session (edge → cloud).
    GenerateRequest = 0x05,
    /// `pb::ModelInfo` (cloud → edge).
    ModelInfo = 0x81,
    /// `pb::InferResponse` (cloud → edge).
    InferResponse = 0x82,
    /// `pb::DecoderInfo` (cloud → edge).
    DecoderInfo = 0x83,
    /// `pb::GenerateResponse`: a message of a generation session (cloud → edge).
    GenerateResponse = 0x84,
    /// `pb::Error`: a gRPC code and message (cloud → edge).
    Error = 0xEE,
}

impl Kind {
    /// The kind of a successful answer to a request of this kind.
    pub fn answer(self) -> Option<Kind> {
        match self {
            Kind::ModelInfoRequest => Some(Kind::ModelInfo),
            Kind::InferRequest => Some(Kind::InferResponse),
            Kind::DecoderInfoRequest => Some(Kind::DecoderInfo),
            Kind::GenerateRequest => Some(Kind::GenerateResponse),
            _ => None,
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Kind::ModelInfoRequest,
            0x02 => Kind::InferRequest,
            0x03 => Kind::Auth,
            0x04 => Kind::DecoderInfoRequest,
            0x05 => Kind::GenerateRequest,
            0x81 => Kind::ModelInfo,
            0x82 => Kind::InferResponse,
            0x83 => Kind::DecoderInfo,
            0x84 => Kind::GenerateResponse,
            0xEE => Kind::Error,
            _ => return None,
        })
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("{kind:?} frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { kind: Kind, len: usize, limit: usize },
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated { expected: usize, got: usize },
    #[error("{kind:?} frame does not decode: {source}")]
    Decode { kind: Kind, source: prost::DecodeError },
    #[error("auth frame does not hold a UTF-8 token")]
    BadToken,
    #[error("stream failed: {0}")]
    Io(#[from] std::io::Error),
}

/// One frame read from a stream.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Bytes,
}

impl Frame {
    /// Decodes the payload as the protobuf message `M`.
    pub fn decode<M: Message + Default>(&self) -> Result<M, WireError> {
        M::decode(self.payload.clone()).map_err(|source| WireError::Decode { kind: self.kind, source })
    }

    /// The token of an [`Kind::Auth`] frame.
    pub fn token(&self) -> Result<&str, WireError> {
        std::str::from_utf8(&self.payload).map_err(|_| WireError::BadToken)
    }
}

/// Appends a frame holding `msg` to `buf`.
pub fn put_message(buf: &mut BytesMut, kind: Kind, msg: &impl Message) {
    let len = msg.encoded_len();
    buf.reserve(HEADER_LEN + len);
    buf.put_u8(kind as u8);
    buf.put_u32(len as u32);
    msg.encode(buf).expect("reserved enough room");
}

/// Appends a frame holding raw bytes to `buf`.
pub fn put_raw(buf: &mut BytesMut, kind: Kind, payload: &[u8]) {
    buf.reserve(HEADER_LEN + payload.len());
    buf.put_u8(kind as u8);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
}

/// One frame holding `msg`.
pub fn message(kind: Kind, msg: &impl Message) -> Bytes {
    let mut buf = BytesMut::new();
    put_message(&mut buf, kind, msg);
    buf.freeze()
}

/// An error frame (`code` is a gRPC code, as `tonic::Code as i32`).
pub fn error(code: i32, message: impl Into<String>) -> Bytes {
    self::message(Kind::Error, &pb::Error { code, message: message.into(), retry_pushback_ms: 0 })
}

/// An error frame carrying `status` (its code, message and retry hint).
pub fn error_frame(status: &Status) -> Bytes {
    self::message(Kind::Error, &crate::status::to_error(status))
}

/// The status an error frame carries (`peer` names the sender in the
/// message when the frame itself is bad).
pub fn frame_status(frame: &Frame, peer: &str) -> Status {
    match frame.decode::<pb::Error>() {
        Ok(e) => crate::status::from_error(e),
        Err(e) => Status::internal(format!("bad error frame from {peer}: {e}")),
    }
}

/// The status a server answers for a frame it could not read: the stream
/// failing is `Unavailable`, anything the client sent wrong `InvalidArgument`.
pub fn wire_status(e: &WireError) -> Status {
    let code = match e {
        WireError::Io(_) => Code::Unavailable,
        _ => Code::InvalidArgument,
    };
    Status::new(code, format!("bad frame: {e}"))
}

/// A frame's kind and payload length from its header, checked against
/// `limit` (auth frames: at most [`MAX_TOKEN_LEN`]).
pub fn decode_header(header: [u8; HEADER_LEN], limit: usize) -> Result<(Kind, usize), WireError> {
    let kind = Kind::from_byte(header[0]).ok_or(WireError::UnknownKind(header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let limit = if kind == Kind::Auth { limit.min(MAX_TOKEN_LEN) } else { limit };
    if len > limit {
        return Err(WireError::TooLarge { kind, len, limit });
    }
    Ok((kind, len))
}

impl Frame {
    /// The first frame of `buf` and the bytes it took; `Ok(None)` when `buf`
    /// holds no complete frame yet.
    pub fn parse(buf: &[u8], limit: usize) -> Result<Option<(Frame, usize)>, WireError> {
        let Some(header) = buf.first_chunk::<HEADER_LEN>() else { return Ok(None) };
        let (kind, len) = decode_header(*header, limit)?;
        let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else { return Ok(None) };
        Ok(Some((Frame { kind, payload: Bytes::copy_from_slice(payload) }, HEADER_LEN + len)))
    }
}

/// Reads one frame. `Ok(None)`: the stream ended cleanly before a frame
/// started. A payload longer than `limit` is refused before it is read (the
/// caller should then stop reading the stream).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Option<Frame>, WireError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header).await? {
        0 => return Ok(None),
        HEADER_LEN => {}
        got => return Err(WireError::Truncated { expected: HEADER_LEN, got }),
    }
    let (kind, len) = decode_header(header, limit)?;
    let mut payload = BytesMut::zeroed(len);
    let got = read_full(r, &mut payload).await?;
    if got < len {
        return Err(WireError::Truncated { expected: HEADER_LEN + len, got: HEADER_LEN + got });
    }
    Ok(Some(Frame { kind, payload: payload.freeze() }))
}

/// Fills `buf` unless the stream ends first; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn frames_round_trip() {
        let req = pb::InferRequest { request_id: 42, model_id: "m".into(), split: 3, ..Default::default() };
        let mut buf = BytesMut::new();
        put_raw(&mut buf, Kind::Auth, b"secret-token");
        put_message(&mut buf, Kind::InferRequest, &req);
        let bytes = buf.freeze();
        assert_eq!(bytes.len(), 2 * HEADER_LEN + 12 + req.encoded_len());
        let mut r: &[u8] = &bytes;
        let auth = block_on(read_frame(&mut r, 1 << 20)).unwrap().unwrap();
        assert_eq!((auth.kind, auth.token().unwrap()), (Kind::Auth, "secret-token"));
        let f = block_on(read_frame(&mut r, 1 << 20)).unwrap().unwrap();
        assert_eq!(f.kind, Kind::InferRequest);
        assert_eq!(f.decode::<pb::InferRequest>().unwrap(), req);
        assert!(block_on(read_frame(&mut r, 1 << 20)).unwrap().is_none(), "clean end");

        let e = error(3, "bad");
        let f = block_on(read_frame(&mut &e[..], 1024)).unwrap().unwrap();
        assert_eq!(
            f.decode::<pb::Error>().unwrap(),
            pb::Error { code: 3, message: "bad".into(), retry_pushback_ms: 0 }
        );
    }

    #[test]
    fn bad_frames_are_named() {
        let read = |b: &[u8], limit| block_on(read_frame(&mut &b[..], limit));
        assert!(matches!(read(&[0x7f, 0, 0, 0, 0], 10), Err(WireError::UnknownKind(0x7f))));
        assert!(matches!(read(&[0x02, 0, 0], 10), Err(WireError::Truncated { expected: 5, got: 3 })));
        assert!(matches!(read(&[0x02, 0, 0, 0, 4, 1, 2], 10), Err(WireError::Truncated { expected: 9, got: 7 })));
        let e = read(&[0x02, 0, 1, 0, 0], 1000).unwrap_err();
        assert!(matches!(e, WireError::TooLarge { len: 65536, limit: 1000, .. }), "{e}");
        let garbage = read(&[0x02, 0, 0, 0, 3, 0xff, 0xff, 0xff], 10).unwrap().unwrap();
        assert!(matches!(garbage.decode::<pb::InferRequest>(), Err(WireError::Decode { .. })));
        let bad_utf8 = read(&[0x03, 0, 0, 0, 2, 0xc3, 0x28], 10).unwrap().unwrap();
        assert!(matches!(bad_utf8.token(), Err(WireError::BadToken)));
        let big_token = decode_header([0x03, 0, 0, 0x20, 0], usize::MAX).unwrap_err();
        assert!(matches!(big_token, WireError::TooLarge { kind: Kind::Auth, limit: MAX_TOKEN_LEN, .. }));
    }

    #[test]
    fn parse_from_memory() {
        let mut buf = BytesMut::new();
        put_raw(&mut buf, Kind::Auth, b"tok");
        let whole = error_frame(&Status::not_found("no such model"));
        buf.extend_from_slice(&whole);
        let (auth, used) = Frame::parse(&buf, 100).unwrap().unwrap();
        assert_eq!((auth.kind, auth.token().unwrap(), used), (Kind::Auth, "tok", HEADER_LEN + 3));
        assert!(Frame::parse(&buf[used..used + 4], 100).unwrap().is_none(), "half a header");
        assert!(Frame::parse(&buf[used..buf.len() - 1], 100).unwrap().is_none(), "half a payload");
        let (err, _) = Frame::parse(&buf[used..], 100).unwrap().unwrap();
        let status = frame_status(&err, "cloud");
        assert_eq!((status.code(), status.message()), (Code::NotFound, "no such model"));
        let junk = Frame { kind: Kind::Error, payload: Bytes::from_static(&[0xff]) };
        assert_eq!(frame_status(&junk, "cloud").code(), Code::Internal);
        assert_eq!(wire_status(&WireError::BadToken).code(), Code::InvalidArgument);
    }
}
