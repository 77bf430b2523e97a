//! STAMP authenticated mode: the sender's and the reflector's modes and the key files they
//! share (`crate::auth`). The files are read here, so a missing or bad key stops the agent
//! before anything starts (exit 2, naming the setting).
use std::sync::Arc;

use super::AgentArgs;
use crate::{
    auth::{Auth, KeyFiles, KeyRing, Mode},
    cli::error::ConfigError,
};

const KEY: &str = "MESHPROBE_STAMP_KEY_FILE (--stamp-key-file)";
const NEXT_KEY: &str = "MESHPROBE_STAMP_NEXT_KEY_FILE (--stamp-next-key-file)";

/// The two roles' settings; one key ring when either is on.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub sender: Auth,
    pub reflector: Auth,
}

impl Settings {
    pub(super) fn from_args(a: &AgentArgs) -> Result<Settings, ConfigError> {
        let on = a.stamp_auth_sender.is_on() || a.stamp_auth_reflector.is_on();
        if !on {
            if a.stamp_key_file.is_some() || a.stamp_next_key_file.is_some() {
                tracing::info!(
                    "MESHPROBE_STAMP_KEY_FILE is set but STAMP authentication is off for both \
                     roles (MESHPROBE_STAMP_AUTH_SENDER, MESHPROBE_STAMP_AUTH_REFLECTOR)"
                );
            }
            return Ok(Settings::default());
        }
        let Some(current) = a.stamp_key_file.clone() else {
            return Err(ConfigError::new(
                KEY,
                "unset while STAMP authentication is on (MESHPROBE_STAMP_AUTH_SENDER or \
                 MESHPROBE_STAMP_AUTH_REFLECTOR)",
                "give the file holding the hex key (a mounted Secret), or set both modes to off",
            ));
        };
        let ring = KeyRing::load(KeyFiles {
            current,
            next: a.stamp_next_key_file.clone(),
            current_setting: KEY,
            next_setting: NEXT_KEY,
        })
        .map_err(ConfigError::named)?;
        let role = |mode: Mode| Auth {
            mode,
            keys: mode.is_on().then(|| Arc::clone(&ring)),
        };
        Ok(Settings {
            sender: role(a.stamp_auth_sender),
            reflector: role(a.stamp_auth_reflector),
        })
    }

    /// Starts watching the key files (once, for both roles).
    pub fn watch(&self) {
        if let Some(ring) = self.sender.ring().or(self.reflector.ring()) {
            ring.watch(crate::auth::POLL);
        }
    }
}
