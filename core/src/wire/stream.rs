//! The header that opens every stream between two nodes, and the serving node's dial reply.
//!
//! Between nodes each proxied TCP connection is its own bidirectional QUIC stream (or mux stream).
//! The opener writes a [`StreamHeader`] first; for a service stream the serving node dials the
//! target and answers with one [`DialReply`] before any payload flows, so the opener learns whether
//! the connection exists before it answers its own client (a faithful `connection refused`).
//! Specified field by field in `docs/protocol.md` §4.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! header:  version u8 | kind u8 | body_len u16 | body (body_len bytes)
//! service body: protocol u8 | target_type u8 | name_len u8 | name | [range_len u8 | range]
//!               | port u16 | client_family u8 | [client ip (4|16) | client port u16]
//! control body: empty
//! reply:   version u8 | status u8 | message_len u8 | message
//! ```
//!
//! Decoding is two-step so a reader never buffers more than it has checked: the fixed prefix
//! ([`HEADER_PREFIX_LEN`] or [`REPLY_PREFIX_LEN`] bytes) says how many bytes follow, bounded by a
//! constant, then the body is decoded from exactly those bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::addressing::{RoleName, ServiceName};

/// The stream-header version this implementation speaks.
pub const STREAM_VERSION: u8 = 1;
/// Bytes before a header body: version, kind, body length.
pub const HEADER_PREFIX_LEN: usize = 4;
/// Largest header body a receiver accepts.
pub const MAX_HEADER_BODY: usize = 512;
/// Largest role range text (`^3.1`, `>=3, <4`).
pub const MAX_RANGE_LEN: usize = 128;
/// Bytes before a reply message: version, status, message length.
pub const REPLY_PREFIX_LEN: usize = 3;
/// Largest reply message (fits its one-byte length).
pub const MAX_REPLY_MESSAGE: usize = 255;

/// What a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// One proxied connection to a service or role.
    Service = 1,
    /// The per-peer control stream (node messages, `wire::control`).
    Control = 2,
}

/// The transport protocol of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// TCP (IANA protocol number 6).
    Tcp = 6,
}

/// What the opener wants to reach on the serving node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetRef {
    /// A service of the serving node, by name.
    Service(ServiceName),
    /// An instance of a role on the serving node whose version is in `range` (semver range text).
    Role {
        /// The role.
        role: RoleName,
        /// The version range; empty means any version.
        range: String,
    },
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetRef::Service(service) => write!(f, "{service}"),
            TargetRef::Role { role, range } if range.is_empty() => write!(f, "{role}@*"),
            TargetRef::Role { role, range } => write!(f, "{role}@{range}"),
        }
    }
}

/// The body of a service stream's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    /// Transport protocol of the proxied connection.
    pub protocol: Protocol,
    /// Service or role to reach.
    pub target: TargetRef,
    /// The destination port the client dialed (port-on-demand: the target may pass it through).
    pub port: u16,
    /// The original client's address, when known (for logs, stickiness and allow-lists).
    pub client: Option<SocketAddr>,
}

/// A decoded stream header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamHeader {
    /// A proxied connection.
    Service(ServiceRequest),
    /// The control stream.
    Control,
}

/// Why a header or reply was rejected. Every variant closes the stream with
/// [`stream_error::PROTOCOL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamHeaderError {
    /// The peer speaks another header version.
    UnsupportedVersion(u8),
    /// Unknown stream kind.
    UnknownKind(u8),
    /// The body length exceeds [`MAX_HEADER_BODY`] (or a control body is not empty).
    BodyTooLong(usize),
    /// The body ended before a field was complete.
    Truncated(&'static str),
    /// Bytes left over after the last field.
    TrailingBytes(usize),
    /// Unknown protocol number.
    UnknownProtocol(u8),
    /// Unknown target type.
    UnknownTargetType(u8),
    /// The service or role name is not a valid label.
    BadName(String),
    /// The range text is too long or not UTF-8.
    BadRange,
    /// Unknown client address family.
    UnknownFamily(u8),
    /// Unknown dial status.
    UnknownStatus(u8),
    /// The reply message is not UTF-8.
    BadMessage,
}

impl fmt::Display for StreamHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamHeaderError::UnsupportedVersion(v) => {
                write!(f, "stream header version {v} is not supported (this node speaks {STREAM_VERSION})")
            }
            StreamHeaderError::UnknownKind(k) => write!(f, "unknown stream kind {k}"),
            StreamHeaderError::BodyTooLong(n) => {
                write!(f, "stream header body of {n} bytes is too long")
            }
            StreamHeaderError::Truncated(field) => {
                write!(f, "stream header truncated in field {field}")
            }
            StreamHeaderError::TrailingBytes(n) => {
                write!(f, "{n} unexpected bytes after the stream header")
            }
            StreamHeaderError::UnknownProtocol(p) => write!(f, "unknown protocol number {p}"),
            StreamHeaderError::UnknownTargetType(t) => write!(f, "unknown target type {t}"),
            StreamHeaderError::BadName(why) => write!(f, "bad target name: {why}"),
            StreamHeaderError::BadRange => write!(f, "bad version range text"),
            StreamHeaderError::UnknownFamily(fam) => {
                write!(f, "unknown client address family {fam}")
            }
            StreamHeaderError::UnknownStatus(s) => write!(f, "unknown dial status {s}"),
            StreamHeaderError::BadMessage => write!(f, "reply message is not UTF-8"),
        }
    }
}

impl std::error::Error for StreamHeaderError {}

/// Application error codes for resetting a stream (QUIC RESET_STREAM / STOP_SENDING).
pub mod stream_error {
    /// The client's TCP connection was reset, or the target's: propagate as a TCP RST.
    pub const CONNECTION_RESET: u32 = 1;
    /// The stream header or reply was malformed.
    pub const PROTOCOL: u32 = 2;
    /// Reserved: the node is shutting down (today the connection closes with its own code).
    pub const SHUTDOWN: u32 = 3;
    /// Reserved: a local limit was hit (today the dial reply says `OverLimit`).
    pub const OVER_LIMIT: u32 = 4;
    /// The header did not arrive within the header timeout.
    pub const HEADER_TIMEOUT: u32 = 5;
}

const TARGET_SERVICE: u8 = 1;
const TARGET_ROLE: u8 = 2;
const FAMILY_NONE: u8 = 0;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

impl StreamHeader {
    /// Encodes the header, prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        let kind = match self {
            StreamHeader::Control => StreamKind::Control,
            StreamHeader::Service(req) => {
                body.push(req.protocol as u8);
                match &req.target {
                    TargetRef::Service(name) => {
                        body.push(TARGET_SERVICE);
                        push_short(&mut body, name.as_str().as_bytes());
                    }
                    TargetRef::Role { role, range } => {
                        body.push(TARGET_ROLE);
                        push_short(&mut body, role.as_str().as_bytes());
                        let range = truncate_utf8(range, MAX_RANGE_LEN);
                        push_short(&mut body, range.as_bytes());
                    }
                }
                body.extend_from_slice(&req.port.to_be_bytes());
                match req.client {
                    None => body.push(FAMILY_NONE),
                    Some(SocketAddr::V4(a)) => {
                        body.push(FAMILY_V4);
                        body.extend_from_slice(&a.ip().octets());
                        body.extend_from_slice(&a.port().to_be_bytes());
                    }
                    Some(SocketAddr::V6(a)) => {
                        body.push(FAMILY_V6);
                        body.extend_from_slice(&a.ip().octets());
                        body.extend_from_slice(&a.port().to_be_bytes());
                    }
                }
                StreamKind::Service
            }
        };
        let mut out = Vec::with_capacity(HEADER_PREFIX_LEN + body.len());
        out.push(STREAM_VERSION);
        out.push(kind as u8);
        // Names are ≤ 63 bytes and ranges ≤ 128, so the body is far below MAX_HEADER_BODY.
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Checks the fixed prefix; returns the kind and how many body bytes follow.
    pub fn decode_prefix(
        prefix: &[u8; HEADER_PREFIX_LEN],
    ) -> Result<(StreamKind, usize), StreamHeaderError> {
        if prefix[0] != STREAM_VERSION {
            return Err(StreamHeaderError::UnsupportedVersion(prefix[0]));
        }
        let kind = match prefix[1] {
            1 => StreamKind::Service,
            2 => StreamKind::Control,
            other => return Err(StreamHeaderError::UnknownKind(other)),
        };
        let len = u16::from_be_bytes([prefix[2], prefix[3]]) as usize;
        if len > MAX_HEADER_BODY || (kind == StreamKind::Control && len != 0) {
            return Err(StreamHeaderError::BodyTooLong(len));
        }
        Ok((kind, len))
    }

    /// Decodes a body of the given kind (exactly the `body_len` bytes the prefix announced).
    pub fn decode_body(kind: StreamKind, body: &[u8]) -> Result<StreamHeader, StreamHeaderError> {
        match kind {
            StreamKind::Control => {
                if body.is_empty() {
                    Ok(StreamHeader::Control)
                } else {
                    Err(StreamHeaderError::TrailingBytes(body.len()))
                }
            }
            StreamKind::Service => decode_service(body).map(StreamHeader::Service),
        }
    }

    /// Decodes a whole header from `bytes`, returning it and the number of bytes used, or `None`
    /// if more bytes are needed.
    pub fn decode(bytes: &[u8]) -> Result<Option<(StreamHeader, usize)>, StreamHeaderError> {
        let Some(prefix) = bytes.get(..HEADER_PREFIX_LEN) else {
            return Ok(None);
        };
        let prefix: &[u8; HEADER_PREFIX_LEN] = prefix.try_into().expect("length checked");
        let (kind, len) = StreamHeader::decode_prefix(prefix)?;
        let Some(body) = bytes.get(HEADER_PREFIX_LEN..HEADER_PREFIX_LEN + len) else {
            return Ok(None);
        };
        Ok(Some((
            StreamHeader::decode_body(kind, body)?,
            HEADER_PREFIX_LEN + len,
        )))
    }
}

fn decode_service(body: &[u8]) -> Result<ServiceRequest, StreamHeaderError> {
    let mut r = Reader { bytes: body };
    let protocol = match r.u8("protocol")? {
        6 => Protocol::Tcp,
        other => return Err(StreamHeaderError::UnknownProtocol(other)),
    };
    let target_type = r.u8("target_type")?;
    let name = r.short("name")?;
    let name =
        std::str::from_utf8(name).map_err(|_| StreamHeaderError::BadName("not UTF-8".into()))?;
    let target = match target_type {
        TARGET_SERVICE => TargetRef::Service(
            ServiceName::parse(name).map_err(|e| StreamHeaderError::BadName(e.to_string()))?,
        ),
        TARGET_ROLE => {
            let role =
                RoleName::parse(name).map_err(|e| StreamHeaderError::BadName(e.to_string()))?;
            let range = r.short("range")?;
            if range.len() > MAX_RANGE_LEN {
                return Err(StreamHeaderError::BadRange);
            }
            let range = std::str::from_utf8(range).map_err(|_| StreamHeaderError::BadRange)?;
            TargetRef::Role {
                role,
                range: range.to_string(),
            }
        }
        other => return Err(StreamHeaderError::UnknownTargetType(other)),
    };
    let port = r.u16("port")?;
    let client = match r.u8("client_family")? {
        FAMILY_NONE => None,
        FAMILY_V4 => {
            let ip: [u8; 4] = r.take(4, "client_ip")?.try_into().expect("length 4");
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(ip)),
                r.u16("client_port")?,
            ))
        }
        FAMILY_V6 => {
            let ip: [u8; 16] = r.take(16, "client_ip")?.try_into().expect("length 16");
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                r.u16("client_port")?,
            ))
        }
        other => return Err(StreamHeaderError::UnknownFamily(other)),
    };
    if !r.bytes.is_empty() {
        return Err(StreamHeaderError::TrailingBytes(r.bytes.len()));
    }
    Ok(ServiceRequest {
        protocol,
        target,
        port,
        client,
    })
}

/// The serving node's answer to a service stream, sent before any payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DialStatus {
    /// The target accepted the connection; payload follows.
    Connected = 0,
    /// The target actively refused (TCP RST): the client should see ECONNREFUSED.
    Refused = 1,
    /// The dial did not complete within the connect timeout.
    TimedOut = 2,
    /// The target's host or network is unreachable, or its name did not resolve.
    Unreachable = 3,
    /// No such service or role on the serving node.
    NoSuchService = 4,
    /// The service does not allow the dialed port.
    PortNotAllowed = 5,
    /// The serving node is at its connection limit.
    OverLimit = 6,
    /// The requested protocol is not supported by the target.
    Unsupported = 7,
    /// Any other local failure of the serving node.
    Internal = 8,
}

impl DialStatus {
    /// From the wire value.
    pub fn from_u8(value: u8) -> Option<DialStatus> {
        Some(match value {
            0 => DialStatus::Connected,
            1 => DialStatus::Refused,
            2 => DialStatus::TimedOut,
            3 => DialStatus::Unreachable,
            4 => DialStatus::NoSuchService,
            5 => DialStatus::PortNotAllowed,
            6 => DialStatus::OverLimit,
            7 => DialStatus::Unsupported,
            8 => DialStatus::Internal,
            _ => return None,
        })
    }

    /// Short stable name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DialStatus::Connected => "connected",
            DialStatus::Refused => "refused",
            DialStatus::TimedOut => "timed_out",
            DialStatus::Unreachable => "unreachable",
            DialStatus::NoSuchService => "no_such_service",
            DialStatus::PortNotAllowed => "port_not_allowed",
            DialStatus::OverLimit => "over_limit",
            DialStatus::Unsupported => "unsupported",
            DialStatus::Internal => "internal",
        }
    }

    /// Whether a load balancer may try another instance after this answer (the target itself
    /// failed, not the request).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            DialStatus::Refused
                | DialStatus::TimedOut
                | DialStatus::Unreachable
                | DialStatus::OverLimit
                | DialStatus::Internal
        )
    }
}

impl fmt::Display for DialStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dial reply: the status and a human-readable detail (may be empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialReply {
    /// The outcome.
    pub status: DialStatus,
    /// Detail for logs and the client's error message (≤ [`MAX_REPLY_MESSAGE`] bytes).
    pub message: String,
}

impl DialReply {
    /// A reply with a message cut to [`MAX_REPLY_MESSAGE`] bytes on a character boundary.
    pub fn new(status: DialStatus, message: &str) -> DialReply {
        DialReply {
            status,
            message: truncate_utf8(message, MAX_REPLY_MESSAGE).to_string(),
        }
    }

    /// Encodes the reply.
    pub fn encode(&self) -> Vec<u8> {
        let message = truncate_utf8(&self.message, MAX_REPLY_MESSAGE);
        let mut out = Vec::with_capacity(REPLY_PREFIX_LEN + message.len());
        out.push(STREAM_VERSION);
        out.push(self.status as u8);
        out.push(message.len() as u8);
        out.extend_from_slice(message.as_bytes());
        out
    }

    /// Checks the prefix; returns the status and how many message bytes follow.
    pub fn decode_prefix(
        prefix: &[u8; REPLY_PREFIX_LEN],
    ) -> Result<(DialStatus, usize), StreamHeaderError> {
        if prefix[0] != STREAM_VERSION {
            return Err(StreamHeaderError::UnsupportedVersion(prefix[0]));
        }
        let status =
            DialStatus::from_u8(prefix[1]).ok_or(StreamHeaderError::UnknownStatus(prefix[1]))?;
        Ok((status, prefix[2] as usize))
    }

    /// Builds the reply from its status and message bytes.
    pub fn from_parts(status: DialStatus, message: &[u8]) -> Result<DialReply, StreamHeaderError> {
        let message = std::str::from_utf8(message).map_err(|_| StreamHeaderError::BadMessage)?;
        Ok(DialReply {
            status,
            message: message.to_string(),
        })
    }

    /// Decodes a whole reply, or `None` if more bytes are needed.
    pub fn decode(bytes: &[u8]) -> Result<Option<(DialReply, usize)>, StreamHeaderError> {
        let Some(prefix) = bytes.get(..REPLY_PREFIX_LEN) else {
            return Ok(None);
        };
        let prefix: &[u8; REPLY_PREFIX_LEN] = prefix.try_into().expect("length checked");
        let (status, len) = DialReply::decode_prefix(prefix)?;
        let Some(message) = bytes.get(REPLY_PREFIX_LEN..REPLY_PREFIX_LEN + len) else {
            return Ok(None);
        };
        Ok(Some((
            DialReply::from_parts(status, message)?,
            REPLY_PREFIX_LEN + len,
        )))
    }
}

fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(u8::MAX as usize);
    out.push(len as u8);
    out.extend_from_slice(&bytes[..len]);
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A bounds-checked cursor over a body.
pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], StreamHeaderError> {
        if self.bytes.len() < n {
            return Err(StreamHeaderError::Truncated(field));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, StreamHeaderError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, StreamHeaderError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn short(&mut self, field: &'static str) -> Result<&'a [u8], StreamHeaderError> {
        let len = self.u8(field)? as usize;
        self.take(len, field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ServiceName {
        ServiceName::parse("web").unwrap()
    }

    /// The example of `docs/protocol.md` §4.1.
    #[test]
    fn service_header_example_bytes() {
        let header = StreamHeader::Service(ServiceRequest {
            protocol: Protocol::Tcp,
            target: TargetRef::Service(web()),
            port: 80,
            client: Some("[fd00::1]:40000".parse().unwrap()),
        });
        let bytes = header.encode();
        let expected: Vec<u8> = [
            &[1u8, 1, 0, 27][..],
            &[6, 1, 3, b'w', b'e', b'b', 0, 80, 6],
            &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0x9c, 0x40],
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(
            StreamHeader::decode(&bytes).unwrap(),
            Some((header, bytes.len()))
        );
    }

    #[test]
    fn control_header_is_four_bytes() {
        assert_eq!(StreamHeader::Control.encode(), vec![1, 2, 0, 0]);
        assert_eq!(
            StreamHeader::decode(&[1, 2, 0, 0, 99]).unwrap(),
            Some((StreamHeader::Control, 4))
        );
        assert_eq!(
            StreamHeader::decode(&[1, 2, 0, 1, 0]),
            Err(StreamHeaderError::BodyTooLong(1))
        );
    }

    #[test]
    fn role_header_round_trips() {
        let header = StreamHeader::Service(ServiceRequest {
            protocol: Protocol::Tcp,
            target: TargetRef::Role {
                role: RoleName::parse("couchdb").unwrap(),
                range: ">=3, <4".into(),
            },
            port: 5984,
            client: Some("10.1.2.3:5555".parse().unwrap()),
        });
        let bytes = header.encode();
        assert_eq!(
            StreamHeader::decode(&bytes).unwrap(),
            Some((header, bytes.len()))
        );
    }

    #[test]
    fn partial_input_asks_for_more() {
        let bytes = StreamHeader::Service(ServiceRequest {
            protocol: Protocol::Tcp,
            target: TargetRef::Service(web()),
            port: 8080,
            client: None,
        })
        .encode();
        for cut in 0..bytes.len() {
            assert_eq!(
                StreamHeader::decode(&bytes[..cut]).unwrap(),
                None,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn bad_headers_are_rejected_with_a_reason() {
        assert_eq!(
            StreamHeader::decode(&[2, 1, 0, 0]),
            Err(StreamHeaderError::UnsupportedVersion(2))
        );
        assert_eq!(
            StreamHeader::decode(&[1, 9, 0, 0]),
            Err(StreamHeaderError::UnknownKind(9))
        );
        assert_eq!(
            StreamHeader::decode(&[1, 1, 0xff, 0xff]),
            Err(StreamHeaderError::BodyTooLong(0xffff))
        );
        assert_eq!(
            StreamHeader::decode(&[1, 1, 0, 2, 17, 1]),
            Err(StreamHeaderError::UnknownProtocol(17))
        );
        assert_eq!(
            StreamHeader::decode(&[1, 1, 0, 4, 6, 1, 1, b'-']),
            Err(StreamHeaderError::BadName(
                ServiceName::parse("-").unwrap_err().to_string()
            ))
        );
        assert_eq!(
            StreamHeader::decode(&[1, 1, 0, 4, 6, 1, 5, b'a']),
            Err(StreamHeaderError::Truncated("name"))
        );
        assert_eq!(
            StreamHeader::decode(&[1, 1, 0, 7, 6, 1, 1, b'a', 0, 80, 5]),
            Err(StreamHeaderError::UnknownFamily(5))
        );
        assert_eq!(
            StreamHeader::decode(&[1, 1, 0, 8, 6, 1, 1, b'a', 0, 80, 0, 0]),
            Err(StreamHeaderError::TrailingBytes(1))
        );
    }

    #[test]
    fn replies_round_trip_and_reject_garbage() {
        let reply = DialReply::new(DialStatus::Refused, "connect to 127.0.0.1:8080: refused");
        let bytes = reply.encode();
        assert_eq!(bytes[..3], [1, 1, 34]);
        assert_eq!(
            DialReply::decode(&bytes).unwrap(),
            Some((reply, bytes.len()))
        );
        assert_eq!(DialReply::decode(&[1, 0]).unwrap(), None);
        assert_eq!(
            DialReply::decode(&[1, 42, 0]),
            Err(StreamHeaderError::UnknownStatus(42))
        );
        assert_eq!(
            DialReply::decode(&[1, 0, 1, 0xff]),
            Err(StreamHeaderError::BadMessage)
        );
        let long = DialReply::new(DialStatus::Internal, &"é".repeat(200));
        assert!(long.message.len() <= MAX_REPLY_MESSAGE);
        assert!(DialReply::decode(&long.encode()).unwrap().is_some());
    }

    #[test]
    fn every_status_round_trips() {
        for v in 0..=255u8 {
            if let Some(status) = DialStatus::from_u8(v) {
                assert_eq!(status as u8, v);
            }
        }
        assert_eq!(DialStatus::from_u8(8), Some(DialStatus::Internal));
        assert_eq!(DialStatus::from_u8(9), None);
    }
}
