//! The kernels the guest runner boots: Debian's own packages, fetched once with apt into the
//! xtask cache (`<cache>/kernels/<name>/`) and unpacked there. A cached kernel is used as it is,
//! with no network; delete its directory to fetch the newest build of the series again.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, Workspace};

/// A kernel series users run, as Debian packages it.
#[derive(Debug)]
pub struct Kernel {
    /// What `cargo xtask test --kernel NAME` takes.
    pub name: &'static str,
    /// Debian suite whose `main` has the package.
    pub suite: &'static str,
    /// The package is `linux-image-<series>-<abi>-amd64-unsigned`; the highest ABI is taken.
    pub series: &'static str,
    /// Who runs this series (for `--help` and the README).
    pub who: &'static str,
    /// Test binaries of the guest set this kernel cannot run, and why (said loudly).
    pub cannot_run: &'static [(&'static str, &'static str)],
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "debian-6.1",
        suite: "bookworm",
        series: "6.1.0",
        who: "Debian 12 and many managed Kubernetes node images",
        cannot_run: &[],
    },
    Kernel {
        name: "debian-5.10",
        suite: "bullseye",
        series: "5.10.0",
        who: "Debian 11; older than the TAI clock helper (6.1)",
        cannot_run: &[
            ("delay", "the delay element needs bpf_loop (Linux 5.17)"),
            (
                "agent_mesh",
                "its delays come from the delay element, which needs bpf_loop (5.17)",
            ),
            (
                "trace_reference",
                "the tracer reads bpf_ktime_get_tai_ns (Linux 6.1)",
            ),
        ],
    },
];

/// The kernel named `name`, or an error listing the names there are.
pub fn find(name: &str) -> Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        let names: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
        format!("no guest kernel `{name}`; known: {}", names.join(", "))
    })
}

/// An unpacked kernel package.
pub struct Unpacked {
    /// `linux-image-…_<version>_amd64.deb`
    pub package: String,
    /// `uname -r` of the guest (`6.1.0-54-amd64`).
    pub release: String,
    /// The kernel image; its modules are at `<root>/lib/modules/<release>`, where virtme-ng
    /// finds them.
    pub vmlinuz: PathBuf,
}

/// The cached kernel, fetched and unpacked first when it is not there yet.
pub fn fetch(ws: &Workspace, k: &Kernel) -> Result<Unpacked> {
    let dir = util::cache_dir()?.join("kernels").join(k.name);
    let root = dir.join("root");
    if let Some(u) = unpacked(&dir, &root)? {
        println!(
            "[guest] kernel {} = {} (cached in {})",
            k.name,
            u.package,
            dir.display()
        );
        return Ok(u);
    }
    println!(
        "[guest] kernel {}: fetching from Debian {}...",
        k.name, k.suite
    );
    let apt = Apt::new(
        &util::cache_dir()?
            .join("kernels")
            .join(format!("apt-{}", k.suite)),
        k,
    )?;
    util::run(apt.command(ws, "apt-get").arg("update"))
        .with_context(|| format!("apt-get update for Debian {}", k.suite))?;
    let package = newest_package(&apt, ws, k)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    util::run(
        apt.command(ws, "apt-get")
            .current_dir(&dir)
            .args(["download", &package]),
    )?;
    let deb = debs(&dir)?.into_iter().next().with_context(|| {
        format!(
            "apt-get download {package} left no .deb in {}",
            dir.display()
        )
    })?;
    // Unpacked beside the .deb; the marker is written last, so a broken unpack is redone.
    util::run(ws.command("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::write(
        dir.join(MARKER),
        deb.file_name().unwrap().to_string_lossy().as_bytes(),
    )?;
    unpacked(&dir, &root)?.with_context(|| format!("{} holds no kernel image", deb.display()))
}

/// Written after a complete unpack: the package's file name.
const MARKER: &str = "UNPACKED";

fn unpacked(dir: &Path, root: &Path) -> Result<Option<Unpacked>> {
    let Ok(package) = std::fs::read_to_string(dir.join(MARKER)) else {
        return Ok(None);
    };
    let Ok(entries) = std::fs::read_dir(root.join("boot")) else {
        return Ok(None);
    };
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-")
            && root.join("lib/modules").join(release).is_dir()
        {
            return Ok(Some(Unpacked {
                package: package.trim().to_owned(),
                release: release.to_owned(),
                vmlinuz: root.join("boot").join(&name),
            }));
        }
    }
    Ok(None)
}

fn debs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            v.push(p);
        }
    }
    Ok(v)
}

/// `linux-image-<series>-<abi>-amd64-unsigned` with the highest ABI the suite has.
fn newest_package(apt: &Apt, ws: &Workspace, k: &Kernel) -> Result<String> {
    let pattern = format!(
        "^linux-image-{}-[0-9]+-amd64-unsigned$",
        k.series.replace('.', r"\.")
    );
    let out =
        util::probe_stdout(
            apt.command(ws, "apt-cache")
                .args(["search", "--names-only", &pattern]),
        )
        .context("apt-cache search failed")?;
    let names = out.lines().filter_map(|l| l.split_whitespace().next());
    newest_of(names, k.series)
        .with_context(|| format!("Debian {} has no package matching {pattern}", k.suite))
}

/// The name with the highest ABI number among `linux-image-<series>-<abi>-amd64-unsigned`.
fn newest_of<'a>(names: impl Iterator<Item = &'a str>, series: &str) -> Option<String> {
    let prefix = format!("linux-image-{series}-");
    names
        .filter_map(|n| {
            let abi = n.strip_prefix(&prefix)?.strip_suffix("-amd64-unsigned")?;
            Some((abi.parse::<u32>().ok()?, n))
        })
        .max()
        .map(|(_, n)| n.to_owned())
}

/// apt with a private source list, lists and cache: the host's apt configuration is neither
/// read nor changed. Packages are checked against Debian's archive keyring.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path, k: &Kernel) -> Result<Self> {
        const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
        if !Path::new(KEYRING).is_file() {
            bail!("{KEYRING} is missing (Debian: apt-get install debian-archive-keyring)");
        }
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let sources = dir.join("sources.list");
        std::fs::write(
            &sources,
            format!(
                "deb [signed-by={KEYRING}] http://deb.debian.org/debian {} main\n",
                k.suite
            ),
        )?;
        let d = |p: &str| dir.join(p).display().to_string();
        Ok(Self {
            options: vec![
                format!("Dir::Etc::SourceList={}", sources.display()),
                format!("Dir::Etc::SourceParts={}", d("sources.list.d")),
                format!("Dir::State::Lists={}", d("lists")),
                format!("Dir::Cache={}", d("cache")),
                // Root downloads into directories the _apt user cannot read: say so, not warn.
                "APT::Sandbox::User=root".into(),
            ],
        })
    }

    fn command(&self, ws: &Workspace, program: &str) -> std::process::Command {
        let mut c = ws.command(program);
        for o in &self.options {
            c.args(["-o", o]);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_abi_of_the_series_is_taken() {
        let names = [
            "linux-image-6.1.0-47-amd64-unsigned",
            "linux-image-6.1.0-54-amd64-unsigned",
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.1.0-60-cloud-amd64-unsigned",
            "linux-image-6.1.0-61-rt-amd64-unsigned",
            "linux-image-6.12.0-70-amd64-unsigned",
        ];
        assert_eq!(
            newest_of(names.into_iter(), "6.1.0").as_deref(),
            Some("linux-image-6.1.0-54-amd64-unsigned")
        );
        assert_eq!(newest_of(names.into_iter(), "5.10.0"), None);
    }

    #[test]
    fn names_are_unique_and_found() {
        let names: std::collections::BTreeSet<_> = KERNELS.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), KERNELS.len());
        for k in KERNELS {
            assert_eq!(find(k.name).unwrap().series, k.series);
        }
        assert!(
            find("debian-4.19")
                .unwrap_err()
                .to_string()
                .contains("debian-6.1")
        );
    }
}
