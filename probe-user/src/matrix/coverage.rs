//! Coverage figures: with pinglists not every ordered pair is probed, so the views say how much
//! of the mesh the shown data covers.
use super::{
    Model,
    mark::{Mark, mark},
    zones::ZoneMatrix,
};

/// Of the node matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCoverage {
    /// Ordered pairs with a current summary, of the n(n−1) possible among the shown nodes.
    pub probed: usize,
    pub possible: usize,
    /// Nodes probed by at least one agent, of all shown nodes.
    pub nodes_probed: usize,
    pub nodes: usize,
    /// The fewest agents probing any one node (0 when a node is not probed at all).
    pub min_probers: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// `None` in the zone view.
    pub nodes: Option<NodeCoverage>,
    /// Ordered zone pairs with a measured node pair, of those possible; `None` without zone
    /// labels.
    pub zone_pairs: Option<(usize, usize)>,
}

impl Coverage {
    /// The node matrix of `n` nodes whose cell `(src, dst)` is `mark(src, dst)`: a cell counts
    /// as probed when it has a current summary (fresh, or the last one of a peer that left).
    pub fn of_nodes(n: usize, mark: impl Fn(usize, usize) -> Mark, zones: &ZoneMatrix) -> Coverage {
        let probers: Vec<usize> = (0..n)
            .map(|dst| {
                (0..n)
                    .filter(|&src| matches!(mark(src, dst), Mark::Fresh | Mark::Left))
                    .count()
            })
            .collect();
        Coverage {
            nodes: Some(NodeCoverage {
                probed: probers.iter().sum(),
                possible: n * n.saturating_sub(1),
                nodes_probed: probers.iter().filter(|&&p| p > 0).count(),
                nodes: n,
                min_probers: probers.iter().copied().min().unwrap_or(0),
            }),
            zone_pairs: Self::zone_pairs(zones),
        }
    }

    /// The coverage of the model's nodes (as the node view shows it without `--expected`).
    pub fn of_model(model: &Model) -> Coverage {
        let nodes: Vec<&str> = model.nodes().collect();
        Self::of_nodes(
            nodes.len(),
            |s, d| mark(model, nodes[s], nodes[d]),
            model.zone_matrix(),
        )
    }

    pub fn of_zones(zones: &ZoneMatrix) -> Coverage {
        Coverage {
            nodes: None,
            zone_pairs: Self::zone_pairs(zones),
        }
    }

    fn zone_pairs(zones: &ZoneMatrix) -> Option<(usize, usize)> {
        zones
            .has_zones()
            .then(|| (zones.covered().min(zones.possible), zones.possible))
    }

    /// `coverage: pairs probed 10/12 (83%), nodes probed 4/4 (fewest probers 2), zone pairs
    /// covered 4/4`; empty when there is nothing to say.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.nodes.filter(|c| c.nodes > 0) {
            parts.push(format!(
                "pairs probed {}/{} ({})",
                c.probed,
                c.possible,
                percent(c.probed, c.possible)
            ));
            parts.push(format!(
                "nodes probed {}/{} (fewest probers {})",
                c.nodes_probed, c.nodes, c.min_probers
            ));
        }
        if let Some((covered, possible)) = self.zone_pairs {
            parts.push(format!("zone pairs covered {covered}/{possible}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("coverage: {}", parts.join(", "))
        }
    }
}

/// `83%`, rounded down so that anything short of all never reads 100%.
fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{}%", part * 100 / whole)
}
