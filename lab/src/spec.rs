//! What a lab mesh looks like: how many nodes, their zones, and the shape (added round-trip
//! time and loss) of every node pair, from a flag, a zone layout or a matrix file.
//!
//! Delays are **added round-trip times**: the delay element holds each packet for half of it in
//! each direction, so a pair's matrix entry is what its network RTT should grow by. That is
//! why a matrix must be symmetric. Loss is applied to the packets from the lower-numbered node
//! to the higher one only, so probes in both directions see that loss ratio (requests one way,
//! replies the other).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use meshprobe_harness::topo::Family;

/// Most nodes a lab may have (each runs an agent on 2 shared cores).
pub const MAX_LAB_NODES: usize = 32;
/// The delay element holds a packet by spinning, at most 100 ms each way.
pub const MAX_RTT: Duration = Duration::from_millis(200);

/// The shape of one node pair.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    /// Added round-trip time.
    pub rtt: Duration,
    /// Percentage of packets dropped (0..=100), lower → higher node only.
    pub loss_pct: f64,
}

impl Shape {
    pub fn is_clear(&self) -> bool {
        self.rtt.is_zero() && self.loss_pct == 0.0
    }
}

/// The lab's layout and settings.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub nodes: usize,
    pub family: Family,
    /// Zone of each node (empty: no zone).
    pub zones: Vec<String>,
    /// Shape of each pair `(a, b)` with `a < b`; absent pairs are clear.
    pub links: BTreeMap<(usize, usize), Shape>,
    /// Agent window and probe interval.
    pub window: Duration,
    pub interval: Duration,
}

/// Node `i`'s name, which is also its agent's node id.
pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

/// Zone names `zone-a`, `zone-b`, ...
pub fn zone_name(k: usize) -> String {
    let mut s = String::from("zone-");
    let mut k = k;
    loop {
        s.insert(5, (b'a' + (k % 26) as u8) as char);
        k /= 26;
        if k == 0 {
            break;
        }
        k -= 1;
    }
    s
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    if a < b { (a, b) } else { (b, a) }
}

impl LabSpec {
    /// `nodes` nodes, every pair clear, IPv4, 2 s windows, 100 ms interval.
    pub fn new(nodes: usize) -> Result<LabSpec> {
        if !(2..=MAX_LAB_NODES).contains(&nodes) {
            bail!("--nodes {nodes}: a lab has 2 to {MAX_LAB_NODES} nodes");
        }
        Ok(LabSpec {
            nodes,
            family: Family::V4,
            zones: vec![String::new(); nodes],
            links: BTreeMap::new(),
            window: Duration::from_secs(2),
            interval: Duration::from_millis(100),
        })
    }

    /// The demo's and the lab test's layout: zone a = node0, node1 (100 µs apart); zone b =
    /// node2, node3 (250 µs apart); 600 µs across zones, except node0–node3 at 1 ms. Four
    /// different values, far enough apart that a pair measured against the wrong one shows.
    pub fn two_zone_demo() -> Result<LabSpec> {
        let us = Duration::from_micros;
        let mut s = LabSpec::new(4)?.zoned(2, us(100), us(600))?;
        s.set(
            2,
            3,
            Shape {
                rtt: us(250),
                loss_pct: 0.0,
            },
        );
        s.set(
            0,
            3,
            Shape {
                rtt: us(1000),
                loss_pct: 0.0,
            },
        );
        Ok(s)
    }

    /// The same added RTT and loss on every pair.
    pub fn uniform(mut self, rtt: Duration, loss_pct: f64) -> Result<LabSpec> {
        check_shape("--delay/--loss", rtt, loss_pct)?;
        for a in 0..self.nodes {
            for b in a + 1..self.nodes {
                self.set(a, b, Shape { rtt, loss_pct });
            }
        }
        Ok(self)
    }

    /// `zones` zones of consecutive nodes (zone-a gets the first ones); pairs in one zone get
    /// `intra`, pairs across zones `inter`.
    pub fn zoned(mut self, zones: usize, intra: Duration, inter: Duration) -> Result<LabSpec> {
        if zones == 0 || zones > self.nodes {
            bail!(
                "--zones {zones}: between 1 and the number of nodes ({})",
                self.nodes
            );
        }
        check_shape("--intra-zone", intra, 0.0)?;
        check_shape("--inter-zone", inter, 0.0)?;
        self.zones = (0..self.nodes)
            .map(|i| zone_name(i * zones / self.nodes))
            .collect();
        for a in 0..self.nodes {
            for b in a + 1..self.nodes {
                let rtt = if self.zones[a] == self.zones[b] {
                    intra
                } else {
                    inter
                };
                let loss_pct = self.shape(a, b).loss_pct;
                self.set(a, b, Shape { rtt, loss_pct });
            }
        }
        Ok(self)
    }

    /// Reads a matrix file (see [`parse_matrix`]); it fixes the node count and may set zones.
    pub fn from_matrix_file(path: &std::path::Path) -> Result<LabSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the matrix file {}", path.display()))?;
        parse_matrix(&text).with_context(|| format!("matrix file {}", path.display()))
    }

    pub fn shape(&self, a: usize, b: usize) -> Shape {
        self.links.get(&pair(a, b)).copied().unwrap_or_default()
    }

    pub fn set(&mut self, a: usize, b: usize, s: Shape) {
        if s.is_clear() {
            self.links.remove(&pair(a, b));
        } else {
            self.links.insert(pair(a, b), s);
        }
    }

    /// The `--expected` file of `meshprobe matrix`: `src,dst,added_rtt` for every ordered pair.
    pub fn expected_csv(&self) -> String {
        let mut out =
            String::from("# added round-trip time injected by the lab\nsrc,dst,added_rtt\n");
        for a in 0..self.nodes {
            for b in 0..self.nodes {
                if a != b {
                    let us = self.shape(a, b).rtt.as_micros();
                    let _ = writeln!(out, "{},{},{us}us", node_name(a), node_name(b));
                }
            }
        }
        out
    }

    /// The injected matrix as a table (added RTT, and loss where set) for people.
    pub fn describe(&self) -> String {
        let w = 12;
        let mut out = format!("{:<w$}", "added RTT");
        for b in 0..self.nodes {
            out.push_str(&format!("{:>w$}", node_name(b)));
        }
        out.push('\n');
        for a in 0..self.nodes {
            let label = if self.zones[a].is_empty() {
                node_name(a)
            } else {
                format!("{} {}", node_name(a), &self.zones[a][5..])
            };
            out.push_str(&format!("{label:<w$}"));
            for b in 0..self.nodes {
                let cell = if a == b {
                    "-".to_string()
                } else {
                    let s = self.shape(a, b);
                    let mut c = fmt_duration(s.rtt);
                    if s.loss_pct > 0.0 {
                        c.push_str(&format!("/{}%", s.loss_pct));
                    }
                    c
                };
                out.push_str(&format!("{cell:>w$}"));
            }
            out.push('\n');
        }
        out
    }
}

/// `300us`, `1.5ms`, `0`.
pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us == 0 {
        "0".into()
    } else if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else if us >= 1000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{us}us")
    }
}

fn check_shape(what: &str, rtt: Duration, loss_pct: f64) -> Result<()> {
    if rtt > MAX_RTT {
        bail!(
            "{what} {}: at most {} of added RTT (the delay element holds each packet by \
             spinning on a CPU, half of it in each direction)",
            fmt_duration(rtt),
            fmt_duration(MAX_RTT)
        );
    }
    if !(0.0..=100.0).contains(&loss_pct) || loss_pct.is_nan() {
        bail!("{what}: loss {loss_pct}% is not between 0 and 100");
    }
    Ok(())
}

/// A loss percentage: `20%`, `20` or `0.5%`.
pub fn parse_loss(s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .with_context(|| format!("loss {s:?}: expected a percentage such as 20%"))?;
    if !(0.0..=100.0).contains(&v) {
        bail!("loss {s:?}: not between 0% and 100%");
    }
    Ok(v)
}

/// One matrix cell: `-`/`0` (clear), `DURATION`, or `DURATION/LOSS%`.
fn parse_cell(s: &str) -> Result<Shape> {
    if s == "-" || s == "0" {
        return Ok(Shape::default());
    }
    let (d, loss) = match s.split_once('/') {
        Some((d, l)) => (d, parse_loss(l)?),
        None => (s, 0.0),
    };
    let rtt = if d == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(d)
            .with_context(|| format!("{d:?}: expected a duration such as 300us or 1.5ms"))?
    };
    check_shape(&format!("{s:?}"), rtt, loss)?;
    Ok(Shape {
        rtt,
        loss_pct: loss,
    })
}

/// Parses a matrix file:
///
/// ```text
/// # added round-trip time between nodes (symmetric); DURATION or DURATION/LOSS%
///          node0   node1   node2   node3
/// zone     a       a       b       b
/// node0    -       100us   600us   600us
/// node1    100us   -       600us   600us/1%
/// node2    600us   600us   -       200us
/// node3    600us   600us/1% 200us  -
/// ```
///
/// The header names the nodes `node0..node{N-1}` (any order); the optional `zone` row names
/// each column's zone; every node has one row. Entries for `(a,b)` and `(b,a)` must agree.
pub fn parse_matrix(text: &str) -> Result<LabSpec> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty());
    let Some((hn, header)) = lines.next() else {
        bail!("empty: expected a header row of node names (node0 node1 ...)");
    };
    let cols: Vec<usize> = header
        .split_whitespace()
        .map(|name| {
            node_index(name).with_context(|| format!("line {hn}: header names node {name:?}"))
        })
        .collect::<Result<_>>()?;
    let n = cols.len();
    let mut seen = vec![false; n];
    for &c in &cols {
        if c >= n {
            bail!(
                "line {hn}: {} with only {n} nodes: name them node0..node{}",
                node_name(c),
                n - 1
            );
        }
        if seen[c] {
            bail!("line {hn}: {} appears twice in the header", node_name(c));
        }
        seen[c] = true;
    }
    let mut spec = LabSpec::new(n).with_context(|| format!("line {hn}"))?;
    let mut cells: BTreeMap<(usize, usize), (usize, Shape)> = BTreeMap::new();
    let mut rows_seen = vec![false; n];
    for (ln, line) in lines {
        let mut words = line.split_whitespace();
        let first = words.next().expect("non-empty line");
        let rest: Vec<&str> = words.collect();
        if rest.len() != n {
            bail!(
                "line {ln}: {} entries after {first:?}, expected {n}",
                rest.len()
            );
        }
        if first == "zone" {
            for (k, z) in rest.iter().enumerate() {
                spec.zones[cols[k]] = if z.starts_with("zone-") {
                    z.to_string()
                } else {
                    format!("zone-{z}")
                };
            }
            continue;
        }
        let a = node_index(first).with_context(|| format!("line {ln}: row {first:?}"))?;
        if a >= n {
            bail!("line {ln}: row {first:?} is not one of the header's nodes");
        }
        if rows_seen[a] {
            bail!("line {ln}: a second row for {first}");
        }
        rows_seen[a] = true;
        for (k, cell) in rest.iter().enumerate() {
            let b = cols[k];
            let s = parse_cell(cell)
                .with_context(|| format!("line {ln}, {first}->{}", node_name(b)))?;
            if a == b {
                if !s.is_clear() {
                    bail!("line {ln}: {first}->{first} must be '-' (a node does not probe itself)");
                }
                continue;
            }
            if let Some(&(other_ln, other)) = cells.get(&(b, a))
                && other != s
            {
                bail!(
                    "line {ln}: {first}->{} is {cell} but line {other_ln} gives {}->{first} \
                         another value; the matrix must be symmetric (the delay element adds \
                         half of a pair's RTT in each direction)",
                    node_name(b),
                    node_name(b)
                );
            }
            cells.insert((a, b), (ln, s));
        }
    }
    if let Some(missing) = rows_seen.iter().position(|s| !s) {
        bail!("no row for {}", node_name(missing));
    }
    for ((a, b), (_, s)) in cells {
        spec.set(a, b, s);
    }
    Ok(spec)
}

fn node_index(name: &str) -> Result<usize> {
    name.strip_prefix("node")
        .and_then(|d| d.parse::<usize>().ok())
        .with_context(|| "node names are node0, node1, ... (the lab's agent ids)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "\
# demo
         node0   node1   node2   node3
zone     a       a       b       b
node0    -       100us   600us   600us
node1    100us   -       600us   600us/1%
node2    600us   600us   -       200us   # comment
node3    600us   600us/1% 200us  -
";

    #[test]
    fn matrix_file_sets_pairs_and_zones() {
        let s = parse_matrix(M).unwrap();
        assert_eq!(s.nodes, 4);
        assert_eq!(s.zones, vec!["zone-a", "zone-a", "zone-b", "zone-b"]);
        assert_eq!(s.shape(0, 1).rtt, Duration::from_micros(100));
        assert_eq!(s.shape(2, 0).rtt, Duration::from_micros(600));
        assert_eq!(s.shape(3, 1).loss_pct, 1.0);
        assert_eq!(s.shape(2, 3).rtt, Duration::from_micros(200));
        assert!(s.expected_csv().contains("node3,node2,200us\n"));
    }

    #[test]
    fn asymmetric_matrix_is_refused_with_both_lines() {
        let bad = M.replace(
            "node2    600us   600us   -       200us",
            "node2    500us   600us   -       200us",
        );
        let e = format!("{:#}", parse_matrix(&bad).unwrap_err());
        assert!(e.contains("symmetric"), "{e}");
        assert!(e.contains("line 6") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn bad_cells_and_rows_are_named() {
        let e = format!(
            "{:#}",
            parse_matrix("node0 node1\nnode0 - 3 parsecs\nnode1 1ms -\n").unwrap_err()
        );
        assert!(e.contains("line 2"), "{e}");
        let e = format!(
            "{:#}",
            parse_matrix("node0 node1\nnode0 - 1ms\n").unwrap_err()
        );
        assert!(e.contains("no row for node1"), "{e}");
        let e = format!(
            "{:#}",
            parse_matrix("node0 node1\nnode0 - 300ms\nnode1 300ms -\n").unwrap_err()
        );
        assert!(e.contains("at most 200ms"), "{e}");
        let e = format!("{:#}", parse_matrix("node0 node2\n").unwrap_err());
        assert!(e.contains("node0..node1"), "{e}");
    }

    #[test]
    fn zones_split_consecutive_nodes() {
        let s = LabSpec::new(5)
            .unwrap()
            .zoned(2, Duration::from_micros(50), Duration::from_micros(500))
            .unwrap();
        assert_eq!(
            s.zones,
            vec!["zone-a", "zone-a", "zone-a", "zone-b", "zone-b"]
        );
        assert_eq!(s.shape(0, 2).rtt, Duration::from_micros(50));
        assert_eq!(s.shape(2, 3).rtt, Duration::from_micros(500));
        assert_eq!(zone_name(26), "zone-aa");
    }

    #[test]
    fn uniform_and_limits() {
        let s = LabSpec::new(3)
            .unwrap()
            .uniform(Duration::from_micros(200), 5.0)
            .unwrap();
        assert_eq!(s.links.len(), 3);
        assert_eq!(
            s.shape(2, 1),
            Shape {
                rtt: Duration::from_micros(200),
                loss_pct: 5.0
            }
        );
        assert!(LabSpec::new(1).is_err());
        assert!(parse_loss("120%").is_err());
        assert_eq!(parse_loss("20%").unwrap(), 20.0);
    }
}
