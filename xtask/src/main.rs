//! meshprobe developer tasks. `cargo xtask <command>` (alias in .cargo/config.toml).
//! Each command lives in its own module; this file only parses and dispatches. The lab
//! (`mesh`, `demo`) and the bench are products of their own crates: xtask sets up and builds,
//! then hands over to their binaries ([`handover`]), so it depends on no heavy crate and
//! compiles in seconds on a fresh machine, before `setup` installs anything.

mod build;
mod build_ebpf;
mod chart;
mod guest;
mod handover;
mod lint;
mod setup;
mod test;
mod util;
mod venv;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "meshprobe developer tasks"
)]
struct Cli {
    /// Also echo the quiet checks that `setup` runs.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (apt packages, nightly + rust-src, bpf-linker); idempotent.
    Setup,
    /// Build the BPF object (nightly, bpfel-unknown-none) and print its path and size.
    BuildEbpf,
    /// Setup, then build the release binaries target/release/meshprobe, meshprobe-delay and
    /// meshprobe-tracer.
    Build,
    /// rustfmt check, clippy -D warnings on the workspace, clippy on the eBPF crate.
    Lint,
    /// What CI runs: setup, build, lint, unit tests, root integration tests, then the guest
    /// set on Debian's 6.1 kernel. With `--kernel NAME`: setup, build and only the guest set.
    Test {
        /// Boot this kernel in a VM (virtme-ng; KVM if usable, else TCG) and run the guest set
        /// of root integration tests there: debian-6.1, debian-5.10.
        #[arg(long, value_name = "NAME")]
        kernel: Option<String>,
    },
    /// Helm chart tests (charts/meshprobe): lint, render, schema, Kubernetes schemas; in a
    /// cached venv with the pinned helm-python-sdk and kubernetes-validate.
    Chart,
    /// Setup, build, then a 4-node mesh (ZooKeeper, Kafka, two zones, known delays) and its
    /// live heatmap; q or Ctrl-C tears it all down. (`meshprobe-lab demo`: `--help` there.)
    #[command(disable_help_flag = true)]
    Demo {
        /// `--duration DUR` (default: until q or Ctrl-C), `--svg PATH`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup (plus the bench tools), build, then the benchmarks in network namespaces; a
    /// markdown report on stdout and JSON in a file. Never fails for a slow machine.
    /// (`meshprobe-bench`: `--help` there.)
    #[command(disable_help_flag = true)]
    Bench {
        /// `--scenario NAME` (repeatable), `--quick`, `--json PATH`, `--list`, `--no-build`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A whole meshprobe cluster on this machine: up, status, logs, matrix, chaos, down.
    /// (`meshprobe-lab mesh`: `--help` there.)
    #[command(disable_help_flag = true)]
    Mesh {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::set_verbose(cli.verbose);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let ws = util::Workspace::discover()?;
    match command {
        Command::Setup => setup::run(&ws),
        Command::BuildEbpf => build_ebpf::run(&ws),
        Command::Build => build::run(&ws).map(|_| ()),
        Command::Lint => lint::run(&ws),
        Command::Test { kernel } => test::run(&ws, kernel.as_deref()),
        Command::Chart => chart::run(&ws),
        Command::Demo { args } => handover::demo(&ws, &args),
        Command::Mesh { args } => handover::mesh(&ws, &args),
        Command::Bench { args } => handover::bench(&ws, &args),
    }
}
