//! Agent settings: flags, environment (the heartbeat agent's names are kept as they are) and an
//! optional TOML file; flag > environment > file > default. Validated before anything starts,
//! each concern by its own module, into a typed [`Config`].
mod admin;
mod args;
mod discovery;
mod file;
mod node;
mod output;
mod pinglist;
mod probing;
mod reflector;
mod stamp_auth;
mod stamping;

use std::time::Duration;

use tracing::warn;

pub use admin::{DEFAULT_WORST_PEERS, MAX_WORST_PEERS};
pub use args::{AdminListen, AgentArgs};
pub use file::{file_defaults, with_file_defaults};
pub use node::Node;

use crate::{cli::error::ConfigError, pinglist::Params};

/// Everything derived from the arguments, checked before anything is started; grouped by
/// concern like the modules that check it.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: Node,
    pub reflector: reflector::Settings,
    pub discovery: discovery::Settings,
    pub output: output::Settings,
    pub admin: admin::Settings,
    pub probing: probing::Settings,
    pub pinglist: Params,
    pub stamping: stamping::Settings,
    /// STAMP authenticated mode of the sender and the reflector, with their keys.
    pub stamp_auth: stamp_auth::Settings,
    /// At most this long from the stop signal to exit.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Validates `a` and derives the typed settings. The order of the checks is the order of
    /// the errors a wrong configuration gets.
    pub fn from_args(a: &AgentArgs) -> Result<Config, ConfigError> {
        a.validate()?;
        if let Some(w) = a.deprecation() {
            warn!("{w}");
        }
        let node = Node::from_args(a);
        let reflector = reflector::Settings::from_args(a);
        let static_peers = discovery::static_peers(a)?;
        let output = output::Settings::from_args(a)?;
        let stamp_auth = stamp_auth::Settings::from_args(a)?;
        let discovery =
            discovery::Settings::from_args(a, &node, reflector.listen.ip(), static_peers)?;
        Ok(Config {
            node,
            reflector,
            discovery,
            output,
            admin: admin::Settings::from_args(a),
            probing: probing::Settings::from_args(a),
            pinglist: a.pinglist_params(),
            stamping: stamping::Settings::from_args(a),
            stamp_auth,
            shutdown_grace: a.shutdown_grace,
        })
    }
}

impl AgentArgs {
    /// Checks every setting before anything is attached or connected, concern by concern;
    /// the first wrong setting is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        probing::validate(self)?;
        reflector::validate(self)?;
        discovery::validate(self)?;
        node::validate(self)?;
        admin::validate(self)?;
        output::validate(self)?;
        pinglist::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{probe::policy::Budget, sink::OutputFormat};
    use clap::{CommandFactory as _, FromArgMatches as _, Parser};

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
    fn kafka_security_settings_are_checked_with_kafka() {
        // Without Kafka nothing is read; with it the security settings name their error.
        let a = parse(&["t", "agent", "--kafka-sasl-mechanism", "PLAIN"]);
        Config::from_args(&a).unwrap();
        let a = parse(&[
            "t",
            "agent",
            "--kafka-bootstrap-servers",
            "198.18.0.1:9092",
            "--kafka-sasl-mechanism",
            "PLAIN",
        ]);
        let e = Config::from_args(&a).unwrap_err().to_string();
        assert!(e.starts_with("KAFKA_SASL_MECHANISM=\"PLAIN\""), "{e}");
        // A key of the TOML file like any other setting.
        let dir = std::env::temp_dir().join(format!("meshprobe-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("agent.toml");
        std::fs::write(&f, "KAFKA_SECURITY_PROTOCOL = \"sasl_ssl\"\n").unwrap();
        let a = parse(&[
            "t",
            "agent",
            "--config",
            f.to_str().unwrap(),
            "--kafka-bootstrap-servers",
            "198.18.0.1:9092",
        ]);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Config::from_args(&a).unwrap_err().to_string();
        assert!(
            e.contains("KAFKA_SECURITY_PROTOCOL=sasl_ssl needs a mechanism"),
            "{e}"
        );
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

    fn stamp_auth(args: &[&str]) -> Result<stamp_auth::Settings, ConfigError> {
        stamp_auth::Settings::from_args(&parse(args))
    }

    #[test]
    fn stamp_auth_settings_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "00112233445566778899aabbccddeeff\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "0011").unwrap();
        let (good, short) = (good.to_str().unwrap(), short.to_str().unwrap());

        let off = stamp_auth(&["t", "agent"]).unwrap();
        assert!(off.sender.ring().is_none() && off.reflector.ring().is_none());

        let e = stamp_auth(&["t", "agent", "--stamp-auth-reflector", "required"]).unwrap_err();
        assert!(e.to_string().starts_with("MESHPROBE_STAMP_KEY_FILE"), "{e}");
        let e = stamp_auth(&[
            "t",
            "agent",
            "--stamp-auth-sender",
            "optional",
            "--stamp-key-file",
            short,
        ])
        .unwrap_err();
        assert!(e.to_string().starts_with("MESHPROBE_STAMP_KEY_FILE"), "{e}");
        assert!(e.to_string().contains("holds 2 key octets"), "{e}");
        let e = stamp_auth(&[
            "t",
            "agent",
            "--stamp-auth-sender",
            "required",
            "--stamp-key-file",
            good,
            "--stamp-next-key-file",
            "/nonexistent/next",
        ])
        .unwrap_err();
        assert!(
            e.to_string().starts_with("MESHPROBE_STAMP_NEXT_KEY_FILE"),
            "{e}"
        );
        assert!(
            T::command()
                .try_get_matches_from(["t", "agent", "--stamp-auth-sender", "on"])
                .is_err()
        );

        let s = stamp_auth(&[
            "t",
            "agent",
            "--stamp-auth-sender",
            "optional",
            "--stamp-auth-reflector",
            "required",
            "--stamp-key-file",
            good,
        ])
        .unwrap();
        assert_eq!(
            (s.sender.mode, s.reflector.mode),
            (crate::auth::Mode::Optional, crate::auth::Mode::Required)
        );
        // One key ring for both roles.
        assert!(std::sync::Arc::ptr_eq(
            s.sender.ring().unwrap(),
            s.reflector.ring().unwrap()
        ));
    }
}
