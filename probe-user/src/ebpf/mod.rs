//! Loads a BPF object, attaches its TC programs (TCX where the kernel has it, clsact
//! otherwise), and gives typed access to its maps. The probe's object is [`PROBE_OBJECT`];
//! `meshprobe-delay` loads its own object through the same [`Attached`].
pub mod handoff;
mod orphan_filters;

use std::{collections::BTreeMap, io};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        ProgramType, SchedClassifier, TcAttachType,
        links::{Link as _, LinkOrder},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
    },
    sys::{BpfHelper, is_helper_supported},
    util::KernelVersion,
};
use probe_common::{
    Config, FollowUp, FollowUpKey, RxStamp, SentT1, StampKey, counter, kernel_clock, names,
    skb_fields,
};
use tracing::{debug, info, warn};

pub use handoff::{Handoff, HandoffSetting, parse_handoff};
pub use orphan_filters::OrphanReport;

/// The probe's BPF object, built from this source tree by build.rs (aya-build, nightly
/// toolchain).
pub static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the BPF object failed (needs CAP_BPF + CAP_NET_ADMIN, or root): {0}")]
    Load(#[from] Box<aya::EbpfError>),
    #[error("the BPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the BPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("loading program `{name}` into the kernel: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching `{prog}` to {iface} {dir}: {source}")]
    Attach {
        prog: &'static str,
        iface: String,
        dir: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("interface `{0}` does not exist")]
    NoSuchInterface(String),
    #[error(
        "interface `{0}` has no Ethernet header (link type {1:?}): the stamping programs \
         support Ethernet and loopback devices; probe over another interface"
    )]
    NotEthernet(String, Option<u16>),
    #[error("probe socket: {0}")]
    Socket(io::Error),
    #[error("state file {path}: {source}")]
    State { path: String, source: io::Error },
}

/// How programs are attached to the TC hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX on Linux ≥ 6.6, clsact (netlink) before that.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn attach_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The kernel clock setting (`--kernel-clock`, `MESHPROBE_KERNEL_CLOCK`): which clock the
/// programs read for their stamps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelClock {
    /// TAI where the kernel has `bpf_ktime_get_tai_ns` (Linux ≥ 6.1), monotonic elsewhere.
    #[default]
    Auto,
    Tai,
    Monotonic,
}

impl std::str::FromStr for KernelClock {
    type Err = String;

    /// The one rule for the setting's values, for every subcommand.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "tai" => Ok(Self::Tai),
            "monotonic" => Ok(Self::Monotonic),
            _ => Err(format!(
                "`{s}` is not a kernel clock: expected auto, tai or monotonic \
                 (MESHPROBE_KERNEL_CLOCK, --kernel-clock)"
            )),
        }
    }
}

/// clap's value parser for the setting.
pub fn parse_kernel_clock(s: &str) -> Result<KernelClock, String> {
    s.parse()
}

/// The clock the loaded programs read (the value of their `KERNEL_CLOCK` global).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockMode {
    /// `bpf_ktime_get_tai_ns`.
    Tai,
    /// `bpf_ktime_get_ns` + CLOCK_TAI − CLOCK_MONOTONIC, kept current by userspace.
    Monotonic,
}

impl ClockMode {
    /// "tai" or "monotonic": the `kernel_clock` output field.
    pub fn as_str(self) -> &'static str {
        match self {
            ClockMode::Tai => "tai",
            ClockMode::Monotonic => "monotonic",
        }
    }

    fn global(self) -> u8 {
        match self {
            ClockMode::Tai => kernel_clock::TAI,
            ClockMode::Monotonic => kernel_clock::MONOTONIC,
        }
    }
}

impl KernelClock {
    /// The clock to load the programs with, and why when `auto` chose monotonic. `auto` asks
    /// the kernel (aya's helper probe, libbpf's method: a minimal TC program calling the
    /// helper, and the verifier's answer); a probe that cannot run at all (no privilege) keeps
    /// TAI, and loading the programs then says what is wrong.
    pub fn resolve(self) -> (ClockMode, Option<String>) {
        match self {
            KernelClock::Tai => (ClockMode::Tai, None),
            KernelClock::Monotonic => (ClockMode::Monotonic, None),
            KernelClock::Auto => match is_helper_supported(
                ProgramType::SchedClassifier,
                BpfHelper::BPF_FUNC_ktime_get_tai_ns,
            ) {
                Ok(true) => (ClockMode::Tai, None),
                Ok(false) => (
                    ClockMode::Monotonic,
                    Some("the kernel has no bpf_ktime_get_tai_ns (Linux < 6.1)".into()),
                ),
                Err(e) => {
                    debug!("probing for bpf_ktime_get_tai_ns: {e}; assuming it is there");
                    (ClockMode::Tai, None)
                }
            },
        }
    }
}

/// The `skb_fields` bits for a kernel version (all when it is unknown), and the names of the
/// fields left out. By version, like TCX: a backporting distribution kernel only loses the
/// fields (the programs still load), never gains one it lacks.
fn skb_fields_of(version: Option<KernelVersion>) -> (u8, Vec<&'static str>) {
    let Some(v) = version else {
        return (skb_fields::ALL, Vec::new());
    };
    let mut bits = 0;
    let mut missing = Vec::new();
    for (bit, name, since) in [
        (
            skb_fields::HWTSTAMP,
            "hwtstamp (5.16)",
            KernelVersion::new(5, 16, 0),
        ),
        (
            skb_fields::TSTAMP_TYPE,
            "tstamp_type (5.18)",
            KernelVersion::new(5, 18, 0),
        ),
    ] {
        if v >= since {
            bits |= bit;
        } else {
            missing.push(name);
        }
    }
    (bits, missing)
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub mode: AttachMode,
    /// aya-log level inside the programs: 0 = off (the verifier prunes the log calls).
    pub log_level: u8,
    /// The clock of an object with a `KERNEL_CLOCK` global (the probe's); `None` for one
    /// without (the delay element's).
    pub kernel_clock: Option<KernelClock>,
    /// The driver hand-off program of an object that has it (the probe's); `None` for one
    /// without.
    pub handoff: Option<HandoffSetting>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            mode: AttachMode::Auto,
            log_level: 0,
            kernel_clock: None,
            handoff: None,
        }
    }
}

/// A loaded BPF object with its attachments; detaches on `detach()` or drop. The map accessors
/// below the generic ones are the probe object's.
pub struct Attached {
    ebpf: Ebpf,
    links: Vec<(String, Direction, &'static str, SchedClassifierLink)>,
    mode: &'static str,
    clock: Option<ClockMode>,
    /// Where the egress stamps are taken (`None`: an object without the hand-off program).
    handoff: Option<Handoff>,
    /// The hand-off program's attachment; detached on drop.
    _handoff_link: Option<aya::programs::tp_btf::BtfTracePointLink>,
    /// The last `Config` written (the probe object's), so one field can be updated.
    config: Option<Config>,
    state: orphan_filters::StateFile,
    _logger: Option<tokio::task::JoinHandle<()>>,
}

impl Attached {
    /// Loads `object` (e.g. [`PROBE_OBJECT`]) and attaches `attach` = [(program, direction)] on
    /// every interface.
    pub fn load(
        object: &[u8],
        interfaces: &[String],
        attach: &[(&'static str, Direction)],
        opts: &LoadOptions,
    ) -> Result<Self, EbpfError> {
        for iface in interfaces {
            if nix::net::if_::if_nametoindex(iface.as_str()).is_err() {
                return Err(EbpfError::NoSuchInterface(iface.clone()));
            }
            if !crate::net::has_ethernet_header(iface) {
                return Err(EbpfError::NotEthernet(
                    iface.clone(),
                    crate::net::link_type(iface),
                ));
            }
        }
        let report = orphan_filters::clean();
        if report.removed > 0 {
            info!(
                "removed {} TC attachment(s) left by crashed meshprobe process(es)",
                report.removed
            );
        }
        let level = opts.log_level;
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, false);
        let clock = opts.kernel_clock.map(|setting| {
            let (clock, why) = setting.resolve();
            match why {
                Some(why) => info!("kernel clock: {} ({why})", clock.as_str()),
                None => info!("kernel clock: {}", clock.as_str()),
            }
            clock
        });
        let clock_global = clock.map(ClockMode::global);
        if let Some(v) = &clock_global {
            loader.override_global(names::GLOBAL_KERNEL_CLOCK, v, true);
        }
        // The probe's object (the one with a clock) also has the context-field switches.
        let skb = clock.map(|_| {
            let (bits, missing) = skb_fields_of(KernelVersion::current().ok());
            if !missing.is_empty() {
                info!(
                    "this kernel's __sk_buff has no {}: not read",
                    missing.join(", ")
                );
            }
            bits
        });
        if let Some(v) = &skb {
            loader.override_global(names::GLOBAL_SKB_FIELDS, v, true);
        }
        let offsets = opts.handoff.map(handoff::offsets);
        if let Some(Ok(o)) = &offsets {
            handoff::set_offsets(&mut loader, o);
        }
        let mut ebpf = loader.load(object).map_err(Box::new)?;
        let logger = if level > 0 {
            start_logger(&mut ebpf)
        } else {
            None
        };

        let use_tcx = match opts.mode {
            AttachMode::Auto => {
                KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
            }
            AttachMode::Tcx => true,
            AttachMode::Clsact => false,
        };
        let mode = if use_tcx { "tcx" } else { "clsact" };
        let mut state = orphan_filters::StateFile::create()?;
        let mut links = Vec::new();
        let mut loaded: Vec<&'static str> = Vec::new();
        for &(prog, dir) in attach {
            let p: &mut SchedClassifier = ebpf
                .program_mut(prog)
                .ok_or(EbpfError::MissingProgram(prog))?
                .try_into()
                .map_err(|source| EbpfError::Program {
                    name: prog,
                    source: Box::new(source),
                })?;
            if !loaded.contains(&prog) {
                p.load().map_err(|source| EbpfError::Program {
                    name: prog,
                    source: Box::new(source),
                })?;
                loaded.push(prog);
            }
            for iface in interfaces {
                let attach_err = |source| EbpfError::Attach {
                    prog,
                    iface: iface.clone(),
                    dir: dir.as_str(),
                    source: Box::new(source),
                };
                let options = if use_tcx {
                    TcAttachOptions::TcxOrder(LinkOrder::default())
                } else {
                    // clsact may already exist (another tool, or us): that is fine.
                    if let Err(e) = tc::qdisc_add_clsact(iface) {
                        debug!("qdisc_add_clsact({iface}): {e}");
                    }
                    TcAttachOptions::Netlink(NlOptions::default())
                };
                let id = p
                    .attach_with_options(iface, dir.attach_type(), options)
                    .map_err(attach_err)?;
                let link = p.take_link(id).map_err(attach_err)?;
                if !use_tcx {
                    // Netlink filters outlive the process: record them so a successor can
                    // remove them if we crash.
                    if let (Ok(prio), Ok(handle)) = (link.priority(), link.handle()) {
                        state.record(iface, dir, prio, handle.into())?;
                    }
                }
                debug!("attached {prog} to {iface} {} ({mode})", dir.as_str());
                links.push((iface.clone(), dir, prog, link));
            }
        }
        // After the TC programs: the hand-off program only refines their egress stamps.
        let (handoff, handoff_link) = match offsets {
            None => (None, None),
            Some(o) => match o.and_then(|_| handoff::attach(&mut ebpf)) {
                Ok(link) => {
                    info!(
                        "driver hand-off stamps: on (tp_btf/{})",
                        handoff::TRACEPOINT
                    );
                    (Some(Handoff::On), Some(link))
                }
                Err(e) => {
                    let why = e.to_string();
                    let why = why.lines().next().unwrap_or_default().to_string();
                    info!("driver hand-off stamps: off, TC egress stamps ({why})");
                    (Some(Handoff::Off(why)), None)
                }
            },
        };
        Ok(Self {
            ebpf,
            links,
            mode,
            clock,
            handoff,
            _handoff_link: handoff_link,
            config: None,
            state,
            _logger: logger,
        })
    }

    /// "tcx" or "clsact".
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// The clock the programs stamp with (`None`: an object without the choice).
    pub fn clock(&self) -> Option<ClockMode> {
        self.clock
    }

    /// Where the egress stamps are taken (`None`: an object without the hand-off program).
    pub fn handoff(&self) -> Option<&Handoff> {
        self.handoff.as_ref()
    }

    pub fn interfaces(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> = self.links.iter().map(|l| &l.0).collect();
        set.into_iter().cloned().collect()
    }

    /// Writes `value` at `index` of the array map `name`.
    pub fn array_set<V: aya::Pod>(
        &mut self,
        name: &'static str,
        index: u32,
        value: V,
    ) -> Result<(), EbpfError> {
        let err = |source| EbpfError::Map {
            name,
            source: Box::new(source),
        };
        let map = self.ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
        let mut arr: Array<&mut MapData, V> = Array::try_from(map).map_err(err)?;
        arr.set(index, value, 0).map_err(err)
    }

    /// Inserts `entries` into the hash map `name`.
    pub fn hash_insert<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), EbpfError> {
        let err = |source| EbpfError::Map {
            name,
            source: Box::new(source),
        };
        let map = self.ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
        let mut m: BpfHashMap<&mut MapData, K, V> = BpfHashMap::try_from(map).map_err(err)?;
        for (k, v) in entries {
            m.insert(k, v, 0).map_err(err)?;
        }
        Ok(())
    }

    /// Sums the per-CPU counters of the per-CPU array `name`, whose index `i` is `names[i]`.
    pub fn per_cpu_sums(
        &self,
        name: &'static str,
        names: &[&'static str],
    ) -> Result<BTreeMap<&'static str, u64>, EbpfError> {
        let err = |source| EbpfError::Map {
            name,
            source: Box::new(source),
        };
        let map = self.ebpf.map(name).ok_or(EbpfError::MissingMap(name))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(err)?;
        let mut out = BTreeMap::new();
        for (i, cname) in names.iter().enumerate() {
            let v = arr.get(&(i as u32), 0).map_err(err)?;
            out.insert(*cname, v.iter().sum());
        }
        Ok(out)
    }

    // The probe object's maps.

    /// Registers one of our probe sockets: its local port (the programs' prefilter) and its
    /// cookie (what they act on) with `role` (`probe_common::port` flags); role 0 removes both.
    pub fn set_socket(&mut self, port: u16, cookie: u64, role: u8) -> Result<(), EbpfError> {
        let name = names::MAP_SOCKETS;
        let err = |source| EbpfError::Map {
            name,
            source: Box::new(source),
        };
        let map = self.ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
        let mut m: BpfHashMap<&mut MapData, u64, u8> = BpfHashMap::try_from(map).map_err(err)?;
        if role == 0 {
            // Already gone is fine: unregistering is best effort.
            let _ = m.remove(&cookie);
        } else {
            m.insert(cookie, role, 0).map_err(err)?;
        }
        self.array_set(names::MAP_PORTS, port as u32, role)
    }

    pub fn set_config(&mut self, cfg: Config) -> Result<(), EbpfError> {
        self.array_set(names::MAP_CONFIG, 0, cfg)?;
        self.config = Some(cfg);
        Ok(())
    }

    /// Updates `Config::mono_to_tai_ns` (monotonic clock mode), the rest as last set.
    pub fn set_mono_to_tai_ns(&mut self, offset_ns: i64) -> Result<(), EbpfError> {
        let cfg = Config {
            mono_to_tai_ns: offset_ns,
            ..self.config.unwrap_or_default()
        };
        self.set_config(cfg)
    }

    /// Sums the probe's per-CPU counters.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, EbpfError> {
        self.per_cpu_sums(names::MAP_COUNTERS, &counter::NAMES)
    }

    /// Takes T4 of a reply (local `port`, the reply's `ssid` and Session-Sender sequence
    /// number) that had no room for it in-band (see `T4_FALLBACK`).
    pub fn take_t4(&mut self, port: u16, ssid: u16, seq: u32) -> Option<RxStamp> {
        let name = names::MAP_T4_FALLBACK;
        let map = self.ebpf.map_mut(name)?;
        let mut m: BpfHashMap<&mut MapData, StampKey, RxStamp> = BpfHashMap::try_from(map).ok()?;
        let key = StampKey { port, ssid, seq };
        let v = m.get(&key, 0).ok()?;
        let _ = m.remove(&key);
        Some(v)
    }

    /// The hand-off correction the tracing program recorded for a reflector session's last
    /// reply (`FOLLOW_UP`), removed so that it is carried once. `None` without an entry, or
    /// with an object that has no such map.
    pub fn take_follow_up(&mut self, key: &FollowUpKey) -> Option<FollowUp> {
        let map = self.ebpf.map_mut(names::MAP_FOLLOW_UP)?;
        let mut m: BpfHashMap<&mut MapData, FollowUpKey, FollowUp> =
            BpfHashMap::try_from(map).ok()?;
        let v = m.get(key, 0).ok()?;
        let _ = m.remove(key);
        Some(v)
    }

    /// The `T1_SENT` record of the request (`port`, `ssid`, `seq`): T1 as the egress program
    /// stamped it and, when the hand-off program took it, the hand-off time. `None` when the
    /// slot holds another request (reused before this reply came).
    pub fn sent_t1(&self, port: u16, ssid: u16, seq: u32) -> Option<SentT1> {
        let name = names::MAP_T1_SENT;
        let map = self.ebpf.map(name)?;
        let arr: Array<&MapData, SentT1> = Array::try_from(map).ok()?;
        let v = arr.get(&SentT1::slot(port, ssid, seq), 0).ok()?;
        (v.port == port && v.ssid == ssid && v.seq == seq && v.t1 != 0).then_some(v)
    }

    /// Detaches every program; errors are logged, not fatal (the kernel drops TCX links with
    /// our file descriptors anyway).
    pub fn detach(mut self) {
        self.detach_all();
    }

    fn detach_all(&mut self) {
        for (iface, dir, prog, link) in self.links.drain(..) {
            match link.detach() {
                Ok(()) => debug!("detached {prog} from {iface} {}", dir.as_str()),
                Err(e) => warn!("detaching {prog} from {iface} {}: {e}", dir.as_str()),
            }
        }
        self.state.remove();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// aya-log's logger owns its ring buffer; it must stay alive and be drained (AsyncFd).
fn start_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!("eBPF logger unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the AsyncFd owns the logger, so its ring buffer fd stays valid while registered.
    let mut fd = match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("eBPF logger unavailable: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skb_fields_follow_the_kernel_version() {
        let of = |a, b| skb_fields_of(Some(KernelVersion::new(a, b, 0)));
        assert_eq!(
            of(5, 10),
            (0, vec!["hwtstamp (5.16)", "tstamp_type (5.18)"])
        );
        assert_eq!(
            of(5, 16),
            (skb_fields::HWTSTAMP, vec!["tstamp_type (5.18)"])
        );
        assert_eq!(of(6, 1), (skb_fields::ALL, vec![]));
        assert_eq!(skb_fields_of(None), (skb_fields::ALL, vec![]));
    }

    #[test]
    fn kernel_clock_setting_values() {
        assert_eq!("auto".parse(), Ok(KernelClock::Auto));
        assert_eq!("tai".parse(), Ok(KernelClock::Tai));
        assert_eq!("monotonic".parse(), Ok(KernelClock::Monotonic));
        assert_eq!(" Monotonic ".parse(), Ok(KernelClock::Monotonic));
        assert_eq!(KernelClock::default(), KernelClock::Auto);
        for bad in ["", "mono", "realtime", "tai,monotonic"] {
            let e = bad.parse::<KernelClock>().unwrap_err();
            assert!(
                e.contains("auto, tai or monotonic") && e.contains("MESHPROBE_KERNEL_CLOCK"),
                "{bad}: {e}"
            );
        }
        // A forced clock needs no probe of the kernel.
        assert_eq!(KernelClock::Tai.resolve(), (ClockMode::Tai, None));
        assert_eq!(
            KernelClock::Monotonic.resolve(),
            (ClockMode::Monotonic, None)
        );
        assert_eq!(ClockMode::Monotonic.as_str(), "monotonic");
        assert_eq!(ClockMode::Tai.global(), kernel_clock::TAI);
        assert_eq!(ClockMode::Monotonic.global(), kernel_clock::MONOTONIC);
    }
}
