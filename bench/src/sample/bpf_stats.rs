//! The kernel's BPF run-time accounting (`kernel.bpf_stats_enabled`, per-program
//! `run_time_ns`/`run_cnt` from fdinfo) and an empty TC program that measures its floor.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail};

use meshprobe_harness::child::run_checked;
use meshprobe_harness::netns::{CMD_TIMEOUT, Netns};

use super::syscall::bpf_syscall;

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` set for as long as the guard lives (to 1 by
/// [`BpfStatsGuard::enable`]); the value found before is written back on drop.
pub struct BpfStatsGuard {
    previous: String,
}

impl BpfStatsGuard {
    pub fn enable() -> Result<BpfStatsGuard> {
        Self::set("1")
    }

    /// Sets `kernel.bpf_stats_enabled` to `value` (`"0"` or `"1"`) until the guard drops.
    pub fn set(value: &str) -> Result<BpfStatsGuard> {
        let previous = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS_SYSCTL, value)
            .with_context(|| format!("writing {value} to {BPF_STATS_SYSCTL}"))?;
        Ok(BpfStatsGuard { previous })
    }

    /// The value found before (`"0"` or `"1"`).
    pub fn previous(&self) -> &str {
        &self.previous
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS_SYSCTL, &self.previous) {
            eprintln!(
                "bench: could not restore kernel.bpf_stats_enabled={}: {e}",
                self.previous
            );
        }
    }
}

/// The current `kernel.bpf_stats_enabled` (`None` if unreadable).
pub fn bpf_stats_enabled() -> Option<String> {
    std::fs::read_to_string(BPF_STATS_SYSCTL)
        .ok()
        .map(|s| s.trim().to_string())
}

/// One BPF program's run-time accounting, as the kernel keeps it (needs
/// `kernel.bpf_stats_enabled=1` to advance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl ProgStats {
    /// (run_time_ns, run_cnt) advanced since `before`.
    pub fn delta(&self, before: &ProgStats) -> (u64, u64) {
        (
            self.run_time_ns.saturating_sub(before.run_time_ns),
            self.run_cnt.saturating_sub(before.run_cnt),
        )
    }
}

/// A program's name from `bpftool prog show id ID --json`.
pub fn prog_name(id: u32) -> Result<String> {
    let mut cmd = std::process::Command::new("bpftool");
    cmd.args(["prog", "show", "id", &id.to_string(), "--json"]);
    let out = run_checked(cmd, CMD_TIMEOUT)?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("bpftool prog show id {id}: {out}"))?;
    Ok(v["name"].as_str().unwrap_or("").to_string())
}

/// Every BPF program process `pid` holds a file descriptor of, with its kernel accounting,
/// read from `/proc/PID/fdinfo` (one entry per program id). Names come from bpftool and are
/// cached in `names`.
pub fn process_progs(pid: u32, names: &mut BTreeMap<u32, String>) -> Result<Vec<ProgStats>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut by_id: BTreeMap<u32, ProgStats> = BTreeMap::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(e) = e else { continue };
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        // Program fds carry prog_type and run_time_ns; link fds name a prog_id too but have a
        // link_type.
        if text.contains("link_type:") || !text.contains("run_time_ns:") {
            continue;
        }
        let field = |k: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(id), Some(rt), Some(cnt)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        let id = id as u32;
        let name = match names.get(&id) {
            Some(n) => n.clone(),
            None => {
                let n = prog_name(id).unwrap_or_default();
                names.insert(id, n.clone());
                n
            }
        };
        by_id.insert(
            id,
            ProgStats {
                id,
                name,
                run_time_ns: rt,
                run_cnt: cnt,
            },
        );
    }
    Ok(by_id.into_values().collect())
}

/// The program named `name` among `progs` (an error naming what there is otherwise).
pub fn find_prog<'a>(progs: &'a [ProgStats], name: &str) -> Result<&'a ProgStats> {
    let found: Vec<_> = progs.iter().filter(|p| p.name == name).collect();
    match found.as_slice() {
        [p] => Ok(p),
        [] => Err(anyhow!(
            "no BPF program {name} among {:?}",
            progs.iter().map(|p| &p.name).collect::<Vec<_>>()
        )),
        _ => Err(anyhow!(
            "{} BPF programs named {name}; cannot tell them apart",
            found.len()
        )),
    }
}

/// An empty TC program (`return TC_ACT_UNSPEC`, two instructions) attached with TCX to one
/// hook of one interface: the floor of what the kernel's accounting reports for any program on
/// that hook (the dispatch and the clock reads around the run). Detached and unloaded on drop.
/// Needs TCX (Linux ≥ 6.6).
pub struct EmptyTcProg {
    prog: std::os::fd::OwnedFd,
    _link: std::os::fd::OwnedFd,
}

impl EmptyTcProg {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    /// The program's name as bpftool shows it.
    pub const NAME: &'static str = "bench_empty";

    /// Loads the program and attaches it to `ifname`'s ingress or egress in `ns`.
    pub fn attach(ns: &Netns, ifname: &str, ingress: bool) -> Result<EmptyTcProg> {
        // r0 = -1 (TC_ACT_UNSPEC); exit
        let insns: [u64; 2] = [0xb7 | ((-1i32 as u32 as u64) << 32), 0x95];
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&Self::BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
        attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        // log_level, log_size, log_buf, kern_version, prog_flags stay 0; prog_name at 48.
        attr[48..48 + Self::NAME.len()].copy_from_slice(Self::NAME.as_bytes());
        let prog = bpf_syscall(Self::BPF_PROG_LOAD, &mut attr)
            .context("loading an empty SCHED_CLS program (bpf PROG_LOAD)")?;
        let prog_fd = std::os::fd::AsRawFd::as_raw_fd(&prog) as u32;
        let name = std::ffi::CString::new(ifname)?;
        let attach_type = if ingress {
            Self::BPF_TCX_INGRESS
        } else {
            Self::BPF_TCX_EGRESS
        };
        let link = ns.enter(move || -> Result<std::os::fd::OwnedFd> {
            // SAFETY: a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {name:?}");
            }
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&prog_fd.to_ne_bytes());
            attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
            bpf_syscall(Self::BPF_LINK_CREATE, &mut attr)
                .context("attaching the empty program with TCX (bpf LINK_CREATE; Linux ≥ 6.6)")
        })??;
        Ok(EmptyTcProg { prog, _link: link })
    }

    /// (run_time_ns, run_cnt) so far, from this process's fdinfo of the program.
    pub fn stats(&self) -> Result<(u64, u64)> {
        fd_stats(&self.prog)
    }
}

/// (run_time_ns, run_cnt) of a program from this process's fdinfo of it.
fn fd_stats(prog: &std::os::fd::OwnedFd) -> Result<(u64, u64)> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(prog);
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    let field = |k: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no {k} in the fdinfo of an empty program"))
    };
    Ok((field("run_time_ns:")?, field("run_cnt:")?))
}

/// An empty program (`return 0`, two instructions) on the raw tracepoint
/// `net_dev_start_xmit`, where meshprobe's hand-off program runs: the floor of the kernel's
/// accounting for a program there (tp_btf and raw tracepoint programs are run by the same
/// `bpf_trace_run` dispatch). Host-wide, like the tracepoint. Detached and unloaded on drop.
pub struct EmptyRawTp {
    prog: std::os::fd::OwnedFd,
    _link: std::os::fd::OwnedFd,
}

impl EmptyRawTp {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
    const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
    pub const TRACEPOINT: &'static str = "net_dev_start_xmit";
    pub const NAME: &'static str = "bench_empty_tp";

    pub fn attach() -> Result<EmptyRawTp> {
        // r0 = 0; exit
        let insns: [u64; 2] = [0xb7, 0x95];
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&Self::BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
        attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..48 + Self::NAME.len()].copy_from_slice(Self::NAME.as_bytes());
        let prog = bpf_syscall(Self::BPF_PROG_LOAD, &mut attr)
            .context("loading an empty RAW_TRACEPOINT program (bpf PROG_LOAD)")?;
        let tp = std::ffi::CString::new(Self::TRACEPOINT)?;
        let mut attr = [0u8; 128];
        // raw_tracepoint { u64 name; u32 prog_fd; }
        attr[0..8].copy_from_slice(&(tp.as_ptr() as u64).to_ne_bytes());
        let prog_fd = std::os::fd::AsRawFd::as_raw_fd(&prog) as u32;
        attr[8..12].copy_from_slice(&prog_fd.to_ne_bytes());
        let link = bpf_syscall(Self::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
            .with_context(|| format!("attaching the empty program to {}", Self::TRACEPOINT))?;
        Ok(EmptyRawTp { prog, _link: link })
    }

    /// (run_time_ns, run_cnt) so far.
    pub fn stats(&self) -> Result<(u64, u64)> {
        fd_stats(&self.prog)
    }
}
