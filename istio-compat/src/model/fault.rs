//! Fault injection as Envoy's `envoy.filters.http.fault` defines it (Istio's
//! VirtualService `fault`): a delay, an abort (HTTP status or gRPC status), each on a
//! percentage of matching requests, optionally controlled by request headers.
//!
//! Pure: [`FaultConfig::decide`] draws the dice; the runtime sleeps and replies.

use std::time::Duration;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::common::{serde_duration, Name, Percent};
use super::route::HeaderMatcher;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Only requests routed to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cluster: Option<Name>,
    /// Only requests matching all of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcher>,
    /// Only requests whose `x-envoy-downstream-service-node` is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downstream_nodes: Vec<String>,
    /// At most this many requests delayed or aborted at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_faults: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultDelay {
    pub kind: DelayKind,
    pub percent: Percent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayKind {
    Fixed(#[serde(with = "serde_duration")] Duration),
    /// `x-envoy-fault-delay-request: <ms>` chooses the delay.
    Header,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultAbort {
    pub kind: AbortKind,
    pub percent: Percent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortKind {
    Http(u16),
    Grpc(u32),
    /// `x-envoy-fault-abort-request` / `x-envoy-fault-abort-grpc-request` choose.
    Header,
}

/// What to inject into one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Http(u16),
    Grpc(u32),
}

impl FaultConfig {
    /// Decides the faults for one request routed to `cluster`.
    pub fn decide(&self, headers: &HeaderMap, cluster: &str) -> FaultDecision {
        if !self.applies(headers, cluster) {
            return FaultDecision::default();
        }
        let delay = self.delay.as_ref().and_then(|d| {
            let percent = header_percent(headers, "x-envoy-fault-delay-request-percentage", d.percent);
            let duration = match &d.kind {
                DelayKind::Fixed(t) => Some(*t),
                DelayKind::Header => header_u64(headers, "x-envoy-fault-delay-request").map(Duration::from_millis),
            }?;
            percent.sample().then_some(duration)
        });
        let abort = self.abort.as_ref().and_then(|a| {
            let percent = header_percent(headers, "x-envoy-fault-abort-request-percentage", a.percent);
            let abort = match a.kind {
                AbortKind::Http(code) => Some(Abort::Http(code)),
                AbortKind::Grpc(code) => Some(Abort::Grpc(code)),
                AbortKind::Header => header_u64(headers, "x-envoy-fault-abort-grpc-request")
                    .map(|c| Abort::Grpc(c as u32))
                    .or_else(|| header_u64(headers, "x-envoy-fault-abort-request").filter(|c| (200..600).contains(c)).map(|c| Abort::Http(c as u16))),
            }?;
            percent.sample().then_some(abort)
        });
        FaultDecision { delay, abort }
    }

    fn applies(&self, headers: &HeaderMap, cluster: &str) -> bool {
        if self.upstream_cluster.as_deref().is_some_and(|c| c != cluster) {
            return false;
        }
        if !self.downstream_nodes.is_empty() {
            let node = headers.get("x-envoy-downstream-service-node").and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| self.downstream_nodes.iter().any(|d| d == n)) {
                return false;
            }
        }
        self.headers.iter().all(|m| m.matches_value(headers.get(m.name.as_str()).and_then(|v| v.to_str().ok())))
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A header may lower (never raise) the configured percentage, as in Envoy.
fn header_percent(headers: &HeaderMap, name: &str, configured: Percent) -> Percent {
    match header_u64(headers, name) {
        Some(p) => {
            let requested = Percent::from_fraction(p.min(100) as u32, 100);
            if requested.per_million < configured.per_million {
                requested
            } else {
                configured
            }
        }
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_and_never() {
        let f = FaultConfig {
            delay: Some(FaultDelay { kind: DelayKind::Fixed(Duration::from_millis(5)), percent: Percent::ALWAYS }),
            abort: Some(FaultAbort { kind: AbortKind::Http(503), percent: Percent::NEVER }),
            ..Default::default()
        };
        let d = f.decide(&HeaderMap::new(), "c");
        assert_eq!(d.delay, Some(Duration::from_millis(5)));
        assert_eq!(d.abort, None);
    }

    #[test]
    fn upstream_cluster_and_headers_restrict() {
        let f = FaultConfig {
            abort: Some(FaultAbort { kind: AbortKind::Grpc(14), percent: Percent::ALWAYS }),
            upstream_cluster: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(f.decide(&HeaderMap::new(), "a").abort, Some(Abort::Grpc(14)));
        assert_eq!(f.decide(&HeaderMap::new(), "b").abort, None);
    }

    #[test]
    fn header_controlled_abort() {
        let f = FaultConfig { abort: Some(FaultAbort { kind: AbortKind::Header, percent: Percent::ALWAYS }), ..Default::default() };
        let mut h = HeaderMap::new();
        assert_eq!(f.decide(&h, "c").abort, None);
        h.insert("x-envoy-fault-abort-request", "429".parse().unwrap());
        assert_eq!(f.decide(&h, "c").abort, Some(Abort::Http(429)));
        h.insert("x-envoy-fault-abort-request-percentage", "0".parse().unwrap());
        assert_eq!(f.decide(&h, "c").abort, None);
    }
}
