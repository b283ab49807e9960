//! Load balancing as Envoy does it: priority levels with the 1.4 overprovisioning
//! factor, panic mode below `healthy_panic_threshold`, and per policy:
//! ROUND_ROBIN (weighted, smooth), LEAST_REQUEST (power of two choices on active
//! requests; Istio's default), RANDOM, RING_HASH and MAGLEV (consistent hashing on the
//! route's hash policy).
//!
//! [`LbView`] is computed whenever hosts or their health change, and is then read
//! lock-free by every worker on every pick.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use istio_compat::model::cluster::LbPolicy;
use istio_compat::model::common::Percent;
use rand::Rng;

use super::host::Host;

/// Envoy's default overprovisioning factor (1.4), in percent.
const OVERPROVISIONING: u64 = 140;

/// Hosts of one priority level, with their balancing tables.
pub struct PriorityView {
    /// Every host EDS lists as routable (used in panic mode).
    pub all: Vec<Arc<Host>>,
    /// Routable and not ejected.
    pub healthy: Vec<Arc<Host>>,
    /// Indices into `healthy` in smooth weighted round-robin order (empty if weights are equal).
    wrr: Vec<u32>,
    ring: Option<Ring>,
    maglev: Option<Maglev>,
}

pub struct LbView {
    pub priorities: Vec<PriorityView>,
    /// Share of traffic (percent) each priority gets.
    pub priority_load: Vec<u32>,
    /// Too few healthy hosts: balance across all routable hosts.
    pub panic: bool,
    policy: LbPolicy,
    cursor: AtomicUsize,
}

impl LbView {
    pub fn new(hosts_by_priority: Vec<Vec<Arc<Host>>>, policy: &LbPolicy, panic_threshold: Percent) -> Self {
        let mut priorities = Vec::with_capacity(hosts_by_priority.len());
        let mut health = Vec::with_capacity(hosts_by_priority.len());
        for hosts in hosts_by_priority {
            let all: Vec<Arc<Host>> = hosts.into_iter().filter(|h| h.health.is_routable()).collect();
            let healthy: Vec<Arc<Host>> = all.iter().filter(|h| h.is_healthy()).cloned().collect();
            let h = if all.is_empty() { 0 } else { (OVERPROVISIONING * healthy.len() as u64 / all.len() as u64).min(100) };
            health.push(h as u32);
            priorities.push(PriorityView { all, healthy, wrr: Vec::new(), ring: None, maglev: None });
        }
        let total_health: u32 = health.iter().sum::<u32>().min(100);
        let panic = total_health * 10_000 < panic_threshold.per_million;
        let priority_load = priority_loads(&health);
        for p in &mut priorities {
            let hosts = if panic { &p.all } else { &p.healthy };
            if hosts.iter().any(|h| h.weight != hosts[0].weight) {
                p.wrr = smooth_wrr(hosts);
            }
            match policy {
                LbPolicy::RingHash { minimum_ring_size, maximum_ring_size } => p.ring = Some(Ring::new(hosts, *minimum_ring_size, *maximum_ring_size)),
                LbPolicy::Maglev { table_size } => p.maglev = Some(Maglev::new(hosts, *table_size)),
                _ => {}
            }
        }
        LbView { priorities, priority_load, panic, policy: policy.clone(), cursor: AtomicUsize::new(rand::random_range(0..1024)) }
    }

    pub fn host_count(&self) -> usize {
        self.priorities.iter().map(|p| p.all.len()).sum()
    }

    pub fn healthy_count(&self) -> usize {
        self.priorities.iter().map(|p| p.healthy.len()).sum()
    }

    /// Picks a host. `hash` is the route's hash-policy value (consistent hashing);
    /// `avoid` rejects hosts (retry predicates): up to `attempts` picks are made, and
    /// the last one is used even if `avoid` still rejects it (as Envoy does).
    pub fn pick(&self, hash: Option<u64>, avoid: &dyn Fn(&Host) -> bool, attempts: u32) -> Option<Arc<Host>> {
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            // Re-selection for the retry predicate perturbs the hash.
            let hash = hash.map(|h| h.wrapping_add(u64::from(attempt)));
            let host = self.pick_once(hash)?;
            if !avoid(&host) {
                return Some(host);
            }
            last = Some(host);
        }
        last
    }

    fn pick_once(&self, hash: Option<u64>) -> Option<Arc<Host>> {
        let p = self.choose_priority(hash)?;
        let hosts = if self.panic { &p.all } else { &p.healthy };
        if hosts.is_empty() {
            return None;
        }
        match &self.policy {
            LbPolicy::RoundRobin => Some(self.round_robin(p, hosts)),
            LbPolicy::Random => Some(weighted_random(hosts)),
            LbPolicy::LeastRequest { choice_count } => Some(least_request(hosts, *choice_count)),
            LbPolicy::RingHash { .. } => match (hash, &p.ring) {
                (Some(h), Some(ring)) => ring.lookup(h).cloned(),
                _ => Some(weighted_random(hosts)),
            },
            LbPolicy::Maglev { .. } => match (hash, &p.maglev) {
                (Some(h), Some(table)) => table.lookup(h).cloned(),
                _ => Some(weighted_random(hosts)),
            },
        }
    }

    fn choose_priority(&self, hash: Option<u64>) -> Option<&PriorityView> {
        if self.priorities.len() == 1 {
            return self.priorities.first();
        }
        if self.panic {
            return self.priorities.iter().find(|p| !p.all.is_empty());
        }
        // Envoy draws the priority from the hash when there is one, so a key stays put.
        let draw = match hash {
            Some(h) => (h % 100) as u32,
            None => rand::random_range(0..100),
        };
        let mut acc = 0;
        for (p, load) in self.priorities.iter().zip(&self.priority_load) {
            acc += load;
            if draw < acc {
                return Some(p);
            }
        }
        self.priorities.iter().find(|p| !p.healthy.is_empty())
    }

    fn round_robin(&self, p: &PriorityView, hosts: &[Arc<Host>]) -> Arc<Host> {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        if p.wrr.is_empty() {
            return hosts[n % hosts.len()].clone();
        }
        let i = p.wrr[n % p.wrr.len()] as usize;
        hosts[i.min(hosts.len() - 1)].clone()
    }
}

/// Envoy's priority load: each level takes up to its health (overprovisioned), in
/// order; when the sum of health is below 100 the loads are normalised to it.
fn priority_loads(health: &[u32]) -> Vec<u32> {
    let total: u32 = health.iter().sum();
    if total == 0 {
        let mut loads = vec![0; health.len()];
        if let Some(first) = loads.first_mut() {
            *first = 100;
        }
        return loads;
    }
    if total < 100 {
        // Normalise: distribute 100% in proportion to health, rounding down, remainder to the first.
        let mut loads: Vec<u32> = health.iter().map(|h| h * 100 / total).collect();
        let assigned: u32 = loads.iter().sum();
        if let Some(i) = health.iter().position(|h| *h > 0) {
            loads[i] += 100 - assigned;
        }
        return loads;
    }
    let mut remaining = 100;
    health
        .iter()
        .map(|h| {
            let take = (*h).min(remaining);
            remaining -= take;
            take
        })
        .collect()
}

/// Smooth weighted round robin (as nginx): a sequence of host indices in which each
/// appears in proportion to its weight, spread out. Bounded to 65 536 entries.
fn smooth_wrr(hosts: &[Arc<Host>]) -> Vec<u32> {
    let weights: Vec<u64> = hosts.iter().map(|h| u64::from(h.weight)).collect();
    let g = weights.iter().fold(0, |a, b| gcd(a, *b)).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| (w / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    let len = total.clamp(1, 65_536) as usize;
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn weighted_random(hosts: &[Arc<Host>]) -> Arc<Host> {
    let total: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
    let mut point = rand::random_range(0..total.max(1));
    for h in hosts {
        if point < u64::from(h.weight) {
            return h.clone();
        }
        point -= u64::from(h.weight);
    }
    hosts[hosts.len() - 1].clone()
}

/// Power of `choices` choices: the candidate with the fewest active requests (per
/// unit of weight when weights differ).
fn least_request(hosts: &[Arc<Host>], choices: u32) -> Arc<Host> {
    if hosts.len() == 1 {
        return hosts[0].clone();
    }
    let weighted = hosts.iter().any(|h| h.weight != hosts[0].weight);
    let mut rng = rand::rng();
    let mut best: Option<&Arc<Host>> = None;
    for _ in 0..choices.max(2) {
        let candidate = if weighted {
            let total: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
            let mut point = rng.random_range(0..total.max(1));
            let mut chosen = &hosts[0];
            for h in hosts {
                if point < u64::from(h.weight) {
                    chosen = h;
                    break;
                }
                point -= u64::from(h.weight);
            }
            chosen
        } else {
            &hosts[rng.random_range(0..hosts.len())]
        };
        best = Some(match best {
            None => candidate,
            Some(b) => {
                // Compare active/weight without division: a.active * b.weight < b.active * a.weight.
                let lhs = u64::from(candidate.active()) * u64::from(b.weight);
                let rhs = u64::from(b.active()) * u64::from(candidate.weight);
                if lhs < rhs {
                    candidate
                } else {
                    b
                }
            }
        });
    }
    best.unwrap_or(&hosts[0]).clone()
}

fn host_hash(host: &Host, salt: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(host.address.to_string().as_bytes(), salt)
}

/// Consistent hashing ring (Envoy's RING_HASH): each host gets entries in proportion
/// to its weight, at least `min` and at most `max` entries in all.
struct Ring {
    entries: Vec<(u64, Arc<Host>)>,
}

impl Ring {
    fn new(hosts: &[Arc<Host>], min: u64, max: u64) -> Self {
        if hosts.is_empty() {
            return Ring { entries: Vec::new() };
        }
        let total_weight: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
        let min_normalized = hosts.iter().map(|h| u64::from(h.weight)).min().unwrap_or(1) as f64 / total_weight as f64;
        // Enough entries that the lightest host gets at least one, within [min, max].
        let scale = ((min as f64 * min_normalized).ceil().max(1.0) / min_normalized).min(max as f64);
        let mut entries = Vec::new();
        for h in hosts {
            let count = ((u64::from(h.weight) as f64 / total_weight as f64) * scale).round().max(1.0) as u64;
            let key = h.address.to_string();
            for i in 0..count {
                let hash = xxhash_rust::xxh64::xxh64(format!("{key}_{i}").as_bytes(), 0);
                entries.push((hash, h.clone()));
            }
        }
        entries.sort_by_key(|(hash, _)| *hash);
        Ring { entries }
    }

    fn lookup(&self, hash: u64) -> Option<&Arc<Host>> {
        if self.entries.is_empty() {
            return None;
        }
        let i = self.entries.partition_point(|(h, _)| *h < hash);
        Some(&self.entries[i % self.entries.len()].1)
    }
}

/// Maglev lookup table (Envoy's MAGLEV), weighted.
struct Maglev {
    table: Vec<Arc<Host>>,
}

impl Maglev {
    fn new(hosts: &[Arc<Host>], size: u64) -> Self {
        if hosts.is_empty() {
            return Maglev { table: Vec::new() };
        }
        let max_weight = hosts.iter().map(|h| u64::from(h.weight)).max().unwrap_or(1);
        // (offset, skip, next, target weight) per host, as in Envoy's weighted Maglev:
        // a host of maximal weight claims a slot every iteration, one of a third of it
        // every third iteration.
        let mut entries: Vec<(u64, u64, u64, u64)> = hosts.iter().map(|h| (host_hash(h, 0) % size, host_hash(h, 1) % (size - 1) + 1, 0, 0)).collect();
        let mut table: Vec<Option<usize>> = vec![None; size as usize];
        let mut filled = 0usize;
        let mut iteration = 1u64;
        while filled < table.len() {
            for (i, e) in entries.iter_mut().enumerate() {
                if filled == table.len() {
                    break;
                }
                if iteration * u64::from(hosts[i].weight) < e.3 {
                    continue;
                }
                e.3 += max_weight;
                let mut slot = ((e.0 + e.1 * e.2) % size) as usize;
                while table[slot].is_some() {
                    e.2 += 1;
                    slot = ((e.0 + e.1 * e.2) % size) as usize;
                }
                table[slot] = Some(i);
                e.2 += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Maglev { table: table.into_iter().map(|i| hosts[i.unwrap_or(0)].clone()).collect() }
    }

    fn lookup(&self, hash: u64) -> Option<&Arc<Host>> {
        if self.table.is_empty() {
            return None;
        }
        Some(&self.table[(hash % self.table.len() as u64) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use istio_compat::model::cluster::HealthStatus;
    use std::collections::HashMap;

    fn host(i: u8, weight: u32, priority: usize) -> Arc<Host> {
        Arc::new(Host::new(format!("198.18.0.{i}:80").parse().unwrap(), weight, HealthStatus::Healthy, priority, Arc::default(), false, None))
    }

    fn counts(view: &LbView, n: usize, hash: impl Fn(usize) -> Option<u64>) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for i in 0..n {
            let h = view.pick(hash(i), &|_| false, 1).unwrap();
            *c.entry(h.address.to_string()).or_default() += 1;
        }
        c
    }

    #[test]
    fn weighted_round_robin_is_exact() {
        let view = LbView::new(vec![vec![host(1, 1, 0), host(2, 3, 0)]], &LbPolicy::RoundRobin, Percent::from_percentage(50.0));
        let c = counts(&view, 400, |_| None);
        assert_eq!(c["198.18.0.1:80"], 100);
        assert_eq!(c["198.18.0.2:80"], 300);
    }

    #[test]
    fn least_request_prefers_idle_hosts() {
        let busy = host(1, 1, 0);
        busy.active_requests.store(100, Ordering::Relaxed);
        let idle = host(2, 1, 0);
        let view = LbView::new(vec![vec![busy, idle]], &LbPolicy::LeastRequest { choice_count: 2 }, Percent::from_percentage(50.0));
        let c = counts(&view, 1000, |_| None);
        // P2C picks the busy host only when both choices land on it (~25%).
        assert!(c["198.18.0.2:80"] > 650, "{c:?}");
    }

    #[test]
    fn consistent_hashing_is_stable_and_spreads() {
        for policy in [LbPolicy::RingHash { minimum_ring_size: 1024, maximum_ring_size: 8 << 20 }, LbPolicy::Maglev { table_size: 65537 }] {
            let hosts: Vec<_> = (1..=4).map(|i| host(i, 1, 0)).collect();
            let view = LbView::new(vec![hosts.clone()], &policy, Percent::from_percentage(50.0));
            for key in 0..50u64 {
                let h = xxhash_rust::xxh64::xxh64(&key.to_le_bytes(), 0);
                let a = view.pick(Some(h), &|_| false, 1).unwrap().address;
                let b = view.pick(Some(h), &|_| false, 1).unwrap().address;
                assert_eq!(a, b);
            }
            let c = counts(&view, 4000, |i| Some(xxhash_rust::xxh64::xxh64(&i.to_le_bytes(), 7)));
            assert_eq!(c.len(), 4);
            assert!(c.values().all(|n| *n > 600), "{policy:?}: {c:?}");
            // Removing one host moves only that host's keys (consistency).
            let smaller = LbView::new(vec![hosts[..3].to_vec()], &policy, Percent::from_percentage(50.0));
            let moved = (0..2000u64)
                .filter(|k| {
                    let h = xxhash_rust::xxh64::xxh64(&k.to_le_bytes(), 3);
                    let before = view.pick(Some(h), &|_| false, 1).unwrap().address;
                    let after = smaller.pick(Some(h), &|_| false, 1).unwrap().address;
                    before != hosts[3].address && before != after
                })
                .count();
            assert!(moved < 200, "{policy:?}: {moved} keys moved that should have stayed");
        }
    }

    #[test]
    fn priority_spillover_and_panic() {
        assert_eq!(priority_loads(&[100, 100]), vec![100, 0]);
        assert_eq!(priority_loads(&[70, 100]), vec![70, 30]);
        assert_eq!(priority_loads(&[0, 0]), vec![100, 0]);
        assert_eq!(priority_loads(&[20, 20]), vec![50, 50]);
        // Two of three hosts ejected in P0 (health 46%): P1 takes the rest.
        let p0: Vec<_> = (1..=3).map(|i| host(i, 1, 0)).collect();
        p0[0].outlier.ejected.store(true, Ordering::Relaxed);
        p0[1].outlier.ejected.store(true, Ordering::Relaxed);
        let view = LbView::new(vec![p0, vec![host(9, 1, 1)]], &LbPolicy::RoundRobin, Percent::from_percentage(50.0));
        assert_eq!(view.priority_load, vec![46, 54]);
        assert!(!view.panic);
        // Every host ejected: panic mode balances over all of them.
        let all: Vec<_> = (1..=2).map(|i| host(i, 1, 0)).collect();
        all.iter().for_each(|h| h.outlier.ejected.store(true, Ordering::Relaxed));
        let view = LbView::new(vec![all], &LbPolicy::RoundRobin, Percent::from_percentage(50.0));
        assert!(view.panic);
        assert!(view.pick(None, &|_| false, 1).is_some());
    }

    #[test]
    fn retry_predicate_avoids_previous_hosts() {
        let view = LbView::new(vec![vec![host(1, 1, 0), host(2, 1, 0)]], &LbPolicy::Random, Percent::from_percentage(50.0));
        for _ in 0..100 {
            let h = view.pick(None, &|h: &Host| h.address.port() == 80 && h.address.ip().to_string() == "198.18.0.1", 20).unwrap();
            assert_eq!(h.address.to_string(), "198.18.0.2:80");
        }
    }
}
