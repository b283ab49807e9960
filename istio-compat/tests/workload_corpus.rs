//! Istio's workload API against real istiod and ztunnel output in the shared corpus:
//! ztunnel's `/config_dump` reads into the workload model with the facts it holds, and
//! every `istio.security.Authorization` golden istiod generates for ambient translates
//! without rejection into a policy equal to the golden, clause by clause. Property
//! tests feed arbitrary messages (and arbitrary bytes) to the translators.

mod common;
use common::corpus_dir;
use std::net::IpAddr;
use std::path::PathBuf;

use istio_compat::model::workload::{
    GatewayDestination, LoadBalancingMode, Match, NameMatch, NetworkAddress, Policy, PolicyAction, PolicyScope, PortMap, ServiceAccountMatch, TunnelProtocol,
    WorkloadStatus, WorkloadType,
};
use istio_compat::translate::workload::{address, authorization, from_ztunnel_dump};
use prost::Message;
use serde_json::{json, Map, Value};
use xds_client::istio::security as sec;
use xds_client::istio::workload as wl;
use xds_client::protojson;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ztunnel_dump_reads_into_the_model() {
    let Some(corpus) = corpus_dir() else { return };
    let text = std::fs::read_to_string(corpus.join("istio-ztunnel-dump/ztunnel_config_dump.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let model = from_ztunnel_dump(&doc).unwrap_or_else(|e| panic!("{e}"));

    // Counts, as the file has them (MANIFEST: 27 workloads, 19 services, 2 policies).
    assert_eq!(model.workloads.len(), 27);
    assert_eq!(model.services.len(), 19);
    assert_eq!(model.policies.len(), 2);
    assert_eq!(model.workloads.values().filter(|w| w.tunnel == TunnelProtocol::Hbone).count(), 13);
    assert_eq!(model.workloads.values().filter(|w| w.waypoint.is_some()).count(), 6);
    // Every one of the 23 service endpoints became a workload -> service port mapping.
    assert_eq!(model.workloads.values().map(|w| w.services.len()).sum::<usize>(), 23);

    // A workload on a named network, behind the namespace waypoint.
    let ratings = &model.workloads["Kubernetes//Pod/bookinfo/ratings-v1-6484c4d9bb-mdxm5"];
    assert_eq!(ratings.addresses, [ip("10.244.2.54")]);
    assert_eq!(&*ratings.network, "network1");
    assert_eq!(ratings.identity.to_string(), "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings");
    assert_eq!(&*ratings.node, "ambient-worker2");
    assert_eq!(ratings.tunnel, TunnelProtocol::Hbone);
    assert!(ratings.native_tunnel);
    assert_eq!((&*ratings.canonical_name, &*ratings.canonical_revision), ("ratings", "v1"));
    assert_eq!((ratings.workload_type, ratings.status, &*ratings.cluster_id), (WorkloadType::Deployment, WorkloadStatus::Healthy, "Kubernetes"));
    let waypoint = ratings.waypoint.as_ref().unwrap();
    assert_eq!(waypoint.destination, GatewayDestination::Address(NetworkAddress::new("", ip("10.96.65.117"))));
    assert_eq!(waypoint.hbone_mtls_port, 15008);
    assert_eq!(ratings.services["bookinfo/ratings.bookinfo.svc.cluster.local"], PortMap::from([(9080, 9080)]));
    // The waypoint's VIP is the namespace-istio-waypoint service.
    let (wp_service, wp_target) = model.service_by_vip("", ip("10.96.65.117"), 15008).unwrap();
    assert_eq!((&*wp_service.name, &*wp_service.namespace, wp_target), ("namespace-istio-waypoint", "bookinfo", 15008));

    // Lookups by IP are network-aware.
    assert_eq!(model.workload_by_ip("network1", ip("10.244.2.54")).map(|w| &*w.uid), Some("Kubernetes//Pod/bookinfo/ratings-v1-6484c4d9bb-mdxm5"));
    assert!(model.workload_by_ip("", ip("10.244.2.54")).is_none());
    let sleep = model.workload_by_ip("", ip("10.244.2.58")).unwrap();
    assert_eq!(sleep.identity.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
    assert_eq!(model.workloads["Kubernetes//Pod/httpbin/httpbin-65975d4c6f-jr69n"].tunnel, TunnelProtocol::None);
    assert_eq!(model.workloads["Kubernetes//Pod/istio-system/ztunnel-n5bg2"].workload_type, WorkloadType::Pod);

    // A service with a port that maps elsewhere: istiod 443 -> 15017.
    let istiod = model.service("istio-system", "istiod-test.istio-system.svc.cluster.local").unwrap();
    assert_eq!(istiod.vips, [NetworkAddress::new("", ip("10.96.182.227"))]);
    assert_eq!(
        istiod.ports.iter().map(|p| (p.service_port, p.target_port)).collect::<Vec<_>>(),
        [(443, 15017), (15010, 15010), (15012, 15012), (15014, 15014)]
    );
    let (svc, target) = model.service_by_vip("", ip("10.96.182.227"), 443).unwrap();
    assert_eq!((&*svc.hostname, target), ("istiod-test.istio-system.svc.cluster.local", 15017));
    assert!(model.service_by_vip("", ip("10.96.182.227"), 80).is_none());
    let httpbin = model.service("default", "httpbin.default.svc.cluster.local").unwrap();
    assert_eq!(httpbin.target_port(8000), Some(80));
    let endpoints: Vec<_> = model.endpoints("default/httpbin.default.svc.cluster.local").map(|(w, ports)| (&*w.uid, ports.clone())).collect();
    assert_eq!(endpoints, [("Kubernetes//Pod/default/httpbin-7447985f87-t8hv7", PortMap::from([(8000, 80)]))]);
    assert_eq!(model.endpoints("bookinfo/reviews.bookinfo.svc.cluster.local").count(), 3);
    assert_eq!(model.endpoints("default/kubernetes.default.svc.cluster.local").count(), 0);
    assert_eq!(model.endpoints("kube-system/kube-dns.kube-system.svc.cluster.local").count(), 2);

    // The two policies.
    let nothing = &model.policies["default/allow-nothing"];
    assert_eq!((nothing.scope, nothing.action, nothing.rules.len()), (PolicyScope::Namespace, PolicyAction::Allow, 0));
    let waypoint_only = &model.policies["default/allow-waypoint"];
    assert_eq!((waypoint_only.scope, waypoint_only.action), (PolicyScope::WorkloadSelector, PolicyAction::Allow));
    assert_eq!(waypoint_only.rules.len(), 1);
    assert_eq!(
        waypoint_only.rules[0].clauses[0].matches,
        [Match { service_accounts: vec![ServiceAccountMatch { namespace: "default".into(), service_account: "waypoint".into() }], ..Default::default() }]
    );
    // A namespace policy applies to the workloads of its namespace only.
    let applied: Vec<_> = model.policies_for(sleep).map(|p| p.key()).collect();
    assert_eq!(applied.iter().map(|k| &**k).collect::<Vec<_>>(), ["default/allow-nothing"]);
    assert_eq!(model.policies_for(ratings).count(), 0);

    // The model prints and reads back (the /config_dump and local-file form).
    let printed = serde_json::to_value(&model).unwrap();
    let back: istio_compat::model::workload::WorkloadModel = serde_json::from_value(printed).unwrap();
    assert_eq!(back, model);
}

/// Standard base64 (the proto3 JSON form of `bytes`).
fn base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap_or_else(|| panic!("bad base64 {s:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The golden with `{address: base64, length}` written as `ip/length`, to compare with the model.
fn normalise_golden(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let is_ips = matches!(k.as_str(), "sourceIps" | "notSourceIps" | "destinationIps" | "notDestinationIps");
                let v = if is_ips {
                    Value::Array(
                        v.as_array()
                            .unwrap()
                            .iter()
                            .map(|a| {
                                let bytes = base64(a["address"].as_str().unwrap());
                                let addr = match bytes.len() {
                                    4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap()),
                                    16 => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()),
                                    n => panic!("{n}-byte address in golden"),
                                };
                                json!(format!("{addr}/{}", a["length"]))
                            })
                            .collect(),
                    )
                } else {
                    normalise_golden(v)
                };
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise_golden).collect()),
        other => other.clone(),
    }
}

/// The policy in the golden's form (proto3 JSON field names, defaults omitted),
/// written from the model alone.
fn policy_as_golden(p: &Policy) -> Value {
    fn names(list: &[NameMatch]) -> Value {
        list.iter()
            .map(|n| match n {
                NameMatch::Exact(s) => json!({"exact": &**s}),
                NameMatch::Prefix(s) => json!({"prefix": &**s}),
                NameMatch::Suffix(s) => json!({"suffix": &**s}),
                NameMatch::Presence => json!({"presence": {}}),
            })
            .collect()
    }
    fn accounts(list: &[ServiceAccountMatch]) -> Value {
        list.iter().map(|sa| json!({"namespace": &*sa.namespace, "serviceAccount": &*sa.service_account})).collect()
    }
    fn matcher(m: &Match) -> Value {
        let mut out = Map::new();
        let mut put = |k: &str, empty: bool, v: Value| {
            if !empty {
                out.insert(k.to_owned(), v);
            }
        };
        put("namespaces", m.namespaces.is_empty(), names(&m.namespaces));
        put("notNamespaces", m.not_namespaces.is_empty(), names(&m.not_namespaces));
        put("principals", m.principals.is_empty(), names(&m.principals));
        put("notPrincipals", m.not_principals.is_empty(), names(&m.not_principals));
        put("serviceAccounts", m.service_accounts.is_empty(), accounts(&m.service_accounts));
        put("notServiceAccounts", m.not_service_accounts.is_empty(), accounts(&m.not_service_accounts));
        put("sourceIps", m.source_ips.is_empty(), json!(m.source_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>()));
        put("notSourceIps", m.not_source_ips.is_empty(), json!(m.not_source_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>()));
        put("destinationIps", m.destination_ips.is_empty(), json!(m.destination_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>()));
        put("notDestinationIps", m.not_destination_ips.is_empty(), json!(m.not_destination_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>()));
        put("destinationPorts", m.destination_ports.is_empty(), json!(m.destination_ports));
        put("notDestinationPorts", m.not_destination_ports.is_empty(), json!(m.not_destination_ports));
        Value::Object(out)
    }
    let mut out = Map::new();
    out.insert("name".into(), json!(&*p.name));
    if !p.namespace.is_empty() {
        out.insert("namespace".into(), json!(&*p.namespace));
    }
    match p.scope {
        PolicyScope::Global => {}
        PolicyScope::Namespace => drop(out.insert("scope".into(), json!("NAMESPACE"))),
        PolicyScope::WorkloadSelector => drop(out.insert("scope".into(), json!("WORKLOAD_SELECTOR"))),
    }
    if p.action == PolicyAction::Deny {
        out.insert("action".into(), json!("DENY"));
    }
    if !p.rules.is_empty() {
        let groups = p
            .rules
            .iter()
            .map(|r| {
                if r.clauses.is_empty() {
                    return json!({});
                }
                let rules: Vec<Value> = r
                    .clauses
                    .iter()
                    .map(|c| if c.matches.is_empty() { json!({}) } else { json!({"matches": c.matches.iter().map(matcher).collect::<Vec<_>>()}) })
                    .collect();
                json!({ "rules": rules })
            })
            .collect();
        out.insert("groups".into(), Value::Array(groups));
    }
    Value::Object(out)
}

#[test]
fn every_ambient_authorization_golden_translates() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = corpus.join("istio-ambient-authz-golden");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-in.yaml"))
        .collect();
    inputs.sort();
    assert_eq!(inputs.len(), 17, "pairs in {}", dir.display());
    let (mut translated, mut nothing_emitted) = (0, 0);
    for input in inputs {
        let golden_path = PathBuf::from(input.to_string_lossy().replace("-in.yaml", ".yaml"));
        let name = golden_path.file_name().unwrap().to_string_lossy().into_owned();
        let golden_text = std::fs::read_to_string(&golden_path).unwrap_or_else(|e| panic!("{name}: {e}"));
        if golden_text.trim().is_empty() {
            // istiod emits no workload-API policy for these (PeerAuthentication that adds nothing).
            let input_text = std::fs::read_to_string(&input).unwrap();
            assert!(input_text.contains("kind: PeerAuthentication"), "{name}: empty golden for a non-PeerAuthentication input");
            nothing_emitted += 1;
            continue;
        }
        let golden = protojson::parse_yaml_or_json(&golden_text).unwrap();
        let message = protojson::from_json::<sec::Authorization>(golden.clone()).unwrap_or_else(|e| panic!("{name}: {e}")).message;
        let one = authorization(&message);
        assert!(one.unsupported.is_empty(), "{name}: {:?}", one.unsupported);
        let policy = one.result.unwrap_or_else(|r| panic!("{name}: {r}"));
        assert_eq!(policy_as_golden(&policy), normalise_golden(&golden), "{name}");
        translated += 1;
    }
    assert_eq!((translated, nothing_emitted), (13, 4));
}

#[test]
fn allow_full_golden_facts() {
    let Some(corpus) = corpus_dir() else { return };
    let text = std::fs::read_to_string(corpus.join("istio-ambient-authz-golden/allow-full.yaml")).unwrap();
    let message = protojson::from_json::<sec::Authorization>(protojson::parse_yaml_or_json(&text).unwrap()).unwrap().message;
    let p = authorization(&message).result.unwrap();
    assert_eq!((&*p.key(), p.scope, p.action, p.rules.len()), ("cfg/allow", PolicyScope::Namespace, PolicyAction::Allow, 10));
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(
        m.principals,
        [
            NameMatch::Exact("principal".into()),
            NameMatch::Prefix("principal-prefix-".into()),
            NameMatch::Suffix("-suffix-principal".into()),
            NameMatch::Presence
        ]
    );
    let sa = &p.rules[1].clauses[0].matches[0];
    assert_eq!(sa.service_accounts[1], ServiceAccountMatch { namespace: "cfg".into(), service_account: "sa-only".into() });
    assert_eq!(sa.not_service_accounts[0], ServiceAccountMatch { namespace: "ns".into(), service_account: "sa-not".into() });
    let ips = &p.rules[3].clauses[0].matches[0];
    assert_eq!(ips.source_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(), ["1.2.3.4/32", "5.6.0.0/16"]);
    assert_eq!(ips.not_source_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(), ["2.2.3.4/32", "6.6.0.0/16"]);
    assert_eq!(p.rules[9].clauses[0].matches[0].not_destination_ports, [9001, 9002]);
}

#[test]
fn service_account_matches_use_upstream_field_numbers() {
    // Match.service_accounts = 11 and ServiceAccountMatch.serviceAccount = 2, hand-encoded.
    let sa = [0x0a, 2, b'n', b's', 0x12, 2, b's', b'a'];
    let mut bytes = vec![0x5a, sa.len() as u8];
    bytes.extend_from_slice(&sa);
    let m = sec::Match::decode(bytes.as_slice()).unwrap();
    assert_eq!(m.service_accounts, [sec::ServiceAccountMatch { namespace: "ns".into(), service_account: "sa".into() }]);
    bytes[0] = 0x62; // field 12
    let m = sec::Match::decode(bytes.as_slice()).unwrap();
    assert_eq!(m.not_service_accounts.len(), 1);
}

#[test]
fn load_balancing_mode_strict_and_failover() {
    for (mode, expected) in [(1, LoadBalancingMode::Strict), (2, LoadBalancingMode::Failover), (0, LoadBalancingMode::Standard)] {
        let s = wl::Service {
            namespace: "ns".into(),
            hostname: "h.ns.svc.cluster.local".into(),
            load_balancing: Some(wl::LoadBalancing { mode, ..Default::default() }),
            ..Default::default()
        };
        let istio_compat::model::workload::AddressResource::Service(s) = address(&wl::Address { r#type: Some(wl::address::Type::Service(s)) }).result.unwrap()
        else {
            panic!("a service")
        };
        assert_eq!(s.load_balancing.as_ref().unwrap().mode, expected);
    }
}

mod properties {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![vec(any::<u8>(), 4), vec(any::<u8>(), 16), vec(any::<u8>(), 0..20)]
    }

    fn small_u32() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..=70_000, any::<u32>()]
    }

    fn enum_i32() -> impl Strategy<Value = i32> {
        prop_oneof![0i32..5, any::<i32>()]
    }

    fn gateway() -> impl Strategy<Value = Option<wl::GatewayAddress>> {
        let destination = prop_oneof![
            Just(None),
            (".{0,4}", bytes()).prop_map(|(network, address)| Some(wl::gateway_address::Destination::Address(wl::NetworkAddress { network, address }))),
            (".{0,4}", ".{0,4}")
                .prop_map(|(namespace, hostname)| Some(wl::gateway_address::Destination::Hostname(wl::NamespacedHostname { namespace, hostname }))),
        ];
        proptest::option::of((destination, small_u32()).prop_map(|(destination, hbone_mtls_port)| wl::GatewayAddress { destination, hbone_mtls_port }))
    }

    fn ports() -> impl Strategy<Value = Vec<wl::Port>> {
        vec((small_u32(), small_u32()).prop_map(|(service_port, target_port)| wl::Port { service_port, target_port }), 0..4)
    }

    fn workload() -> impl Strategy<Value = wl::Workload> {
        (
            (".{0,8}", ".{0,8}", vec(bytes(), 0..4), enum_i32(), enum_i32(), enum_i32(), enum_i32()),
            (gateway(), gateway(), btree_map(".{0,8}", ports(), 0..3), proptest::option::of((enum_i32(), small_u32())), proptest::option::of(any::<u32>())),
        )
            .prop_map(|((uid, namespace, addresses, tunnel, ty, status, mode), (waypoint, network_gateway, services, app, capacity))| wl::Workload {
                uid,
                namespace,
                addresses,
                tunnel_protocol: tunnel,
                workload_type: ty,
                status,
                network_mode: mode,
                waypoint,
                network_gateway,
                services: services.into_iter().map(|(k, ports)| (k, wl::PortList { ports })).collect(),
                application_tunnel: app.map(|(protocol, port)| wl::ApplicationTunnel { protocol, port }),
                capacity,
                ..Default::default()
            })
    }

    fn service() -> impl Strategy<Value = wl::Service> {
        (
            ".{0,8}",
            ".{0,8}",
            vec((".{0,3}", bytes()), 0..3),
            ports(),
            gateway(),
            proptest::option::of((vec(enum_i32(), 0..3), enum_i32(), enum_i32())),
            enum_i32(),
        )
            .prop_map(|(namespace, hostname, addresses, ports, waypoint, lb, ip_families)| wl::Service {
                namespace,
                hostname,
                addresses: addresses.into_iter().map(|(network, address)| wl::NetworkAddress { network, address }).collect(),
                ports,
                waypoint,
                load_balancing: lb.map(|(routing_preference, mode, health_policy)| wl::LoadBalancing { routing_preference, mode, health_policy }),
                ip_families,
                ..Default::default()
            })
    }

    fn string_match() -> impl Strategy<Value = sec::StringMatch> {
        use sec::string_match::MatchType;
        proptest::option::of(prop_oneof![
            ".{0,6}".prop_map(MatchType::Exact),
            ".{0,6}".prop_map(MatchType::Prefix),
            ".{0,6}".prop_map(MatchType::Suffix),
            Just(MatchType::Presence(())),
        ])
        .prop_map(|match_type| sec::StringMatch { match_type })
    }

    fn cidr() -> impl Strategy<Value = sec::Address> {
        (bytes(), prop_oneof![0u32..=130, any::<u32>()]).prop_map(|(address, length)| sec::Address { address, length })
    }

    fn service_account() -> impl Strategy<Value = sec::ServiceAccountMatch> {
        (".{0,4}", ".{0,4}").prop_map(|(namespace, service_account)| sec::ServiceAccountMatch { namespace, service_account })
    }

    fn matcher() -> impl Strategy<Value = sec::Match> {
        let strings = || vec(string_match(), 0..3);
        let cidrs = || vec(cidr(), 0..3);
        let ports = || vec(small_u32(), 0..3);
        let accounts = || vec(service_account(), 0..2);
        ((strings(), strings(), strings(), strings()), (cidrs(), cidrs(), cidrs(), cidrs()), (ports(), ports(), accounts(), accounts())).prop_map(
            |((namespaces, not_namespaces, principals, not_principals), (sips, nsips, dips, ndips), (dports, ndports, sas, nsas))| sec::Match {
                namespaces,
                not_namespaces,
                principals,
                not_principals,
                source_ips: sips,
                not_source_ips: nsips,
                destination_ips: dips,
                not_destination_ips: ndips,
                destination_ports: dports,
                not_destination_ports: ndports,
                service_accounts: sas,
                not_service_accounts: nsas,
            },
        )
    }

    fn authorization_message() -> impl Strategy<Value = sec::Authorization> {
        let groups = vec(vec(vec(matcher(), 0..3), 0..3), 0..3).prop_map(|groups| {
            groups.into_iter().map(|rules| sec::Group { rules: rules.into_iter().map(|matches| sec::Rules { matches }).collect() }).collect()
        });
        (".{0,6}", ".{0,6}", enum_i32(), enum_i32(), groups).prop_map(|(name, namespace, scope, action, groups)| sec::Authorization {
            name,
            namespace,
            scope,
            action,
            groups,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_workloads_never_panic(w in workload()) {
            let one = address(&wl::Address { r#type: Some(wl::address::Type::Workload(w.clone())) });
            match one.result {
                Ok(r) => {
                    prop_assert_eq!(&*r.resource_name(), w.uid.as_str());
                    serde_json::to_value(&r).unwrap();
                }
                Err(e) => prop_assert!(!e.reason.is_empty() && e.resource.starts_with("workload ")),
            }
        }

        #[test]
        fn arbitrary_services_never_panic(s in service()) {
            let one = address(&wl::Address { r#type: Some(wl::address::Type::Service(s.clone())) });
            match one.result {
                Ok(r) => prop_assert_eq!(r.resource_name().to_string(), format!("{}/{}", s.namespace, s.hostname)),
                Err(e) => prop_assert!(!e.reason.is_empty() && e.resource.starts_with("service ")),
            }
        }

        #[test]
        fn arbitrary_authorizations_never_panic(a in authorization_message()) {
            let one = authorization(&a);
            match one.result {
                Ok(p) => {
                    prop_assert_eq!(p.key().to_string(), format!("{}/{}", a.namespace, a.name));
                    let all: Vec<&Match> = p.rules.iter().flat_map(|r| &r.clauses).flat_map(|c| &c.matches).collect();
                    for m in all {
                        prop_assert!(m.destination_ports.iter().chain(&m.not_destination_ports).all(|p| *p > 0));
                        prop_assert!(m.source_ips.iter().chain(&m.destination_ips).all(|n| n.prefix_len() <= n.max_prefix_len()));
                    }
                }
                Err(e) => prop_assert!(!e.reason.is_empty() && e.resource.starts_with("authorization ")),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
            if let Ok(a) = wl::Address::decode(bytes.as_slice()) {
                let _ = address(&a);
            }
            if let Ok(a) = sec::Authorization::decode(bytes.as_slice()) {
                let _ = authorization(&a);
            }
        }

        #[test]
        fn arbitrary_dump_json_never_panics(uid in ".{0,6}", ip in ".{0,12}", port in any::<i64>(), proto in ".{0,6}") {
            let doc = json!({
                "workloads": {"x": {"uid": uid, "workloadIps": [ip.clone()], "protocol": proto, "waypoint": {"destination": ip, "port": port}}},
                "services": [{"namespace": "ns", "hostname": "h", "ports": {"80": port}, "endpoints": {"e": {"workloadUid": "u", "port": {"1": port}}}}],
                "policies": [{"name": "p", "rules": [[[{"destinationPorts": [port], "sourceIps": ["1.2.3.4/40"]}]]]}],
            });
            let _ = from_ztunnel_dump(&doc);
        }
    }
}

/// istiod's converted PeerAuthentication policies decide as their PeerAuthentication
/// says: for each golden, applied to the workload it selects (alone, with the mesh
/// default PERMISSIVE), plaintext to each port is allowed or denied as the `-in.yaml`'s
/// modes require, and mTLS is allowed everywhere. The expectations come from the
/// PeerAuthentication inputs (STRICT/PERMISSIVE/DISABLE per port), not from our translator.
#[test]
fn converted_peer_authentication_decides_as_its_modes_say() {
    use istio_compat::authz::l4::{evaluate, Connection};
    use istio_compat::model::workload::{AddressResource, Identity, Workload, WorkloadModel};
    let Some(corpus) = corpus_dir() else { return };
    // (golden, ports whose plaintext is denied); 7070 stands for any other port.
    let cases: [(&str, &[u16]); 10] = [
        ("peer-authn-disable-port-mtls-strict", &[9090]),
        ("peer-authn-permissive-port-mtls-strict-and-permissive", &[9090]),
        ("peer-authn-permissive-root-permissive-namespace-strict-workload-ports", &[8080, 9090]),
        ("peer-authn-permissive-root-strict-namespace-permissive-workload", &[8080, 7070]),
        ("peer-authn-strict-and-disable-port-mtls", &[8080, 7070]),
        ("peer-authn-strict-and-permissive-port-mtls", &[8080, 7070]),
        ("peer-authn-strict-port-mtls-strict-and-permissive", &[9090, 7070]),
        ("peer-authn-strict-root-permissive-namespace-strict-workload", &[9090]),
        ("peer-authn-strict-root-permissive-workload", &[8080, 7070]),
        ("peer-authn-unset-port-mtls-strict", &[8080]),
    ];
    for (name, denied) in cases {
        let path = corpus.join("istio-ambient-authz-golden").join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let golden = protojson::parse_yaml_or_json(&text).unwrap();
        let message = protojson::from_json::<sec::Authorization>(golden).unwrap_or_else(|e| panic!("{name}: {e}")).message;
        let policy = authorization(&message).result.unwrap_or_else(|r| panic!("{name}: {r}"));
        let mut model = WorkloadModel::default();
        let key = policy.key();
        let namespace = if policy.namespace.is_empty() { "default".to_owned() } else { policy.namespace.to_string() };
        model.insert_policy(policy);
        let w: Workload = serde_json::from_value(json!({
            "uid": format!("Kubernetes//Pod/{namespace}/a"), "namespace": namespace, "addresses": ["10.0.0.1"],
            "identity": format!("spiffe://cluster.local/ns/{namespace}/sa/a"), "authorization_policies": [key] }))
        .unwrap();
        model.insert_address(AddressResource::Workload(std::sync::Arc::new(w.clone())));
        // The kernel guard's view of the same policies: STRICT exactly where plaintext is denied.
        let req = istio_compat::authz::l4::mtls_requirement(&model, &w);
        for port in [8080u16, 9090, 7070] {
            let strict = req.ports.get(&port).copied().unwrap_or(req.strict);
            assert_eq!(strict, denied.contains(&port), "{name}: mtls_requirement for port {port}: {req:?}");
        }
        let peer = Identity::new("cluster.local", "other", "client");
        for port in [8080u16, 9090, 7070] {
            let conn = |source| Connection { source, source_ip: ip("10.0.0.9"), destination_ip: ip("10.0.0.1"), destination_port: port };
            let plaintext = evaluate(&model, &w, &conn(None));
            assert_eq!(!plaintext.allowed(), denied.contains(&port), "{name}: plaintext to port {port}: {plaintext:?}");
            let mtls = evaluate(&model, &w, &conn(Some(&peer)));
            assert!(mtls.allowed(), "{name}: mTLS to port {port}: {mtls:?}");
        }
    }
}
