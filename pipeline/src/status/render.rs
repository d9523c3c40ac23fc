//! The page's server-rendered first paint ([`page`]): the tiles and panels of
//! `panels.rs` as HTML in the page's shell (`page.html`), so the page shows numbers
//! without its script. Every text put into the page is escaped ([`escape`]).

use super::collect::Snapshot;
use super::panels::{Panel, Tile, View};
use std::fmt::Write;

/// The page's shell: style, layout and the refreshing script; `{{...}}` marks what
/// [`page`] fills in.
const PAGE: &str = include_str!("page.html");

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
        "<section class=\"{}\" id=\"panel-{}\"><h2>{}</h2><p class=\"explain\">{}</p>",
        if p.wide { "panel wide" } else { "panel" },
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
            ("taken", escape(&view.taken)),
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
