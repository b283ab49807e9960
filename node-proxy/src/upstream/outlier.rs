//! Passive health checking (Envoy's outlier detection): consecutive 5xx, gateway
//! failures and local-origin failures eject a host at once; each interval, expired
//! ejections end and success-rate / failure-percentage statistics eject outliers.
//! At most `max_ejection_percent` of the hosts are ejected at a time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use istio_compat::model::cluster::{Enforced, OutlierDetection};

use super::host::{now_ms, Host};

/// What one attempt did, as outlier detection counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers with this status.
    Response(u16),
    /// The connection could not be made.
    ConnectFailed,
    /// Timeout waiting for the upstream.
    Timeout,
    /// The connection or stream was reset by the upstream.
    Reset,
}

/// Why a host was ejected (for logs and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectionReason {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    FailurePercentage,
}

impl EjectionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionReason::Consecutive5xx => "consecutive_5xx",
            EjectionReason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectionReason::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            EjectionReason::SuccessRate => "success_rate",
            EjectionReason::FailurePercentage => "failure_percentage",
        }
    }
}

/// Records an attempt's outcome; returns the reason if this ejected the host.
pub fn record(config: &OutlierDetection, hosts: &[Arc<Host>], host: &Host, outcome: Outcome) -> Option<EjectionReason> {
    let c = &host.outlier;
    // Without the split, local-origin failures count as the 5xx Envoy would answer.
    let as_status = match outcome {
        Outcome::Response(s) => Some(s),
        Outcome::ConnectFailed | Outcome::Reset if !config.split_external_local_origin_errors => Some(503),
        Outcome::Timeout if !config.split_external_local_origin_errors => Some(504),
        _ => None,
    };
    c.interval_requests.fetch_add(1, Ordering::Relaxed);
    let failed = match outcome {
        Outcome::Response(s) => s >= 500,
        _ => true,
    };
    if failed {
        c.interval_failures.fetch_add(1, Ordering::Relaxed);
    }
    let mut triggered = None;
    match as_status {
        Some(s) if s >= 500 => {
            let n5 = c.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            if config.consecutive_5xx.is_some_and(|e| n5 >= e.threshold) {
                triggered = config.consecutive_5xx.map(|e| (e, EjectionReason::Consecutive5xx));
            }
            if matches!(s, 502..=504) {
                let ng = c.consecutive_gateway_failure.fetch_add(1, Ordering::Relaxed) + 1;
                if triggered.is_none() && config.consecutive_gateway_failure.is_some_and(|e| ng >= e.threshold) {
                    triggered = config.consecutive_gateway_failure.map(|e| (e, EjectionReason::ConsecutiveGatewayFailure));
                }
            } else {
                c.consecutive_gateway_failure.store(0, Ordering::Relaxed);
            }
        }
        Some(_) => {
            c.consecutive_5xx.store(0, Ordering::Relaxed);
            c.consecutive_gateway_failure.store(0, Ordering::Relaxed);
            c.consecutive_local_origin_failure.store(0, Ordering::Relaxed);
        }
        None => {
            let nl = c.consecutive_local_origin_failure.fetch_add(1, Ordering::Relaxed) + 1;
            if config.consecutive_local_origin_failure.is_some_and(|e| nl >= e.threshold) {
                triggered = config.consecutive_local_origin_failure.map(|e| (e, EjectionReason::ConsecutiveLocalOriginFailure));
            }
        }
    }
    let (enforced, reason) = triggered?;
    if try_eject(config, hosts, host, enforced) {
        Some(reason)
    } else {
        None
    }
}

fn enforce(e: Enforced) -> bool {
    e.enforcing >= 100 || (e.enforcing > 0 && rand::random_range(0..100) < e.enforcing)
}

fn try_eject(config: &OutlierDetection, hosts: &[Arc<Host>], host: &Host, enforced: Enforced) -> bool {
    if host.is_ejected() || !enforce(enforced) {
        return false;
    }
    let total = hosts.len().max(1);
    let ejected = hosts.iter().filter(|h| h.is_ejected()).count();
    if ejected * 100 / total >= config.max_ejection_percent as usize {
        return false;
    }
    eject(config, host);
    true
}

fn eject(config: &OutlierDetection, host: &Host) {
    let c = &host.outlier;
    let times = c.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
    let duration = (config.base_ejection_time * times).min(config.max_ejection_time.max(config.base_ejection_time));
    c.ejected_until_ms.store(now_ms() + duration.as_millis() as u64, Ordering::Relaxed);
    c.ejected.store(true, Ordering::Relaxed);
    c.consecutive_5xx.store(0, Ordering::Relaxed);
    c.consecutive_gateway_failure.store(0, Ordering::Relaxed);
    c.consecutive_local_origin_failure.store(0, Ordering::Relaxed);
}

/// The interval timer's work: end expired ejections, apply the statistical
/// detectors, start a new interval. Returns whether any host changed state.
pub fn on_interval(config: &OutlierDetection, hosts: &[Arc<Host>]) -> Vec<(Arc<Host>, Option<EjectionReason>)> {
    let now = now_ms();
    let mut changes = Vec::new();
    for h in hosts {
        let c = &h.outlier;
        if h.is_ejected() && c.ejected_until_ms.load(Ordering::Relaxed) <= now {
            c.ejected.store(false, Ordering::Relaxed);
            c.ejected_until_ms.store(0, Ordering::Relaxed);
            changes.push((h.clone(), None));
        } else if !h.is_ejected() && c.interval_failures.load(Ordering::Relaxed) == 0 {
            // A host that stays healthy earns back its ejection multiplier.
            let _ = c.times_ejected.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1));
        }
    }
    let stats: Vec<(usize, f64, u32)> = hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.is_ejected())
        .filter_map(|(i, h)| {
            let requests = h.outlier.interval_requests.load(Ordering::Relaxed);
            let failures = h.outlier.interval_failures.load(Ordering::Relaxed);
            (requests > 0).then(|| (i, 100.0 * f64::from(requests - failures.min(requests)) / f64::from(requests), requests))
        })
        .collect();
    if let Some(sr) = config.success_rate {
        let qualified: Vec<_> = stats.iter().filter(|(_, _, n)| *n >= sr.request_volume).collect();
        if qualified.len() >= sr.minimum_hosts as usize && !qualified.is_empty() {
            let mean = qualified.iter().map(|(_, r, _)| r).sum::<f64>() / qualified.len() as f64;
            let var = qualified.iter().map(|(_, r, _)| (r - mean).powi(2)).sum::<f64>() / qualified.len() as f64;
            let threshold = mean - (f64::from(sr.stdev_factor) / 1000.0) * var.sqrt();
            for (i, rate, _) in qualified {
                if *rate < threshold && try_eject(config, hosts, &hosts[*i], Enforced { threshold: 0, enforcing: sr.enforcing }) {
                    changes.push((hosts[*i].clone(), Some(EjectionReason::SuccessRate)));
                }
            }
        }
    }
    if let Some(fp) = config.failure_percentage {
        let qualified: Vec<_> = stats.iter().filter(|(_, _, n)| *n >= fp.request_volume).collect();
        if qualified.len() >= fp.minimum_hosts as usize {
            for (i, rate, _) in qualified {
                if 100.0 - rate >= f64::from(fp.threshold) && try_eject(config, hosts, &hosts[*i], Enforced { threshold: 0, enforcing: fp.enforcing }) {
                    changes.push((hosts[*i].clone(), Some(EjectionReason::FailurePercentage)));
                }
            }
        }
    }
    for h in hosts {
        h.outlier.interval_requests.store(0, Ordering::Relaxed);
        h.outlier.interval_failures.store(0, Ordering::Relaxed);
    }
    changes
}

/// How often the interval work runs.
pub fn interval(config: &OutlierDetection) -> Duration {
    config.interval.max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use istio_compat::model::cluster::HealthStatus;

    fn config() -> OutlierDetection {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            consecutive_5xx: Some(Enforced { threshold: 3, enforcing: 100 }),
            consecutive_gateway_failure: None,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: None,
            success_rate: None,
            failure_percentage: None,
        }
    }

    fn hosts(n: u8) -> Vec<Arc<Host>> {
        (1..=n).map(|i| Arc::new(Host::new(format!("198.18.0.{i}:80").parse().unwrap(), 1, HealthStatus::Healthy, 0, Arc::default(), false, None))).collect()
    }

    #[test]
    fn consecutive_5xx_ejects_and_success_resets() {
        let c = config();
        let hs = hosts(4);
        assert_eq!(record(&c, &hs, &hs[0], Outcome::Response(503)), None);
        assert_eq!(record(&c, &hs, &hs[0], Outcome::Response(200)), None);
        assert_eq!(record(&c, &hs, &hs[0], Outcome::Response(500)), None);
        assert_eq!(record(&c, &hs, &hs[0], Outcome::ConnectFailed), None, "a connect failure counts as a 5xx");
        assert_eq!(record(&c, &hs, &hs[0], Outcome::Response(502)), Some(EjectionReason::Consecutive5xx));
        assert!(hs[0].is_ejected());
    }

    #[test]
    fn max_ejection_percent_caps_ejections() {
        let c = config();
        let hs = hosts(4);
        for h in &hs {
            for _ in 0..3 {
                record(&c, &hs, h, Outcome::Response(503));
            }
        }
        assert_eq!(hs.iter().filter(|h| h.is_ejected()).count(), 2, "50% of 4");
    }

    #[test]
    fn ejection_expires_on_the_interval() {
        let mut c = config();
        c.base_ejection_time = Duration::from_millis(1);
        let hs = hosts(2);
        for _ in 0..3 {
            record(&c, &hs, &hs[0], Outcome::Response(500));
        }
        assert!(hs[0].is_ejected());
        std::thread::sleep(Duration::from_millis(5));
        let changes = on_interval(&c, &hs);
        assert_eq!(changes.len(), 1);
        assert!(!hs[0].is_ejected());
    }

    #[test]
    fn success_rate_ejects_the_outlier() {
        let mut c = config();
        c.consecutive_5xx = None;
        c.success_rate = Some(istio_compat::model::cluster::SuccessRate { minimum_hosts: 5, request_volume: 100, stdev_factor: 1900, enforcing: 100 });
        let hs = hosts(6);
        for (i, h) in hs.iter().enumerate() {
            for n in 0..100 {
                let status = if i == 0 && n % 2 == 0 { 500 } else { 200 };
                record(&c, &hs, h, Outcome::Response(status));
            }
        }
        let changes = on_interval(&c, &hs);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0.address, hs[0].address);
        assert_eq!(changes[0].1, Some(EjectionReason::SuccessRate));
    }
}
