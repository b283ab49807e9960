//! Envoy `Listener` -> [`model::listener::Listener`]: addresses, filter chain matches,
//! and the network filters of each chain (HTTP connection manager, TCP proxy).

use std::time::Duration;

use prost::Message;
use xds_client::pb::envoy::config::accesslog::v3 as accesslog;
use xds_client::pb::envoy::config::listener::v3 as listener;
use xds_client::pb::envoy::extensions::access_loggers::file::v3 as file_log;
use xds_client::pb::envoy::extensions::access_loggers::stream::v3 as stream_log;
use xds_client::pb::envoy::extensions::filters::http::fault::v3 as fault_pb;
use xds_client::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use xds_client::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use xds_client::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use xds_client::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use xds_client::pb::google::protobuf::Any;

use super::common::{bool_or, socket_address, timeout, u32_or};
use super::{coverage, extension_type, route, Context, Effect, Invalid};
use crate::authz::rbac;
use crate::model::listener::{
    AccessLog, AccessLogFormat, ChainKind, ClientCert, Codec, FilterChain, FilterChainMatch, ForwardClientCert, HttpConnectionManager, Inspect, Inspection,
    Listener, PortPredicate, RouteSource, SourceType, TcpCluster, TcpProxy,
};

/// Istio's default access log format (meshConfig.accessLogFormat unset).
pub const ISTIO_DEFAULT_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

const HCM: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const HTTP_RBAC: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
const HTTP_EXT_AUTHZ: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const NETWORK_EXT_AUTHZ: &str = "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";

/// Filters that only feed Istio's telemetry or peer metadata plumbing: skipping them
/// changes no routing or policy decision (reported as ignored).
const PLUMBING_FILTERS: &[&str] = &[
    "istio.stats",
    "istio.metadata_exchange",
    "istio.alpn",
    "istio_authn",
    "connect_authority",
    "connect_baggage",
    "waypoint_upstream_peer_metadata",
    "waypoint_downstream_peer_metadata",
    "envoy.filters.http.grpc_stats",
    "envoy.filters.http.cors",
    "envoy.filters.network.set_filter_state",
];
const PLUMBING_TYPES: &[&str] = &[
    "stats.PluginConfig",
    "envoy.tcp.metadataexchange.config.MetadataExchange",
    "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
    "io.istio.network.authn.Config",
    "io.istio.http.connect_authority.Config",
    "io.istio.http.connect_baggage.Config",
    "io.istio.http.peer_metadata.Config",
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.network.set_filter_state.v3.Config",
];

fn is_plumbing(name: &str, type_name: &str) -> bool {
    PLUMBING_FILTERS.contains(&name) || PLUMBING_TYPES.contains(&type_name)
}

/// The listener's name; an unnamed one is named by its address as Istio names
/// listeners (`0.0.0.0_15090`), where Envoy would make up a UUID.
pub(super) fn name_of(l: &listener::Listener) -> String {
    if !l.name.is_empty() {
        return l.name.clone();
    }
    match l.address.as_ref().map(|a| socket_address(a, "address")) {
        Some(Ok(a)) => format!("{}_{}", a.ip(), a.port()),
        _ => String::new(),
    }
}

pub(super) fn translate(l: &listener::Listener, cx: &mut Context) -> Result<Listener, Invalid> {
    coverage::check_message(l, &cx.resource, "", &mut cx.unsupported);
    if let Some(listener::listener::ListenerSpecifier::InternalListener(_)) = &l.listener_specifier {
        return Err(Invalid::new("internal_listener", "Envoy internal listeners are not supported"));
    }
    let address = l.address.as_ref().ok_or_else(|| Invalid::new("address", "a listener needs an address"))?;
    let address = socket_address(address, "address")?;
    let mut detect_original_dst = false;
    let mut inspection = Inspection::default();
    for (i, f) in l.listener_filters.iter().enumerate() {
        let type_name = f.config_type.as_ref().map(|c| match c {
            listener::listener_filter::ConfigType::TypedConfig(any) => extension_type(any),
            listener::listener_filter::ConfigType::ConfigDiscovery(_) => "config_discovery".to_owned(),
        });
        match (f.name.as_str(), type_name.as_deref().unwrap_or("")) {
            (_, "envoy.extensions.filters.listener.original_dst.v3.OriginalDst") | ("envoy.filters.listener.original_dst", _) => detect_original_dst = true,
            // Sniffing is built in: the runtime inspects TLS and HTTP whenever a chain needs it.
            (
                _,
                t @ ("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" | "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"),
            ) => {
                let inspect = match &f.filter_disabled {
                    None => Inspect::Always,
                    Some(p) => Inspect::Unless(port_predicate(p, &format!("listener_filters[{i}].filter_disabled"))?),
                };
                if t.ends_with("TlsInspector") {
                    inspection.tls = inspect;
                } else {
                    inspection.http = inspect;
                }
            }
            (name, t) => cx.report(&format!("listener_filters[{i}] ({name})"), t, Effect::Ignored),
        }
    }
    let mut filter_chains = Vec::with_capacity(l.filter_chains.len());
    for (i, chain) in l.filter_chains.iter().enumerate() {
        filter_chains.push(filter_chain(chain, &format!("filter_chains[{i}]"), cx)?);
    }
    let default_filter_chain = l.default_filter_chain.as_ref().map(|c| filter_chain(c, "default_filter_chain", cx)).transpose()?;
    if l.filter_chain_matcher.is_some() {
        return Err(Invalid::new("filter_chain_matcher", "the xDS matcher API for filter chains is not supported; use filter_chain_match"));
    }
    let access_log = access_logs(&l.access_log, "access_log", cx);
    Ok(Listener {
        name: cx.resource_name().into(),
        address,
        bind_to_port: bool_or(&l.bind_to_port, true),
        use_original_dst: bool_or(&l.use_original_dst, false),
        detect_original_dst,
        inspection,
        filter_chains,
        default_filter_chain,
        sniff_timeout: timeout(&l.listener_filters_timeout, Some(Duration::from_secs(15))),
        continue_on_sniff_timeout: l.continue_on_listener_filters_timeout,
        access_log,
        inbound: l.traffic_direction == xds_client::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32,
    })
}

fn port_predicate(p: &listener::ListenerFilterChainMatchPredicate, path: &str) -> Result<PortPredicate, Invalid> {
    use listener::listener_filter_chain_match_predicate::Rule;
    let set = |rules: &[listener::ListenerFilterChainMatchPredicate]| {
        rules.iter().enumerate().map(|(i, r)| port_predicate(r, &format!("{path}.rules[{i}]"))).collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.rule {
        Some(Rule::AnyMatch(true)) => PortPredicate::Any,
        Some(Rule::AnyMatch(false)) | None => return Err(Invalid::new(path, "a filter_disabled rule needs a match")),
        Some(Rule::DestinationPortRange(r)) => PortPredicate::Range { start: r.start.clamp(0, 65536) as u32, end: r.end.clamp(0, 65536) as u32 },
        Some(Rule::OrMatch(m)) => PortPredicate::Or(set(&m.rules)?),
        Some(Rule::AndMatch(m)) => PortPredicate::And(set(&m.rules)?),
        Some(Rule::NotMatch(inner)) => PortPredicate::Not(Box::new(port_predicate(inner, &format!("{path}.not_match"))?)),
    })
}

fn filter_chain(chain: &listener::FilterChain, path: &str, cx: &mut Context) -> Result<FilterChain, Invalid> {
    let matcher = match &chain.filter_chain_match {
        Some(m) => chain_match(m, &format!("{path}.filter_chain_match"))?,
        None => FilterChainMatch::default(),
    };
    let downstream_tls = chain.transport_socket.is_some();
    if downstream_tls {
        // Refused for connections to the listener; its filters serve HBONE streams.
        cx.report(&format!("{path}.transport_socket"), "envoy.config.core.v3.TransportSocket", Effect::ChainRefused);
    }
    let mut kind = None;
    let mut rbac = Vec::new();
    let mut ext_authz = None;
    for (i, f) in chain.filters.iter().enumerate() {
        let fpath = format!("{path}.filters[{i}]");
        let Some(listener::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            cx.report(&format!("{fpath} ({})", f.name), "config_discovery", Effect::ChainRefused);
            kind = Some(ChainKind::Refuse { reason: format!("filter {} has no inline config", f.name) });
            break;
        };
        let type_name = extension_type(any);
        match type_name.as_str() {
            HCM => {
                let config = decode::<hcm::HttpConnectionManager>(any, &fpath)?;
                kind = Some(http_connection_manager(&config, &format!("{fpath}.typed_config"), cx)?);
            }
            TCP_PROXY => {
                let config = decode::<tcp::TcpProxy>(any, &fpath)?;
                kind = Some(ChainKind::Tcp(tcp_proxy(&config, &format!("{fpath}.typed_config"), cx)?));
            }
            NETWORK_RBAC => {
                let config = decode::<network_rbac::Rbac>(any, &fpath)?;
                rbac.push(rbac::rbac_from_network(&config).map_err(|e| within(e, &format!("{fpath}.typed_config")))?);
            }
            NETWORK_EXT_AUTHZ if ext_authz.is_none() => {
                let config = decode::<xds_client::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz>(any, &fpath)?;
                let mut parsed = crate::authz::ext_authz::ext_authz_from_network(&config).map_err(|e| within(e, &format!("{fpath}.typed_config")))?;
                parsed.rbac_before = rbac.len();
                ext_authz = Some(parsed);
            }
            t if is_plumbing(&f.name, t) => cx.report(&format!("{fpath} ({})", f.name), t, Effect::Ignored),
            t => {
                // RBAC and anything unknown: refuse the chain rather than serve it without the filter.
                cx.report(&format!("{fpath} ({})", f.name), t, Effect::ChainRefused);
                kind = Some(ChainKind::Refuse { reason: format!("network filter {} ({t}) is not supported", f.name) });
                break;
            }
        }
    }
    let kind = kind.ok_or_else(|| Invalid::new(path, "the chain has no http_connection_manager or tcp_proxy filter"))?;
    Ok(FilterChain { name: chain.name.as_str().into(), matcher, rbac, ext_authz, downstream_tls, kind })
}

fn chain_match(m: &listener::FilterChainMatch, path: &str) -> Result<FilterChainMatch, Invalid> {
    let cidrs = |ranges: &[xds_client::pb::envoy::config::core::v3::CidrRange], field: &str| -> Result<Vec<ipnet::IpNet>, Invalid> {
        ranges
            .iter()
            .map(|r| {
                let ip: std::net::IpAddr =
                    r.address_prefix.parse().map_err(|_| Invalid::new(&format!("{path}.{field}"), format!("{:?} is not an IP address", r.address_prefix)))?;
                let len = u32_or(&r.prefix_len, if ip.is_ipv4() { 32 } else { 128 });
                ipnet::IpNet::new(ip, len as u8).map(|n| n.trunc()).map_err(|e| Invalid::new(&format!("{path}.{field}"), e.to_string()))
            })
            .collect()
    };
    let destination_port =
        m.destination_port.as_ref().map(|p| u16::try_from(p.value)).transpose().map_err(|_| Invalid::new(path, "destination_port out of range"))?;
    Ok(FilterChainMatch {
        destination_port,
        prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
        server_names: m.server_names.iter().map(|s| s.to_ascii_lowercase()).collect(),
        transport_protocol: (!m.transport_protocol.is_empty()).then(|| m.transport_protocol.clone()),
        application_protocols: m.application_protocols.clone(),
        direct_source_prefix_ranges: cidrs(&m.direct_source_prefix_ranges, "direct_source_prefix_ranges")?,
        source_type: match m.source_type {
            1 => SourceType::SameIpOrLoopback,
            2 => SourceType::External,
            _ => SourceType::Any,
        },
        source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
        source_ports: m.source_ports.iter().filter_map(|p| u16::try_from(*p).ok()).collect(),
    })
}

fn decode<T: Message + Default>(any: &Any, path: &str) -> Result<T, Invalid> {
    T::decode(any.value.as_slice()).map_err(|e| Invalid::new(path, format!("cannot decode {}: {e}", any.type_url)))
}

fn http_connection_manager(h: &hcm::HttpConnectionManager, path: &str, cx: &mut Context) -> Result<ChainKind, Invalid> {
    use hcm::http_connection_manager::{CodecType, RouteSpecifier};
    coverage::check_message(h, &cx.resource, path, &mut cx.unsupported);
    let codec = match CodecType::try_from(h.codec_type) {
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        Ok(CodecType::Http3) => return Err(Invalid::new(&format!("{path}.codec_type"), "HTTP/3 is not supported")),
        _ => Codec::Auto,
    };
    let routes = match &h.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => RouteSource::Rds(rds.route_config_name.as_str().into()),
        Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(Box::new(route::translate(rc, &format!("{path}.route_config"), cx)?)),
        Some(RouteSpecifier::ScopedRoutes(_)) => return Err(Invalid::new(&format!("{path}.scoped_routes"), "scoped routes are not supported")),
        None => return Err(Invalid::new(path, "the http_connection_manager has no route_config or rds")),
    };
    let mut fault = None;
    let mut has_fault_filter = false;
    let mut rbac = Vec::new();
    let mut ext_authz = None;
    let mut jwt = None;
    let mut has_router = false;
    let mut refuse = None;
    for (i, f) in h.http_filters.iter().enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        let any = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(any)) => Some(any),
            Some(hcm::http_filter::ConfigType::ConfigDiscovery(_)) => {
                cx.report(
                    &format!("{fpath} ({})", f.name),
                    "config_discovery (ECDS)",
                    if f.is_optional { Effect::FilterSkipped } else { Effect::ChainRefused },
                );
                if !f.is_optional {
                    refuse.get_or_insert_with(|| format!("HTTP filter {} uses extension config discovery, which is not supported", f.name));
                }
                continue;
            }
            None => None,
        };
        let type_name = any.map(extension_type).unwrap_or_default();
        match (f.name.as_str(), type_name.as_str()) {
            (_, "envoy.extensions.filters.http.router.v3.Router") | ("envoy.filters.http.router", "") => {
                has_router = true;
                if let Some(any) = any {
                    let router: xds_client::pb::envoy::extensions::filters::http::router::v3::Router = decode(any, &fpath)?;
                    if router != Default::default() {
                        cx.report(&format!("{fpath}.typed_config"), &type_name, Effect::Ignored);
                    }
                }
            }
            (_, "envoy.extensions.filters.http.fault.v3.HTTPFault") | ("envoy.filters.http.fault", "") => {
                has_fault_filter = true;
                if let Some(any) = any {
                    let config: fault_pb::HttpFault = decode(any, &fpath)?;
                    fault = route::fault(&config, &format!("{fpath}.typed_config"), cx)?;
                }
            }
            (_, HTTP_RBAC) if !f.disabled => {
                if let Some(any) = any {
                    let config: http_rbac::Rbac = decode(any, &fpath)?;
                    rbac.push(rbac::rbac_from_http(&config).map_err(|e| within(e, &format!("{fpath}.typed_config")))?);
                }
            }
            (_, HTTP_EXT_AUTHZ) if !f.disabled && ext_authz.is_none() => {
                if let Some(any) = any {
                    let config: xds_client::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz = decode(any, &fpath)?;
                    let parsed = crate::authz::ext_authz::ext_authz_from_http(&config, rbac.len()).map_err(|e| within(e, &format!("{fpath}.typed_config")))?;
                    ext_authz = Some(parsed);
                }
            }
            (_, crate::authn::JWT_AUTHN_TYPE) if !f.disabled => {
                if let Some(any) = any {
                    let config: xds_client::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication = decode(any, &fpath)?;
                    if jwt.is_some() {
                        return Err(Invalid::new(&fpath, "only one jwt_authn filter per http_connection_manager is supported"));
                    }
                    jwt = Some(crate::authn::jwt_authn_from_proto(&config).map_err(|e| within(e, &format!("{fpath}.typed_config")))?);
                }
            }
            (name, t) if is_plumbing(name, t) => cx.report(&format!("{fpath} ({name})"), t, Effect::Ignored),
            (name, t) if f.is_optional || f.disabled && !is_security_filter(t) => cx.report(&format!("{fpath} ({name})"), t, Effect::FilterSkipped),
            (name, t) => {
                cx.report(&format!("{fpath} ({name})"), t, Effect::ChainRefused);
                refuse.get_or_insert_with(|| format!("HTTP filter {name} ({t}) is not supported"));
            }
        }
    }
    if let Some(reason) = refuse {
        return Ok(ChainKind::Refuse { reason });
    }
    if !has_router {
        return Err(Invalid::new(&format!("{path}.http_filters"), "the last HTTP filter must be envoy.filters.http.router"));
    }
    let protocol_options = h.common_http_protocol_options.as_ref();
    Ok(ChainKind::Http(Box::new(HttpConnectionManager {
        stat_prefix: h.stat_prefix.clone(),
        codec,
        routes,
        fault,
        has_fault_filter,
        rbac,
        ext_authz,
        jwt,
        stream_idle_timeout: timeout(&h.stream_idle_timeout, Some(Duration::from_secs(300))),
        request_headers_timeout: timeout(&h.request_headers_timeout, None),
        idle_timeout: timeout(&protocol_options.and_then(|o| o.idle_timeout), Some(Duration::from_secs(3600))),
        max_request_headers_kb: u32_or(&h.max_request_headers_kb, 60),
        upgrades: h.upgrade_configs.iter().filter(|u| bool_or(&u.enabled, true)).map(|u| u.upgrade_type.to_ascii_lowercase()).collect(),
        normalize_path: bool_or(&h.normalize_path, false),
        merge_slashes: h.merge_slashes,
        server_name: (!h.server_name.is_empty()).then(|| h.server_name.clone()),
        generate_request_id: bool_or(&h.generate_request_id, true),
        use_remote_address: bool_or(&h.use_remote_address, false),
        client_cert: client_cert(h, path)?,
        access_log: access_logs(&h.access_log, &format!("{path}.access_log"), cx),
    })))
}

fn client_cert(h: &hcm::HttpConnectionManager, path: &str) -> Result<ClientCert, Invalid> {
    use hcm::http_connection_manager::ForwardClientCertDetails as F;
    let forward = match F::try_from(h.forward_client_cert_details) {
        Ok(F::Sanitize) => ForwardClientCert::Sanitize,
        Ok(F::ForwardOnly) => ForwardClientCert::ForwardOnly,
        Ok(F::AppendForward) => ForwardClientCert::AppendForward,
        Ok(F::SanitizeSet) => ForwardClientCert::SanitizeSet,
        Ok(F::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
        Err(_) => return Err(Invalid::new(&format!("{path}.forward_client_cert_details"), format!("unknown value {}", h.forward_client_cert_details))),
    };
    let Some(d) = &h.set_current_client_cert_details else { return Ok(ClientCert { forward, ..ClientCert::default() }) };
    if d.cert || d.chain {
        return Err(Invalid::new(
            &format!("{path}.set_current_client_cert_details"),
            "the peer's certificate or chain in x-forwarded-client-cert (cert, chain) is not supported",
        ));
    }
    Ok(ClientCert { forward, subject: d.subject.is_some_and(|s| s.value), dns: d.dns, uri: d.uri })
}

/// Filters whose absence would let through traffic that policy should stop.
fn is_security_filter(type_name: &str) -> bool {
    const SECURITY: &[&str] = &["rbac", "ext_authz", "jwt_authn", "oauth2", "basic_auth", "api_key_auth", "ext_proc", "lua", "wasm"];
    SECURITY.iter().any(|s| type_name.contains(&format!(".{s}.")))
}

fn tcp_proxy(t: &tcp::TcpProxy, path: &str, cx: &mut Context) -> Result<TcpProxy, Invalid> {
    use tcp::tcp_proxy::ClusterSpecifier;
    coverage::check_message(t, &cx.resource, path, &mut cx.unsupported);
    let cluster = match &t.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => TcpCluster::Cluster(c.as_str().into()),
        Some(ClusterSpecifier::WeightedClusters(w)) => TcpCluster::Weighted(w.clusters.iter().map(|c| (c.name.as_str().into(), c.weight)).collect()),
        None => return Err(Invalid::new(path, "tcp_proxy needs a cluster")),
    };
    Ok(TcpProxy {
        stat_prefix: t.stat_prefix.clone(),
        cluster,
        idle_timeout: timeout(&t.idle_timeout, Some(Duration::from_secs(3600))),
        max_connect_attempts: u32_or(&t.max_connect_attempts, 1).max(1),
        access_log: access_logs(&t.access_log, &format!("{path}.access_log"), cx),
    })
}

fn access_logs(logs: &[accesslog::AccessLog], path: &str, cx: &mut Context) -> Vec<AccessLog> {
    let mut out = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if log.filter.is_some() {
            cx.report(&format!("{here}.filter"), "envoy.config.accesslog.v3.AccessLogFilter", Effect::Ignored);
        }
        let Some(accesslog::access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
            cx.report(&here, "access_log without typed_config", Effect::Ignored);
            continue;
        };
        let type_name = extension_type(any);
        let parsed = match type_name.as_str() {
            "envoy.extensions.access_loggers.file.v3.FileAccessLog" => file_log::FileAccessLog::decode(any.value.as_slice()).ok().map(|f| {
                use file_log::file_access_log::AccessLogFormat as F;
                let format = match f.access_log_format {
                    Some(F::LogFormat(sf)) => substitution_format(&sf),
                    Some(F::Format(s)) => text_format(&s),
                    Some(F::JsonFormat(_)) | Some(F::TypedJsonFormat(_)) => AccessLogFormat::IstioJson,
                    None => AccessLogFormat::IstioText,
                };
                AccessLog { path: f.path, format }
            }),
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" | "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
                let path = if type_name.ends_with("StdoutAccessLog") { "/dev/stdout" } else { "/dev/stderr" };
                stream_log::StdoutAccessLog::decode(any.value.as_slice()).ok().map(|s| {
                    use stream_log::stdout_access_log::AccessLogFormat as F;
                    let format = match s.access_log_format {
                        Some(F::LogFormat(sf)) => substitution_format(&sf),
                        None => AccessLogFormat::IstioText,
                    };
                    AccessLog { path: path.to_owned(), format }
                })
            }
            _ => None,
        };
        match parsed {
            Some(log) => out.push(log),
            None => cx.report(&here, &type_name, Effect::Ignored),
        }
    }
    out
}

fn substitution_format(sf: &xds_client::pb::envoy::config::core::v3::SubstitutionFormatString) -> AccessLogFormat {
    use xds_client::pb::envoy::config::core::v3::{data_source::Specifier, substitution_format_string::Format};
    match &sf.format {
        Some(Format::TextFormat(s)) => text_format(s),
        Some(Format::TextFormatSource(ds)) => match &ds.specifier {
            Some(Specifier::InlineString(s)) => text_format(s),
            _ => AccessLogFormat::IstioText,
        },
        Some(Format::JsonFormat(_)) => AccessLogFormat::IstioJson,
        None => AccessLogFormat::IstioText,
    }
}

fn text_format(s: &str) -> AccessLogFormat {
    if s.is_empty() || s == ISTIO_DEFAULT_LOG_FORMAT || s.trim_end() == ISTIO_DEFAULT_LOG_FORMAT.trim_end() {
        AccessLogFormat::IstioText
    } else {
        AccessLogFormat::Text(s.to_owned())
    }
}

/// An error from a filter's own translation, placed under the filter's path.
fn within(e: Invalid, path: &str) -> Invalid {
    Invalid { path: format!("{path}.{}", e.path), reason: e.reason }
}
