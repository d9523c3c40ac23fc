//! Phase 7, the guarantees checked order by order once everything stopped: nothing lost
//! and every final row equal to the simulator's truth (G2, G4, G5), nothing bought twice
//! (G1), the DLQ holding exactly the hostile events with their reasons (G8), and that the
//! chaos really came (every stage killed often enough, every fault kind injected). Each
//! check adds what it found wrong to `failures` and returns its figures; [`every_guarantee`]
//! runs those both runs make (with no regression, `lifecycle`, and no secret, `secrets`).

use crate::background::Seen;
use crate::bed::Bed;
use crate::common::pipeline::read_to_end;
use crate::drain::Drained;
use crate::figures;
use crate::hostile::Hostile;
use crate::lifecycle;
use crate::load::Load;
use crate::secrets::{self, Places, SecretScan};
use crate::settings::WAVES;
use crate::stages::Stages;
use orderflow::kafka::headers;
use orderflow::kafka::topics::name;
use orderflow::pin::SealedPin;
use orderflow::testbed::sim::SimStats;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// What the checks of [`every_guarantee`] found: what broke, and the figures.
pub struct Checked {
    pub failures: Vec<String>,
    pub truth: Truth,
    pub purchases: Purchases,
    pub regressions: usize,
    pub dlq_entries: usize,
    pub dlq: DlqCheck,
    pub state_records: usize,
    pub scan: SecretScan,
}

/// Each guarantee, order by order, once everything stopped: every valid order final as the
/// provider has it (G2), nothing bought twice (G1), no final state regressed, the DLQ
/// holding the hostile events (G8), no secret anywhere (G5).
pub async fn every_guarantee(
    bed: &Bed,
    load: &Load,
    drained: &Drained,
    seen: Seen,
    stats: &SimStats,
) -> Checked {
    let mut failures: Vec<String> = Vec::new();
    let ids = &drained.ids;
    let rows = final_rows(&bed.pool, ids).await;
    let truth = against_provider(bed, load, ids, &rows, stats, &mut failures);
    let purchases = nothing_bought_twice(&rows, stats, &mut failures);
    let state_log = read_to_end(&bed.kafka, name::ORDERS_STATE).await;
    let regressions =
        lifecycle::no_regression(&state_log, ids, &rows, seen.live_regressions, &mut failures);
    let dlq = read_to_end(&bed.kafka, name::ORDERS_DLQ).await;
    let dlq_check = dlq_holds_the_hostile(bed, &dlq, &load.hostile, &mut failures);
    let places = Places {
        scrapes: &seen.scrapes,
        dlq: &dlq,
        state_log: &state_log,
    };
    let scan = secrets::no_secret_anywhere(bed, places, stats, ids, &mut failures).await;
    Checked {
        failures,
        truth,
        purchases,
        regressions: regressions.len(),
        dlq_entries: dlq.len(),
        dlq: dlq_check,
        state_records: state_log.len(),
        scan,
    }
}

/// An order's row: id, state, failure reason, reference, sealed PIN, last error, version.
pub type Row = (
    Uuid,
    String,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    i64,
);

/// The rows of the valid orders in orders.created, by id.
pub async fn final_rows(pool: &PgPool, ids: &[Uuid]) -> HashMap<Uuid, Row> {
    let rows: Vec<Row> =
        sqlx::query_as(
            "SELECT order_id, state, failure_reason, provider_reference, pin_encrypted, last_error, version
               FROM orders WHERE order_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter().map(|r| (r.0, r)).collect()
}

fn is_final(row: &Row) -> bool {
    row.1 == "completed" || row.1 == "failed"
}

/// The final rows by outcome, and those that disagree with the provider.
#[derive(Default)]
pub struct Truth {
    pub finals: usize,
    pub lost: usize,
    pub completed: usize,
    pub cancelled: usize,
    pub rejected: usize,
    /// The broken account's orders, failed at their deadline.
    pub expired: usize,
    pub mismatches: usize,
}

/// G2: every valid order final; and every final row what the simulator did: the PIN it
/// issued (opened with the shop's key), its cancellation, its rejection, the broken
/// account's orders never bought and failed at their deadline.
pub fn against_provider(
    bed: &Bed,
    load: &Load,
    ids: &[Uuid],
    rows: &HashMap<Uuid, Row>,
    stats: &SimStats,
    failures: &mut Vec<String>,
) -> Truth {
    let finals: Vec<&Row> = rows.values().filter(|r| is_final(r)).collect();
    let mut truth = Truth {
        finals: finals.len(),
        lost: ids.len() - finals.len(),
        ..Truth::default()
    };
    if truth.lost > 0 {
        let some: Vec<_> = ids
            .iter()
            .filter(|id| rows.get(id).is_none_or(|r| !is_final(r)))
            .take(5)
            .map(|id| (id, rows.get(id).map(|r| r.1.clone())))
            .collect();
        failures.push(format!(
            "{} valid orders not final, e.g. {some:?}",
            truth.lost
        ));
    }
    let mut mismatches = Vec::new();
    for row in finals {
        if let Err(mismatch) = one_against_provider(bed, load, row, stats, &mut truth) {
            mismatches.push(mismatch);
        }
    }
    truth.mismatches = mismatches.len();
    if !mismatches.is_empty() {
        failures.push(format!(
            "{} orders disagree with the simulator: {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(5)]
        ));
    }
    truth
}

/// One final row against the simulator: counted in `truth` by outcome, or what is wrong.
fn one_against_provider(
    bed: &Bed,
    load: &Load,
    row: &Row,
    stats: &SimStats,
    truth: &mut Truth,
) -> Result<(), String> {
    let (id, state, reason, reference, pin, error, _) = row;
    let sim = &bed.sim;
    let Some(reference) = reference else {
        return Err(format!("{id}: final without a reference"));
    };
    let bought = stats.purchases.get(reference).copied().unwrap_or(0) == 1;
    match (state.as_str(), reason.as_deref(), sim.cancelled(reference)) {
        ("completed", None, Some(false)) => {
            truth.completed += 1;
            let opened = pin
                .as_ref()
                .and_then(|p| SealedPin::parse(std::str::from_utf8(p).ok()?).ok())
                .and_then(|sealed| bed.keys.open(*id, &sealed).ok());
            let issued = sim.pin_of(reference);
            if opened.as_ref().map(|p| p.expose()) != issued.as_ref().map(|p| p.expose()) {
                return Err(format!("{id}: the delivered PIN is not the provider's"));
            }
        }
        ("failed", Some("cancelled"), Some(true)) => truth.cancelled += 1,
        // The broken account's orders: never bought, failed at their deadline.
        ("failed", Some("deadline"), None) if !bought && load.broken.contains(id) => {
            truth.expired += 1
        }
        ("failed", Some("rejected"), None)
            if !bought
                && stats.placements.get(reference).copied().unwrap_or(0) >= 1
                && error.as_deref().is_some_and(|e| e.starts_with("3|")) =>
        {
            truth.rejected += 1
        }
        other => {
            return Err(format!(
                "{id}: row {other:?} (bought: {bought}) disagrees with the provider"
            ))
        }
    }
    Ok(())
}

/// Purchases the simulator made, and those no final order holds.
pub struct Purchases {
    pub total: u32,
    pub duplicates: u32,
    /// References placed more than once (re-sent and refused as duplicates).
    pub resent_references: usize,
}

/// G1: every purchase belongs to exactly one order's reference.
pub fn nothing_bought_twice(
    rows: &HashMap<Uuid, Row>,
    stats: &SimStats,
    failures: &mut Vec<String>,
) -> Purchases {
    let references: HashSet<&String> = rows.values().filter_map(|r| r.3.as_ref()).collect();
    let total: u32 = stats.purchases.values().sum();
    let owned = stats
        .purchases
        .keys()
        .filter(|r| references.contains(r))
        .count() as u32;
    let duplicates = total - owned;
    if duplicates > 0 {
        failures.push(format!(
            "{duplicates} purchases under references no final order holds (bought twice)"
        ));
    }
    Purchases {
        total,
        duplicates,
        resent_references: stats.placements.values().filter(|&&n| n > 1).count(),
    }
}

/// The DLQ against the hostile events.
pub struct DlqCheck {
    /// Hostile events found in the DLQ.
    pub matched: usize,
    /// Redelivered copies of them.
    pub copies: usize,
}

/// The DLQ reasons of hostile events that may be parked before they are refused.
const PARKED_FIRST: [&str; 2] = ["account_conflict", "conflicting_duplicate"];

/// G8: orders.dlq holds exactly the hostile events, each with its reason, from dispatch,
/// with its source topic and a detail. The source is orders.created, or orders.dispatch-retry
/// for a conflicting event that was parked before its conflict showed: a second event of an
/// order whose first is still being placed (under faults, past `--dispatch-park-after-ms`)
/// waits for that claim's lease and is parked, and is dead-lettered when it comes back.
/// Only the conflicts can take that way; an event refused on its own is refused at once.
pub fn dlq_holds_the_hostile(
    bed: &Bed,
    dlq: &[OwnedMessage],
    hostile: &[Hostile],
    failures: &mut Vec<String>,
) -> DlqCheck {
    let created_topic = bed.kafka.topic(name::ORDERS_CREATED);
    let retry_topic = bed.kafka.topic(name::ORDERS_DISPATCH_RETRY);
    let mut matched: HashMap<usize, usize> = HashMap::new();
    let by_content: HashMap<(Option<&str>, &[u8]), usize> = hostile
        .iter()
        .enumerate()
        .map(|(i, h)| ((h.key.as_deref(), h.payload.as_slice()), i))
        .collect();
    let mut dlq_problems = Vec::new();
    for m in dlq {
        let hs = m.headers();
        let header = |name: &str| {
            hs.and_then(|h| headers::get(h, name))
                .unwrap_or_default()
                .to_owned()
        };
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let payload = m.payload().unwrap_or_default();
        let Some(&i) = by_content.get(&(key.as_deref(), payload)) else {
            dlq_problems.push(format!(
                "a DLQ record that is no hostile event (key {key:?}, reason {})",
                header(headers::DLQ_REASON)
            ));
            continue;
        };
        let h = &hostile[i];
        if header(headers::DLQ_REASON) != h.reason
            || header(headers::DLQ_DETAIL).is_empty()
            || header(headers::DLQ_STAGE) != "dispatch"
            || !(header(headers::DLQ_SOURCE_TOPIC) == created_topic
                || (header(headers::DLQ_SOURCE_TOPIC) == retry_topic
                    && PARKED_FIRST.contains(&h.reason)))
        {
            dlq_problems.push(format!(
                "{}: reason {:?} (expected {}), stage {:?}, source topic {:?}, detail {:?}",
                h.what,
                header(headers::DLQ_REASON),
                h.reason,
                header(headers::DLQ_STAGE),
                header(headers::DLQ_SOURCE_TOPIC),
                header(headers::DLQ_DETAIL)
            ));
        }
        *matched.entry(i).or_default() += 1;
    }
    for (i, h) in hostile.iter().enumerate() {
        if !matched.contains_key(&i) {
            dlq_problems.push(format!("{} (key {:?}) is not in the DLQ", h.what, h.key));
        }
    }
    if !dlq_problems.is_empty() {
        failures.push(format!(
            "{} DLQ problems: {:?}",
            dlq_problems.len(),
            &dlq_problems[..dlq_problems.len().min(8)]
        ));
    }
    DlqCheck {
        matched: matched.len(),
        copies: matched.values().map(|n| n - 1).sum(),
    }
}

/// The chaos came: every stage killed `kills_per_stage` times, every fault kind injected.
pub fn the_chaos_came(
    stages: &Stages,
    kills_per_stage: u32,
    stats: &SimStats,
    failures: &mut Vec<String>,
) {
    let (kills, _, _) = figures::kills(stages);
    if kills < kills_per_stage * 6 {
        failures.push(format!("only {kills} kills"));
    }
    if !WAVES
        .iter()
        .all(|f| stats.faults_by_kind.contains_key(f.as_str()))
    {
        failures.push(format!(
            "not every fault kind was injected: {}",
            figures::faults_by_kind(stats)
        ));
    }
}
