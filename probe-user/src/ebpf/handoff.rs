//! The driver hand-off program (`names::PROG_HANDOFF`, tp_btf `net_dev_start_xmit`): egress
//! stamps where the packet leaves the host instead of at TC. Optional: where it cannot load
//! (no kernel BTF, offsets not resolved, attach refused) or is off, the TC stamps stand, and
//! the process says so.
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        BtfTracePoint,
        tp_btf::{BtfTracePointLink, BtfTracePointLinkId},
    },
};
use probe_common::{KernelOffsets, btf_offsets, names};

/// The tracepoint: in `xmit_one`, after the TC hook and the packet taps, just before the
/// driver's `ndo_start_xmit`.
pub const TRACEPOINT: &str = "net_dev_start_xmit";

/// The setting (`--handoff`, `MESHPROBE_HANDOFF`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HandoffSetting {
    /// Where the kernel allows it.
    #[default]
    Auto,
    Off,
}

impl std::str::FromStr for HandoffSetting {
    type Err = String;

    /// The one rule for the setting's values, for every subcommand.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            _ => Err(format!(
                "`{s}` is not a hand-off setting: expected auto or off \
                 (MESHPROBE_HANDOFF, --handoff)"
            )),
        }
    }
}

/// clap's value parser for the setting.
pub fn parse_handoff(s: &str) -> Result<HandoffSetting, String> {
    s.parse()
}

/// Where the egress stamps (T1, and T3's correction) are taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// At the driver hand-off.
    On,
    /// At TC egress only, and why.
    Off(String),
}

impl Handoff {
    /// "on" or "off": the `handoff` output field and the metric's `state`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Handoff::On => "on",
            Handoff::Off(_) => "off",
        }
    }

    pub fn is_on(&self) -> bool {
        *self == Handoff::On
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("--handoff off")]
    Disabled,
    #[error("kernel struct offsets: {0}")]
    Offsets(#[from] btf_offsets::OffsetsError),
    #[error("the kernel's BTF: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("the BPF object has no program `{}`", names::PROG_HANDOFF)]
    MissingProgram,
    #[error("loading `{prog}`: {source}", prog = names::PROG_HANDOFF)]
    Load { source: aya::programs::ProgramError },
    #[error("attaching `{prog}` to {TRACEPOINT}: {source}", prog = names::PROG_HANDOFF)]
    Attach { source: aya::programs::ProgramError },
}

/// Before load: the kernel's offsets for the program's global (`set_offsets`); the program
/// loads only with them. `Err` says why it will not be loaded.
pub fn offsets(setting: HandoffSetting) -> Result<KernelOffsets, HandoffError> {
    if setting == HandoffSetting::Off {
        return Err(HandoffError::Disabled);
    }
    Ok(btf_offsets::from_sys()?)
}

pub fn set_offsets<'a>(loader: &mut EbpfLoader<'a>, offsets: &'a KernelOffsets) {
    loader.override_global(names::GLOBAL_KERNEL_OFFSETS, offsets, true);
}

/// After load: loads and attaches the program; its link detaches on drop.
pub fn attach(ebpf: &mut Ebpf) -> Result<BtfTracePointLink, HandoffError> {
    let btf = Btf::from_sys_fs()?;
    let p: &mut BtfTracePoint = ebpf
        .program_mut(names::PROG_HANDOFF)
        .ok_or(HandoffError::MissingProgram)?
        .try_into()
        .map_err(|source| HandoffError::Load { source })?;
    p.load(TRACEPOINT, &btf)
        .map_err(|source| HandoffError::Load { source })?;
    let id: BtfTracePointLinkId = p
        .attach()
        .map_err(|source| HandoffError::Attach { source })?;
    p.take_link(id)
        .map_err(|source| HandoffError::Attach { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_setting_values() {
        assert_eq!("auto".parse(), Ok(HandoffSetting::Auto));
        assert_eq!(" OFF ".parse(), Ok(HandoffSetting::Off));
        assert_eq!(HandoffSetting::default(), HandoffSetting::Auto);
        for bad in ["", "on", "tc", "auto,off"] {
            let e = bad.parse::<HandoffSetting>().unwrap_err();
            assert!(
                e.contains("auto or off") && e.contains("MESHPROBE_HANDOFF"),
                "{bad}: {e}"
            );
        }
        assert_eq!(Handoff::On.as_str(), "on");
        assert_eq!(Handoff::Off("x".into()).as_str(), "off");
    }
}
