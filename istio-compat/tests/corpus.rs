//! Every file of istiod's real Envoy output in the shared corpus translates: each
//! listener, route configuration and cluster is either in the model or rejected with
//! a reason, and everything unsupported is reported with resource, type URL and field.

mod common;
use common::corpus_dir;

use istio_compat::translate::{self, Effect};

/// Counts the resources of each kind in a config dump, independently of our decoder.
fn count_resources(doc: &serde_json::Value) -> (usize, usize, usize) {
    let (mut listeners, mut routes, mut clusters) = (0, 0, 0);
    for config in doc["configs"].as_array().into_iter().flatten() {
        let t = config["@type"].as_str().unwrap_or_default();
        let len = |k: &str| config[k].as_array().map_or(0, |a| a.len());
        if t.ends_with("ListenersConfigDump") {
            listeners += len("static_listeners") + len("dynamic_listeners");
        } else if t.ends_with("RoutesConfigDump") {
            // Unnamed route configurations cannot be referenced by RDS: they are reported, not kept.
            let named =
                |k: &str| config[k].as_array().into_iter().flatten().filter(|r| r["route_config"]["name"].as_str().is_some_and(|n| !n.is_empty())).count();
            routes += named("static_route_configs") + named("dynamic_route_configs");
        } else if t.ends_with("ClustersConfigDump") {
            clusters += len("static_clusters") + len("dynamic_active_clusters") + len("dynamic_warming_clusters");
        } else if t.ends_with("BootstrapConfigDump") {
            let sr = &config["bootstrap"]["static_resources"];
            listeners += sr["listeners"].as_array().map_or(0, |a| a.len());
            clusters += sr["clusters"].as_array().map_or(0, |a| a.len());
        }
    }
    (listeners, routes, clusters)
}

#[test]
fn every_envoy_config_dump_translates() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = corpus.join("istio-envoy-configdump");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 6, "expected the six istiod dumps in {}", dir.display());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let (listeners, routes, clusters) = count_resources(&doc);
        let t = translate::from_document(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rejected = |kind: &str| t.rejected.iter().filter(|r| r.resource.starts_with(kind)).count();
        let name = path.file_name().unwrap().to_string_lossy();
        eprintln!(
            "{name}: {}/{listeners} listeners, {}/{routes} routes, {}/{clusters} clusters translated; {} rejected, {} unsupported",
            t.model.listeners.len(),
            t.model.routes.len(),
            t.model.clusters.len(),
            t.rejected.len(),
            t.unsupported.len()
        );
        for r in &t.rejected {
            eprintln!("  {r}");
        }
        // Nothing is lost silently: translated + rejected = present in the dump.
        assert_eq!(t.model.listeners.len() + rejected("listener"), listeners, "{name}: listeners");
        assert_eq!(t.model.routes.len() + rejected("route"), routes, "{name}: routes");
        assert_eq!(t.model.clusters.len() + rejected("cluster"), clusters, "{name}: clusters");
        for u in &t.unsupported {
            assert!(!u.resource.is_empty() && !u.type_url.is_empty() && !u.field.is_empty(), "{name}: vague report {u:?}");
        }
        for r in &t.rejected {
            assert!(!r.reason.is_empty(), "{name}: rejection without reason");
        }
    }
}

#[test]
fn sidecar_dump_reports_what_it_skips() {
    let Some(corpus) = corpus_dir() else { return };
    let text = std::fs::read_to_string(corpus.join("istio-envoy-configdump/sidecar_config_dump_with_rbac.json")).unwrap();
    let t = translate::from_document(&text).unwrap();
    // Istio's telemetry filters are reported as ignored, by their type.
    assert!(t.unsupported.iter().any(|u| u.type_url == "type.googleapis.com/stats.PluginConfig" && u.effect == Effect::Ignored));
    // RBAC filters are translated (not reported), onto the chains that carry them:
    // network RBAC on the chain, HTTP RBAC on its connection manager.
    let rbac: Vec<_> = t.unsupported.iter().filter(|u| u.type_url.ends_with("rbac.v3.RBAC")).collect();
    assert!(rbac.is_empty(), "{rbac:?}");
    let chains = t.model.listeners.values().flat_map(|l| l.filter_chains.iter().chain(&l.default_filter_chain));
    let network: usize = chains.map(|c| c.rbac.len()).sum();
    assert!(network > 0, "the inbound TCP chains' network RBAC filters are on their chains");
    // What still refuses a chain: downstream TLS. The CUSTOM action's ext_authz filters
    // (on the HTTP chains that carry RBAC here) are translated onto their connection
    // managers at their place in the chain: in this dump the ALLOW RBAC filter comes
    // first, then CUSTOM's shadow RBAC, then ext_authz, and they run in that order.
    let refused: Vec<_> = t.unsupported.iter().filter(|u| u.effect == Effect::ChainRefused).collect();
    assert!(refused.iter().all(|u| u.type_url.ends_with("TransportSocket")), "{refused:#?}");
    let chains = t.model.listeners.values().flat_map(|l| l.filter_chains.iter().chain(&l.default_filter_chain));
    let custom: Vec<_> = chains
        .filter_map(|c| match &c.kind {
            istio_compat::model::listener::ChainKind::Http(h) => h.ext_authz.as_ref(),
            _ => None,
        })
        .collect();
    assert!(!custom.is_empty(), "the ext_authz filters are on their connection managers");
    assert!(custom.iter().all(|e| e.rbac_before == 2 && e.service.cluster() == "outbound|9191||sample-ext-authz-grpc"), "{custom:#?}");
    // The virtual outbound listener is there, handing connections on by original destination.
    let outbound = t.model.listeners.values().find(|l| l.address.port() == 15001).expect("virtualOutbound");
    assert!(outbound.use_original_dst);
}

#[test]
fn gateway_retry_policy_is_translated() {
    use istio_compat::model::retry::RetryOn;
    use istio_compat::model::route::Action;
    let Some(corpus) = corpus_dir() else { return };
    let text = std::fs::read_to_string(corpus.join("istio-envoy-configdump/gateway_routes_retry_policy.json")).unwrap();
    let t = translate::from_document(&text).unwrap();
    let table = t.model.routes.get("http.8080").expect("route http.8080");
    let vh = table.virtual_host("httpbin.example.com").expect("virtual host");
    let route = vh.routes.first().expect("a route");
    let Action::Forward(fwd) = &route.action else { panic!("forward action") };
    let retry = fwd.retry_policy.as_ref().expect("retry policy");
    assert_eq!(retry.num_retries, 2);
    assert!(retry.retry_on.contains(RetryOn::CONNECT_FAILURE) && retry.retry_on.contains(RetryOn::GRPC_UNAVAILABLE));
    assert_eq!(retry.retriable_status_codes, [503]);
    assert!(retry.avoid_previous_hosts);
    assert_eq!(retry.host_selection_max_attempts, 5);
    assert_eq!(fwd.timeout, None, "timeout 0s disables the route timeout");
}
