//! The flags, their environment names and defaults: one `AgentArgs`, so a TOML key, a flag and
//! an environment variable name the same setting. What each setting means is checked in the
//! sibling module of its concern.
use std::{path::PathBuf, time::Duration};

use clap::Args;
use probe_common::STAMP_DEFAULT_PORT;

use crate::{
    discovery::admit, ebpf::AttachMode, kafka_security::SecurityArgs, networks::AllowList,
    pinglist::Params, probe::policy::Budget, sink::OutputFormat,
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

fn parse_max_members(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive number of members")),
    }
}

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
    /// SASL DIGEST-MD5 user for ZooKeeper (with ZK_SASL_PASSWORD_FILE): our znodes are then
    /// writable by this identity only, which every agent shares [default: unauthenticated].
    #[arg(long, env = "ZK_SASL_USERNAME", help_heading = "ZooKeeper")]
    pub zk_sasl_username: Option<String>,
    /// File holding the ZooKeeper SASL password (e.g. a mounted Secret; one trailing newline
    /// ignored; read at every new session).
    #[arg(
        long,
        env = "ZK_SASL_PASSWORD_FILE",
        value_name = "FILE",
        help_heading = "ZooKeeper"
    )]
    pub zk_sasl_password_file: Option<PathBuf>,
    /// With SASL: anyone may read our znodes (list the members) [default: agents only].
    #[arg(long, env = "ZK_WORLD_READ", help_heading = "ZooKeeper")]
    pub zk_world_read: bool,

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

    /// STAMP authenticated mode of the prober's requests and replies: off, optional (open
    /// replies accepted, counted) or required (replies that do not verify are rejected).
    #[arg(
        long,
        env = "MESHPROBE_STAMP_AUTH_SENDER",
        value_name = "MODE",
        default_value = "off",
        help_heading = "STAMP authentication"
    )]
    pub stamp_auth_sender: crate::auth::Mode,
    /// STAMP authenticated mode of the reflector: off, optional (answers both modes) or
    /// required (refuses requests that do not verify).
    #[arg(
        long,
        env = "MESHPROBE_STAMP_AUTH_REFLECTOR",
        value_name = "MODE",
        default_value = "off",
        help_heading = "STAMP authentication"
    )]
    pub stamp_auth_reflector: crate::auth::Mode,
    /// File holding the current STAMP key in hex (at least 16 octets; a mounted Secret): signs
    /// and verifies. Read again when it changes.
    #[arg(
        long,
        env = "MESHPROBE_STAMP_KEY_FILE",
        value_name = "FILE",
        help_heading = "STAMP authentication"
    )]
    pub stamp_key_file: Option<PathBuf>,
    /// File holding the next STAMP key in hex: also accepted when verifying (rotation).
    #[arg(
        long,
        env = "MESHPROBE_STAMP_NEXT_KEY_FILE",
        value_name = "FILE",
        help_heading = "STAMP authentication"
    )]
    pub stamp_next_key_file: Option<PathBuf>,

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
    /// ZooKeeper members are probed only inside these networks: `CIDR[,CIDR...]`, or `any`
    /// [default: the networks of this node's addresses].
    #[arg(long, env = "MESHPROBE_PEER_NETWORKS", value_name = "CIDR[,...]", value_parser = admit::parse_networks, help_heading = "Peers")]
    pub peer_networks: Option<AllowList>,
    /// ZooKeeper members are probed only on these ports: `PORT[-PORT][,...]`.
    #[arg(long, env = "MESHPROBE_PEER_PORTS", value_name = "PORTS", default_value = admit::DEFAULT_PORTS, help_heading = "Peers")]
    pub peer_ports: admit::Ports,
    /// Most ZooKeeper members known at once; more are not probed (and logged).
    #[arg(long, env = "MESHPROBE_MAX_MEMBERS", default_value_t = admit::DEFAULT_MAX_MEMBERS, value_parser = parse_max_members, help_heading = "Peers")]
    pub max_members: usize,

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
    /// carry T4 in-band, 84 and up also the follow-up TLV with the reflector's hand-off T3).
    #[arg(
        long,
        env = "MESHPROBE_SIZES",
        value_delimiter = ',',
        default_value = "84",
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
    /// TLS, SASL and passed-through librdkafka properties (KAFKA_SECURITY_PROTOCOL, ...).
    #[command(flatten)]
    pub kafka_security: SecurityArgs,

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
    /// Clock of the kernel stamps: auto (TAI where the kernel has bpf_ktime_get_tai_ns, Linux ≥
    /// 6.1), tai, or monotonic (CLOCK_MONOTONIC + an offset to TAI kept by userspace).
    #[arg(long, env = "MESHPROBE_KERNEL_CLOCK", value_name = "CLOCK", default_value = "auto", value_parser = crate::ebpf::parse_kernel_clock, help_heading = "Stamping")]
    pub kernel_clock: crate::ebpf::KernelClock,
    /// Egress stamps at the driver hand-off (tp_btf net_dev_start_xmit): auto (where the
    /// kernel allows it) or off (TC egress stamps).
    #[arg(long, env = "MESHPROBE_HANDOFF", value_name = "MODE", default_value = "auto", value_parser = crate::ebpf::parse_handoff, help_heading = "Stamping")]
    pub handoff: crate::ebpf::HandoffSetting,
    /// The host clock is synchronised to an external source (PTP): sets the S bit.
    #[arg(long, env = "MESHPROBE_CLOCK_SYNCHRONIZED", help_heading = "Stamping")]
    pub clock_synchronized: bool,
    /// NIC clocks are PTP-disciplined to TAI: use hardware RX stamps where present.
    #[arg(long, env = "MESHPROBE_HW_RX_STAMPS", help_heading = "Stamping")]
    pub hw_rx_stamps: bool,
    /// NIC clocks are PTP-disciplined to TAI and TX hardware timestamping is on: use the
    /// NIC's TX stamps for T1 and, through the reflector's follow-up, T3.
    #[arg(long, env = "MESHPROBE_HW_TX_STAMPS", help_heading = "Stamping")]
    pub hw_tx_stamps: bool,
    /// Kernel mode: do not ask for software RX stamps (T2/T4 then come from the TC hook, and
    /// received packets are no longer stamped host-wide on meshprobe's behalf).
    #[arg(long, env = "MESHPROBE_NO_SW_RX_STAMPS", help_heading = "Stamping")]
    pub no_sw_rx_stamps: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

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
