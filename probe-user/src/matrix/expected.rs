//! `--expected FILE`: the RTT a lab added on purpose per ordered pair, to show beside what was
//! measured. Lines `src,dst,added_rtt` (humantime duration), `#` comments, blank lines, an
//! optional `src,dst,added_rtt` header.
use std::{collections::BTreeMap, path::Path, time::Duration};

use super::MatrixError;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expected {
    pairs: BTreeMap<(String, String), Duration>,
}

impl Expected {
    pub fn load(path: &Path) -> Result<Expected, MatrixError> {
        let text = std::fs::read_to_string(path).map_err(|source| MatrixError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Expected::parse(&text).map_err(|(line, problem)| MatrixError::Expected {
            path: path.display().to_string(),
            line,
            problem,
        })
    }

    /// Parses the file's text; an error is (1-based line number, what is wrong).
    pub fn parse(text: &str) -> Result<Expected, (usize, String)> {
        let mut pairs = BTreeMap::new();
        let mut lines_of = BTreeMap::new();
        let mut first = true;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let is_header = first
                && fields.len() == 3
                && fields[0].eq_ignore_ascii_case("src")
                && fields[1].eq_ignore_ascii_case("dst")
                && fields[2].eq_ignore_ascii_case("added_rtt");
            first = false;
            if is_header {
                continue;
            }
            let [src, dst, rtt] = fields[..] else {
                return Err((
                    n,
                    format!(
                        "{} field(s) in `{line}`; expected src,dst,added_rtt",
                        fields.len()
                    ),
                ));
            };
            if src.is_empty() || dst.is_empty() {
                return Err((n, format!("empty node id in `{line}`")));
            }
            if src == dst {
                return Err((n, format!("src and dst are both `{src}`")));
            }
            let d = humantime::parse_duration(rtt).map_err(|e| {
                (
                    n,
                    format!("added_rtt '{rtt}' is not a duration ({e}); e.g. 400us, 1.5ms"),
                )
            })?;
            let key = (src.to_string(), dst.to_string());
            if let Some(prev) = lines_of.insert(key.clone(), n) {
                return Err((n, format!("{src},{dst} already given on line {prev}")));
            }
            pairs.insert(key, d);
        }
        Ok(Expected { pairs })
    }

    pub fn get(&self, src: &str, dst: &str) -> Option<Duration> {
        self.pairs.get(&(src.to_string(), dst.to_string())).copied()
    }

    /// Every node the file names.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.pairs
            .keys()
            .flat_map(|(s, d)| [s.as_str(), d.as_str()])
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lab_file_with_header_comments_and_blanks() {
        let e = Expected::parse(
            "# written by the lab harness\n\
             src,dst,added_rtt\n\
             \n\
             node1,node2,400us\n\
             node2, node1 ,400µs   # same path back\n\
             node1,node3,1.5ms\n\
             node3,node1,0s\n",
        )
        .unwrap();
        assert_eq!(e.get("node1", "node2"), Some(Duration::from_micros(400)));
        assert_eq!(e.get("node2", "node1"), Some(Duration::from_micros(400)));
        assert_eq!(e.get("node1", "node3"), Some(Duration::from_micros(1500)));
        assert_eq!(e.get("node3", "node1"), Some(Duration::ZERO));
        // Ordered pairs: the reverse of a given pair is not implied.
        assert_eq!(e.get("node3", "node2"), None);
        let mut nodes: Vec<&str> = e.nodes().collect();
        nodes.sort_unstable();
        nodes.dedup();
        assert_eq!(nodes, ["node1", "node2", "node3"]);
    }

    #[test]
    fn empty_file_is_empty() {
        assert!(Expected::parse("# nothing\n\n").unwrap().is_empty());
        assert!(Expected::parse("src,dst,added_rtt\n").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let err = |t: &str| Expected::parse(t).unwrap_err();
        let (n, why) = err("a,b,1ms\n# ok\na,c,40x\n");
        assert_eq!(n, 3);
        assert!(why.contains("'40x' is not a duration"), "{why}");
        let (n, why) = err("a,b\n");
        assert_eq!(n, 1);
        assert!(why.contains("2 field(s)"), "{why}");
        let (n, why) = err("a,b,1ms\n\nb,a,1ms\na,b,2ms\n");
        assert_eq!(n, 4);
        assert!(why.contains("already given on line 1"), "{why}");
        assert_eq!(err("a,a,1ms").0, 1);
        assert_eq!(err(",b,1ms").0, 1);
        // The header is only allowed first.
        assert_eq!(err("a,b,1ms\nsrc,dst,added_rtt\n").0, 2);
    }

    #[test]
    fn load_reports_path_and_line() {
        let path = std::env::temp_dir().join(format!("mx-expected-{}.csv", std::process::id()));
        std::fs::write(&path, "node1,node2,400us\nnode2,node1,soon\n").unwrap();
        let e = Expected::load(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(e.starts_with(&format!("{}:2: ", path.display())), "{e}");
        assert!(
            Expected::load(Path::new("/nonexistent/x.csv"))
                .unwrap_err()
                .to_string()
                .starts_with("cannot read /nonexistent/x.csv")
        );
    }
}
