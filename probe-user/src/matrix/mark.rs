//! The state of one cell of the node matrix: what the views draw and the coverage counts.
use super::{Model, model::Freshness};

/// The state of one cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// src == dst: left blank.
    Diagonal,
    /// No summary for this pair, and its source does not report: missing.
    NoData,
    /// Its source reports, but not this pair: not on the source's pinglist.
    Unprobed,
    Fresh,
    Stale,
    Left,
}

impl Mark {
    /// The marker after a value, in text and terminal (explained by [`super::view::MARKS_LEGEND`]).
    pub fn marker(self) -> &'static str {
        match self {
            Mark::Stale => "*",
            Mark::Left => "!",
            _ => "",
        }
    }

    /// The word the SVG writes under a value.
    pub fn word(self) -> Option<&'static str> {
        match self {
            Mark::Stale => Some("stale"),
            Mark::Left => Some("peer left"),
            _ => None,
        }
    }
}

/// The state of a node pair's cell. Without a current summary: not probed when its source
/// reports (an agent reports every peer of its pinglist every window, lost or not), stale or
/// missing when it does not.
pub fn mark(model: &Model, src: &str, dst: &str) -> Mark {
    if src == dst {
        return Mark::Diagonal;
    }
    match model.get(src, dst).map(|s| model.freshness(s)) {
        Some(Freshness::Fresh) => Mark::Fresh,
        Some(Freshness::Left) => Mark::Left,
        _ if model.reporting(src) => Mark::Unprobed,
        Some(Freshness::Stale) => Mark::Stale,
        None => Mark::NoData,
    }
}
