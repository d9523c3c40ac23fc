//! G7 in phase 7: no PIN and no provider credential in any stage's log, any scraped
//! /metrics page, the exported traces, the DLQ's and orders.state's records or a dump of
//! the database (and no panic in a log); with positive controls, so an empty or unreadable
//! place cannot pass.

use crate::bed::Bed;
use crate::common::pipeline::{KOD, SIFRE};
use orderflow::testbed::sim::SimStats;
use rdkafka::message::{Headers, Message, OwnedMessage};
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

/// Where the scan looked, for the figures.
pub struct SecretScan {
    pub leaks: usize,
    pub metrics_pages: usize,
    pub trace_exports: usize,
    pub pins: usize,
}

/// What the run left behind, the places scanned.
pub struct Places<'a> {
    pub scrapes: &'a [String],
    pub dlq: &'a [OwnedMessage],
    pub state_log: &'a [OwnedMessage],
}

/// Scans every place for every PIN the provider issued and both credentials, then runs the
/// positive controls.
pub async fn no_secret_anywhere(
    bed: &Bed,
    places: Places<'_>,
    stats: &SimStats,
    ids: &[Uuid],
    failures: &mut Vec<String>,
) -> SecretScan {
    let pins: HashSet<Vec<u8>> = stats
        .purchases
        .keys()
        .filter_map(|r| bed.sim.pin_of(r))
        .map(|p| p.expose().as_bytes().to_vec())
        .collect();
    let pin_len = pins.iter().map(Vec::len).next().unwrap_or(19);
    let words: [&[u8]; 2] = [KOD.as_bytes(), SIFRE.as_bytes()];
    let exported = bed.traces.lock().unwrap().clone();
    let haystacks = haystacks(bed, &places, &exported).await;
    let mut leaks = Vec::new();
    for (place, bytes) in &haystacks {
        for what in find_secrets(bytes, &pins, pin_len, &words) {
            leaks.push(format!("{what} in {place}"));
        }
        if place.starts_with("log ") {
            let text = String::from_utf8_lossy(bytes);
            if crate::common::logs::has_pin_shape(&text) {
                leaks.push(format!("something PIN-shaped in {place}"));
            }
            if text.contains("panicked") {
                leaks.push(format!("a panic in {place}"));
            }
        }
    }
    if !leaks.is_empty() {
        failures.push(format!("secrets or panics: {leaks:?}"));
    }
    controls(
        &haystacks,
        &pins,
        pin_len,
        &words,
        &ids[0].to_string(),
        failures,
    );
    SecretScan {
        leaks: leaks.len(),
        metrics_pages: places.scrapes.len(),
        trace_exports: exported.len(),
        pins: pins.len(),
    }
}

/// Every place, named, with its bytes: each stage's log, the scraped metrics, the trace
/// exports, the DLQ's and orders.state's records, a pg_dump.
async fn haystacks(bed: &Bed, places: &Places<'_>, exported: &[Vec<u8>]) -> Vec<(String, Vec<u8>)> {
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for stage in bed.stages.lock().unwrap().iter() {
        haystacks.push((
            format!("log {}", stage.name),
            std::fs::read(&stage.log).unwrap(),
        ));
    }
    haystacks.push(("metrics".into(), places.scrapes.join("\n").into_bytes()));
    haystacks.push(("traces".into(), exported.concat()));
    haystacks.push((
        "orders.dlq".into(),
        places.dlq.iter().flat_map(record_bytes).collect(),
    ));
    haystacks.push((
        "orders.state".into(),
        places.state_log.iter().flat_map(record_bytes).collect(),
    ));
    let pg_for_dump = Arc::clone(&bed.pg);
    let dump = tokio::task::spawn_blocking(move || pg_for_dump.dump("orderflow"))
        .await
        .unwrap();
    haystacks.push(("pg_dump".into(), dump));
    haystacks
}

/// Positive controls: the scan finds a PIN and a credential put into a copy of each
/// haystack, and each haystack holds the clear text it should (so it was not empty or
/// unreadable): an order id in the logs, the state topic and the dump, a metric name in
/// the scrapes, a service name in the traces, a hostile key in the DLQ.
fn controls(
    haystacks: &[(String, Vec<u8>)],
    pins: &HashSet<Vec<u8>>,
    pin_len: usize,
    words: &[&[u8]],
    some_id: &str,
    failures: &mut Vec<String>,
) {
    let some_pin = pins
        .iter()
        .next()
        .expect("the provider issued PINs")
        .clone();
    for (place, bytes) in haystacks {
        let mut planted = bytes.clone();
        planted.extend_from_slice(b" x");
        planted.extend_from_slice(&some_pin);
        planted.extend_from_slice(b" ");
        assert_eq!(
            find_secrets(&planted, pins, pin_len, words),
            vec!["a PIN"],
            "control: {place}"
        );
        let mut planted = bytes.clone();
        planted.extend_from_slice(SIFRE.as_bytes());
        assert!(
            find_secrets(&planted, pins, pin_len, words).contains(&"a provider credential"),
            "control: {place}"
        );
    }
    let clear: Vec<(&str, Vec<u8>)> = vec![
        ("log dispatch-1", b"order_id".to_vec()),
        ("log sink", b"sink".to_vec()),
        ("metrics", b"orderflow_".to_vec()),
        ("traces", b"orderflow-dispatch".to_vec()),
        ("orders.dlq", b"hostile-0-malformed".to_vec()),
        ("orders.state", some_id.as_bytes().to_vec()),
        ("pg_dump", some_id.as_bytes().to_vec()),
    ];
    for (place, token) in clear {
        let bytes = &haystacks.iter().find(|(p, _)| p == place).unwrap().1;
        if !contains(bytes, &token) {
            failures.push(format!(
                "control: {place} does not hold {:?}",
                String::from_utf8_lossy(&token)
            ));
        }
    }
}

/// Finds any of `pins` (all of one length) or of `words` in `bytes`; returns what it found,
/// by kind, never the value.
/// The simulator's PINs are `XXXX-XXXX-XXXX-XXXX`: only windows with dashes there are
/// looked up.
fn find_secrets(
    bytes: &[u8],
    pins: &HashSet<Vec<u8>>,
    pin_len: usize,
    words: &[&[u8]],
) -> Vec<&'static str> {
    let mut found = Vec::new();
    let dashed = |w: &[u8]| w[4] == b'-' && w[9] == b'-' && w[14] == b'-';
    if bytes.len() >= pin_len
        && bytes
            .windows(pin_len)
            .any(|w| dashed(w) && pins.contains(w))
    {
        found.push("a PIN");
    }
    if words.iter().any(|word| contains(bytes, word)) {
        found.push("a provider credential");
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|&b| b == needle[0]) {
        if haystack[from + at..].starts_with(needle) {
            return true;
        }
        from += at + 1;
    }
    false
}

fn record_bytes(m: &OwnedMessage) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(m.key().unwrap_or_default());
    bytes.push(b'\n');
    bytes.extend_from_slice(m.payload().unwrap_or_default());
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            bytes.push(b'\n');
            bytes.extend_from_slice(h.key.as_bytes());
            bytes.extend_from_slice(h.value.unwrap_or_default());
        }
    }
    bytes
}
