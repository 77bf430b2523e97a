//! Measurement helpers for `cargo xtask bench`: the kernel's BPF run-time accounting
//! (`kernel.bpf_stats_enabled`, per-program `run_time_ns`/`run_cnt`), a process's memory and
//! CPU from /proc, and a znode's creation time from ZooKeeper.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

use meshprobe_harness::child::run_checked;
use meshprobe_harness::netns::{CMD_TIMEOUT, Netns};

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

/// A process's memory and CPU at one instant.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// CPU time of every thread from the scheduler (schedstat), ns: a 1 s sample of a process
    /// using 2 % of a core is 2 ticks of utime+stime, but 20 000 000 ns.
    pub cpu_ns: u64,
    /// Voluntary + involuntary context switches of every thread.
    pub switches: u64,
}

/// `sysconf(_SC_CLK_TCK)`: the unit of utime/stime.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// VmRSS from `/proc/PID/status` and utime+stime from `/proc/PID/stat`.
pub fn sample_process(pid: u32) -> Result<ProcSample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let (cpu_ns, switches) = thread_totals(pid)?;
    Ok(ProcSample {
        at,
        rss_kib,
        cpu_ns,
        switches,
    })
}

/// Wall-clock time (nanoseconds since the epoch) of an `Instant` taken in this process.
pub fn instant_to_unix_ns(t: Instant) -> i128 {
    let now_i = Instant::now();
    let now_w = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as i128;
    if t <= now_i {
        now_w - (now_i - t).as_nanos() as i128
    } else {
        now_w + (t - now_i).as_nanos() as i128
    }
}

/// The creation time (`ctime`, ms since the epoch, ZooKeeper server's clock) of the znode
/// `path`, asked from inside `ns` with a client of ZooKeeper at `connect`.
pub fn znode_ctime_ms(ns: &Netns, connect: &str, path: &str) -> Result<i64> {
    let cs = connect.to_string();
    let p = path.to_string();
    ns.enter(move || -> Result<i64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = tokio::time::timeout(
                Duration::from_secs(10),
                zookeeper_client::Client::connector()
                    .with_session_timeout(Duration::from_secs(5))
                    .connect(&cs),
            )
            .await
            .map_err(|_| anyhow!("connecting to ZooKeeper {cs} timed out"))?
            .with_context(|| format!("connecting to ZooKeeper {cs}"))?;
            let (_, stat) = tokio::time::timeout(Duration::from_secs(10), client.get_data(&p))
                .await
                .map_err(|_| anyhow!("get_data {p} timed out"))?
                .map_err(|e| anyhow!("get_data {p}: {e}"))?;
            Ok(stat.ctime)
        })
    })?
}

/// Runs `ip -batch FILE` in `ns` with `lines` (one `ip` command each, without the leading
/// `ip`), for many addresses or routes at once.
pub fn ip_batch(ns: &Netns, lines: &[String], scratch: &Path) -> Result<()> {
    let file = scratch.join("ip.batch");
    std::fs::write(&file, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", file.display()))?;
    let f = file.to_string_lossy().into_owned();
    ns.run(["ip", "-batch", &f])?;
    Ok(())
}

/// An empty TC program (`return TC_ACT_UNSPEC`, two instructions) attached with TCX to one
/// hook of one interface: the floor of what the kernel's accounting reports for any program on
/// that hook (the dispatch and the clock reads around the run). Detached and unloaded on drop.
/// Needs TCX (Linux ≥ 6.6).
pub struct EmptyTcProg {
    prog: std::os::fd::OwnedFd,
    _link: std::os::fd::OwnedFd,
}

/// `bpf(2)` with an attribute block of 128 octets (zero beyond what the command uses).
fn bpf_syscall(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: attr is a valid, zero-padded bpf_attr of the given size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success the kernel returned a new file descriptor that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
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
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.prog);
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let field = |k: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| anyhow!("no {k} in the fdinfo of the empty program"))
        };
        Ok((field("run_time_ns:")?, field("run_cnt:")?))
    }
}

/// Totals over every thread of process `pid`: CPU time run (`sum_exec_runtime` from
/// `/proc/PID/task/*/schedstat`, nanoseconds) and context switches (voluntary + involuntary
/// from `/proc/PID/task/*/status`). Threads that ended are not counted.
pub fn thread_totals(pid: u32) -> Result<(u64, u64)> {
    let dir = format!("/proc/{pid}/task");
    let (mut ns, mut switches) = (0u64, 0u64);
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(e) = e else { continue };
        if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
            for l in s.lines() {
                if let Some(v) = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Ok((ns, switches))
}

/// `bpf(2)` with an attribute block of 128 octets, for commands that return a number rather
/// than a new descriptor (lookups, info queries).
fn bpf_syscall_raw(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the given size; the pointers it holds
    // (set by the callers) point at buffers that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-1` or `0,2-3`):
/// the number of slots of a per-CPU map value.
pub fn possible_cpus() -> Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading /sys/devices/system/cpu/possible")?;
    parse_cpu_list_max(&text)
        .map(|m| m + 1)
        .ok_or_else(|| anyhow!("cannot parse the possible CPUs {text:?}"))
}

/// The highest CPU number of a kernel CPU list (`0-3,5`).
fn parse_cpu_list_max(text: &str) -> Option<usize> {
    let mut max = None;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        max = Some(max.map_or(last, |m: usize| m.max(last)));
    }
    max
}

/// A BPF map of another process, opened by id (`BPF_MAP_GET_FD_BY_ID`) and held by this one:
/// it stays readable after the other process exits (maps are reference-counted), so the
/// counters of a process can be read once it is done and no longer changing them.
pub struct HeldMap {
    fd: std::os::fd::OwnedFd,
    pub id: u32,
    pub name: String,
    pub map_type: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl HeldMap {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    pub const PERCPU_ARRAY: u32 = 6;

    /// Opens map `id` and reads its type, sizes and name.
    pub fn open(id: u32) -> Result<HeldMap> {
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&id.to_ne_bytes());
        let fd = bpf_syscall(Self::BPF_MAP_GET_FD_BY_ID, &mut attr)
            .with_context(|| format!("opening BPF map id {id} (BPF_MAP_GET_FD_BY_ID)"))?;
        // struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags (u32
        // each), then name[16]; 80 octets covers what we read.
        let mut info = [0u8; 80];
        let mut attr = [0u8; 128];
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32;
        attr[0..4].copy_from_slice(&raw.to_ne_bytes());
        attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
        bpf_syscall_raw(Self::BPF_OBJ_GET_INFO_BY_FD, &mut attr)
            .with_context(|| format!("BPF_OBJ_GET_INFO_BY_FD of map id {id}"))?;
        let u32_at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().expect("4 octets"));
        let name_raw = &info[24..40];
        let end = name_raw.iter().position(|&b| b == 0).unwrap_or(16);
        Ok(HeldMap {
            fd,
            id,
            name: String::from_utf8_lossy(&name_raw[..end]).into_owned(),
            map_type: u32_at(0),
            value_size: u32_at(12),
            max_entries: u32_at(16),
        })
    }

    /// Opens the map named `name` among those process `pid` holds (its /proc/PID/fdinfo).
    pub fn of_process(pid: u32, name: &str) -> Result<HeldMap> {
        let dir = format!("/proc/{pid}/fdinfo");
        let mut ids = std::collections::BTreeSet::new();
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let Ok(e) = e else { continue };
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if let Some(id) = text
                .lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
            {
                ids.insert(id);
            }
        }
        let mut seen = Vec::new();
        for id in ids {
            let Ok(m) = HeldMap::open(id) else { continue };
            if m.name == name {
                return Ok(m);
            }
            seen.push(m.name);
        }
        bail!("process {pid} holds no BPF map named {name} (it holds {seen:?})")
    }

    /// For a per-CPU array of u64: every entry summed over the CPUs, indexed by key.
    pub fn percpu_u64_sums(&self) -> Result<Vec<u64>> {
        if self.map_type != Self::PERCPU_ARRAY || self.value_size != 8 {
            bail!(
                "map {} (id {}) is not a per-CPU array of u64 (type {}, value size {})",
                self.name,
                self.id,
                self.map_type,
                self.value_size
            );
        }
        let cpus = possible_cpus()?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&self.fd) as u32;
        let mut out = Vec::with_capacity(self.max_entries as usize);
        let mut value = vec![0u64; cpus];
        for key in 0..self.max_entries {
            let k = key;
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&raw.to_ne_bytes());
            attr[8..16].copy_from_slice(&(&k as *const u32 as u64).to_ne_bytes());
            attr[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
            bpf_syscall_raw(Self::BPF_MAP_LOOKUP_ELEM, &mut attr)
                .with_context(|| format!("looking up key {key} of map {}", self.name))?;
            out.push(value.iter().sum());
        }
        Ok(out)
    }
}

/// meshprobe's eBPF counters (the `COUNTERS` map, `probe_common::counter`) by name, from the
/// per-key sums of [`HeldMap::percpu_u64_sums`].
pub fn counters_by_name(sums: &[u64]) -> BTreeMap<&'static str, u64> {
    probe_common::counter::NAMES
        .iter()
        .zip(sums)
        .map(|(n, v)| (*n, *v))
        .collect()
}

/// A process's user and system CPU time (utime, stime from `/proc/PID/stat`, clock ticks).
pub fn user_sys_ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat_user_sys(&stat).ok_or_else(|| anyhow!("bad /proc/{pid}/stat: {stat:?}"))
}

/// utime and stime (fields 14 and 15, clock ticks) of a `/proc/PID/stat` or
/// `/proc/PID/task/TID/stat` line.
pub fn parse_stat_user_sys(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest's first field is field 3 (state).
    let mut f = rest.split_whitespace().skip(14 - 3);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// The pid of the kernel thread `ksoftirqd/CPU`, if there is one.
pub fn ksoftirqd_pid(cpu: usize) -> Option<u32> {
    let want = format!("ksoftirqd/{cpu}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == want).then_some(pid)
    })
}

#[cfg(test)]
mod held_map_tests {
    use super::{parse_cpu_list_max, parse_stat_user_sys};

    #[test]
    fn stat_ticks() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0\n";
        assert_eq!(parse_stat_user_sys(stat), Some((17, 5)));
        assert_eq!(parse_stat_user_sys("42 (x) S 1 2"), None);
        assert_eq!(parse_stat_user_sys("no paren"), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list_max("0-1\n"), Some(1));
        assert_eq!(parse_cpu_list_max("0"), Some(0));
        assert_eq!(parse_cpu_list_max("0,2-3,5"), Some(5));
        assert_eq!(parse_cpu_list_max("x"), None);
    }
}
