//! The peer's principal as L4 policies match it — its identity without `spiffe://`,
//! `<trust domain>/ns/<namespace>/sa/<service account>` — compared piece by piece
//! against a [`NameMatch`], so that a decision never formats the identity.
//!
//! The comparison is byte-wise, as `str`'s `==`, `starts_with` and `ends_with` are,
//! so it decides exactly as [`NameMatch::matches`] on the formatted string (pinned by
//! a property test in `l4/tests.rs`). Plaintext (no identity) is the empty string.

use crate::model::workload::{Identity, NameMatch};

/// The concatenation of its pieces.
#[derive(Clone, Copy, Debug)]
pub(super) struct Principal<'a>([&'a [u8]; 5]);

impl<'a> Principal<'a> {
    pub(super) fn of(id: Option<&'a Identity>) -> Self {
        match id {
            Some(id) => Principal([id.trust_domain.as_bytes(), b"/ns/", id.namespace.as_bytes(), b"/sa/", id.service_account.as_bytes()]),
            None => Principal([b""; 5]),
        }
    }

    /// As [`NameMatch::matches`] on the formatted principal.
    pub(super) fn matches(&self, m: &NameMatch) -> bool {
        match m {
            NameMatch::Exact(s) => self.len() == s.len() && self.starts_with(s.as_bytes()),
            NameMatch::Prefix(s) => self.starts_with(s.as_bytes()),
            NameMatch::Suffix(s) => self.ends_with(s.as_bytes()),
            NameMatch::Presence => self.len() > 0,
        }
    }

    fn len(&self) -> usize {
        self.0.iter().map(|p| p.len()).sum()
    }

    fn starts_with(&self, mut s: &[u8]) -> bool {
        for piece in self.0 {
            if s.len() <= piece.len() {
                return piece.starts_with(s);
            }
            let (head, rest) = s.split_at(piece.len());
            if head != piece {
                return false;
            }
            s = rest;
        }
        // Longer than the whole principal.
        false
    }

    fn ends_with(&self, mut s: &[u8]) -> bool {
        for piece in self.0.iter().rev() {
            if s.len() <= piece.len() {
                return piece.ends_with(s);
            }
            let (rest, tail) = s.split_at(s.len() - piece.len());
            if tail != *piece {
                return false;
            }
            s = rest;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: Option<&Identity>, m: NameMatch) -> bool {
        let formatted = id.map(|id| id.to_string()).unwrap_or_default();
        let formatted = formatted.strip_prefix("spiffe://").unwrap_or(&formatted);
        let piecewise = Principal::of(id).matches(&m);
        assert_eq!(piecewise, m.matches(formatted), "{m:?} on {formatted:?}");
        piecewise
    }

    #[test]
    fn matches_across_piece_boundaries_as_the_formatted_string() {
        let id = Identity::new("cluster.local", "bar", "sleep");
        let id = Some(&id);
        assert!(check(id, NameMatch::Exact("cluster.local/ns/bar/sa/sleep".into())));
        assert!(!check(id, NameMatch::Exact("cluster.local/ns/bar/sa/slee".into())));
        assert!(!check(id, NameMatch::Exact("cluster.local/ns/bar/sa/sleepy".into())));
        assert!(!check(id, NameMatch::Exact("spiffe://cluster.local/ns/bar/sa/sleep".into())));
        assert!(check(id, NameMatch::Prefix("cluster.local/n".into())));
        assert!(check(id, NameMatch::Prefix("cluster.local/ns/bar/sa/sleep".into())));
        assert!(check(id, NameMatch::Prefix("".into())));
        assert!(!check(id, NameMatch::Prefix("cluster.local/ns/bar/sa/sleep/".into())));
        assert!(!check(id, NameMatch::Prefix("cluster.local/ns/baz".into())));
        assert!(check(id, NameMatch::Suffix("/sa/sleep".into())));
        assert!(check(id, NameMatch::Suffix("r/sa/sleep".into())));
        assert!(check(id, NameMatch::Suffix("cluster.local/ns/bar/sa/sleep".into())));
        assert!(!check(id, NameMatch::Suffix("xcluster.local/ns/bar/sa/sleep".into())));
        assert!(!check(id, NameMatch::Suffix("/sa/sleeq".into())));
        assert!(check(id, NameMatch::Presence));
        // Plaintext: the empty string.
        assert!(!check(None, NameMatch::Presence));
        assert!(check(None, NameMatch::Prefix("".into())));
        assert!(check(None, NameMatch::Exact("".into())));
        assert!(!check(None, NameMatch::Suffix("a".into())));
        // Multi-byte characters split inside a piece compare as bytes, as str does.
        let id = Identity::new("dömäin", "nä", "sä");
        assert!(check(Some(&id), NameMatch::Suffix("ä/sa/sä".into())));
        assert!(check(Some(&id), NameMatch::Prefix("döm".into())));
    }
}
