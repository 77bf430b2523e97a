//! The security part of every Kafka client meshprobe creates (the agent's producer, the
//! consumer of `consume` and `matrix`): TLS, SASL (PLAIN, SCRAM-SHA-256/512) and librdkafka
//! properties passed through as they are. Settings are checked once, at start-up, into a
//! [`Security`]; [`Security::apply`] is the one place that writes them into a `ClientConfig`.
//!
//! Precedence: each librdkafka property has one source. The properties meshprobe has a setting
//! for (`security.protocol`, `ssl.ca.location`, `sasl.username`, ...) or sets itself because
//! it depends on them ([`OWNED`]) cannot be passed through: that is a config error naming the
//! setting to use. Every other property may be passed through, `KAFKA_PROPERTY_*` over
//! `KAFKA_PROPERTIES_FILE`, and is applied last, so it overrides meshprobe's tuning defaults
//! (`linger.ms`, socket timeouts).
use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
};

use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
};

/// Environment prefix of passed-through properties: `KAFKA_PROPERTY_SOCKET_KEEPALIVE_ENABLE`
/// is `socket.keepalive.enable`.
pub const PROPERTY_PREFIX: &str = "KAFKA_PROPERTY_";

/// `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// No TLS, no authentication.
    #[default]
    #[value(name = "plaintext")]
    Plaintext,
    /// TLS (the broker's certificate is checked against KAFKA_SSL_CA_FILE).
    #[value(name = "ssl")]
    Ssl,
    /// SASL without TLS: records travel in clear text.
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    /// SASL over TLS.
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

/// `sasl.mechanism`: those librdkafka builds in with OpenSSL (no GSSAPI, no OAUTHBEARER).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    /// The password itself goes to the broker: use it with sasl_ssl only.
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The Kafka security settings of every subcommand that talks to Kafka (flattened into its
/// arguments). Secrets come from files only: no password on the command line or in the
/// environment.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Kafka security")]
pub struct SecurityArgs {
    /// TLS and/or SASL towards the brokers: plaintext, ssl, sasl_plaintext, sasl_ssl.
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_enum, ignore_case = true, default_value_t = Protocol::Plaintext)]
    pub kafka_security_protocol: Protocol,
    /// PEM file of the CA(s) the brokers' certificates are checked against [default: the
    /// system's CAs].
    #[arg(long, env = "KAFKA_SSL_CA_FILE", value_name = "FILE")]
    pub kafka_ssl_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (brokers that authenticate clients by certificate).
    #[arg(long, env = "KAFKA_SSL_CERT_FILE", value_name = "FILE")]
    pub kafka_ssl_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (unencrypted, or its password in
    /// KAFKA_PROPERTIES_FILE as ssl.key.password).
    #[arg(long, env = "KAFKA_SSL_KEY_FILE", value_name = "FILE")]
    pub kafka_ssl_key_file: Option<PathBuf>,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_enum, ignore_case = true)]
    pub kafka_sasl_mechanism: Option<Mechanism>,
    /// SASL user name.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// File holding the SASL password (one trailing newline is ignored), e.g. a mounted
    /// Secret.
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE", value_name = "FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// More librdkafka properties, `key=value` lines (`#` comments); KAFKA_PROPERTY_<NAME>
    /// variables (`_` for `.`) win over it.
    #[arg(long, env = "KAFKA_PROPERTIES_FILE", value_name = "FILE")]
    pub kafka_properties_file: Option<PathBuf>,
}

/// A setting that cannot work, named with its value and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{setting}={value:?}: {fix}")]
pub struct SecurityError {
    pub setting: String,
    pub value: String,
    pub fix: String,
}

fn invalid(setting: impl Into<String>, value: &str, fix: impl Into<String>) -> SecurityError {
    SecurityError {
        setting: setting.into(),
        value: value.to_string(),
        fix: fix.into(),
    }
}

/// Properties that cannot be passed through: the setting that owns each, or why meshprobe sets
/// it itself (librdkafka aliases included).
pub const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use KAFKA_BOOTSTRAP_SERVERS"),
    ("metadata.broker.list", "use KAFKA_BOOTSTRAP_SERVERS"),
    ("client.id", "use KAFKA_PRODUCER_GROUP"),
    ("compression.type", "use MESHPROBE_KAFKA_COMPRESSION"),
    ("compression.codec", "use MESHPROBE_KAFKA_COMPRESSION"),
    (
        "queue.buffering.max.messages",
        "use MESHPROBE_KAFKA_BUFFER_MESSAGES",
    ),
    (
        "queue.buffering.max.kbytes",
        "meshprobe derives it from MESHPROBE_KAFKA_BUFFER_MESSAGES",
    ),
    ("security.protocol", "use KAFKA_SECURITY_PROTOCOL"),
    ("ssl.ca.location", "use KAFKA_SSL_CA_FILE"),
    ("ssl.certificate.location", "use KAFKA_SSL_CERT_FILE"),
    ("ssl.key.location", "use KAFKA_SSL_KEY_FILE"),
    ("sasl.mechanism", "use KAFKA_SASL_MECHANISM"),
    ("sasl.mechanisms", "use KAFKA_SASL_MECHANISM"),
    ("sasl.username", "use KAFKA_SASL_USERNAME"),
    ("sasl.password", "use KAFKA_SASL_PASSWORD_FILE"),
    (
        "enable.idempotence",
        "meshprobe needs it on: records exactly once and in order per key",
    ),
    ("acks", "meshprobe needs acks=all (idempotence)"),
    (
        "request.required.acks",
        "meshprobe needs acks=all (idempotence)",
    ),
    (
        "message.timeout.ms",
        "meshprobe keeps records buffered while Kafka is away instead of expiring them",
    ),
    (
        "delivery.timeout.ms",
        "meshprobe keeps records buffered while Kafka is away instead of expiring them",
    ),
    (
        "statistics.interval.ms",
        "meshprobe_kafka_connected is derived from the statistics",
    ),
    (
        "transactional.id",
        "meshprobe's producer is idempotent, not transactional",
    ),
    (
        "group.id",
        "consume and matrix read every partition from the beginning, without a group",
    ),
    (
        "enable.auto.commit",
        "consume and matrix never commit offsets",
    ),
    (
        "enable.auto.offset.store",
        "consume and matrix never commit offsets",
    ),
    (
        "enable.partition.eof",
        "consume and matrix need it to find the end of the topic",
    ),
];

/// A property whose value is a secret: never taken from the environment, never logged.
fn is_secret(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key == "ssl.key.pem"
        || key == "sasl.oauthbearer.config"
}

/// Prints as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Sasl {
    mechanism: Mechanism,
    username: String,
    password: Secret,
}

/// A passed-through property: its value and where it came from (for errors).
#[derive(Clone, PartialEq, Eq)]
struct Passed {
    value: String,
    from: String,
}

impl fmt::Debug for Passed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} from {}", self.value, self.from)
    }
}

/// Checked security settings; `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    protocol: Protocol,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    sasl: Option<Sasl>,
    passthrough: BTreeMap<String, Passed>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let passthrough: BTreeMap<&str, String> = self
            .passthrough
            .iter()
            .map(|(k, p)| {
                let shown = if is_secret(k) {
                    format!("[redacted] from {}", p.from)
                } else {
                    format!("{p:?}")
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("Security")
            .field("protocol", &self.protocol)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("sasl", &self.sasl)
            .field("passthrough", &passthrough)
            .finish()
    }
}

/// Reads a file the settings name, or says which setting cannot be read.
fn read(setting: &str, path: &Path) -> Result<String, SecurityError> {
    std::fs::read_to_string(path).map_err(|e| {
        invalid(
            setting,
            &path.display().to_string(),
            format!("cannot read it ({e}); give a readable file"),
        )
    })
}

/// A readable PEM file (the content itself is checked by OpenSSL when the client starts).
fn pem_file(setting: &str, path: &Path, what: &str) -> Result<PathBuf, SecurityError> {
    if !read(setting, path)?.contains("-----BEGIN ") {
        return Err(invalid(
            setting,
            &path.display().to_string(),
            format!("not a PEM file; give the {what} in PEM (-----BEGIN ...)"),
        ));
    }
    Ok(path.to_path_buf())
}

/// `KAFKA_PROPERTY_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM` → `ssl.endpoint.identification.algorithm`.
pub fn property_of_env(name: &str) -> Option<String> {
    let rest = name.strip_prefix(PROPERTY_PREFIX)?;
    Some(rest.to_ascii_lowercase().replace('_', "."))
}

/// `key=value` lines; blank lines and `#`/`!` comments skipped, key and value trimmed.
fn properties_file(path: &Path) -> Result<Vec<(String, Passed)>, SecurityError> {
    let setting = "KAFKA_PROPERTIES_FILE";
    let text = read(setting, path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let from = format!("{setting} {} line {}", path.display(), n + 1);
        let Some((k, v)) = line.split_once('=') else {
            return Err(invalid(
                from,
                line,
                "expected key=value (librdkafka property names, e.g. socket.keepalive.enable=true)",
            ));
        };
        out.push((
            k.trim().to_string(),
            Passed {
                value: v.trim().to_string(),
                from,
            },
        ));
    }
    Ok(out)
}

impl Security {
    /// Checks the settings and reads the files they name (the password, the properties);
    /// `env` is the process environment (its `KAFKA_PROPERTY_*` variables are passed through).
    pub fn from_args(
        a: &SecurityArgs,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Security, SecurityError> {
        let protocol = a.kafka_security_protocol;
        let p = protocol.name();
        let tls_file = [
            ("KAFKA_SSL_CA_FILE", &a.kafka_ssl_ca_file),
            ("KAFKA_SSL_CERT_FILE", &a.kafka_ssl_cert_file),
            ("KAFKA_SSL_KEY_FILE", &a.kafka_ssl_key_file),
        ]
        .into_iter()
        .find_map(|(s, f)| f.as_ref().map(|f| (s, f)));
        if let Some((setting, f)) = tls_file
            && !protocol.tls()
        {
            return Err(invalid(
                setting,
                &f.display().to_string(),
                format!(
                    "set while KAFKA_SECURITY_PROTOCOL={p} (no TLS); set \
                     KAFKA_SECURITY_PROTOCOL=ssl or sasl_ssl, or unset {setting}"
                ),
            ));
        }
        let ca_file = a
            .kafka_ssl_ca_file
            .as_deref()
            .map(|f| pem_file("KAFKA_SSL_CA_FILE", f, "CA certificate(s)"))
            .transpose()?;
        let (cert_file, key_file) = match (&a.kafka_ssl_cert_file, &a.kafka_ssl_key_file) {
            (Some(c), Some(k)) => (
                Some(pem_file("KAFKA_SSL_CERT_FILE", c, "client certificate")?),
                Some(pem_file("KAFKA_SSL_KEY_FILE", k, "client private key")?),
            ),
            (None, None) => (None, None),
            (Some(c), None) => {
                return Err(invalid(
                    "KAFKA_SSL_CERT_FILE",
                    &c.display().to_string(),
                    "a client certificate needs its key: set KAFKA_SSL_KEY_FILE too",
                ));
            }
            (None, Some(k)) => {
                return Err(invalid(
                    "KAFKA_SSL_KEY_FILE",
                    &k.display().to_string(),
                    "a client key needs its certificate: set KAFKA_SSL_CERT_FILE too",
                ));
            }
        };
        let sasl = Self::sasl(a, protocol)?;
        let mut passthrough = BTreeMap::new();
        if let Some(f) = &a.kafka_properties_file {
            passthrough.extend(properties_file(f)?);
        }
        // Sorted: the first wrong variable reported is the same on every run.
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with(PROPERTY_PREFIX))
            .collect();
        vars.sort();
        for (name, value) in vars {
            let key = property_of_env(&name).expect("filtered by prefix");
            if is_secret(&key) {
                return Err(invalid(
                    name,
                    "[redacted]",
                    format!(
                        "{key} is a secret: never in the environment; put it in \
                         KAFKA_PROPERTIES_FILE (a mounted Secret)"
                    ),
                ));
            }
            passthrough.insert(key, Passed { value, from: name });
        }
        for (key, p) in &passthrough {
            if let Some((_, why)) = OWNED.iter().find(|(k, _)| *k == key) {
                let value = if is_secret(key) {
                    "[redacted]"
                } else {
                    &p.value
                };
                return Err(invalid(
                    p.from.clone(),
                    value,
                    format!("{key} cannot be passed through: {why}"),
                ));
            }
        }
        let s = Security {
            protocol,
            ca_file,
            cert_file,
            key_file,
            sasl,
            passthrough,
        };
        s.check_with_librdkafka()?;
        Ok(s)
    }

    fn sasl(a: &SecurityArgs, protocol: Protocol) -> Result<Option<Sasl>, SecurityError> {
        let p = protocol.name();
        if !protocol.sasl() {
            let set = [
                (
                    "KAFKA_SASL_MECHANISM",
                    a.kafka_sasl_mechanism.map(|m| m.name().to_string()),
                ),
                ("KAFKA_SASL_USERNAME", a.kafka_sasl_username.clone()),
                (
                    "KAFKA_SASL_PASSWORD_FILE",
                    a.kafka_sasl_password_file
                        .as_ref()
                        .map(|f| f.display().to_string()),
                ),
            ]
            .into_iter()
            .find_map(|(s, v)| v.map(|v| (s, v)));
            if let Some((setting, value)) = set {
                return Err(invalid(
                    setting,
                    &value,
                    format!(
                        "set while KAFKA_SECURITY_PROTOCOL={p} (no SASL); set \
                         KAFKA_SECURITY_PROTOCOL=sasl_ssl (or sasl_plaintext), or unset {setting}"
                    ),
                ));
            }
            return Ok(None);
        }
        let Some(mechanism) = a.kafka_sasl_mechanism else {
            return Err(invalid(
                "KAFKA_SASL_MECHANISM",
                "",
                format!(
                    "KAFKA_SECURITY_PROTOCOL={p} needs a mechanism: PLAIN, SCRAM-SHA-256 or \
                     SCRAM-SHA-512"
                ),
            ));
        };
        let username = a.kafka_sasl_username.clone().unwrap_or_default();
        if username.trim().is_empty() {
            return Err(invalid(
                "KAFKA_SASL_USERNAME",
                &username,
                format!("KAFKA_SECURITY_PROTOCOL={p} needs the SASL user name"),
            ));
        }
        let Some(pw_file) = &a.kafka_sasl_password_file else {
            return Err(invalid(
                "KAFKA_SASL_PASSWORD_FILE",
                "",
                format!(
                    "KAFKA_SECURITY_PROTOCOL={p} needs the file holding the SASL password \
                     (passwords are never taken from flags or the environment)"
                ),
            ));
        };
        let text = read("KAFKA_SASL_PASSWORD_FILE", pw_file)?;
        // `echo secret > file` and `kubectl create secret --from-file` differ by a newline.
        let password = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if password.is_empty() {
            return Err(invalid(
                "KAFKA_SASL_PASSWORD_FILE",
                &pw_file.display().to_string(),
                "the file is empty; it must hold the SASL password",
            ));
        }
        Ok(Some(Sasl {
            mechanism,
            username,
            password: Secret(password.to_string()),
        }))
    }

    /// Lets librdkafka check the property names and values (without connecting), so an unknown
    /// or wrong passed-through property is reported at start-up with the setting it came from.
    fn check_with_librdkafka(&self) -> Result<(), SecurityError> {
        let mut cfg = ClientConfig::new();
        self.apply(&mut cfg);
        match cfg.create_native_config() {
            Ok(_) => Ok(()),
            Err(KafkaError::ClientConfig(_, desc, key, value)) => {
                let from = self
                    .passthrough
                    .get(&key)
                    .map_or_else(|| key.clone(), |p| p.from.clone());
                let value = if is_secret(&key) {
                    "[redacted]"
                } else {
                    &value
                };
                Err(invalid(
                    from,
                    value,
                    format!("librdkafka refuses it: {desc}"),
                ))
            }
            Err(e) => Err(invalid("Kafka properties", "", e.to_string())),
        }
    }

    /// Writes the security properties and the passed-through ones into `cfg`; the passed-through
    /// ones last, so they override meshprobe's tuning defaults set before (never a property in
    /// [`OWNED`]: those are refused when the settings are read).
    pub fn apply(&self, cfg: &mut ClientConfig) {
        cfg.set("security.protocol", self.protocol.name());
        if let Some(f) = &self.ca_file {
            cfg.set("ssl.ca.location", f.display().to_string());
        }
        if let (Some(c), Some(k)) = (&self.cert_file, &self.key_file) {
            cfg.set("ssl.certificate.location", c.display().to_string())
                .set("ssl.key.location", k.display().to_string());
        }
        if let Some(s) = &self.sasl {
            cfg.set("sasl.mechanism", s.mechanism.name())
                .set("sasl.username", &s.username)
                .set("sasl.password", &s.password.0);
        }
        for (k, p) in &self.passthrough {
            cfg.set(k, &p.value);
        }
    }

    /// A warning worth logging at start-up: a password or records in clear text.
    pub fn warning(&self) -> Option<String> {
        match (&self.sasl, self.protocol) {
            (Some(s), Protocol::SaslPlaintext) if s.mechanism == Mechanism::Plain => Some(
                "KAFKA_SASL_MECHANISM=PLAIN with KAFKA_SECURITY_PROTOCOL=sasl_plaintext sends \
                 the password and the records in clear text; use sasl_ssl"
                    .into(),
            ),
            (Some(_), Protocol::SaslPlaintext) => Some(
                "KAFKA_SECURITY_PROTOCOL=sasl_plaintext: records travel in clear text; use \
                 sasl_ssl"
                    .into(),
            ),
            _ => None,
        }
    }

    /// What the client does, for the start-up log line (never a secret).
    pub fn describe(&self) -> String {
        let mut s = self.protocol.name().to_string();
        if let Some(sasl) = &self.sasl {
            s += &format!(" {} as {}", sasl.mechanism.name(), sasl.username);
        }
        if self.cert_file.is_some() {
            s += " with a client certificate";
        }
        if !self.passthrough.is_empty() {
            let keys: Vec<&str> = self.passthrough.keys().map(String::as_str).collect();
            s += &format!(" (passed through: {})", keys.join(", "));
        }
        s
    }
}

/// `reason`, with the settings to check when it is a TLS or SASL failure.
pub fn failure_hint(code: Option<RDKafkaErrorCode>, reason: &str) -> String {
    match code {
        Some(RDKafkaErrorCode::SSL) => format!(
            "TLS failed: {reason} (check KAFKA_SSL_CA_FILE, and that the broker's certificate \
             names the address in KAFKA_BOOTSTRAP_SERVERS)"
        ),
        Some(RDKafkaErrorCode::Authentication) => format!(
            "authentication failed: {reason} (check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME \
             and KAFKA_SASL_PASSWORD_FILE)"
        ),
        _ => reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s: SecurityArgs,
    }

    /// A directory with files for the settings, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "meshprobe-kafka-security-{name}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        fn file(&self, name: &str, text: &str) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn args(argv: &[&str]) -> SecurityArgs {
        Cli::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))
            .unwrap()
            .s
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn check(argv: &[&str], vars: &[(&str, &str)]) -> Result<Security, SecurityError> {
        Security::from_args(&args(argv), env(vars))
    }

    fn config_of(s: &Security) -> BTreeMap<String, String> {
        let mut cfg = ClientConfig::new();
        s.apply(&mut cfg);
        cfg.config_map()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plaintext_by_default() {
        let s = check(&[], &[]).unwrap();
        assert_eq!(s, Security::default());
        let c = config_of(&s);
        assert_eq!(c.get("security.protocol").unwrap(), "plaintext");
        assert_eq!(c.len(), 1, "{c:?}");
    }

    #[test]
    fn tls_and_scram_become_librdkafka_properties() {
        let d = Dir::new("scram");
        let ca = d.file("ca.pem", PEM);
        let pw = d.file("password", "s3cret\n");
        let s = check(
            &[
                "--kafka-security-protocol",
                "SASL_SSL",
                "--kafka-ssl-ca-file",
                &ca,
                "--kafka-sasl-mechanism",
                "scram-sha-512",
                "--kafka-sasl-username",
                "meshprobe",
                "--kafka-sasl-password-file",
                &pw,
            ],
            &[],
        )
        .unwrap();
        let c = config_of(&s);
        assert_eq!(c["security.protocol"], "sasl_ssl");
        assert_eq!(c["ssl.ca.location"], ca);
        assert_eq!(c["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(c["sasl.username"], "meshprobe");
        // config_map() hides the password; get() does not.
        let mut cfg = ClientConfig::new();
        s.apply(&mut cfg);
        assert_eq!(
            cfg.get("sasl.password"),
            Some("s3cret"),
            "one trailing newline dropped"
        );
        assert!(s.warning().is_none());
        assert_eq!(s.describe(), "sasl_ssl SCRAM-SHA-512 as meshprobe");
    }

    #[test]
    fn the_password_is_never_shown() {
        let d = Dir::new("redact");
        let pw = d.file("password", "hunter2");
        let props = d.file("p.properties", "ssl.key.password = keypass\n");
        let s = check(
            &[
                "--kafka-security-protocol=sasl_plaintext",
                "--kafka-sasl-mechanism=PLAIN",
                "--kafka-sasl-username=u",
                "--kafka-sasl-password-file",
                &pw,
                "--kafka-properties-file",
                &props,
            ],
            &[],
        )
        .unwrap();
        let shown = format!("{s:?} {} {:?}", s.describe(), s.warning());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("keypass"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(s.warning().unwrap().contains("clear text"));
        // rdkafka's own Debug of the config leaves the password out too.
        let mut cfg = ClientConfig::new();
        s.apply(&mut cfg);
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn passthrough_env_wins_over_the_file_and_over_defaults() {
        let d = Dir::new("pass");
        let props = d.file(
            "p.properties",
            "# comment\n\nsocket.keepalive.enable=true\nlinger.ms = 5\n! also a comment\n",
        );
        let s = check(
            &["--kafka-properties-file", &props],
            &[
                ("KAFKA_PROPERTY_LINGER_MS", "20"),
                (
                    "KAFKA_PROPERTY_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
                    "none",
                ),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        let mut cfg = ClientConfig::new();
        cfg.set("linger.ms", "50"); // a meshprobe default, set before apply
        s.apply(&mut cfg);
        assert_eq!(
            cfg.get("linger.ms"),
            Some("20"),
            "env over file over default"
        );
        assert_eq!(cfg.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(
            cfg.get("ssl.endpoint.identification.algorithm"),
            Some("none")
        );
        assert_eq!(
            property_of_env("KAFKA_PROPERTY_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM").unwrap(),
            "ssl.endpoint.identification.algorithm"
        );
    }

    /// The setting named by the error, and the whole message.
    fn err(argv: &[&str], vars: &[(&str, &str)]) -> (String, String) {
        let e = check(argv, vars).unwrap_err();
        (e.setting.clone(), e.to_string())
    }

    #[test]
    fn owned_properties_are_refused_with_the_setting_to_use() {
        for (var, setting_hint) in [
            ("KAFKA_PROPERTY_ENABLE_IDEMPOTENCE", "exactly once"),
            ("KAFKA_PROPERTY_ACKS", "acks=all"),
            (
                "KAFKA_PROPERTY_BOOTSTRAP_SERVERS",
                "KAFKA_BOOTSTRAP_SERVERS",
            ),
            (
                "KAFKA_PROPERTY_SECURITY_PROTOCOL",
                "KAFKA_SECURITY_PROTOCOL",
            ),
            ("KAFKA_PROPERTY_SSL_CA_LOCATION", "KAFKA_SSL_CA_FILE"),
            ("KAFKA_PROPERTY_MESSAGE_TIMEOUT_MS", "buffered"),
        ] {
            let (setting, msg) = err(&[], &[(var, "x")]);
            assert_eq!(setting, var);
            assert!(msg.contains(setting_hint), "{msg}");
        }
        let d = Dir::new("owned");
        let props = d.file("p.properties", "linger.ms=5\nsasl.password=pw\n");
        let (setting, msg) = err(&["--kafka-properties-file", &props], &[]);
        assert!(setting.ends_with("line 2"), "{setting}");
        assert!(msg.contains("KAFKA_SASL_PASSWORD_FILE"), "{msg}");
        assert!(!msg.contains("=\"pw\""), "{msg}");
    }

    #[test]
    fn secrets_are_refused_from_the_environment() {
        let (setting, msg) = err(&[], &[("KAFKA_PROPERTY_SSL_KEY_PASSWORD", "keypass")]);
        assert_eq!(setting, "KAFKA_PROPERTY_SSL_KEY_PASSWORD");
        assert!(
            msg.contains("KAFKA_PROPERTIES_FILE") && !msg.contains("keypass"),
            "{msg}"
        );
    }

    #[test]
    fn librdkafka_checks_passed_through_names_and_values() {
        let (setting, msg) = err(&[], &[("KAFKA_PROPERTY_NO_SUCH_THING", "1")]);
        assert_eq!(setting, "KAFKA_PROPERTY_NO_SUCH_THING");
        assert!(msg.contains("librdkafka refuses it"), "{msg}");
        let (setting, _) = err(&[], &[("KAFKA_PROPERTY_LINGER_MS", "soon")]);
        assert_eq!(setting, "KAFKA_PROPERTY_LINGER_MS");
        let d = Dir::new("badline");
        let props = d.file("p.properties", "linger.ms\n");
        let (setting, _) = err(&["--kafka-properties-file", &props], &[]);
        assert!(setting.starts_with("KAFKA_PROPERTIES_FILE"), "{setting}");
    }

    #[test]
    fn contradictions_name_the_setting() {
        let d = Dir::new("contra");
        let ca = d.file("ca.pem", PEM);
        let pw = d.file("password", "pw");
        let empty = d.file("empty", "\n");
        let not_pem = d.file("ca.der", "not a certificate");
        let missing = d.0.join("missing").display().to_string();
        let cases: &[(&[&str], &str)] = &[
            // TLS files without TLS.
            (&["--kafka-ssl-ca-file", &ca], "KAFKA_SSL_CA_FILE"),
            (
                &[
                    "--kafka-security-protocol=sasl_plaintext",
                    "--kafka-ssl-ca-file",
                    &ca,
                ],
                "KAFKA_SSL_CA_FILE",
            ),
            // SASL settings without SASL.
            (&["--kafka-sasl-mechanism=PLAIN"], "KAFKA_SASL_MECHANISM"),
            (
                &["--kafka-security-protocol=ssl", "--kafka-sasl-username=u"],
                "KAFKA_SASL_USERNAME",
            ),
            (
                &["--kafka-sasl-password-file", &pw],
                "KAFKA_SASL_PASSWORD_FILE",
            ),
            // SASL without what it needs.
            (
                &["--kafka-security-protocol=sasl_ssl"],
                "KAFKA_SASL_MECHANISM",
            ),
            (
                &[
                    "--kafka-security-protocol=sasl_ssl",
                    "--kafka-sasl-mechanism=SCRAM-SHA-256",
                ],
                "KAFKA_SASL_USERNAME",
            ),
            (
                &[
                    "--kafka-security-protocol=sasl_ssl",
                    "--kafka-sasl-mechanism=SCRAM-SHA-256",
                    "--kafka-sasl-username=u",
                ],
                "KAFKA_SASL_PASSWORD_FILE",
            ),
            (
                &[
                    "--kafka-security-protocol=sasl_ssl",
                    "--kafka-sasl-mechanism=SCRAM-SHA-256",
                    "--kafka-sasl-username=u",
                    "--kafka-sasl-password-file",
                    &empty,
                ],
                "KAFKA_SASL_PASSWORD_FILE",
            ),
            (
                &[
                    "--kafka-security-protocol=sasl_ssl",
                    "--kafka-sasl-mechanism=SCRAM-SHA-256",
                    "--kafka-sasl-username=u",
                    "--kafka-sasl-password-file",
                    &missing,
                ],
                "KAFKA_SASL_PASSWORD_FILE",
            ),
            // Unreadable or wrong files, half a client certificate.
            (
                &[
                    "--kafka-security-protocol=ssl",
                    "--kafka-ssl-ca-file",
                    &missing,
                ],
                "KAFKA_SSL_CA_FILE",
            ),
            (
                &[
                    "--kafka-security-protocol=ssl",
                    "--kafka-ssl-ca-file",
                    &not_pem,
                ],
                "KAFKA_SSL_CA_FILE",
            ),
            (
                &[
                    "--kafka-security-protocol=ssl",
                    "--kafka-ssl-cert-file",
                    &ca,
                ],
                "KAFKA_SSL_CERT_FILE",
            ),
            (
                &["--kafka-security-protocol=ssl", "--kafka-ssl-key-file", &ca],
                "KAFKA_SSL_KEY_FILE",
            ),
            (
                &["--kafka-properties-file", &missing],
                "KAFKA_PROPERTIES_FILE",
            ),
        ];
        for (argv, want) in cases {
            let (setting, msg) = err(argv, &[]);
            assert_eq!(&setting, want, "{argv:?}: {msg}");
        }
        // The message names the setting, the value and the fix.
        let (_, msg) = err(&["--kafka-ssl-ca-file", &ca], &[]);
        assert_eq!(
            msg,
            format!(
                "KAFKA_SSL_CA_FILE={ca:?}: set while KAFKA_SECURITY_PROTOCOL=plaintext (no TLS); \
                 set KAFKA_SECURITY_PROTOCOL=ssl or sasl_ssl, or unset KAFKA_SSL_CA_FILE"
            )
        );
        // A client certificate with its key is accepted.
        let s = check(
            &[
                "--kafka-security-protocol=ssl",
                "--kafka-ssl-cert-file",
                &ca,
                "--kafka-ssl-key-file",
                &ca,
            ],
            &[],
        )
        .unwrap();
        assert!(config_of(&s).contains_key("ssl.key.location"));
    }

    #[test]
    fn values_come_from_the_environment_too() {
        // clap's env names, parsed the same way (here through try_parse_from with env unset,
        // so only the declared names are checked).
        let cmd = <Cli as clap::CommandFactory>::command();
        let envs: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        for name in [
            "KAFKA_SECURITY_PROTOCOL",
            "KAFKA_SSL_CA_FILE",
            "KAFKA_SSL_CERT_FILE",
            "KAFKA_SSL_KEY_FILE",
            "KAFKA_SASL_MECHANISM",
            "KAFKA_SASL_USERNAME",
            "KAFKA_SASL_PASSWORD_FILE",
            "KAFKA_PROPERTIES_FILE",
        ] {
            assert!(envs.iter().any(|e| e == name), "{name} in {envs:?}");
        }
        assert!(
            !envs
                .iter()
                .any(|e| e.contains("PASSWORD") && !e.ends_with("_FILE")),
            "no password setting but from a file: {envs:?}"
        );
    }
}
