//! A member's probe address from its index entry: IP literals at once, DNS names by a lookup
//! in the background (so a slow resolver never holds up the rest of the map).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::timeout;

use crate::discovery::layout::IndexEntry;

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The host (brackets stripped) and port (0: `default_port`) peers probe `entry` at.
pub(super) fn host_port(entry: &IndexEntry, default_port: u16) -> Result<(String, u16), String> {
    let host = entry.address.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("empty address".into());
    }
    let port = match entry.port {
        0 => default_port,
        p => p,
    };
    Ok((host.to_string(), port))
}

/// The probe address when the entry holds an IP literal (`Ok(None)`: a DNS name).
pub(super) fn literal(entry: &IndexEntry, default_port: u16) -> Result<Option<SocketAddr>, String> {
    let (host, port) = host_port(entry, default_port)?;
    Ok(host
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port)))
}

/// Resolves a DNS name (first address), within [`RESOLVE_TIMEOUT`].
pub(super) async fn lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    match timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(mut addrs)) => addrs
            .next()
            .ok_or_else(|| format!("{host:?} resolves to no address")),
        Ok(Err(e)) => Err(format!("cannot resolve {host:?}: {e}")),
        Err(_) => Err(format!("resolving {host:?} timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: &str, port: u16) -> IndexEntry {
        IndexEntry {
            node_id: "n".into(),
            zone: String::new(),
            rack: String::new(),
            address: addr.into(),
            port,
        }
    }

    #[tokio::test]
    async fn member_addresses() {
        let a = literal(&entry("198.18.0.7", 0), 862).unwrap();
        assert_eq!(a, Some("198.18.0.7:862".parse().unwrap()));
        let a = literal(&entry("[fd00::7]", 900), 862).unwrap();
        assert_eq!(a, Some("[fd00::7]:900".parse().unwrap()));
        let a = literal(&entry(" fd00::8 ", 900), 862).unwrap();
        assert_eq!(a, Some("[fd00::8]:900".parse().unwrap()));
        assert_eq!(literal(&entry("localhost", 901), 862), Ok(None));
        assert_eq!(
            host_port(&entry("localhost", 0), 862),
            Ok(("localhost".into(), 862))
        );
        let a = lookup("localhost", 901).await.unwrap();
        assert!(a.ip().is_loopback() && a.port() == 901);
        assert!(literal(&entry("[]", 1), 862).is_err());
    }
}
