//! Signed announcements: what one node says about its own service instances.
//!
//! Each node is the only authority for its own instances. It publishes them as one
//! [`Announcement`]: its node id, an *incarnation* the frontend picks at start (so that versions
//! keep increasing across restarts without persistent state: e.g. the start time in
//! milliseconds), a *version* that increases with every change and every heartbeat, a lease, and
//! the instance list. The announcement is signed by the origin's node key over the exact encoded
//! body, prefixed with [`SIGNING_CONTEXT`] (domain separation: a signature made for a registry
//! announcement can never be replayed as any other svcnet signature, and vice versa).
//!
//! Layout (integers big-endian; specified in `docs/registry.md` §3):
//!
//! ```text
//! format u8 = 1 | origin [32] | incarnation u64 | version u64 | lease_ms u32 | count u16
//! | count × (service_len u8 | service | role_len u8 | role | semver_len u8 | semver
//!            | flags u8 (bit 0: healthy) | port u16 (0: none))
//! | signature [64]   -- ed25519 over SIGNING_CONTEXT ‖ every byte before the signature
//! ```
//!
//! Decoding never allocates more than the input holds, and checks the total length against a
//! caller-supplied limit before anything else.

use std::fmt;

use crate::addressing::{RoleName, ServiceName};
use crate::identity::{NodeId, NodeKey, NODE_ID_LEN, SIGNATURE_LEN};

/// The announcement format this implementation writes and reads.
pub const ANNOUNCEMENT_FORMAT: u8 = 1;
/// Domain-separation prefix of the signed bytes.
pub const SIGNING_CONTEXT: &[u8] = b"svcnet registry announcement v1\0";
/// Bytes before the instance list: format, origin, incarnation, version, lease, count.
pub const FIXED_HEADER_LEN: usize = 1 + NODE_ID_LEN + 8 + 8 + 4 + 2;
/// Smallest possible announcement (no instances).
pub const MIN_ANNOUNCEMENT_LEN: usize = FIXED_HEADER_LEN + SIGNATURE_LEN;
/// Longest semver text accepted in an instance (`3.2.2-rc.1+build.5` is 18).
pub const MAX_SEMVER_LEN: usize = 64;
/// Largest lease an announcement may ask for: leases longer than a day would keep a crashed
/// node's instances far too long.
pub const MAX_LEASE_MS: u32 = 24 * 3600 * 1000;

/// One service instance as its origin describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSpec {
    /// The service on the origin node that serves this instance.
    pub service: ServiceName,
    /// The role it plays.
    pub role: RoleName,
    /// Its exact version.
    pub version: semver::Version,
    /// The origin's last health verdict.
    pub healthy: bool,
    /// The service's natural port, if it has one (informational, e.g. for SRV records).
    pub port: Option<u16>,
}

/// An announcement's identity and freshness: `(incarnation, version)` ordered lexicographically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Chosen by the origin's frontend at start; increases across restarts.
    pub incarnation: u64,
    /// Increases with every announcement within an incarnation.
    pub version: u64,
}

/// A decoded (not yet verified, unless it came from [`Announcement::verify`]) announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The node that runs the instances and signed this.
    pub origin: NodeId,
    /// Freshness.
    pub stamp: Stamp,
    /// How long receivers keep the instances without a newer announcement, in milliseconds.
    pub lease_ms: u32,
    /// The origin's instances, complete (an announcement replaces the previous one whole; an
    /// empty list is a withdrawal).
    pub instances: Vec<InstanceSpec>,
}

/// Why an announcement was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnounceError {
    /// Longer than the configured limit (`len`, `max`).
    Oversized {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Ends before a field is complete.
    Truncated(&'static str),
    /// Bytes between the last instance and the signature.
    TrailingBytes(usize),
    /// Unknown format byte.
    UnknownFormat(u8),
    /// The origin bytes are not a valid node id.
    BadOrigin,
    /// A service or role name, or a semver text, is malformed.
    BadField(&'static str),
    /// More instances than the configured limit.
    TooManyInstances {
        /// Count in the announcement.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two instances name the same service.
    DuplicateService(ServiceName),
    /// The lease is zero or longer than [`MAX_LEASE_MS`].
    BadLease(u32),
    /// The signature does not verify against the origin.
    BadSignature,
}

impl fmt::Display for AnnounceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnnounceError::Oversized { len, max } => {
                write!(f, "announcement of {len} bytes exceeds the limit of {max}")
            }
            AnnounceError::Truncated(field) => write!(f, "announcement truncated in {field}"),
            AnnounceError::TrailingBytes(n) => write!(f, "{n} unexpected bytes before signature"),
            AnnounceError::UnknownFormat(v) => write!(f, "unknown announcement format {v}"),
            AnnounceError::BadOrigin => write!(f, "origin is not a valid node id"),
            AnnounceError::BadField(field) => write!(f, "malformed {field}"),
            AnnounceError::TooManyInstances { count, max } => {
                write!(f, "{count} instances exceed the limit of {max}")
            }
            AnnounceError::DuplicateService(s) => write!(f, "service {s} listed twice"),
            AnnounceError::BadLease(ms) => write!(f, "lease of {ms} ms is out of range"),
            AnnounceError::BadSignature => write!(f, "bad signature"),
        }
    }
}

impl std::error::Error for AnnounceError {}

/// Limits applied while decoding.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest encoded announcement, signature included.
    pub max_bytes: usize,
    /// Most instances.
    pub max_instances: usize,
}

impl Announcement {
    /// The signed bytes of this announcement, signature excluded.
    fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + self.instances.len() * 32);
        out.push(ANNOUNCEMENT_FORMAT);
        out.extend_from_slice(self.origin.as_bytes());
        out.extend_from_slice(&self.stamp.incarnation.to_be_bytes());
        out.extend_from_slice(&self.stamp.version.to_be_bytes());
        out.extend_from_slice(&self.lease_ms.to_be_bytes());
        // Callers bound the list by `max_instances` (≤ u16::MAX by construction of the config);
        // clamp anyway so the count always matches what follows.
        let instances = &self.instances[..self.instances.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(instances.len() as u16).to_be_bytes());
        for i in instances {
            push_short(&mut out, i.service.as_str());
            push_short(&mut out, i.role.as_str());
            let text = i.version.to_string();
            // A version whose text exceeds the limit cannot be decoded anywhere: write an
            // empty text, which every receiver rejects, rather than a corrupt length.
            push_short(
                &mut out,
                if text.len() <= MAX_SEMVER_LEN {
                    &text
                } else {
                    ""
                },
            );
            out.push(u8::from(i.healthy));
            out.extend_from_slice(&i.port.unwrap_or(0).to_be_bytes());
        }
        out
    }

    /// Encodes and signs with `key` (whose node id must be `self.origin`).
    pub fn sign(&self, key: &NodeKey) -> Vec<u8> {
        let mut body = self.encode_body();
        let signature = key.sign(&signed_message(&body));
        body.extend_from_slice(&signature);
        body
    }

    /// Decodes `bytes` without checking the signature (cheap: used to read the stamp of
    /// something already held, and by [`Announcement::verify`]).
    pub fn decode_unverified(
        bytes: &[u8],
        limits: DecodeLimits,
    ) -> Result<Announcement, AnnounceError> {
        if bytes.len() > limits.max_bytes {
            return Err(AnnounceError::Oversized {
                len: bytes.len(),
                max: limits.max_bytes,
            });
        }
        if bytes.len() < MIN_ANNOUNCEMENT_LEN {
            return Err(AnnounceError::Truncated("announcement"));
        }
        let (body, _) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
        let mut r = Reader(body);
        let format = r.u8("format")?;
        if format != ANNOUNCEMENT_FORMAT {
            return Err(AnnounceError::UnknownFormat(format));
        }
        let origin = r.array::<NODE_ID_LEN>("origin")?;
        let origin = NodeId::from_bytes(origin).map_err(|_| AnnounceError::BadOrigin)?;
        let incarnation = r.u64("incarnation")?;
        let version = r.u64("version")?;
        let lease_ms = r.u32("lease")?;
        if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
            return Err(AnnounceError::BadLease(lease_ms));
        }
        let count = usize::from(r.u16("count")?);
        if count > limits.max_instances {
            return Err(AnnounceError::TooManyInstances {
                count,
                max: limits.max_instances,
            });
        }
        // Each instance takes at least 8 bytes: bound the allocation by what is there.
        let mut instances: Vec<InstanceSpec> = Vec::with_capacity(count.min(r.0.len() / 8));
        for _ in 0..count {
            let service = r.label("service")?;
            let service =
                ServiceName::parse(service).map_err(|_| AnnounceError::BadField("service"))?;
            let role = r.label("role")?;
            let role = RoleName::parse(role).map_err(|_| AnnounceError::BadField("role"))?;
            let text = r.label("semver")?;
            if text.len() > MAX_SEMVER_LEN {
                return Err(AnnounceError::BadField("semver"));
            }
            let version =
                semver::Version::parse(text).map_err(|_| AnnounceError::BadField("semver"))?;
            let flags = r.u8("flags")?;
            if flags & !1 != 0 {
                return Err(AnnounceError::BadField("flags"));
            }
            let port = r.u16("port")?;
            if instances.iter().any(|i| i.service == service) {
                return Err(AnnounceError::DuplicateService(service));
            }
            instances.push(InstanceSpec {
                service,
                role,
                version,
                healthy: flags & 1 == 1,
                port: (port != 0).then_some(port),
            });
        }
        if !r.0.is_empty() {
            return Err(AnnounceError::TrailingBytes(r.0.len()));
        }
        Ok(Announcement {
            origin,
            stamp: Stamp {
                incarnation,
                version,
            },
            lease_ms,
            instances,
        })
    }

    /// Decodes `bytes` and checks the origin's signature over them.
    pub fn verify(bytes: &[u8], limits: DecodeLimits) -> Result<Announcement, AnnounceError> {
        let announcement = Announcement::decode_unverified(bytes, limits)?;
        let (body, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
        let signature: &[u8; SIGNATURE_LEN] = signature
            .try_into()
            .map_err(|_| AnnounceError::Truncated("signature"))?;
        announcement
            .origin
            .verify(&signed_message(body), signature)
            .map_err(|_| AnnounceError::BadSignature)?;
        Ok(announcement)
    }
}

/// Reads just the origin's raw key bytes and the stamp of an encoded announcement: no
/// signature check, no point decompression, no allocation (it runs on every gossiped copy, most
/// of which are duplicates). `None` if the bytes are too short or of another format.
pub fn peek_stamp(bytes: &[u8]) -> Option<([u8; NODE_ID_LEN], Stamp)> {
    if bytes.len() < MIN_ANNOUNCEMENT_LEN || bytes[0] != ANNOUNCEMENT_FORMAT {
        return None;
    }
    let mut r = Reader(&bytes[1..]);
    let origin = r.array::<NODE_ID_LEN>("origin").ok()?;
    let incarnation = r.u64("incarnation").ok()?;
    let version = r.u64("version").ok()?;
    Some((
        origin,
        Stamp {
            incarnation,
            version,
        },
    ))
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(body);
    m
}

fn push_short(out: &mut Vec<u8>, text: &str) {
    // Names are DNS labels (≤ 63 bytes) and semver texts are bounded by MAX_SEMVER_LEN.
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// A bounds-checked cursor over a byte slice.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], AnnounceError> {
        if self.0.len() < n {
            return Err(AnnounceError::Truncated(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], AnnounceError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, AnnounceError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, AnnounceError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, AnnounceError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, AnnounceError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn label(&mut self, field: &'static str) -> Result<&'a str, AnnounceError> {
        let len = usize::from(self.u8(field)?);
        std::str::from_utf8(self.take(len, field)?).map_err(|_| AnnounceError::BadField(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_bytes: 16 * 1024,
        max_instances: 64,
    };

    fn sample(key: &NodeKey) -> Announcement {
        Announcement {
            origin: key.node_id(),
            stamp: Stamp {
                incarnation: 7,
                version: 3,
            },
            lease_ms: 30_000,
            instances: vec![InstanceSpec {
                service: ServiceName::parse("couch").unwrap(),
                role: RoleName::parse("couchdb").unwrap(),
                version: semver::Version::parse("3.2.2").unwrap(),
                healthy: true,
                port: Some(5984),
            }],
        }
    }

    /// The layout of `docs/registry.md` §3, byte by byte.
    #[test]
    fn layout_matches_the_spec() {
        let key = NodeKey::from_seed([1; 32]);
        let a = sample(&key);
        let bytes = a.sign(&key);
        let mut expected = vec![1u8];
        expected.extend_from_slice(key.node_id().as_bytes());
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        expected.extend_from_slice(&[0, 0, 0x75, 0x30]);
        expected.extend_from_slice(&[0, 1]);
        expected.extend_from_slice(b"\x05couch\x07couchdb\x053.2.2\x01");
        expected.extend_from_slice(&5984u16.to_be_bytes());
        assert_eq!(&bytes[..bytes.len() - 64], &expected[..]);
        assert_eq!(Announcement::verify(&bytes, LIMITS).unwrap(), a);
        assert_eq!(
            peek_stamp(&bytes),
            Some((key.node_id().to_bytes(), a.stamp))
        );
    }

    #[test]
    fn any_flipped_bit_breaks_the_signature_or_the_decoding() {
        let key = NodeKey::from_seed([2; 32]);
        let bytes = sample(&key).sign(&key);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(Announcement::verify(&bad, LIMITS).is_err(), "byte {i}");
        }
    }

    #[test]
    fn signed_by_another_key_is_forged() {
        let key = NodeKey::from_seed([3; 32]);
        let other = NodeKey::from_seed([4; 32]);
        let bytes = sample(&key).sign(&other);
        assert_eq!(
            Announcement::verify(&bytes, LIMITS),
            Err(AnnounceError::BadSignature)
        );
    }

    #[test]
    fn limits_are_enforced() {
        let key = NodeKey::from_seed([5; 32]);
        let mut a = sample(&key);
        let bytes = a.sign(&key);
        let small = DecodeLimits {
            max_bytes: bytes.len() - 1,
            ..LIMITS
        };
        assert!(matches!(
            Announcement::verify(&bytes, small),
            Err(AnnounceError::Oversized { .. })
        ));
        a.instances.push(InstanceSpec {
            service: ServiceName::parse("b").unwrap(),
            ..a.instances[0].clone()
        });
        let bytes = a.sign(&key);
        let one = DecodeLimits {
            max_instances: 1,
            ..LIMITS
        };
        assert_eq!(
            Announcement::verify(&bytes, one),
            Err(AnnounceError::TooManyInstances { count: 2, max: 1 })
        );
        a.instances[1].service = a.instances[0].service.clone();
        assert!(matches!(
            Announcement::verify(&a.sign(&key), LIMITS),
            Err(AnnounceError::DuplicateService(_))
        ));
        let mut zero = sample(&key);
        zero.lease_ms = 0;
        assert_eq!(
            Announcement::verify(&zero.sign(&key), LIMITS),
            Err(AnnounceError::BadLease(0))
        );
    }
}
