//! Phase 8, the figures: one table of what was sent, done to the pipeline and found,
//! counted, never assumed; printed to stdout and stderr and written to
//! `$ORDERFLOW_STATE_DIR/chaos/figures.txt` (and a copy named by the time).

use crate::attack::Attacked;
use crate::bed::Bed;
use crate::checks::{DlqCheck, Purchases, Truth};
use crate::drain::Drained;
use crate::load::Load;
use crate::secrets::SecretScan;
use crate::settings::{Clock, Size};
use crate::stages::Stages;
use chrono::Utc;
use orderflow::testbed::sim::SimStats;
use std::collections::BTreeMap;
use std::path::Path;

/// Everything the figures count.
pub struct Findings<'a> {
    pub size: &'a Size,
    pub load: &'a Load,
    pub attacked: &'a Attacked,
    pub drained: &'a Drained,
    pub stats: &'a SimStats,
    pub truth: &'a Truth,
    pub purchases: &'a Purchases,
    pub regressions: usize,
    pub dlq_entries: usize,
    pub dlq: &'a DlqCheck,
    pub state_records: usize,
    pub scan: &'a SecretScan,
}

/// SIGKILLs in all, exits on their own in all, and the SIGKILLs per stage.
pub fn kills(stages: &Stages) -> (u32, u32, String) {
    let all = stages.lock().unwrap();
    let kills: u32 = all.iter().map(|s| s.kills).sum();
    let exits: u32 = all.iter().map(|s| s.exits).sum();
    let kills_by_stage = all
        .iter()
        .map(|s| format!("{} {}", s.name, s.kills))
        .collect::<Vec<_>>()
        .join(", ");
    (kills, exits, kills_by_stage)
}

pub fn faults_by_kind(stats: &SimStats) -> String {
    stats
        .faults_by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the table and writes it under `run_dir`.
pub fn report(bed: &Bed, f: &Findings<'_>, clock: &Clock, run_dir: &Path) {
    let size = f.size;
    let mut table = format!(
        "orderflow chaos run {} ({} orders at {}/s, {} kills per stage)\n",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        size.orders,
        size.rate,
        size.kills_per_stage
    );
    for (name, value) in &rows(bed, f, clock) {
        table.push_str(&format!("| {name:<32} | {value} |\n"));
    }
    println!("{table}");
    eprintln!("{table}");
    std::fs::write(run_dir.join("figures.txt"), &table).unwrap();
    let _ = std::fs::write(
        run_dir.join(format!(
            "figures-{}.txt",
            Utc::now().format("%Y%m%dT%H%M%S")
        )),
        &table,
    );
    eprintln!(
        "chaos: figures written to {}; logs in {}",
        run_dir.join("figures.txt").display(),
        bed.logs.display()
    );
}

/// The table's rows: what, and how much.
fn rows(bed: &Bed, f: &Findings<'_>, clock: &Clock) -> Vec<(&'static str, String)> {
    let (kills, exits, kills_by_stage) = kills(&bed.stages);
    let (published, hostile, truth) = (&f.attacked.published, &f.load.hostile, f.truth);
    let (purchases, scan, stats) = (f.purchases, f.scan, f.stats);
    let never_in_log = &f.drained.never_in_log;
    let hostile_reasons: BTreeMap<&str, usize> =
        hostile.iter().fold(BTreeMap::new(), |mut m, h| {
            *m.entry(h.reason).or_default() += 1;
            m
        });
    vec![
        ("valid orders published", format!("{}", published.valid)),
        ("exact re-sends (harmless)", format!("{}", published.exact_resends)),
        ("hostile events sent", format!("{}", hostile.len())),
        ("final in PostgreSQL", format!("{} (completed {}, cancelled {}, rejected {}, failed at the deadline on the broken account {} of {})", truth.finals, truth.completed, truth.cancelled, truth.rejected, truth.expired, f.load.broken.len())),
        ("SIGKILLs", format!("{kills} ({kills_by_stage})")),
        ("stage exits on their own", format!("{exits}")),
        ("broker restarts", format!("1 ({:.1} s stop to ready)", f.attacked.broker_down_s.unwrap_or(0.0))),
        ("PostgreSQL restarts", format!("1 ({:.1} s down)", f.attacked.pg_down_s.unwrap_or(0.0))),
        ("faults injected", format!("{} ({})", stats.faults_injected, faults_by_kind(stats))),
        ("checks during the visibility lag", format!("{} (answered not found: the order was not visible yet)", stats.unseen_checks)),
        ("publish retries", format!("{}", published.retries)),
        ("lost", format!("{}", truth.lost)),
        ("delivered to the publisher, not in orders.created", format!("{} {:?}", never_in_log.len(), never_in_log)),
        ("duplicate placements", format!("{} ({} purchases; {} references re-sent and refused as duplicates)", purchases.duplicates, purchases.total, purchases.resent_references)),
        ("regressions", format!("{}", f.regressions)),
        ("disagreements with the provider", format!("{}", truth.mismatches)),
        ("DLQ entries", format!("{} ({} hostile events matched, {} redelivered copies; {hostile_reasons:?})", f.dlq_entries, f.dlq.matched, f.dlq.copies)),
        ("secrets found", format!("{} (scanned {} logs, {} metrics pages, {} trace exports, {} DLQ and {} state records, a pg_dump, for {} PINs and 2 credentials)", scan.leaks, 6, scan.metrics_pages, scan.trace_exports, f.dlq_entries, f.state_records, scan.pins)),
        ("time to drain", format!("{:.1} s (after the chaos ended)", f.drained.drain_s)),
        ("total run time", format!("{:.1} s", clock.elapsed_s())),
    ]
}
