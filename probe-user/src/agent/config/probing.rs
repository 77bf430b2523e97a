//! Probing: how often, how long a probe may take, which sizes, which window.
use std::time::Duration;

use probe_common::wire as off;

use super::AgentArgs;
use crate::cli::error::ConfigError;

/// The prober's tuning, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub interval: Duration,
    /// ± percent of each interval.
    pub jitter_pct: u8,
    pub timeout: Duration,
    pub sizes: Vec<usize>,
    pub window: Duration,
    /// How long a departed peer's state is kept.
    pub peer_grace: Duration,
}

impl Settings {
    pub(super) fn from_args(a: &AgentArgs) -> Settings {
        Settings {
            interval: a.interval,
            jitter_pct: a.jitter,
            timeout: a.timeout,
            sizes: a.sizes.clone(),
            window: a.window,
            peer_grace: a.peer_grace,
        }
    }
}

/// Timing first, then sizes.
pub(super) fn validate(a: &AgentArgs) -> Result<(), ConfigError> {
    timing(a)?;
    sizes(a)
}

/// Intervals, timeouts and the window must fit together.
fn timing(a: &AgentArgs) -> Result<(), ConfigError> {
    if a.interval.is_zero() {
        return Err(ConfigError::new(
            "MESHPROBE_INTERVAL (--interval)",
            "must be greater than 0",
            "e.g. 1s",
        ));
    }
    if a.timeout.is_zero() {
        return Err(ConfigError::new(
            "MESHPROBE_TIMEOUT (--timeout)",
            "must be greater than 0",
            "e.g. 1s",
        ));
    }
    if a.window < Duration::from_millis(100) {
        return Err(ConfigError::new(
            "MESHPROBE_WINDOW (--window)",
            format!("{} is too short", humantime::format_duration(a.window)),
            "use 100ms or more (default 10s)",
        ));
    }
    if a.jitter > 50 {
        return Err(ConfigError::new(
            "MESHPROBE_JITTER (--jitter)",
            format!("{} % is out of range", a.jitter),
            "use a percentage from 0 to 50",
        ));
    }
    if a.interval > a.window {
        return Err(ConfigError::new(
            "MESHPROBE_INTERVAL (--interval)",
            format!(
                "{} is longer than MESHPROBE_WINDOW {}: some windows would have no probes",
                humantime::format_duration(a.interval),
                humantime::format_duration(a.window)
            ),
            "lower the interval or raise the window",
        ));
    }
    if a.timeout > a.window {
        return Err(ConfigError::new(
            "MESHPROBE_TIMEOUT (--timeout)",
            format!(
                "{} is longer than MESHPROBE_WINDOW {}",
                humantime::format_duration(a.timeout),
                humantime::format_duration(a.window)
            ),
            "a lost probe must be known within a window: lower the timeout or raise the window",
        ));
    }
    // In-flight probes per peer stay bounded (memory is fixed per peer).
    let in_flight = a.timeout.as_nanos() / a.interval.as_nanos().max(1);
    if in_flight >= crate::probe::session::AGENT_MAX_IN_FLIGHT as u128 {
        return Err(ConfigError::new(
            "MESHPROBE_TIMEOUT (--timeout)",
            format!(
                "{} over an interval of {} keeps {in_flight} probes in flight per peer",
                humantime::format_duration(a.timeout),
                humantime::format_duration(a.interval)
            ),
            format!(
                "keep timeout/interval below {}",
                crate::probe::session::AGENT_MAX_IN_FLIGHT
            ),
        ));
    }
    Ok(())
}

/// Every size must be a STAMP packet.
fn sizes(a: &AgentArgs) -> Result<(), ConfigError> {
    if a.sizes.is_empty() {
        return Err(ConfigError::new(
            "MESHPROBE_SIZES (--sizes)",
            "empty",
            "e.g. 68 or 68,512,1400",
        ));
    }
    for &s in &a.sizes {
        if s < off::BASE_LEN
            || (s > off::BASE_LEN && s < off::TLV_START + off::TLV_HEADER_LEN)
            || s > crate::wire::MAX_PACKET_LEN
        {
            return Err(ConfigError::new(
                "MESHPROBE_SIZES (--sizes)",
                format!("{s} octets is not a valid probe size"),
                format!(
                    "use {} or {}..{} (68 and up carry T4 in-band)",
                    off::BASE_LEN,
                    off::TLV_START + off::TLV_HEADER_LEN,
                    crate::wire::MAX_PACKET_LEN
                ),
            ));
        }
    }
    Ok(())
}
