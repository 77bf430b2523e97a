//! Where records go: stdout (table, JSON lines or nothing) and Kafka.
use super::AgentArgs;
use crate::{
    cli::error::ConfigError,
    kafka_security::Security,
    sink::{self, KafkaOptions, OutputFormat},
};

/// The output settings, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub format: OutputFormat,
    pub kafka: Option<KafkaOptions>,
    /// Also one Kafka record per probe.
    pub kafka_probes: bool,
}

impl Settings {
    /// The Kafka options are checked by the sink itself and the security settings by
    /// [`Security`] (each names the setting).
    pub(super) fn from_args(a: &AgentArgs) -> Result<Settings, ConfigError> {
        let kafka = match &a.kafka_bootstrap_servers {
            None => None,
            Some(b) => Some(KafkaOptions {
                brokers: b.trim().to_string(),
                topic: a.kafka_topic.clone(),
                client_id: a.kafka_producer_group.clone(),
                compression: a.kafka_compression.clone(),
                buffer_messages: a.kafka_buffer_messages,
                conn_timeout: a.conn_timeout,
                // Reads the files it names (password, properties) once, here.
                security: Security::from_args(&a.kafka_security, std::env::vars_os())
                    .map_err(ConfigError::named)?,
            }),
        };
        if let Some(k) = &kafka {
            sink::validate(k).map_err(ConfigError::named)?;
        }
        Ok(Settings {
            format: a.output(),
            kafka,
            kafka_probes: a.kafka_probes,
        })
    }
}

/// Kafka: a buffer, bootstrap servers when asked to send probes, and not an empty list.
pub(super) fn validate(a: &AgentArgs) -> Result<(), ConfigError> {
    if a.kafka_buffer_messages == 0 {
        return Err(ConfigError::new(
            "MESHPROBE_KAFKA_BUFFER_MESSAGES (--kafka-buffer-messages)",
            "0 would drop every record while the broker is away",
            "e.g. 100000",
        ));
    }
    if a.kafka_probes && a.kafka_bootstrap_servers.is_none() {
        return Err(ConfigError::new(
            "MESHPROBE_KAFKA_PROBES (--kafka-probes)",
            "set without KAFKA_BOOTSTRAP_SERVERS",
            "set KAFKA_BOOTSTRAP_SERVERS or drop the option",
        ));
    }
    if a.kafka_bootstrap_servers
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return Err(ConfigError::new(
            "KAFKA_BOOTSTRAP_SERVERS (--kafka-bootstrap-servers)",
            "empty",
            "give host:port[,host:port], or unset it to print to stdout",
        ));
    }
    Ok(())
}

impl AgentArgs {
    /// stdout output: given, else table without Kafka and none with it.
    pub fn output(&self) -> OutputFormat {
        self.output
            .unwrap_or(if self.kafka_bootstrap_servers.is_some() {
                OutputFormat::None
            } else {
                OutputFormat::Table
            })
    }
}
