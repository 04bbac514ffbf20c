//! The multiplexer's wire format: a preface, then a sequence of frames.
//!
//! Layout (all integers big-endian), specified in `docs/protocol.md` §3:
//!
//! ```text
//! preface:  "SVNMUX" | version u16                       (8 bytes, each side sends it first)
//! frame:    length u24 | type u8 | flags u8 | stream u32  (9-byte header) | payload (length bytes)
//! ```
//!
//! The decoder is incremental and allocation-free: [`decode_header`] needs only the 9 header bytes,
//! checks the length against the type's limits before any payload is buffered, and
//! [`decode_frame`] borrows the payload from the caller's buffer.

use bytes::{BufMut, Bytes, BytesMut};

/// The first eight bytes each side of a session sends.
pub const PREFACE_MAGIC: &[u8; 6] = b"SVNMUX";
/// The protocol version this implementation speaks.
pub const VERSION: u16 = 1;
/// Length of the preface.
pub const PREFACE_LEN: usize = 8;
/// Length of a frame header.
pub const HEADER_LEN: usize = 9;
/// Largest DATA payload a sender may put in one frame. Receivers reject larger ones.
pub const MAX_DATA_PAYLOAD: usize = 64 * 1024;
/// Largest GOAWAY debug message.
pub const MAX_GOAWAY_MESSAGE: usize = 1024;

/// Frame types.
pub mod frame_type {
    pub const DATA: u8 = 0x0;
    pub const WINDOW_UPDATE: u8 = 0x1;
    pub const RESET: u8 = 0x2;
    pub const PING: u8 = 0x3;
    pub const GOAWAY: u8 = 0x4;
    pub const MAX_STREAMS: u8 = 0x5;
}

/// DATA flags.
pub mod flags {
    /// First frame of a stream: opens it.
    pub const SYN: u8 = 0x1;
    /// Last frame the sender sends on this stream (half-close).
    pub const FIN: u8 = 0x2;
    /// PING flag: this is the answer to a PING.
    pub const ACK: u8 = 0x1;
}

/// The preface bytes for [`VERSION`].
pub fn preface() -> [u8; PREFACE_LEN] {
    let mut p = [0u8; PREFACE_LEN];
    p[..6].copy_from_slice(PREFACE_MAGIC);
    p[6..].copy_from_slice(&VERSION.to_be_bytes());
    p
}

/// Why a preface was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefaceError {
    /// The first six bytes are not `SVNMUX`: the peer does not speak this protocol.
    BadMagic,
    /// The peer speaks another version.
    UnsupportedVersion(u16),
}

/// Checks a received preface.
pub fn check_preface(bytes: &[u8; PREFACE_LEN]) -> Result<(), PrefaceError> {
    if &bytes[..6] != PREFACE_MAGIC {
        return Err(PrefaceError::BadMagic);
    }
    let version = u16::from_be_bytes([bytes[6], bytes[7]]);
    if version != VERSION {
        return Err(PrefaceError::UnsupportedVersion(version));
    }
    Ok(())
}

/// A stream identifier. Odd ids are opened by the client side, even ids by the server side; 0 is
/// the connection itself.
pub type StreamId = u32;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: StreamId,
}

/// A decoded frame. Payloads are borrowed from (DATA) or copied out of (fixed fields) the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: StreamId,
        syn: bool,
        fin: bool,
        payload: Bytes,
    },
    WindowUpdate {
        stream: StreamId,
        increment: u32,
    },
    Reset {
        stream: StreamId,
        code: u32,
    },
    Ping {
        ack: bool,
        opaque: u64,
    },
    GoAway {
        last_stream: StreamId,
        code: u32,
        message: Bytes,
    },
    MaxStreams {
        count: u32,
    },
}

/// Why a frame was rejected. Each maps to a connection error code ([`ErrorCode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A type this version does not define.
    UnknownType(u8),
    /// A length that the type does not allow.
    BadLength { kind: u8, length: u32 },
    /// Flags that the type does not define.
    BadFlags { kind: u8, flags: u8 },
    /// Stream 0 where a stream is required, or a stream where 0 is required.
    BadStream { kind: u8, stream: StreamId },
    /// A WINDOW_UPDATE with increment 0.
    ZeroIncrement,
}

impl FrameError {
    /// The connection error code a receiver sends in its GOAWAY.
    pub fn code(self) -> ErrorCode {
        match self {
            FrameError::UnknownType(_)
            | FrameError::BadFlags { .. }
            | FrameError::ZeroIncrement => ErrorCode::Protocol,
            FrameError::BadLength { .. } => ErrorCode::FrameSize,
            FrameError::BadStream { .. } => ErrorCode::StreamId,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::UnknownType(t) => write!(f, "unknown frame type {t:#04x}"),
            FrameError::BadLength { kind, length } => {
                write!(f, "frame type {kind:#04x} may not have length {length}")
            }
            FrameError::BadFlags { kind, flags } => {
                write!(
                    f,
                    "frame type {kind:#04x} does not define flags {flags:#04x}"
                )
            }
            FrameError::BadStream { kind, stream } => {
                write!(f, "frame type {kind:#04x} may not carry stream id {stream}")
            }
            FrameError::ZeroIncrement => write!(f, "window update with increment 0"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Connection-level error codes, carried in GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// Graceful shutdown.
    NoError = 0,
    /// A malformed frame, unknown type or flag, or a frame that is wrong in the current state.
    Protocol = 1,
    /// A frame longer or shorter than its type allows.
    FrameSize = 2,
    /// More data than the stream's or the connection's credit allowed.
    FlowControl = 3,
    /// More streams opened than MAX_STREAMS allowed.
    StreamLimit = 4,
    /// A stream id of the wrong parity, reused, or never opened.
    StreamId = 5,
    /// The preface was missing or named another version.
    Version = 6,
    /// Nothing was received for the keep-alive timeout (local only, never sent).
    KeepaliveTimeout = 7,
    /// The peer made us queue more control frames than allowed without reading them.
    ExcessiveLoad = 8,
    /// The byte pipe under the session failed or ended (local only, never sent).
    Transport = 9,
    /// The sender ended the session at once; open streams were discarded (a `close` without an
    /// error while streams were alive, as opposed to the graceful drain of `NoError`).
    Cancel = 10,
    /// Any code this version does not know.
    Unknown = 0xffff_ffff,
}

impl ErrorCode {
    /// Decodes a received code; unknown values map to [`ErrorCode::Unknown`].
    pub fn from_u32(v: u32) -> ErrorCode {
        match v {
            0 => ErrorCode::NoError,
            1 => ErrorCode::Protocol,
            2 => ErrorCode::FrameSize,
            3 => ErrorCode::FlowControl,
            4 => ErrorCode::StreamLimit,
            5 => ErrorCode::StreamId,
            6 => ErrorCode::Version,
            7 => ErrorCode::KeepaliveTimeout,
            8 => ErrorCode::ExcessiveLoad,
            9 => ErrorCode::Transport,
            10 => ErrorCode::Cancel,
            _ => ErrorCode::Unknown,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ErrorCode::NoError => "NO_ERROR",
            ErrorCode::Protocol => "PROTOCOL_ERROR",
            ErrorCode::FrameSize => "FRAME_SIZE_ERROR",
            ErrorCode::FlowControl => "FLOW_CONTROL_ERROR",
            ErrorCode::StreamLimit => "STREAM_LIMIT_ERROR",
            ErrorCode::StreamId => "STREAM_ID_ERROR",
            ErrorCode::Version => "VERSION_ERROR",
            ErrorCode::KeepaliveTimeout => "KEEPALIVE_TIMEOUT",
            ErrorCode::ExcessiveLoad => "EXCESSIVE_LOAD",
            ErrorCode::Transport => "TRANSPORT_ERROR",
            ErrorCode::Cancel => "CANCEL",
            ErrorCode::Unknown => "UNKNOWN_ERROR",
        };
        f.write_str(s)
    }
}

/// Stream reset codes with a defined meaning; applications may use any other value ≥ 0x100.
pub mod reset_code {
    /// The application abandoned the stream.
    pub const CANCEL: u32 = 0;
    /// The receiver refused the stream before reading from it (limit reached, going away); the
    /// opener may safely retry it elsewhere.
    pub const REFUSED: u32 = 1;
    /// The session ended with an error while the stream was open (local only).
    pub const SESSION_CLOSED: u32 = 2;
}

/// Decodes and validates a header. `buf` must hold at least [`HEADER_LEN`] bytes.
/// Checks type, flags, stream id and length limits, so that no payload is buffered for a frame that
/// will be rejected.
pub fn decode_header(buf: &[u8]) -> Result<Header, FrameError> {
    debug_assert!(buf.len() >= HEADER_LEN);
    let length = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
    let kind = buf[3];
    let flags_byte = buf[4];
    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
    let h = Header {
        length,
        kind,
        flags: flags_byte,
        stream,
    };
    let bad_len = || FrameError::BadLength { kind, length };
    let bad_flags = || FrameError::BadFlags {
        kind,
        flags: flags_byte,
    };
    let bad_stream = || FrameError::BadStream { kind, stream };
    match kind {
        frame_type::DATA => {
            if length as usize > MAX_DATA_PAYLOAD {
                return Err(bad_len());
            }
            if flags_byte & !(flags::SYN | flags::FIN) != 0 {
                return Err(bad_flags());
            }
            if stream == 0 {
                return Err(bad_stream());
            }
        }
        frame_type::WINDOW_UPDATE => {
            if length != 4 {
                return Err(bad_len());
            }
            if flags_byte != 0 {
                return Err(bad_flags());
            }
        }
        frame_type::RESET => {
            if length != 4 {
                return Err(bad_len());
            }
            if flags_byte != 0 {
                return Err(bad_flags());
            }
            if stream == 0 {
                return Err(bad_stream());
            }
        }
        frame_type::PING => {
            if length != 8 {
                return Err(bad_len());
            }
            if flags_byte & !flags::ACK != 0 {
                return Err(bad_flags());
            }
            if stream != 0 {
                return Err(bad_stream());
            }
        }
        frame_type::GOAWAY => {
            if !(8..=8 + MAX_GOAWAY_MESSAGE as u32).contains(&length) {
                return Err(bad_len());
            }
            if flags_byte != 0 {
                return Err(bad_flags());
            }
            if stream != 0 {
                return Err(bad_stream());
            }
        }
        frame_type::MAX_STREAMS => {
            if length != 4 {
                return Err(bad_len());
            }
            if flags_byte != 0 {
                return Err(bad_flags());
            }
            if stream != 0 {
                return Err(bad_stream());
            }
        }
        other => return Err(FrameError::UnknownType(other)),
    }
    Ok(h)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Builds the frame for a validated header and its complete payload
/// (`payload.len() == header.length`).
pub fn decode_frame(h: Header, payload: Bytes) -> Result<Frame, FrameError> {
    debug_assert_eq!(payload.len(), h.length as usize);
    Ok(match h.kind {
        frame_type::DATA => Frame::Data {
            stream: h.stream,
            syn: h.flags & flags::SYN != 0,
            fin: h.flags & flags::FIN != 0,
            payload,
        },
        frame_type::WINDOW_UPDATE => {
            let increment = be32(&payload);
            if increment == 0 {
                return Err(FrameError::ZeroIncrement);
            }
            Frame::WindowUpdate {
                stream: h.stream,
                increment,
            }
        }
        frame_type::RESET => Frame::Reset {
            stream: h.stream,
            code: be32(&payload),
        },
        frame_type::PING => Frame::Ping {
            ack: h.flags & flags::ACK != 0,
            opaque: u64::from_be_bytes(payload[..8].try_into().expect("length checked")),
        },
        frame_type::GOAWAY => Frame::GoAway {
            last_stream: be32(&payload[..4]),
            code: be32(&payload[4..8]),
            message: payload.slice(8..),
        },
        frame_type::MAX_STREAMS => Frame::MaxStreams {
            count: be32(&payload),
        },
        other => return Err(FrameError::UnknownType(other)),
    })
}

/// Decodes one whole frame from the front of `buf`, for tests, fuzzers and tools. Returns the frame
/// and the bytes it used, `Ok(None)` if `buf` holds only part of a frame.
pub fn decode_one(buf: &Bytes) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let h = decode_header(buf)?;
    let end = HEADER_LEN + h.length as usize;
    if buf.len() < end {
        return Ok(None);
    }
    decode_frame(h, buf.slice(HEADER_LEN..end)).map(|f| Some((f, end)))
}

/// Writes a frame header.
pub fn put_header(out: &mut BytesMut, length: usize, kind: u8, flags_byte: u8, stream: StreamId) {
    debug_assert!(length < (1 << 24));
    let l = (length as u32).to_be_bytes();
    out.put_slice(&l[1..]);
    out.put_u8(kind);
    out.put_u8(flags_byte);
    out.put_u32(stream);
}

/// Encodes a whole frame (payload included), for control frames, tests and tools.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Data {
            stream,
            syn,
            fin,
            payload,
        } => {
            let f = if *syn { flags::SYN } else { 0 } | if *fin { flags::FIN } else { 0 };
            put_header(out, payload.len(), frame_type::DATA, f, *stream);
            out.put_slice(payload);
        }
        Frame::WindowUpdate { stream, increment } => {
            put_header(out, 4, frame_type::WINDOW_UPDATE, 0, *stream);
            out.put_u32(*increment);
        }
        Frame::Reset { stream, code } => {
            put_header(out, 4, frame_type::RESET, 0, *stream);
            out.put_u32(*code);
        }
        Frame::Ping { ack, opaque } => {
            put_header(
                out,
                8,
                frame_type::PING,
                if *ack { flags::ACK } else { 0 },
                0,
            );
            out.put_u64(*opaque);
        }
        Frame::GoAway {
            last_stream,
            code,
            message,
        } => {
            let msg = &message[..message.len().min(MAX_GOAWAY_MESSAGE)];
            put_header(out, 8 + msg.len(), frame_type::GOAWAY, 0, 0);
            out.put_u32(*last_stream);
            out.put_u32(*code);
            out.put_slice(msg);
        }
        Frame::MaxStreams { count } => {
            put_header(out, 4, frame_type::MAX_STREAMS, 0, 0);
            out.put_u32(*count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(f: Frame) {
        let mut out = BytesMut::new();
        encode(&f, &mut out);
        let bytes = out.freeze();
        let (g, used) = decode_one(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(g, f);
    }

    #[test]
    fn documented_examples_encode_exactly() {
        // The examples in docs/protocol.md §3.4.
        let mut out = BytesMut::new();
        encode(
            &Frame::Data {
                stream: 1,
                syn: true,
                fin: false,
                payload: Bytes::from_static(b"hi"),
            },
            &mut out,
        );
        assert_eq!(&out[..], b"\x00\x00\x02\x00\x01\x00\x00\x00\x01hi");
        out.clear();
        encode(
            &Frame::WindowUpdate {
                stream: 0,
                increment: 65536,
            },
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"\x00\x00\x04\x01\x00\x00\x00\x00\x00\x00\x01\x00\x00"
        );
        out.clear();
        encode(
            &Frame::GoAway {
                last_stream: 7,
                code: 0,
                message: Bytes::new(),
            },
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"\x00\x00\x08\x04\x00\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00\x00"
        );
        assert_eq!(&preface(), b"SVNMUX\x00\x01");
    }

    #[test]
    fn preface_checks() {
        assert_eq!(check_preface(&preface()), Ok(()));
        assert_eq!(
            check_preface(b"SVNMUX\x00\x02"),
            Err(PrefaceError::UnsupportedVersion(2))
        );
        assert_eq!(check_preface(b"GET / HT"), Err(PrefaceError::BadMagic));
    }

    #[test]
    fn rejects_bad_headers_before_payload() {
        // DATA longer than allowed: rejected from the header alone.
        let mut h = BytesMut::new();
        put_header(&mut h, MAX_DATA_PAYLOAD + 1, frame_type::DATA, 0, 1);
        assert_eq!(decode_header(&h).unwrap_err().code(), ErrorCode::FrameSize);
        let cases: [(usize, u8, u8, u32, ErrorCode); 8] = [
            (0, 0x9, 0, 0, ErrorCode::Protocol), // unknown type
            (0, frame_type::DATA, 0x4, 1, ErrorCode::Protocol), // unknown flag
            (0, frame_type::DATA, 0, 0, ErrorCode::StreamId), // data on stream 0
            (5, frame_type::WINDOW_UPDATE, 0, 0, ErrorCode::FrameSize),
            (4, frame_type::RESET, 0, 0, ErrorCode::StreamId),
            (8, frame_type::PING, 0, 3, ErrorCode::StreamId),
            (7, frame_type::GOAWAY, 0, 0, ErrorCode::FrameSize),
            (4, frame_type::MAX_STREAMS, 1, 0, ErrorCode::Protocol),
        ];
        for (len, kind, fl, stream, code) in cases {
            let mut h = BytesMut::new();
            put_header(&mut h, len, kind, fl, stream);
            assert_eq!(
                decode_header(&h).unwrap_err().code(),
                code,
                "{kind} {fl} {stream}"
            );
        }
        let mut b = BytesMut::new();
        put_header(&mut b, 4, frame_type::WINDOW_UPDATE, 0, 3);
        b.put_u32(0);
        assert_eq!(decode_one(&b.freeze()), Err(FrameError::ZeroIncrement));
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                1u32..,
                any::<bool>(),
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(stream, syn, fin, p)| Frame::Data {
                    stream,
                    syn,
                    fin,
                    payload: Bytes::from(p)
                }),
            (any::<u32>(), 1u32..)
                .prop_map(|(stream, increment)| Frame::WindowUpdate { stream, increment }),
            (1u32.., any::<u32>()).prop_map(|(stream, code)| Frame::Reset { stream, code }),
            (any::<bool>(), any::<u64>()).prop_map(|(ack, opaque)| Frame::Ping { ack, opaque }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(last_stream, code, m)| Frame::GoAway {
                    last_stream,
                    code,
                    message: Bytes::from(m)
                }),
            any::<u32>().prop_map(|count| Frame::MaxStreams { count }),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_roundtrips(f in arb_frame()) {
            roundtrip(f);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let b = Bytes::from(data);
            let mut off = 0;
            while off < b.len() {
                match decode_one(&b.slice(off..)) {
                    Ok(Some((_, used))) => off += used,
                    _ => break,
                }
            }
        }
    }
}
