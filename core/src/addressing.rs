//! Addresses and names: blake3-derived IPv6 addresses, DNS labels and names, and the directory
//! that maps names to addresses and back.
//!
//! # Addresses
//!
//! Every network has an IPv6 unique local (RFC 4193) /48 prefix, [`NetworkPrefix`]: `0xfd`
//! followed by the first 40 bits of `blake3::derive_key("svcnet network prefix v1", network name)`.
//! The remaining 80 bits are a 16-bit *kind* subnet ([`AddressKind`]) and 64 hash bits:
//!
//! | bits    | field                                                                 |
//! |---------|-----------------------------------------------------------------------|
//! | 0–47    | network prefix (`fd` + 40 hash bits)                                  |
//! | 48–63   | kind: `0x0000` node, `0x0001` service, `0x0002` role                  |
//! | 64–127  | first 8 bytes of a blake3 `derive_key` (context depends on the kind)  |
//!
//! - node: `derive_key("svcnet node address v1", node_id)`;
//! - service: `derive_key("svcnet service address v1", node_id ‖ service_name)` — the node id has a
//!   fixed length of 32 bytes, so the concatenation is unambiguous;
//! - role (reserved for the registry): `derive_key("svcnet role address v1", role ‖ 0x00 ‖ range)`,
//!   where `range` is the canonical [`VersionLabel`] text (`v3`, `v3-2`) or empty — a role name is
//!   an LDH label and never contains `0x00`, so this too is unambiguous.
//!
//! 64 hash bits per address is the contract: collisions are not expected in practice, but the
//! [`Directory`] still detects and rejects them.
//!
//! # Names
//!
//! Node, service and role names are DNS labels under the LDH rule (RFC 1035 §2.3.1, relaxed by
//! RFC 1123 §2.1 to allow a leading digit): 1 to 63 characters from `a`–`z`, `0`–`9` and `-`, not
//! starting or ending with `-`. Input is case-insensitive and normalised to lowercase. Inside a
//! [`Zone`] (default `svcnet`) the names are
//!
//! - `<node>.<zone>` — a node, by name or by node id text form;
//! - `<service>.<node>.<zone>` — a service on a node;
//! - `<role>.role.<zone>` and `<version>.<role>.role.<zone>` — a role, optionally with a
//!   [`VersionLabel`] (`v3`, `v3-2`).
//!
//! [`parse_name`] returns [`NameError::NotInZone`] for names outside the zone (a DNS server answers
//! REFUSED) and another [`NameError`] for malformed names inside it (NXDOMAIN). See
//! `docs/protocol.md`, section 2.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::identity::{NodeId, NODE_ID_TEXT_LEN};

/// blake3 `derive_key` context of the network prefix.
pub const PREFIX_CONTEXT: &str = "svcnet network prefix v1";
/// blake3 `derive_key` context of node addresses.
pub const NODE_ADDRESS_CONTEXT: &str = "svcnet node address v1";
/// blake3 `derive_key` context of service addresses.
pub const SERVICE_ADDRESS_CONTEXT: &str = "svcnet service address v1";
/// blake3 `derive_key` context of role addresses.
pub const ROLE_ADDRESS_CONTEXT: &str = "svcnet role address v1";

/// The first byte of every network prefix: RFC 4193 ULA with the L bit set.
pub const ULA_FIRST_BYTE: u8 = 0xfd;
/// Length of a network prefix in bits.
pub const PREFIX_LEN_BITS: u8 = 48;
/// Maximum length of a DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Maximum length of a DNS name in text form, without the trailing dot (RFC 1035 §2.3.4: 255
/// octets on the wire).
pub const MAX_NAME_LEN: usize = 253;
/// Maximum length of a zone, chosen so that every name [`Name::to_fqdn`] can produce (the longest
/// is a 63-character service on a 63-character node name) stays within [`MAX_NAME_LEN`].
pub const MAX_ZONE_LEN: usize = MAX_NAME_LEN - 2 * (MAX_LABEL_LEN + 1);
/// The default DNS zone.
pub const DEFAULT_ZONE: &str = "svcnet";
/// The label that introduces the role namespace (`<role>.role.<zone>`); reserved as a node name.
pub const ROLE_LABEL: &str = "role";

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

/// The kind subnet: bits 48–63 of every svcnet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressKind {
    /// `0x0000`: a node address.
    Node,
    /// `0x0001`: a service address.
    Service,
    /// `0x0002`: a role address (reserved for the registry).
    Role,
}

impl AddressKind {
    /// The 16-bit subnet value.
    pub const fn subnet(self) -> u16 {
        match self {
            AddressKind::Node => 0x0000,
            AddressKind::Service => 0x0001,
            AddressKind::Role => 0x0002,
        }
    }

    /// The kind of a subnet value, if it is one.
    pub const fn from_subnet(subnet: u16) -> Option<AddressKind> {
        match subnet {
            0x0000 => Some(AddressKind::Node),
            0x0001 => Some(AddressKind::Service),
            0x0002 => Some(AddressKind::Role),
            _ => None,
        }
    }
}

/// A network's IPv6 ULA /48 prefix (RFC 4193): `fd` followed by 40 bits derived from the network
/// name. Displayed as `fdxx:xxxx:xxxx::/48` (RFC 5952 form).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkPrefix([u8; 6]);

impl NetworkPrefix {
    /// The prefix of the network called `network_name` (its UTF-8 bytes are hashed as given).
    pub fn derive(network_name: &str) -> NetworkPrefix {
        let hash = blake3::derive_key(PREFIX_CONTEXT, network_name.as_bytes());
        NetworkPrefix([ULA_FIRST_BYTE, hash[0], hash[1], hash[2], hash[3], hash[4]])
    }

    /// The six prefix bytes.
    pub fn to_bytes(self) -> [u8; 6] {
        self.0
    }

    /// The prefix as an address with all 80 low bits zero (`fdxx:xxxx:xxxx::`).
    pub fn network_address(&self) -> Ipv6Addr {
        self.address(0, [0; 8])
    }

    /// Whether `address` lies inside this /48.
    pub fn contains(&self, address: &Ipv6Addr) -> bool {
        address.octets()[..6] == self.0
    }

    /// The kind of `address`, if it lies inside this prefix and its subnet is a known kind.
    pub fn kind_of(&self, address: &Ipv6Addr) -> Option<AddressKind> {
        if !self.contains(address) {
            return None;
        }
        let octets = address.octets();
        AddressKind::from_subnet(u16::from_be_bytes([octets[6], octets[7]]))
    }

    /// A node's address: kind `0x0000`, hash `derive_key("svcnet node address v1", node_id)`.
    pub fn node_address(&self, node: &NodeId) -> Ipv6Addr {
        let hash = blake3::derive_key(NODE_ADDRESS_CONTEXT, node.as_bytes());
        self.address(AddressKind::Node.subnet(), first8(&hash))
    }

    /// A service's address: kind `0x0001`, hash
    /// `derive_key("svcnet service address v1", node_id ‖ service_name)`.
    pub fn service_address(&self, node: &NodeId, service: &ServiceName) -> Ipv6Addr {
        let mut hasher = blake3::Hasher::new_derive_key(SERVICE_ADDRESS_CONTEXT);
        hasher.update(node.as_bytes());
        hasher.update(service.as_str().as_bytes());
        self.address(
            AddressKind::Service.subnet(),
            first8(hasher.finalize().as_bytes()),
        )
    }

    /// A role's address (reserved for the registry): kind `0x0002`, hash
    /// `derive_key("svcnet role address v1", role ‖ 0x00 ‖ range)`, where `range` is the canonical
    /// text of `version` (`v3`, `v3-2`) or empty when there is none.
    pub fn role_address(&self, role: &RoleName, version: Option<VersionLabel>) -> Ipv6Addr {
        let range = version.map(|v| v.to_string()).unwrap_or_default();
        let mut hasher = blake3::Hasher::new_derive_key(ROLE_ADDRESS_CONTEXT);
        hasher.update(role.as_str().as_bytes());
        hasher.update(&[0x00]);
        hasher.update(range.as_bytes());
        self.address(
            AddressKind::Role.subnet(),
            first8(hasher.finalize().as_bytes()),
        )
    }

    fn address(&self, subnet: u16, hash: [u8; 8]) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets[..6].copy_from_slice(&self.0);
        octets[6..8].copy_from_slice(&subnet.to_be_bytes());
        octets[8..].copy_from_slice(&hash);
        Ipv6Addr::from(octets)
    }
}

fn first8(hash: &[u8; 32]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&hash[..8]);
    out
}

impl fmt::Display for NetworkPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network_address(), PREFIX_LEN_BITS)
    }
}

impl fmt::Debug for NetworkPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkPrefix({self})")
    }
}

// ---------------------------------------------------------------------------------------------
// Labels and errors
// ---------------------------------------------------------------------------------------------

/// Why a single DNS label is not a valid LDH label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelProblem {
    /// The label is empty (two dots in a row, or a leading dot).
    Empty,
    /// The label is longer than [`MAX_LABEL_LEN`] characters.
    TooLong {
        /// Its length in characters.
        len: usize,
    },
    /// The label contains a character other than `a`–`z`, `A`–`Z`, `0`–`9` and `-`.
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// Its position in the label, counted in characters from 1.
        position: usize,
    },
    /// The label starts with `-`.
    LeadingHyphen,
    /// The label ends with `-`.
    TrailingHyphen,
}

impl fmt::Display for LabelProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelProblem::Empty => f.write_str("the label is empty"),
            LabelProblem::TooLong { len } => write!(
                f,
                "the label has {len} characters, at most {MAX_LABEL_LEN} are allowed"
            ),
            LabelProblem::InvalidCharacter {
                character,
                position,
            } => write!(
                f,
                "invalid character {character:?} at position {position} \
                 (allowed: a-z, 0-9 and '-')"
            ),
            LabelProblem::LeadingHyphen => f.write_str("the label starts with '-'"),
            LabelProblem::TrailingHyphen => f.write_str("the label ends with '-'"),
        }
    }
}

/// Why a label, a zone or a DNS name was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The name (or zone) is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] characters.
    NameTooLong {
        /// Its length in characters, without a trailing dot.
        len: usize,
    },
    /// The zone is longer than [`MAX_ZONE_LEN`] characters.
    ZoneTooLong {
        /// Its length in characters, without a trailing dot.
        len: usize,
    },
    /// One label is not a valid LDH label.
    InvalidLabel {
        /// The label as given.
        label: String,
        /// What is wrong with it.
        problem: LabelProblem,
    },
    /// The name is not inside the zone (a DNS server answers REFUSED, not NXDOMAIN).
    NotInZone {
        /// The name as given.
        name: String,
        /// The zone it was checked against.
        zone: Zone,
    },
    /// The name is the zone itself, which names no node, service or role.
    ZoneApex {
        /// The zone.
        zone: Zone,
    },
    /// The name has more labels in front of the zone than any svcnet name.
    TooManyLabels {
        /// The name as given.
        name: String,
        /// Number of labels in front of the zone.
        count: usize,
    },
    /// The label is reserved and cannot be a node name.
    ReservedNodeName {
        /// The label.
        label: String,
    },
    /// A node name that is the text form of a node id, which would make DNS names ambiguous.
    NodeIdAsNodeName {
        /// The label.
        label: String,
    },
    /// A version label that is not `v<major>` or `v<major>-<minor>`.
    BadVersionLabel {
        /// The label as given.
        label: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("the name is empty"),
            NameError::NameTooLong { len } => write!(
                f,
                "the name has {len} characters, at most {MAX_NAME_LEN} are allowed"
            ),
            NameError::ZoneTooLong { len } => write!(
                f,
                "the zone has {len} characters, at most {MAX_ZONE_LEN} are allowed \
                 (so that every svcnet name in it fits in {MAX_NAME_LEN})"
            ),
            NameError::InvalidLabel { label, problem } => {
                write!(f, "invalid DNS label {label:?}: {problem}")
            }
            NameError::NotInZone { name, zone } => {
                write!(f, "the name {name:?} is not inside the zone {:?}", zone.0)
            }
            NameError::ZoneApex { zone } => write!(
                f,
                "the name is the zone {:?} itself, not a node, service or role",
                zone.0
            ),
            NameError::TooManyLabels { name, count } => write!(
                f,
                "the name {name:?} has {count} labels in front of the zone; svcnet names have \
                 1 (<node>) or 2 (<service>.<node>, <role>.role), or 3 (<version>.<role>.role)"
            ),
            NameError::ReservedNodeName { label } => write!(
                f,
                "{label:?} is reserved (it introduces the role namespace) and cannot be a node name"
            ),
            NameError::NodeIdAsNodeName { label } => write!(
                f,
                "{label:?} is the text form of a node id and cannot be a node name"
            ),
            NameError::BadVersionLabel { label, reason } => write!(
                f,
                "invalid version label {label:?}: {reason} (expected v<major> or v<major>-<minor>, \
                 e.g. v3 or v3-2)"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Validates one LDH label and returns it in lowercase.
fn validate_label(label: &str) -> Result<String, NameError> {
    let invalid = |problem| NameError::InvalidLabel {
        label: label.to_string(),
        problem,
    };
    if label.is_empty() {
        return Err(invalid(LabelProblem::Empty));
    }
    let len = label.chars().count();
    if len > MAX_LABEL_LEN {
        return Err(invalid(LabelProblem::TooLong { len }));
    }
    if let Some((index, character)) = label
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(invalid(LabelProblem::InvalidCharacter {
            character,
            position: index + 1,
        }));
    }
    if label.starts_with('-') {
        return Err(invalid(LabelProblem::LeadingHyphen));
    }
    if label.ends_with('-') {
        return Err(invalid(LabelProblem::TrailingHyphen));
    }
    Ok(label.to_ascii_lowercase())
}

macro_rules! label_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The label, in lowercase.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;

            fn from_str(text: &str) -> Result<$name, NameError> {
                $name::parse(text)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

label_type!(
    /// A service name: one LDH label, lowercase (e.g. `web`).
    ServiceName
);
label_type!(
    /// A node's human name: one LDH label, lowercase, that is neither `role` nor the text form of
    /// a node id. Unique per network.
    NodeName
);
label_type!(
    /// A role name (e.g. `db` in `db.role.svcnet`): one LDH label, lowercase.
    RoleName
);

impl ServiceName {
    /// Validates and lowercases a service name.
    pub fn parse(text: &str) -> Result<ServiceName, NameError> {
        validate_label(text).map(ServiceName)
    }
}

impl RoleName {
    /// Validates and lowercases a role name.
    pub fn parse(text: &str) -> Result<RoleName, NameError> {
        validate_label(text).map(RoleName)
    }
}

impl NodeName {
    /// Validates and lowercases a node name; `role` and node id text forms are rejected.
    pub fn parse(text: &str) -> Result<NodeName, NameError> {
        let label = validate_label(text)?;
        if label == ROLE_LABEL {
            return Err(NameError::ReservedNodeName { label });
        }
        if label.len() == NODE_ID_TEXT_LEN && NodeId::parse_text(&label).is_ok() {
            return Err(NameError::NodeIdAsNodeName { label });
        }
        Ok(NodeName(label))
    }
}

/// A version label in a role name: `v<major>` or `v<major>-<minor>`, decimal, without leading
/// zeros (so that each version has exactly one label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionLabel {
    /// The major version.
    pub major: u64,
    /// The minor version, if given.
    pub minor: Option<u64>,
}

impl VersionLabel {
    /// Parses `v3`, `v3-2` (case-insensitive).
    pub fn parse(text: &str) -> Result<VersionLabel, NameError> {
        let label = validate_label(text)?;
        let bad = |reason| NameError::BadVersionLabel {
            label: text.to_string(),
            reason,
        };
        let numbers = label
            .strip_prefix('v')
            .ok_or_else(|| bad("it must start with 'v'"))?;
        let (major, minor) = match numbers.split_once('-') {
            Some((major, minor)) => (major, Some(minor)),
            None => (numbers, None),
        };
        let major = parse_version_number(major, "major").map_err(bad)?;
        let minor = match minor {
            Some(minor) => Some(parse_version_number(minor, "minor").map_err(bad)?),
            None => None,
        };
        Ok(VersionLabel { major, minor })
    }
}

fn parse_version_number(digits: &str, which: &str) -> Result<u64, &'static str> {
    if digits.is_empty() {
        return Err(if which == "major" {
            "the major version number is missing"
        } else {
            "the minor version number after '-' is missing"
        });
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if digits.contains('-') {
            "only one '-' is allowed"
        } else {
            "version numbers are decimal digits only"
        });
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err("version numbers have no leading zeros");
    }
    digits
        .parse::<u64>()
        .map_err(|_| "the version number does not fit in 64 bits")
}

impl fmt::Display for VersionLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.minor {
            Some(minor) => write!(f, "v{}-{}", self.major, minor),
            None => write!(f, "v{}", self.major),
        }
    }
}

impl FromStr for VersionLabel {
    type Err = NameError;

    fn from_str(text: &str) -> Result<VersionLabel, NameError> {
        VersionLabel::parse(text)
    }
}

// ---------------------------------------------------------------------------------------------
// Zones and names
// ---------------------------------------------------------------------------------------------

/// The DNS zone svcnet names live in: default `svcnet`, configurable, possibly with several labels
/// (`corp.svcnet`). Stored lowercase, without a trailing dot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Zone(String);

impl Zone {
    /// Validates a zone: LDH labels separated by dots, an optional trailing dot, at most
    /// [`MAX_ZONE_LEN`] characters.
    pub fn new(text: &str) -> Result<Zone, NameError> {
        let zone = text.strip_suffix('.').unwrap_or(text);
        if zone.is_empty() {
            return Err(NameError::Empty);
        }
        let len = zone.chars().count();
        if len > MAX_ZONE_LEN {
            return Err(NameError::ZoneTooLong { len });
        }
        for label in zone.split('.') {
            validate_label(label)?;
        }
        Ok(Zone(zone.to_ascii_lowercase()))
    }

    /// The zone, lowercase, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Zone {
    fn default() -> Zone {
        Zone(DEFAULT_ZONE.to_string())
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({:?})", self.0)
    }
}

impl FromStr for Zone {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Zone, NameError> {
        Zone::new(text)
    }
}

/// The node part of a DNS name: a node name or a node id text form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeLabel {
    /// A node id, given by its 56-character text form.
    Id(NodeId),
    /// A node's human name.
    Name(NodeName),
}

impl NodeLabel {
    /// A 56-character label that parses as a node id is an id; anything else must be a node name.
    pub fn parse(text: &str) -> Result<NodeLabel, NameError> {
        if text.len() == NODE_ID_TEXT_LEN {
            if let Ok(id) = NodeId::parse_text(text) {
                return Ok(NodeLabel::Id(id));
            }
        }
        NodeName::parse(text).map(NodeLabel::Name)
    }
}

impl fmt::Display for NodeLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeLabel::Id(id) => fmt::Display::fmt(id, f),
            NodeLabel::Name(name) => fmt::Display::fmt(name, f),
        }
    }
}

impl FromStr for NodeLabel {
    type Err = NameError;

    fn from_str(text: &str) -> Result<NodeLabel, NameError> {
        NodeLabel::parse(text)
    }
}

/// A parsed svcnet DNS name (without its zone).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Name {
    /// `<node>.<zone>`.
    Node {
        /// The node.
        node: NodeLabel,
    },
    /// `<service>.<node>.<zone>`.
    Service {
        /// The service.
        service: ServiceName,
        /// The node offering it.
        node: NodeLabel,
    },
    /// `<role>.role.<zone>` or `<version>.<role>.role.<zone>`.
    Role {
        /// The role.
        role: RoleName,
        /// The version label, if any.
        version_label: Option<VersionLabel>,
    },
}

impl Name {
    /// The fully qualified name in `zone`, lowercase, without a trailing dot. [`parse_name`] with
    /// the same zone returns `self`.
    pub fn to_fqdn(&self, zone: &Zone) -> String {
        match self {
            Name::Node { node } => format!("{node}.{zone}"),
            Name::Service { service, node } => format!("{service}.{node}.{zone}"),
            Name::Role {
                role,
                version_label: None,
            } => format!("{role}.{ROLE_LABEL}.{zone}"),
            Name::Role {
                role,
                version_label: Some(version),
            } => format!("{version}.{role}.{ROLE_LABEL}.{zone}"),
        }
    }
}

/// Parses a DNS name inside `zone`. Case-insensitive; one trailing dot is accepted.
///
/// Errors: [`NameError::NotInZone`] if the name is outside the zone (REFUSED), anything else for a
/// name inside the zone that is not a svcnet name (NXDOMAIN).
pub fn parse_name(zone: &Zone, fqdn: &str) -> Result<Name, NameError> {
    let name = fqdn.strip_suffix('.').unwrap_or(fqdn);
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let lower = name.to_ascii_lowercase();
    if lower == zone.0 {
        return Err(NameError::ZoneApex { zone: zone.clone() });
    }
    // The suffix is ASCII, so the cut falls on a character boundary of `name` as well.
    let Some(rest_len) = lower
        .strip_suffix(zone.0.as_str())
        .and_then(|rest| rest.strip_suffix('.'))
        .map(str::len)
    else {
        return Err(NameError::NotInZone {
            name: fqdn.to_string(),
            zone: zone.clone(),
        });
    };
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::NameTooLong { len });
    }
    // Labels are taken from the original text so that errors quote them as given.
    let rest = name.get(..rest_len).unwrap_or_default();
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        [node] => Ok(Name::Node {
            node: NodeLabel::parse(node)?,
        }),
        [role, namespace] if namespace.eq_ignore_ascii_case(ROLE_LABEL) => Ok(Name::Role {
            role: RoleName::parse(role)?,
            version_label: None,
        }),
        [service, node] => Ok(Name::Service {
            service: ServiceName::parse(service)?,
            node: NodeLabel::parse(node)?,
        }),
        [version, role, namespace] if namespace.eq_ignore_ascii_case(ROLE_LABEL) => {
            Ok(Name::Role {
                role: RoleName::parse(role)?,
                version_label: Some(VersionLabel::parse(version)?),
            })
        }
        _ => Err(NameError::TooManyLabels {
            name: fqdn.to_string(),
            count: labels.len(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Directory
// ---------------------------------------------------------------------------------------------

/// What an address in the [`Directory`] belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressOwner {
    /// A node's own address.
    Node {
        /// The node.
        node: NodeId,
    },
    /// A service's address.
    Service {
        /// The node offering the service.
        node: NodeId,
        /// The service.
        service: ServiceName,
    },
}

impl fmt::Display for AddressOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressOwner::Node { node } => write!(f, "node {node}"),
            AddressOwner::Service { node, service } => {
                write!(f, "service {service:?} of node {node}")
            }
        }
    }
}

/// Why the [`Directory`] refused a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectoryError {
    /// Another node already has this name (names are unique per network).
    DuplicateName {
        /// The contested name.
        name: NodeName,
        /// The node that has it.
        existing: NodeId,
        /// The node that asked for it.
        new: NodeId,
    },
    /// The node is not in the directory.
    UnknownNode {
        /// The node.
        node: NodeId,
    },
    /// Two owners hash to the same address (with 64 hash bits this should never happen).
    AddressCollision {
        /// The address.
        address: Ipv6Addr,
        /// Its current owner.
        existing: AddressOwner,
        /// The owner that was refused.
        new: AddressOwner,
    },
}

impl fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectoryError::DuplicateName {
                name,
                existing,
                new,
            } => write!(
                f,
                "node name {name:?} is already taken by node {existing}; refused for node {new}"
            ),
            DirectoryError::UnknownNode { node } => {
                write!(f, "node {node} is not in the directory")
            }
            DirectoryError::AddressCollision {
                address,
                existing,
                new,
            } => write!(
                f,
                "address collision on {address}: it belongs to {existing}; refused for {new}"
            ),
        }
    }
}

impl std::error::Error for DirectoryError {}

#[derive(Clone, Debug)]
struct NodeEntry {
    name: NodeName,
    address: Ipv6Addr,
    services: BTreeMap<ServiceName, Ipv6Addr>,
}

/// A deterministic table of the known nodes of one network, their names and services, mapping
/// names to addresses and addresses back to their owners. Iteration is in node id order.
#[derive(Clone, Debug)]
pub struct Directory {
    prefix: NetworkPrefix,
    nodes: BTreeMap<NodeId, NodeEntry>,
    names: BTreeMap<NodeName, NodeId>,
    owners: BTreeMap<Ipv6Addr, AddressOwner>,
}

// Directory errors carry both owners so the message can name them; they arise only when the
// configuration changes, so their size costs nothing that matters.
#[allow(clippy::result_large_err)]
impl Directory {
    /// An empty directory for the network with this prefix.
    pub fn new(prefix: NetworkPrefix) -> Directory {
        Directory {
            prefix,
            nodes: BTreeMap::new(),
            names: BTreeMap::new(),
            owners: BTreeMap::new(),
        }
    }

    /// The network prefix all addresses are derived in.
    pub fn prefix(&self) -> NetworkPrefix {
        self.prefix
    }

    /// Adds node `id` called `name`, or renames it if it is already known (its addresses do not
    /// depend on its name). Refuses a name another node has, naming both nodes.
    pub fn insert_node(&mut self, id: NodeId, name: NodeName) -> Result<(), DirectoryError> {
        if let Some(&holder) = self.names.get(&name) {
            if holder == id {
                return Ok(());
            }
            return Err(DirectoryError::DuplicateName {
                name,
                existing: holder,
                new: id,
            });
        }
        if let Some(entry) = self.nodes.get_mut(&id) {
            self.names.remove(&entry.name);
            entry.name = name.clone();
            self.names.insert(name, id);
            return Ok(());
        }
        let address = self.prefix.node_address(&id);
        self.insert_node_at(id, name, address)
    }

    fn insert_node_at(
        &mut self,
        id: NodeId,
        name: NodeName,
        address: Ipv6Addr,
    ) -> Result<(), DirectoryError> {
        let owner = AddressOwner::Node { node: id };
        if let Some(existing) = self.owners.get(&address) {
            return Err(DirectoryError::AddressCollision {
                address,
                existing: existing.clone(),
                new: owner,
            });
        }
        self.owners.insert(address, owner);
        self.names.insert(name.clone(), id);
        self.nodes.insert(
            id,
            NodeEntry {
                name,
                address,
                services: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Adds `service` to node `node` and returns its address (idempotent).
    pub fn insert_service(
        &mut self,
        node: NodeId,
        service: ServiceName,
    ) -> Result<Ipv6Addr, DirectoryError> {
        let entry = self
            .nodes
            .get(&node)
            .ok_or(DirectoryError::UnknownNode { node })?;
        if let Some(&address) = entry.services.get(&service) {
            return Ok(address);
        }
        let address = self.prefix.service_address(&node, &service);
        self.insert_service_at(node, service, address)
    }

    fn insert_service_at(
        &mut self,
        node: NodeId,
        service: ServiceName,
        address: Ipv6Addr,
    ) -> Result<Ipv6Addr, DirectoryError> {
        let owner = AddressOwner::Service {
            node,
            service: service.clone(),
        };
        if let Some(existing) = self.owners.get(&address) {
            return Err(DirectoryError::AddressCollision {
                address,
                existing: existing.clone(),
                new: owner,
            });
        }
        let entry = self
            .nodes
            .get_mut(&node)
            .ok_or(DirectoryError::UnknownNode { node })?;
        entry.services.insert(service, address);
        self.owners.insert(address, owner);
        Ok(address)
    }

    /// Removes node `id` and all its services. Returns whether it was known.
    pub fn remove_node(&mut self, id: &NodeId) -> bool {
        let Some(entry) = self.nodes.remove(id) else {
            return false;
        };
        self.names.remove(&entry.name);
        self.owners.remove(&entry.address);
        for address in entry.services.values() {
            self.owners.remove(address);
        }
        true
    }

    /// Removes `service` of node `node`. Returns whether it was known.
    pub fn remove_service(&mut self, node: &NodeId, service: &ServiceName) -> bool {
        let Some(address) = self
            .nodes
            .get_mut(node)
            .and_then(|entry| entry.services.remove(service))
        else {
            return false;
        };
        self.owners.remove(&address);
        true
    }

    /// The address a name resolves to, if its node (and service) are known. Role names resolve to
    /// `None` until the registry provides them.
    pub fn resolve(&self, name: &Name) -> Option<Ipv6Addr> {
        match name {
            Name::Node { node } => self.entry(node).map(|entry| entry.address),
            Name::Service { service, node } => self.entry(node)?.services.get(service).copied(),
            Name::Role { .. } => None,
        }
    }

    /// The owner of an address, if it is in the directory.
    pub fn lookup_address(&self, address: Ipv6Addr) -> Option<AddressOwner> {
        self.owners.get(&address).cloned()
    }

    /// The name (by node name) an address answers to, for reverse lookups.
    pub fn reverse(&self, address: Ipv6Addr) -> Option<Name> {
        match self.owners.get(&address)? {
            AddressOwner::Node { node } => Some(Name::Node {
                node: NodeLabel::Name(self.nodes.get(node)?.name.clone()),
            }),
            AddressOwner::Service { node, service } => Some(Name::Service {
                service: service.clone(),
                node: NodeLabel::Name(self.nodes.get(node)?.name.clone()),
            }),
        }
    }

    /// The name of node `id`.
    pub fn node_name(&self, id: &NodeId) -> Option<&NodeName> {
        self.nodes.get(id).map(|entry| &entry.name)
    }

    /// The node called `name`.
    pub fn node_by_name(&self, name: &NodeName) -> Option<NodeId> {
        self.names.get(name).copied()
    }

    /// All nodes with their names and addresses, in node id order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &NodeName, Ipv6Addr)> + '_ {
        self.nodes
            .iter()
            .map(|(id, entry)| (*id, &entry.name, entry.address))
    }

    /// The services of node `id` with their addresses, in name order (empty for unknown nodes).
    pub fn services(&self, id: &NodeId) -> impl Iterator<Item = (&ServiceName, Ipv6Addr)> + '_ {
        self.nodes.get(id).into_iter().flat_map(|entry| {
            entry
                .services
                .iter()
                .map(|(name, address)| (name, *address))
        })
    }

    fn entry(&self, node: &NodeLabel) -> Option<&NodeEntry> {
        match node {
            NodeLabel::Id(id) => self.nodes.get(id),
            NodeLabel::Name(name) => self.nodes.get(self.names.get(name)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;
    use proptest::prelude::*;

    // Test vectors 2-5 of `docs/protocol.md` (network "svcnet-test", node key seed [7u8; 32]).
    const PREFIX: &str = "fdc9:2ee:e3d6::/48";
    const NODE_ADDRESS: &str = "fdc9:2ee:e3d6:0:7957:f1c0:be9:1777";
    const WEB_ADDRESS: &str = "fdc9:2ee:e3d6:1:1da:8480:cefb:e748";
    const ROLE_DB_V3_ADDRESS: &str = "fdc9:2ee:e3d6:2:b424:fe0d:1137:9f50";
    const SEED7_ID_TEXT: &str = "5jfgyy7ctrjavpxvkb5rglwf7gkuo5vox27hxescd3vgsfcg2iwd67q2";

    fn id(seed: u8) -> NodeId {
        NodeKey::from_seed([seed; 32]).node_id()
    }

    fn svc(name: &str) -> ServiceName {
        ServiceName::parse(name).unwrap()
    }

    fn node_name(name: &str) -> NodeName {
        NodeName::parse(name).unwrap()
    }

    fn zone() -> Zone {
        Zone::default()
    }

    fn label_error(label: &str, problem: LabelProblem) -> NameError {
        NameError::InvalidLabel {
            label: label.to_string(),
            problem,
        }
    }

    #[test]
    fn vectors() {
        let prefix = NetworkPrefix::derive("svcnet-test");
        assert_eq!(prefix.to_string(), PREFIX);
        let node = id(7);
        assert_eq!(node.to_string(), SEED7_ID_TEXT);
        assert_eq!(prefix.node_address(&node).to_string(), NODE_ADDRESS);
        assert_eq!(
            prefix.service_address(&node, &svc("web")).to_string(),
            WEB_ADDRESS
        );
        let role = RoleName::parse("db").unwrap();
        let v3 = VersionLabel {
            major: 3,
            minor: None,
        };
        assert_eq!(
            prefix.role_address(&role, Some(v3)).to_string(),
            ROLE_DB_V3_ADDRESS
        );
    }

    #[test]
    fn address_layout() {
        let prefix = NetworkPrefix::derive("svcnet-test");
        let node = id(7);
        let node_address = prefix.node_address(&node);
        let web = prefix.service_address(&node, &svc("web"));
        let role = prefix.role_address(&RoleName::parse("db").unwrap(), None);
        for (address, kind) in [
            (node_address, AddressKind::Node),
            (web, AddressKind::Service),
            (role, AddressKind::Role),
        ] {
            let octets = address.octets();
            assert_eq!(octets[0], 0xfd);
            assert_eq!(octets[..6], prefix.to_bytes());
            assert_eq!(u16::from_be_bytes([octets[6], octets[7]]), kind.subnet());
            assert!(prefix.contains(&address));
            assert_eq!(prefix.kind_of(&address), Some(kind));
        }
        // The 64 hash bits are exactly the derive_key output.
        let hash = blake3::derive_key(NODE_ADDRESS_CONTEXT, node.as_bytes());
        assert_eq!(node_address.octets()[8..], hash[..8]);
        let mut material = node.as_bytes().to_vec();
        material.extend_from_slice(b"web");
        let hash = blake3::derive_key(SERVICE_ADDRESS_CONTEXT, &material);
        assert_eq!(web.octets()[8..], hash[..8]);
        let hash = blake3::derive_key(ROLE_ADDRESS_CONTEXT, b"db\0");
        assert_eq!(role.octets()[8..], hash[..8]);
        let hash = blake3::derive_key(PREFIX_CONTEXT, b"svcnet-test");
        assert_eq!(prefix.to_bytes()[1..], hash[..5]);

        // Other networks, other prefixes; the prefix never contains foreign addresses.
        let other = NetworkPrefix::derive("svcnet-test2");
        assert_ne!(other, prefix);
        assert!(!other.contains(&node_address));
        assert_eq!(other.kind_of(&node_address), None);
        // An unknown kind inside the prefix.
        let mut octets = node_address.octets();
        octets[7] = 0x09;
        assert_eq!(prefix.kind_of(&Ipv6Addr::from(octets)), None);
        assert_eq!(AddressKind::from_subnet(0x0009), None);
        // Role addresses depend on the version label.
        let db = RoleName::parse("db").unwrap();
        let v3 = VersionLabel {
            major: 3,
            minor: None,
        };
        let v3_2 = VersionLabel {
            major: 3,
            minor: Some(2),
        };
        assert_ne!(
            prefix.role_address(&db, None),
            prefix.role_address(&db, Some(v3))
        );
        assert_ne!(
            prefix.role_address(&db, Some(v3)),
            prefix.role_address(&db, Some(v3_2))
        );
    }

    #[test]
    fn service_address_depends_on_node_and_name() {
        let prefix = NetworkPrefix::derive("svcnet-test");
        let a = prefix.service_address(&id(7), &svc("web"));
        assert_ne!(a, prefix.service_address(&id(8), &svc("web")));
        assert_ne!(a, prefix.service_address(&id(7), &svc("web2")));
        // Case is normalised before hashing.
        assert_eq!(a, prefix.service_address(&id(7), &svc("WEB")));
    }

    #[test]
    fn prefix_display() {
        let text = NetworkPrefix::derive("svcnet-test").to_string();
        assert!(text.starts_with("fd"), "{text}");
        assert!(text.ends_with("::/48"), "{text}");
    }

    #[test]
    fn label_rules() {
        assert_eq!(svc("Web-01").as_str(), "web-01");
        assert_eq!(svc("0day").as_str(), "0day");
        assert_eq!(svc(&"a".repeat(63)).as_str().len(), 63);
        assert_eq!(
            ServiceName::parse(&"a".repeat(64)),
            Err(label_error(
                &"a".repeat(64),
                LabelProblem::TooLong { len: 64 }
            ))
        );
        assert_eq!(
            ServiceName::parse(""),
            Err(label_error("", LabelProblem::Empty))
        );
        assert_eq!(
            ServiceName::parse("-web"),
            Err(label_error("-web", LabelProblem::LeadingHyphen))
        );
        assert_eq!(
            ServiceName::parse("web-"),
            Err(label_error("web-", LabelProblem::TrailingHyphen))
        );
        assert_eq!(
            ServiceName::parse("we_b"),
            Err(label_error(
                "we_b",
                LabelProblem::InvalidCharacter {
                    character: '_',
                    position: 3
                }
            ))
        );
        assert_eq!(
            ServiceName::parse("wéb"),
            Err(label_error(
                "wéb",
                LabelProblem::InvalidCharacter {
                    character: 'é',
                    position: 2
                }
            ))
        );
        assert!(ServiceName::parse("a.b").is_err());
        // Messages name the label and the reason.
        let message = ServiceName::parse("-web").unwrap_err().to_string();
        assert!(message.contains("\"-web\""), "{message}");
        assert!(message.contains("starts with '-'"), "{message}");
        let message = ServiceName::parse(&"a".repeat(64)).unwrap_err().to_string();
        assert!(message.contains("64 characters"), "{message}");
    }

    #[test]
    fn node_name_rules() {
        assert_eq!(node_name("Alice").as_str(), "alice");
        assert_eq!(
            NodeName::parse("ROLE"),
            Err(NameError::ReservedNodeName {
                label: "role".to_string()
            })
        );
        let id_text = id(7).to_string();
        assert_eq!(
            NodeName::parse(&id_text),
            Err(NameError::NodeIdAsNodeName { label: id_text })
        );
        // A 56-character label that is not a node id is a fine name.
        assert!(NodeName::parse(&"a".repeat(56)).is_ok());
    }

    #[test]
    fn zones() {
        assert_eq!(Zone::default().as_str(), "svcnet");
        assert_eq!(Zone::new("Corp.SVCNET.").unwrap().as_str(), "corp.svcnet");
        assert_eq!(Zone::new(""), Err(NameError::Empty));
        assert_eq!(Zone::new("."), Err(NameError::Empty));
        assert_eq!(
            Zone::new("corp..svcnet"),
            Err(label_error("", LabelProblem::Empty))
        );
        assert_eq!(
            Zone::new("-corp.svcnet"),
            Err(label_error("-corp", LabelProblem::LeadingHyphen))
        );
        let long = format!("{}.{}", "a".repeat(63), "b".repeat(63));
        assert_eq!(Zone::new(&long), Err(NameError::ZoneTooLong { len: 127 }));
        assert!(Zone::new(&"a.".repeat(62)).is_ok());
    }

    #[test]
    fn version_labels() {
        let parse = VersionLabel::parse;
        assert_eq!(
            parse("v3"),
            Ok(VersionLabel {
                major: 3,
                minor: None
            })
        );
        assert_eq!(
            parse("V3-2"),
            Ok(VersionLabel {
                major: 3,
                minor: Some(2)
            })
        );
        assert_eq!(
            parse("v0-0"),
            Ok(VersionLabel {
                major: 0,
                minor: Some(0)
            })
        );
        assert_eq!(
            parse("v18446744073709551615").map(|v| v.major),
            Ok(u64::MAX)
        );
        for (label, reason) in [
            ("3", "it must start with 'v'"),
            ("x3", "it must start with 'v'"),
            ("v", "the major version number is missing"),
            ("v-2", "the major version number is missing"),
            ("v3-", "the minor version number after '-' is missing"),
            ("v3-2-1", "only one '-' is allowed"),
            ("v3a", "version numbers are decimal digits only"),
            ("v3-b", "version numbers are decimal digits only"),
            ("v03", "version numbers have no leading zeros"),
            ("v3-02", "version numbers have no leading zeros"),
            (
                "v18446744073709551616",
                "the version number does not fit in 64 bits",
            ),
        ] {
            // "v3-" is not even an LDH label.
            let err = parse(label).unwrap_err();
            if label == "v3-" {
                assert_eq!(err, label_error(label, LabelProblem::TrailingHyphen));
                continue;
            }
            assert_eq!(
                err,
                NameError::BadVersionLabel {
                    label: label.to_string(),
                    reason
                },
                "{label}"
            );
            assert!(err.to_string().contains(reason));
        }
        assert_eq!(
            VersionLabel {
                major: 3,
                minor: Some(2)
            }
            .to_string(),
            "v3-2"
        );
    }

    #[test]
    fn parse_names() {
        let zone = zone();
        let alice = NodeLabel::Name(node_name("alice"));
        assert_eq!(
            parse_name(&zone, "alice.svcnet"),
            Ok(Name::Node {
                node: alice.clone()
            })
        );
        assert_eq!(
            parse_name(&zone, "Web.ALICE.svcnet."),
            Ok(Name::Service {
                service: svc("web"),
                node: alice.clone()
            })
        );
        let by_id = format!("web.{}.svcnet", id(7).to_string().to_uppercase());
        assert_eq!(
            parse_name(&zone, &by_id),
            Ok(Name::Service {
                service: svc("web"),
                node: NodeLabel::Id(id(7))
            })
        );
        let db = RoleName::parse("db").unwrap();
        assert_eq!(
            parse_name(&zone, "db.role.svcnet"),
            Ok(Name::Role {
                role: db.clone(),
                version_label: None
            })
        );
        assert_eq!(
            parse_name(&zone, "v3.db.Role.svcnet"),
            Ok(Name::Role {
                role: db.clone(),
                version_label: Some(VersionLabel {
                    major: 3,
                    minor: None
                })
            })
        );
        assert_eq!(
            parse_name(&zone, "v3-2.db.role.svcnet"),
            Ok(Name::Role {
                role: db,
                version_label: Some(VersionLabel {
                    major: 3,
                    minor: Some(2)
                })
            })
        );
        // A service called "role" on a node is fine; a node called "role" is not.
        assert_eq!(
            parse_name(&zone, "role.alice.svcnet"),
            Ok(Name::Service {
                service: svc("role"),
                node: alice
            })
        );
        assert_eq!(
            parse_name(&zone, "role.svcnet"),
            Err(NameError::ReservedNodeName {
                label: "role".to_string()
            })
        );
        // Multi-label zones.
        let corp = Zone::new("corp.svcnet").unwrap();
        assert_eq!(
            parse_name(&corp, "web.alice.corp.svcnet"),
            Ok(Name::Service {
                service: svc("web"),
                node: NodeLabel::Name(node_name("alice"))
            })
        );
        assert!(matches!(
            parse_name(&corp, "web.alice.svcnet"),
            Err(NameError::NotInZone { .. })
        ));
    }

    #[test]
    fn name_rejections() {
        let zone = zone();
        let long = "a".repeat(64);
        assert_eq!(
            parse_name(&zone, &format!("{long}.svcnet")),
            Err(label_error(&long, LabelProblem::TooLong { len: 64 }))
        );
        assert_eq!(
            parse_name(&zone, "web.-alice.svcnet"),
            Err(label_error("-alice", LabelProblem::LeadingHyphen))
        );
        assert_eq!(
            parse_name(&zone, "web..svcnet"),
            Err(label_error("", LabelProblem::Empty))
        );
        assert_eq!(
            parse_name(&zone, ".svcnet"),
            Err(label_error("", LabelProblem::Empty))
        );
        assert_eq!(parse_name(&zone, ""), Err(NameError::Empty));
        assert_eq!(parse_name(&zone, "."), Err(NameError::Empty));
        assert_eq!(
            parse_name(&zone, "SVCNET."),
            Err(NameError::ZoneApex { zone: zone.clone() })
        );
        for outside in [
            "alice.example.com",
            "alice.xsvcnet",
            "svcnet.com",
            "alicesvcnet",
        ] {
            assert_eq!(
                parse_name(&zone, outside),
                Err(NameError::NotInZone {
                    name: outside.to_string(),
                    zone: zone.clone()
                }),
                "{outside}"
            );
        }
        let message = parse_name(&zone, "a.example.com").unwrap_err().to_string();
        assert!(message.contains("not inside the zone"), "{message}");
        assert_eq!(
            parse_name(&zone, "x3.db.role.svcnet"),
            Err(NameError::BadVersionLabel {
                label: "x3".to_string(),
                reason: "it must start with 'v'"
            })
        );
        assert_eq!(
            parse_name(&zone, "v03.db.role.svcnet"),
            Err(NameError::BadVersionLabel {
                label: "v03".to_string(),
                reason: "version numbers have no leading zeros"
            })
        );
        assert_eq!(
            parse_name(&zone, "a.b.c.svcnet"),
            Err(NameError::TooManyLabels {
                name: "a.b.c.svcnet".to_string(),
                count: 3
            })
        );
        assert_eq!(
            parse_name(&zone, "v1.a.b.role.svcnet"),
            Err(NameError::TooManyLabels {
                name: "v1.a.b.role.svcnet".to_string(),
                count: 4
            })
        );
        let too_long = format!("{}.svcnet", ["a"; 124].join("."));
        assert_eq!(
            parse_name(&zone, &too_long),
            Err(NameError::NameTooLong { len: 254 })
        );
        // A typo in a node id label makes it an (unknown) node name, not an id.
        let mut typo: Vec<char> = id(7).to_string().chars().collect();
        typo[3] = if typo[3] == 'a' { 'b' } else { 'a' };
        let typo: String = typo.into_iter().collect();
        assert_eq!(
            parse_name(&zone, &format!("{typo}.svcnet")),
            Ok(Name::Node {
                node: NodeLabel::Name(node_name(&typo))
            })
        );
    }

    #[test]
    fn longest_names_round_trip() {
        let zone = Zone::new(&format!("{}.{}", "z".repeat(63), "y".repeat(61))).unwrap();
        assert_eq!(zone.as_str().len(), MAX_ZONE_LEN);
        let name = Name::Service {
            service: svc(&"s".repeat(63)),
            node: NodeLabel::Name(node_name(&"n".repeat(63))),
        };
        let fqdn = name.to_fqdn(&zone);
        assert_eq!(fqdn.len(), MAX_NAME_LEN);
        assert_eq!(parse_name(&zone, &fqdn), Ok(name));
        let role = Name::Role {
            role: RoleName::parse(&"r".repeat(63)).unwrap(),
            version_label: Some(VersionLabel {
                major: u64::MAX,
                minor: Some(u64::MAX),
            }),
        };
        let fqdn = role.to_fqdn(&zone);
        assert!(fqdn.len() <= MAX_NAME_LEN);
        assert_eq!(parse_name(&zone, &fqdn), Ok(role));
    }

    #[test]
    fn directory_resolve_and_lookup() {
        let prefix = NetworkPrefix::derive("svcnet-test");
        let mut dir = Directory::new(prefix);
        let zone = zone();
        let (a, b) = (id(7), id(8));
        dir.insert_node(a, node_name("alice")).unwrap();
        dir.insert_node(b, node_name("bob")).unwrap();
        let web = dir.insert_service(a, svc("web")).unwrap();
        assert_eq!(web.to_string(), WEB_ADDRESS);
        assert_eq!(dir.insert_service(a, svc("web")), Ok(web), "idempotent");
        let bob_web = dir.insert_service(b, svc("web")).unwrap();
        assert_ne!(web, bob_web);

        let resolve = |fqdn: &str| dir.resolve(&parse_name(&zone, fqdn).unwrap());
        assert_eq!(
            resolve("alice.svcnet").map(|a| a.to_string()),
            Some(NODE_ADDRESS.to_string())
        );
        assert_eq!(resolve("web.alice.svcnet"), Some(web));
        assert_eq!(resolve(&format!("web.{a}.svcnet")), Some(web));
        assert_eq!(
            resolve(&format!("{a}.svcnet")),
            Some(prefix.node_address(&a))
        );
        assert_eq!(resolve("web.bob.svcnet"), Some(bob_web));
        assert_eq!(resolve("db.alice.svcnet"), None);
        assert_eq!(resolve("carol.svcnet"), None);
        assert_eq!(resolve(&format!("{}.svcnet", id(9))), None);
        assert_eq!(resolve("db.role.svcnet"), None);

        assert_eq!(
            dir.lookup_address(web),
            Some(AddressOwner::Service {
                node: a,
                service: svc("web")
            })
        );
        assert_eq!(
            dir.lookup_address(prefix.node_address(&b)),
            Some(AddressOwner::Node { node: b })
        );
        assert_eq!(dir.lookup_address(prefix.node_address(&id(9))), None);
        assert_eq!(
            dir.reverse(web).map(|n| n.to_fqdn(&zone)),
            Some("web.alice.svcnet".to_string())
        );
        assert_eq!(
            dir.reverse(prefix.node_address(&b))
                .map(|n| n.to_fqdn(&zone)),
            Some("bob.svcnet".to_string())
        );

        // Deterministic iteration, in node id order.
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(
            dir.nodes().map(|(id, _, _)| id).collect::<Vec<_>>(),
            expected
        );
        assert_eq!(
            dir.services(&a).map(|(s, _)| s.clone()).collect::<Vec<_>>(),
            vec![svc("web")]
        );
        assert_eq!(dir.node_name(&a), Some(&node_name("alice")));
        assert_eq!(dir.node_by_name(&node_name("bob")), Some(b));
    }

    #[test]
    fn directory_duplicate_name_rejected() {
        let mut dir = Directory::new(NetworkPrefix::derive("svcnet-test"));
        let (a, b) = (id(7), id(8));
        dir.insert_node(a, node_name("alice")).unwrap();
        assert_eq!(dir.insert_node(a, node_name("alice")), Ok(()), "idempotent");
        let err = dir.insert_node(b, node_name("Alice")).unwrap_err();
        assert_eq!(
            err,
            DirectoryError::DuplicateName {
                name: node_name("alice"),
                existing: a,
                new: b
            }
        );
        let message = err.to_string();
        assert!(message.contains(&a.to_string()), "{message}");
        assert!(message.contains(&b.to_string()), "{message}");
        assert!(message.contains("alice"), "{message}");
        assert_eq!(dir.node_by_name(&node_name("alice")), Some(a));
        assert_eq!(dir.node_name(&b), None);

        // Renaming frees the old name.
        dir.insert_node(a, node_name("alice2")).unwrap();
        assert_eq!(dir.node_by_name(&node_name("alice")), None);
        dir.insert_node(b, node_name("alice")).unwrap();
        assert_eq!(dir.node_by_name(&node_name("alice")), Some(b));
        assert_eq!(dir.node_name(&a), Some(&node_name("alice2")));
    }

    #[test]
    fn directory_unknown_node_and_collisions() {
        let prefix = NetworkPrefix::derive("svcnet-test");
        let mut dir = Directory::new(prefix);
        let (a, b) = (id(7), id(8));
        assert_eq!(
            dir.insert_service(a, svc("web")),
            Err(DirectoryError::UnknownNode { node: a })
        );
        dir.insert_node(a, node_name("alice")).unwrap();
        let web = dir.insert_service(a, svc("web")).unwrap();

        // Collisions cannot be found with 64 hash bits, so force the address.
        let err = dir.insert_service_at(a, svc("api"), web).unwrap_err();
        assert_eq!(
            err,
            DirectoryError::AddressCollision {
                address: web,
                existing: AddressOwner::Service {
                    node: a,
                    service: svc("web")
                },
                new: AddressOwner::Service {
                    node: a,
                    service: svc("api")
                },
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("\"web\"") && message.contains("\"api\""),
            "{message}"
        );
        assert_eq!(dir.services(&a).count(), 1);

        let alice_address = prefix.node_address(&a);
        let err = dir
            .insert_node_at(b, node_name("bob"), alice_address)
            .unwrap_err();
        assert_eq!(
            err,
            DirectoryError::AddressCollision {
                address: alice_address,
                existing: AddressOwner::Node { node: a },
                new: AddressOwner::Node { node: b },
            }
        );
        assert!(err.to_string().contains(&a.to_string()));
        assert!(err.to_string().contains(&b.to_string()));
        assert_eq!(
            dir.node_by_name(&node_name("bob")),
            None,
            "nothing inserted"
        );
        assert_eq!(
            dir.lookup_address(alice_address),
            Some(AddressOwner::Node { node: a })
        );
    }

    #[test]
    fn directory_remove() {
        let prefix = NetworkPrefix::derive("svcnet-test");
        let mut dir = Directory::new(prefix);
        let zone = zone();
        let a = id(7);
        dir.insert_node(a, node_name("alice")).unwrap();
        let web = dir.insert_service(a, svc("web")).unwrap();
        let api = dir.insert_service(a, svc("api")).unwrap();

        assert!(dir.remove_service(&a, &svc("web")));
        assert!(!dir.remove_service(&a, &svc("web")));
        assert_eq!(dir.lookup_address(web), None);
        assert_eq!(
            dir.resolve(&parse_name(&zone, "web.alice.svcnet").unwrap()),
            None
        );
        assert_eq!(
            dir.resolve(&parse_name(&zone, "api.alice.svcnet").unwrap()),
            Some(api)
        );

        assert!(dir.remove_node(&a));
        assert!(!dir.remove_node(&a));
        assert_eq!(dir.lookup_address(api), None);
        assert_eq!(dir.lookup_address(prefix.node_address(&a)), None);
        assert_eq!(dir.node_by_name(&node_name("alice")), None);
        assert_eq!(
            dir.resolve(&parse_name(&zone, "alice.svcnet").unwrap()),
            None
        );
        assert_eq!(dir.nodes().count(), 0);
        // The name is free again.
        dir.insert_node(id(8), node_name("alice")).unwrap();
    }

    fn label_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    }

    fn node_label_strategy() -> impl Strategy<Value = NodeLabel> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(|seed| NodeLabel::Id(NodeKey::from_seed(seed).node_id())),
            label_strategy().prop_filter_map("reserved", |l| NodeName::parse(&l)
                .ok()
                .map(NodeLabel::Name)),
        ]
    }

    fn name_strategy() -> impl Strategy<Value = Name> {
        let version = (any::<u64>(), proptest::option::of(any::<u64>()))
            .prop_map(|(major, minor)| VersionLabel { major, minor });
        prop_oneof![
            node_label_strategy().prop_map(|node| Name::Node { node }),
            (label_strategy(), node_label_strategy()).prop_map(|(s, node)| Name::Service {
                service: ServiceName::parse(&s).unwrap(),
                node
            }),
            (label_strategy(), proptest::option::of(version)).prop_map(|(r, version_label)| {
                Name::Role {
                    role: RoleName::parse(&r).unwrap(),
                    version_label,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn name_round_trip(name in name_strategy(), zone in "[a-z][a-z0-9]{0,9}(\\.[a-z][a-z0-9]{0,9}){0,2}", upper in any::<bool>(), dot in any::<bool>()) {
            let zone = Zone::new(&zone).unwrap();
            let mut fqdn = name.to_fqdn(&zone);
            prop_assert_eq!(parse_name(&zone, &fqdn), Ok(name.clone()));
            if upper {
                fqdn = fqdn.to_uppercase();
            }
            if dot {
                fqdn.push('.');
            }
            prop_assert_eq!(parse_name(&zone, &fqdn), Ok(name));
        }

        #[test]
        fn label_round_trip(label in label_strategy()) {
            let service = ServiceName::parse(&label).unwrap();
            prop_assert_eq!(service.as_str(), label.to_ascii_lowercase());
            prop_assert_eq!(ServiceName::parse(service.as_str()), Ok(service.clone()));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,300}") {
            let _ = parse_name(&Zone::default(), &text);
            let _ = Zone::new(&text);
            let _ = VersionLabel::parse(&text);
            let _ = NodeName::parse(&text);
        }

        #[test]
        fn parse_never_panics_near_zone(text in "[a-zA-Z0-9._\\-éΩ ]{0,80}", dot in any::<bool>()) {
            let mut fqdn = format!("{text}.svcnet");
            if dot {
                fqdn.push('.');
            }
            match parse_name(&Zone::default(), &fqdn) {
                // Whatever parses formats back to the same name.
                Ok(name) => prop_assert_eq!(parse_name(&Zone::default(), &name.to_fqdn(&Zone::default())), Ok(name)),
                Err(err) => prop_assert!(!err.to_string().is_empty()),
            }
        }

        #[test]
        fn addresses_stay_in_prefix(network in ".{0,40}", seed in any::<[u8; 32]>(), service in label_strategy()) {
            let prefix = NetworkPrefix::derive(&network);
            let node = NodeKey::from_seed(seed).node_id();
            let service = ServiceName::parse(&service).unwrap();
            prop_assert_eq!(prefix.kind_of(&prefix.node_address(&node)), Some(AddressKind::Node));
            prop_assert_eq!(prefix.kind_of(&prefix.service_address(&node, &service)), Some(AddressKind::Service));
        }
    }
}
