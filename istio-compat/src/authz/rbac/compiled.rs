//! The evaluation form of a [`RuleSet`], derived from its policies once (at
//! translation, or on first use) so a decision does not walk every policy's regexes.
//!
//! Three things make it fast, none changes a decision:
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
//! - A policy's principals and permissions run as a branching program ([`Step`]):
//!   each leaf test names where to go next, so the `and`/`or`/`not` trees cost
//!   nothing at decision time (walking them was a third of a ten-policy decision).
//!   What the rule set's policies share is tested once per decision ([`Builder`]): a
//!   leaf that recurs (istiod repeats methods, paths, hosts and ports across
//!   policies), and a run of conditions several `and`s start with. Header matchers
//!   know where their header is: `:method`, `:authority`, `:path` and `:scheme` are
//!   fields of the request head, and a regular header's name is parsed once, its value
//!   looked up once per decision however many policies match on it (parsing and
//!   finding it by a `&str` name in each policy was another fifth).
//!
//! Does not own the semantics: a candidate policy is decided by its principals
//! (compiled as above, the rest delegated to [`Principal::matches`]) and its
//! permissions (leaves as above, the rest delegated to [`Permission::matches`]) — the same answer as [`Policy::matches`]; property tests
//! check both against the model's own evaluation.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;

use super::{Permission, Policy, Principal, Request};
use crate::model::common::{StringMatch, StringMatcher};
use crate::model::route::{HeaderMatchRule, HeaderMatcher};

/// Fewer policies are tried in turn: hashing the peer's namespace would cost more
/// than it saves.
const INDEX_FROM: usize = 4;

/// A rule set's policies in evaluation form.
#[derive(Debug)]
pub(super) struct Compiled {
    /// How many policies it was built from (a rule set changed since is evaluated
    /// directly instead).
    pub(super) len: usize,
    /// The policies' branching programs and the shared conjunctions'
    /// ([`Leaf::All`]), in one list ([`Builder`]).
    steps: Vec<Step>,
    /// Policy `i`'s first step: its principals, which lead to its permissions.
    entries: Vec<u32>,
    /// The distinct leaves the steps test.
    leaves: Vec<Leaf>,
    /// Exact-value tests of one header, decided together ([`Leaf::InGroup`]).
    groups: Vec<Group>,
    /// Policies any request may match, ascending.
    unindexed: Vec<u32>,
    /// Namespace -> policies that need a peer in it, ascending.
    by_namespace: HashMap<Box<str>, Vec<u32>>,
    /// A principal tests `remote_ip`.
    pub(super) reads_remote_ip: bool,
}

impl Compiled {
    pub(super) fn new(policies: &[Policy]) -> Self {
        let mut unindexed = Vec::new();
        let mut by_namespace: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut builder = Builder::new(policies);
        let entries = policies
            .iter()
            .map(|p| {
                let permissions = builder.any(&p.permissions, ACCEPT, REJECT);
                builder.any(&p.principals, permissions, REJECT)
            })
            .collect();
        let (steps, leaves, groups) = builder.finish();
        for (i, policy) in policies.iter().enumerate() {
            let mut keys = Vec::new();
            if policies.len() >= INDEX_FROM && policy.principals.iter().all(|p| required_namespaces(p, &mut keys)) && !keys.is_empty() {
                keys.sort_unstable();
                keys.dedup();
                for ns in keys {
                    by_namespace.entry(ns).or_default().push(i as u32);
                }
            } else {
                unindexed.push(i as u32);
            }
        }
        let reads_remote_ip = policies.iter().any(Policy::reads_remote_ip);
        Compiled { len: policies.len(), steps, entries, leaves, groups, unindexed, by_namespace, reads_remote_ip }
    }

    /// The index of the first policy that matches `req`.
    pub(super) fn first_match(&self, req: &Request<'_>) -> Option<usize> {
        let mut ev = Eval::new(req);
        let mut matches = |i: u32| self.entries.get(i as usize).is_some_and(|&entry| self.run(entry, &mut ev));
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

    /// Runs the program that starts at step `at`: whether it reaches [`ACCEPT`].
    fn run(&self, mut at: u32, ev: &mut Eval<'_, '_>) -> bool {
        while let Some(step) = self.steps.get(at as usize) {
            let slot = step.memo as usize;
            let held = match ev.memo.get(slot).copied() {
                None => self.test(step.leaf, ev),
                Some(UNKNOWN) => {
                    let held = self.test(step.leaf, ev);
                    ev.memo[slot] = if held { HELD } else { FAILED };
                    held
                }
                Some(known) => known == HELD,
            };
            at = if held { step.on_true } else { step.on_false };
        }
        at == ACCEPT
    }

    fn test(&self, leaf: u32, ev: &mut Eval<'_, '_>) -> bool {
        self.leaves.get(leaf as usize).is_some_and(|leaf| leaf.matches(self, ev))
    }
}

/// One test in a branching program: a policy's principals and permissions (any of
/// them), or a shared conjunction. The step tests one leaf and names the step to go
/// to when it holds and when it does not, so `and`/`or`/`not` cost nothing at
/// decision time and a leaf is tested at most once per program. Steps only lead to
/// steps built before them (or to the verdicts), and a conjunction's leaf is made
/// after its steps, so a run always ends.
#[derive(Debug)]
struct Step {
    /// Index into the rule set's leaves.
    leaf: u32,
    on_true: u32,
    on_false: u32,
    /// The leaf's memo slot ([`Eval::memo`]), or [`NO_MEMO`].
    memo: u8,
}

/// Where a step leads: another step's index, or a verdict.
const ACCEPT: u32 = u32::MAX;
const REJECT: u32 = u32::MAX - 1;

/// A step whose leaf is tested each time it is reached (no memo slot).
const NO_MEMO: u8 = u8::MAX;
/// How many leaves have a memo slot (the first shared ones).
const MEMO_SLOTS: usize = 128;
/// A memo slot's states.
const UNKNOWN: u8 = 0;
const FAILED: u8 = 1;
const HELD: u8 = 2;

/// The and/or/not shape Envoy's [`Permission`] and [`Principal`] share.
enum Shape<'a, T> {
    Any,
    And(&'a [T]),
    Or(&'a [T]),
    Not(&'a T),
    Leaf,
}

trait Tree: Sized + serde::Serialize {
    /// Keeps permission and principal leaves apart in the builder's index.
    const KIND: &'static str;
    fn shape(&self) -> Shape<'_, Self>;
    /// This leaf in evaluation form; `slots` are the regular header names whose
    /// values a decision remembers.
    fn leaf(&self, slots: &mut Vec<http::HeaderName>) -> Leaf;
}

impl Tree for Permission {
    const KIND: &'static str = "permission";

    fn shape(&self) -> Shape<'_, Self> {
        match self {
            Permission::Any => Shape::Any,
            Permission::AndRules(rules) => Shape::And(rules),
            Permission::OrRules(rules) => Shape::Or(rules),
            Permission::NotRule(rule) => Shape::Not(rule),
            _ => Shape::Leaf,
        }
    }

    fn leaf(&self, slots: &mut Vec<http::HeaderName>) -> Leaf {
        match self {
            Permission::Header(h) => {
                let source = HeaderSource::new(&h.name, slots);
                match &h.rule {
                    HeaderMatchRule::String(StringMatcher { kind: StringMatch::Exact(value), ignore_case: false }) if !h.invert => {
                        Leaf::HeaderIs { source, value: value.as_str().into(), missing_as_empty: h.treat_missing_as_empty }
                    }
                    _ => Leaf::Header(source, h.clone()),
                }
            }
            Permission::UrlPath(m) => Leaf::UrlPath(m.clone()),
            Permission::DestinationPort(port) => Leaf::DestinationPort(*port),
            other => Leaf::Other(other.clone()),
        }
    }
}

impl Tree for Principal {
    const KIND: &'static str = "principal";

    fn shape(&self) -> Shape<'_, Self> {
        match self {
            Principal::Any => Shape::Any,
            Principal::AndIds(ids) => Shape::And(ids),
            Principal::OrIds(ids) => Shape::Or(ids),
            Principal::NotId(id) => Shape::Not(id),
            _ => Shape::Leaf,
        }
    }

    fn leaf(&self, _: &mut Vec<http::HeaderName>) -> Leaf {
        match self {
            Principal::Authenticated(m) => Leaf::Peer(m.as_ref().map(PeerMatcher::new)),
            Principal::PeerPrincipal(m) => Leaf::Peer(Some(PeerMatcher::new(m))),
            other => Leaf::Principal(other.clone()),
        }
    }
}

/// A tree's canonical form, its JSON (regexes print as their source): equal trees,
/// equal keys.
fn key<T: Tree>(t: &T) -> Option<String> {
    serde_json::to_string(t).ok().map(|k| format!("{} {k}", T::KIND))
}

/// An `and`'s children with their keys, in the order they are tested.
type Ordered<'t, T> = Vec<(&'t T, Option<String>)>;

/// The key of an `and` of `run` (in that order).
fn run_key<T>(run: &[(&T, Option<String>)]) -> Option<String> {
    let keys: Option<Vec<&str>> = run.iter().map(|(_, k)| k.as_deref()).collect();
    keys.map(|keys| format!("and [{}]", keys.join("\u{0}")))
}

/// Builds a rule set's programs into one list of steps, sharing what its policies
/// share. istiod repeats conditions across policies (the same methods, paths, hosts
/// and ports in many rules, whole `to` clauses in the rules of one policy):
/// - a leaf that recurs is one leaf with a memo slot, tested once per decision
///   however many policies reach it;
/// - an `and`'s and an `or`'s children are tested the most shared first (the same
///   ones in the same order in every policy), and a run of first children that several `and`s start
///   with is one conjunction ([`Leaf::All`], its own program), memoised like a leaf:
///   ten policies that differ in one header test their common methods, paths, hosts
///   and ports once, then a step each.
///
/// Neither changes a decision: `and` and `or` of pure tests do not depend on order.
struct Builder {
    steps: Vec<Step>,
    leaves: Vec<Leaf>,
    uses: Vec<u32>,
    /// A leaf's or a conjunction's key -> its index.
    index: HashMap<String, u32>,
    /// The regular header names seen so far, in the order their values are
    /// remembered (the first [`MEMO_HEADERS`]).
    header_slots: Vec<http::HeaderName>,
    /// How many lists (`and`s, `or`s, policies' permissions and principals) have a
    /// member, by its key.
    children: HashMap<String, u32>,
    /// How many `and`s start with a run of children (in test order), by its key.
    runs: HashMap<String, u32>,
}

impl Builder {
    fn new(policies: &[Policy]) -> Self {
        let mut b = Builder {
            steps: Vec::new(),
            leaves: Vec::new(),
            uses: Vec::new(),
            index: HashMap::new(),
            header_slots: Vec::new(),
            children: HashMap::new(),
            runs: HashMap::new(),
        };
        for p in policies {
            b.count_list(&p.permissions);
            b.count_list(&p.principals);
        }
        for p in policies {
            p.permissions.iter().for_each(|t| b.count_runs(t));
            p.principals.iter().for_each(|t| b.count_runs(t));
        }
        b
    }

    /// Counts `list`'s members (an `and`'s or an `or`'s children, or a policy's
    /// permissions or principals), and theirs.
    fn count_list<T: Tree>(&mut self, list: &[T]) {
        for t in list {
            if let Some(k) = key(t) {
                *self.children.entry(k).or_default() += 1;
            }
            self.count_children(t);
        }
    }

    fn count_children<T: Tree>(&mut self, t: &T) {
        match t.shape() {
            Shape::And(list) | Shape::Or(list) => self.count_list(list),
            Shape::Not(c) => self.count_children(c),
            Shape::Any | Shape::Leaf => {}
        }
    }

    fn count_runs<T: Tree>(&mut self, t: &T) {
        match t.shape() {
            Shape::And(all) => {
                let ordered = self.ordered(all, true);
                for end in 2..=ordered.len() {
                    if let Some(k) = run_key(&ordered[..end]) {
                        *self.runs.entry(k).or_default() += 1;
                    }
                }
                all.iter().for_each(|c| self.count_runs(c));
            }
            Shape::Or(any) => any.iter().for_each(|c| self.count_runs(c)),
            Shape::Not(c) => self.count_runs(c),
            Shape::Any | Shape::Leaf => {}
        }
    }

    /// A list's members in test order: those more lists have first (memoised, so
    /// cheap after the first policy that tests them), then, for an `and`, by key (so
    /// that `and`s with the same shared children start with the same run), otherwise
    /// as listed.
    fn ordered<'t, T: Tree>(&self, list: &'t [T], canonical: bool) -> Ordered<'t, T> {
        let mut ordered: Ordered<'t, T> = list.iter().map(|c| (c, key(c))).collect();
        let shared = |k: &Option<String>| k.as_ref().and_then(|k| self.children.get(k)).copied().unwrap_or(0);
        ordered.sort_by(|a, b| shared(&b.1).cmp(&shared(&a.1)).then_with(|| if canonical { a.1.cmp(&b.1) } else { std::cmp::Ordering::Equal }));
        ordered
    }

    /// Any of `trees` (a policy's permissions, or its principals): the entry of steps
    /// that lead to `yes` when one holds and to `no` otherwise.
    fn any<T: Tree>(&mut self, trees: &[T], yes: u32, no: u32) -> u32 {
        self.ordered(trees, false).iter().rev().fold(no, |next, (t, _)| self.build(*t, yes, next))
    }

    /// The entry of `t`'s steps, which lead to `yes` when it holds and to `no` otherwise.
    fn build<T: Tree>(&mut self, t: &T, yes: u32, no: u32) -> u32 {
        match t.shape() {
            Shape::Any => yes,
            Shape::And(all) => {
                let ordered = self.ordered(all, true);
                // The longest run of first children other `and`s start with too.
                let shared =
                    (2..=ordered.len()).rev().find_map(|end| run_key(&ordered[..end]).filter(|k| self.runs.get(k).is_some_and(|&n| n > 1)).map(|k| (end, k)));
                let rest = shared.as_ref().map_or(0, |(end, _)| *end);
                let next = ordered[rest..].iter().rev().fold(yes, |next, (c, _)| self.build(*c, next, no));
                match shared {
                    Some((end, k)) => {
                        let conjunction = self.conjunction(k, &ordered[..end]);
                        self.step(conjunction, next, no)
                    }
                    None => next,
                }
            }
            Shape::Or(any) => self.any(any, yes, no),
            Shape::Not(c) => self.build(c, no, yes),
            Shape::Leaf => {
                let key = key(t);
                let leaf = match key.as_ref().and_then(|k| self.index.get(k)).copied() {
                    Some(id) => self.reuse(id),
                    None => {
                        let leaf = t.leaf(&mut self.header_slots);
                        self.add(key, leaf)
                    }
                };
                self.step(leaf, yes, no)
            }
        }
    }

    /// The leaf of the conjunction of `run`, whose key is `key`.
    fn conjunction<T: Tree>(&mut self, key: String, run: &[(&T, Option<String>)]) -> u32 {
        if let Some(id) = self.index.get(&key).copied() {
            return self.reuse(id);
        }
        let entry = run.iter().rev().fold(ACCEPT, |next, (c, _)| self.build(*c, next, REJECT));
        self.add(Some(key), Leaf::All(entry))
    }

    fn step(&mut self, leaf: u32, on_true: u32, on_false: u32) -> u32 {
        self.steps.push(Step { leaf, on_true, on_false, memo: NO_MEMO });
        (self.steps.len() - 1) as u32
    }

    fn reuse(&mut self, id: u32) -> u32 {
        if let Some(n) = self.uses.get_mut(id as usize) {
            *n += 1;
        }
        id
    }

    fn add(&mut self, key: Option<String>, leaf: Leaf) -> u32 {
        let id = self.leaves.len() as u32;
        self.leaves.push(leaf);
        self.uses.push(1);
        if let Some(k) = key {
            self.index.insert(k, id);
        }
        id
    }

    /// The steps, each with its leaf's memo slot, the leaves and their [`Group`]s.
    /// The first [`MEMO_SLOTS`] leaves used by more than one step or with at least
    /// [`GROUP_FROM`] exact-value tests of the same header have a slot; those tests
    /// that have one form the header's group.
    fn finish(mut self) -> (Vec<Step>, Vec<Leaf>, Vec<Group>) {
        let mut by_header: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (id, leaf) in self.leaves.iter().enumerate() {
            if let Leaf::HeaderIs { source, .. } = leaf {
                if let Some(name) = source.name() {
                    by_header.entry(name).or_default().push(id);
                }
            }
        }
        let by_header: Vec<Vec<usize>> = by_header.into_values().filter(|ids| ids.len() >= GROUP_FROM).collect();
        let grouped: std::collections::HashSet<usize> = by_header.iter().flatten().copied().collect();
        let mut next = 0;
        let memo: Vec<u8> = self
            .uses
            .iter()
            .enumerate()
            .map(|(id, &uses)| {
                if (uses > 1 || grouped.contains(&id)) && next < MEMO_SLOTS {
                    next += 1;
                    (next - 1) as u8
                } else {
                    NO_MEMO
                }
            })
            .collect();
        let slot = |id: usize| memo.get(id).copied().filter(|&m| m != NO_MEMO);
        let mut groups = Vec::new();
        for ids in by_header {
            let members: Vec<(usize, u8)> = ids.into_iter().filter_map(|id| slot(id).map(|s| (id, s))).collect();
            let Some(Leaf::HeaderIs { source, .. }) = members.first().and_then(|&(id, _)| self.leaves.get(id)) else { continue };
            if members.len() < GROUP_FROM {
                continue;
            }
            let mut group = Group { source: source.clone(), slots: Vec::new(), by_value: Default::default(), when_absent: Vec::new() };
            for &(id, s) in &members {
                if let Some(Leaf::HeaderIs { value, missing_as_empty, .. }) = self.leaves.get(id) {
                    group.slots.push(s);
                    group.by_value.entry(value.clone()).or_default().push(s);
                    if *missing_as_empty && value.is_empty() {
                        group.when_absent.push(s);
                    }
                }
                if let Some(leaf) = self.leaves.get_mut(id) {
                    *leaf = Leaf::InGroup { group: groups.len() as u32, slot: s };
                }
            }
            groups.push(group);
        }
        for step in &mut self.steps {
            step.memo = slot(step.leaf as usize).unwrap_or(NO_MEMO);
        }
        (self.steps, self.leaves, groups)
    }
}

#[derive(Debug)]
enum Leaf {
    /// A conjunction several `and`s start with: the program at this step.
    All(u32),
    Header(HeaderSource, HeaderMatcher),
    /// A header matcher of istiod's commonest kind (methods, `when` headers): the
    /// header's value is exactly `value` (an absent header counts as empty when
    /// `missing_as_empty`), as [`HeaderMatcher::matches_value`] decides it.
    HeaderIs {
        source: HeaderSource,
        value: Box<str>,
        missing_as_empty: bool,
    },
    /// A [`Leaf::HeaderIs`] of a [`Group`], whose memo slot is `slot`.
    InGroup {
        group: u32,
        slot: u8,
    },
    UrlPath(StringMatcher),
    DestinationPort(u16),
    Other(Permission),
    /// `authenticated` / `io.istio.peer_principal`: a verified peer (`None`: any).
    Peer(Option<PeerMatcher>),
    Principal(Principal),
}

impl Leaf {
    /// Leaves know where their data is: header matchers find `:method`,
    /// `:authority`, `:path` and `:scheme` as fields of the request head, and a regular
    /// header by a name parsed once, its value looked up once per decision.
    #[inline]
    fn matches(&self, compiled: &Compiled, ev: &mut Eval<'_, '_>) -> bool {
        match self {
            Leaf::All(entry) => compiled.run(*entry, ev),
            Leaf::Header(source, m) => m.matches_value(source.value(ev).as_deref()),
            Leaf::HeaderIs { source, value, missing_as_empty } => match source.value(ev) {
                Some(v) => *v == **value,
                None => *missing_as_empty && value.is_empty(),
            },
            Leaf::InGroup { group, slot } => compiled.groups.get(*group as usize).is_some_and(|g| g.decide(ev, *slot)),
            Leaf::UrlPath(m) => ev.req.path().is_some_and(|p| m.matches(p)),
            Leaf::DestinationPort(port) => ev.req.destination.port() == *port,
            Leaf::Other(p) => p.matches(ev.req),
            Leaf::Peer(m) => match (ev.req.peer_principal, m) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(peer), Some(m)) => m.matches(peer),
            },
            Leaf::Principal(p) => p.matches(ev.req),
        }
    }
}

/// The exact-value tests of one header in a rule set, when there are at least
/// [`GROUP_FROM`] (istiod's `when: request.headers[x-tenant]` in many policies, the
/// methods of many rules): the first of them a decision reaches finds the header's
/// value once, looks it up among theirs, and records every member's result in its
/// memo slot, so the rest cost a memo read each instead of a comparison each.
#[derive(Debug)]
struct Group {
    source: HeaderSource,
    /// Every member's memo slot.
    slots: Vec<u8>,
    /// A value -> the slots of the members that want it.
    by_value: HashMap<Box<str>, Vec<u8>, foldhash::fast::RandomState>,
    /// The slots of the members that hold when the header is absent (an empty value
    /// with `treat_missing_as_empty`).
    when_absent: Vec<u8>,
}

/// How many exact-value tests of one header make a [`Group`].
const GROUP_FROM: usize = 4;

impl Group {
    /// Decides every member; whether the member at `slot` holds.
    fn decide(&self, ev: &mut Eval<'_, '_>, slot: u8) -> bool {
        let held: &[u8] = match self.source.value(ev) {
            Some(v) => self.by_value.get(&*v).map_or(&[], Vec::as_slice),
            None => &self.when_absent,
        };
        for &s in &self.slots {
            if let Some(m) = ev.memo.get_mut(s as usize) {
                *m = FAILED;
            }
        }
        for &s in held {
            if let Some(m) = ev.memo.get_mut(s as usize) {
                *m = HELD;
            }
        }
        held.contains(&slot)
    }
}

/// How many distinct regular headers a rule set remembers the values of during one
/// decision; further ones are looked up each time they are matched.
const MEMO_HEADERS: usize = 8;

/// One decision over a request: the values of the regular headers the rule set's
/// matchers name are looked up once, when first needed.
struct Eval<'q, 'r> {
    req: &'q Request<'r>,
    headers: [OnceCell<Option<Cow<'q, str>>>; MEMO_HEADERS],
    /// The shared leaves' results so far, by memo slot: [`UNKNOWN`], [`FAILED`], [`HELD`].
    memo: [u8; MEMO_SLOTS],
}

impl<'q, 'r> Eval<'q, 'r> {
    fn new(req: &'q Request<'r>) -> Self {
        Eval { req, headers: Default::default(), memo: [UNKNOWN; MEMO_SLOTS] }
    }
}

/// Where a header matcher's header is, as [`Request::header`] finds it by name.
#[derive(Clone, Debug)]
enum HeaderSource {
    Method,
    Authority,
    Path,
    Scheme,
    /// `host`: the authority unless the request carries a `host` header of its own.
    Host,
    /// A regular header, and where its value is remembered during a decision.
    Named(http::HeaderName, Option<usize>),
    /// Not a header name a request can carry (another pseudo-header): never present.
    Nowhere,
}

impl HeaderSource {
    fn new(name: &str, slots: &mut Vec<http::HeaderName>) -> Self {
        match name {
            ":method" => HeaderSource::Method,
            ":authority" => HeaderSource::Authority,
            ":path" => HeaderSource::Path,
            ":scheme" => HeaderSource::Scheme,
            "host" => HeaderSource::Host,
            _ => match http::HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => HeaderSource::Nowhere,
                Ok(name) => {
                    let slot = slots.iter().position(|n| *n == name).or_else(|| {
                        slots.push(name.clone());
                        Some(slots.len() - 1)
                    });
                    HeaderSource::Named(name, slot.filter(|&i| i < MEMO_HEADERS))
                }
            },
        }
    }

    /// The header's name (`None`: none a request can carry).
    fn name(&self) -> Option<&str> {
        match self {
            HeaderSource::Method => Some(":method"),
            HeaderSource::Authority => Some(":authority"),
            HeaderSource::Path => Some(":path"),
            HeaderSource::Scheme => Some(":scheme"),
            HeaderSource::Host => Some("host"),
            HeaderSource::Named(name, _) => Some(name.as_str()),
            HeaderSource::Nowhere => None,
        }
    }

    #[inline]
    fn value<'e>(&self, ev: &'e Eval<'_, '_>) -> Option<Cow<'e, str>> {
        let head = ev.req.http.as_ref()?;
        match self {
            HeaderSource::Method => Some(Cow::Borrowed(head.method.as_str())),
            HeaderSource::Authority => Some(Cow::Borrowed(head.authority)),
            HeaderSource::Path => Some(Cow::Borrowed(head.path)),
            HeaderSource::Scheme => Some(Cow::Borrowed(head.scheme)),
            HeaderSource::Host if !head.headers.contains_key(http::header::HOST) => Some(Cow::Borrowed(head.authority)),
            HeaderSource::Host => head.header_named(&http::header::HOST),
            HeaderSource::Named(name, None) => head.header_named(name),
            HeaderSource::Named(name, Some(slot)) => {
                let value = ev.headers[*slot].get_or_init(|| head.header_named(name));
                value.as_deref().map(Cow::Borrowed)
            }
            HeaderSource::Nowhere => None,
        }
    }
}

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

/// Whether every way `p` can match needs the peer identity to have a `/ns/<ns>/`
/// segment with `<ns>` among those it pushes to `keys` (Istio's identity and namespace
/// principals, in any `or`, or in one branch of an `and`).
fn required_namespaces(p: &Principal, keys: &mut Vec<Box<str>>) -> bool {
    match p {
        Principal::Authenticated(Some(m)) | Principal::PeerPrincipal(m) => match PeerMatcher::new(m).namespace() {
            Some(ns) => {
                keys.push(ns.into());
                true
            }
            None => false,
        },
        Principal::OrIds(ids) => ids.iter().all(|i| required_namespaces(i, keys)),
        Principal::AndIds(ids) => ids.iter().any(|i| {
            let mark = keys.len();
            let ok = required_namespaces(i, keys);
            if !ok {
                keys.truncate(mark);
            }
            ok
        }),
        _ => false,
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
    use crate::model::route::{HeaderMatchRule, RequestHead};

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

    #[test]
    fn shared_leaves_beyond_the_memo_are_tested_each_time() {
        // 150 leaves used twice each (more than the 128 memo slots): policy i and
        // policy 150 + i both want x-h = v<i>.
        let exact = |v: String| {
            Permission::Header(HeaderMatcher {
                name: "x-h".into(),
                rule: HeaderMatchRule::String(sm(StringMatch::Exact(v))),
                invert: false,
                treat_missing_as_empty: false,
            })
        };
        let policies = (0..300)
            .map(|i| Policy { name: format!("p{i:03}").into(), permissions: vec![exact(format!("v{}", i % 150))], principals: vec![Principal::Any] })
            .collect();
        let rules = RuleSet::new(Action::Allow, policies);
        let method = http::Method::GET;
        for want in [0, 127, 128, 149] {
            let mut map = http::HeaderMap::new();
            map.insert("x-h", format!("v{want}").parse().unwrap());
            let mut req = Request::tcp("198.18.0.1:5000".parse().unwrap(), "198.18.0.2:80".parse().unwrap());
            req.http = Some(RequestHead { method: &method, authority: "a", path: "/", scheme: "http", headers: &map });
            let expected = format!("p{want:03}");
            assert_eq!(rules.evaluate(&req), Some(expected.as_str()));
        }
    }

    #[test]
    fn headers_beyond_the_remembered_ones_are_looked_up_each_time() {
        // More distinct header names than are remembered: policy i wants x-h<i> = v<i>.
        let exact = |name: String, v: String| {
            Permission::Header(HeaderMatcher { name, rule: HeaderMatchRule::String(sm(StringMatch::Exact(v))), invert: false, treat_missing_as_empty: false })
        };
        let n = MEMO_HEADERS + 4;
        let policies = (0..n)
            .map(|i| Policy { name: format!("p{i:02}").into(), permissions: vec![exact(format!("x-h{i}"), format!("v{i}"))], principals: vec![Principal::Any] })
            .collect();
        let rules = RuleSet::new(Action::Allow, policies);
        let method = http::Method::GET;
        for want in [0, MEMO_HEADERS - 1, MEMO_HEADERS, n - 1] {
            let mut map = http::HeaderMap::new();
            for i in 0..n {
                let v = if i == want { format!("v{i}") } else { "other".to_owned() };
                map.insert(http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(), v.parse().unwrap());
            }
            let mut req = Request::tcp("198.18.0.1:5000".parse().unwrap(), "198.18.0.2:80".parse().unwrap());
            req.http = Some(RequestHead { method: &method, authority: "a", path: "/", scheme: "http", headers: &map });
            let expected = format!("p{want:02}");
            assert_eq!(rules.evaluate(&req), Some(expected.as_str()));
            assert_eq!(rules.evaluate(&req), rules.evaluate_directly(&req));
        }
    }

    fn header_permission() -> impl Strategy<Value = Permission> {
        let name = prop::sample::select(vec![":method", ":authority", ":path", ":scheme", "host", "x-tenant", "X-Tenant", ":status", "bad name", "user-agent"]);
        let rule = prop_oneof![
            prop::sample::select(vec!["GET", "acme", "a,b", "h.example:80", "/p?q", "http", ""])
                .prop_map(|v| HeaderMatchRule::String(sm(StringMatch::Exact(v.to_owned())))),
            prop::sample::select(vec!["a", "H.", "/p"])
                .prop_map(|v| HeaderMatchRule::String(StringMatcher { kind: StringMatch::Prefix(v.to_owned()), ignore_case: true })),
            any::<bool>().prop_map(HeaderMatchRule::Present),
        ];
        let leaf = (name, rule, any::<bool>(), any::<bool>()).prop_map(|(name, rule, invert, treat_missing_as_empty)| {
            Permission::Header(HeaderMatcher { name: name.to_owned(), rule, invert, treat_missing_as_empty })
        });
        let leaf = prop_oneof![4 => leaf, 1 => Just(Permission::UrlPath(sm(StringMatch::Prefix("/p".into())))), 1 => Just(Permission::DestinationPort(80))];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(Permission::AndRules),
                prop::collection::vec(inner.clone(), 2..4).prop_map(Permission::OrRules),
                inner.prop_map(|p| Permission::NotRule(Box::new(p))),
            ]
        })
    }

    /// Permissions that share conditions as istiod's rules do: `and`s of a few
    /// conditions from a small pool (some of them `and`s too), so that many `and`s
    /// start with the same run, in whatever order they list it.
    fn shared_permission() -> impl Strategy<Value = Permission> {
        let header = |name: &str, v: &str| {
            Permission::Header(HeaderMatcher {
                name: name.into(),
                rule: HeaderMatchRule::String(sm(StringMatch::Exact(v.into()))),
                invert: false,
                treat_missing_as_empty: false,
            })
        };
        let condition = move |i: usize| match i {
            0 => header(":method", "GET"),
            1 => Permission::UrlPath(sm(StringMatch::Prefix("/p".into()))),
            2 => Permission::DestinationPort(80),
            3 => header("x-tenant", "acme"),
            4 => Permission::OrRules(vec![header("x-tenant", "a"), header("x-tenant", "b")]),
            5 => Permission::NotRule(Box::new(Permission::DestinationPort(81))),
            _ => Permission::Any,
        };
        let pool = || 0..7usize;
        let item = prop_oneof![
            3 => pool().prop_map(condition),
            1 => prop::collection::vec(pool(), 2..4).prop_map(move |v| Permission::AndRules(v.into_iter().map(condition).collect())),
        ];
        prop::collection::vec(item, 2..6).prop_map(Permission::AndRules)
    }

    /// An ALLOW rule set of policies `p00`, `p01`… with these permissions, from any peer.
    fn allow_rules(permissions: Vec<Vec<Permission>>) -> RuleSet {
        let policies = permissions
            .into_iter()
            .enumerate()
            .map(|(i, permissions)| Policy { name: format!("p{i:02}").into(), permissions, principals: vec![Principal::Any] })
            .collect();
        RuleSet::new(Action::Allow, policies)
    }

    /// Request headers: `(name, value)` pairs, repeated names included.
    fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
        let name = prop::sample::select(vec!["host", "x-tenant", "user-agent"]);
        let value = prop_oneof![
            prop::sample::select(vec!["acme", "a", "b", "H.Example:80", "h.example:80", ""]).prop_map(|v| v.as_bytes().to_vec()),
            Just(vec![0xff, b'a']),
        ];
        prop::collection::vec((name, value), 0..4)
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
        fn the_evaluation_form_finds_headers_as_the_model_does(
            policies in prop::collection::vec(prop::collection::vec(header_permission(), 1..3), 0..12),
            requests in prop::collection::vec((prop::sample::select(vec!["GET", "POST"]), prop::sample::select(vec!["h.example:80", "a"]), headers(), any::<bool>()), 1..6),
        ) {
            let rules = allow_rules(policies);
            for (method, authority, headers, tcp) in &requests {
                let method: http::Method = method.parse().unwrap();
                let mut map = http::HeaderMap::new();
                for (name, value) in headers {
                    map.append(*name, http::HeaderValue::from_bytes(value).unwrap());
                }
                let mut req = Request::tcp("198.18.0.1:5000".parse().unwrap(), "198.18.0.2:80".parse().unwrap());
                if !tcp {
                    req.http = Some(RequestHead { method: &method, authority, path: "/p?q", scheme: "http", headers: &map });
                }
                prop_assert_eq!(rules.evaluate(&req), rules.evaluate_directly(&req), "{:?} {:?}", authority, headers);
            }
        }

        #[test]
        fn shared_conjunctions_decide_as_every_policy_in_turn(
            policies in prop::collection::vec(prop::collection::vec(shared_permission(), 1..3), 0..12),
            requests in prop::collection::vec((prop::sample::select(vec!["GET", "POST"]), prop::sample::select(vec![None, Some("acme"), Some("a"), Some("b")]), prop::sample::select(vec![80u16, 81, 82]), prop::sample::select(vec!["/p/x", "/q"])), 1..8),
        ) {
            let rules = allow_rules(policies);
            for (method, tenant, port, path) in &requests {
                let method: http::Method = method.parse().unwrap();
                let mut map = http::HeaderMap::new();
                if let Some(t) = tenant {
                    map.insert("x-tenant", http::HeaderValue::from_static(t));
                }
                let mut req = Request::tcp("198.18.0.1:5000".parse().unwrap(), format!("198.18.0.2:{port}").parse().unwrap());
                req.http = Some(RequestHead { method: &method, authority: "h", path, scheme: "http", headers: &map });
                prop_assert_eq!(rules.evaluate(&req), rules.evaluate_directly(&req), "{} {:?} {} {}", method, tenant, port, path);
            }
        }

        #[test]
        fn grouped_exact_values_decide_as_every_policy_in_turn(
            policies in prop::collection::vec(prop::collection::vec((
                prop::sample::select(vec![":method", "x-tenant", "x-tenant", "host"]),
                prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "acme", "a", "b", "a,b", "", "h"]),
                any::<bool>(),
            ), 1..3), 0..20),
            requests in prop::collection::vec((prop::sample::select(vec!["GET", "POST", "PATCH"]), prop::collection::vec(prop::sample::select(vec!["acme", "a", "b", ""]), 0..3), any::<bool>()), 1..8),
        ) {
            let exact = |(name, value, missing): (&str, &str, bool)| Permission::Header(HeaderMatcher {
                name: name.into(),
                rule: HeaderMatchRule::String(sm(StringMatch::Exact(value.into()))),
                invert: false,
                treat_missing_as_empty: missing,
            });
            let rules = allow_rules(policies.into_iter().map(|tests| vec![Permission::AndRules(tests.into_iter().map(exact).collect())]).collect());
            for (method, tenants, host) in &requests {
                let method: http::Method = method.parse().unwrap();
                let mut map = http::HeaderMap::new();
                for t in tenants {
                    map.append("x-tenant", http::HeaderValue::from_static(t));
                }
                if *host {
                    map.insert("host", http::HeaderValue::from_static("h"));
                }
                let mut req = Request::tcp("198.18.0.1:5000".parse().unwrap(), "198.18.0.2:80".parse().unwrap());
                req.http = Some(RequestHead { method: &method, authority: "a", path: "/", scheme: "http", headers: &map });
                prop_assert_eq!(rules.evaluate(&req), rules.evaluate_directly(&req), "{} {:?} host {}", method, tenants, host);
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
