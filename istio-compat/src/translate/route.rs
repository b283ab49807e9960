//! Envoy `RouteConfiguration` -> [`model::route::RouteTable`], with retry policies,
//! weighted clusters, rewrites, mirrors, hash policies and per-route fault config.

use prost::Message;
use xds_client::pb::envoy::config::route::v3 as route;
use xds_client::pb::envoy::extensions::filters::http::fault::v3 as fault_pb;
use xds_client::pb::google::protobuf::Any;

use super::common::{
    bool_or, duration, fractional_percent, header_matcher, header_matchers, header_mutation, join, opt_duration, regex, regex_rewrite, runtime_percent,
    string_matcher, timeout, u32_or,
};
use super::{coverage, extension_type, Context, Effect, Invalid};
use crate::model::common::Percent;
use crate::model::fault::{AbortKind, DelayKind, FaultAbort, FaultConfig, FaultDelay};
use crate::model::retry::{RetryOn, RetryPolicy};
use crate::model::route::{
    Action, ClusterSpecifier, DirectResponse, ForwardAction, GrpcTimeout, HashPolicy, HashSource, MirrorPolicy, PathMatch, QueryParameterMatcher,
    RedirectAction, RedirectPath, Route, RouteMatch, RouteTable, VirtualHost, WeightedCluster, WeightedClusters, DEFAULT_ROUTE_TIMEOUT,
};

const FAULT_FILTER: &str = "envoy.filters.http.fault";

pub(super) fn translate(rc: &route::RouteConfiguration, path: &str, cx: &mut Context) -> Result<RouteTable, Invalid> {
    coverage::check_message(rc, &cx.resource, path, &mut cx.unsupported);
    let at = |field: &str| join(path, field);
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        virtual_hosts.push(virtual_host(vh, &at(&format!("virtual_hosts[{i}]")), cx)?);
    }
    let mut table = RouteTable::new(&rc.name, virtual_hosts);
    table.request_headers = header_mutation(&rc.request_headers_to_add, &rc.request_headers_to_remove, &at("request_headers_to_add"))?;
    table.response_headers = header_mutation(&rc.response_headers_to_add, &rc.response_headers_to_remove, &at("response_headers_to_add"))?;
    table.ignore_port_in_host_matching = rc.ignore_port_in_host_matching;
    Ok(table)
}

fn virtual_host(vh: &route::VirtualHost, path: &str, cx: &mut Context) -> Result<VirtualHost, Invalid> {
    if vh.domains.is_empty() {
        return Err(Invalid::new(path, "a virtual host needs at least one domain"));
    }
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        if let Some(r) = one_route(r, &format!("{path}.routes[{i}]"), cx)? {
            routes.push(r);
        }
    }
    Ok(VirtualHost {
        name: vh.name.as_str().into(),
        domains: vh.domains.clone(),
        routes,
        request_headers: header_mutation(&vh.request_headers_to_add, &vh.request_headers_to_remove, &format!("{path}.request_headers_to_add"))?,
        response_headers: header_mutation(&vh.response_headers_to_add, &vh.response_headers_to_remove, &format!("{path}.response_headers_to_add"))?,
        retry_policy: vh.retry_policy.as_ref().map(|p| retry_policy(p, &format!("{path}.retry_policy"), cx)).transpose()?,
        include_request_attempt_count: vh.include_request_attempt_count,
        include_attempt_count_in_response: vh.include_attempt_count_in_response,
        fault: per_filter_fault(&vh.typed_per_filter_config, &format!("{path}.typed_per_filter_config"), cx)?,
    })
}

/// A route, or `None` when it is skipped (reported) because its action is unsupported.
fn one_route(r: &route::Route, path: &str, cx: &mut Context) -> Result<Option<Route>, Invalid> {
    use route::route::Action as A;
    let matcher = route_match(r.r#match.as_ref().ok_or_else(|| Invalid::new(path, "a route needs a match"))?, &format!("{path}.match"))?;
    let action = match &r.action {
        Some(A::Route(ra)) => Action::Forward(Box::new(forward(ra, &format!("{path}.route"), cx)?)),
        Some(A::Redirect(rd)) => Action::Redirect(Box::new(redirect(rd, &format!("{path}.redirect"))?)),
        Some(A::DirectResponse(dr)) => Action::DirectResponse(direct_response(dr, &format!("{path}.direct_response"))?),
        Some(A::FilterAction(_)) | Some(A::NonForwardingAction(_)) | None => {
            // Only meaningful to filters we do not run; Envoy would not forward either.
            cx.report(&format!("{path} (action)"), "envoy.config.route.v3.Route", Effect::RouteSkipped);
            return Ok(None);
        }
    };
    Ok(Some(Route {
        name: r.name.as_str().into(),
        matcher,
        action,
        request_headers: header_mutation(&r.request_headers_to_add, &r.request_headers_to_remove, &format!("{path}.request_headers_to_add"))?,
        response_headers: header_mutation(&r.response_headers_to_add, &r.response_headers_to_remove, &format!("{path}.response_headers_to_add"))?,
        fault: per_filter_fault(&r.typed_per_filter_config, &format!("{path}.typed_per_filter_config"), cx)?,
    }))
}

fn route_match(m: &route::RouteMatch, path: &str) -> Result<RouteMatch, Invalid> {
    use route::route_match::PathSpecifier as P;
    let path_match = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        Some(P::SafeRegex(r)) => PathMatch::Regex(regex(r, &format!("{path}.safe_regex"))?),
        Some(P::PathSeparatedPrefix(p)) => {
            if p.contains(['?', '#']) || p.ends_with('/') {
                return Err(Invalid::new(&format!("{path}.path_separated_prefix"), "must not contain ? or # nor end with /"));
            }
            PathMatch::SeparatedPrefix(p.clone())
        }
        Some(P::ConnectMatcher(_)) => PathMatch::Connect,
        Some(P::PathMatchPolicy(_)) => return Err(Invalid::new(&format!("{path}.path_match_policy"), "URI template matching is not supported")),
        None => return Err(Invalid::new(path, "a route match needs a path specifier")),
    };
    let mut query_parameters = Vec::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        use route::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let value = match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(s)) => Some(string_matcher(s, &format!("{path}.query_parameters[{i}]"))?),
            Some(Q::PresentMatch(_)) | None => None,
        };
        query_parameters.push(QueryParameterMatcher { name: q.name.clone(), value });
    }
    Ok(RouteMatch {
        path: path_match,
        case_sensitive: bool_or(&m.case_sensitive, true),
        headers: header_matchers(&m.headers, &format!("{path}.headers"))?,
        query_parameters,
        grpc: m.grpc.is_some(),
        fraction: m.runtime_fraction.as_ref().map(|_| runtime_percent(&m.runtime_fraction, Percent::ALWAYS)),
    })
}

fn forward(ra: &route::RouteAction, path: &str, cx: &mut Context) -> Result<ForwardAction, Invalid> {
    use route::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
    let cluster = match &ra.cluster_specifier {
        Some(C::Cluster(c)) => ClusterSpecifier::Cluster(c.as_str().into()),
        Some(C::ClusterHeader(h)) => ClusterSpecifier::Header(h.to_ascii_lowercase()),
        Some(C::WeightedClusters(w)) => ClusterSpecifier::Weighted(weighted(w, &format!("{path}.weighted_clusters"))?),
        Some(C::ClusterSpecifierPlugin(_)) | Some(C::InlineClusterSpecifierPlugin(_)) => {
            return Err(Invalid::new(&format!("{path}.cluster_specifier_plugin"), "cluster specifier plugins are not supported"))
        }
        None => return Err(Invalid::new(path, "a route action needs a cluster")),
    };
    let host_rewrite = match &ra.host_rewrite_specifier {
        Some(H::HostRewriteLiteral(h)) => Some(h.clone()),
        Some(H::AutoHostRewrite(v)) if v.value => {
            // Only meaningful for DNS clusters; the endpoint's hostname is not tracked yet.
            cx.report(&format!("{path}.auto_host_rewrite"), "envoy.config.route.v3.RouteAction", Effect::Ignored);
            None
        }
        Some(H::AutoHostRewrite(_)) | None => None,
        Some(_) => return Err(Invalid::new(&format!("{path}.host_rewrite"), "only host_rewrite_literal is supported")),
    };
    let grpc_timeout = match (&ra.max_stream_duration, &ra.max_grpc_timeout) {
        (Some(msd), _) if msd.grpc_timeout_header_max.is_some() => Some(GrpcTimeout {
            max: opt_duration(&msd.grpc_timeout_header_max).filter(|d| !d.is_zero()),
            offset: opt_duration(&msd.grpc_timeout_header_offset),
        }),
        (_, Some(max)) => Some(GrpcTimeout { max: Some(duration(max)).filter(|d| !d.is_zero()), offset: opt_duration(&ra.grpc_timeout_offset) }),
        _ => None,
    };
    if ra.max_stream_duration.as_ref().is_some_and(|m| m.max_stream_duration.is_some()) {
        cx.report(&format!("{path}.max_stream_duration.max_stream_duration"), "envoy.config.route.v3.RouteAction.MaxStreamDuration", Effect::Ignored);
    }
    let mut mirrors = Vec::new();
    for (i, m) in ra.request_mirror_policies.iter().enumerate() {
        if m.cluster.is_empty() {
            return Err(Invalid::new(&format!("{path}.request_mirror_policies[{i}]"), "a mirror policy needs a cluster"));
        }
        mirrors.push(MirrorPolicy {
            cluster: m.cluster.as_str().into(),
            fraction: runtime_percent(&m.runtime_fraction, Percent::ALWAYS),
            disable_shadow_host_suffix: m.disable_shadow_host_suffix_append,
        });
    }
    let mut hash_policy = Vec::new();
    for (i, h) in ra.hash_policy.iter().enumerate() {
        use route::route_action::hash_policy::PolicySpecifier as S;
        let hpath = format!("{path}.hash_policy[{i}]");
        let source = match &h.policy_specifier {
            Some(S::Header(hd)) => HashSource::Header {
                name: hd.header_name.to_ascii_lowercase(),
                rewrite: hd.regex_rewrite.as_ref().map(|r| regex_rewrite(r, &format!("{hpath}.header.regex_rewrite"))).transpose()?,
            },
            Some(S::Cookie(c)) => HashSource::Cookie { name: c.name.clone(), ttl: opt_duration(&c.ttl), path: c.path.clone() },
            Some(S::ConnectionProperties(c)) if c.source_ip => HashSource::SourceIp,
            Some(S::QueryParameter(q)) => HashSource::QueryParameter(q.name.clone()),
            Some(S::ConnectionProperties(_)) => continue,
            Some(S::FilterState(_)) | None => {
                cx.report(&hpath, "envoy.config.route.v3.RouteAction.HashPolicy", Effect::Ignored);
                continue;
            }
        };
        hash_policy.push(HashPolicy { source, terminal: h.terminal });
    }
    Ok(ForwardAction {
        cluster,
        cluster_not_found_status: if ra.cluster_not_found_response_code == 1 { 404 } else { 503 },
        prefix_rewrite: (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.clone()),
        regex_rewrite: ra.regex_rewrite.as_ref().map(|r| regex_rewrite(r, &format!("{path}.regex_rewrite"))).transpose()?,
        host_rewrite,
        timeout: timeout(&ra.timeout, Some(DEFAULT_ROUTE_TIMEOUT)),
        idle_timeout: timeout(&ra.idle_timeout, None),
        retry_policy: ra.retry_policy.as_ref().map(|p| retry_policy(p, &format!("{path}.retry_policy"), cx)).transpose()?,
        grpc_timeout,
        hash_policy,
        mirrors,
        upgrades: ra.upgrade_configs.iter().map(|u| (u.upgrade_type.to_ascii_lowercase(), bool_or(&u.enabled, true))).collect(),
    })
}

fn weighted(w: &route::WeightedCluster, path: &str) -> Result<WeightedClusters, Invalid> {
    use route::weighted_cluster::cluster_weight::HostRewriteSpecifier;
    let mut clusters = Vec::with_capacity(w.clusters.len());
    for (i, c) in w.clusters.iter().enumerate() {
        let cpath = format!("{path}.clusters[{i}]");
        if c.name.is_empty() {
            return Err(Invalid::new(&cpath, "cluster_header in weighted clusters is not supported; name a cluster"));
        }
        clusters.push(WeightedCluster {
            name: c.name.as_str().into(),
            weight: u32_or(&c.weight, 0),
            request_headers: header_mutation(&c.request_headers_to_add, &c.request_headers_to_remove, &format!("{cpath}.request_headers_to_add"))?,
            response_headers: header_mutation(&c.response_headers_to_add, &c.response_headers_to_remove, &format!("{cpath}.response_headers_to_add"))?,
            host_rewrite: c.host_rewrite_specifier.as_ref().map(|HostRewriteSpecifier::HostRewriteLiteral(h)| h.clone()),
        });
    }
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return Err(Invalid::new(path, "the weights of weighted_clusters sum to zero"));
    }
    Ok(WeightedClusters { clusters, total })
}

pub(super) fn retry_policy(p: &route::RetryPolicy, path: &str, cx: &mut Context) -> Result<RetryPolicy, Invalid> {
    let (retry_on, unknown) = RetryOn::parse(&p.retry_on);
    for token in unknown {
        cx.report(&format!("{path}.retry_on ({token})"), "envoy.config.route.v3.RetryPolicy", Effect::Ignored);
    }
    let mut avoid_previous_hosts = false;
    for (i, pred) in p.retry_host_predicate.iter().enumerate() {
        let type_name = match &pred.config_type {
            Some(route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any)) => extension_type(any),
            None => String::new(),
        };
        if pred.name == "envoy.retry_host_predicates.previous_hosts" || type_name == "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" {
            avoid_previous_hosts = true;
        } else {
            cx.report(&format!("{path}.retry_host_predicate[{i}] ({})", pred.name), &type_name, Effect::Ignored);
        }
    }
    if p.retry_priority.is_some() {
        cx.report(&format!("{path}.retry_priority"), "envoy.config.route.v3.RetryPolicy", Effect::Ignored);
    }
    let defaults = RetryPolicy::default();
    let backoff_base = p.retry_back_off.as_ref().and_then(|b| b.base_interval.as_ref()).map(duration).unwrap_or(defaults.backoff_base);
    if backoff_base.is_zero() {
        return Err(Invalid::new(&format!("{path}.retry_back_off.base_interval"), "must be greater than zero"));
    }
    let backoff_max = p.retry_back_off.as_ref().and_then(|b| b.max_interval.as_ref()).map(duration).unwrap_or(backoff_base * 10);
    if backoff_max < backoff_base {
        return Err(Invalid::new(&format!("{path}.retry_back_off.max_interval"), "must not be less than base_interval"));
    }
    Ok(RetryPolicy {
        retry_on,
        num_retries: u32_or(&p.num_retries, 1),
        per_try_timeout: timeout(&p.per_try_timeout, None),
        per_try_idle_timeout: timeout(&p.per_try_idle_timeout, None),
        retriable_status_codes: p.retriable_status_codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect(),
        retriable_headers: header_matchers(&p.retriable_headers, &format!("{path}.retriable_headers"))?,
        retriable_request_headers: header_matchers(&p.retriable_request_headers, &format!("{path}.retriable_request_headers"))?,
        backoff_base,
        backoff_max,
        avoid_previous_hosts,
        host_selection_max_attempts: if p.host_selection_retry_max_attempts > 0 { p.host_selection_retry_max_attempts.min(u32::MAX as i64) as u32 } else { 1 },
    })
}

fn redirect(r: &route::RedirectAction, path: &str) -> Result<RedirectAction, Invalid> {
    use route::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let rpath = match &r.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => RedirectPath::Path(p.clone()),
        Some(P::PrefixRewrite(p)) => RedirectPath::Prefix(p.clone()),
        Some(P::RegexRewrite(rx)) => RedirectPath::Regex(regex_rewrite(rx, &format!("{path}.regex_rewrite"))?),
        Some(P::PathRewrite(_)) => return Err(Invalid::new(&format!("{path}.path_rewrite"), "URI template rewrites are not supported")),
        None => RedirectPath::Keep,
    };
    let status = match r.response_code {
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        _ => 301,
    };
    Ok(RedirectAction {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port: (r.port_redirect != 0)
            .then(|| u16::try_from(r.port_redirect))
            .transpose()
            .map_err(|_| Invalid::new(&format!("{path}.port_redirect"), "port out of range"))?,
        path: rpath,
        status,
        strip_query: r.strip_query,
    })
}

fn direct_response(d: &route::DirectResponseAction, path: &str) -> Result<DirectResponse, Invalid> {
    use xds_client::pb::envoy::config::core::v3::data_source::Specifier;
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .ok_or_else(|| Invalid::new(&format!("{path}.status"), format!("{} is not an HTTP status", d.status)))?;
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        Some(Specifier::InlineString(s)) => Some(s.clone()),
        Some(Specifier::InlineBytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(_) => return Err(Invalid::new(&format!("{path}.body"), "only inline bodies are supported")),
        None => None,
    };
    Ok(DirectResponse { status, body })
}

/// The fault filter's per-route override, if any.
fn per_filter_fault(configs: &std::collections::HashMap<String, Any>, path: &str, cx: &mut Context) -> Result<Option<FaultConfig>, Invalid> {
    let mut fault_config = None;
    let mut names: Vec<&String> = configs.keys().collect();
    names.sort();
    for name in names {
        let any = &configs[name];
        let type_name = extension_type(any);
        if name == FAULT_FILTER || type_name == "envoy.extensions.filters.http.fault.v3.HTTPFault" {
            let config = fault_pb::HttpFault::decode(any.value.as_slice()).map_err(|e| Invalid::new(path, format!("cannot decode HTTPFault: {e}")))?;
            fault_config = fault(&config, &format!("{path}[{name:?}]"), cx)?;
        } else {
            cx.report(&format!("{path}[{name:?}]"), &type_name, Effect::Ignored);
        }
    }
    Ok(fault_config)
}

/// `HTTPFault` -> [`FaultConfig`]; `None` when it injects nothing.
pub(super) fn fault(f: &fault_pb::HttpFault, path: &str, cx: &mut Context) -> Result<Option<FaultConfig>, Invalid> {
    use fault_pb::fault_abort::ErrorType;
    use xds_client::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    coverage::check_message(f, &cx.resource, path, &mut cx.unsupported);
    let delay = match &f.delay {
        Some(d) => {
            let kind = match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(t)) => DelayKind::Fixed(duration(t)),
                Some(FaultDelaySecifier::HeaderDelay(_)) => DelayKind::Header,
                None => return Err(Invalid::new(&format!("{path}.delay"), "a delay needs fixed_delay or header_delay")),
            };
            Some(FaultDelay { kind, percent: d.percentage.as_ref().map_or(Percent::NEVER, fractional_percent) })
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            let kind = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) => {
                    let s = u16::try_from(*s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| Invalid::new(&format!("{path}.abort.http_status"), "must be 200–599"))?;
                    AbortKind::Http(s)
                }
                Some(ErrorType::GrpcStatus(s)) => AbortKind::Grpc(*s),
                Some(ErrorType::HeaderAbort(_)) => AbortKind::Header,
                None => return Err(Invalid::new(&format!("{path}.abort"), "an abort needs http_status, grpc_status or header_abort")),
            };
            Some(FaultAbort { kind, percent: a.percentage.as_ref().map_or(Percent::NEVER, fractional_percent) })
        }
        None => None,
    };
    if delay.is_none() && abort.is_none() {
        return Ok(None);
    }
    Ok(Some(FaultConfig {
        delay,
        abort,
        upstream_cluster: (!f.upstream_cluster.is_empty()).then(|| f.upstream_cluster.as_str().into()),
        headers: f.headers.iter().enumerate().map(|(i, h)| header_matcher(h, &format!("{path}.headers[{i}]"))).collect::<Result<_, _>>()?,
        downstream_nodes: f.downstream_nodes.clone(),
        max_active_faults: f.max_active_faults.as_ref().map(|m| m.value),
    }))
}
