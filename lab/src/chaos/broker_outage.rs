//! broker-outage: the broker stops and comes back; nothing is lost.

use super::*;

pub(super) fn broker_outage(lab: &mut Lab, c: &mut Ctx, secs_: u64) -> Result<()> {
    let Ctx(_, base, pairs, log, j) = c;
    let n = lab.spec.nodes;
    // Each agent's metric `name` (`None` where it cannot be read).
    let metric = |lab: &Lab, name: &str| -> Vec<Option<f64>> {
        (0..n)
            .map(|i| lab.cluster.agent(i).metric(name).ok().flatten())
            .collect()
    };
    let stop = format!("broker stopped for {secs_} s");
    let (span, buffered) = fault(
        lab,
        [&stop, "broker started again"],
        log,
        |lab| {
            lab.cluster.kafka_mut().stop();
            Ok(())
        },
        |lab, _| hold(lab, Duration::from_secs(secs_), |_| {}),
        |lab| {
            // What the agents hold just before the broker returns (unknown if one cannot say).
            let buffered: Option<f64> = metric(lab, "meshprobe_kafka_buffered").into_iter().sum();
            let r = lab.cluster.kafka_mut().start_again();
            r.context("starting the broker again").map(|()| buffered)
        },
    )?;
    let (stop_w, end_w, back_at) = (span.on, span.off, span.off_at);

    // Windows closed while the broker was away: stop_w ..= end_w - 1.
    let buffered_windows = end_w - stop_w;
    j.fig("buffered_windows", buffered_windows as f64);
    if let Some(b) = buffered {
        j.fig("buffered_records", b);
    }
    let (_, delivered) = wait_kafka(lab, KAFKA_WAIT, |w| {
        complete(w, pairs, *base.start()..=end_w - 1)
    })?;
    let delivered_s = delivered.map(|d| secs(d - back_at));
    j.fig("delivered_after_s", delivered_s.unwrap_or(f64::NAN));
    j.note(format!(
        "broker down from window {stop_w} to window {end_w}: windows {stop_w}..={} \
         ({buffered_windows} windows × {} pairs = {} summaries) closed meanwhile; the agents \
         held {} records just before the restart; all of them were on the topic {} after \
         the restart",
        end_w - 1,
        pairs.len(),
        buffered_windows * pairs.len() as u64,
        buffered.map_or("an unknown number of".into(), |b| format!("{b:.0}")),
        delivered_s.map_or(format!("not within {KAFKA_WAIT:?}"), |s| format!(
            "{s:.1} s"
        ))
    ));

    let last = end_w + 2;
    let range = *base.start()..=last;
    let w = read_complete(lab, pairs, range.clone())?;
    let h = Health::of(&w, pairs, range.clone(), &|_| false);
    j.health_figs(&h);
    let dropped: f64 = metric(lab, "meshprobe_kafka_dropped")
        .into_iter()
        .flatten()
        .sum();
    j.fig("kafka_dropped", dropped);
    j.note(h.describe(&format!("all {} pairs on the topic", pairs.len()), &range));
    j.check(
        delivered.is_some(),
        format!(
            "the buffered summaries reached Kafka {} after the restart",
            delivered_s.map_or("never".into(), |s| format!("{s:.1} s"))
        ),
    );
    j.summarised_once(&h, &range);
    j.check(
        h.silent.is_empty() && h.lost.is_empty(),
        format!(
            "probing unaffected: {} windows without replies, {} probes lost",
            h.silent_count(),
            h.lost_count()
        ),
    );
    j.check(
        dropped == 0.0,
        format!("{dropped:.0} records dropped by the producers"),
    );
    Ok(())
}
