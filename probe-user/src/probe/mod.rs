//! Session-Sender and Session-Reflector, and what they share: how packets get stamped.
mod nic_tx;
pub mod policy;
pub mod reflector;
pub mod sender;
pub mod session;

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use probe_common::{Config, RxStamp};
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    clock,
    ebpf::{Attached, ClockMode, Direction, EbpfError, LoadOptions, PROBE_OBJECT},
    net::{ProbeSocket, SockStamps},
    wire::{ErrorEstimate, NoBlock, RxStampInfo},
};

/// Where timestamps come from for this process.
#[derive(Clone)]
pub struct Stamping {
    /// The attached TC programs; `None` means socket timestamps (SO_TIMESTAMPING software).
    pub kernel: Option<Arc<Mutex<Attached>>>,
    /// Why the kernel programs are not in use, when they are not.
    pub fallback_reason: Option<String>,
    pub tai_offset_ns: i64,
    /// Clock synchronised to an external source (PTP): sets the S bit.
    pub synchronized: bool,
    /// NIC clocks run TAI (PTP-disciplined PHC): use hardware RX stamps for T2/T4.
    pub hw_rx_stamps: bool,
    /// NIC clocks run TAI: ask for hardware TX stamps (SO_TIMESTAMPING) and use them for T1
    /// and, through the reflector's follow-up, T3 (`--hw-tx-stamps`).
    pub hw_tx_stamps: bool,
    /// Kernel mode: ask for software RX stamps anyway (default), so that T2/T4 are the stamp
    /// the kernel takes when a packet enters the stack, not the later moment it reaches TC
    /// (`--no-sw-rx-stamps` turns this off).
    pub sw_rx_stamps: bool,
    /// Our requests carry it (`probe_common::wire::PROBE_TAG`); see `Config::probe_tag`.
    pub probe_tag: u32,
    /// The secret of our receive stamp blocks; see `Config::block_key`.
    pub block_key: u32,
    /// Receive stamp blocks read with a key that is not ours (forged): never used.
    pub untrusted_blocks: Arc<AtomicU64>,
}

/// Name of the `untrusted_blocks` count among the stamping counters.
pub const RX_BLOCK_UNTRUSTED: &str = "rx_block_untrusted";

/// A per-load tag and block key: random, non-zero (zero octets are "never stamped") and
/// different from each other (the tag is public, the key secret).
fn tag_and_key() -> (u32, u32) {
    let tag = rand::random_range(1..=u32::MAX);
    loop {
        let key = rand::random_range(1..=u32::MAX);
        if key != tag {
            return (tag, key);
        }
    }
}

impl Stamping {
    /// Loads and attaches the stamping programs on `interfaces`; on failure (no privilege, old
    /// kernel) falls back to socket timestamps and says why. `disabled` forces the fallback.
    pub fn start(
        interfaces: &[String],
        disabled: bool,
        opts: &LoadOptions,
        synchronized: bool,
    ) -> Self {
        let tai_offset_ns = clock::tai_offset_ns();
        let (probe_tag, block_key) = tag_and_key();
        let mut s = Self {
            kernel: None,
            fallback_reason: None,
            tai_offset_ns,
            synchronized,
            hw_rx_stamps: false,
            hw_tx_stamps: false,
            sw_rx_stamps: true,
            probe_tag,
            block_key,
            untrusted_blocks: Arc::default(),
        };
        if disabled {
            s.fallback_reason = Some("--no-ebpf given".into());
            return s;
        }
        let attach = [
            (probe_common::names::PROG_EGRESS, Direction::Egress),
            (probe_common::names::PROG_INGRESS, Direction::Ingress),
        ];
        let opts = LoadOptions {
            kernel_clock: Some(opts.kernel_clock.unwrap_or_default()),
            handoff: Some(opts.handoff.unwrap_or_default()),
            ..opts.clone()
        };
        let mut mono_to_tai = None;
        match Attached::load(PROBE_OBJECT, interfaces, &attach, &opts).and_then(|mut a| {
            if a.clock() == Some(ClockMode::Monotonic) {
                mono_to_tai = Some(clock::mono_to_tai());
            }
            a.set_config(Config {
                tai_offset_ns,
                mono_to_tai_ns: mono_to_tai.map_or(0, |m| m.offset_ns),
                flags: Config::USE_SKB_RX_TSTAMP,
                probe_tag,
                block_key,
                _pad: 0,
            })?;
            Ok::<_, EbpfError>(a)
        }) {
            Ok(a) => {
                let a = Arc::new(Mutex::new(a));
                if let Some(m) = mono_to_tai {
                    info!(
                        "kernel stamps: CLOCK_MONOTONIC + {} ns (CLOCK_TAI − CLOCK_MONOTONIC, \
                         ±{} ns), refreshed every {}s",
                        m.offset_ns,
                        m.uncertainty_ns,
                        MONO_TO_TAI_REFRESH.as_secs()
                    );
                    keep_mono_to_tai(Arc::downgrade(&a), m);
                }
                s.kernel = Some(a);
            }
            Err(e) => {
                // The verifier log can be long: the full text at debug level, one line elsewhere.
                let full = e.to_string();
                tracing::debug!("eBPF load failed: {full}");
                let short = full.lines().next().unwrap_or_default().to_string();
                warn!("kernel timestamps unavailable, using socket timestamps: {short}");
                s.fallback_reason = Some(short);
            }
        }
        s
    }

    pub fn kernel(&self) -> Option<MutexGuard<'_, Attached>> {
        self.kernel
            .as_ref()
            .map(|k| k.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn is_kernel(&self) -> bool {
        self.kernel.is_some()
    }

    /// The clock of the kernel stamps, "tai" or "monotonic" (the `kernel_clock` output field);
    /// `None` with socket timestamps.
    pub fn kernel_clock(&self) -> Option<&'static str> {
        self.kernel()?.clock().map(ClockMode::as_str)
    }

    /// Where the egress stamps are taken, "on" (the driver hand-off) or "off" (TC): the
    /// `handoff` output field; `None` with socket timestamps.
    pub fn handoff(&self) -> Option<&'static str> {
        self.kernel()?.handoff().map(crate::ebpf::Handoff::as_str)
    }

    /// What the probe sockets ask the kernel for. Socket mode: T1 from TX stamps, T2/T4 from
    /// RX ones. Kernel mode: TC stamps T1/T3; RX software stamps are still asked for (unless
    /// `--no-sw-rx-stamps`): the ingress program reads them from the skb (the earliest
    /// trustworthy stamp, taken before the packet taps and the TC hook; measured at both ends
    /// of a veth, that leg then agrees with the capture to the nanosecond). The price is the
    /// kernel's host-wide receive stamping, one clock read per received packet (benchmark 3).
    pub fn sock_stamps(&self) -> SockStamps {
        let kernel = self.is_kernel();
        SockStamps {
            tx: !kernel,
            rx: !kernel || self.sw_rx_stamps,
            hw_tx: self.hw_tx_stamps,
            hw_rx: self.hw_rx_stamps,
        }
    }

    /// "kernel" or "socket".
    pub fn label(&self) -> &'static str {
        if self.is_kernel() { "kernel" } else { "socket" }
    }

    /// A sentence for every summary: never a silent fallback.
    pub fn note(&self) -> String {
        match (&self.kernel, &self.fallback_reason) {
            (Some(k), _) => {
                let k = k.lock().unwrap_or_else(|p| p.into_inner());
                let egress = match k.handoff() {
                    Some(crate::ebpf::Handoff::On) => "egress at the driver hand-off".to_string(),
                    Some(crate::ebpf::Handoff::Off(why)) => format!("egress at TC: {why}"),
                    None => "egress at TC".to_string(),
                };
                format!(
                    "kernel timestamps (TC {} on {}, clock {}, {egress})",
                    k.mode(),
                    k.interfaces().join(","),
                    k.clock().map_or("?", ClockMode::as_str)
                )
            }
            (None, reason) => format!(
                "SOCKET TIMESTAMPS (SO_TIMESTAMPING software), not kernel TC stamps: {}; \
                 network RTT includes part of the host stacks",
                reason.as_deref().unwrap_or("eBPF not loaded")
            ),
        }
    }

    pub fn interfaces(&self) -> Vec<String> {
        self.kernel().map(|k| k.interfaces()).unwrap_or_default()
    }

    /// Our Error Estimate: Z=1 (PTP format); the error we can vouch for.
    pub fn error_estimate(&self) -> ErrorEstimate {
        let err_ns = if self.is_kernel() { 1_000.0 } else { 100_000.0 };
        ErrorEstimate::for_error_ns(err_ns, self.synchronized, true)
    }

    pub fn realtime_to_tai(&self, realtime_ns: u64) -> u64 {
        clock::realtime_to_tai(realtime_ns, self.tai_offset_ns)
    }

    /// The hand-off correction of a reflector session's last reply, taken once (kernel mode;
    /// `None` in socket mode or without an entry). A map lookup: a system call.
    pub fn take_follow_up(
        &self,
        key: &probe_common::FollowUpKey,
    ) -> Option<probe_common::FollowUp> {
        self.kernel()?.take_follow_up(key)
    }

    /// The kernel's record of one of our requests (kernel mode): T1 as TC stamped it and the
    /// driver hand-off time when that was taken.
    pub fn sent_t1(&self, port: u16, ssid: u16, seq: u32) -> Option<probe_common::SentT1> {
        self.kernel()?.sent_t1(port, ssid, seq)
    }

    /// Lets the programs stamp what `sock` sends and receives in `role` (`probe_common::port`):
    /// they act on its port only for datagrams of this very socket (its `SO_COOKIE`).
    pub fn register_socket(&self, sock: &ProbeSocket, role: u8) -> Result<(), EbpfError> {
        let Some(mut k) = self.kernel() else {
            return Ok(());
        };
        let port = sock.local_addr().map_err(EbpfError::Socket)?.port();
        k.set_socket(port, socket_cookie(sock).map_err(EbpfError::Socket)?, role)
    }

    /// Undoes `register_socket` (best effort: the socket is going away).
    pub fn unregister_socket(&self, sock: &ProbeSocket) -> Result<(), EbpfError> {
        self.register_socket(sock, 0)
    }

    /// T2 block of a received request, if it is ours (a forged one is counted).
    pub fn request_rx_stamp(&self, request: &[u8]) -> Option<RxStampInfo> {
        self.trusted(crate::wire::request_rx_stamp(request, self.block_key))
    }

    /// T4 block of a received reply, if it is ours (a forged one is counted).
    pub fn reply_rx_stamp(&self, reply: &[u8]) -> Option<RxStampInfo> {
        self.trusted(crate::wire::reply_rx_stamp(reply, self.block_key))
    }

    fn trusted(&self, r: Result<RxStampInfo, NoBlock>) -> Option<RxStampInfo> {
        if r == Err(NoBlock::Untrusted) {
            self.untrusted_blocks.fetch_add(1, Ordering::Relaxed);
        }
        r.ok()
    }

    /// The programs' counters (kernel mode) and `RX_BLOCK_UNTRUSTED`, for summaries.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        let mut c = self
            .kernel()
            .and_then(|k| k.counters().ok())
            .unwrap_or_default();
        c.insert(
            RX_BLOCK_UNTRUSTED,
            self.untrusted_blocks.load(Ordering::Relaxed),
        );
        c
    }
}

/// How often the monotonic clock mode's offset is measured again.
const MONO_TO_TAI_REFRESH: Duration = Duration::from_secs(1);

/// Keeps `Config::mono_to_tai_ns` current while the programs are loaded (monotonic clock mode):
/// measures CLOCK_TAI − CLOCK_MONOTONIC every `MONO_TO_TAI_REFRESH` and writes it when it has
/// changed beyond the measurements' uncertainty (a step of the clock; a slew changes nothing).
/// A thread, not a task: `Stamping` serves the agent's runtime and the CLI's alike; it ends with
/// the programs (the last `Arc` of `Attached` dropped).
fn keep_mono_to_tai(kernel: Weak<Mutex<Attached>>, first: clock::MonoToTai) {
    let spawned = std::thread::Builder::new()
        .name("mono-to-tai".into())
        .spawn(move || {
            let mut cur = first;
            loop {
                std::thread::sleep(MONO_TO_TAI_REFRESH);
                // No strong reference unless there is something to write: the CLI takes the
                // programs back out of their `Arc` to detach them.
                if kernel.strong_count() == 0 {
                    return;
                }
                let new = clock::mono_to_tai();
                if !cur.changed(&new) {
                    continue;
                }
                let Some(k) = kernel.upgrade() else {
                    return;
                };
                let mut a = k.lock().unwrap_or_else(|p| p.into_inner());
                match a.set_mono_to_tai_ns(new.offset_ns) {
                    Ok(()) => {
                        info!(
                            "CLOCK_TAI − CLOCK_MONOTONIC changed by {} ns (clock step): kernel \
                             stamps follow",
                            new.offset_ns - cur.offset_ns
                        );
                        cur = new;
                    }
                    Err(e) => warn!("updating the kernel clock offset: {e}"),
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the kernel clock offset refresh: {e}; a clock step will skew stamps");
    }
}

/// The kernel's cookie of a socket (`SO_COOKIE`): what the egress program sees as
/// `bpf_get_socket_cookie(skb)` for the packets it sends.
fn socket_cookie(sock: &ProbeSocket) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket fd and an out-buffer of the length we pass.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Says, per interface, whether the NIC takes the hardware stamps `--hw-tx-stamps` /
/// `--hw-rx-stamps` rely on (SIOCGHWTSTAMP). meshprobe does not change the NIC's setting: that
/// is ptp4l's (or `hwstamp_ctl`'s) job, and changing it under a running ptp4l would break it.
/// Where the NIC has none, the stamps fall back (T1: hand-off or TC), each probe says which.
pub fn report_hw_timestamping(interfaces: &[String]) {
    for i in interfaces {
        match crate::net::hw_timestamping(i) {
            Ok(hw) if hw.tx => {
                tracing::info!("{i}: NIC hardware TX stamps on (rx_filter all: {})", hw.rx)
            }
            Ok(_) => tracing::warn!(
                "{i}: NIC hardware TX stamps are off (turn them on with ptp4l or hwstamp_ctl); \
                 T1/T3 fall back to the hand-off or TC stamps"
            ),
            Err(e) => tracing::warn!(
                "{i}: no NIC hardware timestamping ({e}); T1/T3 fall back to the hand-off or TC \
                 stamps"
            ),
        }
    }
}

/// Where a receive stamp came from.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StampSource {
    /// The kernel's software RX stamp (skb->tstamp), carried by our TC program.
    SkbRx,
    /// Our TC program's own clock read.
    Tc,
    /// Our TC program, through the T4 fallback map.
    Map,
    /// SO_TIMESTAMPING software RX stamp from the socket.
    Socket,
    /// SO_TIMESTAMPING software TX stamp: taken by the driver as it takes the packet.
    TxSoftware,
    /// Userspace clock read (no kernel stamp was available).
    App,
    /// The NIC's hardware RX stamp (with `--hw-rx-stamps`: its clock is taken to be TAI).
    Hw,
    /// Driver hand-off: the tracepoint `net_dev_start_xmit`, after the qdisc and the packet
    /// taps, as the driver takes the packet.
    Handoff,
    /// The NIC's hardware TX stamp (SO_TIMESTAMPING; its clock is taken to be TAI).
    HwTx,
    /// The reflector did not say (a third-party reflector, or no follow-up).
    Unspecified,
}

impl StampSource {
    pub fn from_block(info: &RxStampInfo) -> Self {
        if info.source == RxStamp::SOURCE_SKB_RX {
            StampSource::SkbRx
        } else {
            StampSource::Tc
        }
    }

    /// The follow-up TLV's code of a T2 source (`wire::follow_up::t2_source`).
    pub fn follow_up_t2_code(self) -> u8 {
        use crate::wire::follow_up::t2_source;
        match self {
            StampSource::Tc => t2_source::TC,
            StampSource::SkbRx => t2_source::SKB_RX,
            StampSource::Hw => t2_source::HW,
            StampSource::Socket => t2_source::SOCKET,
            _ => t2_source::UNKNOWN,
        }
    }

    /// The T2 source a follow-up TLV announces.
    pub fn from_follow_up_t2(code: u8) -> Self {
        use crate::wire::follow_up::t2_source;
        match code {
            t2_source::TC => StampSource::Tc,
            t2_source::SKB_RX => StampSource::SkbRx,
            t2_source::HW => StampSource::Hw,
            t2_source::SOCKET => StampSource::Socket,
            _ => StampSource::Unspecified,
        }
    }

    /// The T3 source of a follow-up TLV's correction; `None` for "no correction".
    pub fn from_follow_up_t3(code: u8) -> Option<Self> {
        use crate::wire::follow_up::t3_source;
        match code {
            t3_source::HANDOFF => Some(StampSource::Handoff),
            t3_source::HW_TX => Some(StampSource::HwTx),
            _ => None,
        }
    }
}

/// Picks the receive time of a packet: in-band kernel block, else socket stamp, else `app`.
pub fn rx_time(
    st: &Stamping,
    block: Option<RxStampInfo>,
    rx_sw_realtime_ns: Option<u64>,
    app_ns: u64,
) -> (u64, StampSource) {
    if let Some(info) = block {
        if st.hw_rx_stamps
            && let Some(hw) = plausible_hw(&info)
        {
            return (hw, StampSource::Hw);
        }
        return (info.tai_ns, StampSource::from_block(&info));
    }
    match rx_sw_realtime_ns {
        Some(rt) => (st.realtime_to_tai(rt), StampSource::Socket),
        None => (app_ns, StampSource::App),
    }
}

/// How far before the software stamp a hardware stamp may lie and still be the same packet's
/// arrival in the same (TAI) timescale.
const HW_STAMP_WINDOW_NS: u64 = 1_000_000;

/// The NIC's RX stamp when it is plausibly TAI: earlier than the kernel's software stamp (the
/// NIC sees the packet first), by less than `HW_STAMP_WINDOW_NS`. A PHC that is not
/// synchronised to TAI fails this and the software stamp is used.
fn plausible_hw(info: &RxStampInfo) -> Option<u64> {
    (info.hw_ns != 0 && info.hw_ns <= info.tai_ns && info.tai_ns - info.hw_ns < HW_STAMP_WINDOW_NS)
        .then_some(info.hw_ns)
}

/// Human-readable nanoseconds (µs with one decimal below 1 s).
pub fn fmt_ns(ns: i64) -> String {
    let a = ns.unsigned_abs();
    if a >= 1_000_000_000 {
        format!("{:.3} s", ns as f64 / 1e9)
    } else if a >= 10_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(hw: bool) -> Stamping {
        Stamping {
            kernel: None,
            fallback_reason: None,
            tai_offset_ns: 37_000_000_000,
            synchronized: false,
            hw_rx_stamps: hw,
            hw_tx_stamps: false,
            sw_rx_stamps: true,
            probe_tag: 1,
            block_key: 2,
            untrusted_blocks: Arc::default(),
        }
    }

    fn block(tai_ns: u64, hw_ns: u64, source: u8) -> Option<RxStampInfo> {
        Some(RxStampInfo {
            tai_ns,
            hw_ns,
            source,
        })
    }

    #[test]
    fn receive_time_prefers_kernel_block_then_socket_then_app() {
        let s = st(false);
        let skb = probe_common::RxStamp::SOURCE_SKB_RX;
        let tc = probe_common::RxStamp::SOURCE_TC_NOW;
        assert_eq!(
            rx_time(&s, block(5_000, 0, skb), Some(1), 9),
            (5_000, StampSource::SkbRx)
        );
        assert_eq!(
            rx_time(&s, block(5_000, 0, tc), Some(1), 9),
            (5_000, StampSource::Tc)
        );
        // A hardware stamp is carried but not used unless its clock is declared TAI.
        assert_eq!(
            rx_time(&s, block(5_000, 4_900, skb), None, 9),
            (5_000, StampSource::SkbRx)
        );
        // Socket stamps are CLOCK_REALTIME: shifted by the TAI offset.
        assert_eq!(
            rx_time(&s, None, Some(1_000), 9),
            (37_000_001_000, StampSource::Socket)
        );
        assert_eq!(rx_time(&s, None, None, 9), (9, StampSource::App));
    }

    #[test]
    fn hardware_stamp_used_only_when_plausible() {
        let s = st(true);
        let skb = probe_common::RxStamp::SOURCE_SKB_RX;
        let t = 10_000_000_000;
        // Earlier than the software stamp, within the window: the earliest stamp wins.
        assert_eq!(
            rx_time(&s, block(t, t - 800, skb), None, 0),
            (t - 800, StampSource::Hw)
        );
        // Later than the software stamp, or far earlier: another timescale; not used.
        assert_eq!(
            rx_time(&s, block(t, t + 800, skb), None, 0),
            (t, StampSource::SkbRx)
        );
        assert_eq!(
            rx_time(&s, block(t, t - 2 * HW_STAMP_WINDOW_NS, skb), None, 0),
            (t, StampSource::SkbRx)
        );
        assert_eq!(
            rx_time(&s, block(t, 0, skb), None, 0),
            (t, StampSource::SkbRx)
        );
    }
}
