//! `--svg` / `--html`: the heatmap as a standalone SVG (one `<rect class="cell …">` per ordered
//! pair), and an HTML page that embeds it. Every text from the data is XML-escaped.
use std::fmt::Write as _;

use super::view::{Mark, View};

const MARGIN: usize = 16;
/// Rough width of one character at 12 px sans-serif, to size columns without a font.
const CHAR_W: usize = 7;
const LINE_H: usize = 14;
const LEGEND_BAR_W: usize = 200;
/// Where the colour bar starts, after the metric's name.
const LEGEND_BAR_X: usize = MARGIN + 110;
/// The cell styles the legend explains: class, fill, label, drawn faded and dashed (as the
/// cells are).
const SWATCHES: [(&str, &str, &str, bool); 4] = [
    ("stale", "#57bb8a", "stale (> 3 windows old)", true),
    ("left", "#57bb8a", "peer left", true),
    ("unprobed", "#ffffff", "not probed", false),
    ("nodata", "#f7f7f7", "no data", false),
];

/// x of each swatch after the colour bar, and where the legend ends.
fn swatch_xs() -> ([usize; SWATCHES.len()], usize) {
    let mut x = LEGEND_BAR_X + LEGEND_BAR_W + 24;
    let mut xs = [0; SWATCHES.len()];
    for (i, (_, _, label, _)) in SWATCHES.iter().enumerate() {
        xs[i] = x;
        x += 16 + chars(label) * CHAR_W + 12;
    }
    (xs, x)
}

/// `&`, `<`, `>`, `"`, `'` as entities: safe in text and in attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// The SVG document (with its XML declaration).
pub fn svg(v: &View) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}",
        svg_element(v)
    )
}

/// An HTML page showing the same SVG inline.
pub fn html(v: &View) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>body {{ font-family: sans-serif; margin: 1em; }}</style>\n\
         </head>\n<body>\n{}</body>\n</html>\n",
        esc(&v.title),
        svg_element(v)
    )
}

fn svg_element(v: &View) -> String {
    let n = v.nodes.len();
    let has_second = v.has_second_line();
    let has_marks = v.cells.iter().flatten().any(|c| c.mark.word().is_some());
    let lines = 1 + usize::from(has_second) + usize::from(has_marks);
    let cell_h = LINE_H * lines + 14;
    let widest_cell = v
        .cells
        .iter()
        .flatten()
        .map(|c| chars(&c.text).max(View::second_line(c).map_or(0, |l| chars(&l))))
        .chain(v.nodes.iter().map(|n| chars(&n.id).max(chars(&n.zone))))
        .max()
        .unwrap_or(0);
    let cell_w = (widest_cell * CHAR_W + 16).max(80);
    let label_w = v
        .nodes
        .iter()
        .map(|n| chars(&n.id).max(chars(&n.zone)))
        .max()
        .unwrap_or(0)
        * CHAR_W
        + 16;
    let header_h = if v.zones { 2 * LINE_H + 8 } else { LINE_H + 8 };
    let x0 = MARGIN + label_w;
    let y0 = 64 + header_h;
    let grid_bottom = y0 + n * cell_h;
    let subtitle = subtitle(v);
    let coverage = v.coverage.text();
    let width = (x0 + n * cell_w + MARGIN)
        .max(MARGIN * 2 + chars(&v.title) * 11)
        .max(MARGIN * 2 + chars(&subtitle) * CHAR_W)
        .max(swatch_xs().1 + MARGIN)
        .max(MARGIN * 2 + chars(&coverage) * CHAR_W);
    let height = grid_bottom + if coverage.is_empty() { 70 } else { 90 };

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<title>{}</title>", esc(&v.title));
    s.push_str(
        "<style>\n\
         .cell { stroke: #ffffff; stroke-width: 1; }\n\
         .cell.stale, .cell.left { fill-opacity: 0.35; stroke: #666666; stroke-dasharray: 4 2; }\n\
         .cell.nodata { fill: #f7f7f7; stroke: #cccccc; }\n\
         .cell.unprobed { fill: #ffffff; stroke: #e4e4e4; }\n\
         .value { fill: #222222; }\n\
         .dim { fill: #666666; }\n\
         .label { fill: #222222; font-weight: bold; }\n\
         </style>\n",
    );
    s.push_str("<defs><linearGradient id=\"scale\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">");
    for i in 0..=4 {
        let t = f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<stop offset=\"{t}\" stop-color=\"{}\"/>",
            hex(super::view::rgb(t))
        );
    }
    s.push_str("</linearGradient></defs>\n");
    let _ = writeln!(
        s,
        "<rect class=\"background\" width=\"{width}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
    let _ = writeln!(
        s,
        "<text class=\"title\" x=\"{MARGIN}\" y=\"28\" font-size=\"18\" font-weight=\"bold\">{}</text>",
        esc(&v.title)
    );
    let _ = writeln!(
        s,
        "<text class=\"subtitle dim\" x=\"{MARGIN}\" y=\"48\">{}</text>",
        esc(&subtitle)
    );

    // Axis labels: destinations across the top, sources down the side.
    let _ = writeln!(
        s,
        "<text class=\"axis dim\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        x0 - 8,
        64 + LINE_H,
        esc(v.corner())
    );
    s.push_str("<g class=\"labels\">\n");
    for (i, node) in v.nodes.iter().enumerate() {
        let cx = x0 + i * cell_w + cell_w / 2;
        let _ = writeln!(
            s,
            "<text class=\"label col\" x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            64 + LINE_H,
            esc(&node.id)
        );
        let cy = y0 + i * cell_h + cell_h / 2 + 4;
        let zoned = !node.zone.is_empty();
        let _ = writeln!(
            s,
            "<text class=\"label row\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            x0 - 8,
            if zoned { cy - LINE_H / 2 } else { cy },
            esc(&node.id)
        );
        if zoned {
            let _ = writeln!(
                s,
                "<text class=\"zone col dim\" x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                64 + 2 * LINE_H,
                esc(&node.zone)
            );
            let _ = writeln!(
                s,
                "<text class=\"zone row dim\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                x0 - 8,
                cy + LINE_H / 2,
                esc(&node.zone)
            );
        }
    }
    s.push_str("</g>\n<g class=\"cells\">\n");
    for (r, (src, row)) in v.nodes.iter().zip(&v.cells).enumerate() {
        for (c, (dst, cell)) in v.nodes.iter().zip(row).enumerate() {
            if cell.mark == Mark::Diagonal {
                continue;
            }
            let (x, y) = (x0 + c * cell_w, y0 + r * cell_h);
            let (class, fill) = match (cell.mark, cell.t) {
                (Mark::NoData, _) => ("nodata", "#f7f7f7".to_string()),
                (Mark::Unprobed, _) => ("unprobed", "#ffffff".to_string()),
                (m, t) => (
                    match m {
                        Mark::Stale => "stale",
                        Mark::Left => "left",
                        _ => "fresh",
                    },
                    t.map_or_else(|| "#dddddd".to_string(), |t| hex(super::view::rgb(t))),
                ),
            };
            let _ = writeln!(
                s,
                "<g class=\"pair\" data-src=\"{}\" data-dst=\"{}\">",
                esc(&src.id),
                esc(&dst.id)
            );
            let _ = writeln!(
                s,
                "<title>{} \u{2192} {}: {}</title>",
                esc(&src.id),
                esc(&dst.id),
                esc(&if cell.mark == Mark::Unprobed {
                    "not probed".to_string()
                } else {
                    cell.one_line()
                })
            );
            let _ = writeln!(
                s,
                "<rect class=\"cell {class}\" x=\"{x}\" y=\"{y}\" width=\"{cell_w}\" \
                 height=\"{cell_h}\" fill=\"{fill}\"/>"
            );
            let cx = x + cell_w / 2;
            let mut ty = y + 7 + LINE_H;
            let (text, class) = match cell.mark {
                Mark::NoData => ("no data", "value dim"),
                Mark::Unprobed => (cell.text.as_str(), "value dim"),
                _ => (cell.text.as_str(), "value"),
            };
            let _ = writeln!(
                s,
                "<text class=\"{class}\" x=\"{cx}\" y=\"{ty}\" text-anchor=\"middle\">{}</text>",
                esc(text)
            );
            if let Some(l) = View::second_line(cell) {
                ty += LINE_H;
                let class = if cell.expected.is_some() {
                    "expected"
                } else {
                    "detail"
                };
                let _ = writeln!(
                    s,
                    "<text class=\"{class} dim\" x=\"{cx}\" y=\"{ty}\" \
                     text-anchor=\"middle\">{}</text>",
                    esc(&l)
                );
            }
            if let Some(w) = cell.mark.word() {
                ty += LINE_H;
                let _ = writeln!(
                    s,
                    "<text class=\"mark dim\" x=\"{cx}\" y=\"{ty}\" text-anchor=\"middle\" \
                     font-style=\"italic\">{w}</text>"
                );
            }
            s.push_str("</g>\n");
        }
    }
    s.push_str("</g>\n");
    legend(&mut s, v, grid_bottom + 24);
    if !coverage.is_empty() {
        let _ = writeln!(
            s,
            "<text class=\"coverage dim\" x=\"{MARGIN}\" y=\"{}\">{}</text>",
            grid_bottom + 24 + 50,
            esc(&coverage)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// `network RTT p50 · newest window 2023-11-14T22:13:20Z (10s) · 12 windows · file x`.
fn subtitle(v: &View) -> String {
    let newest = match &v.newest {
        Some((t, len)) => format!("newest window {t} ({})", humantime::format_duration(*len)),
        None => "no window yet".into(),
    };
    format!(
        "{} \u{b7} {newest} \u{b7} {} windows \u{b7} {}",
        v.metric.label(),
        v.windows,
        v.source
    )
}

/// The colour bar with its ends, then what the cell styles mean.
fn legend(s: &mut String, v: &View, y: usize) {
    s.push_str("<g class=\"legend\">\n");
    let _ = writeln!(
        s,
        "<text class=\"dim\" x=\"{MARGIN}\" y=\"{}\">{}</text>",
        y + 10,
        esc(v.metric.label())
    );
    let bx = LEGEND_BAR_X;
    let _ = writeln!(
        s,
        "<rect class=\"legend-bar\" x=\"{bx}\" y=\"{y}\" width=\"{LEGEND_BAR_W}\" height=\"12\" \
         fill=\"url(#scale)\" stroke=\"#999999\"/>"
    );
    let (lo, hi) = match v.scale {
        Some(sc) => (
            super::view::fmt_value(v.metric, sc.min),
            format!(
                "{}{}",
                super::view::fmt_value(v.metric, sc.max),
                if sc.fixed { " (fixed)" } else { "" }
            ),
        ),
        None => ("no values".into(), String::new()),
    };
    let _ = writeln!(
        s,
        "<text class=\"legend-min\" x=\"{bx}\" y=\"{}\">{}</text>",
        y + 28,
        esc(&lo)
    );
    let _ = writeln!(
        s,
        "<text class=\"legend-max\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        bx + LEGEND_BAR_W,
        y + 28,
        esc(&hi)
    );
    for ((class, fill, label, faded), x) in SWATCHES.iter().zip(swatch_xs().0) {
        let _ = writeln!(
            s,
            "<rect class=\"legend-swatch {class}\" x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" \
             fill=\"{fill}\" fill-opacity=\"{}\" stroke=\"#666666\"{}/>",
            if *faded { "0.35" } else { "1" },
            if *faded {
                " stroke-dasharray=\"4 2\""
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "<text class=\"dim\" x=\"{}\" y=\"{}\">{label}</text>",
            x + 16,
            y + 10
        );
    }
    s.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{
        Metric, Model,
        model::tests::at,
        view::tests::{model, settings},
    };

    fn cell_rects<'a>(doc: &'a roxmltree::Document<'a>) -> Vec<roxmltree::Node<'a, 'a>> {
        doc.descendants()
            .filter(|n| {
                n.has_tag_name("rect")
                    && n.attribute("class")
                        .is_some_and(|c| c.split(' ').any(|w| w == "cell"))
            })
            .collect()
    }

    #[test]
    fn well_formed_with_every_label_and_one_cell_per_ordered_pair() {
        let v = View::build(&model(), &settings("a,b,400us\n"), Metric::P50);
        let text = svg(&v);
        let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );

        let rects = cell_rects(&doc);
        assert_eq!(rects.len(), 3 * 2, "n(n-1) cells for 3 nodes");
        let mut pairs: Vec<(String, String)> = rects
            .iter()
            .map(|r| {
                let g = r.parent().unwrap();
                (
                    g.attribute("data-src").unwrap().to_string(),
                    g.attribute("data-dst").unwrap().to_string(),
                )
            })
            .collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), 6);
        assert!(pairs.iter().all(|(s, d)| s != d));

        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        for id in ["a", "b", "c"] {
            let labels = doc
                .descendants()
                .filter(|n| n.attribute("class") == Some("label col") && n.text() == Some(id))
                .count();
            assert_eq!(labels, 1, "column label {id}");
            let labels = doc
                .descendants()
                .filter(|n| n.attribute("class") == Some("label row") && n.text() == Some(id))
                .count();
            assert_eq!(labels, 1, "row label {id}");
        }
        // Values, the expected RTT, the marks, the title (escaped) and the newest window.
        for want in [
            "412µs",
            "(+400µs)",
            "stale",
            "peer left",
            "no data",
            "lab <mesh> & co",
        ] {
            assert!(texts.contains(&want), "{want} in {texts:?}");
        }
        assert!(text.contains("lab &lt;mesh&gt; &amp; co"));
        assert!(
            texts
                .iter()
                .any(|t| t.contains("newest window 1970-01-01T00:02:43Z (10s)"))
        );
        // The a->b cell: fresh, coloured on the scale; c->b: stale (c stopped reporting);
        // a->c: not probed (a reports, without c).
        let class_of = |s: &str, d: &str| {
            rects
                .iter()
                .find(|r| {
                    let g = r.parent().unwrap();
                    g.attribute("data-src") == Some(s) && g.attribute("data-dst") == Some(d)
                })
                .and_then(|r| r.attribute("class"))
                .unwrap()
        };
        assert_eq!(class_of("a", "b"), "cell fresh");
        assert_eq!(class_of("c", "b"), "cell stale");
        assert_eq!(class_of("c", "a"), "cell left");
        assert_eq!(class_of("a", "c"), "cell unprobed");
        assert_eq!(class_of("b", "c"), "cell unprobed");
        assert!(texts.contains(&"a → c: not probed"), "{texts:?}");
        // The coverage figures under the legend.
        let coverage = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("coverage dim"))
            .unwrap();
        assert_eq!(
            coverage.text(),
            Some("coverage: pairs probed 3/6 (50%), nodes probed 2/3 (fewest probers 0)")
        );
        // Legend: bar with the scale's ends.
        let legend_min = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("legend-min"))
            .unwrap();
        assert_eq!(legend_min.text(), Some("45.3µs"));
    }

    #[test]
    fn partial_and_zone_views_are_well_formed() {
        let m = crate::matrix::view::tests::partial();
        let v = View::build(&m, &settings(""), Metric::P50);
        let text = svg(&v);
        let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
        let rects = cell_rects(&doc);
        assert_eq!(rects.len(), 4 * 3);
        let count = |class: &str| {
            rects
                .iter()
                .filter(|r| r.attribute("class") == Some(class))
                .count()
        };
        assert_eq!(count("cell fresh"), 5);
        assert_eq!(count("cell unprobed"), 4);
        assert_eq!(count("cell stale"), 1);
        assert_eq!(count("cell nodata"), 2);
        assert!(
            doc.descendants()
                .any(|n| n.attribute("class") == Some("legend-swatch unprobed"))
        );
        let v = View::build_zones(&m, &settings(""), Metric::P99);
        let text = svg(&v);
        let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
        assert_eq!(
            cell_rects(&doc).len(),
            4,
            "z1, z2 to each other and themselves"
        );
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"src zone \\ dst zone"), "{texts:?}");
        assert!(texts.contains(&"loss 10%"), "{texts:?}");
        assert!(
            texts.contains(&"coverage: zone pairs covered 4/4"),
            "{texts:?}"
        );
    }

    #[test]
    fn node_ids_are_escaped_everywhere() {
        let mut m = Model::default();
        let mut s = at("<a&\"b'>", "x", 1, 1000);
        s.src_zone = "z<1>".into();
        m.ingest(s).unwrap();
        let v = View::build(&m, &settings(""), Metric::P50);
        let page = html(&v);
        assert!(page.contains("<title>lab &lt;mesh&gt; &amp; co</title>"));
        // The page is HTML; the SVG it embeds must be well-formed XML on its own.
        let embedded = &page[page.find("<svg").unwrap()..page.rfind("</svg>").unwrap() + 6];
        for text in [svg(&v), embedded.to_string()] {
            let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
            assert_eq!(cell_rects(&doc).len(), 2);
            assert!(
                doc.descendants()
                    .any(|n| n.attribute("data-src") == Some("<a&\"b'>"))
            );
            assert!(doc.descendants().any(|n| n.text() == Some("z<1>")));
        }
    }
}
