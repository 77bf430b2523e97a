//! Command line: parse and validate, build, run, drain on SIGINT/SIGTERM.

pub mod error;

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use probe_common::{STAMP_DEFAULT_PORT, wire as off};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    ebpf::{AttachMode, KernelClock, LoadOptions},
    net,
    probe::{
        Stamping,
        policy::{AllowList, Budget, PolicyConfig},
        reflector::{self, ReflectorOptions},
        sender::{self, SenderOptions},
    },
    sink::json::emit_json,
};

#[derive(Parser)]
#[command(
    name = "meshprobe",
    version,
    about = "Kernel-timestamped STAMP (RFC 8762/8972) latency probing",
    long_about = "Measures network round-trip time with timestamps taken by eBPF programs on the \
                  TC hook: T1 sender egress, T2 reflector ingress, T3 reflector egress, T4 sender \
                  ingress. Network RTT = (T4-T1) - (T3-T2): no scheduler noise, no reflector \
                  think-time."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Session-Reflector: answer STAMP test packets (RFC 8762 stateless mode, RFC 8972 TLVs).
    Reflect(ReflectArgs),
    /// Session-Sender: probe one or more peers and report per-probe results and a summary.
    Ping(PingArgs),
    Agent(Box<crate::agent::AgentArgs>),
    /// Read the Kafka topic and print decoded records (table or JSON lines).
    Consume(crate::consume::ConsumeArgs),
    /// Latency heatmap of the mesh (terminal UI, plain text, SVG/HTML) from Kafka or JSON lines.
    Matrix(Box<crate::matrix::MatrixArgs>),
}

#[derive(Args, Clone)]
struct Common {
    /// Interface(s) to attach the TC programs to (repeatable).
    #[arg(short = 'I', long = "interface")]
    interfaces: Vec<String>,
    /// Do not load eBPF; use socket timestamps (SO_TIMESTAMPING software).
    #[arg(long)]
    no_ebpf: bool,
    /// TC attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    attach: AttachMode,
    /// aya-log level inside the eBPF programs (0 off .. 5 trace); shown with MESHPROBE_LOG=debug.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=5))]
    ebpf_log_level: u8,
    /// Clock of the kernel stamps: auto (TAI where the kernel has bpf_ktime_get_tai_ns, Linux ≥
    /// 6.1), tai, or monotonic (CLOCK_MONOTONIC + an offset to TAI kept by userspace).
    #[arg(long, env = "MESHPROBE_KERNEL_CLOCK", value_name = "CLOCK", default_value = "auto",
          value_parser = crate::ebpf::parse_kernel_clock)]
    kernel_clock: KernelClock,
    /// Egress stamps at the driver hand-off (tp_btf net_dev_start_xmit): auto (where the
    /// kernel allows it) or off (TC egress stamps).
    #[arg(long, env = "MESHPROBE_HANDOFF", value_name = "MODE", default_value = "auto",
          value_parser = crate::ebpf::parse_handoff)]
    handoff: crate::ebpf::HandoffSetting,
    /// The host clock is synchronised to an external source (PTP): sets the S bit.
    #[arg(long)]
    clock_synchronized: bool,
    /// NIC clocks are PTP-disciplined to TAI (ptp4l + phc2sys) and RX hardware timestamping is
    /// on: use the NIC's RX stamps for T2/T4 where it gives them.
    #[arg(long)]
    hw_rx_stamps: bool,
    /// NIC clocks are PTP-disciplined to TAI and TX hardware timestamping is on: use the NIC's
    /// TX stamps for T1 (and for T3 through the reflector's follow-up).
    #[arg(long)]
    hw_tx_stamps: bool,
    /// Kernel mode: do not ask for software RX stamps. T2/T4 are then taken when the packet
    /// reaches TC rather than when it entered the stack, and received packets are no longer
    /// stamped host-wide (a clock read per packet) on meshprobe's behalf.
    #[arg(long)]
    no_sw_rx_stamps: bool,
    /// JSON lines on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// STAMP authenticated mode (RFC 8762 §4.2.2 / §4.3.2, HMAC-SHA-256).
#[derive(Args, Clone)]
struct AuthArgs {
    /// Authenticated mode: off, optional (sender: accept open replies, counted; reflector:
    /// answer both modes) or required (only what verifies).
    #[arg(long, value_name = "MODE", default_value = "off")]
    auth: crate::auth::Mode,
    /// File holding the current key in hex (at least 16 octets): signs, and verifies. Read
    /// again when it changes.
    #[arg(long, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
    /// File holding the next key in hex: also accepted when verifying (key rotation).
    #[arg(long, value_name = "FILE")]
    next_key_file: Option<std::path::PathBuf>,
}

impl AuthArgs {
    /// The mode and its keys (watched for changes); a bad or missing key file is a
    /// `ConfigError` naming the flag.
    fn load(&self) -> Result<crate::auth::Auth> {
        let files = self.key_file.clone().map(|current| crate::auth::KeyFiles {
            current,
            next: self.next_key_file.clone(),
            current_setting: "--key-file",
            next_setting: "--next-key-file",
        });
        let a = crate::auth::Auth::new(self.auth, files, "--key-file")
            .map_err(error::ConfigError::named)?;
        if let Some(ring) = a.ring() {
            ring.watch(crate::auth::POLL);
        }
        Ok(a)
    }
}

#[derive(Args)]
struct ReflectArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    auth: AuthArgs,
    /// Address to listen on (`::` accepts IPv4 too).
    #[arg(long, default_value = "::")]
    listen: IpAddr,
    /// UDP port.
    #[arg(short, long, default_value_t = STAMP_DEFAULT_PORT)]
    port: u16,
    /// Test aid: wait this long before answering each request (e.g. 5ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    think_time: Option<Duration>,
    /// Answer only sources in these networks: `CIDR[,CIDR...]` (e.g. 198.18.0.0/15,fd00::/8),
    /// or `any`.
    #[arg(long, value_name = "CIDR[,...]", default_value = "any")]
    allow: AllowList,
    /// Replies per second to one source address (token bucket, one second's burst), or off.
    #[arg(long, value_name = "N/s", default_value_t = Budget::DEFAULT_PER_SOURCE)]
    budget_per_source: Budget,
    /// Replies per second in all, or off.
    #[arg(long, value_name = "N/s", default_value_t = Budget::DEFAULT_TOTAL)]
    budget_total: Budget,
    /// Listen even on a port inside net.ipv4.ip_local_port_range (where tunnels' and senders'
    /// source ports come from).
    #[arg(long)]
    allow_ephemeral_port: bool,
}

#[derive(Args)]
struct PingArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    auth: AuthArgs,
    /// Peers: `198.18.0.2`, `198.18.0.2:862`, `fd00::2`, `[fd00::2]:862`, or host names.
    #[arg(required = true)]
    peers: Vec<String>,
    /// Reflector UDP port for peers given without one.
    #[arg(short, long, default_value_t = STAMP_DEFAULT_PORT)]
    port: u16,
    /// Probes per peer (0 = until Ctrl-C).
    #[arg(short, long, default_value_t = 10)]
    count: u64,
    /// Time between probes to one peer.
    #[arg(short, long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// UDP payload octets: 44, or at least 48 (an Extra Padding TLV); 68 and up carry T4
    /// in-band, 84 and up (the default) also the follow-up TLV that brings the reflector's
    /// hand-off T3. Authenticated mode: at least 112 (smaller sizes send 112), or 116 and up.
    #[arg(short, long, default_value_t = crate::wire::MIN_FOLLOW_UP_PROBE_LEN)]
    size: usize,
    /// A probe without a reply after this long is lost.
    #[arg(short = 'W', long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Only the summary.
    #[arg(short, long)]
    quiet: bool,
}

/// The ready line (CONTRACT.md); `meshprobe-delay` prints it too.
#[derive(Serialize)]
pub struct Ready<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub timestamping: &'a str,
    /// "tai" or "monotonic" (kernel stamps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_clock: Option<&'static str>,
    /// "on" or "off": egress stamps at the driver hand-off (kernel stamps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff: Option<&'static str>,
    pub interfaces: Vec<String>,
}

pub fn announce(json: bool, ready: Ready<'_>) {
    if json {
        emit_json(&ready);
    } else {
        eprintln!(
            "ready: {} ({} timestamps on {})",
            ready.role,
            ready.timestamping,
            if ready.interfaces.is_empty() {
                "-".to_string()
            } else {
                ready.interfaces.join(",")
            }
        );
    }
}

/// Logs to stderr, filtered by `MESHPROBE_LOG`; `meshprobe-delay` logs the same way.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHPROBE_LOG")
                // zookeeper-client retries loudly on its own; our discovery logs each outage once.
                .unwrap_or_else(|_| "info,zookeeper_client=error".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs collected from a pipe stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    // The agent's TOML file supplies defaults below flags and environment.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = match crate::agent::config::with_file_defaults(Cli::command(), &argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meshprobe: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::from_arg_matches(&cmd.get_matches_from(argv)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    run_main("meshprobe", run(cli))
}

/// Logging, a one-thread runtime, `fut` on it, and the exit code: 0, 2 for a [`error::ConfigError`],
/// else 1, with the error on stderr after `program: `. Every binary of the workspace that
/// drives meshprobe's library (meshprobe, meshprobe-delay) ends here.
pub fn run_main(program: &str, fut: impl std::future::Future<Output = Result<()>>) -> ExitCode {
    init_logging();
    // One thread: the work is light and wake-up bound (probes, replies, timers), and a second
    // worker only adds cross-thread wake-ups (eventfd writes, context switches). Measured in
    // `cargo xtask bench --scenario footprint`: 45 → 31 µs of CPU per probe.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<error::ConfigError>().is_some() => {
            eprintln!("{program}: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Reflect(a) => reflect(a).await,
        Cmd::Ping(a) => ping(a).await,
        Cmd::Agent(a) => crate::agent::run(*a, stop_signal()?).await,
        Cmd::Consume(a) => crate::consume::run(a).await,
        Cmd::Matrix(a) => crate::matrix::run(*a).await,
    }
}

/// Fires on the first SIGINT or SIGTERM.
pub fn stop_signal() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Loads and attaches the stamping programs as the common flags say (or falls back).
fn start_stamping(c: &Common, interfaces: &[String]) -> Stamping {
    let opts = LoadOptions {
        mode: c.attach,
        log_level: c.ebpf_log_level,
        kernel_clock: Some(c.kernel_clock),
        handoff: Some(c.handoff),
    };
    let mut st = Stamping::start(interfaces, c.no_ebpf, &opts, c.clock_synchronized);
    st.hw_rx_stamps = c.hw_rx_stamps;
    st.hw_tx_stamps = c.hw_tx_stamps;
    if c.hw_tx_stamps {
        crate::probe::report_hw_timestamping(interfaces);
    }
    st.sw_rx_stamps = !c.no_sw_rx_stamps;
    st
}

async fn reflect(a: ReflectArgs) -> Result<()> {
    if a.port == 0 {
        bail!("--port 0: the reflector needs a fixed port (default {STAMP_DEFAULT_PORT})");
    }
    let auth = a.auth.load()?;
    let stop = stop_signal()?;
    let interfaces = if a.common.interfaces.is_empty() {
        net::up_interfaces().context("listing interfaces")?
    } else {
        a.common.interfaces.clone()
    };
    let st = start_stamping(&a.common, &interfaces);
    if a.allow.is_any() {
        warn!(
            "--allow any: answering every source; give --allow CIDR[,...] to answer only your \
             probers"
        );
    }
    let opts = ReflectorOptions {
        listen: SocketAddr::new(a.listen, a.port),
        think_time: a.think_time,
        live: None,
        policy: PolicyConfig {
            allow: a.allow,
            per_source: a.budget_per_source.0,
            total: a.budget_total.0,
            auth,
        },
        peers: None,
        allow_ephemeral_port: a.allow_ephemeral_port,
    };
    let sock = reflector::bind(&opts, &st)?;
    announce(
        a.common.json,
        Ready {
            kind: "ready",
            role: "reflector",
            port: Some(a.port),
            timestamping: st.label(),
            kernel_clock: st.kernel_clock(),
            handoff: st.handoff(),
            interfaces: st.interfaces(),
        },
    );
    if !a.common.json {
        info!("reflecting on {}; {}", opts.listen, st.note());
    }
    let stats = reflector::run(sock, opts, st.clone(), stop).await;
    reflector::print_summary(&stats, &st, a.common.json);
    detach(st);
    Ok(())
}

/// Resolves a peer argument to one socket address.
pub fn parse_peer(s: &str, default_port: u16) -> Result<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(net::canonical(sa));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let target = match s.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() && !s.contains('[') => s.to_string(),
        _ => format!("{s}:{default_port}"),
    };
    target
        .to_socket_addrs()
        .with_context(|| format!("peer `{s}`: cannot resolve"))?
        .next()
        .with_context(|| format!("peer `{s}`: no address"))
}

async fn ping(a: PingArgs) -> Result<()> {
    if a.interval.is_zero() {
        bail!("--interval must be greater than 0");
    }
    if a.timeout.is_zero() {
        bail!("--timeout must be greater than 0");
    }
    if a.size < off::BASE_LEN
        || (a.size > off::BASE_LEN && a.size < off::TLV_START + off::TLV_HEADER_LEN)
        || a.size > crate::wire::MAX_PACKET_LEN
    {
        bail!(
            "--size {}: must be {} (bare STAMP packet) or between {} and {} octets",
            a.size,
            off::BASE_LEN,
            off::TLV_START + off::TLV_HEADER_LEN,
            crate::wire::MAX_PACKET_LEN
        );
    }
    let auth = a.auth.load()?;
    let mut peers = Vec::new();
    for p in &a.peers {
        let sa = parse_peer(p, a.port)?;
        if sa.port() == 0 {
            bail!("peer `{p}`: port 0 is not a valid STAMP port");
        }
        peers.push(sa);
    }
    let stop = stop_signal()?;
    let interfaces = if a.common.interfaces.is_empty() {
        let mut v = Vec::new();
        for p in &peers {
            let i = net::route_interface(*p).with_context(|| format!("no route to {p}"))?;
            if !v.contains(&i) {
                v.push(i);
            }
        }
        v
    } else {
        a.common.interfaces.clone()
    };
    let st = start_stamping(&a.common, &interfaces);
    if !st.is_kernel() {
        warn!("{}", st.note());
    }
    let opts = SenderOptions {
        count: a.count,
        interval: a.interval,
        size: a.size,
        timeout: a.timeout,
        json: a.common.json,
        quiet: a.quiet,
        auth,
    };
    announce(
        a.common.json,
        Ready {
            kind: "ready",
            role: "sender",
            port: None,
            timestamping: st.label(),
            kernel_clock: st.kernel_clock(),
            handoff: st.handoff(),
            interfaces: st.interfaces(),
        },
    );
    let mut tasks = Vec::new();
    let mut ssids = std::collections::HashSet::new();
    for peer in peers {
        // Random non-zero SSID per session (RFC 8972 §3), unique among ours.
        let ssid = crate::probe::session::alloc_ssid(|s| ssids.contains(&s))
            .ok_or_else(|| anyhow::anyhow!("more peers than SSIDs (65535)"))?;
        ssids.insert(ssid);
        tasks.push(tokio::spawn(sender::run_session(
            peer,
            ssid,
            opts.clone(),
            st.clone(),
            stop.clone(),
        )));
    }
    let mut failed = None;
    for t in tasks {
        match t.await {
            Ok(Ok(res)) => sender::print_summary(&res, &st, a.common.json),
            Ok(Err(e)) => failed = Some(anyhow::Error::from(e)),
            Err(e) => failed = Some(anyhow::anyhow!("session task failed: {e}")),
        }
    }
    if a.common.json {
        // What the programs did and skipped (the reflector prints these in its summary).
        emit_json(&serde_json::json!({
            "type": "stamping_summary",
            "kernel_clock": st.kernel_clock(),
            "handoff": st.handoff(),
            "ebpf_counters": st.counters(),
        }));
    }
    detach(st);
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn detach(st: Stamping) {
    if let Some(k) = st.kernel
        && let Ok(m) = std::sync::Arc::try_unwrap(k)
    {
        m.into_inner().unwrap_or_else(|p| p.into_inner()).detach();
    }
}
