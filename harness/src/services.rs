//! Real services the agent tests talk to, each run inside a harness namespace on that
//! namespace's address: ZooKeeper 3.8 from Debian's `zookeeper` package, and the Tansu
//! Kafka-protocol broker (`cargo install tansu`).
//!
//! Both keep their state in a temp dir that survives [`ZooKeeper::stop`] / [`Tansu::stop`]
//! (so `start_again` resumes with the same data) and is removed on drop, after the process
//! was killed.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;

use crate::child::{ChildGuard, run_with_timeout};
use crate::netns::Netns;

/// How long a service may take to accept connections after it was started.
pub const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where ZooKeeper's jars are (Debian `zookeeper`).
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// An SLF4J binding shipped by Debian (`libslf4j-java`); the zookeeper jar's manifest only
/// pulls in the API, so without it ZooKeeper would log nothing.
pub const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";
/// Debian's ZooKeeper configuration folder (log4j.properties), put on the class path as the
/// package's own scripts do.
pub const ZOOKEEPER_CONF_DIR: &str = "/etc/zookeeper/conf";

/// Overrides the storage URL given to `tansu broker --storage-engine`.
pub const TANSU_STORAGE_ENV: &str = "MESHPROBE_TESTS_TANSU_STORAGE";

/// Storage that survives a broker restart: SQLite in the broker's working directory (the temp
/// dir). Needs a tansu built with the `libsql` feature.
pub const TANSU_SQLITE_STORAGE: &str = "sqlite://tansu.db";
/// Fallback for a tansu without `libsql`: data is lost when the broker stops.
pub const TANSU_MEMORY_STORAGE: &str = "memory://tansu/";

static TEMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory under the system temp dir, removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/meshprobe-tests-<pid>-<n>-<role>` (emptied first if a leftover exists).
    pub fn new(role: &str) -> Result<TempDir> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("meshprobe-tests-{}-{n}-{role}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing leftover {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("MESHPROBE_TESTS_KEEP_TEMP").is_some() {
            eprintln!("harness: keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes `<tmp>/meshprobe-tests-<pid>-...` dirs whose process is gone (left by a SIGKILLed
/// test or lab supervisor). Returns the paths removed.
pub fn sweep_stale_temp_dirs() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return removed;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("meshprobe-tests-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed
}

/// `ip:port` with brackets for IPv6.
pub fn host_port(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// Can `ns` open a TCP connection to `addr:port` (within `timeout`)?
pub fn tcp_open(ns: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> bool {
    NsHandle::of(ns).tcp_open(addr, port, timeout)
}

/// Sends a ZooKeeper four-letter word from inside `ns` and returns the whole answer.
pub fn four_letter(ns: &Netns, addr: IpAddr, port: u16, word: &str) -> Result<String> {
    NsHandle::of(ns).four_letter(addr, port, word)
}

/// `java` on PATH, the zookeeper jar and the SLF4J binding: `None` if all there, else what is
/// missing (for a skip message).
pub fn zookeeper_missing() -> Option<String> {
    if !crate::env::have_tool("java") {
        return Some("java not installed (apt-get install default-jre-headless)".into());
    }
    for jar in [ZOOKEEPER_JAR, SLF4J_SIMPLE_JAR] {
        if !Path::new(jar).is_file() {
            return Some(format!(
                "{jar} missing (apt-get install zookeeper; `cargo xtask setup`)"
            ));
        }
    }
    None
}

/// How a [`ZooKeeper`] authenticates clients.
#[derive(Clone, Debug, Default)]
pub struct ZkServerAuth {
    /// SASL DIGEST-MD5 users (name, password) of the JAAS `Server` section; none: no SASL.
    pub sasl_users: Vec<(String, String)>,
    /// Refuse every request of a session not authenticated by SASL
    /// (`enforce.auth.enabled=true`, `enforce.auth.schemes=sasl`, ZooKeeper 3.8).
    pub require_sasl: bool,
}

/// SASL credentials of a test client: (user, password).
pub type SaslUser<'a> = (&'a str, &'a str);

/// ZooKeeper 3.8 (standalone) running in a namespace; see the module docs.
pub struct ZooKeeper {
    addr: IpAddr,
    port: u16,
    dir: TempDir,
    cfg: PathBuf,
    log: PathBuf,
    /// Extra JVM flags (the JAAS file of SASL).
    jvm_flags: Vec<String>,
    child: Option<ChildGuard>,
    /// The namespace by name, for [`ZooKeeper::start_again`] and queries.
    ns_cmd: NsHandle,
}

/// What a service needs to start itself again in the namespace it was started in. The harness
/// namespaces are named and live under /run/netns, so the name is enough.
#[derive(Clone, Debug)]
struct NsHandle {
    name: String,
}

impl NsHandle {
    fn of(ns: &Netns) -> NsHandle {
        NsHandle {
            name: ns.name().to_string(),
        }
    }

    fn command<I, S>(&self, argv: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        cmd.args(argv);
        cmd
    }

    /// Runs `f` on a thread inside the namespace.
    fn enter<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        let name = self.name.as_str();
        std::thread::scope(|s| {
            let h = s.spawn(move || -> Result<T> {
                let fd = std::fs::File::open(format!("/run/netns/{name}"))
                    .with_context(|| format!("opening /run/netns/{name}"))?;
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {name}"))?;
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    fn tcp_open(&self, addr: IpAddr, port: u16, timeout: Duration) -> bool {
        let sa = SocketAddr::new(addr, port);
        self.enter(move || TcpStream::connect_timeout(&sa, timeout).is_ok())
            .unwrap_or(false)
    }

    fn four_letter(&self, addr: IpAddr, port: u16, word: &str) -> Result<String> {
        let sa = SocketAddr::new(addr, port);
        let word = word.to_string();
        self.enter(move || -> Result<String> {
            let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.set_write_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(word.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })?
    }
}

/// zoo.cfg lines for `auth` (keys without `zookeeper.` become its system properties).
fn sasl_cfg(auth: &ZkServerAuth) -> String {
    let mut cfg = String::new();
    if !auth.sasl_users.is_empty() {
        cfg.push_str(
            "authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider\n",
        );
    }
    if auth.require_sasl {
        cfg.push_str("enforce.auth.enabled=true\nenforce.auth.schemes=sasl\n");
    }
    cfg
}

/// The JAAS file of ZooKeeper's DIGEST-MD5 users.
fn jaas_server(users: &[(String, String)]) -> String {
    let users: String = users
        .iter()
        .map(|(u, p)| format!("\n    user_{u}=\"{p}\""))
        .collect();
    format!(
        "Server {{\n    org.apache.zookeeper.server.auth.DigestLoginModule required{users};\n}};\n"
    )
}

fn tail_file(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl ZooKeeper {
    /// Writes zoo.cfg into a new temp dir and starts ZooKeeper in `ns`, listening on
    /// `addr:port`; returns once it answers `ruok` with `imok` (at most
    /// [`SERVICE_START_TIMEOUT`]).
    pub fn start(ns: &Netns, addr: IpAddr, port: u16) -> Result<ZooKeeper> {
        Self::start_with(ns, addr, port, &ZkServerAuth::default())
    }

    /// [`ZooKeeper::start`] with client authentication: SASL DIGEST-MD5 for `auth.sasl_users`
    /// (a JAAS file in the temp dir), required or not.
    pub fn start_with(
        ns: &Netns,
        addr: IpAddr,
        port: u16,
        auth: &ZkServerAuth,
    ) -> Result<ZooKeeper> {
        if let Some(why) = zookeeper_missing() {
            bail!("cannot start ZooKeeper: {why}");
        }
        let dir = TempDir::new("zookeeper")?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let cfg = dir.path().join("zoo.cfg");
        let log = dir.path().join("zookeeper.log");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\n\
                 initLimit=10\n\
                 syncLimit=5\n\
                 dataDir={}\n\
                 clientPort={port}\n\
                 clientPortAddress={addr}\n\
                 minSessionTimeout=1000\n\
                 maxSessionTimeout=60000\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=*\n\
                 autopurge.purgeInterval=0\n{}",
                data.display(),
                sasl_cfg(auth)
            ),
        )?;
        let mut jvm_flags = Vec::new();
        if !auth.sasl_users.is_empty() {
            let jaas = dir.path().join("jaas.conf");
            std::fs::write(&jaas, jaas_server(&auth.sasl_users))?;
            jvm_flags.push(format!(
                "-Djava.security.auth.login.config={}",
                jaas.display()
            ));
        }
        let mut zk = ZooKeeper {
            addr,
            port,
            dir,
            cfg,
            log,
            jvm_flags,
            child: None,
            ns_cmd: NsHandle::of(ns),
        };
        zk.launch()?;
        Ok(zk)
    }

    fn launch(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("ZooKeeper on {} is already running", self.connect_string());
        }
        let classpath = format!("{ZOOKEEPER_CONF_DIR}:{ZOOKEEPER_JAR}:{SLF4J_SIMPLE_JAR}");
        let cmd = self.ns_cmd.command(
            [
                "java".to_string(),
                "-Xmx256m".into(),
                "-XX:+UseSerialGC".into(),
                "-Dzookeeper.jmx.log4j.disable=true".into(),
                "-Dorg.slf4j.simpleLogger.showDateTime=true".into(),
                "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSXXX".into(),
                format!("-Dorg.slf4j.simpleLogger.logFile={}", self.log.display()),
            ]
            .into_iter()
            .chain(self.jvm_flags.iter().cloned())
            .chain([
                "-cp".into(),
                classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
                self.cfg.display().to_string(),
            ]),
        );
        let label = format!("[{}] zookeeper {}", self.ns_cmd.name, self.connect_string());
        let child = ChildGuard::spawn(cmd, label)?;
        self.child = Some(child);
        let deadline = Instant::now() + crate::env::scaled(SERVICE_START_TIMEOUT);
        loop {
            if let Ok(ans) = self.ns_cmd.four_letter(self.addr, self.port, "ruok")
                && ans.trim() == "imok"
            {
                // `ruok` only says the process is up; wait until it serves requests.
                if self
                    .ns_cmd
                    .four_letter(self.addr, self.port, "srvr")
                    .is_ok_and(|s| s.contains("Mode:"))
                {
                    return Ok(());
                }
            }
            let cs = self.connect_string();
            let child = self.child.as_mut().expect("just spawned");
            if !child.is_running() {
                let err = anyhow!(
                    "ZooKeeper on {cs} exited during start; stderr:\n{}\nlog:\n{}",
                    child.stderr_text(),
                    tail_file(&self.log, 30)
                );
                self.child = None;
                return Err(err);
            }
            if Instant::now() > deadline {
                let err = anyhow!(
                    "ZooKeeper on {} not serving within {:?}; log:\n{}",
                    self.connect_string(),
                    crate::env::scaled(SERVICE_START_TIMEOUT),
                    tail_file(&self.log, 30)
                );
                self.kill();
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `addr:port` (brackets for IPv6), as SERVERS_ZK wants it.
    pub fn connect_string(&self) -> String {
        host_port(self.addr, self.port)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir (zoo.cfg, data/, zookeeper.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Last `lines` lines of ZooKeeper's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log, lines)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.stop_with(Signal::SIGKILL, Duration::from_secs(10));
        }
    }

    /// Kills ZooKeeper (SIGKILL: an outage, not a clean shutdown); the data dir stays.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts ZooKeeper again on the same data dir and address; waits until it serves.
    pub fn start_again(&mut self) -> Result<()> {
        self.launch()
    }

    /// A four-letter word's answer (`ruok`, `srvr`, `dump`, `cons`, ...).
    pub fn four_letter(&self, word: &str) -> Result<String> {
        self.ns_cmd.four_letter(self.addr, self.port, word)
    }

    /// Runs `f` with a client session connected from inside the namespace.
    fn with_client<T, F>(&self, what: &str, f: F) -> Result<T>
    where
        T: Send,
        F: AsyncFnOnce(&zookeeper_client::Client) -> Result<T> + Send,
    {
        self.session_as(None, what, f)
    }

    /// Runs `f` with a client session connected from inside the namespace, authenticated by
    /// SASL DIGEST-MD5 as `user` if given (the connection fails if the server refuses it).
    pub fn session_as<T, F>(&self, user: Option<SaslUser<'_>>, what: &str, f: F) -> Result<T>
    where
        T: Send,
        F: AsyncFnOnce(&zookeeper_client::Client) -> Result<T> + Send,
    {
        let cs = self.connect_string();
        let what = what.to_string();
        let user = user.map(|(u, p)| (u.to_string(), p.to_string()));
        self.ns_cmd.enter(move || -> Result<T> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut connector = zookeeper_client::Client::connector()
                    .with_session_timeout(Duration::from_secs(5));
                if let Some((u, p)) = user {
                    connector =
                        connector.with_sasl(zookeeper_client::SaslOptions::digest_md5(u, p));
                }
                let connect = connector.connect(&cs);
                let client = tokio::time::timeout(Duration::from_secs(10), connect)
                    .await
                    .map_err(|_| anyhow!("connecting to ZooKeeper {cs} timed out ({what})"))?
                    .with_context(|| format!("connecting to ZooKeeper {cs} ({what})"))?;
                let r = tokio::time::timeout(Duration::from_secs(10), f(&client))
                    .await
                    .map_err(|_| anyhow!("ZooKeeper {cs}: {what} timed out"))?;
                drop(client);
                r
            })
        })?
    }

    /// Children of `path` (sorted); empty if `path` does not exist.
    pub fn ls(&self, path: &str) -> Result<Vec<String>> {
        let p = path.to_string();
        self.with_client(&format!("ls {path}"), async move |c| {
            match c.list_children(&p).await {
                Ok(mut v) => {
                    v.sort();
                    Ok(v)
                }
                Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
                Err(e) => Err(anyhow!("list_children {p}: {e}")),
            }
        })
    }

    /// Data of `path`, `None` if it does not exist.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let p = path.to_string();
        self.with_client(&format!("get {path}"), async move |c| {
            match c.get_data(&p).await {
                Ok((data, _)) => Ok(Some(data)),
                Err(zookeeper_client::Error::NoNode) => Ok(None),
                Err(e) => Err(anyhow!("get_data {p}: {e}")),
            }
        })
    }

    /// Creates a persistent znode (parent must exist).
    pub fn create_persistent(&self, path: &str, data: &[u8]) -> Result<()> {
        let p = path.to_string();
        let d = data.to_vec();
        self.with_client(&format!("create {path}"), async move |c| {
            let opts = zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::anyone_all());
            c.create(&p, &d, &opts)
                .await
                .map(|_| ())
                .map_err(|e| anyhow!("create {p}: {e}"))
        })
    }

    /// Ephemeral znodes per session from the `dump` four-letter word: (session id, path).
    pub fn ephemerals(&self) -> Result<Vec<(String, String)>> {
        let text = self.four_letter("dump")?;
        let mut out = Vec::new();
        let mut session = String::new();
        let mut in_eph = false;
        for line in text.lines() {
            if line.starts_with("Sessions with Ephemerals") {
                in_eph = true;
                continue;
            }
            if !in_eph {
                continue;
            }
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            if line.starts_with(['\t', ' ']) {
                out.push((session.clone(), t.to_string()));
            } else {
                session = t.trim_end_matches(':').to_string();
            }
        }
        Ok(out)
    }

    /// The session holding the ephemeral znode `path`, if any (from `dump`).
    pub fn session_of(&self, path: &str) -> Option<String> {
        self.ephemerals()
            .ok()?
            .into_iter()
            .find(|(_, p)| p == path)
            .map(|(s, _)| s)
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- Tansu --------------------------------------------------------------------------------

/// The `tansu` binary: on PATH, else `$CARGO_INSTALL_ROOT/bin`, `$CARGO_HOME/bin`,
/// `~/.cargo/bin`.
pub fn find_tansu() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    if let Some(p) = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join("tansu"))
        .find(|p| p.is_file())
    {
        return Some(p);
    }
    let env = |k| std::env::var_os(k).map(PathBuf::from);
    [
        env("CARGO_INSTALL_ROOT"),
        env("CARGO_HOME"),
        env("HOME").map(|h| h.join(".cargo")),
    ]
    .into_iter()
    .flatten()
    .map(|root| root.join("bin").join("tansu"))
    .find(|p| p.is_file())
}

/// `None` if tansu is installed, else why not (for a skip message).
pub fn tansu_missing() -> Option<String> {
    match find_tansu() {
        Some(_) => None,
        None => Some(
            "tansu not installed (cargo install tansu --locked --features dynostore,libsql; \
             `cargo xtask setup`)"
                .into(),
        ),
    }
}

/// Everything the agent tests need besides root and meshprobe: `None` or why not.
pub fn services_missing() -> Option<String> {
    zookeeper_missing().or_else(tansu_missing)
}

/// The Tansu broker running in a namespace; see the module docs.
pub struct Tansu {
    ns: NsHandle,
    bin: PathBuf,
    addr: IpAddr,
    port: u16,
    dir: TempDir,
    storage: String,
    child: Option<ChildGuard>,
    /// Stderr of earlier runs (before restarts), for diagnostics.
    old_stderr: String,
    /// The port clients are told to use (a TLS proxy's in front of the broker).
    advertised_port: u16,
    /// `--authentication`: clients must log in with SASL (SCRAM; see [`Tansu::create_user`]).
    authentication: bool,
}

impl Tansu {
    /// Starts `tansu broker` in `ns` on `addr:port` with persistent storage if this tansu has
    /// it (SQLite, feature `libsql`), else in memory (see [`Tansu::persistent`]);
    /// [`TANSU_STORAGE_ENV`] overrides the choice. Returns once the port accepts connections.
    pub fn start(ns: &Netns, addr: IpAddr, port: u16) -> Result<Tansu> {
        Self::start_advertising(ns, addr, port, port)
    }

    /// [`Tansu::start`], telling clients (in metadata) to connect to `advertised_port` on the
    /// same address: the port of a [`crate::tls::TlsProxy`] in front of the broker.
    pub fn start_advertising(
        ns: &Netns,
        addr: IpAddr,
        port: u16,
        advertised_port: u16,
    ) -> Result<Tansu> {
        let bin = find_tansu().ok_or_else(|| anyhow!("{}", tansu_missing().unwrap()))?;
        let dir = TempDir::new("tansu")?;
        let mut t = Tansu {
            ns: NsHandle::of(ns),
            bin,
            addr,
            port,
            dir,
            storage: String::new(),
            child: None,
            old_stderr: String::new(),
            advertised_port,
            authentication: false,
        };
        if let Ok(s) = std::env::var(TANSU_STORAGE_ENV) {
            t.storage = s;
            t.launch()?;
            return Ok(t);
        }
        t.storage = TANSU_SQLITE_STORAGE.into();
        match t.launch() {
            Ok(()) => Ok(t),
            Err(e) => {
                let msg = format!("{e:#}");
                if msg.contains("libsql") || msg.contains("FeatureNotEnabled") {
                    eprintln!(
                        "harness: this tansu has no SQLite storage (feature libsql); using \
                         {TANSU_MEMORY_STORAGE}: broker data will NOT survive a restart"
                    );
                    t.storage = TANSU_MEMORY_STORAGE.into();
                    t.launch()?;
                    Ok(t)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn url(&self) -> String {
        format!("tcp://{}", host_port(self.addr, self.port))
    }

    /// Where the broker listens: its address; for an IPv6 address every address of the
    /// namespace (`[::]`, dual-stack), because tansu's own client (`tansu topic create`) cannot
    /// connect to an IPv6 literal ("UnknownHost") and goes through 127.0.0.1 instead. Clients
    /// are still told (advertised) the IPv6 address.
    fn listener_url(&self) -> String {
        match self.addr {
            IpAddr::V4(_) => self.url(),
            IpAddr::V6(_) => format!("tcp://[::]:{}", self.port),
        }
    }

    /// The URL `tansu topic ...` uses (see [`Tansu::listener_url`]).
    fn admin_url(&self) -> String {
        match self.addr {
            IpAddr::V4(_) => self.url(),
            IpAddr::V6(_) => format!("tcp://127.0.0.1:{}", self.port),
        }
    }

    fn launch(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("tansu on {} is already running", self.bootstrap());
        }
        let url = self.url();
        let listener = self.listener_url();
        let advertised = format!("tcp://{}", host_port(self.addr, self.advertised_port));
        let mut cmd = self.ns.command([
            self.bin.as_os_str(),
            "broker".as_ref(),
            "--listener-url".as_ref(),
            listener.as_ref(),
            "--advertised-listener-url".as_ref(),
            advertised.as_ref(),
            "--storage-engine".as_ref(),
            self.storage.as_ref(),
            "--silent".as_ref(),
        ]);
        if self.authentication {
            cmd.arg("--authentication");
        }
        // sqlite:// paths are relative to the working directory.
        cmd.current_dir(self.dir.path());
        cmd.env(
            "RUST_LOG",
            std::env::var("TANSU_LOG").unwrap_or("warn".into()),
        );
        let label = format!("[{}] tansu broker {url} ({})", self.ns.name, self.storage);
        self.child = Some(ChildGuard::spawn(cmd, label)?);
        let deadline = Instant::now() + crate::env::scaled(SERVICE_START_TIMEOUT);
        loop {
            if self
                .ns
                .tcp_open(self.addr, self.port, Duration::from_millis(500))
            {
                return Ok(());
            }
            let child = self.child.as_mut().expect("just spawned");
            if !child.is_running() {
                std::thread::sleep(Duration::from_millis(100));
                let err = anyhow!(
                    "tansu broker ({}) exited during start; stderr:\n{}",
                    self.storage,
                    child.stderr_text()
                );
                self.child = None;
                return Err(err);
            }
            if Instant::now() > deadline {
                let err = anyhow!(
                    "tansu broker on {url} not listening within {:?}; \
                     stderr:\n{}",
                    crate::env::scaled(SERVICE_START_TIMEOUT),
                    child.stderr_text()
                );
                self.kill();
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `addr:port` (brackets for IPv6), as KAFKA_BOOTSTRAP_SERVERS wants it.
    pub fn bootstrap(&self) -> String {
        host_port(self.addr, self.port)
    }

    /// The `--storage-engine` URL in use.
    pub fn storage(&self) -> &str {
        &self.storage
    }

    /// Does the broker's data survive [`Tansu::stop`] + [`Tansu::start_again`]?
    pub fn persistent(&self) -> bool {
        !self.storage.starts_with("memory:")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's stderr (all runs so far).
    pub fn stderr_text(&self) -> String {
        let cur = self
            .child
            .as_ref()
            .map(ChildGuard::stderr_text)
            .unwrap_or_default();
        format!("{}{cur}", self.old_stderr)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// `tansu topic create NAME --partitions N` against this broker (from inside its
    /// namespace).
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        let url = self.admin_url();
        let parts = partitions.to_string();
        let mut cmd = self.ns.command([
            self.bin.as_os_str(),
            "topic".as_ref(),
            "create".as_ref(),
            name.as_ref(),
            "--broker".as_ref(),
            url.as_ref(),
            "--partitions".as_ref(),
            parts.as_ref(),
        ]);
        cmd.current_dir(self.dir.path());
        let out = run_with_timeout(cmd, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!(
                "tansu topic create {name} --partitions {partitions} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }

    /// `tansu user create NAME PASSWORD --mechanism scram256|scram512` (SCRAM-SHA-256/512
    /// credentials; Tansu has no other kind). Only before [`Tansu::require_authentication`]:
    /// tansu's own client does not log in.
    pub fn create_user(&self, name: &str, password: &str, mechanism: &str) -> Result<()> {
        if self.authentication {
            bail!("tansu user create cannot log in: create users before require_authentication");
        }
        let url = self.admin_url();
        let mut cmd = self.ns.command([
            self.bin.as_os_str(),
            "user".as_ref(),
            "create".as_ref(),
            name.as_ref(),
            password.as_ref(),
            "--broker".as_ref(),
            url.as_ref(),
            "--mechanism".as_ref(),
            mechanism.as_ref(),
        ]);
        cmd.current_dir(self.dir.path());
        let out = run_with_timeout(cmd, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!(
                "tansu user create {name} --mechanism {mechanism} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }

    /// Restarts the broker with `--authentication` (SASL required), keeping its storage: the
    /// topics and users created before stay. Needs persistent storage.
    pub fn require_authentication(&mut self) -> Result<()> {
        if !self.persistent() {
            bail!(
                "tansu storage {} does not survive a restart: users and topics created before \
                 --authentication would be lost (install tansu with feature libsql)",
                self.storage
            );
        }
        // SIGKILL like an outage: SQLite has committed what the broker acknowledged.
        self.kill();
        self.authentication = true;
        self.launch()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            match c.stop_with(Signal::SIGKILL, Duration::from_secs(10)) {
                Ok(fin) => {
                    self.old_stderr.push_str(&fin.stderr_text());
                    self.old_stderr.push('\n');
                }
                Err(e) => eprintln!("harness: killing tansu: {e:#}"),
            }
        }
    }

    /// Kills the broker (SIGKILL: an outage); its storage stays (see [`Tansu::persistent`]).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the broker again with the same storage and address.
    pub fn start_again(&mut self) -> Result<()> {
        self.launch()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `cond` holds, polling every `every`, at most `timeout`; returns whether it did.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Drops every TCP segment to or from `port` in a namespace (nftables `output` and `input`
/// hooks): a service that becomes unreachable without being stopped. Dropping the guard
/// removes the table.
pub struct TcpBlock {
    ns: NsHandle,
    table: String,
}

impl TcpBlock {
    pub fn install(ns: &Netns, port: u16) -> Result<TcpBlock> {
        let table = format!("meshprobe_block_{port}");
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0; policy accept; }}\n\
             add chain inet {table} in {{ type filter hook input priority 0; policy accept; }}\n\
             add rule inet {table} out tcp dport {port} counter drop\n\
             add rule inet {table} in tcp sport {port} counter drop\n"
        );
        let dir = TempDir::new("nft")?;
        let path = dir.path().join("block.nft");
        std::fs::write(&path, script)?;
        ns.run(["nft", "-f", &path.to_string_lossy()])
            .with_context(|| format!("blocking tcp port {port} in {}", ns.name()))?;
        Ok(TcpBlock {
            ns: NsHandle::of(ns),
            table,
        })
    }
}

impl Drop for TcpBlock {
    fn drop(&mut self) {
        let cmd = self
            .ns
            .command(["nft", "delete", "table", "inet", &self.table]);
        let _ = run_with_timeout(cmd, Duration::from_secs(10));
    }
}
