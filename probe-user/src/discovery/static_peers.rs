//! Static peers from MESHPROBE_PEERS and MESHPROBE_PEERS_FILE.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;

use super::syntax::split_host_port;
use super::{DiscoveryError, Peer, PeerMap};

const LIST: &str = "MESHPROBE_PEERS";
const FILE: &str = "MESHPROBE_PEERS_FILE";

/// Static peers: entries `[id=]host[:port]` (IPv6 as `[fd00::2]:862` or bare `fd00::2`), from a
/// list (elements may themselves be comma separated) and/or a file (one entry per line, `#`
/// comments, blank lines ignored). The id defaults to the entry text (`host[:port]`). Host
/// names are resolved now (first address). Errors name MESHPROBE_PEERS or MESHPROBE_PEERS_FILE
/// and the bad entry (with its line for the file).
pub fn parse_static(
    list: &[String],
    file: Option<&Path>,
    default_port: u16,
) -> Result<PeerMap, DiscoveryError> {
    let mut peers = PeerMap::new();
    for item in list {
        for entry in item.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            add(&mut peers, LIST, String::new(), entry, default_port)?;
        }
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| DiscoveryError::PeersFile {
            path: path.display().to_string(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.split_once('#').map_or(line, |(before, _)| before);
            let location = format!(" ({} line {})", path.display(), n + 1);
            for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                add(&mut peers, FILE, location.clone(), entry, default_port)?;
            }
        }
    }
    Ok(peers)
}

fn add(
    peers: &mut PeerMap,
    setting: &'static str,
    location: String,
    entry: &str,
    default_port: u16,
) -> Result<(), DiscoveryError> {
    let bad = |reason: String| DiscoveryError::BadPeer {
        setting,
        location: location.clone(),
        entry: entry.to_string(),
        reason,
    };
    let (id, target) = match entry.split_once('=') {
        Some((id, target)) => (id.trim(), target.trim()),
        None => (entry, entry),
    };
    if id.is_empty() {
        return Err(bad("empty id before '='".into()));
    }
    let hp = split_host_port(target).map_err(bad)?;
    let port = hp.port.unwrap_or(default_port);
    let addr = resolve(hp.host, port).map_err(bad)?;
    if peers.contains_key(id) {
        return Err(DiscoveryError::DuplicatePeer {
            setting,
            location,
            id: id.to_string(),
        });
    }
    peers.insert(
        id.to_string(),
        Peer {
            node_id: id.to_string(),
            addr,
            zone: String::new(),
            rack: String::new(),
        },
    );
    Ok(())
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn list_forms() {
        let m = parse_static(
            &list(&[
                "198.18.0.2",
                "198.18.0.3:863, [fd00::2]:864",
                "fd00::3",
                "b=[fd00::4]",
                " c = 198.18.0.9:1000 ",
                "",
            ]),
            None,
            862,
        )
        .unwrap();
        let got: Vec<_> = m.iter().map(|(k, p)| (k.as_str(), p.addr)).collect();
        assert_eq!(
            got,
            vec![
                ("198.18.0.2", addr("198.18.0.2:862")),
                ("198.18.0.3:863", addr("198.18.0.3:863")),
                ("[fd00::2]:864", addr("[fd00::2]:864")),
                ("b", addr("[fd00::4]:862")),
                ("c", addr("198.18.0.9:1000")),
                ("fd00::3", addr("[fd00::3]:862")),
            ]
        );
        assert_eq!(m["b"].node_id, "b");
        assert_eq!(m["b"].zone, "");
    }

    #[test]
    fn host_names_resolve() {
        let m = parse_static(&list(&["lo=localhost:900"]), None, 862).unwrap();
        assert!(m["lo"].addr.ip().is_loopback());
        assert_eq!(m["lo"].addr.port(), 900);
    }

    #[test]
    fn file_with_comments() {
        let dir = std::env::temp_dir().join(format!("mp-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("peers");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            "# lab peers\n\n  a=198.18.0.2   # first\n198.18.0.3:900\n\t\n[fd00::5]"
        )
        .unwrap();
        drop(f);
        let m = parse_static(&list(&["x=198.18.1.1"]), Some(&path), 862).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m["a"].addr, addr("198.18.0.2:862"));
        assert_eq!(m["198.18.0.3:900"].addr, addr("198.18.0.3:900"));
        assert_eq!(m["[fd00::5]"].addr, addr("[fd00::5]:862"));
        assert_eq!(m["x"].addr, addr("198.18.1.1:862"));

        std::fs::write(&path, "198.18.0.2\n\n198.18.0.3:99999\n").unwrap();
        let e = parse_static(&[], Some(&path), 862).unwrap_err().to_string();
        assert!(e.starts_with("MESHPROBE_PEERS_FILE"), "{e}");
        assert!(
            e.contains("line 3") && e.contains("198.18.0.3:99999"),
            "{e}"
        );

        std::fs::write(&path, "a=198.18.0.2\na=198.18.0.3\n").unwrap();
        let e = parse_static(&[], Some(&path), 862).unwrap_err().to_string();
        assert!(e.contains("duplicate") && e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();

        let e = parse_static(&[], Some(Path::new("/nonexistent/peers")), 862)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("MESHPROBE_PEERS_FILE: cannot read /nonexistent/peers"),
            "{e}"
        );
    }

    #[test]
    fn list_errors_name_the_entry() {
        for (bad, needle) in [
            ("198.18.0.2:0", "port 0"),
            ("=198.18.0.2", "empty id"),
            ("fd00::1]:862", "IPv6"),
            ("[fd00::1]862", "after ']'"),
            ("a=", "empty"),
            ("no such host.invalid", "not allowed"),
            ("nonexistent.invalid", "cannot resolve"),
        ] {
            let e = parse_static(&list(&[bad]), None, 862)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("MESHPROBE_PEERS: bad peer"), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let e = parse_static(&list(&["198.18.0.2", "198.18.0.2"]), None, 862)
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate peer id \"198.18.0.2\""), "{e}");
    }
}
