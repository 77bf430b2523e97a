//! Scenario 1: how close each prober's RTT is to the truth, idle and under load.
//!
//! Two namespaces on a bare veth. tcpdump (AF_PACKET, nanosecond stamps) on both veth ends
//! records every probe packet for the whole of a condition; a probe's true network RTT is
//! (A: reply in − request out) − (B: reply out − request in), the wire as each kernel's tap
//! sees it, without the reflector's turnaround. Four contenders are judged against it, each on
//! its own packets, in the same run, in short bursts whose order rotates from round to round:
//! meshprobe's network RTT (kernel stamps) and app RTT (its socket's view of the same probes),
//! iputils `ping` (ICMP echo, answered by B's kernel) and `sockperf ping-pong` (UDP, a
//! userspace server). Conditions: idle, `stress-ng --cpu N` on every core, and one CPU hog
//! pinned to the CPU the reflectors are pinned to (a noisy neighbour).
//!
//! A second truth runs alongside (issue 18): the tracepoint reference (`meshprobe-tracer`,
//! `net_dev_start_xmit` and the receive entries on the same two interfaces, no skb clone);
//! every contender is also judged against it, side by side. meshprobe's goals (issue 18) are
//! judged against the tracepoint reference alone: with egress stamps at the driver hand-off,
//! the capture is no truth for them (its tap runs before the hand-off and delays it by its own
//! work). With the captures on, the trace's egress instants include the taps' work (they run
//! before the driver hand-off), so the two truths differ by it: the legs table says by how
//! much. So each condition also runs rounds of meshprobe, ping and authenticated mode under
//! the tracepoint reference alone (no capture), judged against it: the non-perturbing truth.
//!
//! A fifth contender is meshprobe in STAMP authenticated mode (`--auth required`, its own
//! reflector on `AUTH_PORT`), judged against the same captures: its T1/T4 are the same kernel
//! stamps kept in maps, its T2 the reflector socket's RX stamp, its T3 a userspace stamp taken
//! before signing, so the difference from open mode is the reflector's send path.

mod bursts;
mod judge;
mod parse;
mod report;
#[cfg(test)]
mod tests;

use anyhow::{Result, bail};
use meshprobe_harness::TwoHosts;
use meshprobe_harness::load::{WakeLatency, online_cpus};
use meshprobe_harness::services::TempDir;
use meshprobe_harness::trace::Site;
use serde_json::json;

use crate::report::ScenarioReport;
use crate::scenario::{Ctx, progress};
use bursts::{Plan, Sequence, reflector, reflector_auth, sockperf_server, start_load};
use judge::{TraceJudged, Traced, judge};
use report::{p50_p99, report};

const SOCKPERF_PORT: u16 = 11111;
/// The authenticated-mode reflector's port (outside the ephemeral range).
const AUTH_PORT: u16 = 8620;
/// Its key (the bench's own; written to a file in the scenario's temporary directory).
const AUTH_KEY_HEX: &str = "6d65736870726f62652d62656e63682d6b6579";
/// Every contender probes once per millisecond.
const INTERVAL_MS: u64 = 1;
/// meshprobe's goals, ns: (p50, p99) of |error| against the tracepoint reference alone.
const GOAL_IDLE: (i64, i64) = (500, 1_000);
const GOAL_STRESS: (i64, i64) = (1_000, 2_000);
/// sockperf's p99 |error| over meshprobe's, under stress.
const GOAL_RATIO: f64 = 100.0;
/// A sockperf burst whose logged RTTs correlate less than this with the captured ones at the
/// best offset is not matched (its rows could not be told apart from their neighbours).
const MIN_ALIGN_SCORE: f64 = 0.5;
/// Capture filter on both veth ends: every contender's packets.
const FILTER: &str = "udp port 862 or udp port 8620 or udp port 11111 or icmp";

// ---- the contenders ---------------------------------------------------------------------------

const MP_NET: usize = 0;
const MP_APP: usize = 1;
const PING: usize = 2;
const SOCKPERF: usize = 3;
const MP_AUTH: usize = 4;
const CONTENDERS: [&str; 5] = [
    "meshprobe network RTT (kernel stamps)",
    "meshprobe app RTT (its socket)",
    "iputils ping",
    "sockperf ping-pong (UDP)",
    "meshprobe network RTT, authenticated mode",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Idle,
    AllCores,
    Neighbour,
}

impl Load {
    const ALL: [Load; 3] = [Load::Idle, Load::AllCores, Load::Neighbour];

    fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::AllCores => "stress",
            Load::Neighbour => "neighbour",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::AllCores => "stress-ng on every core",
            Load::Neighbour => "noisy neighbour on the reflector's CPU",
        }
    }

    fn goal(self) -> (i64, i64) {
        if self == Load::Idle {
            GOAL_IDLE
        } else {
            GOAL_STRESS
        }
    }
}

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    let asked = std::time::Instant::now();
    let env = match ctx.env(
        "bench precision",
        &["tcpdump", "stress-ng", "sockperf", "ping", "taskset"],
    )? {
        Ok(e) => e,
        Err(why) => {
            rep.skip(why);
            return Ok(());
        }
    };
    let lock_wait = asked.elapsed().as_secs_f64();
    progress(format!(
        "precision: machine lock held (waited {lock_wait:.0} s for other runs)"
    ));
    let cpus = online_cpus();
    if cpus < 2 {
        rep.skip("needs at least 2 CPUs (senders and reflectors on separate CPUs)");
        return Ok(());
    }
    let plan = Plan {
        rounds: ctx.pick(2, 5),
        count: ctx.pick(400, 1000),
        sockperf_secs: ctx.pick("1", "2"),
        sender_cpu: "0".into(),
        reflector_cpu: (cpus - 1).to_string(),
    };
    let r_cpu = plan.reflector_cpu.clone();
    describe(rep, &plan, cpus);

    let wake = WakeLatency::zero();
    let t = TwoHosts::new()?;
    let mp = &env.mp;
    let sites = (
        Site::of(&t.a, TwoHosts::A_IF)?,
        Site::of(&t.b, TwoHosts::B_IF)?,
    );
    // Before each condition's tracer, the senders after it: the order in which the tracer's
    // run time cancels in the RTT (harness `agreement_run`, BENCHMARKS.md issue 18).
    let mut refl = reflector(mp, &t, &r_cpu)?;
    let mut server = sockperf_server(&t, &r_cpu)?;
    let dir = TempDir::new("precision")?;
    let key_file = dir.path().join("stamp-key");
    std::fs::write(&key_file, AUTH_KEY_HEX)?;
    let key_file = key_file.to_string_lossy().into_owned();
    let mut refl_auth = reflector_auth(mp, &t, &r_cpu, &key_file)?;
    let mut results = Vec::new();
    let mut seq = Sequence {
        mp,
        t: &t,
        plan: &plan,
        dir: &dir,
        key_file: &key_file,
        ping_id: 0x4d50,
        sp_n: 0,
    };
    for load in Load::ALL {
        let started = std::time::Instant::now();
        progress(format!("precision: {} ...", load.label()));
        let load_guard = start_load(load, &r_cpu, 300)?;
        let (bursts, fa, fb, traced) = seq.condition(load)?;
        let (alone, traced_alone) = seq.trace_only(load)?;
        drop(load_guard);
        if !refl.is_running() {
            bail!("meshprobe reflect exited: {}", refl.child.stderr_text());
        }
        if !refl_auth.is_running() {
            bail!(
                "meshprobe reflect --auth exited: {}",
                refl_auth.child.stderr_text()
            );
        }
        if !server.is_running() {
            bail!("sockperf server exited: {}", server.stderr_text());
        }
        let tr = Traced {
            result: &traced,
            a: sites.0,
            b: sites.1,
        };
        let mut res = judge(
            load,
            &bursts,
            &fa,
            &fb,
            &tr,
            started.elapsed().as_secs_f64(),
        );
        res.alone = TraceJudged::alone(
            &alone,
            &Traced {
                result: &traced_alone,
                a: sites.0,
                b: sites.1,
            },
        );
        for (refname, c) in [
            ("capture", &res.c),
            ("tracepoint", &res.t.c),
            ("tracepoint alone", &res.alone.c),
        ] {
            progress(format!(
                "precision: {} vs {refname}: meshprobe {}, authenticated {}, app {}, ping {}, \
                 sockperf {}",
                load.name(),
                p50_p99(&c[MP_NET].err),
                p50_p99(&c[MP_AUTH].err),
                p50_p99(&c[MP_APP].err),
                p50_p99(&c[PING].err),
                p50_p99(&c[SOCKPERF].err)
            ));
        }
        results.push(res);
    }
    let refl_sum = refl.stop()?;
    let refl_auth_sum = refl_auth.stop()?;
    drop(server);
    drop(wake);
    report(rep, &plan, &results, &refl_sum);
    rep.data["reflector_auth_summary"] = refl_auth_sum;
    rep.data["lock_wait_seconds"] = json!(lock_wait);
    if lock_wait >= 1.0 {
        rep.note(format!(
            "The scenario waited {lock_wait:.0} s for the harness's machine lock (another \
             run held it) before it started; that wait is inside its time."
        ));
    }
    Ok(())
}

/// The method lines.
fn describe(rep: &mut ScenarioReport, plan: &Plan, cpus: usize) {
    let (s_cpu, r_cpu) = (&plan.sender_cpu, &plan.reflector_cpu);
    rep.method(format!(
        "A ⟷ B on a bare veth (no added delay). In B, pinned to CPU {r_cpu} with taskset: \
         `meshprobe reflect -I veth-b` and `sockperf server` (ping's echo replies come from B's \
         kernel). In A, pinned to CPU {s_cpu}: the senders"
    ));
    rep.method(format!(
        "truth: tcpdump (AF_PACKET taps, nanosecond stamps, `{FILTER}`) on veth-a in A and \
         veth-b in B for the whole condition; per probe (A reply in − A request out) − \
         (B reply out − B request in): the network RTT without the reflector's turnaround; \
         error = the contender's RTT − truth, for each of its own probes"
    ));
    rep.method(format!(
        "per condition {} rounds, each one burst per contender (order rotated every round), \
         all at one probe per {INTERVAL_MS} ms: `meshprobe ping -c {} -i {INTERVAL_MS}ms -I \
         veth-a` (network RTT and app RTT of the same probes, matched by SSID and sequence); \
         the same with `--auth required --key-file F` against a second reflector \
         (`reflect --auth required -p {AUTH_PORT}`, same CPU), matched at the authenticated \
         layout's offsets; \
         `ping -D -i 0.001 -c {} -e ID` (a fresh ICMP id per burst, matched by id and \
         icmp_seq; ping prints sub-ms RTTs to 1 µs); `sockperf ping-pong --mps 1000 -t {} \
         --full-log F` (its rows cover its valid window only; they are matched to the captured \
         messages in order, at the offset where both agree best: the sum of the correlations of \
         their RTTs and of their send gaps, at most 2; a burst scoring below \
         {MIN_ALIGN_SCORE} is left unmatched); each burst's packets are the ones captured \
         within its own time span",
        plan.rounds, plan.count, plan.count, plan.sockperf_secs
    ));
    rep.method(format!(
        "conditions: idle; `stress-ng --cpu {cpus}` (every core); a noisy neighbour \
         `stress-ng --cpu 1 --taskset {r_cpu}` on the reflectors' CPU. PM QoS \
         cpu_dma_latency 0 held throughout (idle CPUs poll instead of halting, as cyclictest \
         does and as the correctness test measures)"
    ));
    rep.method(
        "p50 / p99 are nearest-rank percentiles of |error| over the matched probes of all \
         bursts of a condition",
    );
}
