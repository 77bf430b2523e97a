//! The errors every subcommand shares: a bad setting is exit code 2.

/// A setting that cannot work, with its names and the fix: exit code 2, whichever subcommand
/// found it.
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
    pub fn new(
        setting: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            setting: setting.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// An error from a module that already names the setting and says what is wrong.
    pub fn named(e: impl std::fmt::Display) -> Self {
        Self::new(e.to_string(), "", "")
    }
}
