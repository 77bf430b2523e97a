//! BPF maps of other processes held open by the bench (the `COUNTERS` maps), read as per-CPU
//! sums after their owner stopped changing them.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail};

use super::syscall::{bpf_syscall, bpf_syscall_raw};

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

#[cfg(test)]
mod tests {
    use super::parse_cpu_list_max;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list_max("0-1\n"), Some(1));
        assert_eq!(parse_cpu_list_max("0"), Some(0));
        assert_eq!(parse_cpu_list_max("0,2-3,5"), Some(5));
        assert_eq!(parse_cpu_list_max("x"), None);
    }
}
