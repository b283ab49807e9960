//! The certificates of the workload identities this node acts for: issued by
//! istiod's CA (`istio_compat::ca::CaClient`) or by the local mesh CA
//! (`tls::local_ca::LocalCa`), one per identity with workloads on this node, each
//! renewed at half its lifetime.
//!
//! Owns: which identities hold a certificate ([`CertStore::set_identities`]: new ones
//! are fetched, dropped ones forgotten), renewal with backoff on failure (the old
//! certificate stays in use until it expires, and not a moment longer), and handing
//! the current certificate to the data path ([`CertStore::certificate`]).
//! Does not own: the CA protocol (`istio_compat::ca`) or TLS (`tls`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use istio_compat::ca::{Backoff, CaClient};
use istio_compat::model::workload::Identity;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::tls::cert::Certified;
use crate::tls::local_ca::LocalCa;

/// Issues a certificate for an identity.
pub trait Issuer: Send + Sync + 'static {
    fn issue<'a>(&'a self, identity: &'a Identity) -> Pin<Box<dyn Future<Output = Result<Certified, String>> + Send + 'a>>;
}

/// The local mesh CA, for a node proxy without istiod.
pub struct LocalIssuer {
    pub ca: Arc<LocalCa>,
    pub validity: Duration,
}

impl Issuer for LocalIssuer {
    fn issue<'a>(&'a self, identity: &'a Identity) -> Pin<Box<dyn Future<Output = Result<Certified, String>> + Send + 'a>> {
        Box::pin(async move {
            // Valid from a few minutes back, for peers whose clocks lag.
            self.ca.issue(identity, self.validity).map_err(|e| format!("local CA: {e}"))
        })
    }
}

/// istiod's CA (IstioCertificateService), impersonating each workload identity.
pub struct IstiodIssuer(pub CaClient);

impl Issuer for IstiodIssuer {
    fn issue<'a>(&'a self, identity: &'a Identity) -> Pin<Box<dyn Future<Output = Result<Certified, String>> + Send + 'a>> {
        Box::pin(async move {
            let w = self.0.fetch(identity).await.map_err(|e| e.to_string())?;
            Certified::from_pem(w.identity, &w.key_pem, &w.chain_pem, &w.roots_pem).map_err(|e| format!("istiod's certificate for {identity}: {e}"))
        })
    }
}

/// Why no certificate could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0} has no workload on this node: this proxy does not act for it")]
    NotLocal(Identity),
    #[error("no certificate for {identity} yet (the CA has not answered within {waited:?}; see the log for its error)")]
    NotYet { identity: Identity, waited: Duration },
}

struct Slot {
    cert: watch::Receiver<Option<Arc<Certified>>>,
    task: JoinHandle<()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The certificates of the identities with workloads on this node.
pub struct CertStore {
    issuer: Arc<dyn Issuer>,
    backoff: (Duration, Duration),
    slots: Mutex<HashMap<Identity, Slot>>,
}

impl CertStore {
    /// A store issuing through `issuer`, retrying failures with istio-agent's backoff
    /// (1 s doubling to 150 s, ±20%).
    pub fn new(issuer: Arc<dyn Issuer>) -> CertStore {
        Self::with_backoff(issuer, Duration::from_secs(1), Duration::from_secs(150))
    }

    /// [`CertStore::new`] with another retry range (tests).
    pub fn with_backoff(issuer: Arc<dyn Issuer>, initial: Duration, max: Duration) -> CertStore {
        CertStore { issuer, backoff: (initial, max), slots: Mutex::new(HashMap::new()) }
    }

    /// Makes `wanted` the identities that hold certificates: new ones start being
    /// fetched (must run inside a tokio runtime), the others are dropped with their
    /// renewal.
    pub fn set_identities(&self, wanted: impl IntoIterator<Item = Identity>) {
        let wanted: std::collections::HashSet<Identity> = wanted.into_iter().collect();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|id, _| {
            let keep = wanted.contains(id);
            if !keep {
                tracing::info!(identity = %id, "no workload of this identity on the node any more: dropping its certificate");
            }
            keep
        });
        for id in wanted {
            if slots.contains_key(&id) {
                continue;
            }
            let (tx, rx) = watch::channel(None);
            let (issuer, backoff) = (self.issuer.clone(), Backoff::new(self.backoff.0, self.backoff.1, 2.0, 0.2));
            let task = tokio::spawn(renew(issuer, id.clone(), tx, backoff));
            slots.insert(id, Slot { cert: rx, task });
        }
    }

    /// The identities holding (or fetching) a certificate.
    pub fn identities(&self) -> Vec<Identity> {
        let mut ids: Vec<Identity> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The current, unexpired certificate of `identity`, if there is one now.
    pub fn current(&self, identity: &Identity) -> Option<Arc<Certified>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let cert = slots.get(identity)?.cert.borrow().clone()?;
        (!cert.is_expired(SystemTime::now())).then_some(cert)
    }

    /// The certificate of `identity`, waiting up to `wait` for the first one.
    pub async fn certificate(&self, identity: &Identity, wait: Duration) -> Result<Arc<Certified>, IdentityError> {
        let mut rx = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.get(identity).ok_or_else(|| IdentityError::NotLocal(identity.clone()))?.cert.clone()
        };
        let now_valid = |c: &Option<Arc<Certified>>| c.as_ref().is_some_and(|c| !c.is_expired(SystemTime::now()));
        let got = match tokio::time::timeout(wait, rx.wait_for(now_valid)).await {
            Ok(Ok(c)) => c.clone(),
            _ => None,
        };
        got.ok_or_else(|| IdentityError::NotYet { identity: identity.clone(), waited: wait })
    }
}

/// Fetches `identity`'s certificate, then renews it at half-life for as long as the
/// slot lives. A failure keeps the old certificate until it expires and retries with
/// backoff.
async fn renew(issuer: Arc<dyn Issuer>, identity: Identity, tx: watch::Sender<Option<Arc<Certified>>>, mut backoff: Backoff) {
    loop {
        let wait = match issuer.issue(&identity).await {
            Ok(cert) => {
                backoff.reset();
                let refresh = cert.refresh_at(SystemTime::now());
                tracing::info!(identity = %identity, not_after = ?cert.not_after(), "workload certificate issued");
                tx.send_replace(Some(Arc::new(cert)));
                // At least a moment, so a CA handing out nearly expired certificates is not hammered.
                refresh.duration_since(SystemTime::now()).unwrap_or_default().max(Duration::from_millis(100))
            }
            Err(e) => {
                let delay = backoff.next_delay();
                let old = tx.borrow().clone();
                match old {
                    Some(old) if !old.is_expired(SystemTime::now()) => {
                        tracing::warn!(identity = %identity, error = %e, retry_in = ?delay, still_valid_until = ?old.not_after(), "renewing the workload certificate failed; the current one stays in use");
                        // Retry no later than the old one's expiry, when it must go.
                        delay.min(old.not_after().duration_since(SystemTime::now()).unwrap_or_default())
                    }
                    Some(_) => {
                        tracing::error!(identity = %identity, error = %e, retry_in = ?delay, "the workload certificate expired and could not be renewed: mTLS for this identity fails until the CA answers");
                        tx.send_replace(None);
                        delay
                    }
                    None => {
                        tracing::warn!(identity = %identity, error = %e, retry_in = ?delay, "fetching the workload certificate failed");
                        delay
                    }
                }
            }
        };
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn sleep_until(t: SystemTime) {
        tokio::time::sleep(t.duration_since(SystemTime::now()).unwrap_or_default()).await;
    }

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "ns1", sa)
    }

    /// The local CA, certificates valid for `validity`; fails every call from the
    /// `fail_from`-th on (0-based), counting calls.
    struct TestIssuer {
        ca: LocalCa,
        validity: Duration,
        calls: AtomicUsize,
        fail_from: usize,
    }

    impl Issuer for TestIssuer {
        fn issue<'a>(&'a self, identity: &'a Identity) -> Pin<Box<dyn Future<Output = Result<Certified, String>> + Send + 'a>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n >= self.fail_from {
                return Box::pin(async { Err("the CA is down".to_owned()) });
            }
            // Valid from now exactly, so the half-life falls within the test.
            let now = SystemTime::now();
            let cert = self.ca.issue_with(identity, now, now + self.validity).map_err(|e| e.to_string());
            Box::pin(async move { cert })
        }
    }

    fn store(validity: Duration, fail_from: usize) -> (CertStore, Arc<TestIssuer>) {
        let ca = LocalCa::generate("cluster.local").unwrap();
        let issuer = Arc::new(TestIssuer { ca, validity, calls: AtomicUsize::new(0), fail_from });
        (CertStore::with_backoff(issuer.clone(), Duration::from_millis(50), Duration::from_millis(200)), issuer)
    }

    #[tokio::test]
    async fn each_local_identity_gets_its_own_certificate() {
        let (s, _) = store(Duration::from_secs(3600), usize::MAX);
        s.set_identities([id("a"), id("b")]);
        let a = s.certificate(&id("a"), Duration::from_secs(5)).await.unwrap();
        let b = s.certificate(&id("b"), Duration::from_secs(5)).await.unwrap();
        assert_eq!(a.identity(), &id("a"));
        assert_eq!(b.identity(), &id("b"));
        assert!(matches!(s.certificate(&id("c"), Duration::from_millis(10)).await, Err(IdentityError::NotLocal(_))));
        assert_eq!(s.identities(), [id("a"), id("b")]);
    }

    #[tokio::test]
    async fn a_certificate_is_renewed_at_half_life() {
        // Certificate times have whole seconds: 4 s of validity is at least 3.
        let (s, issuer) = store(Duration::from_secs(4), usize::MAX);
        s.set_identities([id("a")]);
        let first = s.certificate(&id("a"), Duration::from_secs(5)).await.unwrap();
        sleep_until(first.refresh_at(first.not_before()) + Duration::from_millis(700)).await;
        let second = s.current(&id("a")).expect("a current certificate");
        assert!(second.not_after() > first.not_after(), "renewed after half of its lifetime");
        assert!(!first.is_expired(SystemTime::now()), "renewed before the first one expired");
        assert!(issuer.calls.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn a_failed_renewal_keeps_the_old_certificate_until_it_expires_and_retries() {
        let (s, issuer) = store(Duration::from_secs(4), 1);
        s.set_identities([id("a")]);
        let first = s.certificate(&id("a"), Duration::from_secs(5)).await.unwrap();
        sleep_until(first.refresh_at(first.not_before()) + Duration::from_millis(700)).await;
        let still = s.current(&id("a")).expect("the old certificate is still in use");
        assert_eq!(still.not_after(), first.not_after());
        assert!(issuer.calls.load(Ordering::SeqCst) >= 3, "renewal retried with backoff");
        sleep_until(first.not_after() + Duration::from_millis(500)).await;
        assert!(s.current(&id("a")).is_none(), "an expired certificate is never handed out");
        assert!(matches!(s.certificate(&id("a"), Duration::from_millis(100)).await, Err(IdentityError::NotYet { .. })));
    }

    #[tokio::test]
    async fn identities_without_local_workloads_are_dropped() {
        let (s, issuer) = store(Duration::from_secs(3600), usize::MAX);
        s.set_identities([id("a"), id("b")]);
        s.certificate(&id("b"), Duration::from_secs(5)).await.unwrap();
        s.certificate(&id("a"), Duration::from_secs(5)).await.unwrap();
        s.set_identities([id("a")]);
        assert!(s.current(&id("b")).is_none());
        assert!(matches!(s.certificate(&id("b"), Duration::from_millis(10)).await, Err(IdentityError::NotLocal(_))));
        // Keeping an identity does not fetch it again.
        let calls = issuer.calls.load(Ordering::SeqCst);
        s.set_identities([id("a")]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(issuer.calls.load(Ordering::SeqCst), calls);
    }
}
