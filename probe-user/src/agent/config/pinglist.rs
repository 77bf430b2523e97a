//! The pinglist function's tuning (README "Pinglists" has the rules).
use super::AgentArgs;
use crate::{cli::error::ConfigError, pinglist::Params};

/// The tuning must leave every node enough probers.
pub(super) fn validate(a: &AgentArgs) -> Result<(), ConfigError> {
    // The error names the setting.
    a.pinglist_params()
        .validate()
        .map_err(|e| ConfigError::new("MESHPROBE_PINGLIST_*", e.to_string(), ""))
}

impl AgentArgs {
    /// The pinglist function's tuning.
    pub fn pinglist_params(&self) -> Params {
        Params {
            full_mesh_max: self.pinglist_full_mesh_max,
            rack_peers: self.pinglist_rack_peers,
            zone_peers: self.pinglist_zone_peers,
            min_probers: self.pinglist_min_probers,
            max_peers: self.pinglist_max_peers,
        }
    }
}
