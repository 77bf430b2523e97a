//! Scenario 7: the pinglist function simulated over whole clusters. No namespaces: every
//! member's list is computed by `meshprobe::pinglist::sim` (through the probe-user example
//! `pinglist_sim`, so the bench does not link the agent's library), then degree, coverage of nodes
//! and zone pairs, and the entries changed cluster-wide by one join and one leave (every list
//! recomputed after the event).

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::report::{ScenarioReport, Table};
use crate::scenario::{Ctx, progress};

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    // (members, events): each event recomputes every list; 50 000 members cost ~N² hashes.
    let sizes: Vec<(usize, usize)> = ctx.pick(
        vec![(1_000, 2), (10_000, 1)],
        vec![(1_000, 3), (10_000, 3), (50_000, 1)],
    );
    rep.method(
        "`meshprobe::pinglist::sim` through `cargo build --release -p probe-user --example \
         pinglist_sim`, run as `pinglist_sim N --events E --json`: default settings (full mesh up to 128, rack 20, \
         k = 2, m = 3, cap 128)",
    );
    rep.method(
        "topologies: 50 zones × N/50 (no racks; racks of 20, or N/200 when smaller), 30 zones with Zipf sizes \
         (∝ 1/rank, at least 2), one zone with racks of 20, no labels",
    );
    rep.method(
        "every member's list computed; in-degree = probers of a node; a zone pair is covered \
         by the node pairs (a in A probes b in B); churn = entries added + removed over all \
         lists (the joiner's whole list counts as added, the leaver's as removed) after one \
         join (a copy of an existing member's place) or one leave, every list recomputed",
    );
    rep.method(
        "select µs = CPU time of one list on a prepared Index (thread CPU clock); one select = \
         `pinglist::select` from scratch (Index built for it), wall, best of 3",
    );
    let bin = crate::scenario::build_example("probe-user", "pinglist_sim")?;
    let mut rows: Vec<(usize, Value)> = Vec::new();
    for &(n, events) in &sizes {
        progress(format!(
            "pinglist: simulating {n} members ({events} join(s)/leave(s))"
        ));
        let out = Command::new(&bin)
            .args([n.to_string(), "--events".into(), events.to_string()])
            .arg("--json")
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!("{} {n} failed ({})", bin.display(), out.status);
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(line).context("pinglist_sim output")?;
            rows.push((n, v));
        }
    }

    let f = |v: &Value, k: &str| v["figures"][k].as_f64().unwrap_or(f64::NAN);
    let u = |v: &Value, k: &str| v["figures"][k].as_u64().unwrap_or(u64::MAX);
    for &(n, events) in &sizes {
        let mut t = Table::new(
            &format!("{n} members ({events} join(s) and leave(s) per topology)"),
            &[
                "topology",
                "zones",
                "out max / mean",
                "in min / mean",
                "nodes < m probers",
                "nodes probed from 1 zone",
                "zone pairs < k / all",
                "lists trimmed",
                "join max / mean",
                "leave max / mean",
                "select (CPU)",
                "one select",
                "all lists",
            ],
        );
        for (_, v) in rows.iter().filter(|(m, _)| *m == n) {
            let c = &v["figures"];
            t.row([
                v["cluster"].as_str().unwrap_or("?").to_string(),
                u(v, "zones").to_string(),
                format!("{} / {:.1}", u(v, "out_max"), f(v, "out_mean")),
                format!("{} / {:.1}", u(v, "in_min"), f(v, "in_mean")),
                u(v, "under_min_probers").to_string(),
                u(v, "probed_from_one_zone").to_string(),
                format!("{} / {}", u(v, "zone_pairs_under_k"), u(v, "zone_pairs")),
                u(v, "trimmed_lists").to_string(),
                format!(
                    "{} / {:.0}",
                    c["join"]["max"],
                    c["join"]["mean"].as_f64().unwrap_or(0.0)
                ),
                format!(
                    "{} / {:.0}",
                    c["leave"]["max"],
                    c["leave"]["mean"].as_f64().unwrap_or(0.0)
                ),
                format!("{:.0} µs", f(v, "select_us")),
                format!("{:.1} ms", f(v, "select_one_ms")),
                format!("{:.1} s", f(v, "all_lists_s")),
            ]);
        }
        rep.tables.push(t);
    }

    // The goals as the simulation states them (its params and churn goal), so the numbers
    // live in one place.
    let Some((_, first)) = rows.first() else {
        bail!("pinglist_sim printed nothing");
    };
    let goal_of = |v: &Value| v.as_u64().context("pinglist_sim output: a goal is missing");
    let max_peers = goal_of(&first["params"]["max_peers"])?;
    let min_probers = goal_of(&first["params"]["min_probers"])?;
    let churn = goal_of(&first["churn_goal"])?;
    let all = |k: &'static str| rows.iter().map(move |(_, v)| u(v, k));
    let worst = |k: &str| {
        rows.iter()
            .map(|(_, v)| v["figures"][k]["max"].as_u64().unwrap_or(u64::MAX))
            .max()
            .unwrap_or(u64::MAX)
    };
    let where_ = |bad: &dyn Fn(&Value) -> bool| {
        let w: Vec<String> = rows
            .iter()
            .filter(|(_, v)| bad(v))
            .map(|(n, v)| {
                format!(
                    "{n} {}: {}",
                    v["cluster"].as_str().unwrap_or("?"),
                    v["violations"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                )
            })
            .collect();
        Some(w.join("; "))
    };
    let out_max = all("out_max").max().unwrap_or(u64::MAX);
    rep.goal(
        "peers per agent",
        &format!("≤ {max_peers}"),
        format!("max {out_max}"),
        out_max <= max_peers,
        where_(&|v| u(v, "out_max") > max_peers),
    );
    let in_min = all("in_min").min().unwrap_or(0);
    rep.goal(
        "probers per node",
        &format!("≥ {min_probers}"),
        format!("min {in_min}"),
        in_min >= min_probers,
        where_(&|v| u(v, "in_min") < min_probers),
    );
    let one_zone: u64 = all("probed_from_one_zone").sum();
    rep.goal(
        "nodes probed from fewer than 2 zones (2 zones or more)",
        "0",
        one_zone.to_string(),
        one_zone == 0,
        where_(&|v| u(v, "probed_from_one_zone") > 0),
    );
    let pairs: u64 = all("zone_pairs_under_k").sum();
    rep.goal(
        "zone pairs with fewer than k probed node pairs",
        "0",
        pairs.to_string(),
        pairs == 0,
        where_(&|v| u(v, "zone_pairs_under_k") > 0),
    );
    for (what, key) in [
        ("entries changed by one join", "join"),
        ("entries changed by one leave", "leave"),
    ] {
        let w = worst(key);
        rep.goal(
            what,
            &format!("≤ {churn}"),
            format!("max {w}"),
            w <= churn,
            where_(&|v| v["figures"][key]["max"].as_u64().unwrap_or(u64::MAX) > churn),
        );
    }
    rep.note(
        "Crossing the full-mesh threshold (129 → 130 members by default) changes every list \
         once: below it everyone probes everyone; the churn goal is about clusters past it.",
    );
    rep.data = json!({
        "sizes": sizes.iter().map(|(n, e)| json!({"members": n, "events": e})).collect::<Vec<_>>(),
        "runs": rows.iter().map(|(n, v)| json!({"members": n, "run": v})).collect::<Vec<_>>(),
    });
    Ok(())
}
