//! Stamping: which interfaces get the TC programs, how they attach, which RX stamps are used.
use super::AgentArgs;
use crate::ebpf::LoadOptions;

/// The stamping settings (clap has checked them).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Empty: every UP interface.
    pub interfaces: Vec<String>,
    pub no_ebpf: bool,
    pub load: LoadOptions,
    pub clock_synchronized: bool,
    pub hw_rx_stamps: bool,
    pub hw_tx_stamps: bool,
    pub no_sw_rx_stamps: bool,
}

impl Settings {
    pub(super) fn from_args(a: &AgentArgs) -> Settings {
        Settings {
            interfaces: a.interfaces.clone(),
            no_ebpf: a.no_ebpf,
            load: LoadOptions {
                mode: a.attach,
                log_level: a.ebpf_log_level,
                kernel_clock: Some(a.kernel_clock),
                handoff: Some(a.handoff),
            },
            clock_synchronized: a.clock_synchronized,
            hw_rx_stamps: a.hw_rx_stamps,
            hw_tx_stamps: a.hw_tx_stamps,
            no_sw_rx_stamps: a.no_sw_rx_stamps,
        }
    }
}
