//! Holding a fault, and waiting for what the mesh records (Kafka windows).

use super::*;

/// Sleeps until the middle of a window (the current one if its first half is not over yet, else
/// the next one) and returns that window: a fault applied there is attributed to one window.
pub(super) fn at_mid_window(lab: &Lab) -> u64 {
    let len = lab.spec.window.as_nanos() as u64;
    let now = tai_now_ns();
    let w = now / len;
    let mid = w * len + len / 2;
    let target = if now <= mid { mid } else { mid + len };
    std::thread::sleep(Duration::from_nanos(target.saturating_sub(tai_now_ns())));
    lab.window_now()
}

/// Sleeps `d`, checking every 250 ms that the agents still run; `each` runs at every check.
pub(super) fn hold(lab: &mut Lab, d: Duration, mut each: impl FnMut(&mut Lab)) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(250)));
        for (i, a) in &mut lab.cluster.agents {
            if !a.is_running() {
                bail!("{}'s agent exited:\n{}", node_name(*i), a.stderr_tail(30));
            }
        }
        each(lab);
    }
}

/// A fault's timeline: applied in the middle of window `on` (at `on_at`; `on1` in progress once
/// it took effect), undone in window `off` (at `off_at`; `off1` in progress once undone).
pub(super) struct Span {
    pub(super) on: u64,
    pub(super) on1: u64,
    pub(super) on_at: Instant,
    pub(super) off: u64,
    pub(super) off1: u64,
    pub(super) off_at: Instant,
}

/// Applies a fault in the middle of a window, keeps it while `hold` runs (given `on1`), then
/// undoes it even when `hold` failed: the lab is put back before any error is returned. `undo`
/// may first read what it needs. `on` and `off` name the two steps in the log.
pub(super) fn fault<T>(
    lab: &mut Lab,
    [on, off]: [&str; 2],
    log: &mut dyn FnMut(&str),
    apply: impl FnOnce(&mut Lab) -> Result<()>,
    hold: impl FnOnce(&mut Lab, u64) -> Result<()>,
    undo: impl FnOnce(&mut Lab) -> Result<T>,
) -> Result<(Span, T)> {
    let on_w = at_mid_window(lab);
    let on_at = Instant::now();
    apply(lab)?;
    let on1 = lab.window_now();
    log(&format!("{on} in window {on_w}"));
    let held = hold(lab, on1);
    let off_w = lab.window_now();
    let undone = undo(lab);
    let (off_at, off1) = (Instant::now(), lab.window_now());
    log(&format!("{off} in window {off_w}"));
    held?;
    let (on, off) = (on_w, off_w);
    Ok((
        Span {
            on,
            on1,
            on_at,
            off,
            off1,
            off_at,
        },
        undone?,
    ))
}

/// [`fault`] that shapes link `(a, b)` as `new` (`what` in the log) for `windows` whole
/// windows, then, in the middle of the next, reads what `read` needs and puts `old` back.
pub(super) fn change_link<T>(
    lab: &mut Lab,
    log: &mut dyn FnMut(&str),
    (a, b): (usize, usize),
    [old, new]: [Shape; 2],
    windows: u64,
    what: &str,
    read: impl FnOnce(&Lab) -> T,
) -> Result<(Span, T)> {
    let link = format!("{}–{}", node_name(a), node_name(b));
    fault(
        lab,
        [&format!("{link}: {what}"), &format!("{link}: restored")],
        log,
        |lab| lab.set_link(a, b, new),
        |lab, on1| {
            lab.wait_window(on1 + windows + 1);
            let held = lab.check();
            at_mid_window(lab);
            held
        },
        |lab| {
            let r = read(lab);
            lab.set_link(a, b, old).map(|()| r)
        },
    )
}

/// Reads the topic until `done` holds (at most `timeout`); returns the last read and when
/// `done` first held. Errors only if no read succeeded at all.
pub(super) fn wait_kafka(
    lab: &Lab,
    timeout: Duration,
    mut done: impl FnMut(&Windows) -> bool,
) -> Result<(Windows, Option<Instant>)> {
    let deadline = Instant::now() + timeout;
    let mut last: Option<Windows> = None;
    let mut last_err = None;
    loop {
        match lab.kafka_windows() {
            Ok(w) => {
                if done(&w) {
                    return Ok((w, Some(Instant::now())));
                }
                last = Some(w);
            }
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return match (last, last_err) {
                (Some(w), _) => Ok((w, None)),
                (None, Some(e)) => Err(e.context("reading the summaries from Kafka")),
                (None, None) => bail!("no read of Kafka within {timeout:?}"),
            };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for the end of window `last`, then reads the topic until `done` (at most 30 s).
pub(super) fn read_after(
    lab: &Lab,
    last: u64,
    done: impl FnMut(&Windows) -> bool,
) -> Result<Windows> {
    lab.wait_window(last + 1);
    Ok(wait_kafka(lab, Duration::from_secs(30), done)?.0)
}

/// [`read_after`] the end of `range`, until every pair of `pairs` is [`complete`] in it.
pub(super) fn read_complete(
    lab: &Lab,
    pairs: &[Pair],
    range: RangeInclusive<u64>,
) -> Result<Windows> {
    read_after(lab, *range.end(), |w| complete(w, pairs, range.clone()))
}

/// Every pair of `pairs` has a summary in every window of `range`.
pub(super) fn complete(w: &Windows, pairs: &[Pair], range: RangeInclusive<u64>) -> bool {
    pairs.iter().all(|p| w.gaps(p, range.clone()).is_empty())
}

/// Every pair has a summary at window `seq` or later (the topic is read up to there).
pub(super) fn reached(w: &Windows, pairs: &[Pair], seq: u64) -> bool {
    pairs.iter().all(|p| !w.of(p, seq..=u64::MAX).is_empty())
}

/// Pairs whose loss is expected: their link has loss set in `spec`.
pub(super) fn expected_loss(spec: LabSpec) -> impl Fn(&Pair) -> bool {
    move |p| match (node_index(&p.0), node_index(&p.1)) {
        (Some(a), Some(b)) => spec.shape(a, b).loss_pct > 0.0,
        _ => false,
    }
}
