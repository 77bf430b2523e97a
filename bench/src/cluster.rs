//! What the bench does inside the hosts' namespaces that is not meshprobe's: the ZooKeeper
//! server's creation time of a znode (discovery's clock) and `ip -batch` for many addresses.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use meshprobe_harness::netns::Netns;

/// The creation time (`ctime`, ms since the epoch, ZooKeeper server's clock) of the znode
/// `path`, asked from inside `ns` with a client of ZooKeeper at `connect`.
pub fn znode_ctime_ms(ns: &Netns, connect: &str, path: &str) -> Result<i64> {
    let cs = connect.to_string();
    let p = path.to_string();
    ns.enter(move || -> Result<i64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = tokio::time::timeout(
                Duration::from_secs(10),
                zookeeper_client::Client::connector()
                    .with_session_timeout(Duration::from_secs(5))
                    .connect(&cs),
            )
            .await
            .map_err(|_| anyhow!("connecting to ZooKeeper {cs} timed out"))?
            .with_context(|| format!("connecting to ZooKeeper {cs}"))?;
            let (_, stat) = tokio::time::timeout(Duration::from_secs(10), client.get_data(&p))
                .await
                .map_err(|_| anyhow!("get_data {p} timed out"))?
                .map_err(|e| anyhow!("get_data {p}: {e}"))?;
            Ok(stat.ctime)
        })
    })?
}

/// Runs `ip -batch FILE` in `ns` with `lines` (one `ip` command each, without the leading
/// `ip`), for many addresses or routes at once.
pub fn ip_batch(ns: &Netns, lines: &[String], scratch: &Path) -> Result<()> {
    let file = scratch.join("ip.batch");
    std::fs::write(&file, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", file.display()))?;
    let f = file.to_string_lossy().into_owned();
    ns.run(["ip", "-batch", &f])?;
    Ok(())
}
