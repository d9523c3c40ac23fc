//! Line charts as SVG, for the benchmark's throughput, retry depth and memory over time.
//! Pure: series in, text out; no plotting dependency for one kind of picture.

use std::fmt::Write as _;

/// One named series of (x, y) points.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title, the unit of its y axis, its lines; all panels share the x axis.
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub lines: Vec<Line>,
}

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 260.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The panels stacked under `title`, x in seconds.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let x_max = nice(
        panels
            .iter()
            .flat_map(|p| {
                p.lines
                    .iter()
                    .flat_map(|l| l.points.iter().map(|(x, _)| *x))
            })
            .fold(0.0, f64::max),
    );
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + BOTTOM) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(&clip(title, 110))
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + BOTTOM);
        draw_panel(&mut out, panel, top, x_max);
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, top: f64, x_max: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL_HEIGHT - 30.0;
    let y0 = top + 25.0;
    let y_max = nice(
        panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|(_, y)| *y))
            .fold(0.0, f64::max),
    );
    let px = |x: f64| LEFT + x / x_max * plot_w;
    let py = |y: f64| y0 + plot_h - y / y_max * plot_h;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{} ({})</text>"#,
        top + 15.0,
        escape(&panel.title),
        escape(&panel.unit)
    );
    for k in 0..=4 {
        let y = y_max * k as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{right}" y1="{at}" y2="{at}" stroke="#ddd"/><text x="{lx}" y="{ly}" text-anchor="end">{text}</text>"##,
            right = LEFT + plot_w,
            at = py(y),
            lx = LEFT - 6.0,
            ly = py(y) + 4.0,
            text = short(y)
        );
        let x = x_max * k as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{} s</text>"#,
            px(x),
            y0 + plot_h + 16.0,
            short(x)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
    );
    for (n, line) in panel.lines.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let mut points = String::new();
        for (x, y) in &line.points {
            let _ = write!(points, "{:.1},{:.1} ", px(*x), py(*y));
        }
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#,
            points.trim_end()
        );
        let ly = y0 + 14.0 + n as f64 * 16.0;
        let lx = LEFT + plot_w + 12.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(&line.name)
        );
    }
}

/// The smallest of 1, 2, 2.5 or 5 times a power of ten at or above `v` (1 for nothing).
fn nice(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|n| *n >= v)
        .unwrap_or(10.0 * magnitude)
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// At most `max` characters, an ellipsis marking a cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(180.0), 200.0);
        assert_eq!(nice(2400.0), 2500.0);
        assert_eq!(nice(5000.0), 5000.0);
    }

    #[test]
    fn every_line_is_drawn_inside_its_panel_and_named() {
        let panels = [
            Panel {
                title: "throughput".into(),
                unit: "orders/s".into(),
                lines: vec![Line {
                    name: "final <all>".into(),
                    points: vec![(0.0, 0.0), (10.0, 400.0), (20.0, 380.0)],
                }],
            },
            Panel {
                title: "waiting".into(),
                unit: "orders".into(),
                lines: vec![
                    Line {
                        name: "first".into(),
                        points: vec![(0.0, 5.0), (20.0, 0.0)],
                    },
                    Line {
                        name: "30s".into(),
                        points: vec![],
                    },
                ],
            },
        ];
        let svg = svg("bench", &panels);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("final &lt;all&gt;"), "names are escaped");
        for point in svg.split("points=\"").skip(1) {
            for xy in point.split('"').next().unwrap().split_whitespace() {
                let (x, y) = xy.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
                assert!(
                    (TOP..=TOP + 2.0 * (PANEL_HEIGHT + BOTTOM)).contains(&y),
                    "{y}"
                );
            }
        }
    }
}
