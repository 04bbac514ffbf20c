//! Service targets: where a node forwards the connections that reach one of its services.
//!
//! A service is configured with a *target* in the Hyprspace seed's multiaddr format (see
//! `docs/config.md`):
//!
//! | target                    | dials                                                       |
//! |---------------------------|-------------------------------------------------------------|
//! | `/tcp/8080`               | `127.0.0.1:8080`, whatever port the client dialed           |
//! | `/ip4/10.0.0.4/tcp/9092`  | `10.0.0.4:9092`                                             |
//! | `/ip6/::1/tcp/80`         | `[::1]:80`                                                  |
//! | `/dns/db.lan/tcp/5432`    | `db.lan:5432` (also `/dns4`, `/dns6`; resolved by the frontend) |
//! | `/ip4/10.0.0.4`           | `10.0.0.4:<the port the client dialed>` (port pass-through)  |
//!
//! An optional [`PortAllowList`] restricts which *dialed* ports (the ports clients connect to on
//! the service address) are accepted; without one, every port reaches the service
//! ("port-on-demand", `DESIGN.md` §5).
//!
//! The core has no multiaddr dependency: the `multiaddr` crate pulls in libp2p's identity and
//! hashing crates, which a sans-IO engine that also runs in fuzzers and simulations should not
//! carry. The frontend parses the text with `multiaddr` and hands the protocol components to
//! [`ServiceTarget::from_components`], which holds every rule of the grammar, so that the rules
//! live (and are tested) here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

/// Longest DNS host name accepted in a target, without a trailing dot (RFC 1035).
pub const MAX_HOST_LEN: usize = 253;

/// The host part of a service target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetHost {
    /// An IP address, dialed as is.
    Ip(IpAddr),
    /// A DNS name, resolved by the frontend when dialing. Stored lowercase, without a trailing dot.
    Dns(String),
}

impl fmt::Display for TargetHost {
    /// The multiaddr prefix: `/ip4/…`, `/ip6/…` or `/dns/…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetHost::Ip(IpAddr::V4(ip)) => write!(f, "/ip4/{ip}"),
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "/ip6/{ip}"),
            TargetHost::Dns(name) => write!(f, "/dns/{name}"),
        }
    }
}

/// One protocol component of a multiaddr, as far as service targets care. The frontend maps the
/// components of a parsed multiaddr onto this type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetComponent {
    /// `/ip4/<address>`
    Ip4(Ipv4Addr),
    /// `/ip6/<address>`
    Ip6(Ipv6Addr),
    /// `/dns/<name>`
    Dns(String),
    /// `/dns4/<name>`
    Dns4(String),
    /// `/dns6/<name>`
    Dns6(String),
    /// `/tcp/<port>`
    Tcp(u16),
    /// Any other protocol, by its multiaddr text (e.g. `/udp/53`, `/unix/…`, `/http`).
    Other(String),
}

/// Why a service target was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// The target has no components at all.
    Empty,
    /// The text is not a multiaddr (reported by the frontend's multiaddr parser).
    Syntax {
        /// The parser's reason.
        reason: String,
    },
    /// A protocol that a service target cannot use (only TCP is forwarded).
    Unsupported {
        /// The component, in multiaddr text form.
        protocol: String,
    },
    /// Something follows the `/tcp/<port>` component.
    Trailing {
        /// The first extra component, in multiaddr text form.
        protocol: String,
    },
    /// A second host component, e.g. `/ip4/1.2.3.4/ip4/5.6.7.8`.
    TwoHosts,
    /// `/tcp/0`: port 0 cannot be dialed.
    PortZero,
    /// The DNS name is not a valid host name.
    BadDnsName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

const TARGET_EXAMPLES: &str = "e.g. /tcp/8080, /ip4/10.0.0.4/tcp/9092, /dns/db.lan/tcp/5432 or \
                               /ip4/10.0.0.4 to pass the dialed port through";

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Empty => write!(f, "the service target is empty; write one, {TARGET_EXAMPLES}"),
            TargetError::Syntax { reason } => {
                write!(f, "not a multiaddr ({reason}); write one, {TARGET_EXAMPLES}")
            }
            TargetError::Unsupported { protocol } => write!(
                f,
                "`{protocol}` cannot be used in a service target: svcnet forwards TCP only and \
                 accepts /ip4, /ip6, /dns, /dns4, /dns6 and /tcp ({TARGET_EXAMPLES})"
            ),
            TargetError::Trailing { protocol } => write!(
                f,
                "nothing may follow the /tcp/<port> component, but `{protocol}` does; remove it"
            ),
            TargetError::TwoHosts => f.write_str(
                "the target names two hosts; give one /ip4, /ip6 or /dns component, then /tcp/<port>",
            ),
            TargetError::PortZero => f.write_str(
                "port 0 cannot be dialed; give the service's port, or leave /tcp out to pass the \
                 dialed port through",
            ),
            TargetError::BadDnsName { name, reason } => {
                write!(f, "invalid DNS host name {name:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for TargetError {}

/// Where a service's connections are forwarded to: a host and an optional port (none = the port
/// the client dialed is passed through).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceTarget {
    /// The host to dial.
    pub host: TargetHost,
    /// The port to dial; `None` passes the dialed port through.
    pub port: Option<u16>,
}

impl ServiceTarget {
    /// Builds a target from the components of a parsed multiaddr, enforcing the target grammar:
    /// `[/ip4|/ip6|/dns|/dns4|/dns6/<host>][/tcp/<port>]`, at least one of the two, nothing else.
    /// A target with only `/tcp/<port>` dials 127.0.0.1 (the Hyprspace seed's rule).
    pub fn from_components(
        components: impl IntoIterator<Item = TargetComponent>,
    ) -> Result<ServiceTarget, TargetError> {
        let mut host: Option<TargetHost> = None;
        let mut port: Option<u16> = None;
        let mut any = false;
        for component in components {
            any = true;
            if port.is_some() {
                return Err(TargetError::Trailing {
                    protocol: component_text(&component),
                });
            }
            let new_host = match component {
                TargetComponent::Ip4(ip) => TargetHost::Ip(IpAddr::V4(ip)),
                TargetComponent::Ip6(ip) => TargetHost::Ip(IpAddr::V6(ip)),
                TargetComponent::Dns(name)
                | TargetComponent::Dns4(name)
                | TargetComponent::Dns6(name) => TargetHost::Dns(validate_host_name(&name)?),
                TargetComponent::Tcp(0) => return Err(TargetError::PortZero),
                TargetComponent::Tcp(p) => {
                    port = Some(p);
                    continue;
                }
                TargetComponent::Other(protocol) => {
                    return Err(TargetError::Unsupported { protocol })
                }
            };
            if host.is_some() {
                return Err(TargetError::TwoHosts);
            }
            host = Some(new_host);
        }
        if !any {
            return Err(TargetError::Empty);
        }
        Ok(ServiceTarget {
            host: host.unwrap_or(TargetHost::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))),
            port,
        })
    }

    /// The port to dial for a client that dialed `dialed`: the target's port, or `dialed` when the
    /// target has none.
    pub fn dial_port(&self, dialed: u16) -> u16 {
        self.port.unwrap_or(dialed)
    }
}

impl fmt::Display for ServiceTarget {
    /// The canonical multiaddr text, e.g. `/ip4/127.0.0.1/tcp/8080` for the input `/tcp/8080`.
    /// `/dns4` and `/dns6` are written as `/dns`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, "/tcp/{port}")?;
        }
        Ok(())
    }
}

fn component_text(component: &TargetComponent) -> String {
    match component {
        TargetComponent::Ip4(ip) => format!("/ip4/{ip}"),
        TargetComponent::Ip6(ip) => format!("/ip6/{ip}"),
        TargetComponent::Dns(n) => format!("/dns/{n}"),
        TargetComponent::Dns4(n) => format!("/dns4/{n}"),
        TargetComponent::Dns6(n) => format!("/dns6/{n}"),
        TargetComponent::Tcp(p) => format!("/tcp/{p}"),
        TargetComponent::Other(text) => text.clone(),
    }
}

/// Validates a DNS host name as targets and peer addresses use it (labels of letters, digits, `-` and `_`, 1 to 63 characters, not
/// starting or ending with `-`; at most [`MAX_HOST_LEN`] characters) and lowercases it.
/// Underscores are allowed because container runtimes hand out such host names.
pub fn validate_host_name(name: &str) -> Result<String, TargetError> {
    let bad = |reason| TargetError::BadDnsName {
        name: name.to_string(),
        reason,
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad("the name is empty"));
    }
    if trimmed.len() > MAX_HOST_LEN {
        return Err(bad("the name is longer than 253 characters"));
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(bad("the name has an empty label (two dots in a row)"));
        }
        if label.len() > 63 {
            return Err(bad("a label is longer than 63 characters"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with '-'"));
        }
    }
    Ok(trimmed.to_ascii_lowercase())
}

// ---------------------------------------------------------------------------------------------
// Port allow-lists
// ---------------------------------------------------------------------------------------------

/// Why a port allow-list or one of its entries was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortListError {
    /// The list has no entries, which would refuse every connection.
    Empty,
    /// Port 0 cannot be dialed by a client.
    PortZero,
    /// A range whose start is above its end.
    Reversed {
        /// The first port.
        start: u16,
        /// The last port.
        end: u16,
    },
    /// Text that is neither `<port>` nor `<first>-<last>`.
    BadText {
        /// The text as given.
        text: String,
    },
}

impl fmt::Display for PortListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortListError::Empty => f.write_str(
                "the port list is empty and would refuse every connection; remove it to allow \
                 every port",
            ),
            PortListError::PortZero => f.write_str("port 0 cannot be dialed; ports are 1 to 65535"),
            PortListError::Reversed { start, end } => write!(
                f,
                "the range {start}-{end} is reversed; write the lower port first ({end}-{start})"
            ),
            PortListError::BadText { text } => write!(
                f,
                "{text:?} is not a port or a port range; write e.g. 80 or \"8000-8100\""
            ),
        }
    }
}

impl std::error::Error for PortListError {}

/// A set of TCP ports as sorted, merged, inclusive ranges (adjacent and overlapping ranges are
/// joined, so the representation of a set is unique). Never empty, never contains port 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortAllowList {
    ranges: Vec<RangeInclusive<u16>>,
}

impl PortAllowList {
    /// The list of the given ranges (in any order, overlapping or not).
    pub fn new(
        ranges: impl IntoIterator<Item = RangeInclusive<u16>>,
    ) -> Result<PortAllowList, PortListError> {
        let mut sorted: Vec<RangeInclusive<u16>> = Vec::new();
        for range in ranges {
            let (start, end) = (*range.start(), *range.end());
            if start > end {
                return Err(PortListError::Reversed { start, end });
            }
            if start == 0 {
                return Err(PortListError::PortZero);
            }
            sorted.push(range);
        }
        if sorted.is_empty() {
            return Err(PortListError::Empty);
        }
        sorted.sort_by_key(|r| (*r.start(), *r.end()));
        let mut merged: Vec<RangeInclusive<u16>> = Vec::with_capacity(sorted.len());
        for range in sorted {
            match merged.last_mut() {
                // Overlapping or adjacent (u32 so that 65535 + 1 does not overflow).
                Some(last) if u32::from(*range.start()) <= u32::from(*last.end()) + 1 => {
                    if range.end() > last.end() {
                        *last = *last.start()..=*range.end();
                    }
                }
                _ => merged.push(range),
            }
        }
        Ok(PortAllowList { ranges: merged })
    }

    /// Parses one entry of the config form: `"80"` or `"8000-8100"` (spaces around `-` allowed).
    pub fn parse_range(text: &str) -> Result<RangeInclusive<u16>, PortListError> {
        let bad = || PortListError::BadText {
            text: text.to_string(),
        };
        let port = |t: &str| -> Result<u16, PortListError> {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match t.parse::<u16>() {
                Ok(0) => Err(PortListError::PortZero),
                Ok(p) => Ok(p),
                Err(_) => Err(bad()),
            }
        };
        let range = match text.split_once('-') {
            Some((start, end)) => port(start)?..=port(end)?,
            None => {
                let p = port(text)?;
                p..=p
            }
        };
        if range.start() > range.end() {
            return Err(PortListError::Reversed {
                start: *range.start(),
                end: *range.end(),
            });
        }
        Ok(range)
    }

    /// Whether `port` is in the list (binary search over the ranges).
    pub fn contains(&self, port: u16) -> bool {
        // Index of the first range that starts after `port`; the one before it may hold `port`.
        let after = self.ranges.partition_point(|r| *r.start() <= port);
        after > 0 && port <= *self.ranges[after - 1].end()
    }

    /// The sorted, merged ranges.
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.ranges
    }
}

impl fmt::Display for PortAllowList {
    /// `80, 443, 8000-8100`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if range.start() == range.end() {
                write!(f, "{}", range.start())?;
            } else {
                write!(f, "{}-{}", range.start(), range.end())?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Service entries
// ---------------------------------------------------------------------------------------------

/// Why a connection to a service was refused before dialing its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialRefusal {
    /// The dialed port is not in the service's allow-list.
    PortNotAllowed {
        /// The port the client dialed.
        port: u16,
    },
    /// The client dialed port 0 and the target passes the dialed port through.
    PortZero,
}

impl fmt::Display for DialRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialRefusal::PortNotAllowed { port } => {
                write!(f, "port {port} is not in the service's allowed ports")
            }
            DialRefusal::PortZero => f.write_str("port 0 cannot be passed through to the target"),
        }
    }
}

impl std::error::Error for DialRefusal {}

/// A service as a node offers it: its target and an optional allow-list of dialed ports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceEntry {
    /// Where connections go.
    pub target: ServiceTarget,
    /// The dialed ports accepted; `None` accepts every port.
    pub allowed_ports: Option<PortAllowList>,
}

impl ServiceEntry {
    /// Decides where a connection that a client made to `dialed_port` of this service goes: the
    /// host and port to dial, or why it is refused. The allow-list is checked against the port the
    /// *client* dialed, not the target's port.
    pub fn resolve_dial(&self, dialed_port: u16) -> Result<(TargetHost, u16), DialRefusal> {
        if let Some(allowed) = &self.allowed_ports {
            if !allowed.contains(dialed_port) {
                return Err(DialRefusal::PortNotAllowed { port: dialed_port });
            }
        }
        let port = self.target.dial_port(dialed_port);
        if port == 0 {
            return Err(DialRefusal::PortZero);
        }
        Ok((self.target.host.clone(), port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use TargetComponent as C;

    fn target(components: Vec<TargetComponent>) -> Result<ServiceTarget, TargetError> {
        ServiceTarget::from_components(components)
    }

    #[test]
    fn seed_forms() {
        let t = target(vec![C::Tcp(8080)]).unwrap();
        assert_eq!(t.host, TargetHost::Ip(Ipv4Addr::LOCALHOST.into()));
        assert_eq!(t.port, Some(8080));
        assert_eq!(t.to_string(), "/ip4/127.0.0.1/tcp/8080");

        let t = target(vec![C::Ip4(Ipv4Addr::new(10, 0, 0, 4)), C::Tcp(9092)]).unwrap();
        assert_eq!(t.to_string(), "/ip4/10.0.0.4/tcp/9092");
        assert_eq!(t.dial_port(80), 9092);

        let t = target(vec![C::Ip6(Ipv6Addr::LOCALHOST), C::Tcp(80)]).unwrap();
        assert_eq!(t.to_string(), "/ip6/::1/tcp/80");

        for dns in [C::Dns, C::Dns4, C::Dns6] {
            let t = target(vec![dns("DB.lan.".into()), C::Tcp(5432)]).unwrap();
            assert_eq!(t.host, TargetHost::Dns("db.lan".into()));
            assert_eq!(t.to_string(), "/dns/db.lan/tcp/5432");
        }

        let t = target(vec![C::Ip4(Ipv4Addr::new(10, 0, 0, 4))]).unwrap();
        assert_eq!(t.port, None);
        assert_eq!(t.dial_port(443), 443);
        assert_eq!(t.to_string(), "/ip4/10.0.0.4");
    }

    #[test]
    fn rejections() {
        assert_eq!(target(vec![]), Err(TargetError::Empty));
        assert_eq!(
            target(vec![C::Other("/udp/53".into())]),
            Err(TargetError::Unsupported {
                protocol: "/udp/53".into()
            })
        );
        assert_eq!(
            target(vec![
                C::Ip4(Ipv4Addr::LOCALHOST),
                C::Other("/udp/53".into())
            ]),
            Err(TargetError::Unsupported {
                protocol: "/udp/53".into()
            })
        );
        assert_eq!(
            target(vec![C::Tcp(80), C::Other("/http".into())]),
            Err(TargetError::Trailing {
                protocol: "/http".into()
            })
        );
        assert_eq!(
            target(vec![C::Tcp(80), C::Tcp(81)]),
            Err(TargetError::Trailing {
                protocol: "/tcp/81".into()
            })
        );
        assert_eq!(
            target(vec![C::Tcp(80), C::Ip4(Ipv4Addr::LOCALHOST)]),
            Err(TargetError::Trailing {
                protocol: "/ip4/127.0.0.1".into()
            })
        );
        assert_eq!(
            target(vec![
                C::Ip4(Ipv4Addr::LOCALHOST),
                C::Ip6(Ipv6Addr::LOCALHOST)
            ]),
            Err(TargetError::TwoHosts)
        );
        assert_eq!(target(vec![C::Tcp(0)]), Err(TargetError::PortZero));
        for bad in ["", ".", "a..b", "-a.b", "a b", &"x".repeat(64), "é"] {
            assert!(
                matches!(
                    target(vec![C::Dns(bad.to_string())]),
                    Err(TargetError::BadDnsName { .. })
                ),
                "{bad:?}"
            );
        }
        let long = ["a"; 127].join(".");
        assert!(long.len() == 253);
        assert!(target(vec![C::Dns(long.clone())]).is_ok());
        assert!(target(vec![C::Dns(format!("{long}a"))]).is_err());
        // Every message tells what to write instead.
        let message = TargetError::Unsupported {
            protocol: "/unix/x".into(),
        }
        .to_string();
        assert!(
            message.contains("TCP only") && message.contains("/tcp/8080"),
            "{message}"
        );
    }

    #[test]
    fn allow_list_merges_and_parses() {
        let list =
            PortAllowList::new([8000..=8100, 80..=80, 8050..=8200, 81..=81, 443..=443]).unwrap();
        assert_eq!(list.ranges(), &[80..=81, 443..=443, 8000..=8200]);
        assert_eq!(list.to_string(), "80-81, 443, 8000-8200");
        assert!(list.contains(80) && list.contains(81) && list.contains(8200));
        assert!(!list.contains(82) && !list.contains(1) && !list.contains(65535));
        let full = PortAllowList::new([1..=65535, 65535..=65535]).unwrap();
        assert_eq!(full.ranges(), &[1..=65535]);
        assert!(full.contains(65535) && !full.contains(0));

        assert_eq!(PortAllowList::new([]), Err(PortListError::Empty));
        assert_eq!(PortAllowList::new([0..=10]), Err(PortListError::PortZero));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = PortAllowList::new([10..=5]);
        assert_eq!(reversed, Err(PortListError::Reversed { start: 10, end: 5 }));

        assert_eq!(PortAllowList::parse_range("80"), Ok(80..=80));
        assert_eq!(PortAllowList::parse_range("8000-8100"), Ok(8000..=8100));
        assert_eq!(PortAllowList::parse_range(" 8000 - 8100 "), Ok(8000..=8100));
        assert_eq!(
            PortAllowList::parse_range("8100-8000"),
            Err(PortListError::Reversed {
                start: 8100,
                end: 8000
            })
        );
        assert_eq!(
            PortAllowList::parse_range("0"),
            Err(PortListError::PortZero)
        );
        for bad in ["", "-", "80-", "-80", "65536", "+80", "80-90-100", "http"] {
            assert_eq!(
                PortAllowList::parse_range(bad),
                Err(PortListError::BadText { text: bad.into() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn resolve_dial() {
        let fixed = ServiceEntry {
            target: target(vec![C::Tcp(8080)]).unwrap(),
            allowed_ports: None,
        };
        let localhost = TargetHost::Ip(Ipv4Addr::LOCALHOST.into());
        assert_eq!(fixed.resolve_dial(80), Ok((localhost.clone(), 8080)));
        assert_eq!(fixed.resolve_dial(1234), Ok((localhost.clone(), 8080)));

        let through = ServiceEntry {
            target: target(vec![C::Dns("db.lan".into())]).unwrap(),
            allowed_ports: Some(PortAllowList::new([5432..=5433]).unwrap()),
        };
        let db = TargetHost::Dns("db.lan".into());
        assert_eq!(through.resolve_dial(5433), Ok((db.clone(), 5433)));
        assert_eq!(
            through.resolve_dial(80),
            Err(DialRefusal::PortNotAllowed { port: 80 })
        );
        let open = ServiceEntry {
            allowed_ports: None,
            ..through
        };
        assert_eq!(open.resolve_dial(0), Err(DialRefusal::PortZero));
        assert_eq!(open.resolve_dial(22), Ok((db, 22)));
    }

    proptest! {
        #[test]
        fn allow_list_matches_naive_model(
            ranges in proptest::collection::vec((1u16..=65535, 0u16..300), 1..12),
            probes in proptest::collection::vec(any::<u16>(), 0..64),
        ) {
            let ranges: Vec<RangeInclusive<u16>> = ranges
                .into_iter()
                .map(|(start, len)| start..=start.saturating_add(len))
                .collect();
            let list = PortAllowList::new(ranges.clone()).unwrap();
            let naive = |p: u16| ranges.iter().any(|r| r.contains(&p));
            // Probe the given ports and every range boundary.
            let edges = ranges.iter().flat_map(|r| {
                [r.start().saturating_sub(1), *r.start(), *r.end(), r.end().saturating_add(1)]
            });
            for port in probes.into_iter().chain(edges) {
                prop_assert_eq!(list.contains(port), naive(port), "port {}", port);
            }
            // Sorted, disjoint, non-adjacent.
            for pair in list.ranges().windows(2) {
                prop_assert!(u32::from(*pair[0].end()) + 1 < u32::from(*pair[1].start()));
            }
            // Merging is idempotent.
            prop_assert_eq!(PortAllowList::new(list.ranges().to_vec()).unwrap(), list.clone());
        }

        #[test]
        fn parse_range_never_panics(text in "\\PC{0,20}") {
            let _ = PortAllowList::parse_range(&text);
        }

        #[test]
        fn dial_port_pass_through(port in proptest::option::of(1u16..), dialed in any::<u16>()) {
            let t = ServiceTarget { host: TargetHost::Ip(Ipv4Addr::LOCALHOST.into()), port };
            prop_assert_eq!(t.dial_port(dialed), port.unwrap_or(dialed));
        }
    }
}
