//! `cargo xtask demo`: a reflector and a sender in network namespaces, a router between them
//! that adds a known delay, and meshprobe's measurement printed next to the injected value.
//!
//! Topology (the test harness's `Routed`): A <-> R <-> B. `meshprobe delay` holds probe packets
//! on R's interface toward B, so every request is 300 µs late and replies are not delayed: the
//! network RTT should grow by 300 µs. Everything lives in namespaces that are deleted at the
//! end, also on Ctrl-C (the handler only sets a flag; the loops below notice it and return, so
//! every guard drops).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meshprobe_tests::child::ChildGuard;
use meshprobe_tests::{Family, Meshprobe, Routed, interrupt};

const DELAY: &str = "300us";
const DELAY_US: f64 = 300.0;
const BASELINE_PROBES: u32 = 5;
const PROBES: u32 = 20;
const INTERVAL: &str = "200ms";
/// Longest line echoed from meshprobe (its notes can carry a whole verifier log).
const MAX_LINE: usize = 200;
const MAX_LINES: usize = 120;

pub fn run(meshprobe_bin: &Path) -> Result<()> {
    if !meshprobe_tests::env::is_root() {
        bail!("the demo creates network namespaces and attaches eBPF programs: run it as root");
    }
    if let Some(why) = meshprobe_tests::env::missing_prerequisite(&[]) {
        bail!("cannot run the demo: {why}");
    }
    interrupt::install()?;
    let result = demo(meshprobe_bin);
    // Every namespace and process is gone once `demo` returned (guards dropped).
    println!("\n[demo] torn down: namespaces deleted, meshprobe processes stopped");
    result
}

fn demo(bin: &Path) -> Result<()> {
    let mp = Meshprobe::new(bin);
    println!("[demo] building A <-> R <-> B in network namespaces (198.18.0.0/15, fd00::/8)");
    let t = Routed::new()?;
    println!(
        "[demo] A {} ({}) -> R ({} / {}) -> B {} ({})",
        Routed::A4,
        t.a.name(),
        Routed::RA_IF,
        Routed::RB_IF,
        Routed::B4,
        t.b.name()
    );
    let bin_s = bin.to_str().context("meshprobe path is not UTF-8")?;

    let mut refl = t.b.spawn([bin_s, "reflect"])?;
    refl.wait_ready_either(Duration::from_secs(15), |v| v["type"] == "ready", "ready")
        .context("meshprobe reflect did not become ready")?;
    println!("[demo] meshprobe reflect running in B");
    show_stderr_head(&refl, "reflect");

    let peer = t.b_addr(Family::V4).to_string();
    println!("\n[demo] baseline: {BASELINE_PROBES} probes, no added delay");
    let base = probe_run(&mp, &t, &peer, BASELINE_PROBES, None)?;

    let delay = mp
        .delay(&t.r, Routed::RB_IF, DELAY, &["--udp-port", "862"])
        .context("starting meshprobe delay on R")?;
    println!(
        "\n[demo] meshprobe delay: holding every probe on R's {} (toward B) for {DELAY}",
        Routed::RB_IF
    );
    let delayed = probe_run(&mp, &t, &peer, PROBES, Some(DELAY_US))?;
    drop(delay);

    if let (Some(b), Some(d)) = (median(&base), median(&delayed)) {
        println!(
            "\n[demo] median network RTT: {b:.1} µs without, {d:.1} µs with the delay element -> \
             measured +{:.1} µs, injected +{DELAY_US:.0} µs",
            d - b
        );
    } else {
        println!("\n[demo] no network RTT values could be read from meshprobe's output");
    }
    Ok(())
}

/// Runs `meshprobe ping` (human output) in A, streaming its lines with the injected delay
/// beside each probe line; returns the `net=` values in µs.
fn probe_run(
    mp: &Meshprobe,
    t: &Routed,
    peer: &str,
    count: u32,
    injected_us: Option<f64>,
) -> Result<Vec<f64>> {
    let count_s = count.to_string();
    let mut ping = mp.ping_spawn(&t.a, &[peer, "-c", &count_s, "-i", INTERVAL])?;
    let deadline = Instant::now() + Duration::from_millis(200) * count + Duration::from_secs(20);
    let mut nets = Vec::new();
    let mut shown = 0usize;
    let mut show = |line: &str, nets: &mut Vec<f64>| {
        let net = net_us(line);
        if let Some(v) = net {
            nets.push(v);
        }
        if shown >= MAX_LINES {
            return;
        }
        shown += 1;
        let mut l: String = line.chars().take(MAX_LINE).collect();
        if l.len() < line.len() {
            l.push_str(" …");
        }
        match (net, injected_us) {
            (Some(_), Some(inj)) => println!("  {l:<90}   <- injected +{inj:.0} µs"),
            (Some(_), None) => println!("  {l:<90}   <- no added delay"),
            _ => println!("  {l}"),
        }
    };
    loop {
        if interrupt::interrupted() {
            bail!("interrupted (Ctrl-C): tearing down");
        }
        if Instant::now() > deadline {
            bail!("meshprobe ping did not finish in time");
        }
        match ping.next_line(Duration::from_millis(100)) {
            Some(line) => show(&line, &mut nets),
            None if !ping.is_running() => break,
            None => {}
        }
    }
    let fin = ping.wait_exit(Duration::from_secs(5))?;
    for line in &fin.stdout {
        show(line, &mut nets);
    }
    if !fin.status.success() {
        show_lines(&fin.stderr, "ping");
        bail!("meshprobe ping exited with {}", fin.status);
    }
    show_lines(&fin.stderr, "ping");
    Ok(nets)
}

/// The first stderr line of a running process, shortened (warnings such as a fallback to
/// socket timestamps matter to the viewer).
fn show_stderr_head(child: &ChildGuard, who: &str) {
    let text = child.stderr_text();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    show_lines(&lines, who);
}

fn show_lines(lines: &[String], who: &str) {
    for l in lines
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(2)
    {
        let s: String = strip_ansi(l).chars().take(MAX_LINE).collect();
        println!("  [{who} stderr] {s}");
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `net=12.3 µs` (or ns / ms / s) in a human probe line, in µs.
fn net_us(line: &str) -> Option<f64> {
    let rest = &line[line.find("net=")? + 4..];
    let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let v: f64 = rest[..num_end].parse().ok()?;
    let unit = rest[num_end..].trim_start();
    let scale = if unit.starts_with("µs") || unit.starts_with("us") {
        1.0
    } else if unit.starts_with("ns") {
        1e-3
    } else if unit.starts_with("ms") {
        1e3
    } else if unit.starts_with('s') {
        1e6
    } else {
        return None;
    };
    Some(v * scale)
}

fn median(v: &[f64]) -> Option<f64> {
    meshprobe_tests::stats::median(v)
}

#[cfg(test)]
mod tests {
    use super::net_us;

    #[test]
    fn parses_net_values() {
        let l = "68 bytes from 198.18.1.2:862: seq=0 net=292.8 µs app=708.8 µs ttl=64";
        assert_eq!(net_us(l), Some(292.8));
        assert_eq!(net_us("seq=1 net=1.5 ms"), Some(1500.0));
        assert_eq!(net_us("seq=1 net=800 ns"), Some(0.8));
        assert_eq!(net_us("no value here"), None);
    }
}
