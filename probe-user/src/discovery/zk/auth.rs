//! Who we are to ZooKeeper: SASL DIGEST-MD5 credentials (a user name, a password read from a
//! file), checked at start-up, and the one place that builds the connector with them.
//!
//! The password is read from its file at every new session, so a rotated Kubernetes Secret is
//! picked up without a restart, and it is never logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zookeeper_client::{self as zk, SaslOptions};

use super::super::DiscoveryError;

pub const USERNAME_SETTING: &str = "ZK_SASL_USERNAME";
pub const PASSWORD_FILE_SETTING: &str = "ZK_SASL_PASSWORD_FILE";

/// SASL DIGEST-MD5 credentials for ZooKeeper. Every agent of a cluster uses the same identity:
/// the znodes are writable by that identity only (see `access`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkAuth {
    /// ZK_SASL_USERNAME: a user of the server's JAAS `Server` section.
    pub username: String,
    /// ZK_SASL_PASSWORD_FILE: the file holding the password (one trailing newline ignored).
    pub password_file: PathBuf,
    /// ZK_WORLD_READ: anyone may read our znodes (list the members); else the agents only.
    pub world_read: bool,
}

impl ZkAuth {
    /// What to tell an operator about our identity (never the password).
    pub fn describe(&self) -> String {
        format!(
            "{USERNAME_SETTING}={:?}, password from {PASSWORD_FILE_SETTING}={}",
            self.username,
            self.password_file.display()
        )
    }
}

/// Checks the user name and that the password file is readable and not empty.
pub fn validate(auth: &ZkAuth) -> Result<(), DiscoveryError> {
    let name = &auth.username;
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
    {
        return Err(DiscoveryError::Setting {
            setting: USERNAME_SETTING,
            value: name.clone(),
            reason: "must be a non-empty user name without spaces or ':' (the user of the \
                     ZooKeeper server's JAAS Server section, user_<name>=...)"
                .into(),
        });
    }
    read_password(&auth.password_file).map(drop)
}

/// The password in `path`, without its trailing newline (`echo pw > file` writes one).
fn read_password(path: &Path) -> Result<String, DiscoveryError> {
    let bad = |reason: String| DiscoveryError::Setting {
        setting: PASSWORD_FILE_SETTING,
        value: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(format!(
            "cannot read the ZooKeeper password file: {e} (mount the Secret there, readable by \
             the agent)"
        ))
    })?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(bad("the ZooKeeper password file is empty".into()));
    }
    Ok(password.to_string())
}

/// The connector of every session: our session timeout, one pass over the servers per attempt
/// (our loop owns the backoff) and, with credentials, SASL DIGEST-MD5 (the password file is
/// read now). Never print the connector: its Debug form shows the password.
pub fn connector(
    session_timeout: Duration,
    auth: Option<&ZkAuth>,
) -> Result<zk::Connector, DiscoveryError> {
    let c = zk::Client::connector()
        .with_session_timeout(session_timeout)
        .with_fail_eagerly();
    let Some(auth) = auth else {
        return Ok(c);
    };
    let password = read_password(&auth.password_file)?;
    Ok(c.with_sasl(SaslOptions::digest_md5(auth.username.clone(), password)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(dir: &Path, name: &str, password: Option<&str>) -> ZkAuth {
        let file = dir.join("password");
        if let Some(p) = password {
            std::fs::write(&file, p).unwrap();
        }
        ZkAuth {
            username: name.into(),
            password_file: file,
            world_read: false,
        }
    }

    fn setting_of(e: DiscoveryError) -> &'static str {
        match e {
            DiscoveryError::Setting { setting, .. } => setting,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn password_file_trailing_newline_is_not_part_of_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), "agent", Some("s3cret\n"));
        validate(&a).unwrap();
        assert_eq!(read_password(&a.password_file).unwrap(), "s3cret");
        connector(Duration::from_secs(4), Some(&a)).unwrap();
    }

    #[test]
    fn bad_credentials_name_the_setting_and_never_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let e = validate(&auth(dir.path(), "agent", None)).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        assert_eq!(setting_of(e), PASSWORD_FILE_SETTING);
        let e = validate(&auth(dir.path(), "agent", Some("\n"))).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert_eq!(setting_of(e), PASSWORD_FILE_SETTING);
        for name in ["", "a b", "a:b"] {
            let e = validate(&auth(dir.path(), name, Some("pw-xyz"))).unwrap_err();
            assert_eq!(setting_of(e), USERNAME_SETTING, "{name:?}");
        }
        let a = auth(dir.path(), "agent", Some("pw-xyz"));
        assert!(!a.describe().contains("pw-xyz"));
    }
}
