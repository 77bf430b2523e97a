//! Random loss with nftables (`numgen random`) in a forwarding namespace.

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::netns::Netns;

/// An `inet` table with a forward-chain rule dropping `percent` % of matching packets at random,
/// with a counter. Dropping it deletes the table.
pub struct NftLoss<'a> {
    ns: &'a Netns,
    table: String,
}

impl<'a> NftLoss<'a> {
    pub const TABLE: &'static str = "meshprobe_test";

    /// Installs `<matches> numgen random mod 100 < percent counter drop` in a forward chain.
    /// `matches` selects the packets, e.g. `meta l4proto udp` (both directions) or
    /// `meta l4proto udp udp dport 862` (requests only).
    pub fn install(ns: &'a Netns, matches: &str, percent: u32) -> Result<NftLoss<'a>> {
        let table = Self::TABLE.to_string();
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} forward_loss {{ type filter hook forward priority 0; policy accept; }}\n\
             add rule inet {table} forward_loss {matches} numgen random mod 100 < {percent} counter drop\n"
        );
        let path = std::env::temp_dir().join(format!("{}-nft.rules", ns.name()));
        std::fs::write(&path, script)?;
        let res = ns.run(["nft", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        res.context("installing nft loss rule")?;
        Ok(NftLoss { ns, table })
    }

    /// Packets the drop rule's counter has counted.
    pub fn dropped_packets(&self) -> Result<u64> {
        let out = self
            .ns
            .run(["nft", "-j", "list", "table", "inet", &self.table])?;
        let v: Value = serde_json::from_str(&out)?;
        for item in v["nftables"]
            .as_array()
            .ok_or_else(|| anyhow!("nft -j: no nftables"))?
        {
            if let Some(exprs) = item["rule"]["expr"].as_array() {
                for e in exprs {
                    if let Some(p) = e["counter"]["packets"].as_u64() {
                        return Ok(p);
                    }
                }
            }
        }
        Err(anyhow!("no counter in nft table {}: {out}", self.table))
    }
}

impl Drop for NftLoss<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .output(["nft", "delete", "table", "inet", &self.table]);
    }
}
