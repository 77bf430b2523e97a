//! Child processes that cannot outlive the test that started them.
//!
//! [`ChildGuard`] owns a spawned process: the one guard of the harness, for short tools and
//! long-running agents alike. Its stdout and stderr are read line by line by two threads, so
//! the child never blocks on a full pipe and the test can wait for a given line with a timeout
//! (or, [`ChildGuard::spawn_streaming`], stdout lines go to a handler and stderr to a file, for
//! processes that print for as long as they run). Dropping the guard sends SIGTERM, waits its
//! grace (2 s unless set), then SIGKILLs and reaps.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// How long a meshprobe process may take to load and attach its programs.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long [`Drop`] waits after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// Makes `cmd` safe to leave running in a test: its own process group (a Ctrl-C on the terminal
/// reaches only us, and our guards decide how children stop), and SIGKILL when the thread that
/// spawned it dies (so a test killed hard does not leave probes running).
pub(crate) fn harden(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `cmd` to completion, killing it after `timeout`. Output is captured.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    harden(&mut cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {desc}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => {
            let _ = waiter.join();
            Ok(out.with_context(|| format!("waiting for {desc}"))?)
        }
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            bail!("{desc} did not finish within {timeout:?} (killed)")
        }
    }
}

/// Like [`run_with_timeout`], but fails unless the command exits 0; returns its stdout.
pub fn run_checked(cmd: Command, timeout: Duration) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a child left behind once it exited.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// Stdout lines not consumed before the exit, in order.
    pub stdout: Vec<String>,
    /// Every stderr line of the child's life.
    pub stderr: Vec<String>,
}

impl Finished {
    /// Stdout lines that parse as JSON objects; other lines are ignored.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .iter()
            .filter_map(|l| parse_json_line(l))
            .collect()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
}

/// A JSON object on one line, or `None`.
pub fn parse_json_line(line: &str) -> Option<Value> {
    let t = line.trim();
    if !t.starts_with('{') {
        return None;
    }
    serde_json::from_str::<Value>(t)
        .ok()
        .filter(Value::is_object)
}

/// A running child process; see the module docs.
pub struct ChildGuard {
    label: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    stdout_rx: Receiver<String>,
    stderr_rx: Receiver<String>,
    stderr_log: Arc<Mutex<Vec<String>>>,
    /// Where stderr goes instead of `stderr_log` ([`ChildGuard::spawn_streaming`]).
    stderr_file: Option<PathBuf>,
    readers: Vec<JoinHandle<()>>,
    /// How long [`Drop`] waits after SIGTERM before SIGKILL.
    term_grace: Duration,
}

fn reader<R: Read + Send + 'static>(
    r: R,
    tx: mpsc::Sender<String>,
    log: Option<Arc<Mutex<Vec<String>>>>,
) -> JoinHandle<()> {
    line_reader(r, move |line| {
        if let Some(log) = &log {
            log.lock().unwrap().push(line.clone());
        }
        let _ = tx.send(line);
    })
}

/// A thread that hands each line of `r` (without its end) to `each`, until EOF.
fn line_reader<R: Read + Send + 'static>(
    r: R,
    mut each: impl FnMut(String) + Send + 'static,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => each(
                    String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                ),
            }
        }
    })
}

impl ChildGuard {
    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr captured line by line.
    pub fn spawn(mut cmd: Command, label: impl Into<String>) -> Result<ChildGuard> {
        let label = label.into();
        harden(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {label}: {cmd:?}"))?;
        let (otx, orx) = mpsc::channel();
        let (etx, erx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            reader(child.stdout.take().expect("piped"), otx, None),
            reader(child.stderr.take().expect("piped"), etx, Some(log.clone())),
        ];
        Ok(ChildGuard {
            label,
            child: Some(child),
            status: None,
            stdout_rx: orx,
            stderr_rx: erx,
            stderr_log: log,
            stderr_file: None,
            readers,
            term_grace: TERM_GRACE,
        })
    }

    /// Spawns `cmd` with stdin from /dev/null, each stdout line handed to `on_stdout` (on a
    /// reader thread) and stderr written to the file `stderr` (not kept in memory: for
    /// processes that log for as long as they run). `next_line`/`wait_json`/`wait_stderr` see
    /// nothing; [`ChildGuard::stderr_text`] reads the file.
    pub fn spawn_streaming(
        mut cmd: Command,
        label: impl Into<String>,
        on_stdout: impl FnMut(String) + Send + 'static,
        stderr: &Path,
    ) -> Result<ChildGuard> {
        let label = label.into();
        harden(&mut cmd);
        let file = std::fs::File::create(stderr)
            .with_context(|| format!("creating {}", stderr.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("spawning {label}: {cmd:?}"))?;
        let reader = line_reader(child.stdout.take().expect("piped"), on_stdout);
        let (_, orx) = mpsc::channel();
        let (_, erx) = mpsc::channel();
        Ok(ChildGuard {
            label,
            child: Some(child),
            status: None,
            stdout_rx: orx,
            stderr_rx: erx,
            stderr_log: Arc::default(),
            stderr_file: Some(stderr.to_path_buf()),
            readers: vec![reader],
            term_grace: TERM_GRACE,
        })
    }

    /// How long dropping the guard waits after SIGTERM before SIGKILL (default
    /// [`TERM_GRACE`]).
    pub fn with_term_grace(mut self, grace: Duration) -> ChildGuard {
        self.term_grace = grace;
        self
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The file stderr goes to ([`ChildGuard::spawn_streaming`]); `None` when it is kept in
    /// memory.
    pub fn stderr_path(&self) -> Option<&Path> {
        self.stderr_file.as_deref()
    }

    /// Stderr so far, one string.
    pub fn stderr_text(&self) -> String {
        match &self.stderr_file {
            Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
            None => self.stderr_log.lock().unwrap().join("\n"),
        }
    }

    /// The last `lines` lines of stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = self.stderr_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `Some(status)` once the child has exited (reaps it).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.status = Some(st);
        }
        self.status
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        self.try_exited().is_none()
    }

    fn died_error(&mut self, what: &str) -> anyhow::Error {
        // Give the stderr reader a moment to catch the last words.
        thread::sleep(Duration::from_millis(50));
        let status = self.try_exited().map(|s| s.to_string()).unwrap_or_default();
        anyhow!(
            "{} exited ({status}) while waiting for {what}; stderr:\n{}",
            self.label,
            self.stderr_text()
        )
    }

    /// The next stdout line, or `None` after `timeout` (or at EOF).
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.stdout_rx.recv_timeout(timeout).ok()
    }

    /// The next stdout line that is a JSON object; lines that are not are skipped.
    /// `Ok(None)` on timeout; an error if the child's stdout closed.
    pub fn next_json(&mut self, timeout: Duration) -> Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = parse_json_line(&line) {
                        return Ok(Some(v));
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.died_error("a JSON line on stdout"));
                }
            }
        }
    }

    /// Waits for a JSON stdout line satisfying `pred`; earlier lines are dropped.
    pub fn wait_json(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{}: no matching JSON line within {timeout:?}; stderr:\n{}",
                    self.label,
                    self.stderr_text()
                );
            }
            if let Some(v) = self.next_json(left.min(Duration::from_millis(100)))?
                && pred(&v)
            {
                return Ok(v);
            }
        }
    }

    /// Waits for a stderr line containing `pat`; returns it.
    pub fn wait_stderr(&mut self, pat: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_rx.recv_timeout(left) {
                Ok(line) if line.contains(pat) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{}: no stderr line containing {pat:?} within {timeout:?}; stderr:\n{}",
                    self.label,
                    self.stderr_text()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.died_error(&format!("{pat:?} on stderr")));
                }
            }
        }
    }

    /// Waits for either a JSON stdout line satisfying `pred` or a stderr line containing `pat`
    /// (for commands whose ready line goes to stdout with `--json` and stderr without).
    pub fn wait_ready_either(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
        pat: &str,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let pat_lc = pat.to_ascii_lowercase();
        while Instant::now() < deadline {
            while let Ok(line) = self.stdout_rx.try_recv() {
                if parse_json_line(&line).is_some_and(|v| pred(&v)) {
                    return Ok(line);
                }
            }
            while let Ok(line) = self.stderr_rx.try_recv() {
                if line.to_ascii_lowercase().contains(&pat_lc) {
                    return Ok(line);
                }
            }
            if !self.is_running() {
                return Err(self.died_error("its ready line"));
            }
            thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "{}: not ready within {timeout:?}; stderr:\n{}",
            self.label,
            self.stderr_text()
        )
    }

    /// Sends `sig` to the child (no-op once it exited).
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.try_exited().is_some() {
            return Ok(());
        }
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(pid as i32), sig)
                .with_context(|| format!("kill {sig} {}", self.label))?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the child to exit on its own (reaping it); `None` if it is
    /// still running then. Unlike [`ChildGuard::wait_exit`], never kills.
    pub fn wait_status(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.wait_until(Instant::now() + timeout)
    }

    /// Lets the output readers reach EOF (at most 2 s; the child has exited).
    pub fn join_readers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        for r in self.readers.drain(..) {
            while !r.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(st) = self.try_exited() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn collect(&mut self, status: ExitStatus) -> Finished {
        // Readers stop at EOF once the child (and anything sharing its pipes) is gone.
        self.join_readers();
        let stdout = self.stdout_rx.try_iter().collect();
        let stderr = match &self.stderr_file {
            Some(_) => self.stderr_text().lines().map(str::to_owned).collect(),
            None => self.stderr_log.lock().unwrap().clone(),
        };
        self.child = None;
        Finished {
            status,
            stdout,
            stderr,
        }
    }

    /// Waits for the child to exit on its own within `timeout`, then collects the rest of its
    /// output. On timeout the child is killed and an error returned.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Finished> {
        match self.wait_until(Instant::now() + timeout) {
            Some(st) => Ok(self.collect(st)),
            None => {
                let err = anyhow!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.label,
                    self.stderr_text()
                );
                self.kill_now();
                Err(err)
            }
        }
    }

    /// Sends `sig`, waits up to `timeout` for the exit, and collects the remaining output.
    /// If the child does not exit in time it is SIGKILLed and an error returned.
    pub fn stop_with(&mut self, sig: Signal, timeout: Duration) -> Result<Finished> {
        self.signal(sig)?;
        self.wait_exit(timeout)
            .with_context(|| format!("stopping {} with {sig}", self.label))
    }

    /// Graceful stop: SIGTERM, up to [`TERM_GRACE`].
    pub fn stop(&mut self) -> Result<Finished> {
        self.stop_with(Signal::SIGTERM, TERM_GRACE)
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if self.try_exited().is_none() {
            let _ = self.signal(Signal::SIGTERM);
            if self.wait_until(Instant::now() + self.term_grace).is_none() {
                eprintln!(
                    "harness: {} ignored SIGTERM for {:?}; SIGKILL",
                    self.label, self.term_grace
                );
                self.kill_now();
            }
        }
        self.child = None;
    }
}
