//! Agent settings: flags, environment (the heartbeat agent's names are kept as they are) and an
//! optional TOML file; flag > environment > file > default. Validated before anything starts.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Args;
use probe_common::{STAMP_DEFAULT_PORT, wire as off};

use crate::{
    ebpf::AttachMode,
    pinglist::Params,
    probe::policy::{AllowList, Budget},
    sink::OutputFormat,
};

/// Parses CONN_TIMEOUT: whole seconds as the heartbeat agent took them, or a duration (`4s`).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.trim().parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (expected seconds, e.g. 10)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (expected e.g. 500ms, 1s, 10s)"))
}

/// `--admin-listen`: an address, or `off` (None).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminListen(pub Option<std::net::SocketAddr>);

fn parse_admin(s: &str) -> Result<AdminListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(AdminListen(None));
    }
    // Also `fd00::1:9862`: the chart builds the value from the node's IP, whose family it
    // cannot know, so an IPv6 address may come without brackets (the port is the last field).
    let unbracketed = || {
        let (ip, port) = s.rsplit_once(':')?;
        Some(std::net::SocketAddr::new(
            ip.parse().ok()?,
            port.parse().ok()?,
        ))
    };
    match s.parse() {
        Ok(a) => Ok(AdminListen(Some(a))),
        Err(e) => unbracketed()
            .map(|a| AdminListen(Some(a)))
            .ok_or_else(|| format!("{e} (expected ADDR:PORT such as [::]:9862, or off)")),
    }
}

#[derive(Args, Clone, Debug)]
#[command(
    about = "Per-node daemon: register, discover peers, probe them all, reflect, stream results",
    long_about = "Per-node daemon: registers in ZooKeeper (or uses a static peer list), probes \
                  every peer with kernel-timestamped STAMP packets, answers everyone else's \
                  probes, and streams per-window summaries to Kafka as protobuf (or to stdout).\n\n\
                  Every setting is a flag, an environment variable (shown as [env: ...]) and a \
                  key of the optional TOML file given with --config (keys: the environment \
                  names or the flag names). Precedence: flag > environment > file > default."
)]
pub struct AgentArgs {
    /// TOML file with settings (keys: environment names such as SERVERS_ZK, or flag names).
    #[arg(long, env = "MESHPROBE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unique node name: the znode name and the src/dst of every record [default: host name].
    #[arg(long, env = "MESHPROBE_NODE_ID")]
    pub node_id: Option<String>,
    /// Zone label, registered and copied into summaries.
    #[arg(long, env = "MESHPROBE_ZONE", default_value = "")]
    pub zone: String,
    /// Rack label, registered.
    #[arg(long, env = "MESHPROBE_RACK", default_value = "")]
    pub rack: String,

    /// ZooKeeper connect string `host:port[,host:port...]`; unset: static peers only.
    #[arg(long, env = "SERVERS_ZK", help_heading = "ZooKeeper")]
    pub servers_zk: Option<String>,
    /// ZooKeeper root path.
    #[arg(
        long,
        env = "ROOT_PATH_ZK",
        default_value = "meshprobe",
        help_heading = "ZooKeeper"
    )]
    pub root_path_zk: String,
    /// Members register at /ROOT_PATH_ZK/HEART_BEAT_NODE_PATH/<node-id>.
    #[arg(
        long,
        env = "HEART_BEAT_NODE_PATH",
        default_value = "heartbeat",
        help_heading = "ZooKeeper"
    )]
    pub heart_beat_node_path: String,
    /// Seconds: ZooKeeper session timeout and Kafka connection timeout.
    #[arg(long, env = "CONN_TIMEOUT", default_value = "10", value_parser = parse_seconds, help_heading = "ZooKeeper")]
    pub conn_timeout: Duration,
    /// Address peers send probes to [default: our source address towards the first
    /// ZooKeeper server].
    #[arg(long, env = "REGISTER_PUBLIC_DNS", help_heading = "ZooKeeper")]
    pub register_public_dns: Option<String>,
    /// Port peers send probes to [default: REGISTER_LISTENER_PORT].
    #[arg(long, env = "REGISTER_PUBLIC_PORT", help_heading = "ZooKeeper")]
    pub register_public_port: Option<u16>,

    /// Address the reflector listens on (`::` also accepts IPv4).
    #[arg(
        long,
        env = "REGISTER_LISTENER_DNS",
        default_value = "::",
        help_heading = "Reflector"
    )]
    pub register_listener_dns: String,
    /// UDP port the reflector listens on (STAMP's registered port is 862).
    #[arg(long, env = "REGISTER_LISTENER_PORT", default_value_t = STAMP_DEFAULT_PORT, help_heading = "Reflector")]
    pub register_listener_port: u16,
    /// Networks answered besides the current peers: `CIDR[,CIDR...]`, or `any` [default:
    /// only the peers].
    #[arg(
        long,
        env = "MESHPROBE_REFLECT_ALLOW",
        value_name = "CIDR[,...]",
        default_value = "",
        hide_default_value = true,
        help_heading = "Reflector"
    )]
    pub reflect_allow: AllowList,
    /// Replies per second to one source address (token bucket, one second's burst), or off.
    #[arg(long, env = "MESHPROBE_REFLECT_BUDGET_PER_SOURCE", value_name = "N/s", default_value_t = Budget::DEFAULT_PER_SOURCE, help_heading = "Reflector")]
    pub reflect_budget_per_source: Budget,
    /// Replies per second in all, or off.
    #[arg(long, env = "MESHPROBE_REFLECT_BUDGET_TOTAL", value_name = "N/s", default_value_t = Budget::DEFAULT_TOTAL, help_heading = "Reflector")]
    pub reflect_budget_total: Budget,
    /// Listen even on a REGISTER_LISTENER_PORT inside net.ipv4.ip_local_port_range (where
    /// tunnels' and senders' source ports come from).
    #[arg(
        long,
        env = "MESHPROBE_REFLECT_ALLOW_EPHEMERAL_PORT",
        help_heading = "Reflector"
    )]
    pub reflect_allow_ephemeral_port: bool,

    /// Static peers, comma separated: `[id=]host[:port]`. Used alone, or with ZooKeeper as
    /// extra targets.
    #[arg(
        long,
        env = "MESHPROBE_PEERS",
        value_delimiter = ',',
        help_heading = "Peers"
    )]
    pub peers: Vec<String>,
    /// File with one static peer per line (`[id=]host[:port]`, `#` comments).
    #[arg(long, env = "MESHPROBE_PEERS_FILE", help_heading = "Peers")]
    pub peers_file: Option<PathBuf>,
    /// Keep a departed peer's state this long; its unanswered probes are not counted as lost.
    #[arg(long, env = "MESHPROBE_PEER_GRACE", default_value = "5s", value_parser = parse_duration, help_heading = "Peers")]
    pub peer_grace: Duration,

    /// Pinglist: the full mesh while the cluster has at most this many other members.
    #[arg(long, env = "MESHPROBE_PINGLIST_FULL_MESH_MAX", default_value_t = Params::default().full_mesh_max, help_heading = "Pinglist")]
    pub pinglist_full_mesh_max: usize,
    /// Pinglist: cap of the own rack's (own zone's, without racks) full mesh.
    #[arg(long, env = "MESHPROBE_PINGLIST_RACK_PEERS", default_value_t = Params::default().rack_peers, help_heading = "Pinglist")]
    pub pinglist_rack_peers: usize,
    /// Pinglist: k, peers per other zone (and among the own zone's other racks).
    #[arg(long, env = "MESHPROBE_PINGLIST_ZONE_PEERS", default_value_t = Params::default().zone_peers, help_heading = "Pinglist")]
    pub pinglist_zone_peers: usize,
    /// Pinglist: m, probers from other zones every node gets.
    #[arg(long, env = "MESHPROBE_PINGLIST_MIN_PROBERS", default_value_t = Params::default().min_probers, help_heading = "Pinglist")]
    pub pinglist_min_probers: usize,
    /// Pinglist: at most this many peers probed.
    #[arg(long, env = "MESHPROBE_PINGLIST_MAX_PEERS", default_value_t = Params::default().max_peers, help_heading = "Pinglist")]
    pub pinglist_max_peers: usize,

    /// Time between probes to one peer.
    #[arg(long, env = "MESHPROBE_INTERVAL", default_value = "1s", value_parser = parse_duration, help_heading = "Probing")]
    pub interval: Duration,
    /// Random spread of each interval, ± percent (0-50), so agents do not synchronise.
    #[arg(
        long,
        env = "MESHPROBE_JITTER",
        default_value_t = 10,
        help_heading = "Probing"
    )]
    pub jitter: u8,
    /// A probe without a reply after this long is lost.
    #[arg(long, env = "MESHPROBE_TIMEOUT", default_value = "1s", value_parser = parse_duration, help_heading = "Probing")]
    pub timeout: Duration,
    /// UDP payload sizes in octets, comma separated, used in turn (44, or 48..9000; 68 and up
    /// carry T4 in-band).
    #[arg(
        long,
        env = "MESHPROBE_SIZES",
        value_delimiter = ',',
        default_value = "68",
        help_heading = "Probing"
    )]
    pub sizes: Vec<usize>,
    /// Statistics window, aligned to the TAI clock (all agents share boundaries).
    #[arg(long, env = "MESHPROBE_WINDOW", default_value = "10s", value_parser = parse_duration, help_heading = "Probing")]
    pub window: Duration,

    /// Kafka bootstrap servers `host:port[,...]`; unset: no Kafka.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", help_heading = "Kafka")]
    pub kafka_bootstrap_servers: Option<String>,
    /// Topic for summaries (and probe records).
    #[arg(
        long,
        env = "KAFKA_TOPIC",
        default_value = "distributedTrace",
        help_heading = "Kafka"
    )]
    pub kafka_topic: String,
    /// The producer's client.id.
    #[arg(
        long,
        env = "KAFKA_PRODUCER_GROUP",
        default_value = "meshprobe",
        help_heading = "Kafka"
    )]
    pub kafka_producer_group: String,
    /// Also send one record per probe (large at scale).
    #[arg(long, env = "MESHPROBE_KAFKA_PROBES", help_heading = "Kafka")]
    pub kafka_probes: bool,
    /// Records buffered while the broker is unreachable; beyond that they are dropped, counted
    /// and logged.
    #[arg(
        long,
        env = "MESHPROBE_KAFKA_BUFFER_MESSAGES",
        default_value_t = 100_000,
        help_heading = "Kafka"
    )]
    pub kafka_buffer_messages: usize,
    /// Compression: none, gzip, snappy, lz4, zstd.
    #[arg(
        long,
        env = "MESHPROBE_KAFKA_COMPRESSION",
        default_value = "zstd",
        help_heading = "Kafka"
    )]
    pub kafka_compression: String,

    /// stdout: `table`, `json` (JSON lines) or `none` [default: table without Kafka, none
    /// with Kafka].
    #[arg(long, env = "MESHPROBE_OUTPUT", value_enum, help_heading = "Output")]
    pub output: Option<OutputFormat>,
    /// HTTP /metrics, /healthz, /readyz on this address, or `off`. No secrets are served, but
    /// anyone who reaches it can read every metric: on a node, bind the node's IP (the chart
    /// does), not every address.
    #[arg(long, env = "MESHPROBE_ADMIN_LISTEN", default_value = "[::]:9862", value_parser = parse_admin, help_heading = "Output")]
    pub admin_listen: AdminListen,
    /// /metrics names this many peers: the worst of the last window by loss ratio, then p99
    /// RTT (0: none); every other series is per zone pair [default: 10].
    #[arg(
        long,
        env = "MESHPROBE_METRICS_WORST_PEERS",
        value_name = "K",
        help_heading = "Output"
    )]
    pub metrics_worst_peers: Option<usize>,
    /// Deprecated alias of MESHPROBE_METRICS_WORST_PEERS (per-peer series for every peer are
    /// gone); read only when that is unset, with a warning.
    #[arg(long, env = "MESHPROBE_METRICS_PEER_LIMIT", hide = true)]
    pub metrics_peer_limit: Option<usize>,
    /// On SIGTERM/SIGINT: deregister, let probes in flight finish, flush Kafka; at most this
    /// long.
    #[arg(long, env = "MESHPROBE_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration, help_heading = "Output")]
    pub shutdown_grace: Duration,

    /// Interfaces for the TC programs (comma separated) [default: every UP interface with an
    /// address and an Ethernet header, loopback included].
    #[arg(
        short = 'I',
        long = "interface",
        env = "MESHPROBE_INTERFACES",
        value_delimiter = ',',
        help_heading = "Stamping"
    )]
    pub interfaces: Vec<String>,
    /// Do not load eBPF; use socket timestamps (SO_TIMESTAMPING software).
    #[arg(long, env = "MESHPROBE_NO_EBPF", help_heading = "Stamping")]
    pub no_ebpf: bool,
    /// TC attach mode.
    #[arg(long, env = "MESHPROBE_ATTACH", value_enum, default_value_t = AttachMode::Auto, help_heading = "Stamping")]
    pub attach: AttachMode,
    /// aya-log level inside the eBPF programs (0 off .. 5 trace).
    #[arg(long, env = "MESHPROBE_EBPF_LOG_LEVEL", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=5), help_heading = "Stamping")]
    pub ebpf_log_level: u8,
    /// The host clock is synchronised to an external source (PTP): sets the S bit.
    #[arg(long, env = "MESHPROBE_CLOCK_SYNCHRONIZED", help_heading = "Stamping")]
    pub clock_synchronized: bool,
    /// NIC clocks are PTP-disciplined to TAI: use hardware RX stamps where present.
    #[arg(long, env = "MESHPROBE_HW_RX_STAMPS", help_heading = "Stamping")]
    pub hw_rx_stamps: bool,
    /// Kernel mode: do not ask for software RX stamps (T2/T4 then come from the TC hook, and
    /// received packets are no longer stamped host-wide on meshprobe's behalf).
    #[arg(long, env = "MESHPROBE_NO_SW_RX_STAMPS", help_heading = "Stamping")]
    pub no_sw_rx_stamps: bool,
}

/// A setting that cannot work, with its names and the fix. Exit code 2.
#[derive(Debug)]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
    pub fix: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.setting)?;
        if !self.problem.is_empty() {
            write!(f, ": {}", self.problem)?;
        }
        if !self.fix.is_empty() {
            write!(f, "; {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error from a module that already names the setting and says what is wrong.
    pub fn named(e: impl std::fmt::Display) -> Self {
        Self {
            setting: e.to_string(),
            problem: String::new(),
            fix: String::new(),
        }
    }
}

/// Default of MESHPROBE_METRICS_WORST_PEERS.
pub const DEFAULT_WORST_PEERS: usize = 10;
/// Most peers /metrics may name: the series count stays bounded whatever the setting.
pub const MAX_WORST_PEERS: usize = 1000;

fn bad(setting: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_string(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Reads the TOML file and returns (flag id, value) pairs for the keys it sets.
/// Keys: environment names (SERVERS_ZK) or flag names (servers-zk / servers_zk).
pub fn file_defaults(
    path: &std::path::Path,
    cmd: &clap::Command,
) -> Result<Vec<(String, String)>, ConfigError> {
    let setting = format!("MESHPROBE_CONFIG ({})", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(
            &setting,
            format!("cannot read it: {e}"),
            "give a readable TOML file",
        )
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| bad(&setting, format!("not valid TOML: {e}"), "fix the syntax"))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let norm = key.replace('_', "-").to_ascii_lowercase();
        let arg = cmd.get_arguments().find(|a| {
            a.get_long() == Some(norm.as_str())
                || a.get_env().and_then(|e| e.to_str()) == Some(key.as_str())
        });
        let Some(arg) = arg else {
            return Err(bad(
                &setting,
                format!("unknown key `{key}`"),
                "use the environment names listed by `meshprobe agent --help`",
            ));
        };
        if arg.get_id() == "config" {
            return Err(bad(
                &setting,
                "a config file cannot name another",
                "remove the key",
            ));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(bad(
                    &setting,
                    format!("key `{key}` has an unsupported value {other}"),
                    "use a string, number, boolean or list",
                ));
            }
        };
        out.push((arg.get_id().to_string(), text));
    }
    Ok(out)
}

/// Applies file values as defaults of the `agent` subcommand, so flags and environment still
/// win. `argv` is scanned for --config before parsing.
pub fn with_file_defaults(
    mut cmd: clap::Command,
    argv: &[std::ffi::OsString],
) -> Result<clap::Command, ConfigError> {
    let Some(pos) = argv.iter().position(|a| a == "agent") else {
        return Ok(cmd);
    };
    let rest = &argv[pos + 1..];
    let mut path: Option<PathBuf> = None;
    for (i, a) in rest.iter().enumerate() {
        let a = a.to_string_lossy();
        if a == "--config" {
            path = rest.get(i + 1).map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let path = path.or_else(|| std::env::var_os("MESHPROBE_CONFIG").map(PathBuf::from));
    let Some(path) = path else {
        return Ok(cmd);
    };
    let sub = cmd
        .find_subcommand("agent")
        .expect("the agent subcommand exists")
        .clone();
    let values = file_defaults(&path, &sub)?;
    cmd = cmd.mut_subcommand("agent", |mut sc| {
        for (id, v) in values {
            // Leaked once at start-up: clap defaults are 'static.
            let v: &'static str = Box::leak(v.into_boxed_str());
            sc = sc.mut_arg(id, |a| a.default_value(v));
        }
        sc
    });
    Ok(cmd)
}

impl AgentArgs {
    /// Checks every setting before anything is attached or connected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(bad(
                "MESHPROBE_INTERVAL (--interval)",
                "must be greater than 0",
                "e.g. 1s",
            ));
        }
        if self.timeout.is_zero() {
            return Err(bad(
                "MESHPROBE_TIMEOUT (--timeout)",
                "must be greater than 0",
                "e.g. 1s",
            ));
        }
        if self.window < Duration::from_millis(100) {
            return Err(bad(
                "MESHPROBE_WINDOW (--window)",
                format!("{} is too short", humantime::format_duration(self.window)),
                "use 100ms or more (default 10s)",
            ));
        }
        if self.jitter > 50 {
            return Err(bad(
                "MESHPROBE_JITTER (--jitter)",
                format!("{} % is out of range", self.jitter),
                "use a percentage from 0 to 50",
            ));
        }
        if self.interval > self.window {
            return Err(bad(
                "MESHPROBE_INTERVAL (--interval)",
                format!(
                    "{} is longer than MESHPROBE_WINDOW {}: some windows would have no probes",
                    humantime::format_duration(self.interval),
                    humantime::format_duration(self.window)
                ),
                "lower the interval or raise the window",
            ));
        }
        if self.timeout > self.window {
            return Err(bad(
                "MESHPROBE_TIMEOUT (--timeout)",
                format!(
                    "{} is longer than MESHPROBE_WINDOW {}",
                    humantime::format_duration(self.timeout),
                    humantime::format_duration(self.window)
                ),
                "a lost probe must be known within a window: lower the timeout or raise the window",
            ));
        }
        // In-flight probes per peer stay bounded (memory is fixed per peer).
        let in_flight = self.timeout.as_nanos() / self.interval.as_nanos().max(1);
        if in_flight >= crate::probe::session::AGENT_MAX_IN_FLIGHT as u128 {
            return Err(bad(
                "MESHPROBE_TIMEOUT (--timeout)",
                format!(
                    "{} over an interval of {} keeps {in_flight} probes in flight per peer",
                    humantime::format_duration(self.timeout),
                    humantime::format_duration(self.interval)
                ),
                format!(
                    "keep timeout/interval below {}",
                    crate::probe::session::AGENT_MAX_IN_FLIGHT
                ),
            ));
        }
        if self.sizes.is_empty() {
            return Err(bad(
                "MESHPROBE_SIZES (--sizes)",
                "empty",
                "e.g. 68 or 68,512,1400",
            ));
        }
        for &s in &self.sizes {
            if s < off::BASE_LEN
                || (s > off::BASE_LEN && s < off::TLV_START + off::TLV_HEADER_LEN)
                || s > crate::wire::MAX_PACKET_LEN
            {
                return Err(bad(
                    "MESHPROBE_SIZES (--sizes)",
                    format!("{s} octets is not a valid probe size"),
                    format!(
                        "use {} or {}..{} (68 and up carry T4 in-band)",
                        off::BASE_LEN,
                        off::TLV_START + off::TLV_HEADER_LEN,
                        crate::wire::MAX_PACKET_LEN
                    ),
                ));
            }
        }
        if self.register_listener_port == 0 {
            return Err(bad(
                "REGISTER_LISTENER_PORT (--register-listener-port)",
                "0 is not a fixed port",
                format!("use a port peers can reach, e.g. {STAMP_DEFAULT_PORT}"),
            ));
        }
        if let Err(e) = crate::probe::policy::check_reflector_port(
            self.register_listener_port,
            self.reflect_allow_ephemeral_port,
        ) {
            return Err(bad(
                "REGISTER_LISTENER_PORT (--register-listener-port)",
                e.to_string(),
                "",
            ));
        }
        if self.register_public_port == Some(0) {
            return Err(bad(
                "REGISTER_PUBLIC_PORT (--register-public-port)",
                "0 is not a port",
                "leave it unset to use REGISTER_LISTENER_PORT",
            ));
        }
        if self.register_listener_dns.parse::<IpAddr>().is_err() {
            return Err(bad(
                "REGISTER_LISTENER_DNS (--register-listener-dns)",
                format!("`{}` is not an IP address", self.register_listener_dns),
                "use a local address such as :: (all, IPv4 too), 0.0.0.0 or 198.18.0.2",
            ));
        }
        if self.conn_timeout < Duration::from_secs(1) {
            return Err(bad(
                "CONN_TIMEOUT (--conn-timeout)",
                "must be at least 1 second",
                "e.g. 10",
            ));
        }
        if let Some(n) = &self.node_id
            && (n.is_empty() || n.contains('/') || n == "." || n == ".." || n.contains("->"))
        {
            return Err(bad(
                "MESHPROBE_NODE_ID (--node-id)",
                format!("`{n}` cannot name a znode or a record key"),
                "use a name without '/' or '->', e.g. the node's host name",
            ));
        }
        let (worst, setting) = self.metrics_worst_peers();
        if worst > MAX_WORST_PEERS {
            return Err(bad(
                setting,
                format!("{worst} peers by name is too many series"),
                format!(
                    "use 0 to {MAX_WORST_PEERS} (default {DEFAULT_WORST_PEERS}); zone pairs \
                     cover every peer"
                ),
            ));
        }
        if self.kafka_buffer_messages == 0 {
            return Err(bad(
                "MESHPROBE_KAFKA_BUFFER_MESSAGES (--kafka-buffer-messages)",
                "0 would drop every record while the broker is away",
                "e.g. 100000",
            ));
        }
        if self.kafka_probes && self.kafka_bootstrap_servers.is_none() {
            return Err(bad(
                "MESHPROBE_KAFKA_PROBES (--kafka-probes)",
                "set without KAFKA_BOOTSTRAP_SERVERS",
                "set KAFKA_BOOTSTRAP_SERVERS or drop the option",
            ));
        }
        if self
            .servers_zk
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(bad(
                "SERVERS_ZK (--servers-zk)",
                "empty",
                "give host:port[,host:port], or unset it for static peers",
            ));
        }
        if self
            .kafka_bootstrap_servers
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(bad(
                "KAFKA_BOOTSTRAP_SERVERS (--kafka-bootstrap-servers)",
                "empty",
                "give host:port[,host:port], or unset it to print to stdout",
            ));
        }
        // The error names the setting (README "Pinglists" has the rules).
        self.pinglist_params()
            .validate()
            .map_err(|e| bad("MESHPROBE_PINGLIST_*", e.to_string(), ""))?;
        Ok(())
    }

    /// The worst peers /metrics names, and the setting that said so: MESHPROBE_METRICS_WORST_PEERS,
    /// else the deprecated MESHPROBE_METRICS_PEER_LIMIT, else the default.
    pub fn metrics_worst_peers(&self) -> (usize, &'static str) {
        match (self.metrics_worst_peers, self.metrics_peer_limit) {
            (Some(k), _) => (k, "MESHPROBE_METRICS_WORST_PEERS (--metrics-worst-peers)"),
            (None, Some(k)) => (k, "MESHPROBE_METRICS_PEER_LIMIT (--metrics-peer-limit)"),
            (None, None) => (
                DEFAULT_WORST_PEERS,
                "MESHPROBE_METRICS_WORST_PEERS (--metrics-worst-peers)",
            ),
        }
    }

    /// What to warn about a deprecated setting that is still set.
    pub fn deprecation(&self) -> Option<String> {
        let old = self.metrics_peer_limit?;
        Some(match self.metrics_worst_peers {
            Some(k) => format!(
                "MESHPROBE_METRICS_PEER_LIMIT={old} is deprecated and ignored: \
                 MESHPROBE_METRICS_WORST_PEERS={k} is set; remove the old setting"
            ),
            None => format!(
                "MESHPROBE_METRICS_PEER_LIMIT is deprecated: /metrics now has series per zone \
                 pair and names only the worst K peers; read as MESHPROBE_METRICS_WORST_PEERS={old}. \
                 Rename the setting"
            ),
        })
    }

    /// stdout output: given, else table without Kafka and none with it.
    /// The pinglist function's tuning.
    pub fn pinglist_params(&self) -> Params {
        Params {
            full_mesh_max: self.pinglist_full_mesh_max,
            rack_peers: self.pinglist_rack_peers,
            zone_peers: self.pinglist_zone_peers,
            min_probers: self.pinglist_min_probers,
            max_peers: self.pinglist_max_peers,
        }
    }

    pub fn output(&self) -> OutputFormat {
        self.output
            .unwrap_or(if self.kafka_bootstrap_servers.is_some() {
                OutputFormat::None
            } else {
                OutputFormat::Table
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, FromArgMatches as _, Parser};

    #[test]
    fn admin_address_takes_ipv6_with_or_without_brackets() {
        let a = |s: &str| parse_admin(s).map(|a| a.0.map(|a| a.to_string()));
        assert_eq!(a("[::]:9862"), Ok(Some("[::]:9862".into())));
        assert_eq!(a("fd00::1:9862"), Ok(Some("[fd00::1]:9862".into())));
        assert_eq!(a("198.18.0.1:9862"), Ok(Some("198.18.0.1:9862".into())));
        assert_eq!(a("off"), Ok(None));
        assert!(a("fd00::1").is_err(), "no port");
        assert!(a("node:9862").is_err(), "names are not resolved");
    }

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        Agent(AgentArgs),
    }

    fn parse(args: &[&str]) -> AgentArgs {
        let argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let cmd = with_file_defaults(T::command(), &argv).expect("config");
        let m = cmd.try_get_matches_from(argv).expect("parse");
        let Sub::Agent(a) = T::from_arg_matches(&m).expect("args").cmd;
        a
    }

    #[test]
    fn defaults_are_valid() {
        let a = parse(&["t", "agent"]);
        a.validate().unwrap();
        assert_eq!(a.kafka_topic, "distributedTrace");
        assert_eq!(a.interval, Duration::from_secs(1));
        assert_eq!(a.conn_timeout, Duration::from_secs(10));
        assert_eq!(a.register_listener_port, 862);
        assert_eq!(a.output(), OutputFormat::Table);
    }

    #[test]
    fn pinglist_settings_are_checked() {
        let a = parse(&["t", "agent", "--pinglist-rack-peers", "30"]);
        assert_eq!(a.pinglist_params().rack_peers, 30);
        a.validate().unwrap();
        let e = parse(&["t", "agent", "--pinglist-zone-peers", "0"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("MESHPROBE_PINGLIST_ZONE_PEERS"), "{e}");
        let e = parse(&["t", "agent", "--pinglist-rack-peers", "200"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("RACK_PEERS") && e.contains("MAX_PEERS"), "{e}");
    }

    #[test]
    fn file_values_are_defaults_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("meshprobe-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("agent.toml");
        std::fs::write(
            &f,
            "KAFKA_TOPIC = \"fromfile\"\nCONN_TIMEOUT = 7\ninterval = \"250ms\"\n\
             peers = [\"a=198.18.0.2\", \"198.18.0.3:900\"]\nkafka-probes = false\n",
        )
        .unwrap();
        let fs = f.to_str().unwrap();
        let a = parse(&["t", "agent", "--config", fs, "--interval", "2s"]);
        assert_eq!(a.kafka_topic, "fromfile");
        assert_eq!(a.conn_timeout, Duration::from_secs(7));
        assert_eq!(
            a.interval,
            Duration::from_secs(2),
            "the flag wins over the file"
        );
        assert_eq!(a.peers, vec!["a=198.18.0.2", "198.18.0.3:900"]);
        std::fs::write(&f, "NO_SUCH_SETTING = 1\n").unwrap();
        let argv: Vec<std::ffi::OsString> = ["t", "agent", "--config", fs]
            .iter()
            .map(Into::into)
            .collect();
        let e = with_file_defaults(T::command(), &argv).unwrap_err();
        assert!(e.to_string().contains("NO_SUCH_SETTING"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn contradictions_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--jitter", "90"], "MESHPROBE_JITTER"),
            (&["--interval", "20s"], "MESHPROBE_INTERVAL"),
            (&["--timeout", "11s"], "MESHPROBE_TIMEOUT"),
            (
                &["--interval", "1ms", "--timeout", "1s"],
                "MESHPROBE_TIMEOUT",
            ),
            (&["--sizes", "45"], "MESHPROBE_SIZES"),
            (&["--register-listener-port", "0"], "REGISTER_LISTENER_PORT"),
            (
                &["--register-listener-dns", "nope"],
                "REGISTER_LISTENER_DNS",
            ),
            (&["--node-id", "a/b"], "MESHPROBE_NODE_ID"),
            (&["--kafka-probes"], "MESHPROBE_KAFKA_PROBES"),
            (&["--conn-timeout", "0"], "CONN_TIMEOUT"),
            (
                &["--metrics-worst-peers", "1001"],
                "MESHPROBE_METRICS_WORST_PEERS",
            ),
            (
                &["--metrics-peer-limit", "5000"],
                "MESHPROBE_METRICS_PEER_LIMIT",
            ),
        ];
        for (args, setting) in cases {
            let mut v = vec!["t", "agent"];
            v.extend_from_slice(args);
            let e = parse(&v).validate().unwrap_err();
            assert!(e.to_string().starts_with(setting), "{args:?}: {e}");
        }
    }

    #[test]
    fn reflector_settings() {
        let a = parse(&["t", "agent"]);
        assert!(!a.reflect_allow.is_any(), "peers only by default");
        assert!(a.reflect_allow.networks.is_empty());
        assert_eq!(a.reflect_budget_per_source, Budget::DEFAULT_PER_SOURCE);
        let a = parse(&[
            "t",
            "agent",
            "--reflect-allow",
            "198.18.0.0/15,fd00::/8",
            "--reflect-budget-total",
            "off",
        ]);
        assert!(a.reflect_allow.allows("198.19.1.1".parse().unwrap()));
        assert_eq!(a.reflect_budget_total, Budget(None));
        let argv: Vec<std::ffi::OsString> = ["t", "agent", "--reflect-budget-per-source", "0/s"]
            .iter()
            .map(Into::into)
            .collect();
        let e = T::command().try_get_matches_from(argv).unwrap_err();
        assert!(e.to_string().contains("not a rate"), "{e}");
        // A reflector port inside the ephemeral range is refused unless allowed.
        if let Some((lo, _)) = crate::probe::policy::local_port_range() {
            let port = lo.to_string();
            let e = parse(&["t", "agent", "--register-listener-port", &port])
                .validate()
                .unwrap_err();
            assert!(e.to_string().starts_with("REGISTER_LISTENER_PORT"), "{e}");
            parse(&[
                "t",
                "agent",
                "--register-listener-port",
                &port,
                "--reflect-allow-ephemeral-port",
            ])
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn worst_peers_default_and_the_deprecated_peer_limit() {
        let a = parse(&["t", "agent"]);
        assert_eq!(a.metrics_worst_peers().0, DEFAULT_WORST_PEERS);
        assert!(a.deprecation().is_none());
        let a = parse(&["t", "agent", "--metrics-worst-peers", "0"]);
        a.validate().unwrap();
        assert_eq!(a.metrics_worst_peers().0, 0);
        // The old setting still starts the agent: read as the new one, with a warning.
        let a = parse(&["t", "agent", "--metrics-peer-limit", "64"]);
        a.validate().unwrap();
        assert_eq!(a.metrics_worst_peers().0, 64);
        let w = a.deprecation().unwrap();
        assert!(w.contains("MESHPROBE_METRICS_WORST_PEERS=64"), "{w}");
        // Both: the new one wins; the old one is named as ignored.
        let a = parse(&[
            "t",
            "agent",
            "--metrics-peer-limit",
            "64",
            "--metrics-worst-peers",
            "3",
        ]);
        assert_eq!(a.metrics_worst_peers().0, 3);
        assert!(a.deprecation().unwrap().contains("ignored"));
        // Hidden from --help, still a known key of the config file.
        let help = T::command()
            .find_subcommand_mut("agent")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("MESHPROBE_METRICS_WORST_PEERS"), "{help}");
        assert!(!help.contains("MESHPROBE_METRICS_PEER_LIMIT"), "{help}");
    }

    #[test]
    fn conn_timeout_takes_seconds_or_durations() {
        assert_eq!(parse_seconds("4").unwrap(), Duration::from_secs(4));
        assert_eq!(
            parse_seconds("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_seconds("x").is_err());
    }
}
