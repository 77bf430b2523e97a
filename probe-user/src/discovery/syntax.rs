//! Syntax of the discovery settings: `host[:port]` entries, ZooKeeper paths and znode names.

use std::net::Ipv6Addr;

use super::DiscoveryError;

/// ZooKeeper's default client port.
const ZK_DEFAULT_PORT: u16 = 2181;

/// A `host[:port]` entry split up. IPv6 literals come without brackets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HostPort<'a> {
    pub host: &'a str,
    pub port: Option<u16>,
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal. A bare IPv6 literal
/// never carries a port (`fd00::1:862` is an address), so ports need the bracket form.
pub(crate) fn split_host_port(s: &str) -> Result<HostPort<'_>, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after the IPv6 address".to_string())?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or_else(|| {
                format!("unexpected {p:?} after ']' (expected :PORT)")
            })?)?),
        };
        return Ok(HostPort { host, port });
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Ok(HostPort {
            host: s,
            port: None,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (s, None),
    };
    if host.contains(':') {
        return Err("an IPv6 address with a port must be written [ADDRESS]:PORT".into());
    }
    check_host_name(host)?;
    Ok(HostPort { host, port })
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) => Err("port 0 is not usable".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
    }
}

/// An IPv4 literal or a DNS name: letters, digits, '-', '_' and '.'.
fn check_host_name(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("empty host".into());
    }
    if let Some(c) = h
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("{c:?} is not allowed in a host name"));
    }
    Ok(())
}

/// `host` with brackets when it is an IPv6 literal, for `host:port` strings.
pub(crate) fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// SERVERS_ZK in the form the ZooKeeper client expects: entries trimmed, IPv6 in brackets, every
/// port explicit (2181 by default). The client itself would read a bare IPv6 literal's last
/// group as the port, and a `/chroot` suffix would silently move our paths.
pub fn normalize_servers(servers: &str) -> Result<String, DiscoveryError> {
    let bad = |reason: String| DiscoveryError::Setting {
        setting: "SERVERS_ZK",
        value: servers.to_string(),
        reason,
    };
    let mut out = Vec::new();
    for entry in servers.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(bad(
                "empty server entry (expected host:port[,host:port])".into()
            ));
        }
        if entry.contains('/') {
            return Err(bad(format!(
                "{entry:?}: no chroot or scheme in the connect string; set ROOT_PATH_ZK instead"
            )));
        }
        let hp = split_host_port(entry).map_err(|r| bad(format!("{entry:?}: {r}")))?;
        out.push(format!(
            "{}:{}",
            bracket(hp.host),
            hp.port.unwrap_or(ZK_DEFAULT_PORT)
        ));
    }
    Ok(out.join(","))
}

/// Checks one path segment or znode name against ZooKeeper's rules (PathUtils.validatePath).
fn check_segment(seg: &str) -> Result<(), String> {
    if seg.is_empty() {
        return Err("empty name".into());
    }
    if seg == "." || seg == ".." {
        return Err(format!("{seg:?} is not a valid znode name"));
    }
    if let Some(c) = seg.chars().find(|&c| {
        matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{e000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}')
    }) {
        return Err(format!(
            "character U+{:04X} is not allowed in ZooKeeper paths",
            c as u32
        ));
    }
    Ok(())
}

/// MESHPROBE_NODE_ID must be a single znode name.
pub(crate) fn check_node_name(id: &str) -> Result<(), DiscoveryError> {
    let bad = |reason: String| DiscoveryError::Setting {
        setting: "MESHPROBE_NODE_ID",
        value: id.to_string(),
        reason,
    };
    if id.contains('/') {
        return Err(bad(
            "the node id is a znode name and cannot contain '/'".into()
        ));
    }
    check_segment(id).map_err(bad)
}

fn normalize(setting: &'static str, raw: &str) -> Result<String, DiscoveryError> {
    let mut out = String::new();
    // Leading, trailing and doubled slashes carry no meaning here: "meshprobe", "/meshprobe"
    // and "/meshprobe/" are the same root.
    for seg in raw.trim().split('/').filter(|s| !s.is_empty()) {
        check_segment(seg).map_err(|reason| DiscoveryError::Setting {
            setting,
            value: raw.to_string(),
            reason,
        })?;
        out.push('/');
        out.push_str(seg);
    }
    Ok(out)
}

/// ROOT_PATH_ZK as an absolute path without a trailing slash ("" for the ZooKeeper root).
pub fn normalize_root_path(root: &str) -> Result<String, DiscoveryError> {
    let p = normalize("ROOT_PATH_ZK", root)?;
    if p == "/zookeeper" || p.starts_with("/zookeeper/") {
        return Err(DiscoveryError::Setting {
            setting: "ROOT_PATH_ZK",
            value: root.to_string(),
            reason: "/zookeeper is reserved by ZooKeeper".into(),
        });
    }
    Ok(p)
}

/// `/<root>/<heartbeat>`: the parent of the member znodes.
pub fn member_parent_path(root: &str, heartbeat: &str) -> Result<String, DiscoveryError> {
    let r = normalize_root_path(root)?;
    let h = normalize("HEART_BEAT_NODE_PATH", heartbeat)?;
    let p = format!("{r}{h}");
    if p.is_empty() {
        return Err(DiscoveryError::Setting {
            setting: "HEART_BEAT_NODE_PATH",
            value: heartbeat.to_string(),
            reason: "members cannot live at the ZooKeeper root; set ROOT_PATH_ZK or HEART_BEAT_NODE_PATH".into(),
        });
    }
    if p == "/zookeeper" || p.starts_with("/zookeeper/") {
        return Err(DiscoveryError::Setting {
            setting: "HEART_BEAT_NODE_PATH",
            value: heartbeat.to_string(),
            reason: "/zookeeper is reserved by ZooKeeper".into(),
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let hp = |s| split_host_port(s).unwrap();
        assert_eq!(
            hp("198.18.0.2"),
            HostPort {
                host: "198.18.0.2",
                port: None
            }
        );
        assert_eq!(hp("198.18.0.2:863").port, Some(863));
        assert_eq!(hp("[fd00::2]:862").host, "fd00::2");
        assert_eq!(hp("[fd00::2]:862").port, Some(862));
        assert_eq!(hp("[fd00::2]").port, None);
        assert_eq!(hp("fd00::2").host, "fd00::2");
        assert_eq!(hp("fd00::1:862").port, None, "bare IPv6 never has a port");
        assert_eq!(hp("peer-1.example").port, None);
        for bad in [
            "",
            "h:0",
            "h:65536",
            "h:x",
            "[fd00::2",
            "[fd00::2]x",
            "[nothex]:1",
            "fd00::zz:1",
            "a b",
            ":862",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn servers_normalized() {
        assert_eq!(
            normalize_servers(" zk1:2182 ,198.18.0.1, fd00::1 ,[fd00::2]:2183").unwrap(),
            "zk1:2182,198.18.0.1:2181,[fd00::1]:2181,[fd00::2]:2183"
        );
        for bad in ["", "zk1,", "zk1:2181/root", "tcp://zk1:2181", "zk1:abc"] {
            let e = normalize_servers(bad).unwrap_err();
            assert!(e.to_string().starts_with("SERVERS_ZK"), "{e}");
        }
    }

    #[test]
    fn root_path_normalized() {
        assert_eq!(normalize_root_path("meshprobe").unwrap(), "/meshprobe");
        assert_eq!(normalize_root_path("/meshprobe").unwrap(), "/meshprobe");
        assert_eq!(normalize_root_path("/meshprobe/").unwrap(), "/meshprobe");
        assert_eq!(normalize_root_path("//a//b/").unwrap(), "/a/b");
        assert_eq!(normalize_root_path("/").unwrap(), "");
        assert_eq!(
            member_parent_path("meshprobe", "heartbeat").unwrap(),
            "/meshprobe/heartbeat"
        );
        assert_eq!(member_parent_path("/", "/hb/").unwrap(), "/hb");
        assert_eq!(member_parent_path("/mp/", "").unwrap(), "/mp");
        assert!(member_parent_path("", "/").is_err());
        assert!(member_parent_path("a/./b", "hb").is_err());
        assert!(member_parent_path("/zookeeper/x", "hb").is_err());
        assert!(member_parent_path("", "zookeeper").is_err());
        assert!(member_parent_path("a\u{7f}", "hb").is_err());
    }

    #[test]
    fn node_names() {
        check_node_name("node-1.example").unwrap();
        check_node_name("ノード").unwrap();
        assert!(check_node_name("a/b").is_err());
        assert!(check_node_name("").is_err());
        assert!(check_node_name(".").is_err());
        assert!(check_node_name("a\u{0}").is_err());
    }
}
