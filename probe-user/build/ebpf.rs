//! Builds a BPF crate of this workspace from the current source with the nightly toolchain
//! (aya-build) into OUT_DIR, one object per binary of the crate: never a stale or committed
//! object.
use anyhow::{Context as _, anyhow};

pub fn build(package: &str) -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == package)
        .ok_or_else(|| anyhow!("{package} package not found"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", pkg.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF object failed: run `cargo xtask setup` (nightly, rust-src, bpf-linker)",
    )
}
