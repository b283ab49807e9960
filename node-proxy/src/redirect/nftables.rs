//! The fallback redirect, for when the eBPF programs cannot load: an nftables table in
//! the node's network namespace whose `prerouting` chain REDIRECTs pods' TCP
//! connections to the set's destinations to the proxy's port.
//!
//! Pods' packets enter the node's namespace through its interfaces, so prerouting sees
//! them; the proxy's own connections (and every host-network process's) leave through
//! `output` and are never redirected. The original destination comes back through
//! conntrack (`SO_ORIGINAL_DST`), the application's `getpeername` shows what it dialed.
//! Changes are element additions and deletions in one `nft -f` transaction.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// The table, in family `inet` (IPv4 and IPv6).
pub const TABLE: &str = "node_proxy";

/// The nftables redirect: its table exists while this lives (and after, until
/// [`Nftables::remove`]: a restarted proxy re-creates it).
#[derive(Debug)]
pub struct Nftables {
    _private: (),
}

impl Nftables {
    /// (Re)creates the table with empty sets and the rules redirecting to `port`.
    pub fn start(port: u16) -> Result<Nftables, String> {
        let script = format!(
            "table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  set dst4 {{ type ipv4_addr . inet_service; }}
  set all4 {{ type ipv4_addr; }}
  set dst6 {{ type ipv6_addr . inet_service; }}
  set all6 {{ type ipv6_addr; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto tcp ip daddr . tcp dport @dst4 redirect to :{port}
    meta l4proto tcp ip daddr @all4 redirect to :{port}
    meta l4proto tcp ip6 daddr . tcp dport @dst6 redirect to :{port}
    meta l4proto tcp ip6 daddr @all6 redirect to :{port}
  }}
}}
"
        );
        run_nft(&script)?;
        Ok(Nftables { _private: () })
    }

    /// Adds and deletes set elements in one transaction (`remove` must hold only
    /// elements added before).
    pub fn apply(&self, add: &[SocketAddr], remove: &[SocketAddr]) -> Result<(), String> {
        apply_elements(add, remove, element)
    }

    /// Deletes the table (`node-proxy bpf detach` in nftables mode). Absent is fine.
    pub fn remove() -> Result<(), String> {
        delete_table(TABLE)
    }
}

/// Adds `add` and deletes `remove` in one `nft -f` transaction, `element(verb, item)`
/// writing each line. Nothing to do runs nothing.
pub(super) fn apply_elements<T>(add: &[T], remove: &[T], element: impl Fn(&str, &T) -> String) -> Result<(), String> {
    let mut script = String::new();
    for (verb, list) in [("add", add), ("delete", remove)] {
        for item in list {
            script.push_str(&element(verb, item));
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    run_nft(&script)
}

/// Deletes `table inet <table>`. Absent is fine (declaring it first makes the delete unconditional).
pub(super) fn delete_table(table: &str) -> Result<(), String> {
    run_nft(&format!("table inet {table}\ndelete table inet {table}\n"))
}

/// `add element inet node_proxy dst4 { 10.0.0.1 . 80 }` and the like.
fn element(verb: &str, addr: &SocketAddr) -> String {
    let (family, ip) = match addr {
        SocketAddr::V4(a) => ("4", a.ip().to_string()),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => ("4", v4.to_string()),
            None => ("6", a.ip().to_string()),
        },
    };
    if addr.port() == 0 {
        format!("{verb} element inet {TABLE} all{family} {{ {ip} }}\n")
    } else {
        format!("{verb} element inet {TABLE} dst{family} {{ {ip} . {} }}\n", addr.port())
    }
}

pub(super) fn run_nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft ({e}): apt-get install nftables"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for nft: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = if err.contains("Operation not permitted") { " (run as root, with CAP_NET_ADMIN)" } else { "" };
        return Err(format!("nft -f failed{hint}: {}", err.trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_by_family_and_port() {
        assert_eq!(element("add", &"10.0.0.1:80".parse().unwrap()), "add element inet node_proxy dst4 { 10.0.0.1 . 80 }\n");
        assert_eq!(element("add", &"[::ffff:10.0.0.1]:80".parse().unwrap()), "add element inet node_proxy dst4 { 10.0.0.1 . 80 }\n");
        assert_eq!(element("delete", &"[fd00::1]:0".parse().unwrap()), "delete element inet node_proxy all6 { fd00::1 }\n");
    }
}
