//! One guest boot with virtme-ng: the host's root file system read-only, one writable work
//! directory, a script run as init's job. virtme-ng's exit status does not carry the script's
//! (its script channel needs virtio-serial, which these guests fall back from), so the script
//! writes its output and its status into the work directory, and the host streams the output
//! while the guest runs.

use std::{
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, Workspace};

/// How the guest's CPU is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// qemu's software emulation: slower and noisier, works everywhere.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (software emulation)",
        })
    }
}

impl Accel {
    /// `MESHPROBE_TEST_TIME_SCALE` for the tests in the guest: how much longer they wait for
    /// services to start (a JVM under TCG takes minutes). Never a judged figure.
    pub fn time_scale(self) -> u32 {
        match self {
            Accel::Kvm => 1,
            Accel::Tcg => 6,
        }
    }
}

/// KVM when the host offers it for real (a usable /dev/kvm on a CPU with vmx or svm), else TCG;
/// `MESHPROBE_GUEST_ACCEL=kvm|tcg` overrides. The reason is for the log.
pub fn choose_accel() -> Result<(Accel, String)> {
    match std::env::var("MESHPROBE_GUEST_ACCEL").as_deref() {
        Ok("kvm") => return Ok((Accel::Kvm, "MESHPROBE_GUEST_ACCEL=kvm".into())),
        Ok("tcg") => return Ok((Accel::Tcg, "MESHPROBE_GUEST_ACCEL=tcg".into())),
        Ok(other) => bail!("MESHPROBE_GUEST_ACCEL={other}: expected kvm or tcg"),
        Err(_) => {}
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let virt = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    Ok(match (kvm, virt) {
        (true, true) => (Accel::Kvm, "/dev/kvm usable, CPU has vmx/svm".into()),
        // A /dev/kvm without vmx/svm (nested without the flag) boots no further than "Probing
        // EDD": seen on this kind of machine.
        (true, false) => (
            Accel::Tcg,
            "/dev/kvm present but the CPU shows no vmx/svm".into(),
        ),
        (false, _) => (Accel::Tcg, "no usable /dev/kvm".into()),
    })
}

/// What one boot needs.
pub struct Boot<'a> {
    pub vng: &'a Path,
    pub vmlinuz: &'a Path,
    pub accel: Accel,
    /// Writable in the guest at the same path; holds the script, its output and status.
    pub work: &'a Path,
    pub script: &'a Path,
    pub cpus: u32,
    pub memory: &'a str,
    /// The guest is stopped after this long.
    pub limit: Duration,
}

/// Where the script writes its output and its final status line.
pub const OUTPUT: &str = "output.log";
pub const STATUS: &str = "status";
/// virtme-ng's and the kernel's own console.
const CONSOLE: &str = "console.log";

/// Boots, streams the script's output to stdout, and returns the status the script wrote.
pub fn boot(ws: &Workspace, b: &Boot) -> Result<String> {
    for f in [OUTPUT, STATUS, CONSOLE] {
        let _ = std::fs::remove_file(b.work.join(f));
    }
    let console = std::fs::File::create(b.work.join(CONSOLE))?;
    let mut cmd = ws.command(b.vng);
    cmd.arg("--run")
        .arg(b.vmlinuz)
        .args(["--cpus", &b.cpus.to_string(), "--memory", b.memory])
        .arg("--rwdir")
        .arg(b.work)
        .arg("--cwd")
        .arg(b.work)
        .arg("--verbose")
        .arg("--exec")
        .arg(b.script);
    if b.accel == Accel::Tcg {
        cmd.arg("--disable-kvm");
    }
    println!("+ {}", util::display(&cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .with_context(|| format!("cannot start {}", b.vng.display()))?;
    let finished = stream(&mut child, &b.work.join(OUTPUT), b.limit)?;
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "the guest did not finish within {:?}; its console: {}",
            b.limit,
            tail(&b.work.join(CONSOLE))
        );
    }
    match std::fs::read_to_string(b.work.join(STATUS)) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(_) => bail!(
            "the guest stopped without a status (it crashed or its script could not run); its \
             console: {}",
            tail(&b.work.join(CONSOLE))
        ),
    }
}

/// Copies what the guest appends to `output` until the child exits (true) or `limit` passes.
fn stream(child: &mut Child, output: &Path, limit: Duration) -> Result<bool> {
    let start = Instant::now();
    let mut offset = 0u64;
    let mut out = std::io::stdout();
    loop {
        let exited = child.try_wait()?.is_some();
        if let Ok(mut f) = std::fs::File::open(output) {
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            offset += f.read_to_end(&mut buf)? as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
        if exited {
            return Ok(true);
        }
        if start.elapsed() > limit {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The last lines of a log, for an error message.
fn tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(30);
    format!(
        "({}, last lines)\n{}",
        path.display(),
        lines[from..].join("\n")
    )
}
