//! The evaluation form of a [`RuleSet`], derived from its policies once (at
//! translation, or on first use) so a decision does not walk every policy's regexes.
//!
//! Two things make it fast, neither changes a decision:
//! - Istio's principal regexes are matched structurally: the trust-domain-agnostic
//!   service account `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?` and the namespace
//!   `.*/ns/<ns>/.*` (istiod's `from.source.principals` with trust domain aliases and
//!   `from.source.namespaces`), with `<ns>` and `<sa>` literal. Any other regex runs
//!   as it is.
//! - From four policies on, policies are indexed by the namespace their principals
//!   require. A policy whose every principal needs the peer identity to contain
//!   `/ns/<ns>/` (one of the shapes above, or an exact `…/ns/<ns>/…` identity) can
//!   only match a peer with that segment, so a request tries only the policies
//!   indexed under the `/ns/` segments of its peer identity plus those not indexed,
//!   in name order. The first of them that matches is the first of all policies that
//!   matches.
//!
//! Does not own the semantics: a candidate policy is decided by its principals
//! (compiled as above, the rest delegated to [`Principal::matches`]) and its
//! permissions ([`Permission::matches`]) — the same answer as [`Policy::matches`].

use std::collections::HashMap;

use super::{Policy, Principal, Request};
use crate::model::common::{StringMatch, StringMatcher};

/// Fewer policies are tried in turn: hashing the peer's namespace would cost more
/// than it saves.
const INDEX_FROM: usize = 4;

/// A rule set's policies in evaluation form.
#[derive(Debug)]
pub(super) struct Compiled {
    /// How many policies it was built from (a rule set changed since is evaluated
    /// directly instead).
    pub(super) len: usize,
    /// Policy `i`'s principals, as `policies[i].principals`.
    principals: Vec<PolicyPrincipals>,
    /// Policies any request may match, ascending.
    unindexed: Vec<u32>,
    /// Namespace -> policies that need a peer in it, ascending.
    by_namespace: HashMap<Box<str>, Vec<u32>>,
}

impl Compiled {
    pub(super) fn new(policies: &[Policy]) -> Self {
        let mut unindexed = Vec::new();
        let mut by_namespace: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut principals = Vec::with_capacity(policies.len());
        for (i, policy) in policies.iter().enumerate() {
            let compiled: PolicyPrincipals = policy.principals.iter().map(FastPrincipal::new).collect();
            let mut keys = Vec::new();
            if policies.len() >= INDEX_FROM && compiled.iter().all(|p| p.namespaces(&mut keys)) && !keys.is_empty() {
                keys.sort_unstable();
                keys.dedup();
                for ns in keys {
                    by_namespace.entry(ns.into()).or_default().push(i as u32);
                }
            } else {
                unindexed.push(i as u32);
            }
            principals.push(compiled);
        }
        Compiled { len: policies.len(), principals, unindexed, by_namespace }
    }

    /// The index of the first policy that matches `req`.
    pub(super) fn first_match(&self, policies: &[Policy], req: &Request<'_>) -> Option<usize> {
        let matches = |i: u32| {
            let i = i as usize;
            self.principals[i].iter().any(|p| p.matches(req)) && policies[i].permissions.iter().any(|p| p.matches(req))
        };
        if self.by_namespace.is_empty() {
            return self.unindexed.iter().copied().find(|&i| matches(i)).map(|i| i as usize);
        }
        // The policies of the peer's namespaces: nearly always one list, no allocation.
        let mut first: Option<&[u32]> = None;
        let mut more: Vec<&[u32]> = Vec::new();
        if let Some(peer) = req.peer_principal {
            for list in ns_segments(peer).filter_map(|ns| self.by_namespace.get(ns)) {
                match first {
                    None => first = Some(list),
                    Some(_) => more.push(list),
                }
            }
        }
        let found = match (first, more.is_empty()) {
            (None, _) => self.unindexed.iter().copied().find(|&i| matches(i)),
            (Some(one), true) => Merge { a: &self.unindexed, b: one }.find(|&i| matches(i)),
            (Some(one), false) => {
                more.push(one);
                let mut all: Vec<u32> = more.concat();
                all.extend_from_slice(&self.unindexed);
                all.sort_unstable();
                all.dedup();
                all.into_iter().find(|&i| matches(i))
            }
        };
        found.map(|i| i as usize)
    }
}

/// One policy's principals (any of them must match).
type PolicyPrincipals = Vec<FastPrincipal>;

/// Two ascending lists, in ascending order (they share no element).
struct Merge<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for Merge<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let take_a = match (self.a.first(), self.b.first()) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => a <= b,
        };
        let list = if take_a { &mut self.a } else { &mut self.b };
        let (first, rest) = list.split_first()?;
        *list = rest;
        Some(*first)
    }
}

/// The segments that follow each `/ns/` of `peer` up to the next `/` (occurrences
/// may overlap: `/ns/ns/x/` has `ns` and `x`).
fn ns_segments(peer: &str) -> impl Iterator<Item = &str> {
    starts(peer, "/ns/").filter_map(move |at| {
        let start = at + 4;
        peer.as_bytes()[start..].iter().position(|&b| b == b'/').map(|len| &peer[start..start + len])
    })
}

/// A principal with Istio's identity regexes matched structurally.
#[derive(Debug)]
enum FastPrincipal {
    Any,
    And(Vec<FastPrincipal>),
    Or(Vec<FastPrincipal>),
    Not(Box<FastPrincipal>),
    /// `authenticated` (`None`: any verified peer) and the filter-state peer
    /// principal (`Some`) both see the verified peer's identity.
    Peer(Option<PeerMatcher>),
    Other(Principal),
}

impl FastPrincipal {
    fn new(p: &Principal) -> Self {
        match p {
            Principal::Any => FastPrincipal::Any,
            Principal::AndIds(ids) => FastPrincipal::And(ids.iter().map(FastPrincipal::new).collect()),
            Principal::OrIds(ids) => FastPrincipal::Or(ids.iter().map(FastPrincipal::new).collect()),
            Principal::NotId(id) => FastPrincipal::Not(Box::new(FastPrincipal::new(id))),
            Principal::Authenticated(m) => FastPrincipal::Peer(m.as_ref().map(PeerMatcher::new)),
            Principal::PeerPrincipal(m) => FastPrincipal::Peer(Some(PeerMatcher::new(m))),
            other => FastPrincipal::Other(other.clone()),
        }
    }

    fn matches(&self, req: &Request<'_>) -> bool {
        match self {
            FastPrincipal::Any => true,
            FastPrincipal::And(ids) => ids.iter().all(|i| i.matches(req)),
            FastPrincipal::Or(ids) => ids.iter().any(|i| i.matches(req)),
            FastPrincipal::Not(id) => !id.matches(req),
            FastPrincipal::Peer(m) => match (req.peer_principal, m) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(peer), Some(m)) => m.matches(peer),
            },
            FastPrincipal::Other(p) => p.matches(req),
        }
    }

    /// Adds to `keys` the namespaces one of which a matching peer's identity must
    /// have as a `/ns/<ns>/` segment; `false` when there is no such set.
    fn namespaces<'a>(&'a self, keys: &mut Vec<&'a str>) -> bool {
        match self {
            FastPrincipal::Peer(Some(m)) => match m.namespace() {
                Some(ns) => {
                    keys.push(ns);
                    true
                }
                None => false,
            },
            FastPrincipal::Or(ids) => ids.iter().all(|i| i.namespaces(keys)),
            FastPrincipal::And(ids) => ids.iter().any(|i| {
                let mark = keys.len();
                let ok = i.namespaces(keys);
                if !ok {
                    keys.truncate(mark);
                }
                ok
            }),
            _ => false,
        }
    }
}

/// A matcher of the verified peer's identity.
#[derive(Debug)]
enum PeerMatcher {
    /// `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`.
    ServiceAccount {
        ns: Box<str>,
        sa: Box<str>,
    },
    /// `.*/ns/<ns>/.*`.
    Namespace(Box<str>),
    Other(StringMatcher),
}

impl PeerMatcher {
    fn new(m: &StringMatcher) -> Self {
        if let StringMatch::Regex(p) = &m.kind {
            if let Some((ns, sa)) = service_account_regex(p.source()) {
                return PeerMatcher::ServiceAccount { ns: ns.into(), sa: sa.into() };
            }
            if let Some(ns) = namespace_regex(p.source()) {
                return PeerMatcher::Namespace(ns.into());
            }
        }
        PeerMatcher::Other(m.clone())
    }

    fn matches(&self, peer: &str) -> bool {
        match self {
            PeerMatcher::ServiceAccount { ns, sa } => service_account_matches(ns, sa, peer),
            PeerMatcher::Namespace(ns) => namespace_matches(ns, peer),
            PeerMatcher::Other(m) => m.matches(peer),
        }
    }

    /// The namespace segment every identity this matches has.
    fn namespace(&self) -> Option<&str> {
        match self {
            PeerMatcher::ServiceAccount { ns, .. } | PeerMatcher::Namespace(ns) => Some(ns),
            PeerMatcher::Other(StringMatcher { kind: StringMatch::Exact(s), ignore_case: false }) => ns_segments(s).next(),
            PeerMatcher::Other(_) => None,
        }
    }
}

/// Characters a regex may escape that stand for themselves (not `\<`, `\b`, …).
const ESCAPED_LITERALS: &str = ".[](){}*+?|^$\\-#&~";

/// A non-empty literal at the start of `src` (letters, digits, `-`, `_`, and
/// escaped punctuation; never `/`), and what follows it.
fn literal(src: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut rest = src;
    loop {
        let mut chars = rest.chars();
        match chars.next() {
            Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                out.push(c);
                rest = chars.as_str();
            }
            Some('\\') => match chars.next() {
                Some(e) if ESCAPED_LITERALS.contains(e) => {
                    out.push(e);
                    rest = chars.as_str();
                }
                _ => break,
            },
            _ => break,
        }
    }
    (!out.is_empty()).then_some((out, rest))
}

/// `(ns, sa)` of `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`.
fn service_account_regex(src: &str) -> Option<(String, String)> {
    let (ns, rest) = literal(src.strip_prefix("spiffe://.+/ns/")?)?;
    let (sa, rest) = literal(rest.strip_prefix("/(.+/|)sa/")?)?;
    (rest == "(/.+)?").then_some((ns, sa))
}

/// `ns` of `.*/ns/<ns>/.*`.
fn namespace_regex(src: &str) -> Option<String> {
    let (ns, rest) = literal(src.strip_prefix(".*/ns/")?)?;
    (rest == "/.*").then_some(ns)
}

/// Every start of `needle` (ASCII, not empty) in `hay`, overlapping ones included.
/// The haystacks are identities of a few dozen bytes: a byte scan beats building a
/// substring searcher for each.
fn starts<'a>(hay: &'a str, needle: &'static str) -> impl Iterator<Item = usize> + 'a {
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    let first = needle[0];
    (0..(hay.len() + 1).saturating_sub(needle.len())).filter(move |&at| hay[at] == first && hay[at..].starts_with(needle))
}

/// The full match of `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?` (`.`: any character
/// but `\n`; `ns` and `sa` contain neither `\n` nor `/`).
pub(super) fn service_account_matches(ns: &str, sa: &str, peer: &str) -> bool {
    const SCHEME: &str = "spiffe://";
    if !peer.starts_with(SCHEME) || peer.contains('\n') {
        return false;
    }
    let bytes = peer.as_bytes();
    // `/ns/<ns>/` after at least one character of trust domain.
    starts(peer, "/ns/").filter(|&at| at > SCHEME.len()).any(|at| {
        let after = at + 4;
        let Some(rest) = peer[after..].strip_prefix(ns).and_then(|r| r.strip_prefix('/')) else { return false };
        let base = peer.len() - rest.len();
        // `(.+/|)sa/<sa>`: right here, or after at least one character and a `/`.
        starts(rest, "sa/").any(|k| {
            let here = k == 0 || (k >= 2 && bytes[base + k - 1] == b'/');
            let Some(tail) = rest[k + 3..].strip_prefix(sa) else { return false };
            // `(/.+)?`
            here && (tail.is_empty() || (tail.len() >= 2 && tail.starts_with('/')))
        })
    })
}

/// The full match of `.*/ns/<ns>/.*`.
pub(super) fn namespace_matches(ns: &str, peer: &str) -> bool {
    !peer.contains('\n') && starts(peer, "/ns/").any(|at| peer[at + 4..].strip_prefix(ns).is_some_and(|r| r.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::authz::rbac::{Action, Permission, RuleSet};
    use crate::model::common::Pattern;

    #[test]
    fn istio_shapes_are_recognised() {
        assert_eq!(service_account_regex("spiffe://.+/ns/foo/(.+/|)sa/my-sa(/.+)?"), Some(("foo".into(), "my-sa".into())));
        assert_eq!(namespace_regex(r".*/ns/rule\[0\]-from\[1\]-ns\[0\]/.*"), Some("rule[0]-from[1]-ns[0]".into()));
        assert_eq!(namespace_regex(".*/ns/ns-prefix-.*/.*"), None);
        assert_eq!(namespace_regex(".*/ns/.*/.*"), None);
        assert_eq!(service_account_regex("spiffe://.+/ns/foo/(.+/|)sa/my.sa(/.+)?"), None, "an unescaped `.` is any character");
        assert_eq!(service_account_regex(r"spiffe://.+/ns/foo/(.+/|)sa/a\<(/.+)?"), None, r"`\<` is an assertion");
    }

    #[test]
    fn overlapping_ns_segments() {
        assert_eq!(ns_segments("spiffe://td/ns/ns/x/sa/y").collect::<Vec<_>>(), ["ns", "x"]);
        assert_eq!(ns_segments("spiffe://td/ns/a").count(), 0);
    }

    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["spiffe://", "/ns/", "ns", "/sa/", "sa/", "sa", "a", "b", "a-b", "/", "\n", "td", ".", "é"])
    }

    fn sm(kind: StringMatch) -> StringMatcher {
        StringMatcher { kind, ignore_case: false }
    }

    fn regex(source: &str) -> StringMatcher {
        sm(StringMatch::Regex(Pattern::new(source).unwrap()))
    }

    fn principal() -> impl Strategy<Value = Principal> {
        let ns = || prop::sample::select(vec!["a", "b", "ns"]);
        let sa = || prop::sample::select(vec!["a", "b"]);
        let leaf = prop_oneof![
            (ns(), sa()).prop_map(|(n, s)| Principal::Authenticated(Some(regex(&format!("spiffe://.+/ns/{n}/(.+/|)sa/{s}(/.+)?"))))),
            (ns(), sa()).prop_map(|(n, s)| Principal::PeerPrincipal(regex(&format!("spiffe://.+/ns/{n}/(.+/|)sa/{s}(/.+)?")))),
            ns().prop_map(|n| Principal::Authenticated(Some(regex(&format!(".*/ns/{n}/.*"))))),
            (ns(), sa()).prop_map(|(n, s)| Principal::Authenticated(Some(sm(StringMatch::Exact(format!("spiffe://td/ns/{n}/sa/{s}")))))),
            Just(Principal::Authenticated(Some(sm(StringMatch::Prefix("spiffe://td/ns/b".into()))))),
            Just(Principal::Authenticated(None)),
            Just(Principal::Any),
            Just(Principal::SourceIp("198.18.0.1/32".parse().unwrap())),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(Principal::AndIds),
                prop::collection::vec(inner.clone(), 2..4).prop_map(Principal::OrIds),
                inner.prop_map(|p| Principal::NotId(Box::new(p))),
            ]
        })
    }

    fn permission() -> impl Strategy<Value = Permission> {
        prop_oneof![
            Just(Permission::Any),
            Just(Permission::DestinationPort(80)),
            Just(Permission::DestinationPort(81)),
            Just(Permission::NotRule(Box::new(Permission::DestinationPort(80)))),
        ]
    }

    fn peer() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            prop::sample::select(vec![
                "spiffe://td/ns/a/sa/b",
                "spiffe://td/ns/ns/a/sa/a",
                "spiffe://x/ns/b/y/sa/a/z",
                "spiffe://td/ns/a",
                "spiffe://td/ns/b/sa/a"
            ])
            .prop_map(|p| Some(p.to_owned())),
            prop::collection::vec(piece(), 0..10).prop_map(|p| Some(p.concat())),
        ]
    }

    proptest! {
        #[test]
        fn the_evaluation_form_decides_as_every_policy_in_turn(
            policies in prop::collection::vec((prop::collection::vec(permission(), 1..3), prop::collection::vec(principal(), 1..3)), 0..16),
            peers in prop::collection::vec(peer(), 1..8),
            port in prop::sample::select(vec![80u16, 81]),
            source in prop::sample::select(vec!["198.18.0.1", "198.18.0.2"]),
        ) {
            let policies: Vec<Policy> = policies
                .into_iter()
                .enumerate()
                .map(|(i, (permissions, principals))| Policy { name: format!("p{i:02}").into(), permissions, principals })
                .collect();
            let rules = RuleSet::new(Action::Allow, policies);
            for peer in &peers {
                let mut req = Request::tcp(format!("{source}:5000").parse().unwrap(), format!("198.18.0.2:{port}").parse().unwrap());
                req.peer_principal = peer.as_deref();
                prop_assert_eq!(rules.evaluate(&req), rules.evaluate_directly(&req), "peer {:?}", peer);
            }
        }

        #[test]
        fn structural_matches_agree_with_the_regex(
            ns in prop::sample::select(vec!["a", "ns", "a-b", "sa", "b"]),
            sa in prop::sample::select(vec!["a", "b", "sa", "ns", "a-b"]),
            pieces in prop::collection::vec(piece(), 0..12),
        ) {
            let peer: String = pieces.concat();
            let sa_re = Pattern::new(&format!("spiffe://.+/ns/{ns}/(.+/|)sa/{sa}(/.+)?")).unwrap();
            prop_assert_eq!(service_account_matches(ns, sa, &peer), sa_re.is_full_match(&peer), "sa {} {} on {:?}", ns, sa, peer);
            let ns_re = Pattern::new(&format!(".*/ns/{ns}/.*")).unwrap();
            prop_assert_eq!(namespace_matches(ns, &peer), ns_re.is_full_match(&peer), "ns {} on {:?}", ns, peer);
        }
    }
}
