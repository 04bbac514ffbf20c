//! Registry messages between two directly connected nodes.
//!
//! The frontend carries each message opaquely, as the body of one control frame on the per-peer
//! control stream; the registry never sees frames or streams. Layout (integers big-endian,
//! `docs/registry.md` §4):
//!
//! ```text
//! message: kind u8 | body
//! 1 SWIM:    foca packet (the rest of the message; membership and piggybacked announcements)
//! 2 DIGEST:  from [32] | to [32] | count u16 | count × (origin [32] | incarnation u64 | version u64)
//! 3 DELTA:   count u16 | count × (remaining_ms u32 | len u16 | announcement (len bytes))
//! 4 REQUEST: count u16 | count × origin [32]
//! ```
//!
//! A DIGEST lists every live entry the sender holds whose origin lies in `from..=to` (raw key
//! bytes), so a receiver can tell "the sender lacks this origin" from "it was in another chunk".
//! Unknown kinds are ignored (a later version may add some); a known kind that does not decode
//! is counted as malformed and dropped.

use crate::identity::{NodeId, NODE_ID_LEN};

use super::announce::{AnnounceError, Reader, Stamp};

/// Message kinds.
pub mod kind {
    /// A foca (SWIM) packet.
    pub const SWIM: u8 = 1;
    /// Anti-entropy digest.
    pub const DIGEST: u8 = 2;
    /// Announcements.
    pub const DELTA: u8 = 3;
    /// Ask for origins' announcements.
    pub const REQUEST: u8 = 4;
}

/// Bytes per digest entry.
pub const DIGEST_ENTRY_LEN: usize = NODE_ID_LEN + 16;
/// Bytes of a digest before its entries.
pub const DIGEST_HEADER_LEN: usize = 1 + 2 * NODE_ID_LEN + 2;
/// Bytes of a delta before its entries.
pub const DELTA_HEADER_LEN: usize = 1 + 2;
/// Bytes before each announcement in a delta.
pub const DELTA_ENTRY_OVERHEAD: usize = 4 + 2;

/// A decoded message (announcements still encoded: they are verified one by one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A foca packet.
    Swim(&'a [u8]),
    /// The sender's stamps for origins in `from..=to`.
    Digest {
        /// Lower bound (inclusive) of the origins covered.
        from: [u8; 32],
        /// Upper bound (inclusive).
        to: [u8; 32],
        /// Entries, as listed: raw origin key bytes (not validated: they are only compared
        /// with what the receiver holds) and stamps.
        entries: Vec<([u8; 32], Stamp)>,
    },
    /// Announcements with the lease time the sender had left for each, in milliseconds.
    Delta(Vec<(u32, &'a [u8])>),
    /// Origins whose announcements the sender wants (raw key bytes, only looked up).
    Request(Vec<[u8; 32]>),
    /// A kind this node does not know.
    Unknown(u8),
}

/// Decodes one message. Allocations are bounded by the input length.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, AnnounceError> {
    let mut r = Reader(bytes);
    let k = r.u8("kind")?;
    let message = match k {
        kind::SWIM => return Ok(Message::Swim(r.0)),
        kind::DIGEST => {
            let from = r.array::<32>("from")?;
            let to = r.array::<32>("to")?;
            let count = usize::from(r.u16("count")?);
            let mut entries = Vec::with_capacity(count.min(r.0.len() / DIGEST_ENTRY_LEN));
            for _ in 0..count {
                let origin = r.array::<NODE_ID_LEN>("origin")?;
                let incarnation = r.u64("incarnation")?;
                let version = r.u64("version")?;
                entries.push((
                    origin,
                    Stamp {
                        incarnation,
                        version,
                    },
                ));
            }
            Message::Digest { from, to, entries }
        }
        kind::DELTA => {
            let count = usize::from(r.u16("count")?);
            let mut entries = Vec::with_capacity(count.min(r.0.len() / DELTA_ENTRY_OVERHEAD));
            for _ in 0..count {
                let remaining = r.u32("remaining")?;
                let len = usize::from(r.u16("len")?);
                entries.push((remaining, r.take(len, "announcement")?));
            }
            Message::Delta(entries)
        }
        kind::REQUEST => {
            let count = usize::from(r.u16("count")?);
            let mut origins = Vec::with_capacity(count.min(r.0.len() / NODE_ID_LEN));
            for _ in 0..count {
                origins.push(r.array::<NODE_ID_LEN>("origin")?);
            }
            Message::Request(origins)
        }
        other => return Ok(Message::Unknown(other)),
    };
    if !r.0.is_empty() {
        return Err(AnnounceError::TrailingBytes(r.0.len()));
    }
    Ok(message)
}

/// Encodes a SWIM message.
pub fn encode_swim(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + packet.len());
    out.push(kind::SWIM);
    out.extend_from_slice(packet);
    out
}

/// Encodes a digest (at most `u16::MAX` entries; callers chunk by size first).
pub fn encode_digest(from: &[u8; 32], to: &[u8; 32], entries: &[(NodeId, Stamp)]) -> Vec<u8> {
    let entries = &entries[..entries.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(DIGEST_HEADER_LEN + entries.len() * DIGEST_ENTRY_LEN);
    out.push(kind::DIGEST);
    out.extend_from_slice(from);
    out.extend_from_slice(to);
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (origin, stamp) in entries {
        out.extend_from_slice(origin.as_bytes());
        out.extend_from_slice(&stamp.incarnation.to_be_bytes());
        out.extend_from_slice(&stamp.version.to_be_bytes());
    }
    out
}

/// Encodes a delta. Announcements longer than `u16::MAX` are skipped (the configured limit is
/// below that).
pub fn encode_delta(entries: &[(u32, &[u8])]) -> Vec<u8> {
    let entries: Vec<&(u32, &[u8])> = entries
        .iter()
        .filter(|(_, a)| a.len() <= u16::MAX as usize)
        .take(u16::MAX as usize)
        .collect();
    let mut out = vec![kind::DELTA];
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (remaining, a) in entries {
        out.extend_from_slice(&remaining.to_be_bytes());
        out.extend_from_slice(&(a.len() as u16).to_be_bytes());
        out.extend_from_slice(a);
    }
    out
}

/// Encodes a request for the origins with these key bytes.
pub fn encode_request(origins: &[[u8; NODE_ID_LEN]]) -> Vec<u8> {
    let origins = &origins[..origins.len().min(u16::MAX as usize)];
    let mut out = vec![kind::REQUEST];
    out.extend_from_slice(&(origins.len() as u16).to_be_bytes());
    for o in origins {
        out.extend_from_slice(o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    #[test]
    fn messages_round_trip() {
        let a = NodeKey::from_seed([1; 32]).node_id();
        let b = NodeKey::from_seed([2; 32]).node_id();
        let stamp = Stamp {
            incarnation: 1,
            version: 2,
        };
        let d = encode_digest(&[0; 32], &[0xff; 32], &[(a, stamp), (b, stamp)]);
        assert_eq!(d.len(), DIGEST_HEADER_LEN + 2 * DIGEST_ENTRY_LEN);
        assert_eq!(
            decode(&d).unwrap(),
            Message::Digest {
                from: [0; 32],
                to: [0xff; 32],
                entries: vec![(a.to_bytes(), stamp), (b.to_bytes(), stamp)]
            }
        );
        let x = encode_delta(&[(5, b"abc"), (6, b"")]);
        assert_eq!(
            x,
            [3, 0, 2, 0, 0, 0, 5, 0, 3, b'a', b'b', b'c', 0, 0, 0, 6, 0, 0]
        );
        assert_eq!(
            decode(&x).unwrap(),
            Message::Delta(vec![(5, &b"abc"[..]), (6, &b""[..])])
        );
        let q = encode_request(&[a.to_bytes()]);
        assert_eq!(decode(&q).unwrap(), Message::Request(vec![a.to_bytes()]));
        assert_eq!(decode(&encode_swim(b"xy")).unwrap(), Message::Swim(b"xy"));
        assert_eq!(decode(&[99, 1, 2]).unwrap(), Message::Unknown(99));
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[kind::DELTA, 0xff, 0xff]).is_err());
        assert!(decode(&[kind::DELTA, 0, 1, 0, 0, 0, 0, 0, 9, 1]).is_err());
        assert!(decode(&[kind::REQUEST, 0, 0, 7]).is_err());
        assert!(decode(&[kind::REQUEST, 0, 1]).is_err());
        let mut d = encode_digest(&[0; 32], &[0; 32], &[]);
        d.push(0);
        assert!(decode(&d).is_err());
    }
}
