//! Which fields of Envoy's messages node-proxy honours, and a walk over a decoded
//! resource that reports every set field outside that list, by path.
//!
//! The table is the single statement of coverage: translation code reads only fields
//! listed here, and anything else istiod sets is reported, never silently dropped.
//! `Any` payloads are not walked here; the translator decides about each extension
//! and walks the payloads it understands.

use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};

use super::{Effect, Unsupported};

/// How a listed field is covered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cover {
    /// Honoured; if it is a message, its own fields are checked too.
    Walk,
    /// Honoured or deliberately without effect here (names, stats, metadata); not descended.
    Opaque,
}

use Cover::{Opaque, Walk};

type FieldList = &'static [(&'static str, Cover)];

/// Message full name -> the fields node-proxy covers.
static SUPPORTED: &[(&str, FieldList)] = &[
    // Listeners.
    (
        "envoy.config.listener.v3.Listener",
        &[
            ("name", Opaque),
            ("address", Walk),
            ("internal_listener", Opaque),
            ("filter_chains", Walk),
            ("default_filter_chain", Walk),
            ("use_original_dst", Opaque),
            ("bind_to_port", Opaque),
            ("listener_filters", Walk),
            ("listener_filters_timeout", Opaque),
            ("continue_on_listener_filters_timeout", Opaque),
            ("traffic_direction", Opaque),
            ("access_log", Walk),
            ("stat_prefix", Opaque),
            ("metadata", Opaque),
            // Buffer sizing and socket tuning: our runtime has its own bounds.
            ("per_connection_buffer_limit_bytes", Opaque),
            ("transparent", Opaque),
            ("freebind", Opaque),
            ("reuse_port", Opaque),
            ("enable_reuse_port", Opaque),
        ],
    ),
    ("envoy.config.core.v3.Address", &[("socket_address", Walk)]),
    ("envoy.config.core.v3.SocketAddress", &[("address", Opaque), ("port_value", Opaque), ("protocol", Opaque), ("ipv4_compat", Opaque)]),
    ("envoy.config.listener.v3.ListenerFilter", &[("name", Opaque), ("typed_config", Opaque), ("filter_disabled", Opaque)]),
    (
        "envoy.config.listener.v3.FilterChain",
        &[("name", Opaque), ("filter_chain_match", Walk), ("filters", Walk), ("metadata", Opaque), ("transport_socket", Opaque)],
    ),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            ("destination_port", Opaque),
            ("prefix_ranges", Walk),
            ("server_names", Opaque),
            ("transport_protocol", Opaque),
            ("application_protocols", Opaque),
            ("direct_source_prefix_ranges", Walk),
            ("source_type", Opaque),
            ("source_prefix_ranges", Walk),
            ("source_ports", Opaque),
        ],
    ),
    ("envoy.config.core.v3.CidrRange", &[("address_prefix", Opaque), ("prefix_len", Opaque)]),
    ("envoy.config.listener.v3.Filter", &[("name", Opaque), ("typed_config", Opaque)]),
    ("envoy.config.accesslog.v3.AccessLog", &[("name", Opaque), ("typed_config", Opaque)]),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            ("codec_type", Opaque),
            ("stat_prefix", Opaque),
            ("route_config", Walk),
            ("rds", Walk),
            ("http_filters", Walk),
            ("stream_idle_timeout", Opaque),
            ("request_headers_timeout", Opaque),
            ("common_http_protocol_options", Walk),
            ("max_request_headers_kb", Opaque),
            ("upgrade_configs", Walk),
            ("normalize_path", Opaque),
            ("merge_slashes", Opaque),
            ("server_name", Opaque),
            ("generate_request_id", Opaque),
            ("use_remote_address", Opaque),
            ("access_log", Walk),
            ("forward_client_cert_details", Opaque),
            ("set_current_client_cert_details", Opaque),
            // Envoy features whose absence changes no routing or policy decision here.
            ("tracing", Opaque),
            ("request_id_extension", Opaque),
            ("preserve_external_request_id", Opaque),
            ("http_protocol_options", Opaque),
            ("http2_protocol_options", Opaque),
            ("internal_address_config", Opaque),
            ("add_user_agent", Opaque),
            ("stream_error_on_invalid_http_message", Opaque),
            ("xff_num_trusted_hops", Opaque),
            ("skip_xff_append", Opaque),
            ("delayed_close_timeout", Opaque),
            ("drain_timeout", Opaque),
        ],
    ),
    ("envoy.extensions.filters.network.http_connection_manager.v3.Rds", &[("route_config_name", Opaque), ("config_source", Opaque)]),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &[("name", Opaque), ("typed_config", Opaque), ("is_optional", Opaque), ("disabled", Opaque)],
    ),
    ("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig", &[("upgrade_type", Opaque), ("enabled", Opaque)]),
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &[("idle_timeout", Opaque), ("max_requests_per_connection", Opaque), ("max_headers_count", Opaque), ("headers_with_underscores_action", Opaque)],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &[
            ("stat_prefix", Opaque),
            ("cluster", Opaque),
            ("weighted_clusters", Walk),
            ("idle_timeout", Opaque),
            ("max_connect_attempts", Opaque),
            ("access_log", Walk),
            ("metadata_match", Opaque),
        ],
    ),
    ("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster", &[("clusters", Walk)]),
    ("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight", &[("name", Opaque), ("weight", Opaque)]),
    // Routes.
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            ("name", Opaque),
            ("virtual_hosts", Walk),
            ("request_headers_to_add", Walk),
            ("request_headers_to_remove", Opaque),
            ("response_headers_to_add", Walk),
            ("response_headers_to_remove", Opaque),
            ("ignore_port_in_host_matching", Opaque),
            ("validate_clusters", Opaque),
            ("max_direct_response_body_size_bytes", Opaque),
        ],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            ("name", Opaque),
            ("domains", Opaque),
            ("routes", Walk),
            ("request_headers_to_add", Walk),
            ("request_headers_to_remove", Opaque),
            ("response_headers_to_add", Walk),
            ("response_headers_to_remove", Opaque),
            ("retry_policy", Walk),
            ("include_request_attempt_count", Opaque),
            ("include_attempt_count_in_response", Opaque),
            ("typed_per_filter_config", Opaque),
            ("metadata", Opaque),
        ],
    ),
    (
        "envoy.config.route.v3.Route",
        &[
            ("name", Opaque),
            ("match", Walk),
            ("route", Walk),
            ("redirect", Walk),
            ("direct_response", Walk),
            ("request_headers_to_add", Walk),
            ("request_headers_to_remove", Opaque),
            ("response_headers_to_add", Walk),
            ("response_headers_to_remove", Opaque),
            ("typed_per_filter_config", Opaque),
            ("metadata", Opaque),
            ("decorator", Opaque),
            ("stat_prefix", Opaque),
        ],
    ),
    (
        "envoy.config.route.v3.RouteMatch",
        &[
            ("prefix", Opaque),
            ("path", Opaque),
            ("safe_regex", Walk),
            ("path_separated_prefix", Opaque),
            ("connect_matcher", Opaque),
            ("case_sensitive", Opaque),
            ("headers", Walk),
            ("query_parameters", Walk),
            ("grpc", Opaque),
            ("runtime_fraction", Walk),
        ],
    ),
    ("envoy.config.core.v3.RuntimeFractionalPercent", &[("default_value", Opaque), ("runtime_key", Opaque)]),
    ("envoy.type.matcher.v3.RegexMatcher", &[("regex", Opaque), ("google_re2", Opaque)]),
    ("envoy.type.matcher.v3.RegexMatchAndSubstitute", &[("pattern", Walk), ("substitution", Opaque)]),
    (
        "envoy.type.matcher.v3.StringMatcher",
        &[("exact", Opaque), ("prefix", Opaque), ("suffix", Opaque), ("contains", Opaque), ("safe_regex", Walk), ("ignore_case", Opaque)],
    ),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            ("name", Opaque),
            ("exact_match", Opaque),
            ("safe_regex_match", Walk),
            ("range_match", Opaque),
            ("present_match", Opaque),
            ("prefix_match", Opaque),
            ("suffix_match", Opaque),
            ("contains_match", Opaque),
            ("string_match", Walk),
            ("invert_match", Opaque),
            ("treat_missing_header_as_empty", Opaque),
        ],
    ),
    ("envoy.config.route.v3.QueryParameterMatcher", &[("name", Opaque), ("string_match", Walk), ("present_match", Opaque)]),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            ("cluster", Opaque),
            ("cluster_header", Opaque),
            ("weighted_clusters", Walk),
            ("cluster_not_found_response_code", Opaque),
            ("prefix_rewrite", Opaque),
            ("regex_rewrite", Walk),
            ("host_rewrite_literal", Opaque),
            ("auto_host_rewrite", Opaque),
            ("timeout", Opaque),
            ("idle_timeout", Opaque),
            ("retry_policy", Walk),
            ("request_mirror_policies", Walk),
            ("hash_policy", Walk),
            ("max_grpc_timeout", Opaque),
            ("grpc_timeout_offset", Opaque),
            ("max_stream_duration", Walk),
            ("upgrade_configs", Walk),
            ("priority", Opaque),
        ],
    ),
    ("envoy.config.route.v3.RouteAction.MaxStreamDuration", &[("grpc_timeout_header_max", Opaque), ("grpc_timeout_header_offset", Opaque)]),
    ("envoy.config.route.v3.RouteAction.UpgradeConfig", &[("upgrade_type", Opaque), ("enabled", Opaque)]),
    (
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &[("cluster", Opaque), ("runtime_fraction", Walk), ("trace_sampled", Opaque), ("disable_shadow_host_suffix_append", Opaque)],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy",
        &[("header", Walk), ("cookie", Walk), ("connection_properties", Opaque), ("query_parameter", Opaque), ("terminal", Opaque)],
    ),
    ("envoy.config.route.v3.RouteAction.HashPolicy.Header", &[("header_name", Opaque), ("regex_rewrite", Walk)]),
    ("envoy.config.route.v3.RouteAction.HashPolicy.Cookie", &[("name", Opaque), ("ttl", Opaque), ("path", Opaque)]),
    ("envoy.config.route.v3.WeightedCluster", &[("clusters", Walk), ("total_weight", Opaque)]),
    (
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &[
            ("name", Opaque),
            ("weight", Opaque),
            ("request_headers_to_add", Walk),
            ("request_headers_to_remove", Opaque),
            ("response_headers_to_add", Walk),
            ("response_headers_to_remove", Opaque),
            ("host_rewrite_literal", Opaque),
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            ("retry_on", Opaque),
            ("num_retries", Opaque),
            ("per_try_timeout", Opaque),
            ("per_try_idle_timeout", Opaque),
            ("retry_host_predicate", Opaque),
            ("host_selection_retry_max_attempts", Opaque),
            ("retriable_status_codes", Opaque),
            ("retry_back_off", Opaque),
            ("retriable_headers", Walk),
            ("retriable_request_headers", Walk),
        ],
    ),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            ("https_redirect", Opaque),
            ("scheme_redirect", Opaque),
            ("host_redirect", Opaque),
            ("port_redirect", Opaque),
            ("path_redirect", Opaque),
            ("prefix_rewrite", Opaque),
            ("regex_rewrite", Walk),
            ("response_code", Opaque),
            ("strip_query", Opaque),
        ],
    ),
    ("envoy.config.route.v3.DirectResponseAction", &[("status", Opaque), ("body", Walk)]),
    ("envoy.config.core.v3.DataSource", &[("inline_string", Opaque), ("inline_bytes", Opaque)]),
    ("envoy.config.core.v3.HeaderValueOption", &[("header", Opaque), ("append", Opaque), ("append_action", Opaque), ("keep_empty_value", Opaque)]),
    // Fault injection.
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        &[("delay", Walk), ("abort", Walk), ("upstream_cluster", Opaque), ("headers", Walk), ("downstream_nodes", Opaque), ("max_active_faults", Opaque)],
    ),
    ("envoy.extensions.filters.common.fault.v3.FaultDelay", &[("fixed_delay", Opaque), ("header_delay", Opaque), ("percentage", Opaque)]),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort",
        &[("http_status", Opaque), ("grpc_status", Opaque), ("header_abort", Opaque), ("percentage", Opaque)],
    ),
    // Clusters and endpoints.
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            ("name", Opaque),
            ("type", Opaque),
            ("eds_cluster_config", Walk),
            ("connect_timeout", Opaque),
            ("lb_policy", Opaque),
            ("load_assignment", Walk),
            ("max_requests_per_connection", Opaque),
            ("circuit_breakers", Walk),
            ("common_http_protocol_options", Walk),
            ("http2_protocol_options", Opaque),
            ("http_protocol_options", Opaque),
            ("typed_extension_protocol_options", Opaque),
            ("dns_refresh_rate", Opaque),
            ("dns_lookup_family", Opaque),
            ("respect_dns_ttl", Opaque),
            ("outlier_detection", Walk),
            ("common_lb_config", Walk),
            ("least_request_lb_config", Walk),
            ("ring_hash_lb_config", Walk),
            ("maglev_lb_config", Walk),
            ("round_robin_lb_config", Opaque),
            ("original_dst_lb_config", Opaque),
            ("per_connection_buffer_limit_bytes", Opaque),
            ("metadata", Opaque),
            ("alt_stat_name", Opaque),
            ("cleanup_interval", Opaque),
            ("upstream_connection_options", Opaque),
            ("protocol_selection", Opaque),
            ("transport_socket", Opaque),
            ("transport_socket_matches", Opaque),
        ],
    ),
    ("envoy.config.cluster.v3.Cluster.EdsClusterConfig", &[("service_name", Opaque), ("eds_config", Opaque)]),
    ("envoy.config.cluster.v3.Cluster.LeastRequestLbConfig", &[("choice_count", Opaque)]),
    ("envoy.config.cluster.v3.Cluster.RingHashLbConfig", &[("minimum_ring_size", Opaque), ("maximum_ring_size", Opaque), ("hash_function", Opaque)]),
    ("envoy.config.cluster.v3.Cluster.MaglevLbConfig", &[("table_size", Opaque)]),
    ("envoy.config.cluster.v3.Cluster.CommonLbConfig", &[("healthy_panic_threshold", Opaque)]),
    ("envoy.config.cluster.v3.CircuitBreakers", &[("thresholds", Walk)]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            ("priority", Opaque),
            ("max_connections", Opaque),
            ("max_pending_requests", Opaque),
            ("max_requests", Opaque),
            ("max_retries", Opaque),
            ("retry_budget", Opaque),
            ("track_remaining", Opaque),
        ],
    ),
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            ("consecutive_5xx", Opaque),
            ("interval", Opaque),
            ("base_ejection_time", Opaque),
            ("max_ejection_time", Opaque),
            ("max_ejection_percent", Opaque),
            ("enforcing_consecutive_5xx", Opaque),
            ("enforcing_success_rate", Opaque),
            ("success_rate_minimum_hosts", Opaque),
            ("success_rate_request_volume", Opaque),
            ("success_rate_stdev_factor", Opaque),
            ("consecutive_gateway_failure", Opaque),
            ("enforcing_consecutive_gateway_failure", Opaque),
            ("split_external_local_origin_errors", Opaque),
            ("consecutive_local_origin_failure", Opaque),
            ("enforcing_consecutive_local_origin_failure", Opaque),
            ("failure_percentage_threshold", Opaque),
            ("enforcing_failure_percentage", Opaque),
            ("failure_percentage_minimum_hosts", Opaque),
            ("failure_percentage_request_volume", Opaque),
        ],
    ),
    ("envoy.config.endpoint.v3.ClusterLoadAssignment", &[("cluster_name", Opaque), ("endpoints", Walk), ("policy", Walk)]),
    ("envoy.config.endpoint.v3.LocalityLbEndpoints", &[("locality", Opaque), ("lb_endpoints", Walk), ("load_balancing_weight", Opaque), ("priority", Opaque)]),
    ("envoy.config.endpoint.v3.LbEndpoint", &[("endpoint", Walk), ("health_status", Opaque), ("metadata", Opaque), ("load_balancing_weight", Opaque)]),
    ("envoy.config.endpoint.v3.Endpoint", &[("address", Walk), ("hostname", Opaque), ("health_check_config", Opaque)]),
];

fn supported_fields(message: &str) -> Option<FieldList> {
    SUPPORTED.iter().find(|(name, _)| *name == message).map(|(_, fields)| *fields)
}

/// Reports every set field of `message` (recursively) that the table does not cover.
pub fn check(message: &DynamicMessage, resource: &str, path: &str, out: &mut Vec<Unsupported>) {
    let desc = message.descriptor();
    let Some(fields) = supported_fields(desc.full_name()) else {
        out.push(Unsupported {
            resource: resource.to_owned(),
            type_url: format!("type.googleapis.com/{}", desc.full_name()),
            field: if path.is_empty() { "*".to_owned() } else { path.to_owned() },
            effect: Effect::Ignored,
        });
        return;
    };
    for (field, value) in message.fields() {
        let name = field.name();
        let field_path = if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
        match fields.iter().find(|(n, _)| *n == name) {
            None => out.push(Unsupported {
                resource: resource.to_owned(),
                type_url: format!("type.googleapis.com/{}", desc.full_name()),
                field: field_path,
                effect: Effect::Ignored,
            }),
            Some((_, Opaque)) => {}
            Some((_, Walk)) => {
                if !matches!(field.kind(), Kind::Message(_)) {
                    continue;
                }
                match value {
                    Value::Message(m) => check(m, resource, &field_path, out),
                    Value::List(items) => {
                        for (i, item) in items.iter().enumerate() {
                            if let Value::Message(m) = item {
                                check(m, resource, &format!("{field_path}[{i}]"), out);
                            }
                        }
                    }
                    Value::Map(entries) => {
                        for (k, v) in entries {
                            if let Value::Message(m) = v {
                                check(m, resource, &format!("{field_path}[{k:?}]"), out);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Encodes a prost struct and checks it.
pub fn check_message<T: prost::Message + prost::Name>(message: &T, resource: &str, path: &str, out: &mut Vec<Unsupported>) {
    let Some(desc) = xds_client::protojson::pool().get_message_by_name(&T::full_name()) else {
        return;
    };
    match DynamicMessage::decode(desc, message.encode_to_vec().as_slice()) {
        Ok(dynamic) => check(&dynamic, resource, path, out),
        Err(e) => out.push(Unsupported {
            resource: resource.to_owned(),
            type_url: T::type_url(),
            field: format!("{path} (undecodable: {e})"),
            effect: Effect::Ignored,
        }),
    }
}

/// Whether an endpoint assignment sets only fields the table above covers, decided on
/// the prost struct: the common case of an EDS update then skips the reflective check
/// (re-encoding and decoding every assignment as a `DynamicMessage`, and holding the
/// descriptor pool), which dominated the cost of applying endpoint churn. Conservative:
/// `false` whenever anything else is set, and [`check_message`] then reports exactly what.
pub fn load_assignment_fully_supported(cla: &xds_client::pb::envoy::config::endpoint::v3::ClusterLoadAssignment) -> bool {
    use xds_client::pb::envoy::config::core::v3::address::Address as A;
    use xds_client::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use xds_client::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    cla.named_endpoints.is_empty()
        && cla.policy.is_none()
        && cla.endpoints.iter().all(|l| {
            l.metadata.is_none()
                && l.proximity.is_none()
                && l.lb_config.is_none()
                && l.lb_endpoints.iter().all(|lb| match &lb.host_identifier {
                    None => true,
                    Some(HostIdentifier::EndpointName(_)) => false,
                    Some(HostIdentifier::Endpoint(e)) => {
                        e.additional_addresses.is_empty()
                            && match e.address.as_ref().and_then(|a| a.address.as_ref()) {
                                None => true,
                                Some(A::SocketAddress(s)) => {
                                    s.resolver_name.is_empty()
                                        && s.network_namespace_filepath.is_empty()
                                        && !matches!(s.port_specifier, Some(PortSpecifier::NamedPort(_)))
                                }
                                Some(_) => false,
                            }
                    }
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_client::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

    fn cla(json: serde_json::Value) -> ClusterLoadAssignment {
        xds_client::protojson::from_json::<ClusterLoadAssignment>(json).unwrap().message
    }

    /// The fast predicate never hides what the reflective check reports, and says
    /// "fully supported" for the assignments istiod sends.
    #[test]
    fn fast_load_assignment_check_agrees_with_the_table() {
        use serde_json::json;
        let ep = |extra: serde_json::Value| {
            let mut e = json!({ "endpoint": { "address": { "socket_address": { "address": "10.0.0.1", "port_value": 80 } } } });
            if let (Some(e), Some(x)) = (e.as_object_mut(), extra.as_object()) {
                for (k, v) in x {
                    e.insert(k.clone(), v.clone());
                }
            }
            e
        };
        let cases = [
            (json!({ "cluster_name": "c", "endpoints": [{ "lb_endpoints": [ep(json!({}))] }] }), true),
            (
                json!({ "cluster_name": "c", "endpoints": [{ "locality": { "region": "r" }, "priority": 1, "load_balancing_weight": 3,
                        "lb_endpoints": [ep(json!({ "health_status": "HEALTHY", "load_balancing_weight": 2, "metadata": { "filter_metadata": { "istio": { "workload": "w" } } } }))] }] }),
                true,
            ),
            (json!({ "cluster_name": "c", "policy": { "overprovisioning_factor": 140 } }), false),
            (json!({ "cluster_name": "c", "endpoints": [{ "lb_endpoints": [{ "endpoint_name": "n" }] }] }), false),
            (
                json!({ "cluster_name": "c", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": { "address": "a", "named_port": "p" } } } }] }] }),
                false,
            ),
            (json!({ "cluster_name": "c", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "pipe": { "path": "/p" } } } }] }] }), false),
            (json!({ "cluster_name": "c", "endpoints": [{ "metadata": {}, "lb_endpoints": [] , "proximity": 1 }] }), false),
        ];
        for (json, fast) in cases {
            let m = cla(json.clone());
            let mut out = Vec::new();
            check_message(&m, "c", "", &mut out);
            assert_eq!(load_assignment_fully_supported(&m), fast, "{json}");
            if fast {
                assert!(out.is_empty(), "the fast check hides {out:?} for {json}");
            } else {
                assert!(!out.is_empty(), "the reflective check finds nothing unsupported in {json}: the fast check is needlessly strict");
            }
        }
    }
}
