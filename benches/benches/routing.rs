//! Route selection cost: virtual host lookup plus first-match route scan, for tables
//! of 1, 100 and 10,000 routes shaped like istiod's (one virtual host per service,
//! prefix and header matches), matching the last route (worst case) and the first.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use istio_compat::model::common::{StringMatch, StringMatcher};
use istio_compat::model::route::{
    Action, ClusterSpecifier, ForwardAction, HeaderMatchRule, HeaderMatcher, PathMatch, RequestHead, Route, RouteMatch, RouteTable, VirtualHost,
};

fn forward(cluster: &str) -> Action {
    Action::Forward(Box::new(ForwardAction {
        cluster: ClusterSpecifier::Cluster(cluster.into()),
        cluster_not_found_status: 503,
        prefix_rewrite: None,
        regex_rewrite: None,
        host_rewrite: None,
        timeout: None,
        idle_timeout: None,
        retry_policy: None,
        grpc_timeout: None,
        hash_policy: vec![],
        mirrors: vec![],
        upgrades: vec![],
    }))
}

/// `services` virtual hosts of `routes_per_service` routes each.
fn table(services: usize, routes_per_service: usize) -> RouteTable {
    let vhosts = (0..services)
        .map(|s| {
            let host = format!("svc-{s}.default.svc.cluster.local");
            let routes = (0..routes_per_service)
                .map(|r| Route {
                    name: format!("r{r}").into(),
                    matcher: RouteMatch {
                        path: PathMatch::Prefix(format!("/api/v{r}/")),
                        case_sensitive: true,
                        headers: vec![HeaderMatcher {
                            name: "x-user".into(),
                            rule: HeaderMatchRule::String(StringMatcher { kind: StringMatch::Exact(format!("user-{r}")), ignore_case: false }),
                            invert: false,
                            treat_missing_as_empty: false,
                        }],
                        query_parameters: vec![],
                        grpc: false,
                        fraction: None,
                    },
                    action: forward(&format!("outbound|80||{host}")),
                    request_headers: Default::default(),
                    response_headers: Default::default(),
                    fault: None,
                })
                .collect();
            VirtualHost { name: host.clone().into(), domains: vec![host.clone(), format!("{host}:80"), format!("svc-{s}")], routes, ..Default::default() }
        })
        .collect();
    RouteTable::new("bench", vhosts)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for (services, per) in [(1, 1), (10, 10), (100, 100)] {
        let total = services * per;
        let t = table(services, per);
        let method = Method::GET;
        let mut headers = HeaderMap::new();
        let last = per - 1;
        headers.insert("x-user", format!("user-{last}").parse().unwrap());
        let authority = format!("svc-{}.default.svc.cluster.local", services - 1);
        let path = format!("/api/v{last}/items?id=7");
        group.bench_with_input(BenchmarkId::new("last_route", total), &total, |b, _| {
            b.iter(|| {
                let head = RequestHead { method: &method, authority: &authority, path: &path, scheme: "http", headers: &headers };
                let vh = t.virtual_host(std::hint::black_box(&authority)).unwrap();
                std::hint::black_box(vh.route(&head).unwrap());
            })
        });
        let mut first_headers = HeaderMap::new();
        first_headers.insert("x-user", "user-0".parse().unwrap());
        let first_path = "/api/v0/items".to_owned();
        group.bench_with_input(BenchmarkId::new("first_route", total), &total, |b, _| {
            b.iter(|| {
                let head = RequestHead { method: &method, authority: &authority, path: &first_path, scheme: "http", headers: &first_headers };
                let vh = t.virtual_host(std::hint::black_box(&authority)).unwrap();
                std::hint::black_box(vh.route(&head).unwrap());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
