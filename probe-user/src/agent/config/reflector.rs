//! The reflector: where it listens, the address peers are told, and whom it answers.
use std::net::{IpAddr, SocketAddr};

use probe_common::STAMP_DEFAULT_PORT;

use super::AgentArgs;
use crate::{cli::error::ConfigError, probe::policy::PolicyConfig};

/// The reflector's settings, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub policy: PolicyConfig,
    pub allow_ephemeral_port: bool,
}

impl Settings {
    pub(super) fn from_args(a: &AgentArgs) -> Settings {
        let ip: IpAddr = a
            .register_listener_dns
            .parse()
            .expect("validated as an IP address");
        Settings {
            listen: SocketAddr::new(ip, a.register_listener_port),
            policy: PolicyConfig {
                allow: a.reflect_allow.clone(),
                per_source: a.reflect_budget_per_source.0,
                total: a.reflect_budget_total.0,
                // Set from `stamp_auth` when the reflector starts (one key ring for both roles).
                auth: crate::auth::Auth::OFF,
            },
            allow_ephemeral_port: a.reflect_allow_ephemeral_port,
        }
    }
}

/// A fixed port outside the ephemeral range, a local IP address; the registered port too.
pub(super) fn validate(a: &AgentArgs) -> Result<(), ConfigError> {
    if a.register_listener_port == 0 {
        return Err(ConfigError::new(
            "REGISTER_LISTENER_PORT (--register-listener-port)",
            "0 is not a fixed port",
            format!("use a port peers can reach, e.g. {STAMP_DEFAULT_PORT}"),
        ));
    }
    if let Err(e) = crate::probe::policy::check_reflector_port(
        a.register_listener_port,
        a.reflect_allow_ephemeral_port,
    ) {
        return Err(ConfigError::new(
            "REGISTER_LISTENER_PORT (--register-listener-port)",
            e.to_string(),
            "",
        ));
    }
    if a.register_public_port == Some(0) {
        return Err(ConfigError::new(
            "REGISTER_PUBLIC_PORT (--register-public-port)",
            "0 is not a port",
            "leave it unset to use REGISTER_LISTENER_PORT",
        ));
    }
    if a.register_listener_dns.parse::<IpAddr>().is_err() {
        return Err(ConfigError::new(
            "REGISTER_LISTENER_DNS (--register-listener-dns)",
            format!("`{}` is not an IP address", a.register_listener_dns),
            "use a local address such as :: (all, IPv4 too), 0.0.0.0 or 198.18.0.2",
        ));
    }
    Ok(())
}
