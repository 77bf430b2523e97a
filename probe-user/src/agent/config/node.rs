//! Who this agent is: its node id (a znode name and every record's src), zone and rack.
use super::AgentArgs;
use crate::cli::error::ConfigError;

/// This node's identity, checked.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    pub zone: String,
    pub rack: String,
}

impl Node {
    /// The node id defaults to the host name.
    pub(super) fn from_args(a: &AgentArgs) -> Node {
        Node {
            id: a.node_id.clone().unwrap_or_else(hostname),
            zone: a.zone.clone(),
            rack: a.rack.clone(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The node id names a znode and the records' keys.
pub(super) fn validate(a: &AgentArgs) -> Result<(), ConfigError> {
    if let Some(n) = &a.node_id
        && (n.is_empty() || n.contains('/') || n == "." || n == ".." || n.contains("->"))
    {
        return Err(ConfigError::new(
            "MESHPROBE_NODE_ID (--node-id)",
            format!("`{n}` cannot name a znode or a record key"),
            "use a name without '/' or '->', e.g. the node's host name",
        ));
    }
    Ok(())
}
