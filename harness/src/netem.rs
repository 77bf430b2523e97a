//! netem, the kernel's own delay qdisc: a second truth for added delay, independent of the
//! project's delay element. Some kernels are built without it (this machine's 6.18 is; Debian's
//! 6.1 has it), so adding it can come back empty.

use anyhow::{Context, Result};

use crate::netns::Netns;

/// A root `netem delay` qdisc on one interface; dropping it deletes the qdisc.
pub struct Netem<'a> {
    ns: &'a Netns,
    iface: String,
}

impl<'a> Netem<'a> {
    /// Holds every packet leaving `iface` for `delay_ns`. `Ok(Err(why))` when this kernel has
    /// no netem; an `Err` for any other failure.
    pub fn add(
        ns: &'a Netns,
        iface: &str,
        delay_ns: i64,
    ) -> Result<std::result::Result<Self, String>> {
        let delay = format!("{}us", delay_ns / 1_000);
        let out = ns.output([
            "tc", "qdisc", "add", "dev", iface, "root", "netem", "delay", &delay,
        ])?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if missing(&err) {
                return Ok(Err(format!("this kernel has no netem (`tc` said: {err})")));
            }
            anyhow::bail!("tc qdisc add dev {iface} root netem delay {delay}: {err}");
        }
        Ok(Ok(Netem {
            ns,
            iface: iface.to_owned(),
        }))
    }

    /// The qdisc as `tc` shows it, for the log.
    pub fn show(&self) -> Result<String> {
        let out = self.ns.run(["tc", "qdisc", "show", "dev", &self.iface])?;
        Ok(out
            .lines()
            .find(|l| l.contains("netem"))
            .context("the netem qdisc is gone")?
            .trim()
            .to_owned())
    }
}

/// What `tc` says when the kernel cannot make a netem qdisc (no module, not built).
fn missing(tc_stderr: &str) -> bool {
    [
        "Unknown qdisc",
        "unknown qdisc",
        "No such file or directory",
        "Specified qdisc kind is unknown",
    ]
    .iter()
    .any(|m| tc_stderr.contains(m))
}

impl Drop for Netem<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .output(["tc", "qdisc", "del", "dev", &self.iface, "root"]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kernel_without_netem_is_told_from_other_failures() {
        assert!(super::missing("Error: Specified qdisc kind is unknown."));
        assert!(super::missing(
            "RTNETLINK answers: No such file or directory"
        ));
        assert!(!super::missing("Cannot find device \"veth-x\""));
        assert!(!super::missing(
            "RTNETLINK answers: Operation not permitted"
        ));
    }
}
