//! Version labels of role DNS names ⇄ semver ranges.
//!
//! A role name may carry a [`VersionLabel`] (`docs/protocol.md` §2.5): `couchdb.role.svcnet`
//! means any version, `v3.couchdb.role.svcnet` means 3.x (`>=3.0.0, <4.0.0`) and
//! `v3-2.couchdb.role.svcnet` means 3.2.x (`>=3.2.0, <3.3.0`). Each `(role, label)` pair has one
//! stable virtual address, [`NetworkPrefix::role_address`]. Ranges are written with explicit
//! comparators rather than `^3` because caret ranges treat 0.x specially (`^0.2` is `<0.3.0`,
//! which happens to agree, but `^0` and `v0` should both mean every 0.x.y): the label means
//! "same major" or "same major and minor", always.
//!
//! Prereleases follow the semver crate: a comparator range matches a prerelease only if some
//! comparator names the same `major.minor.patch` with a prerelease, so `v3` never selects
//! `3.1.0-rc.1`. Ask for prereleases through a range text (`role@>=3.1.0-rc.1`) instead.

use std::net::Ipv6Addr;

use semver::{Comparator, Op, VersionReq};

use crate::addressing::{NetworkPrefix, RoleName, VersionLabel};

/// The semver range a DNS version label stands for (`None`: any version, i.e. `*`).
pub fn label_to_req(label: Option<VersionLabel>) -> VersionReq {
    let Some(label) = label else {
        return VersionReq::STAR;
    };
    let lower = Comparator {
        op: Op::GreaterEq,
        major: label.major,
        minor: Some(label.minor.unwrap_or(0)),
        patch: Some(0),
        pre: semver::Prerelease::EMPTY,
    };
    // The upper bound: next minor or next major; at u64::MAX there is no next one, and the
    // lower bound alone is the exact meaning.
    let upper = match label.minor {
        Some(minor) => minor.checked_add(1).map(|next| (label.major, next)),
        None => label.major.checked_add(1).map(|next| (next, 0)),
    }
    .map(|(major, minor)| Comparator {
        op: Op::Less,
        major,
        minor: Some(minor),
        patch: Some(0),
        pre: semver::Prerelease::EMPTY,
    });
    VersionReq {
        comparators: std::iter::once(lower).chain(upper).collect(),
    }
}

/// The label that stands for `req`, if it is one of the ranges labels can express: `*` (no
/// label), `M.x` / `^M` (for M ≥ 1) / `>=M.0.0, <M+1.0.0` (`vM`), `M.m.x` / `~M.m` /
/// `>=M.m.0, <M.m+1.0` (`vM-m`). Used to print the DNS name of a range a user typed.
pub fn req_to_label(req: &VersionReq) -> Option<Option<VersionLabel>> {
    if req.comparators.is_empty() {
        return Some(None);
    }
    // Try the two candidate labels derived from the first comparator and compare ranges by
    // their canonical comparator form.
    let first = req.comparators.first()?;
    let candidates = [
        VersionLabel {
            major: first.major,
            minor: None,
        },
        VersionLabel {
            major: first.major,
            minor: Some(first.minor.unwrap_or(0)),
        },
    ];
    let normal = normalize(req)?;
    candidates
        .into_iter()
        .find(|c| normalize(&label_to_req(Some(*c))).as_ref() == Some(&normal))
        .map(Some)
}

/// A range reduced to `(lower inclusive, upper exclusive)` as (major, minor, patch) triples, for
/// the forms that matter to labels; `None` for anything else (prereleases, `=`, `>`, …).
/// A version triple.
type Triple = (u64, u64, u64);

fn normalize(req: &VersionReq) -> Option<(Triple, Option<Triple>)> {
    let mut lower: Option<Triple> = None;
    let mut upper: Option<Triple> = None;
    for c in &req.comparators {
        if !c.pre.is_empty() {
            return None;
        }
        let (lo, hi) = match (c.op, c.minor, c.patch) {
            (Op::Wildcard | Op::Caret | Op::Tilde, None, _) => (
                Some((c.major, 0, 0)),
                c.major.checked_add(1).map(|m| (m, 0, 0)),
            ),
            (Op::Wildcard | Op::Tilde, Some(minor), _) => (
                Some((c.major, minor, 0)),
                minor.checked_add(1).map(|m| (c.major, m, 0)),
            ),
            (Op::Caret, Some(minor), patch) if c.major > 0 => (
                Some((c.major, minor, patch.unwrap_or(0))),
                c.major.checked_add(1).map(|m| (m, 0, 0)),
            ),
            (Op::GreaterEq, minor, patch) => (
                Some((c.major, minor.unwrap_or(0), patch.unwrap_or(0))),
                None,
            ),
            (Op::Less, minor, patch) => (
                None,
                Some((c.major, minor.unwrap_or(0), patch.unwrap_or(0))),
            ),
            _ => return None,
        };
        if let Some(lo) = lo {
            lower = Some(lower.map_or(lo, |l| l.max(lo)));
        }
        if let Some(hi) = hi {
            upper = Some(upper.map_or(hi, |u| u.min(hi)));
        }
    }
    Some((lower?, upper))
}

/// A role address's meaning: the role and the version label of its DNS name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleTarget {
    /// The role.
    pub role: RoleName,
    /// The label (`None`: any version).
    pub label: Option<VersionLabel>,
}

impl RoleTarget {
    /// The semver range connections to this target are balanced over.
    pub fn req(&self) -> VersionReq {
        label_to_req(self.label)
    }

    /// The DNS name inside `zone` (`v3.couchdb.role.svcnet`).
    pub fn name(&self) -> crate::addressing::Name {
        crate::addressing::Name::Role {
            role: self.role.clone(),
            version_label: self.label,
        }
    }
}

/// The labels under which an instance of `version` is reachable: none (any version), its
/// major series and its minor series. Prereleases are reachable only without a label (and only
/// through ranges that name them, §7 of `docs/registry.md`), so they get no labelled address.
pub fn labels_for(version: &semver::Version) -> Vec<Option<VersionLabel>> {
    let mut labels = vec![None];
    if version.pre.is_empty() {
        labels.push(Some(VersionLabel {
            major: version.major,
            minor: None,
        }));
        labels.push(Some(VersionLabel {
            major: version.major,
            minor: Some(version.minor),
        }));
    }
    labels
}

/// The stable virtual address of `(role, label)` in the network `prefix` (every TCP connection
/// to it is balanced over the healthy instances of [`label_to_req`]).
pub fn role_address(
    prefix: &NetworkPrefix,
    role: &RoleName,
    label: Option<VersionLabel>,
) -> Ipv6Addr {
    prefix.role_address(role, label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    #[test]
    fn labels_mean_same_major_or_same_minor() {
        let v3 = label_to_req(Some(VersionLabel::parse("v3").unwrap()));
        assert!(v3.matches(&v("3.0.0")) && v3.matches(&v("3.9.9")));
        assert!(!v3.matches(&v("4.0.0")) && !v3.matches(&v("2.9.9")));
        assert!(
            !v3.matches(&v("3.1.0-rc.1")),
            "prereleases need an explicit range"
        );
        let v32 = label_to_req(Some(VersionLabel::parse("v3-2").unwrap()));
        assert!(v32.matches(&v("3.2.0")) && v32.matches(&v("3.2.7")));
        assert!(!v32.matches(&v("3.3.0")) && !v32.matches(&v("3.1.9")));
        let v0 = label_to_req(Some(VersionLabel::parse("v0").unwrap()));
        assert!(v0.matches(&v("0.1.0")) && v0.matches(&v("0.9.3")) && !v0.matches(&v("1.0.0")));
        assert!(label_to_req(None).matches(&v("42.0.0")));
        let top = label_to_req(Some(VersionLabel {
            major: u64::MAX,
            minor: None,
        }));
        assert!(top.matches(&v("18446744073709551615.2.0")));
    }

    #[test]
    fn ranges_map_back_to_labels_when_they_can() {
        let label = |s: &str| req_to_label(&VersionReq::parse(s).unwrap());
        let l = |s: &str| Some(Some(VersionLabel::parse(s).unwrap()));
        assert_eq!(label("*"), Some(None));
        assert_eq!(label("3.x"), l("v3"));
        assert_eq!(label("^3"), l("v3"));
        assert_eq!(label(">=3, <4"), l("v3"));
        assert_eq!(label("3.2.x"), l("v3-2"));
        assert_eq!(label("~3.2"), l("v3-2"));
        assert_eq!(label("0.x"), l("v0"));
        assert_eq!(label("^3.1"), None, "3.1 up to 4 has no label");
        assert_eq!(label("=3.2.2"), None);
        for text in ["v3", "v3-2", "v0", "v0-4"] {
            let label = VersionLabel::parse(text).unwrap();
            assert_eq!(req_to_label(&label_to_req(Some(label))), Some(Some(label)));
        }
    }
}
