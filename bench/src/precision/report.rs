//! The report of the scenario: tables per contender and condition, goals, notes, JSON.

use meshprobe_harness::stats::percentile;
use serde_json::json;

use super::bursts::Plan;
use super::judge::{CondResult, Judged, TraceJudged};
use super::parse::abs_pct;
use super::{CONTENDERS, GOAL_RATIO, INTERVAL_MS, Load, MP_NET, PING, SOCKPERF};
use crate::report::{ScenarioReport, Table};

/// Microseconds, with fewer decimals as the number grows.
pub(super) fn us(ns: i64) -> String {
    let u = ns as f64 / 1000.0;
    if u.abs() < 10.0 {
        format!("{u:.2}")
    } else if u.abs() < 1000.0 {
        format!("{u:.1}")
    } else {
        format!("{u:.0}")
    }
}

/// p50 / p99 of |v|, µs.
pub(super) fn p50_p99(v: &[i64]) -> String {
    pair_us(abs_pct(v, 50.0), abs_pct(v, 99.0))
}

/// p50 / p99 of `v` itself (signed), µs.
pub(super) fn signed_p50_p99(v: &[i64]) -> String {
    pair_us(percentile(v, 50.0), percentile(v, 99.0))
}

pub(super) fn pair_us(p50: Option<i64>, p99: Option<i64>) -> String {
    match (p50, p99) {
        (Some(a), Some(b)) => format!("{} / {} µs", us(a), us(b)),
        _ => "—".into(),
    }
}

/// Describes meshprobe's legs in one condition (capture − stamp at each point).
pub(super) fn legs_cause(r: &CondResult) -> String {
    const NAMES: [&str; 4] = ["A out − T1", "B in − T2", "B out − T3", "A in − T4"];
    let mut parts = Vec::new();
    let mut widest: Option<(usize, i64)> = None;
    for (i, n) in NAMES.iter().enumerate() {
        let v: Vec<i64> = r.legs.iter().map(|l| l[i]).collect();
        let (Some(p1), Some(p50), Some(p99)) = (
            percentile(&v, 1.0),
            percentile(&v, 50.0),
            percentile(&v, 99.0),
        ) else {
            continue;
        };
        if p1 == 0 && p99 == 0 {
            parts.push(format!("{n} 0 (the same kernel receive stamp)"));
        } else {
            parts.push(format!("{n} {} / {} µs", us(p50), us(p99)));
        }
        if widest.is_none_or(|(_, w)| p99 - p1 > w) {
            widest = Some((i, p99 - p1));
        }
    }
    let signed = percentile(&r.c[MP_NET].err, 50.0).unwrap_or(0);
    let mut s = format!(
        "meshprobe − truth = (A out − T1) + (B out − T3) − (B in − T2) − (A in − T4), each \
         leg the kernel path between meshprobe's TC stamp and the capture tap on the same \
         packet; legs p50 / p99: {}; signed error p50 {} µs. On egress the tap stamps its \
         clone of the packet in dev_queue_xmit_nit, when the device is handed the packet, \
         after the TC egress hook where T1 and T3 are taken: that stretch of both egress paths \
         (the tap's own skb_clone included) counts as network in meshprobe's RTT and as host \
         time in the capture truth",
        parts.join(", "),
        us(signed)
    );
    if let Some((i, w)) = widest {
        s.push_str(&format!(
            "; the widest leg is {} (p1–p99 spread {} µs)",
            NAMES[i],
            us(w)
        ));
    }
    s.push_str(&format!(
        "; {} of {} probes had an egress leg longer than the median socket round trip (the CPU \
         taken away between hook and tap, e.g. a descheduled vCPU)",
        r.stalls, r.c[MP_NET].matched
    ));
    s
}

/// A row of a per-condition table: `label`, then `cell` of each condition.
pub(super) fn cond_row(
    t: &mut Table,
    label: &str,
    results: &[CondResult],
    cell: impl Fn(&CondResult) -> String,
) {
    t.row(std::iter::once(label.to_string()).chain(results.iter().map(cell)));
}

/// One row per contender: its name, then `cell` of its judgement in each condition.
pub(super) fn contender_rows(
    t: &mut Table,
    results: &[CondResult],
    cell: impl Fn(&Judged) -> String,
) {
    for (i, name) in CONTENDERS.iter().enumerate() {
        cond_row(t, name, results, |r| cell(&r.c[i]));
    }
}

/// Contender `c`'s p99 |error| over meshprobe's network RTT's, `decimals` after the point.
pub(super) fn p99_ratio(r: &CondResult, c: usize, decimals: usize) -> String {
    match (abs_pct(&r.c[c].err, 99.0), abs_pct(&r.c[MP_NET].err, 99.0)) {
        (Some(s), Some(m)) if m > 0 => format!("{:.decimals$}×", s as f64 / m as f64),
        _ => "—".into(),
    }
}

/// Judges each condition of `conds` with `judge` (met, how it read): whether all met, and
/// the readings joined by "; ".
pub(super) fn each_cond<'a>(
    conds: impl IntoIterator<Item = &'a CondResult>,
    judge: impl Fn(&CondResult) -> (bool, String),
) -> (bool, String) {
    let mut met = true;
    let mut parts = Vec::new();
    for r in conds {
        let (ok, part) = judge(r);
        met &= ok;
        parts.push(part);
    }
    (met, parts.join("; "))
}

/// The report of all conditions: tables, goals, notes, JSON.
pub(super) fn report(
    rep: &mut ScenarioReport,
    plan: &Plan,
    results: &[CondResult],
    refl: &serde_json::Value,
) {
    let header: Vec<String> = std::iter::once("contender".to_string())
        .chain(results.iter().map(|r| r.load.label().to_string()))
        .collect();
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    rep.tables.push(error_table(results, &header_refs));
    rep.tables.push(trace_error_table(
        results,
        &header_refs,
        "|error| against the tracepoint reference (driver hand-off and receive entry, \
         meshprobe-tracer, run alongside the captures), p50 / p99 (matched / reported):",
        |r| &r.t,
    ));
    rep.tables.push(trace_error_table(
        results,
        &header_refs,
        "|error| against the tracepoint reference alone (rounds of their own, no capture: \
         nothing clones the packets), p50 / p99 (matched / reported):",
        |r| &r.alone,
    ));
    rep.tables.push(matched_table(results, &header_refs));
    rep.tables.push(bias_table(results, &header_refs));
    rep.tables.push(legs_table(results, &header_refs));
    rep.tables.push(references_table(results, &header_refs));
    meshprobe_goals(rep, results);
    sockperf_goal(rep, results);
    ping_goal(rep, results);
    notes(rep, results);
    rep.data = data(plan, results, refl);
}

/// |error| p50 / p99 per contender, with the goal and the ratios to meshprobe.
fn error_table(results: &[CondResult], header_refs: &[&str]) -> Table {
    let mut t = Table::new(
        "|error| against the capture truth, p50 / p99 (error = contender's RTT − truth):",
        header_refs,
    );
    contender_rows(&mut t, results, |j| p50_p99(&j.err));
    cond_row(&mut t, "goal for meshprobe's network RTT", results, |r| {
        format!("≤ {} / ≤ {} µs", us(r.load.goal().0), us(r.load.goal().1))
    });
    cond_row(&mut t, "sockperf p99 / meshprobe p99", results, |r| {
        p99_ratio(r, SOCKPERF, 0)
    });
    cond_row(&mut t, "ping p99 / meshprobe p99", results, |r| {
        p99_ratio(r, PING, 1)
    });
    t
}

/// |error| p50 / p99 per contender against the tracepoint reference, and how many matched.
fn trace_error_table(
    results: &[CondResult],
    header_refs: &[&str],
    title: &str,
    pick: impl Fn(&CondResult) -> &TraceJudged,
) -> Table {
    let mut t = Table::new(title, header_refs);
    for (i, name) in CONTENDERS.iter().enumerate() {
        cond_row(&mut t, name, results, |r| {
            let j = &pick(r).c[i];
            if j.reported == 0 {
                return "—".into();
            }
            format!("{} ({} / {})", p50_p99(&j.err), j.matched, j.reported)
        });
    }
    cond_row(&mut t, "tracer events (lost)", results, |r| {
        format!("{} ({})", pick(r).events, pick(r).lost)
    });
    t
}

/// The two references on meshprobe's probes, and meshprobe's legs against the trace.
fn references_table(results: &[CondResult], header_refs: &[&str]) -> Table {
    let mut t = Table::new(
        "The two truths on meshprobe's probes, trace − capture at each point, p50 / p99 (out: \
         the tap stamps its clone before the driver hand-off; in: the receive stamp the capture \
         reports is taken right before netif_rx); then meshprobe's legs, trace − stamp:",
        header_refs,
    );
    for (i, n) in ["A out", "B in", "B out", "A in"].iter().enumerate() {
        cond_row(&mut t, &format!("trace − capture, {n}"), results, |r| {
            let v: Vec<i64> = r.ref_legs.iter().map(|l| l[i]).collect();
            signed_p50_p99(&v)
        });
    }
    for (i, n) in ["A out − T1", "B in − T2", "B out − T3", "A in − T4"]
        .iter()
        .enumerate()
    {
        cond_row(&mut t, &format!("trace: {n}"), results, |r| {
            let v: Vec<i64> = r.t.legs.iter().map(|l| l[i]).collect();
            signed_p50_p99(&v)
        });
        cond_row(&mut t, &format!("trace alone: {n}"), results, |r| {
            let v: Vec<i64> = r.alone.legs.iter().map(|l| l[i]).collect();
            signed_p50_p99(&v)
        });
    }
    t
}

/// How many of each contender's RTTs were matched to the truth.
fn matched_table(results: &[CondResult], header_refs: &[&str]) -> Table {
    let mut t = Table::new(
        "Probes matched to the capture truth (matched / RTTs the contender reported):",
        header_refs,
    );
    contender_rows(&mut t, results, |j| {
        format!(
            "{} / {} ({:.1} %)",
            j.matched,
            j.reported,
            if j.reported == 0 {
                0.0
            } else {
                100.0 * j.matched as f64 / j.reported as f64
            }
        )
    });
    t
}

/// Signed error p50 (the bias), meshprobe's spread around it, and the truth.
fn bias_table(results: &[CondResult], header_refs: &[&str]) -> Table {
    let mut t = Table::new(
        "Bias (signed error p50; + reads longer than the truth) and the truth itself:",
        header_refs,
    );
    contender_rows(&mut t, results, |j| {
        percentile(&j.err, 50.0)
            .map(|v| format!("{} µs", us(v)))
            .unwrap_or("—".into())
    });
    cond_row(
        &mut t,
        "meshprobe network RTT, |error − its p50| p50 / p99 (spread around the bias)",
        results,
        |r| {
            let e = &r.c[MP_NET].err;
            match percentile(e, 50.0) {
                Some(m) => {
                    let c: Vec<i64> = e.iter().map(|v| v - m).collect();
                    p50_p99(&c)
                }
                None => "—".into(),
            }
        },
    );
    cond_row(
        &mut t,
        "capture truth RTT of meshprobe's probes, p50 / p99",
        results,
        |r| signed_p50_p99(&r.truth),
    );
    t
}

/// meshprobe's four legs, capture − stamp.
fn legs_table(results: &[CondResult], header_refs: &[&str]) -> Table {
    let mut t = Table::new(
        "meshprobe's legs, capture − stamp at each point, p50 / p99 (its error = leg 1 + leg 3 \
         − leg 2 − leg 4):",
        header_refs,
    );
    for (i, n) in ["A out − T1", "B in − T2", "B out − T3", "A in − T4"]
        .iter()
        .enumerate()
    {
        cond_row(&mut t, n, results, |r| {
            let v: Vec<i64> = r.legs.iter().map(|l| l[i]).collect();
            signed_p50_p99(&v)
        });
    }
    // Authenticated mode: T1/T4 the same kernel stamps (kept in maps), T2 the reflector
    // socket's RX stamp, T3 userspace before signing.
    for (i, n) in [
        "auth: A out − T1",
        "auth: B in − T2 (socket)",
        "auth: B out − T3 (userspace)",
        "auth: A in − T4",
    ]
    .iter()
    .enumerate()
    {
        cond_row(&mut t, n, results, |r| {
            let v: Vec<i64> = r.auth_legs.iter().map(|l| l[i]).collect();
            signed_p50_p99(&v)
        });
    }
    t
}

/// meshprobe's goal in each condition.
fn meshprobe_goals(rep: &mut ScenarioReport, results: &[CondResult]) {
    for r in results {
        let e = &r.alone.c[MP_NET].err;
        let (g50, g99) = r.load.goal();
        let (Some(p50), Some(p99)) = (abs_pct(e, 50.0), abs_pct(e, 99.0)) else {
            rep.goal(
                &format!("meshprobe, {}", r.load.label()),
                &format!("|error| p50 ≤ {} µs, p99 ≤ {} µs", us(g50), us(g99)),
                "no probe matched",
                false,
                Some("no meshprobe probe could be matched to the tracepoint reference".into()),
            );
            continue;
        };
        let met = p50 <= g50 && p99 <= g99;
        rep.goal(
            &format!("meshprobe, {}", r.load.label()),
            &format!("|error| p50 ≤ {} µs, p99 ≤ {} µs", us(g50), us(g99)),
            format!("p50 {} µs, p99 {} µs", us(p50), us(p99)),
            met,
            Some(format!(
                "{}. Against the capture: {}",
                trace_legs_cause(r),
                legs_cause(r)
            )),
        );
    }
}

/// meshprobe's legs against the tracepoint reference alone, for a goal's verdict.
fn trace_legs_cause(r: &CondResult) -> String {
    const NAMES: [&str; 4] = ["A out − T1", "B in − T2", "B out − T3", "A in − T4"];
    let legs = NAMES
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let v: Vec<i64> = r.alone.legs.iter().map(|l| l[i]).collect();
            Some(format!(
                "{n} {} / {} µs",
                us(percentile(&v, 50.0)?),
                us(percentile(&v, 99.0)?)
            ))
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "against the tracepoint reference alone (driver hand-off and receive entry, no capture); \
         meshprobe − truth = (A out − T1) + (B out − T3) − (B in − T2) − (A in − T4), legs \
         trace − stamp p50 / p99: {legs}. The egress legs are the programs ahead of the later \
         one on net_dev_start_xmit (the tracer's and meshprobe's hand-off program run one after \
         the other), the ingress legs the path from the kernel's receive stamp to netif_rx"
    )
}

/// sockperf's p99 |error| over meshprobe's, under stress.
fn sockperf_goal(rep: &mut ScenarioReport, results: &[CondResult]) {
    let stressed: Vec<&CondResult> = results.iter().filter(|r| r.load != Load::Idle).collect();
    let (all_met, ratios) = each_cond(stressed.iter().copied(), |r| {
        match (
            abs_pct(&r.c[SOCKPERF].err, 99.0),
            abs_pct(&r.c[MP_NET].err, 99.0),
        ) {
            (Some(s), Some(m)) => {
                let ratio = s as f64 / m.max(1) as f64;
                (
                    ratio >= GOAL_RATIO,
                    format!(
                        "{ratio:.0}× ({}: sockperf {} µs, meshprobe {} µs)",
                        r.load.name(),
                        us(s),
                        us(m)
                    ),
                )
            }
            _ => (false, format!("— ({}: no matched probes)", r.load.name())),
        }
    });
    rep.goal(
        "vs sockperf at p99 under stress",
        "≥ 100× smaller |error|",
        ratios.clone(),
        all_met && !stressed.is_empty(),
        Some(format!("ratio below {GOAL_RATIO:.0}×: {ratios}")),
    );
}

/// meshprobe's p50 and p99 below ping's in every condition.
fn ping_goal(rep: &mut ScenarioReport, results: &[CondResult]) {
    let (ping_met, ping_parts) = each_cond(results, |r| {
        let m = (
            abs_pct(&r.c[MP_NET].err, 50.0),
            abs_pct(&r.c[MP_NET].err, 99.0),
        );
        let p = (abs_pct(&r.c[PING].err, 50.0), abs_pct(&r.c[PING].err, 99.0));
        if let ((Some(m50), Some(m99)), (Some(p50), Some(p99))) = (m, p) {
            let better = m50 < p50 && m99 < p99;
            (
                better,
                format!(
                    "{}: meshprobe {} / {} µs vs ping {} / {} µs{}",
                    r.load.name(),
                    us(m50),
                    us(m99),
                    us(p50),
                    us(p99),
                    if better { "" } else { " (not better)" }
                ),
            )
        } else {
            (false, format!("{}: no matched probes", r.load.name()))
        }
    });
    rep.goal(
        "better than ping",
        "p50 and p99 of |error| below ping's, every condition",
        ping_parts.clone(),
        ping_met,
        Some(ping_parts),
    );
}

/// Per condition what was sent and matched; what every contender is judged against.
fn notes(rep: &mut ScenarioReport, results: &[CondResult]) {
    for r in results {
        let t4: Vec<String> = r
            .t4_sources
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let al: Vec<String> = r
            .align
            .iter()
            .map(|(n, c, s)| format!("{n} rows score {c:.2} (next best {s:.2})"))
            .collect();
        rep.note(format!(
            "{} ({:.0} s): meshprobe sent {} probes (t4_source: {}); ping sent {}; sockperf \
             bursts aligned at {}; capture drops {}.",
            r.load.label(),
            r.seconds,
            r.mp_sent,
            t4.join(", "),
            r.ping_sent,
            al.join(", "),
            r.capture_drops
        ));
    }
    rep.note(
        "Every contender is judged against the network RTT: ping's and sockperf's RTTs and \
         meshprobe's app RTT include the reflector's turnaround (B's kernel for ping, the \
         sockperf server's and meshprobe reflector's wake-up and socket path) and the sender's \
         own path between its clock read and the wire; meshprobe's network RTT subtracts the \
         turnaround it stamped (T3 − T2)."
            .to_string(),
    );
}

/// The JSON of the scenario.
fn data(plan: &Plan, results: &[CondResult], refl: &serde_json::Value) -> serde_json::Value {
    let cond_json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let contenders: Vec<serde_json::Value> = CONTENDERS
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let j = &r.c[i];
                    json!({
                        "contender": n, "reported": j.reported, "matched": j.matched,
                        "abs_error_p50_ns": abs_pct(&j.err, 50.0),
                        "abs_error_p99_ns": abs_pct(&j.err, 99.0),
                        "abs_error_max_ns": abs_pct(&j.err, 100.0),
                        "signed_error_p50_ns": percentile(&j.err, 50.0),
                    })
                })
                .collect();
            let legs: Vec<serde_json::Value> = (0..4)
                .map(|i| {
                    let v: Vec<i64> = r.legs.iter().map(|l| l[i]).collect();
                    json!({"p1_ns": percentile(&v, 1.0), "p50_ns": percentile(&v, 50.0),
                           "p99_ns": percentile(&v, 99.0)})
                })
                .collect();
            let auth_legs: Vec<serde_json::Value> = (0..4)
                .map(|i| {
                    let v: Vec<i64> = r.auth_legs.iter().map(|l| l[i]).collect();
                    json!({"p1_ns": percentile(&v, 1.0), "p50_ns": percentile(&v, 50.0),
                           "p99_ns": percentile(&v, 99.0)})
                })
                .collect();
            let per_leg = |v: &[[i64; 4]]| -> Vec<serde_json::Value> {
                (0..4)
                    .map(|i| {
                        let x: Vec<i64> = v.iter().map(|l| l[i]).collect();
                        json!({"p1_ns": percentile(&x, 1.0), "p50_ns": percentile(&x, 50.0),
                               "p99_ns": percentile(&x, 99.0)})
                    })
                    .collect()
            };
            let traced = |tj: &TraceJudged| -> serde_json::Value {
                let c: Vec<serde_json::Value> = CONTENDERS
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let j = &tj.c[i];
                        json!({
                            "contender": n, "reported": j.reported, "matched": j.matched,
                            "abs_error_p50_ns": abs_pct(&j.err, 50.0),
                            "abs_error_p99_ns": abs_pct(&j.err, 99.0),
                            "signed_error_p50_ns": percentile(&j.err, 50.0),
                        })
                    })
                    .collect();
                json!({"contenders": c, "meshprobe_legs": per_leg(&tj.legs),
                       "events": tj.events, "lost": tj.lost})
            };
            json!({
                "tracepoint_reference": {
                    "with_captures": traced(&r.t),
                    "alone": traced(&r.alone),
                    "trace_minus_capture_legs": per_leg(&r.ref_legs),
                },
                "meshprobe_auth_legs": auth_legs,
                "condition": r.load.name(), "seconds": r.seconds,
                "contenders": contenders,
                "truth_p50_ns": percentile(&r.truth, 50.0),
                "truth_p99_ns": percentile(&r.truth, 99.0),
                "meshprobe_legs": legs, "t4_sources": r.t4_sources,
                "sockperf_alignment": r.align.iter()
                    .map(|(n, c, s)| json!({"rows": n, "r": c, "next_r": s})).collect::<Vec<_>>(),
                "capture_drops": r.capture_drops,
                "stalls": r.stalls,
                "meshprobe_sent": r.mp_sent, "ping_sent": r.ping_sent,
            })
        })
        .collect();
    json!({
        "rounds": plan.rounds, "probes_per_burst": plan.count,
        "sockperf_seconds": plan.sockperf_secs, "interval_ms": INTERVAL_MS,
        "sender_cpu": plan.sender_cpu, "reflector_cpu": plan.reflector_cpu,
        "conditions": cond_json,
        "reflector_summary": refl,
    })
}
