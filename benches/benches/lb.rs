//! Load balancer pick cost for each policy over 3, 30 and 300 hosts.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use istio_compat::model::cluster::{HealthStatus, LbPolicy};
use istio_compat::model::common::Percent;
use node_proxy::upstream::host::Host;
use node_proxy::upstream::lb::LbView;

fn hosts(n: usize) -> Vec<Arc<Host>> {
    (0..n)
        .map(|i| {
            let addr = format!("198.18.{}.{}:8080", i / 250, i % 250 + 1).parse().unwrap();
            Arc::new(Host::new(addr, 1, HealthStatus::Healthy, 0, Arc::default(), false, None))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("lb_pick");
    let policies = [
        ("round_robin", LbPolicy::RoundRobin),
        ("least_request", LbPolicy::LeastRequest { choice_count: 2 }),
        ("random", LbPolicy::Random),
        ("ring_hash", LbPolicy::RingHash { minimum_ring_size: 1024, maximum_ring_size: 8 << 20 }),
        ("maglev", LbPolicy::Maglev { table_size: 65537 }),
    ];
    for n in [3, 30, 300] {
        for (name, policy) in &policies {
            let view = LbView::new(vec![hosts(n)], policy, Percent::from_percentage(50.0));
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(*name, n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    std::hint::black_box(view.pick(Some(key), &|_| false, 1))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
