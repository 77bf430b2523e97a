//! Shaping the lab's links from its core namespace: one `meshprobe-delay` per node on the
//! node's bridge port (ingress, so it holds what the node sends, per destination), and one
//! nftables `bridge` table for loss and partitions. Both live in the core namespace, so
//! deleting it removes them; [`Links`] also removes them on drop.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use meshprobe_harness::child::ChildGuard;
use meshprobe_harness::meshprobe::READY_TIMEOUT;
use meshprobe_harness::star::Star;
use meshprobe_harness::topo::Family;

use crate::spec::LabSpec;

/// The nftables table (bridge family) in the core namespace.
pub const NFT_TABLE: &str = "meshprobe_lab";

#[derive(Default)]
pub struct Links {
    delays: BTreeMap<usize, ChildGuard>,
    /// Nodes cut off from everything (bridge ports dropping all frames).
    partitioned: Vec<usize>,
    nft_loaded: bool,
}

impl Links {
    /// Applies every pair of `spec` (delay elements and loss).
    pub fn apply_all(&mut self, bin: &std::path::Path, mesh: &Star, spec: &LabSpec) -> Result<()> {
        for i in mesh.node_indices() {
            self.apply_node(bin, mesh, spec, i)?;
        }
        self.apply_nft(mesh, spec)
    }

    /// (Re)starts node `i`'s delay element with its per-destination holds from `spec` (none
    /// when all of its pairs have zero delay).
    pub fn apply_node(
        &mut self,
        bin: &std::path::Path,
        mesh: &Star,
        spec: &LabSpec,
        i: usize,
    ) -> Result<()> {
        if let Some(mut old) = self.delays.remove(&i) {
            old.stop()
                .with_context(|| format!("stopping node{i}'s delay element"))?;
        }
        let delay_bin = meshprobe_harness::meshprobe::delay_binary(bin)?;
        let mut argv: Vec<String> = vec![
            delay_bin
                .to_str()
                .context("meshprobe-delay path is not UTF-8")?
                .into(),
            "-I".into(),
            mesh.core_if(i),
            "--ingress".into(),
            "--json".into(),
        ];
        let mut any = false;
        for j in mesh.node_indices() {
            let rtt = spec.shape(i, j).rtt;
            if i == j || rtt.is_zero() {
                continue;
            }
            // Half of the pair's added RTT each way.
            let half = format!("{}ns", rtt.as_nanos() / 2);
            for f in [Family::V4, Family::V6] {
                argv.push("--to".into());
                argv.push(format!("{}={half}", mesh.node_ip(j, f)));
            }
            any = true;
        }
        if !any {
            return Ok(());
        }
        let mut g = mesh.core().spawn(&argv)?;
        g.wait_ready_either(READY_TIMEOUT, |v| v["type"] == "ready", "ready")
            .with_context(|| format!("node{i}'s delay element did not become ready"))?;
        self.delays.insert(i, g);
        Ok(())
    }

    /// Cuts node `i` off (`on`) or reconnects it: every frame to or from its bridge port is
    /// dropped, ZooKeeper and the broker included.
    pub fn partition(&mut self, mesh: &Star, spec: &LabSpec, i: usize, on: bool) -> Result<()> {
        self.partitioned.retain(|&p| p != i);
        if on {
            self.partitioned.push(i);
        }
        self.apply_nft(mesh, spec)
    }

    /// Replaces the nftables table with the loss rules of `spec` and the partitions.
    pub fn apply_nft(&mut self, mesh: &Star, spec: &LabSpec) -> Result<()> {
        let t = NFT_TABLE;
        let mut s = String::new();
        // `add` then `delete` so a missing table is not an error.
        let _ = writeln!(s, "add table bridge {t}\ndelete table bridge {t}");
        let mut fwd = String::new();
        let mut inp = String::new();
        let mut out = String::new();
        for (&(a, b), shape) in &spec.links {
            if shape.loss_pct <= 0.0 {
                continue;
            }
            // numgen over 10000 for 0.01 % steps.
            let thresh = (shape.loss_pct * 100.0).round() as u32;
            let _ = writeln!(
                fwd,
                "    iifname \"{}\" oifname \"{}\" meta l4proto udp numgen random mod 10000 < {thresh} counter drop comment \"loss node{a}->node{b}\"",
                mesh.core_if(a),
                mesh.core_if(b)
            );
        }
        for &p in &self.partitioned {
            let port = mesh.core_if(p);
            let _ = writeln!(
                fwd,
                "    iifname \"{port}\" counter drop comment \"partition node{p}\""
            );
            let _ = writeln!(
                fwd,
                "    oifname \"{port}\" counter drop comment \"partition node{p}\""
            );
            let _ = writeln!(
                inp,
                "    iifname \"{port}\" counter drop comment \"partition node{p}\""
            );
            let _ = writeln!(
                out,
                "    oifname \"{port}\" counter drop comment \"partition node{p}\""
            );
        }
        if fwd.is_empty() && inp.is_empty() && out.is_empty() {
            if self.nft_loaded {
                nft_script(mesh, &s)?;
                self.nft_loaded = false;
            }
            return Ok(());
        }
        let _ = writeln!(s, "table bridge {t} {{");
        for (name, hook, body) in [
            ("forward", "forward", fwd),
            ("input", "input", inp),
            ("output", "output", out),
        ] {
            let _ = writeln!(
                s,
                "  chain {name} {{\n    type filter hook {hook} priority 0; policy accept;\n{body}  }}"
            );
        }
        s.push_str("}\n");
        nft_script(mesh, &s)?;
        self.nft_loaded = true;
        Ok(())
    }

    /// Packets dropped so far by the loss rule of pair `(a, b)` (a < b), if there is one.
    pub fn loss_dropped(&self, mesh: &Star, a: usize, b: usize) -> Result<Option<u64>> {
        Ok(self.loss_rule(mesh, a, b)?.map(|(_, packets)| packets))
    }

    /// Stops the loss rule of pair `(a, b)` (a < b) from dropping, then returns what it dropped
    /// in all: read after it stopped, the count is final. A rule accepting the pair's packets
    /// goes in front of it (in one nft transaction); the next [`Links::apply_nft`] removes
    /// both. `None` without such a rule.
    pub fn stop_loss(&self, mesh: &Star, a: usize, b: usize) -> Result<Option<u64>> {
        let Some((handle, _)) = self.loss_rule(mesh, a, b)? else {
            return Ok(None);
        };
        let script = format!(
            "insert rule bridge {NFT_TABLE} forward position {handle} iifname \"{}\" oifname \"{}\" meta l4proto udp accept comment \"loss node{a}->node{b} stopped\"\n",
            mesh.core_if(a),
            mesh.core_if(b)
        );
        nft_script(mesh, &script)?;
        self.loss_dropped(mesh, a, b)
    }

    /// Handle and packet counter of the loss rule of pair `(a, b)`, if there is one.
    fn loss_rule(&self, mesh: &Star, a: usize, b: usize) -> Result<Option<(u64, u64)>> {
        if !self.nft_loaded {
            return Ok(None);
        }
        let text = mesh
            .core()
            .run(["nft", "-j", "-a", "list", "table", "bridge", NFT_TABLE])?;
        let v: Value = serde_json::from_str(&text).context("nft -j output")?;
        let want = format!("loss node{a}->node{b}");
        for item in v["nftables"].as_array().into_iter().flatten() {
            let rule = &item["rule"];
            if rule["comment"].as_str() != Some(want.as_str()) {
                continue;
            }
            let handle = rule["handle"]
                .as_u64()
                .context("nft rule without a handle")?;
            for e in rule["expr"].as_array().into_iter().flatten() {
                if let Some(p) = e["counter"]["packets"].as_u64() {
                    return Ok(Some((handle, p)));
                }
            }
        }
        Ok(None)
    }

    /// Nodes whose delay element is running.
    pub fn delayed_nodes(&self) -> Vec<usize> {
        self.delays.keys().copied().collect()
    }

    pub fn partitioned(&self) -> &[usize] {
        &self.partitioned
    }

    /// Stops every delay element (they detach their programs) and deletes the nft table.
    pub fn clear(&mut self, mesh: &Star) {
        for (_, mut g) in std::mem::take(&mut self.delays) {
            let _ = g.stop();
        }
        if self.nft_loaded {
            let _ = mesh
                .core()
                .output(["nft", "delete", "table", "bridge", NFT_TABLE]);
            self.nft_loaded = false;
        }
    }

    /// Checks that every delay element still runs.
    pub fn check(&mut self) -> Result<()> {
        for (i, g) in &mut self.delays {
            if !g.is_running() {
                bail!("node{i}'s delay element exited:\n{}", g.stderr_text());
            }
        }
        Ok(())
    }
}

fn nft_script(mesh: &Star, script: &str) -> Result<()> {
    let path = std::env::temp_dir().join(format!("{}-lab.nft", mesh.core().name()));
    std::fs::write(&path, script)?;
    let res = mesh.core().run(["nft", "-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    res.with_context(|| format!("loading nftables rules:\n{script}"))?;
    Ok(())
}
