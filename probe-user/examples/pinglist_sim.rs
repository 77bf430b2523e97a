//! The pinglist simulation ([`meshprobe::pinglist::sim`]) over the standard topologies, for
//! `cargo xtask bench --scenario pinglist` and by hand:
//!
//! ```sh
//! cargo run --release -p probe-user --example pinglist_sim -- 1000 10000 [--events 2] [--json]
//! ```
//!
//! Prints one line per (size, topology): a table, or with `--json` one JSON object per line
//! (`{"cluster":..,"params":..,"churn_goal":..,"figures":..,"violations":[..]}`).
use anyhow::{Context, Result, bail};
use meshprobe::pinglist::{Params, sim};

fn main() -> Result<()> {
    let mut sizes = Vec::new();
    let mut events = 2;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--events" => {
                events = args
                    .next()
                    .context("--events needs a number")?
                    .parse()
                    .context("--events")?
            }
            n => sizes.push(n.parse::<usize>().with_context(|| format!("size {n:?}"))?),
        }
    }
    if sizes.is_empty() {
        bail!("usage: pinglist_sim SIZE... [--events N] [--json]");
    }
    let params = Params::default();
    params.validate()?;
    if !json {
        println!(
            "{:>7} {:<34} {:>7} {:>8} {:>6} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>8} {:>7}",
            "members",
            "topology",
            "out max",
            "out mean",
            "in min",
            "in mean",
            "<m",
            "1 zone",
            "pairs<k",
            "join max",
            "leave max",
            "sel µs",
            "all s"
        );
    }
    for n in sizes {
        for c in sim::clusters(n) {
            eprintln!("[pinglist_sim] {n} members, {}", c.name);
            let f = sim::simulate(&c.topology, &params, events);
            let violations = f.violations(&params);
            if json {
                let line = serde_json::json!({
                    "cluster": c.name,
                    "params": {
                        "full_mesh_max": params.full_mesh_max,
                        "rack_peers": params.rack_peers,
                        "zone_peers": params.zone_peers,
                        "min_probers": params.min_probers,
                        "max_peers": params.max_peers,
                    },
                    "churn_goal": sim::CHURN_GOAL,
                    "figures": f,
                    "violations": violations,
                });
                println!("{line}");
            } else {
                println!(
                    "{:>7} {:<34} {:>7} {:>8.1} {:>6} {:>7.1} {:>6} {:>6} {:>4}/{:<4} {:>9} {:>9} {:>8.1} {:>7.2}{}",
                    f.members,
                    c.name,
                    f.out_max,
                    f.out_mean,
                    f.in_min,
                    f.in_mean,
                    f.under_min_probers,
                    f.probed_from_one_zone,
                    f.zone_pairs_under_k,
                    f.zone_pairs,
                    f.join.max,
                    f.leave.max,
                    f.select_us,
                    f.all_lists_s,
                    if violations.is_empty() {
                        String::new()
                    } else {
                        format!("  VIOLATED: {}", violations.join("; "))
                    }
                );
            }
        }
    }
    Ok(())
}
