//! The snapshot as a person reads it (pure): a few headline [`Tile`]s and [`Panel`]s of
//! rows, and the page's server-rendered first paint ([`page`]).
//!
//! The page's script draws the same tiles and panels from `/status.json` with the same
//! markup, so what a panel shows is decided here once, for the first paint and for every
//! refresh. Every text put into the page is escaped ([`escape`]).

use super::collect::{Part, Snapshot};
use serde::Serialize;
use std::fmt::Write;

/// The page's shell: style, layout and the refreshing script; `{{...}}` marks what
/// [`page`] fills in.
const PAGE: &str = include_str!("page.html");

/// A headline number.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tile {
    pub id: &'static str,
    pub label: &'static str,
    /// The number, or `-` when its source did not answer.
    pub value: String,
    pub note: &'static str,
}

/// A table column; numbers are right-aligned.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Column {
    pub title: &'static str,
    pub num: bool,
}

/// One row; `key` names it for scripts and tests (`data-key`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub key: String,
    pub cells: Vec<String>,
}

/// A titled table with what it means, and why a source it needs did not answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Panel {
    pub id: &'static str,
    pub title: &'static str,
    pub explain: &'static str,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    /// Shown instead of rows when there are none.
    pub empty: &'static str,
    /// One sentence per source that did not answer.
    pub unavailable: Vec<String>,
}

/// What `/status.json` serves: the snapshot itself, and it drawn as tiles and panels.
#[derive(Serialize)]
pub struct View<'a> {
    pub snapshot: &'a Snapshot,
    pub tiles: Vec<Tile>,
    pub panels: Vec<Panel>,
}

impl<'a> View<'a> {
    pub fn of(snapshot: &'a Snapshot) -> Self {
        View {
            snapshot,
            tiles: tiles(snapshot),
            panels: panels(snapshot),
        }
    }
}

fn col(title: &'static str) -> Column {
    Column { title, num: false }
}

fn num(title: &'static str) -> Column {
    Column { title, num: true }
}

/// Why a source did not answer, if it did not.
fn why<T>(part: &Part<T>) -> Option<String> {
    match part {
        Part::Unavailable(why) => Some(why.clone()),
        Part::Ok(_) => None,
    }
}

/// A count, or `-` when its source did not answer.
fn count<T>(part: &Part<T>, f: impl FnOnce(&T) -> i64) -> String {
    part.ok().map_or_else(|| "-".into(), |v| f(v).to_string())
}

/// The headline numbers.
pub fn tiles(s: &Snapshot) -> Vec<Tile> {
    let finished_1m = |state: &str| {
        count(&s.finished, |rows| {
            rows.iter()
                .filter(|r| r.state == state)
                .map(|r| r.last_1m)
                .sum()
        })
    };
    vec![
        Tile {
            id: "completed-1m",
            label: "completed, last minute",
            value: finished_1m("completed"),
            note: "orders that reached completed",
        },
        Tile {
            id: "failed-1m",
            label: "failed, last minute",
            value: finished_1m("failed"),
            note: "rejected, cancelled, past their deadline or invalid",
        },
        Tile {
            id: "open",
            label: "open orders",
            value: match (s.being_placed.ok(), s.tier_chains.ok()) {
                (Some(placing), Some(chains)) => {
                    (placing + chains.iter().map(|c| c.chains).sum::<i64>()).to_string()
                }
                _ => "-".into(),
            },
            note: "being placed, or between status checks",
        },
        Tile {
            id: "waiting",
            label: "checks waiting",
            value: count(&s.tier_lag, |rows| rows.iter().map(|r| r.waiting).sum()),
            note: "in the poll stage's topics",
        },
    ]
}

/// The tables, in the page's order.
pub fn panels(s: &Snapshot) -> Vec<Panel> {
    vec![finished(s), open(s), tiers(s)]
}

fn finished(s: &Snapshot) -> Panel {
    let rows = s.finished.ok().map_or_else(Vec::new, |rows| {
        rows.iter()
            .map(|r| {
                let name = match &r.reason {
                    Some(reason) => format!("{}: {reason}", r.state),
                    None => r.state.clone(),
                };
                Row {
                    key: name.replace(": ", "-"),
                    cells: vec![
                        name,
                        r.last_1m.to_string(),
                        r.last_5m.to_string(),
                        r.last_15m.to_string(),
                        format!("{:.1}", r.last_15m as f64 / 15.0),
                    ],
                }
            })
            .collect()
    });
    Panel {
        id: "finished",
        title: "Throughput",
        explain: "Orders that reached a final state, by state and failure reason, from the orders table.",
        columns: vec![
            col("state"),
            num("last 1 min"),
            num("last 5 min"),
            num("last 15 min"),
            num("per min (15 min)"),
        ],
        rows,
        empty: "No order reached a final state in the last 15 minutes.",
        unavailable: why(&s.finished).into_iter().collect(),
    }
}

fn open(s: &Snapshot) -> Panel {
    let mut rows = Vec::new();
    if let Some(placing) = s.being_placed.ok() {
        rows.push(Row {
            key: "placing".into(),
            cells: vec!["being placed".into(), placing.to_string()],
        });
    }
    if let Some(chains) = s.tier_chains.ok() {
        rows.push(Row {
            key: "checking".into(),
            cells: vec![
                "between status checks".into(),
                chains.iter().map(|c| c.chains).sum::<i64>().to_string(),
            ],
        });
    }
    Panel {
        id: "open",
        title: "Open orders",
        explain: "Orders not final yet: being placed (their dispatch claim is new or placing), or placed and between status checks (an open check chain; per tier below).",
        columns: vec![col("where"), num("orders")],
        rows,
        empty: "No open order.",
        unavailable: [why(&s.being_placed), why(&s.tier_chains)]
            .into_iter()
            .flatten()
            .collect(),
    }
}

/// One row per tier of the schedule (and `first`), Kafka's count next to PostgreSQL's.
fn tiers(s: &Snapshot) -> Panel {
    let mut rows: Vec<Row> = Vec::new();
    let chains = |tier: &str| {
        count(&s.tier_chains, |rows| {
            rows.iter()
                .filter(|r| r.tier == tier)
                .map(|r| r.chains)
                .sum()
        })
    };
    if let Some(lag) = s.tier_lag.ok() {
        for t in lag {
            rows.push(Row {
                key: t.tier.clone(),
                cells: vec![
                    t.tier.clone(),
                    t.topic.clone(),
                    t.waiting.to_string(),
                    chains(&t.tier),
                ],
            });
        }
    }
    // Tiers PostgreSQL knows and Kafka did not name: a tier no longer configured, or every
    // tier when Kafka did not answer.
    if let Some(known) = s.tier_chains.ok() {
        for c in known {
            if !rows.iter().any(|r| r.key == c.tier) {
                rows.push(Row {
                    key: c.tier.clone(),
                    cells: vec![c.tier.clone(), "-".into(), "-".into(), c.chains.to_string()],
                });
            }
        }
    }
    Panel {
        id: "tiers",
        title: "Retry depth per tier",
        explain: "Status checks waiting in each of the poll stage's topics (its consumer group's lag), and the open check chains whose next check waits on that tier (check_chains).",
        columns: vec![
            col("tier"),
            col("topic"),
            num("waiting in Kafka"),
            num("open chains"),
        ],
        rows,
        empty: "No tier configured.",
        unavailable: [why(&s.tier_lag), why(&s.tier_chains)]
            .into_iter()
            .flatten()
            .collect(),
    }
}

/// `text` safe inside HTML text and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn tiles_html(tiles: &[Tile]) -> String {
    let mut out = String::new();
    for t in tiles {
        let _ = write!(
            out,
            "<div class=\"tile\" id=\"tile-{}\"><div class=\"value\">{}</div>\
             <div class=\"label\">{}</div><div class=\"note\">{}</div></div>",
            t.id,
            escape(&t.value),
            escape(t.label),
            escape(t.note)
        );
    }
    out
}

fn panel_html(p: &Panel) -> String {
    let mut out = format!(
        "<section class=\"panel\" id=\"panel-{}\"><h2>{}</h2><p class=\"explain\">{}</p>",
        p.id,
        escape(p.title),
        escape(p.explain)
    );
    for why in &p.unavailable {
        let _ = write!(out, "<p class=\"unavailable\">{}</p>", escape(why));
    }
    if p.rows.is_empty() {
        let _ = write!(out, "<p class=\"empty\">{}</p>", escape(p.empty));
    } else {
        out.push_str("<table><thead><tr>");
        for c in &p.columns {
            let class = if c.num { " class=\"num\"" } else { "" };
            let _ = write!(out, "<th{class}>{}</th>", escape(c.title));
        }
        out.push_str("</tr></thead><tbody>");
        for r in &p.rows {
            let _ = write!(out, "<tr data-key=\"{}\">", escape(&r.key));
            for (cell, c) in r.cells.iter().zip(&p.columns) {
                let class = if c.num { " class=\"num\"" } else { "" };
                let _ = write!(out, "<td{class}>{}</td>", escape(cell));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    out
}

/// The whole page for `snapshot`, numbers included, so it reads without the script.
pub fn page(snapshot: &Snapshot) -> String {
    let view = View::of(snapshot);
    let place = escape(&format!(
        "topic prefix \"{}\", poll group {}",
        snapshot.topic_prefix, snapshot.poll_group
    ));
    fill(
        PAGE,
        &[
            ("where", place),
            ("taken", escape(&snapshot.taken_at.to_rfc3339())),
            ("took", snapshot.took_ms.to_string()),
            ("tiles", tiles_html(&view.tiles)),
            ("panels", view.panels.iter().map(panel_html).collect()),
        ],
    )
}

/// `template` with each `{{name}}` replaced by its value, in one pass: a value that
/// happens to contain `{{...}}` is left as it is.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}").and_then(|end| {
            let name = &after[..end];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (v, end))
        }) {
            Some((value, end)) => {
                out.push_str(value);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
