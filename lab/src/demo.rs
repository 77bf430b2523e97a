//! `cargo xtask demo`: a 4-node meshprobe cluster on this machine (the harness's
//! [`Lab`]: node namespaces on a bridge, real ZooKeeper and Kafka-protocol broker in the
//! core namespace, one agent per node), two zones with different known delays, and the live
//! heatmap (`meshprobe matrix`) read from Kafka with the injected delay beside every cell.
//!
//! `q` or Ctrl-C ends it: the heatmap is also written as an SVG, then the lab is stopped and
//! every namespace, process and temp dir removed (the guards drop, also on errors).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Lab, LabSpec};
use anyhow::{Context, Result, bail};
use meshprobe_harness::interrupt;
use meshprobe_harness::services::TempDir;

/// How long the agents may take to measure every pair once.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(meshprobe_bin: &Path, svg_out: &Path, duration: Option<Duration>) -> Result<()> {
    if !meshprobe_harness::env::is_root() {
        bail!("the demo creates network namespaces and attaches eBPF programs: run it as root");
    }
    // SAFETY: single-threaded here; the harness reads it to find the binary it just built.
    unsafe { std::env::set_var("MESHPROBE_BIN", meshprobe_bin) };
    interrupt::install()?;
    let result = demo(meshprobe_bin, svg_out, duration);
    println!("\n[demo] torn down: agents, broker and ZooKeeper stopped, namespaces deleted");
    result
}

fn demo(bin: &Path, svg_out: &Path, duration: Option<Duration>) -> Result<()> {
    let spec = LabSpec::two_zone_demo()?;
    println!(
        "[demo] starting a {}-node mesh in network namespaces (198.18.0.0/24): ZooKeeper and \
         the broker in the core namespace, one meshprobe agent per node",
        spec.nodes
    );
    let t0 = Instant::now();
    let Some(mut lab) = Lab::up(spec)? else {
        bail!("cannot run the demo (the SKIP line above says why)");
    };
    println!(
        "[demo] up in {:.1}s: ZooKeeper {}, broker {}, topic {}",
        t0.elapsed().as_secs_f64(),
        lab.cluster.zk().connect_string(),
        lab.bootstrap(),
        lab.topic()
    );
    println!(
        "\n[demo] injected delay (added round-trip time per pair):\n{}",
        lab.spec.describe()
    );
    let first = lab.window_now() + 1;
    lab.wait_all_measured(first, MEASURE_TIMEOUT)
        .context("waiting for every pair to be measured")?;
    println!(
        "[demo] every pair measured; the heatmap below reads the summaries from Kafka and shows \
         the injected value beside each measurement as (+X). Keys: m = p50/p99/loss, q = quit."
    );
    if interrupt::interrupted() {
        return Ok(());
    }
    let dir = TempDir::new("demo")?;
    let expected = dir.path().join("expected.csv");
    lab.write_expected(&expected)?;
    let core = lab.star().core().name().to_string();
    let bootstrap = lab.bootstrap();
    let matrix = |extra: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &core])
            .arg(bin)
            .args(["matrix", "--kafka-bootstrap-servers", &bootstrap])
            .args(["--kafka-topic", lab.topic(), "--expected"])
            .arg(&expected)
            .args(extra);
        c
    };
    // In the foreground process group (it reads the terminal); without a terminal it prints
    // a text matrix per window.
    let mut c = matrix(&[]);
    let dur_s = duration.map(|d| format!("{}ms", d.as_millis()));
    if let Some(d) = &dur_s {
        c.args(["--duration", d]);
    }
    let mut child = c.spawn().context("starting meshprobe matrix")?;
    loop {
        if let Some(st) = child.try_wait()? {
            if !st.success() && !interrupt::interrupted() {
                println!("[demo] meshprobe matrix exited {st}");
            }
            break;
        }
        if interrupt::interrupted() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = matrix(&["--svg"])
        .arg(svg_out)
        .arg("--timeout")
        .arg("5s")
        .output()?;
    if st.status.success() {
        println!("\n[demo] heatmap written to {}", svg_out.display());
    } else {
        println!(
            "\n[demo] could not write the SVG: {}",
            String::from_utf8_lossy(&st.stderr).trim()
        );
    }
    lab.shutdown(Duration::from_secs(10))
}
