//! Messages on the per-peer control stream.
//!
//! Each connection between two nodes carries one control stream (opened by the dialing side with a
//! [`super::stream::StreamHeader::Control`] header). Both sides send [`ControlMessage::Hello`] first,
//! then updates as their state changes. Specified in `docs/protocol.md` §5.
//!
//! ```text
//! frame:  type u8 | body_len u32 | body
//! HELLO:    name_len u8 | name | count u16 | count × (len u8 | service name)
//! SERVICES: count u16 | count × (len u8 | service name)          (replaces the previous list)
//! GOODBYE:  reason u8
//! REGISTRY: opaque registry message (`registry::message`, docs/registry.md §4–§5)
//! ```
//!
//! Unknown frame types are skipped whole, so later versions can add messages without breaking
//! older nodes; the body length is bounded by [`MAX_CONTROL_BODY`] before anything is buffered.

use std::fmt;

use crate::addressing::{NodeName, ServiceName};

use super::stream::Reader;
use super::stream::StreamHeaderError as FieldError;

/// Bytes before a control frame body.
pub const CONTROL_PREFIX_LEN: usize = 5;
/// Largest control frame body a receiver accepts.
pub const MAX_CONTROL_BODY: usize = 64 * 1024;
/// Most services one message may list.
pub const MAX_SERVICES: usize = 1024;

/// Control frame types.
pub mod control_type {
    /// First message on the control stream, both directions.
    pub const HELLO: u8 = 1;
    /// The sender's service list changed.
    pub const SERVICES: u8 = 2;
    /// The sender is closing cleanly.
    pub const GOODBYE: u8 = 3;
    /// A message of the service registry (opaque here).
    pub const REGISTRY: u8 = 4;
}

/// Why a node says goodbye.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoodbyeReason {
    /// Shutting down; do not expect it back soon.
    Shutdown = 0,
    /// Restarting; reconnect promptly.
    Restart = 1,
}

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlMessage {
    /// The sender's name and service list.
    Hello {
        /// The sender's node name.
        name: NodeName,
        /// The sender's services, sorted.
        services: Vec<ServiceName>,
    },
    /// The sender's complete new service list.
    Services(Vec<ServiceName>),
    /// The sender is closing the connection.
    Goodbye(GoodbyeReason),
    /// A service-registry message, carried as is (the registry decodes and bounds it).
    Registry(Vec<u8>),
    /// A frame of a type this node does not know (skipped).
    Unknown {
        /// Its type.
        kind: u8,
    },
}

/// Why a control frame was rejected. Every variant closes the connection with a protocol error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// The body length exceeds [`MAX_CONTROL_BODY`].
    TooLong(usize),
    /// A field is malformed.
    Field(FieldError),
    /// More than [`MAX_SERVICES`] services.
    TooManyServices(usize),
    /// Unknown goodbye reason.
    UnknownReason(u8),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::TooLong(n) => write!(f, "control frame of {n} bytes is too long"),
            ControlError::Field(e) => write!(f, "malformed control frame: {e}"),
            ControlError::TooManyServices(n) => write!(f, "control frame lists {n} services"),
            ControlError::UnknownReason(r) => write!(f, "unknown goodbye reason {r}"),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<FieldError> for ControlError {
    fn from(e: FieldError) -> ControlError {
        ControlError::Field(e)
    }
}

impl ControlMessage {
    /// Encodes the message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let kind = match self {
            ControlMessage::Hello { name, services } => {
                push_short(&mut body, name.as_str());
                push_services(&mut body, services);
                control_type::HELLO
            }
            ControlMessage::Services(services) => {
                push_services(&mut body, services);
                control_type::SERVICES
            }
            ControlMessage::Goodbye(reason) => {
                body.push(*reason as u8);
                control_type::GOODBYE
            }
            ControlMessage::Registry(message) => {
                body.extend_from_slice(message);
                control_type::REGISTRY
            }
            ControlMessage::Unknown { kind } => *kind,
        };
        let mut out = Vec::with_capacity(CONTROL_PREFIX_LEN + body.len());
        out.push(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Checks a frame prefix; returns the type and how many body bytes follow.
    pub fn decode_prefix(prefix: &[u8; CONTROL_PREFIX_LEN]) -> Result<(u8, usize), ControlError> {
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > MAX_CONTROL_BODY {
            return Err(ControlError::TooLong(len));
        }
        Ok((prefix[0], len))
    }

    /// Decodes a frame body of the given type.
    pub fn decode_body(kind: u8, body: &[u8]) -> Result<ControlMessage, ControlError> {
        let mut r = Reader { bytes: body };
        let message = match kind {
            control_type::HELLO => {
                let name = r.short("name")?;
                let name = std::str::from_utf8(name)
                    .ok()
                    .and_then(|n| NodeName::parse(n).ok())
                    .ok_or_else(|| FieldError::BadName("node name".into()))?;
                let services = read_services(&mut r)?;
                ControlMessage::Hello { name, services }
            }
            control_type::SERVICES => ControlMessage::Services(read_services(&mut r)?),
            control_type::REGISTRY => {
                let message = r.bytes.to_vec();
                r.bytes = &[];
                ControlMessage::Registry(message)
            }
            control_type::GOODBYE => ControlMessage::Goodbye(match r.u8("reason")? {
                0 => GoodbyeReason::Shutdown,
                1 => GoodbyeReason::Restart,
                other => return Err(ControlError::UnknownReason(other)),
            }),
            other => return Ok(ControlMessage::Unknown { kind: other }),
        };
        if !r.bytes.is_empty() {
            return Err(FieldError::TrailingBytes(r.bytes.len()).into());
        }
        Ok(message)
    }

    /// Decodes one frame from `bytes`, returning it and the bytes used, or `None` if more are
    /// needed.
    pub fn decode(bytes: &[u8]) -> Result<Option<(ControlMessage, usize)>, ControlError> {
        let Some(prefix) = bytes.get(..CONTROL_PREFIX_LEN) else {
            return Ok(None);
        };
        let prefix: &[u8; CONTROL_PREFIX_LEN] = prefix.try_into().expect("length checked");
        let (kind, len) = ControlMessage::decode_prefix(prefix)?;
        let Some(body) = bytes.get(CONTROL_PREFIX_LEN..CONTROL_PREFIX_LEN + len) else {
            return Ok(None);
        };
        Ok(Some((
            ControlMessage::decode_body(kind, body)?,
            CONTROL_PREFIX_LEN + len,
        )))
    }
}

fn push_short(out: &mut Vec<u8>, text: &str) {
    // Labels are at most 63 bytes, so the one-byte length always fits.
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

fn push_services(out: &mut Vec<u8>, services: &[ServiceName]) {
    let services = &services[..services.len().min(MAX_SERVICES)];
    out.extend_from_slice(&(services.len() as u16).to_be_bytes());
    for s in services {
        push_short(out, s.as_str());
    }
}

fn read_services(r: &mut Reader<'_>) -> Result<Vec<ServiceName>, ControlError> {
    let count = r.u16("service_count")? as usize;
    if count > MAX_SERVICES {
        return Err(ControlError::TooManyServices(count));
    }
    // Each entry takes at least two bytes; bound the allocation by what is actually there.
    let mut services = Vec::with_capacity(count.min(r.bytes.len() / 2));
    for _ in 0..count {
        let name = r.short("service")?;
        let name = std::str::from_utf8(name)
            .ok()
            .and_then(|n| ServiceName::parse(n).ok())
            .ok_or_else(|| FieldError::BadName("service name".into()))?;
        services.push(name);
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(names: &[&str]) -> Vec<ServiceName> {
        names
            .iter()
            .map(|n| ServiceName::parse(n).unwrap())
            .collect()
    }

    /// The example of `docs/protocol.md` §5.
    #[test]
    fn hello_example_bytes() {
        let hello = ControlMessage::Hello {
            name: NodeName::parse("alpha").unwrap(),
            services: services(&["db", "web"]),
        };
        let bytes = hello.encode();
        let expected: Vec<u8> = [
            &[1u8, 0, 0, 0, 15][..],
            &[5, b'a', b'l', b'p', b'h', b'a', 0, 2],
            &[2, b'd', b'b', 3, b'w', b'e', b'b'],
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(
            ControlMessage::decode(&bytes).unwrap(),
            Some((hello, bytes.len()))
        );
    }

    #[test]
    fn messages_round_trip_and_unknown_types_are_skipped() {
        for message in [
            ControlMessage::Services(vec![]),
            ControlMessage::Services(services(&["a", "b-c"])),
            ControlMessage::Goodbye(GoodbyeReason::Restart),
            ControlMessage::Goodbye(GoodbyeReason::Shutdown),
            ControlMessage::Registry(vec![1, 2, 3]),
            ControlMessage::Registry(vec![]),
        ] {
            let bytes = message.encode();
            assert_eq!(
                ControlMessage::decode(&bytes).unwrap(),
                Some((message, bytes.len()))
            );
        }
        let unknown = [200u8, 0, 0, 0, 3, 9, 9, 9, 1];
        assert_eq!(
            ControlMessage::decode(&unknown).unwrap(),
            Some((ControlMessage::Unknown { kind: 200 }, 8))
        );
    }

    #[test]
    fn garbage_is_rejected_without_large_allocations() {
        assert_eq!(
            ControlMessage::decode(&[1, 0xff, 0xff, 0xff, 0xff]),
            Err(ControlError::TooLong(0xffff_ffff))
        );
        assert_eq!(
            ControlMessage::decode(&[2, 0, 0, 0, 2, 0xff, 0xff]),
            Err(ControlError::TooManyServices(0xffff))
        );
        assert_eq!(
            ControlMessage::decode(&[2, 0, 0, 0, 2, 0, 9]),
            Err(ControlError::Field(FieldError::Truncated("service")))
        );
        assert_eq!(
            ControlMessage::decode(&[3, 0, 0, 0, 1, 7]),
            Err(ControlError::UnknownReason(7))
        );
        assert_eq!(
            ControlMessage::decode(&[3, 0, 0, 0, 2, 0, 0]),
            Err(ControlError::Field(FieldError::TrailingBytes(1)))
        );
        assert_eq!(ControlMessage::decode(&[3, 0, 0, 0, 1]).unwrap(), None);
    }
}
