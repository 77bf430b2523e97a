//! Issue 16: two agents in STAMP authenticated mode (`MESHPROBE_STAMP_AUTH_SENDER` and
//! `MESHPROBE_STAMP_AUTH_REFLECTOR` = required, one key file) measure each other; nothing is
//! rejected or refused for authentication, and their programs write nothing into the signed
//! packets (`skip_auth` counts them, `t2_stamped` / `t3_stamped` stay 0), node1 without RX
//! software stamps too (T4 from the programs' map). Then node1's key
//! file is replaced by another key while it runs: from then on node0's reflector refuses its
//! requests (`refused{reason="auth"}`), without a restart.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meshprobe_harness::agent::{Cluster, window_now};
use meshprobe_harness::topo::Family;

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const OTHER: &str = "ffeeddccbbaa99887766554433221100";

/// Key files in a directory of their own, removed on drop.
struct KeyDir(std::path::PathBuf);

impl KeyDir {
    fn new() -> Result<KeyDir> {
        let d = std::env::temp_dir().join(format!("meshprobe-agent-auth-{}", std::process::id()));
        std::fs::create_dir_all(&d)?;
        Ok(KeyDir(d))
    }

    /// Writes by rename (a new inode, as a Secret volume swaps its files).
    fn set(&self, name: &str, hex: &str) -> Result<String> {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, format!("{hex}\n"))?;
        let path = self.0.join(name);
        std::fs::rename(&tmp, &path)?;
        Ok(path.to_string_lossy().into_owned())
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The value of `name{label="value"}` on an agent's /metrics text (0 when absent).
fn labelled(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn agents_measure_each_other_in_authenticated_mode() -> Result<()> {
    let name = "agents_measure_each_other_in_authenticated_mode";
    let Some(mut lab) = Cluster::acquire(name, 2, Family::V4, false, false)? else {
        return Ok(());
    };
    let keys = KeyDir::new()?;
    let files = [keys.set("node0", KEY)?, keys.set("node1", KEY)?];
    for (i, file) in files.iter().enumerate() {
        let other = 1 - i;
        let cfg = lab
            .config(i)
            .env(
                "MESHPROBE_PEERS",
                format!("{}={}", Cluster::node_id(other), lab.node_ip(other)),
            )
            .env("MESHPROBE_STAMP_AUTH_SENDER", "required")
            .env("MESHPROBE_STAMP_AUTH_REFLECTOR", "required")
            .env("MESHPROBE_STAMP_KEY_FILE", file);
        // node1 without RX software stamps: its T4 comes from the programs' map, and it must
        // not turn host-wide RX stamping on for replies that never carry T4 in-band.
        let cfg = if i == 1 {
            cfg.env("MESHPROBE_NO_SW_RX_STAMPS", "true")
        } else {
            cfg
        };
        lab.start_agent_with(i, &cfg)?;
    }
    let s0 = window_now();
    lab.wait_pairs_measured(&[0, 1], s0 + 2, Duration::from_secs(40))?;
    for i in 0..2 {
        let m = lab.agent(i).metrics()?;
        let rejected = labelled(&m, "meshprobe_replies_rejected_total", "reason=\"auth\"");
        let refused = labelled(&m, "meshprobe_reflector_refused_total", "reason=\"auth\"");
        let skip = labelled(&m, "meshprobe_ebpf_events_total", "event=\"skip_auth\"");
        let t2 = labelled(&m, "meshprobe_ebpf_events_total", "event=\"t2_stamped\"");
        let t3 = labelled(&m, "meshprobe_ebpf_events_total", "event=\"t3_stamped\"");
        eprintln!("node{i}: rejected auth {rejected}, refused auth {refused}, skip_auth {skip}");
        ensure!(rejected == 0.0 && refused == 0.0, "node{i} /metrics:\n{m}");
        ensure!(
            skip > 0.0 && t2 == 0.0 && t3 == 0.0,
            "node{i} stamped signed packets:\n{m}"
        );
    }
    let stderr = lab.agent(1).stderr_text();
    ensure!(
        !stderr.contains("RX software timestamps turned on"),
        "node1 turned RX stamps on:\n{stderr}"
    );

    // node1 now holds another key: node0's reflector refuses its requests from the next poll.
    keys.set("node1", OTHER)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = lab.agent(0).metrics().context("node0 /metrics")?;
        let refused = labelled(&m, "meshprobe_reflector_refused_total", "reason=\"auth\"");
        if refused >= 3.0 {
            eprintln!("node0 refused {refused} requests signed with node1's new key");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node1's new key never refused:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
