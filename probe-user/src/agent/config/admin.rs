//! The admin listener (/metrics, /healthz, /readyz, /pinglist) and how many peers /metrics
//! names.
use std::net::SocketAddr;

use super::AgentArgs;
use crate::cli::error::ConfigError;

/// Default of MESHPROBE_METRICS_WORST_PEERS.
pub const DEFAULT_WORST_PEERS: usize = 10;
/// Most peers /metrics may name: the series count stays bounded whatever the setting.
pub const MAX_WORST_PEERS: usize = 1000;

/// The admin settings, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// None: off.
    pub listen: Option<SocketAddr>,
    pub worst_peers: usize,
}

impl Settings {
    pub(super) fn from_args(a: &AgentArgs) -> Settings {
        Settings {
            listen: a.admin_listen.0,
            worst_peers: a.metrics_worst_peers().0,
        }
    }
}

/// /metrics stays bounded.
pub(super) fn validate(a: &AgentArgs) -> Result<(), ConfigError> {
    let (worst, setting) = a.metrics_worst_peers();
    if worst > MAX_WORST_PEERS {
        return Err(ConfigError::new(
            setting,
            format!("{worst} peers by name is too many series"),
            format!(
                "use 0 to {MAX_WORST_PEERS} (default {DEFAULT_WORST_PEERS}); zone pairs \
                 cover every peer"
            ),
        ));
    }
    Ok(())
}

impl AgentArgs {
    /// The worst peers /metrics names, and the setting that said so: MESHPROBE_METRICS_WORST_PEERS,
    /// else the deprecated MESHPROBE_METRICS_PEER_LIMIT, else the default.
    pub fn metrics_worst_peers(&self) -> (usize, &'static str) {
        match (self.metrics_worst_peers, self.metrics_peer_limit) {
            (Some(k), _) => (k, "MESHPROBE_METRICS_WORST_PEERS (--metrics-worst-peers)"),
            (None, Some(k)) => (k, "MESHPROBE_METRICS_PEER_LIMIT (--metrics-peer-limit)"),
            (None, None) => (
                DEFAULT_WORST_PEERS,
                "MESHPROBE_METRICS_WORST_PEERS (--metrics-worst-peers)",
            ),
        }
    }

    /// What to warn about a deprecated setting that is still set.
    pub fn deprecation(&self) -> Option<String> {
        let old = self.metrics_peer_limit?;
        Some(match self.metrics_worst_peers {
            Some(k) => format!(
                "MESHPROBE_METRICS_PEER_LIMIT={old} is deprecated and ignored: \
                 MESHPROBE_METRICS_WORST_PEERS={k} is set; remove the old setting"
            ),
            None => format!(
                "MESHPROBE_METRICS_PEER_LIMIT is deprecated: /metrics now has series per zone \
                 pair and names only the worst K peers; read as MESHPROBE_METRICS_WORST_PEERS={old}. \
                 Rename the setting"
            ),
        })
    }
}
