//! The optional TOML file (--config): its keys become defaults of the `agent` subcommand.
use std::path::PathBuf;

use crate::cli::error::ConfigError;

/// Reads the TOML file and returns (flag id, value) pairs for the keys it sets.
/// Keys: environment names (SERVERS_ZK) or flag names (servers-zk / servers_zk).
pub fn file_defaults(
    path: &std::path::Path,
    cmd: &clap::Command,
) -> Result<Vec<(String, String)>, ConfigError> {
    let setting = format!("MESHPROBE_CONFIG ({})", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            &setting,
            format!("cannot read it: {e}"),
            "give a readable TOML file",
        )
    })?;
    let table: toml::Table = text.parse().map_err(|e| {
        ConfigError::new(&setting, format!("not valid TOML: {e}"), "fix the syntax")
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let norm = key.replace('_', "-").to_ascii_lowercase();
        let arg = cmd.get_arguments().find(|a| {
            a.get_long() == Some(norm.as_str())
                || a.get_env().and_then(|e| e.to_str()) == Some(key.as_str())
        });
        let Some(arg) = arg else {
            return Err(ConfigError::new(
                &setting,
                format!("unknown key `{key}`"),
                "use the environment names listed by `meshprobe agent --help`",
            ));
        };
        if arg.get_id() == "config" {
            return Err(ConfigError::new(
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
                return Err(ConfigError::new(
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
