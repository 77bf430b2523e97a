//! `meshprobe agent`: the per-node daemon, started in four steps (the shape of linkerd2-proxy's
//! `linkerd/app`):
//!
//! 1. [`config`]: flags, environment and file, validated by concern into a typed [`Config`];
//! 2. [`build`]: everything fallible (admin port, TC programs, metrics, Kafka producer, the
//!    reflector's socket) into an [`App`], before anything runs;
//! 3. [`spawn`]: the tasks (reflector, discovery, pinglist, admin, prober), each in a tracing
//!    span named for it;
//! 4. [`drain`]: on SIGINT/SIGTERM deregister, let probes in flight finish, flush Kafka and
//!    detach the programs, all within the shutdown grace.
pub mod admin;
mod build;
pub mod config;
mod dedicated;
mod drain;
pub mod metrics;
pub mod pinglist;
pub mod prober;
mod spawn;

use anyhow::Result;
use tokio::sync::watch;

pub use build::App;
pub use config::{AgentArgs, Config};
pub use spawn::Running;

/// Runs the agent until `stop` (SIGINT/SIGTERM). A `ConfigError` (exit code 2) comes back
/// before anything is attached.
pub async fn run(args: AgentArgs, stop: watch::Receiver<bool>) -> Result<()> {
    let config = Config::from_args(&args)?;
    let app = config.build().await?;
    let running = app.spawn()?;
    running.drain(stop).await
}
