//! Synthetic members in ZooKeeper, as a process: the `scale` bench's registrar (the harness cannot
//! link the product, whose layout the registrations follow; see `meshprobe_harness::zkreg`).
//!
//! `scale_members ZK ZONES RACKS PER_RACK v4|v6 JOIN_ZONE JOIN_RACK`, run inside the namespace
//! to connect from. Registers ZONES × RACKS × PER_RACK members (`meshprobe_harness::synthetic`)
//! and prints `{"type":"ready","members":N,"seconds":S}`. SIGUSR1: the joiner (the next
//! address, in JOIN_ZONE / JOIN_RACK) registers and `{"type":"joined","node_id":..,
//! "address":..,"ctime_ms":..}` is printed; SIGUSR2: it leaves (`{"type":"left",..}`).
//! SIGTERM or SIGINT: every member leaves (the session closes) and the process exits.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use meshprobe_harness::synthetic::{self, Shape};
use meshprobe_harness::topo::Family;
use meshprobe_harness::zkreg::{Registrar, SyntheticMember};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [zk, zones, racks, per_rack, family, join_zone, join_rack] = &args[..] else {
        bail!("usage: scale_members ZK ZONES RACKS PER_RACK v4|v6 JOIN_ZONE JOIN_RACK");
    };
    let shape = Shape {
        zones: zones.parse().context("ZONES")?,
        racks: racks.parse().context("RACKS")?,
        per_rack: per_rack.parse().context("PER_RACK")?,
    };
    synthetic::check_shape(Shape {
        per_rack: shape.per_rack + 1,
        ..shape
    })?;
    let family = match family.as_str() {
        "v4" => Family::V4,
        "v6" => Family::V6,
        f => bail!("family {f:?}: v4 or v6"),
    };
    let joiner = SyntheticMember {
        node_id: "syn-joiner".into(),
        zone: join_zone.clone(),
        rack: join_rack.clone(),
        addr: synthetic::address(shape.members(), family),
        port: meshprobe_harness::STAMP_PORT,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (mut usr1, mut usr2) = (
            signal(SignalKind::user_defined1())?,
            signal(SignalKind::user_defined2())?,
        );
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let t = Instant::now();
        let mut reg = Registrar::start_here(
            zk,
            Arc::new(support::ProductLayout::default_paths()),
            synthetic::members(shape, family),
        )?;
        println!(
            "{}",
            json!({"type": "ready", "members": reg.len(), "seconds": t.elapsed().as_secs_f64()})
        );
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    let r = reg.add(joiner.clone())?;
                    println!("{}", json!({"type": "joined", "node_id": joiner.node_id,
                        "address": joiner.addr.to_string(), "ctime_ms": r.ctime_ms}));
                }
                _ = usr2.recv() => {
                    reg.remove(&joiner.node_id)?;
                    println!("{}", json!({"type": "left", "node_id": joiner.node_id}));
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        drop(reg);
        anyhow::Ok(())
    })
}
