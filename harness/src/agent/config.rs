//! How an agent is started: its environment and flags.

use super::*;

/// Every setting name of CONTRACT.md's table that is read from the environment: removed from
/// the agent's environment unless the test sets it, so the caller's shell cannot leak into a
/// test.
pub const AGENT_ENV_NAMES: &[&str] = &[
    "MESHPROBE_CONFIG",
    "MESHPROBE_NODE_ID",
    "MESHPROBE_ZONE",
    "MESHPROBE_RACK",
    "SERVERS_ZK",
    "ROOT_PATH_ZK",
    "HEART_BEAT_NODE_PATH",
    "CONN_TIMEOUT",
    "ZK_SASL_USERNAME",
    "ZK_SASL_PASSWORD_FILE",
    "ZK_WORLD_READ",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPIC",
    "KAFKA_PRODUCER_GROUP",
    "REGISTER_PUBLIC_DNS",
    "REGISTER_PUBLIC_PORT",
    "REGISTER_LISTENER_DNS",
    "REGISTER_LISTENER_PORT",
    "MESHPROBE_PEERS",
    "MESHPROBE_PEERS_FILE",
    "MESHPROBE_INTERVAL",
    "MESHPROBE_JITTER",
    "MESHPROBE_TIMEOUT",
    "MESHPROBE_SIZES",
    "MESHPROBE_WINDOW",
    "MESHPROBE_PEER_GRACE",
    "MESHPROBE_PEER_NETWORKS",
    "MESHPROBE_PEER_PORTS",
    "MESHPROBE_MAX_MEMBERS",
    "MESHPROBE_OUTPUT",
    "MESHPROBE_KAFKA_PROBES",
    "MESHPROBE_KAFKA_BUFFER_MESSAGES",
    "MESHPROBE_KAFKA_COMPRESSION",
    "MESHPROBE_ADMIN_LISTEN",
    "MESHPROBE_METRICS_PEER_LIMIT",
    "MESHPROBE_METRICS_WORST_PEERS",
    "MESHPROBE_SHUTDOWN_GRACE",
    "MESHPROBE_INTERFACES",
    "MESHPROBE_REFLECT_ALLOW",
    "MESHPROBE_REFLECT_BUDGET_PER_SOURCE",
    "MESHPROBE_REFLECT_BUDGET_TOTAL",
    "MESHPROBE_REFLECT_ALLOW_EPHEMERAL_PORT",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SSL_CA_FILE",
    "KAFKA_SSL_CERT_FILE",
    "KAFKA_SSL_KEY_FILE",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_PROPERTIES_FILE",
];

/// Removes every setting of [`AGENT_ENV_NAMES`] and every passed-through Kafka property
/// (`KAFKA_PROPERTY_*`) the caller's environment has from `cmd`'s.
pub fn remove_agent_env(cmd: &mut std::process::Command) {
    for k in AGENT_ENV_NAMES {
        cmd.env_remove(k);
    }
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KAFKA_PROPERTY_") {
            cmd.env_remove(k);
        }
    }
}

/// How to start an agent: environment variables and extra flags on top of
/// `meshprobe agent --output json`.
#[derive(Clone, Debug, Default)]
pub struct AgentConfig {
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    /// Do not keep `{"type":"probe"}` lines (long-running labs: memory stays flat).
    pub drop_probe_lines: bool,
    /// Run in the agent's process after it entered its namespace, right before exec (the
    /// agent is then exec'd directly, not through `ip netns exec`).
    pub pre_exec: Option<PreExec>,
}

/// A hook run between fork and exec: only async-signal-safe calls (no allocation, no locks).
#[derive(Clone)]
pub struct PreExec(pub Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>);

impl std::fmt::Debug for PreExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreExec(..)")
    }
}

impl AgentConfig {
    pub fn new() -> AgentConfig {
        AgentConfig::default()
    }

    /// Sets an environment variable (a setting by its environment name).
    pub fn env(mut self, key: &str, value: impl ToString) -> AgentConfig {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Removes an environment variable set before.
    pub fn unset(mut self, key: &str) -> AgentConfig {
        self.env.remove(key);
        self
    }

    /// Sets the [`AgentConfig::pre_exec`] hook.
    pub fn pre_exec(mut self, hook: PreExec) -> AgentConfig {
        self.pre_exec = Some(hook);
        self
    }

    /// Appends command-line arguments.
    pub fn arg<S: ToString>(mut self, args: impl IntoIterator<Item = S>) -> AgentConfig {
        self.args.extend(args.into_iter().map(|s| s.to_string()));
        self
    }
}
