//! Node identities: ed25519 key pairs and the stable text form of a node id.
//!
//! A node's identity is an ed25519 key pair. The [`NodeId`] *is* the 32-byte public key; the
//! secret half is a [`NodeKey`], built from a 32-byte seed the caller supplies (the core draws no
//! OS randomness).
//!
//! # Text form
//!
//! `base32(key ‖ checksum)`, where `key` is the 32 public-key bytes, `checksum` is the first
//! 3 bytes of `blake3::derive_key("svcnet node id checksum v1", key)` and `base32` is the RFC 4648
//! alphabet (`a`–`z`, `2`–`7`) in lowercase without padding. 35 bytes are exactly 280 bits, i.e.
//! 56 characters with no partial trailing symbol, so the text form fits in one DNS label (≤ 63
//! characters). Parsing accepts upper- and mixed case and normalises it. See `docs/protocol.md`,
//! section 1.
//!
//! Every [`NodeId`] holds a canonical encoding of a valid ed25519 point that is not of small order:
//! these are checked when a node id is built from bytes or parsed from text, so that one key has
//! exactly one node id.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Length of a node id (an ed25519 public key) in bytes.
pub const NODE_ID_LEN: usize = 32;
/// Length of the text form of a node id in characters.
pub const NODE_ID_TEXT_LEN: usize = 56;
/// Length of the checksum appended to the key bytes before base32 encoding.
pub const NODE_ID_CHECKSUM_LEN: usize = 3;
/// Length of an ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Number of characters of [`NodeId::short`].
pub const NODE_ID_SHORT_LEN: usize = 8;

/// blake3 `derive_key` context of the text form's checksum.
pub const CHECKSUM_CONTEXT: &str = "svcnet node id checksum v1";

/// An ed25519 signature, as bytes (`R ‖ S`, RFC 8032).
pub type SignatureBytes = [u8; SIGNATURE_LEN];

/// Why a node id, its text form or a signature was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityError {
    /// The text form does not have [`NODE_ID_TEXT_LEN`] characters.
    WrongLength {
        /// Always [`NODE_ID_TEXT_LEN`].
        expected: usize,
        /// Number of characters (not bytes) received.
        got: usize,
    },
    /// The text form contains a character outside the base32 alphabet.
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// Its position, counted in characters from 1.
        position: usize,
    },
    /// The checksum does not match the key: most likely a typo.
    BadChecksum,
    /// The 32 bytes do not encode a point on the ed25519 curve.
    InvalidPoint,
    /// The 32 bytes encode a curve point, but not in its canonical encoding (a second spelling of
    /// another key).
    NonCanonicalKey,
    /// The key is a point of small order, for which signatures can be forged.
    WeakKey,
    /// The signature does not verify for this node id and message.
    BadSignature,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::WrongLength { expected, got } => write!(
                f,
                "node id text has the wrong length: expected {expected} characters, got {got}"
            ),
            IdentityError::InvalidCharacter {
                character,
                position,
            } => write!(
                f,
                "node id text has an invalid character {character:?} at position {position} \
                 (allowed: a-z and 2-7)"
            ),
            IdentityError::BadChecksum => f.write_str(
                "node id text has a bad checksum (probably a typo: check the characters again)",
            ),
            IdentityError::InvalidPoint => {
                f.write_str("node id is not a valid ed25519 public key (not a curve point)")
            }
            IdentityError::NonCanonicalKey => {
                f.write_str("node id is not the canonical encoding of an ed25519 public key")
            }
            IdentityError::WeakKey => {
                f.write_str("node id is a weak ed25519 public key (a point of small order)")
            }
            IdentityError::BadSignature => {
                f.write_str("signature does not verify for this node id and message")
            }
        }
    }
}

impl std::error::Error for IdentityError {}

/// A node's identity: its ed25519 public key.
///
/// Ordering, equality and hashing are those of the 32 key bytes. `Display`/`FromStr` use the
/// 56-character text form described in the [module documentation](self).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; NODE_ID_LEN]);

impl NodeId {
    /// A node id from the 32 public-key bytes, rejecting anything that is not a canonically encoded
    /// ed25519 point of large order.
    pub fn from_bytes(bytes: [u8; NODE_ID_LEN]) -> Result<NodeId, IdentityError> {
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| IdentityError::InvalidPoint)?;
        if key.to_edwards().compress().to_bytes() != bytes {
            return Err(IdentityError::NonCanonicalKey);
        }
        if key.is_weak() {
            return Err(IdentityError::WeakKey);
        }
        Ok(NodeId(bytes))
    }

    /// The 32 public-key bytes.
    pub fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }

    /// The 32 public-key bytes, by value.
    pub fn to_bytes(self) -> [u8; NODE_ID_LEN] {
        self.0
    }

    /// Checks `signature` over `message` (strict RFC 8032 verification: non-canonical and
    /// small-order signature components are rejected).
    pub fn verify(&self, message: &[u8], signature: &SignatureBytes) -> Result<(), IdentityError> {
        // The invariant of `NodeId` makes this infallible, but no panic on the way.
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidPoint)?;
        key.verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| IdentityError::BadSignature)
    }

    /// The 56-character text form (also available through `Display`).
    pub fn to_text(&self) -> String {
        let mut raw = [0u8; NODE_ID_LEN + NODE_ID_CHECKSUM_LEN];
        raw[..NODE_ID_LEN].copy_from_slice(&self.0);
        raw[NODE_ID_LEN..].copy_from_slice(&checksum(&self.0));
        let mut text = BASE32_NOPAD.encode(&raw);
        text.make_ascii_lowercase();
        text
    }

    /// The first [`NODE_ID_SHORT_LEN`] characters of the text form, for logs. Not unique: never
    /// use it to identify a node.
    pub fn short(&self) -> String {
        let mut text = self.to_text();
        text.truncate(NODE_ID_SHORT_LEN);
        text
    }

    /// Parses the text form (also available through `FromStr`). Upper- and mixed case are accepted.
    pub fn parse_text(text: &str) -> Result<NodeId, IdentityError> {
        let got = text.chars().count();
        if got != NODE_ID_TEXT_LEN {
            return Err(IdentityError::WrongLength {
                expected: NODE_ID_TEXT_LEN,
                got,
            });
        }
        let mut upper = String::with_capacity(NODE_ID_TEXT_LEN);
        for (index, character) in text.chars().enumerate() {
            let c = character.to_ascii_uppercase();
            if !(c.is_ascii_uppercase() || ('2'..='7').contains(&c)) {
                return Err(IdentityError::InvalidCharacter {
                    character,
                    position: index + 1,
                });
            }
            upper.push(c);
        }
        // 56 symbols of the alphabet always decode to exactly 35 bytes; the error arm is defensive.
        let raw =
            BASE32_NOPAD
                .decode(upper.as_bytes())
                .map_err(|_| IdentityError::WrongLength {
                    expected: NODE_ID_TEXT_LEN,
                    got,
                })?;
        let (key, sum) = raw.split_at(NODE_ID_LEN.min(raw.len()));
        let key: [u8; NODE_ID_LEN] = key.try_into().map_err(|_| IdentityError::WrongLength {
            expected: NODE_ID_TEXT_LEN,
            got,
        })?;
        if sum != checksum(&key) {
            return Err(IdentityError::BadChecksum);
        }
        NodeId::from_bytes(key)
    }
}

fn checksum(key: &[u8; NODE_ID_LEN]) -> [u8; NODE_ID_CHECKSUM_LEN] {
    let hash = blake3::derive_key(CHECKSUM_CONTEXT, key);
    [hash[0], hash[1], hash[2]]
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.to_text())
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<NodeId, IdentityError> {
        NodeId::parse_text(text)
    }
}

/// Lets maps keyed by `NodeId` be searched with raw key bytes (from the wire) without
/// validating them first: `NodeId`'s order and equality are those of its bytes.
impl std::borrow::Borrow<[u8; NODE_ID_LEN]> for NodeId {
    fn borrow(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }
}

impl TryFrom<[u8; NODE_ID_LEN]> for NodeId {
    type Error = IdentityError;

    fn try_from(bytes: [u8; NODE_ID_LEN]) -> Result<NodeId, IdentityError> {
        NodeId::from_bytes(bytes)
    }
}

/// A node's secret key: an ed25519 signing key. The secret is zeroised on drop; `Debug` shows only
/// the node id.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
    id: NodeId,
}

impl NodeKey {
    /// The key pair whose RFC 8032 secret seed is `seed`. The caller is responsible for drawing the
    /// seed from a good random source (or a fixed value in tests and simulations).
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        let signing = SigningKey::from_bytes(&seed);
        // A public key derived from a secret scalar is always a canonical point of large order, so
        // the checks of `NodeId::from_bytes` need not run again.
        let id = NodeId(signing.verifying_key().to_bytes());
        NodeKey { signing, id }
    }

    /// The public half: this node's id.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// Signs `message` (deterministic RFC 8032 ed25519).
    pub fn sign(&self, message: &[u8]) -> SignatureBytes {
        self.signing.sign(message).to_bytes()
    }

    /// The 32-byte seed, for persisting the key. Handle with care: this is the secret.
    pub fn to_seed_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("node_id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Test vector 1 of `docs/protocol.md`: the node key with seed `[7u8; 32]`.
    const SEED7_ID_HEX: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
    const SEED7_ID_TEXT: &str = "5jfgyy7ctrjavpxvkb5rglwf7gkuo5vox27hxescd3vgsfcg2iwd67q2";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn seed7() -> NodeId {
        NodeKey::from_seed([7u8; 32]).node_id()
    }

    #[test]
    fn vector_seed7() {
        let id = seed7();
        assert_eq!(hex(id.as_bytes()), SEED7_ID_HEX);
        assert_eq!(id.to_string(), SEED7_ID_TEXT);
        assert_eq!(id.to_string().len(), NODE_ID_TEXT_LEN);
        assert_eq!(id.short(), &SEED7_ID_TEXT[..8]);
        assert_eq!(SEED7_ID_TEXT.parse::<NodeId>(), Ok(id));
    }

    #[test]
    fn uppercase_and_mixed_case_accepted() {
        let id = seed7();
        let upper = SEED7_ID_TEXT.to_ascii_uppercase();
        assert_eq!(upper.parse::<NodeId>(), Ok(id));
        let mixed: String = SEED7_ID_TEXT
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        assert_eq!(mixed.parse::<NodeId>(), Ok(id));
        // Output is always lowercase.
        assert_eq!(upper.parse::<NodeId>().unwrap().to_string(), SEED7_ID_TEXT);
    }

    #[test]
    fn wrong_length_rejected() {
        let short = &SEED7_ID_TEXT[..55];
        assert_eq!(
            short.parse::<NodeId>(),
            Err(IdentityError::WrongLength {
                expected: 56,
                got: 55
            })
        );
        let long = format!("{SEED7_ID_TEXT}a");
        assert_eq!(
            long.parse::<NodeId>(),
            Err(IdentityError::WrongLength {
                expected: 56,
                got: 57
            })
        );
        assert_eq!(
            "".parse::<NodeId>(),
            Err(IdentityError::WrongLength {
                expected: 56,
                got: 0
            })
        );
        // Length counts characters, not bytes.
        let multibyte = "é".repeat(56);
        assert_eq!(
            multibyte.parse::<NodeId>(),
            Err(IdentityError::InvalidCharacter {
                character: 'é',
                position: 1
            })
        );
        let message = IdentityError::WrongLength {
            expected: 56,
            got: 55,
        }
        .to_string();
        assert!(message.contains("expected 56"), "{message}");
        assert!(message.contains("got 55"), "{message}");
    }

    #[test]
    fn invalid_character_rejected() {
        for (bad, position) in [('1', 1), ('0', 10), ('8', 56), ('=', 30), ('-', 2)] {
            let mut chars: Vec<char> = SEED7_ID_TEXT.chars().collect();
            chars[position - 1] = bad;
            let text: String = chars.into_iter().collect();
            let err = text.parse::<NodeId>().unwrap_err();
            assert_eq!(
                err,
                IdentityError::InvalidCharacter {
                    character: bad,
                    position
                }
            );
            let message = err.to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
            assert!(
                message.contains(&format!("position {position}")),
                "{message}"
            );
        }
    }

    #[test]
    fn bad_checksum_rejected() {
        // Change one character in the key part, and one in the checksum part.
        for position in [0, 20, 52, 55] {
            let mut chars: Vec<char> = SEED7_ID_TEXT.chars().collect();
            chars[position] = if chars[position] == 'a' { 'b' } else { 'a' };
            let text: String = chars.into_iter().collect();
            assert_eq!(text.parse::<NodeId>(), Err(IdentityError::BadChecksum));
        }
        assert!(IdentityError::BadChecksum.to_string().contains("typo"));
    }

    /// Text form of arbitrary 32 bytes with a correct checksum (bypasses `NodeId` validation).
    fn text_of_raw(key: [u8; 32]) -> String {
        NodeId(key).to_text()
    }

    /// The first of the encodings `[y, 0, …, 0]`, y = 2..=255, that satisfies `pred`.
    fn find_bytes(mut pred: impl FnMut(&[u8; 32]) -> bool) -> [u8; 32] {
        for y in 2u8..=255 {
            let mut bytes = [0u8; 32];
            bytes[0] = y;
            if pred(&bytes) {
                return bytes;
            }
        }
        panic!("no candidate found");
    }

    #[test]
    fn invalid_point_rejected() {
        let not_a_point = find_bytes(|b| VerifyingKey::from_bytes(b).is_err());
        assert_eq!(
            NodeId::from_bytes(not_a_point),
            Err(IdentityError::InvalidPoint)
        );
        assert_eq!(
            text_of_raw(not_a_point).parse::<NodeId>(),
            Err(IdentityError::InvalidPoint)
        );
        assert!(IdentityError::InvalidPoint
            .to_string()
            .contains("not a valid ed25519"));
    }

    #[test]
    fn weak_key_rejected() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(NodeId::from_bytes(identity), Err(IdentityError::WeakKey));
        assert_eq!(
            text_of_raw(identity).parse::<NodeId>(),
            Err(IdentityError::WeakKey)
        );
    }

    #[test]
    fn non_canonical_key_rejected() {
        // y = p + 1 ≡ 1 (mod p): a second spelling of the identity point.
        let mut p_plus_1 = [0xffu8; 32];
        p_plus_1[0] = 0xee;
        p_plus_1[31] = 0x7f;
        assert_eq!(
            NodeId::from_bytes(p_plus_1),
            Err(IdentityError::NonCanonicalKey)
        );
        // "Negative zero": y = 1 (so x = 0) with the sign bit of x set.
        let mut neg_zero = [0u8; 32];
        neg_zero[0] = 1;
        neg_zero[31] = 0x80;
        assert_eq!(
            NodeId::from_bytes(neg_zero),
            Err(IdentityError::NonCanonicalKey)
        );
    }

    #[test]
    fn every_single_substitution_rejected() {
        // Deterministic: all 56 × 31 one-character typos of the vector are caught.
        let original: Vec<char> = SEED7_ID_TEXT.chars().collect();
        for position in 0..original.len() {
            for replacement in "abcdefghijklmnopqrstuvwxyz234567".chars() {
                if replacement == original[position] {
                    continue;
                }
                let mut chars = original.clone();
                chars[position] = replacement;
                let text: String = chars.into_iter().collect();
                assert!(text.parse::<NodeId>().is_err(), "{text} accepted");
            }
        }
    }

    #[test]
    fn valid_from_bytes_and_try_from() {
        let id = seed7();
        assert_eq!(NodeId::from_bytes(id.to_bytes()), Ok(id));
        assert_eq!(NodeId::try_from(*id.as_bytes()), Ok(id));
    }

    #[test]
    fn signatures() {
        let key = NodeKey::from_seed([7u8; 32]);
        let id = key.node_id();
        let message = b"svcnet signature test";
        let signature = key.sign(message);
        assert_eq!(id.verify(message, &signature), Ok(()));

        // Tampered message.
        assert_eq!(
            id.verify(b"svcnet signature tesT", &signature),
            Err(IdentityError::BadSignature)
        );
        // Tampered signature (R half and S half).
        for index in [0, 40, 63] {
            let mut bad = signature;
            bad[index] ^= 0x01;
            assert_eq!(id.verify(message, &bad), Err(IdentityError::BadSignature));
        }
        // Another node's key.
        let other = NodeKey::from_seed([8u8; 32]).node_id();
        assert_ne!(other, id);
        assert_eq!(
            other.verify(message, &signature),
            Err(IdentityError::BadSignature)
        );
        // Deterministic signatures.
        assert_eq!(key.sign(message), signature);
    }

    #[test]
    fn seed_round_trip_and_debug_hides_secret() {
        let key = NodeKey::from_seed([7u8; 32]);
        assert_eq!(key.to_seed_bytes(), [7u8; 32]);
        assert_eq!(
            NodeKey::from_seed(key.to_seed_bytes()).node_id(),
            key.node_id()
        );
        let debug = format!("{key:?}");
        assert!(debug.contains(SEED7_ID_TEXT), "{debug}");
        assert!(!debug.contains("7, 7"), "{debug}");
    }

    #[test]
    fn error_is_std_error() {
        let err: Box<dyn std::error::Error> = Box::new(IdentityError::BadChecksum);
        assert!(!err.to_string().is_empty());
    }

    proptest! {
        #[test]
        fn text_round_trip(seed in any::<[u8; 32]>()) {
            let key = NodeKey::from_seed(seed);
            let id = key.node_id();
            let text = id.to_string();
            prop_assert_eq!(text.len(), NODE_ID_TEXT_LEN);
            prop_assert!(text.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
            prop_assert_eq!(text.parse::<NodeId>(), Ok(id));
            prop_assert_eq!(text.to_ascii_uppercase().parse::<NodeId>(), Ok(id));
            prop_assert_eq!(NodeId::from_bytes(id.to_bytes()), Ok(id));
            let signature = key.sign(&seed);
            prop_assert_eq!(id.verify(&seed, &signature), Ok(()));
        }

        #[test]
        fn parse_never_panics(text in ".{0,80}") {
            let _ = text.parse::<NodeId>();
        }

        #[test]
        fn parse_never_panics_on_alphabet(text in "[a-zA-Z2-7]{56}") {
            let _ = text.parse::<NodeId>();
        }
    }
}
