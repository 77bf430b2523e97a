//! A whole meshprobe cluster on one machine: a [`Star`] of namespaces, ZooKeeper and the
//! Kafka-protocol broker in its core namespace, one `meshprobe agent` per node (discovering
//! through ZooKeeper, streaming to the broker), and shaped links ([`links`]): per-pair added
//! RTT from the delay element, loss and partitions from nftables.
//!
//! `cargo xtask mesh` and `cargo xtask demo` run it; the mesh tests use it in-process. Every
//! part is a guard: dropping a [`Lab`] stops the agents, the delay elements, the broker
//! and ZooKeeper, then deletes the namespaces.

pub mod chaos;
pub mod data;
pub mod demo;
pub mod links;
pub mod spec;
pub mod supervisor;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use meshprobe_harness::agent::{AgentConfig, Cluster, HEARTBEAT_PATH, TEST_TOPIC};
use meshprobe_harness::star::Star;

pub use data::{Obs, Windows};
pub use links::Links;
pub use spec::{LabSpec, Shape, node_name};

/// A running lab. Field order is drop order: links (delay elements) first, then the cluster
/// (agents, broker, ZooKeeper, namespaces).
pub struct Lab {
    pub links: Links,
    pub cluster: Cluster,
    pub spec: LabSpec,
}

impl Lab {
    /// Builds the lab of `spec` and waits until every agent is ready. `Ok(None)` (after a
    /// printed reason) when a prerequisite is missing: root, java/ZooKeeper, tansu, the
    /// meshprobe binary.
    pub fn up(spec: LabSpec) -> Result<Option<Lab>> {
        let Some(cluster) = Cluster::acquire("lab", spec.nodes, spec.family, true, true)? else {
            return Ok(None);
        };
        let mut ml = Lab {
            links: Links::default(),
            cluster,
            spec,
        };
        let bin = ml.cluster.bin().to_path_buf();
        ml.links
            .apply_all(&bin, &ml.cluster.star, &ml.spec)
            .context("shaping the links")?;
        for i in 0..ml.spec.nodes {
            ml.start_agent(i)?;
        }
        Ok(Some(ml))
    }

    pub fn star(&self) -> &Star {
        &self.cluster.star
    }

    pub fn bin(&self) -> &Path {
        self.cluster.bin()
    }

    /// Node `i`'s agent settings: the harness's (ZooKeeper, broker, node address) plus the
    /// lab's zone, window and interval; probe lines are not kept in memory (a lab may run for
    /// hours; the summaries are what it reads).
    pub fn agent_config(&self, i: usize) -> AgentConfig {
        let mut c = self
            .cluster
            .config(i)
            .env(
                "MESHPROBE_WINDOW",
                humantime::format_duration(self.spec.window),
            )
            .env(
                "MESHPROBE_INTERVAL",
                humantime::format_duration(self.spec.interval),
            )
            .env(
                "MESHPROBE_PEER_GRACE",
                humantime::format_duration(self.spec.window),
            );
        if !self.spec.zones[i].is_empty() {
            c = c.env("MESHPROBE_ZONE", &self.spec.zones[i]);
        }
        c.drop_probe_lines = true;
        c
    }

    /// Starts node `i`'s agent and waits for its ready line.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let cfg = self.agent_config(i);
        self.cluster
            .start_agent_with(i, &cfg)
            .with_context(|| format!("starting {}'s agent", node_name(i)))?;
        Ok(())
    }

    /// SIGKILLs node `i`'s agent (no deregistration, no flush) and forgets it.
    pub fn kill9_agent(&mut self, i: usize) -> Result<()> {
        let mut a = self
            .cluster
            .agents
            .remove(&i)
            .ok_or_else(|| anyhow!("{} runs no agent", node_name(i)))?;
        a.kill9()?;
        Ok(())
    }

    /// Sets the shape of pair `(a, b)` and applies it (restarts the two delay elements).
    pub fn set_link(&mut self, a: usize, b: usize, s: Shape) -> Result<()> {
        if a == b || a >= self.spec.nodes || b >= self.spec.nodes {
            bail!("no link {}-{}", node_name(a), node_name(b));
        }
        let old = self.spec.shape(a, b);
        self.spec.set(a, b, s);
        let bin = self.bin().to_path_buf();
        if old.rtt != s.rtt {
            self.links
                .apply_node(&bin, &self.cluster.star, &self.spec, a)?;
            self.links
                .apply_node(&bin, &self.cluster.star, &self.spec, b)?;
        }
        if old.loss_pct != s.loss_pct {
            self.links.apply_nft(&self.cluster.star, &self.spec)?;
        }
        Ok(())
    }

    /// Cuts node `i` off from everything (peers, ZooKeeper, broker), or reconnects it.
    pub fn partition(&mut self, i: usize, on: bool) -> Result<()> {
        self.links.partition(&self.cluster.star, &self.spec, i, on)
    }

    /// Every window summary in the topic (`meshprobe consume --kind summary`).
    pub fn kafka_summaries(&self) -> Result<Vec<Value>> {
        self.cluster.consume(&["--kind", "summary"])
    }

    /// [`Lab::kafka_summaries`] indexed by pair and window.
    pub fn kafka_windows(&self) -> Result<Windows> {
        Ok(Windows::from_json(&self.kafka_summaries()?))
    }

    /// Per partition of the topic: (partition, records, next offset), read to its end
    /// (`meshprobe consume --offsets`).
    pub fn topic_offsets(&self) -> Result<Vec<(i64, u64, i64)>> {
        let lines = self.cluster.consume(&["--offsets"])?;
        let v = lines
            .iter()
            .find(|v| v["type"] == "offsets")
            .context("meshprobe consume --offsets printed no offsets line")?;
        Ok(v["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["partition"].as_i64().unwrap_or(-1),
                    p["records"].as_u64().unwrap_or(0),
                    p["next_offset"].as_i64().unwrap_or(0),
                )
            })
            .collect())
    }

    /// Node ids registered in ZooKeeper now.
    pub fn zk_members(&self) -> Result<Vec<String>> {
        let mut v = self.cluster.zk().ls(HEARTBEAT_PATH)?;
        v.sort();
        Ok(v)
    }

    /// The window in progress now.
    pub fn window_now(&self) -> u64 {
        meshprobe_harness::agent::window_now_of(self.spec.window)
    }

    /// Waits until the window in progress is `seq` or later.
    pub fn wait_window(&self, seq: u64) {
        while self.window_now() < seq {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every ordered pair of running agents printed a summary with replies in a
    /// window `>= min_seq`.
    pub fn wait_all_measured(&mut self, min_seq: u64, timeout: Duration) -> Result<()> {
        let agents: Vec<usize> = self.cluster.agents.keys().copied().collect();
        self.cluster.wait_pairs_measured(&agents, min_seq, timeout)
    }

    /// The lab's `meshprobe matrix --expected` file.
    pub fn write_expected(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.spec.expected_csv())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// `host:port` of the broker, reachable from the core namespace (and the nodes).
    pub fn bootstrap(&self) -> String {
        self.cluster.kafka().bootstrap()
    }

    pub fn topic(&self) -> &'static str {
        TEST_TOPIC
    }

    /// Checks the lab's own processes (agents, delay elements) still run.
    pub fn check(&mut self) -> Result<()> {
        self.links.check()?;
        for (i, a) in &mut self.cluster.agents {
            if !a.is_running() {
                bail!("{}'s agent exited:\n{}", node_name(*i), a.stderr_tail(30));
            }
        }
        Ok(())
    }

    /// Stops the agents (SIGTERM, they deregister and flush) and the delay elements; the rest
    /// goes on drop.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<()> {
        let r = self.cluster.stop_agents(timeout);
        self.links.clear(&self.cluster.star);
        r
    }
}

/// The meshprobe binary the lab runs: `MESHPROBE_BIN` (set by `cargo xtask mesh up` and
/// `cargo xtask demo`, which build it first), else the workspace's release build.
pub fn built_meshprobe() -> Result<std::path::PathBuf> {
    meshprobe_harness::meshprobe::find_binary()?
        .context("no meshprobe binary: run `cargo xtask build` (or set MESHPROBE_BIN)")
}
