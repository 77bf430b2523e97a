//! `meshprobe-lab`: the local cluster's command line. `cargo xtask mesh …` and `cargo xtask
//! demo` build the meshprobe binary, then run this with the same arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meshprobe_lab::{demo, supervisor};

#[derive(Parser)]
#[command(
    name = "meshprobe-lab",
    about = "A whole meshprobe cluster on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A 4-node mesh (ZooKeeper, Kafka, two zones, known delays) and its live heatmap; q or
    /// Ctrl-C tears it all down.
    Demo {
        /// Stop after this long (default: until q or Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Where to write the heatmap SVG at the end (relative: to the workspace root).
        #[arg(long, default_value = "target/meshprobe-demo.svg")]
        svg: PathBuf,
    },
    /// A lab cluster in the background: up, status, logs, matrix, chaos, down.
    Mesh {
        #[command(subcommand)]
        cmd: supervisor::MeshCmd,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Demo { duration, svg } => meshprobe_lab::built_meshprobe().and_then(|bin| {
            let svg = meshprobe_harness::meshprobe::workspace_root().join(svg);
            demo::run(&bin, &svg, duration)
        }),
        Command::Mesh { cmd } => supervisor::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nmeshprobe-lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
