//! The snapshot as a person reads it (pure): a few headline [`Tile`]s and [`Panel`]s of
//! rows. The server's first paint (`render.rs`) and the page's script draw the same tiles
//! and panels with the same markup, so what a panel shows is decided here once.

use super::collect::{Part, Snapshot};
use serde::Serialize;
use std::collections::BTreeMap;

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
    /// Takes the page's whole width (many columns, or long text).
    pub wide: bool,
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
    /// When the snapshot was taken, for people: `2026-12-17 10:00:00 UTC`.
    pub taken: String,
    pub tiles: Vec<Tile>,
    pub panels: Vec<Panel>,
}

impl<'a> View<'a> {
    pub fn of(snapshot: &'a Snapshot) -> Self {
        View {
            snapshot,
            taken: snapshot
                .taken_at
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string(),
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
            value: open_counts(s).map_or_else(
                || "-".into(),
                |(placing, first, between)| (placing + first + between).to_string(),
            ),
            note: "being placed, waiting for a check, or between checks",
        },
        Tile {
            id: "waiting",
            label: "checks waiting",
            value: count(&s.tier_lag, |rows| rows.iter().map(|r| r.waiting).sum()),
            note: "in the poll stage's topics",
        },
        Tile {
            id: "stuck",
            label: "stuck orders",
            value: s.stuck.ok().map_or_else(
                || "-".into(),
                |st| format!("{}{}", st.orders.len(), if st.more { "+" } else { "" }),
            ),
            note: "next step overdue beyond the schedule",
        },
        Tile {
            id: "dead-letters",
            label: "dead letters",
            value: s.dead_letters.ok().map_or_else(
                || "-".into(),
                |d| d.per_reason.values().sum::<u64>().to_string(),
            ),
            note: "entries in orders.dlq",
        },
    ]
}

/// The tables, in the page's order.
pub fn panels(s: &Snapshot) -> Vec<Panel> {
    vec![
        finished(s),
        open(s),
        tiers(s),
        dead_letters(s),
        stuck(s),
        accounts(s),
    ]
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
        explain:
            "Orders that reached a final state, by state and failure reason, from the orders table.",
        wide: false,
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

/// Open orders where they are: being placed (claims `new` or `placing`), placed and
/// waiting for their first check (the poll group's lag on `orders.dispatched`), between
/// status checks (open chains waiting on a tier). `None` when a source did not answer.
fn open_counts(s: &Snapshot) -> Option<(i64, i64, i64)> {
    let placing = *s.being_placed.ok()?;
    let first = s
        .tier_lag
        .ok()?
        .iter()
        .filter(|t| t.tier == "first")
        .map(|t| t.waiting)
        .sum();
    // A chain whose first check is being made is still counted in `first` (its message is
    // not committed yet), so only chains waiting on a tier count here.
    let between = s
        .tier_chains
        .ok()?
        .iter()
        .filter(|c| c.tier != "first")
        .map(|c| c.chains)
        .sum();
    Some((placing, first, between))
}

fn open(s: &Snapshot) -> Panel {
    let rows = open_counts(s).map_or_else(Vec::new, |(placing, first, between)| {
        [
            ("placing", "being placed", placing),
            ("first", "placed, waiting for the first check", first),
            ("checking", "between status checks", between),
        ]
        .into_iter()
        .map(|(key, name, n)| Row {
            key: key.into(),
            cells: vec![name.into(), n.to_string()],
        })
        .collect()
    });
    Panel {
        id: "open",
        title: "Open orders",
        explain: "Orders not final yet: being placed (their dispatch claim is new or placing), placed and waiting for their first status check (in orders.dispatched), or between status checks (an open check chain; per tier beside).",
        wide: false,
        columns: vec![col("where"), num("orders")],
        rows,
        empty: "No open order.",
        unavailable: [why(&s.being_placed), why(&s.tier_lag), why(&s.tier_chains)]
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
                cells: vec![t.tier.clone(), t.waiting.to_string(), chains(&t.tier)],
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
                    cells: vec![c.tier.clone(), "-".into(), c.chains.to_string()],
                });
            }
        }
    }
    Panel {
        id: "tiers",
        title: "Retry depth per tier",
        explain: "Status checks waiting in each of the poll stage's topics, orders.dispatched (first) and orders.status-check.<tier> (its consumer group's lag), and the open check chains whose next check waits on that tier (check_chains).",
        wide: false,
        columns: vec![col("tier"), num("waiting in Kafka"), num("open chains")],
        rows,
        empty: "No tier configured.",
        unavailable: [why(&s.tier_lag), why(&s.tier_chains)]
            .into_iter()
            .flatten()
            .collect(),
    }
}

fn stuck(s: &Snapshot) -> Panel {
    let (rows, more) = s.stuck.ok().map_or((Vec::new(), false), |st| {
        let rows = st
            .orders
            .iter()
            .map(|o| Row {
                key: o.order_id.to_string(),
                cells: vec![
                    o.order_id.to_string(),
                    o.provider_account.clone(),
                    o.state.clone(),
                    o.step.replace('_', " "),
                    duration(o.overdue_secs),
                    o.last_error.clone().unwrap_or_else(|| "-".into()),
                ],
            })
            .collect();
        (rows, st.more)
    });
    Panel {
        id: "stuck",
        title: "Stuck orders",
        wide: true,
        explain: if more {
            "The 20 longest-waiting orders whose next step (a placement, the first or next status check) is overdue by more than the grace; there are more. `orderflow order list --stuck` lists them all."
        } else {
            "Orders whose next step (a placement, the first or next status check) is overdue by more than the grace. `orderflow order show <id>` tells why."
        },
        columns: vec![
            col("order"),
            col("account"),
            col("state"),
            col("waiting for"),
            num("overdue by"),
            col("last error"),
        ],
        rows,
        empty: "No stuck order.",
        unavailable: why(&s.stuck).into_iter().collect(),
    }
}

fn dead_letters(s: &Snapshot) -> Panel {
    let rows = s.dead_letters.ok().map_or_else(Vec::new, |d| {
        d.per_reason
            .iter()
            .map(|(reason, n)| Row {
                key: reason.clone(),
                cells: vec![reason.clone(), n.to_string()],
            })
            .collect()
    });
    Panel {
        id: "dead-letters",
        title: "Dead letters by reason",
        wide: false,
        explain: "Entries in orders.dlq (its retention) by the reason the stage gave; read every 30 s. `orderflow dlq list --reason <reason>` shows them, `orderflow dlq replay` sends them back after a fix.",
        columns: vec![col("reason"), num("entries")],
        rows,
        empty: "The DLQ is empty.",
        unavailable: why(&s.dead_letters).into_iter().collect(),
    }
}

fn accounts(s: &Snapshot) -> Panel {
    let rows = s.accounts.ok().map_or_else(Vec::new, |rows| {
        rows.iter()
            .map(|a| Row {
                key: format!("{}-{}", a.account, a.stage),
                cells: vec![
                    a.account.clone(),
                    if a.fresh {
                        a.written_by.clone()
                    } else {
                        format!(
                            "{} (silent since {})",
                            a.written_by,
                            a.updated_at.format("%H:%M:%S")
                        )
                    },
                    a.balance.clone().unwrap_or_else(|| "-".into()),
                    match (a.breaker, a.breaker_open_until) {
                        ("open", Some(until)) => format!("open until {}", until.format("%H:%M:%S")),
                        (state, _) => state.replace('_', "-"),
                    },
                    format!("{} at once, {}/s", a.max_concurrent, a.max_per_second),
                    a.in_flight.to_string(),
                    answers(&a.answers),
                    a.last_failure.clone().unwrap_or_else(|| "-".into()),
                ],
            })
            .collect()
    });
    Panel {
        id: "accounts",
        title: "Provider accounts",
        wide: true,
        explain: "What each dispatch and poll process sees of each account: the last balance the provider reported, the circuit breaker, the caps, calls in flight, answers of the last minutes and the last failure. Credentials are never read.",
        columns: vec![
            col("account"),
            col("process"),
            num("balance"),
            col("breaker"),
            col("caps"),
            num("in flight"),
            col("answers"),
            col("last failure"),
        ],
        rows,
        empty: "No stage has reported an account yet.",
        unavailable: why(&s.accounts).into_iter().collect(),
    }
}

/// `place: accepted 12, rejected 1; check: completed 10`.
fn answers(by_call: &BTreeMap<String, BTreeMap<String, u64>>) -> String {
    let text: Vec<String> = by_call
        .iter()
        .map(|(call, classes)| {
            let classes: Vec<String> = classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
            format!("{call}: {}", classes.join(", "))
        })
        .collect();
    if text.is_empty() {
        "-".into()
    } else {
        text.join("; ")
    }
}

/// `45s`, `3m 20s`, `2h 5m`, `3d 4h`.
fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}
