//! Where membership lives in ZooKeeper.
//!
//! - `/<ROOT_PATH_ZK>/<HEART_BEAT_NODE_PATH>/<node_id>`: the registration (ephemeral, data = a
//!   [`NodeInfo`]). Its name is the node id, so two agents with one id conflict here.
//! - `/<ROOT_PATH_ZK>/<HEART_BEAT_NODE_PATH>.topology/<zone>/<entry>`: the topology index
//!   (ephemeral, no data), created in the same transaction. The entry's *name* carries what
//!   probing needs (node id, rack, address, port), so listing a zone or one watch event tells
//!   everything about a member: no per-member read. Zone directories keep one listing per
//!   zone (ZooKeeper's packet limit bounds one listing).
//!
//! Names are percent-encoded (every byte outside `A-Z a-z 0-9 . _ : -`), so any label is a
//! valid znode name and `~` can separate the fields.
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use prost::Message;

use crate::pb::NodeInfo;

/// Bytes outside this set are escaped.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'_')
    .remove(b':')
    .remove(b'-');

/// Format tag of an entry name; other tags are not ours to read.
const ENTRY_VERSION: &str = "1";
/// A zone directory is `=` + the encoded zone (never empty, `.` or `..`).
const ZONE_PREFIX: char = '=';
/// Longest entry or zone name read back; longer ones are not ours (and not trusted).
pub const MAX_NAME_LEN: usize = 512;
/// Largest registration (`NodeInfo`) decoded; ours is about 200 bytes. A larger one is not an
/// agent's (the only one ever read is the holder of our own node id, on a conflict).
pub const MAX_NODE_INFO_LEN: usize = 4096;

/// A registration's data as a `NodeInfo`, if it is one of a sane size.
pub fn decode_node_info(data: &[u8]) -> Option<NodeInfo> {
    if data.len() > MAX_NODE_INFO_LEN {
        return None;
    }
    NodeInfo::decode(data).ok()
}

/// One member as the topology index tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub node_id: String,
    pub zone: String,
    pub rack: String,
    /// As registered (REGISTER_PUBLIC_DNS): an IP literal or a DNS name.
    pub address: String,
    /// 0: the default port.
    pub port: u16,
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, ESCAPED).to_string()
}

fn dec(s: &str) -> Result<String, String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// `/<root>/<heartbeat>.topology` for the member directory `/<root>/<heartbeat>`.
pub fn topology_root(member_parent: &str) -> String {
    format!("{member_parent}.topology")
}

/// The directory name of a zone.
pub fn zone_dir_name(zone: &str) -> String {
    format!("{ZONE_PREFIX}{}", enc(zone))
}

/// The zone a directory name stands for.
pub fn parse_zone_dir(name: &str) -> Result<String, String> {
    if name.len() > MAX_NAME_LEN {
        return Err(format!("zone directory name of {} bytes", name.len()));
    }
    let raw = name
        .strip_prefix(ZONE_PREFIX)
        .ok_or_else(|| format!("{name:?} does not start with {ZONE_PREFIX:?}"))?;
    dec(raw)
}

/// The index entry of `entry` (its node id, rack, address and port; the zone is its directory).
pub fn entry_name(entry: &IndexEntry) -> String {
    format!(
        "{ENTRY_VERSION}~{}~{}~{}~{}",
        enc(&entry.node_id),
        enc(&entry.rack),
        enc(&entry.address),
        entry.port
    )
}

/// The index entry a registration stands for (`public_port` above 65535 becomes 0: invalid
/// registrations are refused before they are written).
pub fn entry_of(info: &NodeInfo) -> IndexEntry {
    IndexEntry {
        node_id: info.node_id.clone(),
        zone: info.zone.clone(),
        rack: info.rack.clone(),
        address: info.public_address.trim().to_string(),
        port: u16::try_from(info.public_port).unwrap_or(0),
    }
}

/// Full path of a zone's directory.
pub fn zone_path(topology_root: &str, zone: &str) -> String {
    format!("{topology_root}/{}", zone_dir_name(zone))
}

/// Full path of a registration's index entry.
pub fn entry_path(topology_root: &str, entry: &IndexEntry) -> String {
    format!(
        "{}/{}",
        zone_path(topology_root, &entry.zone),
        entry_name(entry)
    )
}

/// The two znodes one member creates, in one transaction (both ephemeral).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// `/<root>/<heartbeat>/<node_id>`.
    pub path: String,
    /// Its data: the protobuf `NodeInfo`.
    pub data: Vec<u8>,
    /// Its topology index entry (no data).
    pub entry: String,
}

/// What `info` registers under the member directory `member_parent` (`/<root>/<heartbeat>`).
pub fn registration(member_parent: &str, info: &NodeInfo) -> Registration {
    Registration {
        path: format!("{member_parent}/{}", info.node_id),
        data: info.encode_to_vec(),
        entry: entry_path(&topology_root(member_parent), &entry_of(info)),
    }
}

/// Reads an entry back from its zone and name. Errors say why it is not a usable entry.
pub fn parse_entry(zone: &str, name: &str) -> Result<IndexEntry, String> {
    if name.len() > MAX_NAME_LEN {
        return Err(format!("entry name of {} bytes", name.len()));
    }
    let fields: Vec<&str> = name.split('~').collect();
    let [version, id, rack, address, port] = fields[..] else {
        return Err(format!("{} fields, expected 5", fields.len()));
    };
    if version != ENTRY_VERSION {
        return Err(format!("format {version:?} is not {ENTRY_VERSION:?}"));
    }
    let node_id = dec(id)?;
    if node_id.is_empty() {
        return Err("empty node id".into());
    }
    let address = dec(address)?;
    if address.is_empty() {
        return Err("empty address".into());
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port {port:?} is not 0-65535"))?;
    Ok(IndexEntry {
        node_id,
        zone: zone.to_string(),
        rack: dec(rack)?,
        address,
        port,
    })
}

/// Splits a path under the topology root into (zone directory, entry name); `None` for the
/// root itself, zone directories and anything deeper.
pub fn split_entry_path<'a>(topology_root: &str, path: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix(topology_root)?.strip_prefix('/')?;
    let (zone_dir, name) = rest.split_once('/')?;
    if name.contains('/') || zone_dir.is_empty() || name.is_empty() {
        return None;
    }
    Some((zone_dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, zone: &str, rack: &str, addr: &str, port: u16) -> IndexEntry {
        IndexEntry {
            node_id: id.into(),
            zone: zone.into(),
            rack: rack.into(),
            address: addr.into(),
            port,
        }
    }

    #[test]
    fn round_trip() {
        for e in [
            entry("node-a", "eu-1a", "r1", "198.18.0.1", 862),
            entry("n~1/%", "", "", "fd00::1", 0),
            entry("ü né", "zone with spaces", "~", "host.example", 65535),
        ] {
            let root = "/meshprobe/heartbeat.topology";
            let path = entry_path(root, &e);
            let (zdir, name) = split_entry_path(root, &path).unwrap();
            assert!(!name.contains('/') && !zdir.contains('/'), "{path}");
            let zone = parse_zone_dir(zdir).unwrap();
            assert_eq!(parse_entry(&zone, name).unwrap(), e);
        }
        assert_eq!(zone_dir_name(""), "=");
        let info = NodeInfo {
            node_id: "n 1".into(),
            zone: "z/1".into(),
            rack: "r".into(),
            public_address: " 198.18.0.1 ".into(),
            public_port: 862,
            ..Default::default()
        };
        let r = registration("/mp/hb", &info);
        assert_eq!(r.path, "/mp/hb/n 1");
        assert_eq!(r.entry, "/mp/hb.topology/=z%2F1/1~n%201~r~198.18.0.1~862");
        assert_eq!(NodeInfo::decode(r.data.as_slice()).unwrap(), info);
        assert_eq!(
            entry_name(&entry("a", "z", "r", "fd00::1", 862)),
            "1~a~r~fd00::1~862"
        );
    }

    #[test]
    fn foreign_names_are_refused() {
        assert!(parse_entry("z", "a~b").is_err());
        assert!(parse_entry("z", "2~a~r~1.2.3.4~862").is_err());
        assert!(parse_entry("z", "1~~r~1.2.3.4~862").is_err());
        assert!(parse_entry("z", "1~a~r~~862").is_err());
        assert!(parse_entry("z", "1~a~r~1.2.3.4~70000").is_err());
        assert!(parse_entry("z", "1~%ff~r~1.2.3.4~862").is_err());
        assert!(parse_entry("z", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(parse_zone_dir("zone").is_err());
        assert_eq!(split_entry_path("/r.topology", "/r.topology/=z"), None);
        assert_eq!(split_entry_path("/r.topology", "/r.topology/=z/a/b"), None);
        assert_eq!(split_entry_path("/r.topology", "/other/=z/a"), None);
    }

    #[test]
    fn registrations_are_decoded_within_a_bound() {
        let info = NodeInfo {
            node_id: "n".into(),
            public_address: "198.18.0.1".into(),
            ..Default::default()
        };
        assert_eq!(decode_node_info(&info.encode_to_vec()), Some(info.clone()));
        let mut big = info;
        big.version = "v".repeat(MAX_NODE_INFO_LEN);
        assert_eq!(decode_node_info(&big.encode_to_vec()), None);
        assert_eq!(decode_node_info(&[0xff; 8]), None);
    }
}
