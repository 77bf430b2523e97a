//! What a scenario is, what it gets (the binary under test, the run length, the harness's
//! environment) and the small services every scenario uses.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meshprobe_harness::env::TestEnv;
use meshprobe_harness::{Meshprobe, interrupt};

use crate::report::ScenarioReport;

pub type RunFn = fn(&Ctx, &mut ScenarioReport) -> Result<()>;

pub struct Scenario {
    pub id: u8,
    pub name: &'static str,
    pub title: &'static str,
    pub goal: &'static str,
    pub run: Option<RunFn>,
    /// For scenarios not implemented yet: what is planned.
    pub plan: &'static str,
}

/// What a scenario gets: the binary under test and the run length.
pub struct Ctx {
    pub bin: PathBuf,
    pub quick: bool,
}

impl Ctx {
    /// The harness's exclusive test environment (the machine-wide lock timing-sensitive tests
    /// take), or `None` with the reason when a prerequisite is missing.
    pub fn env(&self, what: &str, tools: &[&str]) -> Result<std::result::Result<TestEnv, String>> {
        if let Some(why) = meshprobe_harness::env::missing_prerequisite(tools) {
            return Ok(Err(why));
        }
        match TestEnv::acquire(what, tools)? {
            Some(mut env) => {
                env.mp = Meshprobe::new(&self.bin);
                Ok(Ok(env))
            }
            None => Ok(Err("a prerequisite is missing (see the SKIP line)".into())),
        }
    }

    /// `quick` or `full` depending on the run.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// Sleeps `d`, in small steps; an error once Ctrl-C was pressed (so guards unwind).
pub fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        if interrupt::interrupted() {
            bail!("interrupted");
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Progress on stderr (stdout is the report).
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// Builds `example` of `package` (release; cargo reuses what is built) and returns its path.
/// Cargo's output goes to stderr: stdout belongs to the report.
pub fn build_example(package: &str, example: &str) -> Result<PathBuf> {
    let root = meshprobe_harness::meshprobe::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = ["build", "--release", "-p", package, "--example", example];
    progress(format!("+ cargo {}", args.join(" ")));
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the {example} example of {package} failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let p = target.join("release/examples").join(example);
    if !p.is_file() {
        bail!("{} missing after the build", p.display());
    }
    Ok(p)
}
