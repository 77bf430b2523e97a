//! The method lines of the report: how the pair runs, what a step measures, how the
//! capacity is found and decomposed.

use super::{MAX_MISSING, MIN_INTERVAL_NS, RATES, Settings, TIMEOUT_S};
use crate::numbers::fmt_rate;
use crate::report::ScenarioReport;
use crate::sample::procfs::clock_ticks_per_sec;

/// Writes the method lines for the run's settings `set`.
pub(super) fn describe(rep: &mut ScenarioReport, set: &Settings) {
    let Settings {
        scpu,
        rcpu,
        cpus,
        settle,
        window,
        prof_s,
        dec_s,
        floor_s,
    } = *set;
    rep.method(format!(
        "A ⟷ B on the harness veth; one `meshprobe ping` in A pinned to CPU {scpu} (`taskset`, \
         all its threads) sends to one `meshprobe reflect` in B pinned to CPU {rcpu}; both \
         attach their TC programs to the veth only (-I), kernel stamps; payload 68 octets \
         (default, T4 in-band){}",
        if cpus < 2 {
            " — this machine has one CPU, so both share it"
        } else {
            ""
        }
    ));
    rep.method(format!(
        "steps of offered rate {} probes/s; a step is one ping run of -c N probes, N = rate × \
         {:.1} s; a session (one socket, one tokio ticker) is asked for intervals down to {} µs, \
         faster steps use several sessions in the one sender process (the peer named k times, \
         -i = k / rate); -W {TIMEOUT_S}s",
        RATES.map(|r| fmt_rate(r as f64)).join(", "),
        settle + window + 0.3,
        MIN_INTERVAL_NS / 1000
    ));
    rep.method(format!(
        "stamps: the `COUNTERS` maps of both processes (t1/t4 stamped by the sender's programs, \
         t2/t3 by the reflector's), read through map descriptors the bench holds, so the \
         sender's totals are read after it exited; a probe is incomplete unless it has all four \
         stamps and its reply: incomplete = sent − min(t1, t2, t3, t4, replies received) (exact \
         when gaps are nested, as with a lost request or reply); a step holds with ≤ {:.1} % \
         incomplete",
        MAX_MISSING * 100.0
    ));
    rep.method(format!(
        "CPU over a {window} s window starting {settle} s after the sender's ready line \
         (excludes loading the programs): sum_exec_runtime of every thread \
         (/proc/PID/task/*/schedstat) for CPU, utime/stime (/proc/PID/stat, {} ticks/s) for \
         the user/kernel split, voluntary+involuntary context switches; achieved rate = t1 \
         stamps in that window / its length; ksoftirqd/{scpu},{rcpu} CPU shown apart",
        clock_ticks_per_sec()
    ));
    rep.method(
        "probes/s per core = achieved rate / (sender CPU + reflector CPU, in cores); the CPU of \
         a process includes the kernel work done in its context: on a veth a send runs the \
         peer's receive path (TC ingress, UDP, socket enqueue, wake-up) on the sender's CPU"
            .to_string(),
    );
    rep.method(format!(
        "capacity = the highest achieved rate of a step that holds; then, at the highest offered \
         rate, `perf stat -e raw_syscalls:sys_enter,context-switches,task-clock` of each \
         process ({prof_s} s), `strace -c -f` ({prof_s} s, slows the process) and `perf record \
         -e cpu-clock -g` ({prof_s} s)"
    ));

    rep.method(format!(
        "where the CPU of one probe goes, at the capacity step's offered rate (same pinning, \
         sender run with -c 0): `perf record -e cpu-clock -g` of both processes ({dec_s} s, \
         user-mode vs kernel samples); then {dec_s} s with kernel.bpf_stats_enabled=1 \
         (restored afterwards): run_time_ns/run_cnt of the four stamping programs (fdinfo of \
         the processes holding them), then {floor_s} s more with an empty program added on \
         each of the four hooks (the accounting's own floor, subtracted); total = the step's \
         CPU per probe; rest of the kernel = total − user − eBPF"
    ));
}
