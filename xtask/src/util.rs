//! Shared plumbing: where the workspace is, and running commands visibly.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// With `--verbose`, the quiet probes that `setup` runs (`dpkg -s`, `bpf-linker --version`, ...)
/// are echoed too; commands that change something or build are always echoed.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// The workspace this xtask belongs to.
pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
}

impl Workspace {
    pub fn discover() -> Result<Self> {
        // `cargo run` sets CARGO_MANIFEST_DIR at run time too; the compile-time value is the
        // fallback for running the binary by hand. xtask lives one level below the root.
        let xtask_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = xtask_dir
            .parent()
            .filter(|r| r.join("Cargo.toml").is_file())
            .with_context(|| format!("no workspace above {}", xtask_dir.display()))?
            .to_path_buf();
        // CARGO_TARGET_DIR, else target/ (no `cargo metadata`: xtask stays light).
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
            Some(t) if t.is_absolute() => t,
            Some(t) => root.join(t),
            None => root.join("target"),
        };
        Ok(Self { root, target_dir })
    }

    /// The release binary `cargo xtask build` produces.
    pub fn meshprobe_bin(&self) -> PathBuf {
        self.target_dir.join("release").join("meshprobe")
    }

    /// A command that runs in the workspace root.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root);
        cmd
    }

    /// `cargo` through the rustup proxy (so `+nightly` works), in the workspace root.
    pub fn cargo(&self) -> Command {
        self.command("cargo")
    }
}

/// `$XDG_CACHE_HOME/meshprobe`, else `~/.cache/meshprobe`: what xtask keeps between runs
/// (venvs, guest kernels).
pub fn cache_dir() -> Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(cache.join("meshprobe"))
}

/// Effective uid 0. Anything less (even with capabilities) counts as "not root" here.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A shell-like rendering of `cmd`: explicit environment, program, arguments.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints the command line, runs it with inherited stdio (output streams live), and fails
/// unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a probe quietly and captures its output; `None` when the program cannot be started
/// at all (not installed). A non-zero exit is returned as `Some` for the caller to judge.
pub fn probe(cmd: &mut Command) -> Option<Output> {
    if VERBOSE.load(Ordering::Relaxed) {
        println!("+ {}", display(cmd));
    }
    cmd.output().ok()
}

/// Stdout of a probe that must succeed, trimmed; `None` if it cannot start or exits non-zero.
pub fn probe_stdout(cmd: &mut Command) -> Option<String> {
    let out = probe(cmd)?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// First non-empty line of a failed probe's stderr (or stdout), for messages.
pub fn first_error_line(out: &Output) -> String {
    [&out.stderr, &out.stdout]
        .into_iter()
        .flat_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .next()
        .unwrap_or_else(|| format!("exit status {}", out.status))
}

/// Size of a file in bytes, with a readable error.
pub fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} does not exist", path.display()))?
        .len())
}

/// Runs `f` with file descriptor 1 pointing at stderr (for it and the commands it starts), so
/// that stdout carries only what a later step prints (the bench's report).
pub fn stdout_to_stderr<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    use nix::libc;
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // SAFETY: plain descriptor duplication; 1 is restored below before anything else runs.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        return f();
    }
    let r = f();
    let _ = std::io::stdout().flush();
    // SAFETY: `saved` is the descriptor dup'ed above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    r
}
