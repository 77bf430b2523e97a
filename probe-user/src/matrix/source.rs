//! Inputs: the Kafka topic (through `consume`'s reader) or an agent's JSON lines, each read on
//! a thread of its own and handed over as [`Input`]s; the channel closing is the end.
use std::{
    fs::File,
    io::{BufRead, BufReader, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::Sender,
    },
    time::Duration,
};

use serde::Deserialize;

use super::{MatrixError, model::Summary};
use crate::{
    kafka_security::Security,
    pb::{self, record::Kind},
    topic::{Polled, TopicReader},
};

/// What an input thread sends.
#[derive(Debug)]
pub enum Input {
    /// A pair's or a zone's window summary.
    Summary(Box<Summary>),
    /// Something skipped (a line that is no summary, a message that is no Record, a Kafka
    /// error); the input goes on.
    Warning(String),
    /// Everything that was there at the start has been read (Kafka: every partition's end;
    /// file: EOF); later inputs are live.
    CaughtUp,
    /// Nothing arrived for a while (made by [`super::Feed`], never sent).
    Idle,
    /// The input cannot go on.
    Failed(anyhow::Error),
}

/// How long a followed file is left alone after reaching its end.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Bad lines reported one by one; the rest are counted.
const WARN_LINES: u64 = 3;

pub struct KafkaSource {
    pub bootstrap: String,
    pub topic: String,
    pub timeout: Duration,
    pub follow: bool,
    pub security: Security,
}

impl KafkaSource {
    pub fn describe(&self) -> String {
        format!("Kafka topic {} at {}", self.topic, self.bootstrap)
    }

    pub fn spawn(self, tx: Sender<Input>, stop: Arc<AtomicBool>) {
        std::thread::spawn(move || {
            if let Err(e) = self.read(&tx, &stop) {
                let _ = tx.send(Input::Failed(e));
            }
        });
    }

    fn read(&self, tx: &Sender<Input>, stop: &AtomicBool) -> anyhow::Result<()> {
        let mut r = TopicReader::open(&self.bootstrap, &self.topic, self.timeout, &self.security)?;
        let mut caught_up = false;
        while !stop.load(Ordering::Relaxed) && (self.follow || !r.at_end()) {
            let sent = match r.poll(self.follow)? {
                Some(Polled::Record(rec)) => match rec.kind {
                    Some(Kind::Summary(s)) => tx.send(Input::Summary(Box::new(s.into()))),
                    Some(Kind::Zone(z)) => tx.send(Input::Summary(Box::new(z.into()))),
                    _ => Ok(()), // probe records
                },
                Some(Polled::Warning(w)) => tx.send(Input::Warning(w)),
                None => Ok(()),
            };
            if sent.is_err() {
                return Ok(()); // the front end is gone
            }
            if !caught_up && r.at_end() {
                caught_up = true;
                let _ = tx.send(Input::CaughtUp);
            }
        }
        if r.bad > 0 {
            let _ = tx.send(Input::Warning(format!(
                "{} message(s) in {} could not be decoded",
                r.bad, self.topic
            )));
        }
        Ok(())
    }
}

/// An agent's JSON lines (`--output json`, `consume --json`): `{"type":"summary",...}` and
/// `{"type":"zone",...}` lines are read, other types (ready, probe, peer events) skipped.
pub struct FileSource {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    /// Regular file followed past EOF (stdin ends at EOF).
    follow: Option<File>,
}

impl FileSource {
    /// Opens the file now, so a wrong path is an error before any UI starts.
    pub fn open(path: &Path, follow: bool) -> Result<FileSource, MatrixError> {
        if path == Path::new("-") {
            return Ok(FileSource {
                path: path.into(),
                reader: Box::new(BufReader::new(std::io::stdin())),
                follow: None,
            });
        }
        let err = |source| MatrixError::Read {
            path: path.display().to_string(),
            source,
        };
        let f = File::open(path).map_err(err)?;
        let follow = if follow {
            Some(f.try_clone().map_err(err)?)
        } else {
            None
        };
        Ok(FileSource {
            path: path.into(),
            reader: Box::new(BufReader::new(f)),
            follow,
        })
    }

    pub fn describe(&self) -> String {
        if self.path == Path::new("-") {
            "stdin".into()
        } else {
            format!("file {}", self.path.display())
        }
    }

    pub fn spawn(self, tx: Sender<Input>, stop: Arc<AtomicBool>) {
        std::thread::spawn(move || {
            let what = self.describe();
            if let Err(e) = self.read(&tx, &stop) {
                let _ = tx.send(Input::Failed(anyhow::Error::new(e).context(what)));
            }
        });
    }

    fn read(mut self, tx: &Sender<Input>, stop: &AtomicBool) -> std::io::Result<()> {
        let mut lines = LineParser::default();
        let mut buf = String::new();
        let mut caught_up = false;
        let mut pos = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let n = self.reader.read_line(&mut buf)?;
            pos += n as u64;
            if buf.ends_with('\n') || (n == 0 && self.follow.is_none() && !buf.is_empty()) {
                // A whole line (or the unterminated last one of a finished input).
                if let Some(input) = lines.parse(&buf)
                    && tx.send(input).is_err()
                {
                    return Ok(());
                }
                buf.clear();
                continue;
            }
            if n > 0 {
                continue; // a partial line: its rest is still being written
            }
            // EOF.
            if !caught_up {
                caught_up = true;
                if let Some(w) = lines.skipped_note() {
                    let _ = tx.send(Input::Warning(w));
                }
                let _ = tx.send(Input::CaughtUp);
            }
            let Some(f) = &self.follow else {
                return Ok(());
            };
            std::thread::sleep(FOLLOW_POLL);
            // Truncated (rotated in place, or rewritten): start again from the top.
            if f.metadata()?.len() < pos {
                let mut f = f.try_clone()?;
                f.seek(SeekFrom::Start(0))?;
                self.reader = Box::new(BufReader::new(f));
                pos = 0;
                buf.clear();
            }
        }
        Ok(())
    }
}

/// Parses JSON lines, counting what it skips.
#[derive(Default)]
pub struct LineParser {
    line: u64,
    skipped: u64,
}

impl LineParser {
    /// The input for one line: a summary, a warning about the first few bad lines, or nothing.
    pub fn parse(&mut self, text: &str) -> Option<Input> {
        self.line += 1;
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        match summary_from_json(text) {
            Ok(Some(s)) => Some(Input::Summary(Box::new(s))),
            Ok(None) => None,
            Err(why) => {
                self.skipped += 1;
                (self.skipped <= WARN_LINES)
                    .then(|| Input::Warning(format!("line {}: skipped: {why}", self.line)))
            }
        }
    }

    /// How many bad lines were not reported one by one.
    fn skipped_note(&self) -> Option<String> {
        (self.skipped > WARN_LINES).then(|| {
            format!(
                "skipped {} line(s) in all that were no JSON summary",
                self.skipped
            )
        })
    }
}

/// The JSON form of `Quantiles` (missing fields are 0, as in protobuf).
#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonQuantiles {
    count: u64,
    min: i64,
    p50: i64,
    p90: i64,
    p99: i64,
    p999: i64,
    max: i64,
    mean: f64,
}

impl From<JsonQuantiles> for pb::Quantiles {
    fn from(q: JsonQuantiles) -> Self {
        pb::Quantiles {
            count: q.count,
            min: q.min,
            p50: q.p50,
            p90: q.p90,
            p99: q.p99,
            p999: q.p999,
            max: q.max,
            mean: q.mean,
        }
    }
}

/// The fields of a `{"type":"summary"}` line the matrix uses (serde ignores the others);
/// the pair and its window are required.
#[derive(Deserialize)]
struct JsonSummary {
    src: String,
    dst: String,
    #[serde(default)]
    dst_address: String,
    #[serde(default)]
    window_seq: u64,
    window_start_tai_ns: u64,
    window_length_ns: u64,
    #[serde(default)]
    sent: u64,
    #[serde(default)]
    received: u64,
    #[serde(default)]
    lost: u64,
    #[serde(default)]
    loss_ratio: f64,
    #[serde(default)]
    network_rtt_ns: Option<JsonQuantiles>,
    #[serde(default)]
    src_zone: String,
    #[serde(default)]
    dst_zone: String,
    #[serde(default)]
    peer_left: bool,
    #[serde(default)]
    agent_instance: String,
}

/// The fields of a `{"type":"zone"}` line the matrix uses; the source, the dst zone and the
/// window are required.
#[derive(Deserialize)]
struct JsonZone {
    src: String,
    #[serde(default)]
    src_zone: String,
    dst_zone: String,
    #[serde(default)]
    window_seq: u64,
    window_start_tai_ns: u64,
    window_length_ns: u64,
    #[serde(default)]
    pairs: u32,
    #[serde(default)]
    dst_zone_members: u32,
    #[serde(default)]
    sent: u64,
    #[serde(default)]
    received: u64,
    #[serde(default)]
    lost: u64,
    #[serde(default)]
    loss_ratio: f64,
    #[serde(default)]
    network_rtt_ns: Option<JsonQuantiles>,
    /// Base64, as the JSON sink writes it.
    #[serde(default, deserialize_with = "crate::sink::json::from_base64")]
    network_rtt_hdr: Vec<u8>,
    #[serde(default)]
    agent_instance: String,
}

/// One JSON line: `Ok(None)` for a record that is not a summary.
pub fn summary_from_json(line: &str) -> Result<Option<Summary>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("type").and_then(|t| t.as_str()) {
        Some("summary") => {}
        Some("zone") => {
            let j: JsonZone =
                serde_json::from_value(v).map_err(|e| format!("not a zone summary: {e}"))?;
            return Ok(Some(Summary::Zone(pb::ZoneSummary {
                src: j.src,
                src_zone: j.src_zone,
                dst_zone: j.dst_zone,
                window_seq: j.window_seq,
                window_start_tai_ns: j.window_start_tai_ns,
                window_length_ns: j.window_length_ns,
                pairs: j.pairs,
                dst_zone_members: j.dst_zone_members,
                sent: j.sent,
                received: j.received,
                lost: j.lost,
                loss_ratio: j.loss_ratio,
                network_rtt_ns: j.network_rtt_ns.map(Into::into),
                network_rtt_hdr: j.network_rtt_hdr,
                agent_instance: j.agent_instance,
                ..Default::default()
            })));
        }
        Some(_) => return Ok(None),
        None => return Err("a JSON object without \"type\"".into()),
    }
    let j: JsonSummary =
        serde_json::from_value(v).map_err(|e| format!("not a window summary: {e}"))?;
    Ok(Some(Summary::Pair(pb::WindowSummary {
        src: j.src,
        dst: j.dst,
        dst_address: j.dst_address,
        window_seq: j.window_seq,
        window_start_tai_ns: j.window_start_tai_ns,
        window_length_ns: j.window_length_ns,
        sent: j.sent,
        received: j.received,
        lost: j.lost,
        loss_ratio: j.loss_ratio,
        network_rtt_ns: j.network_rtt_ns.map(Into::into),
        src_zone: j.src_zone,
        dst_zone: j.dst_zone,
        peer_left: j.peer_left,
        agent_instance: j.agent_instance,
        ..Default::default()
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{json::line, tests::summary};

    fn json(s: &pb::WindowSummary) -> String {
        line(&pb::Record {
            kind: Some(Kind::Summary(s.clone())),
        })
        .unwrap()
    }

    #[test]
    fn agent_json_line_round_trips() {
        let mut s = summary("a", "b", 7);
        s.src_zone = "z1".into();
        s.peer_left = true;
        let Some(Summary::Pair(back)) = summary_from_json(&json(&s)).unwrap() else {
            panic!("not a pair summary");
        };
        assert_eq!(back.src, "a");
        assert_eq!(back.dst, "b");
        assert_eq!(back.window_start_tai_ns, s.window_start_tai_ns);
        assert_eq!(back.window_length_ns, 10_000_000_000);
        assert_eq!(back.network_rtt_ns.unwrap().p50, 45_300);
        assert_eq!(back.loss_ratio, 0.1);
        assert_eq!(back.src_zone, "z1");
        assert!(back.peer_left);
    }

    #[test]
    fn zone_json_line_round_trips_with_its_histogram() {
        let z = crate::matrix::zones::tests::zone_at("a", "z1", "z2", 7, &[40_000, 50_000], 1);
        let line = line(&pb::Record {
            kind: Some(Kind::Zone(z.clone())),
        })
        .unwrap();
        let Some(Summary::Zone(back)) = summary_from_json(&line).unwrap() else {
            panic!("not a zone summary: {line}");
        };
        assert_eq!(back.network_rtt_hdr, z.network_rtt_hdr);
        assert_eq!(back.network_rtt_ns, z.network_rtt_ns);
        assert_eq!(
            (
                back.src,
                back.src_zone,
                back.dst_zone,
                back.pairs,
                back.lost
            ),
            ("a".into(), "z1".into(), "z2".into(), 2, 1)
        );
        assert_eq!(back.window_start_tai_ns, z.window_start_tai_ns);
        let e = summary_from_json(r#"{"type":"zone","src":"a"}"#).unwrap_err();
        assert!(e.contains("not a zone summary"), "{e}");
    }

    #[test]
    fn other_lines() {
        assert_eq!(
            summary_from_json(r#"{"type":"ready","role":"agent"}"#),
            Ok(None)
        );
        assert_eq!(summary_from_json(r#"{"type":"probe","seq":1}"#), Ok(None));
        assert!(
            summary_from_json("src dst p50")
                .unwrap_err()
                .contains("not JSON")
        );
        let e = summary_from_json(r#"{"type":"summary","src":"a","dst":"b"}"#).unwrap_err();
        assert!(e.contains("window_start_tai_ns"), "{e}");
    }

    #[test]
    fn line_parser_reports_first_bad_lines_then_counts() {
        let mut p = LineParser::default();
        let good = json(&summary("a", "b", 1));
        assert!(matches!(p.parse(&good), Some(Input::Summary(_))));
        assert!(p.parse("\n").is_none());
        match p.parse("garbage") {
            Some(Input::Warning(w)) => assert!(w.starts_with("line 3: skipped"), "{w}"),
            other => panic!("{other:?}"),
        }
        for _ in 0..WARN_LINES {
            p.parse("garbage");
        }
        assert_eq!(p.skipped, WARN_LINES + 1);
        assert!(p.skipped_note().unwrap().contains("skipped 4 line(s)"));
    }

    #[test]
    fn file_source_reads_to_eof_and_closes() {
        let dir = std::env::temp_dir().join(format!("mx-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.jsonl");
        // The last line has no newline: it still counts at EOF.
        let text = format!(
            "{{\"type\":\"ready\"}}\n{}\nnot json\n{}",
            json(&summary("a", "b", 1)),
            json(&summary("b", "a", 1))
        );
        std::fs::write(&path, text).unwrap();
        let src = FileSource::open(&path, false).unwrap();
        assert!(src.describe().ends_with("agent.jsonl"));
        let (tx, rx) = std::sync::mpsc::channel();
        src.spawn(tx, Arc::new(AtomicBool::new(false)));
        let got: Vec<Input> = rx.iter().collect();
        let pairs: Vec<String> = got
            .iter()
            .filter_map(|i| match i {
                Input::Summary(s) => match s.as_ref() {
                    Summary::Pair(s) => Some(format!("{}->{}", s.src, s.dst)),
                    Summary::Zone(z) => Some(format!("{}->zone:{}", z.src, z.dst_zone)),
                },
                _ => None,
            })
            .collect();
        assert_eq!(pairs, ["a->b", "b->a"]);
        assert!(
            got.iter()
                .any(|i| matches!(i, Input::Warning(w) if w.contains("line 3")))
        );
        assert!(matches!(got.last(), Some(Input::CaughtUp)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = FileSource::open(Path::new("/nonexistent/agent.jsonl"), false)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/agent.jsonl")
        );
    }
}
