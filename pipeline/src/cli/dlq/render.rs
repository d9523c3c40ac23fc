//! The text of `orderflow dlq`: entries as a table with counts per reason, one entry in
//! full, and a replay's progress. Pure, so that it is tested without a broker.
//!
//! What is masked (G5): in a JSON payload, the value of every field whose name says it is a
//! secret ([`crate::secret::names_a_secret`]: pin, password/pass/pwd, sifre, kod, secret,
//! token, key, auth, credential), at any depth, whatever the value; the value of every
//! original header with such a name; and a payload that is not JSON is shown through
//! [`crate::secret::scrub`] (every PIN-shaped word masked, cut at 200 characters).

use crate::kafka::dlq::read::{Entry, Filter, ReasonCounts};
use crate::kafka::dlq::replay::{Options, Outcome};
use crate::kafka::topics::name;
use crate::kafka::KafkaConfig;
use crate::secret::{names_a_secret, scrub};
use chrono::SecondsFormat;
use serde_json::Value;
use std::fmt::Write;

/// What a masked value is shown as.
const MASK: &str = "***";

/// The entries as a table, then their counts per reason.
pub fn list(kafka: &KafkaConfig, filter: &Filter, entries: &[Entry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}): {}{}",
        kafka.topic(name::ORDERS_DLQ),
        prefix_note(kafka),
        count(entries.len()),
        filter_note(filter)
    );
    if entries.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<9} {:<20} {:<24} {:<9} {:<24} ORDER",
        "POSITION", "DEAD-LETTERED", "REASON", "STAGE", "SOURCE"
    );
    let mut counts = ReasonCounts::new();
    for e in entries {
        *counts.entry(e.reason.clone()).or_default() += 1;
        let _ = writeln!(
            out,
            "{:<9} {:<20} {:<24} {:<9} {:<24} {}",
            e.position.to_string(),
            e.at.map_or("-".into(), |at| at
                .to_rfc3339_opts(SecondsFormat::Secs, true)),
            e.reason,
            e.stage,
            source(kafka, e),
            e.order_id().map_or("-".into(), |id| id.to_string())
        );
    }
    let _ = writeln!(out, "\n{:<24} {:>7}", "REASON", "ENTRIES");
    for (reason, n) in &counts {
        let _ = writeln!(out, "{reason:<24} {n:>7}");
    }
    let _ = writeln!(out, "{:<24} {:>7}", "total", entries.len());
    out
}

/// One entry in full, secrets masked (see the module header).
pub fn show(kafka: &KafkaConfig, e: &Entry) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<14}{value}");
    };
    line(
        "entry",
        format!("{} in {}", e.position, kafka.topic(name::ORDERS_DLQ)),
    );
    line("reason", e.reason.clone());
    line("detail", or_dash(&e.detail));
    line("stage", or_dash(&e.stage));
    line("source", source(kafka, e));
    line(
        "dead-lettered",
        e.at.map_or("-".into(), |at| {
            at.to_rfc3339_opts(SecondsFormat::Secs, true)
        }),
    );
    if let Some(sqlstate) = &e.sqlstate {
        line("sqlstate", sqlstate.clone());
    }
    if let Some(cut) = &e.cut {
        line(
            "cut",
            format!("{cut} (the copy is not the original; it is never replayed)"),
        );
    }
    line(
        "order",
        e.order_id().map_or("-".into(), |id| id.to_string()),
    );
    line("key", e.key.as_deref().map_or("-".into(), text));
    if e.headers.is_empty() {
        line("headers", "-".into());
    }
    for (i, (name, value)) in e.headers.iter().enumerate() {
        let shown = match value {
            _ if names_a_secret(name) => MASK.to_owned(),
            Some(v) => text(v),
            None => "(no value)".into(),
        };
        line(
            if i == 0 { "headers" } else { "" },
            format!("{name}={shown}"),
        );
    }
    let _ = write!(out, "{}", payload(e.payload.as_deref()));
    out
}

/// The payload: JSON pretty-printed with secret-named fields masked, anything else scrubbed.
fn payload(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return "payload       -\n".into();
    };
    match serde_json::from_slice::<Value>(bytes) {
        Ok(mut json) => {
            mask(&mut json);
            let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
            format!(
                "payload       JSON, {} bytes, secret-named fields masked:\n{pretty}\n",
                bytes.len()
            )
        }
        Err(_) => format!(
            "payload       not JSON, {} bytes, PIN-shaped words masked:\n{}\n",
            bytes.len(),
            scrub(&String::from_utf8_lossy(bytes))
        ),
    }
}

/// Replaces, at any depth, the value of every field whose name says it is a secret.
pub fn mask(json: &mut Value) {
    match json {
        Value::Object(fields) => {
            for (name, value) in fields.iter_mut() {
                if names_a_secret(name) {
                    *value = Value::String(MASK.into());
                } else {
                    mask(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

/// What a replay is about to do.
pub fn replay_header(kafka: &KafkaConfig, entries: &[Entry], options: Options) -> String {
    let mut out = format!(
        "{} ({}): {} to replay at up to {} per second{}\n",
        kafka.topic(name::ORDERS_DLQ),
        prefix_note(kafka),
        count(entries.len()),
        options.per_second,
        match (options.dry_run, options.again) {
            (true, _) => "; dry run: nothing is sent or recorded",
            (false, true) => "; --again: entries replayed before are sent again",
            (false, false) => "",
        }
    );
    if !entries.is_empty() {
        let _ = writeln!(
            out,
            "{:<9} {:<24} {:<36} {:<24} OUTCOME",
            "POSITION", "SOURCE", "ORDER", "REASON"
        );
    }
    out
}

/// One entry's outcome.
pub fn replay_line(kafka: &KafkaConfig, e: &Entry, outcome: &Outcome) -> String {
    format!(
        "{:<9} {:<24} {:<36} {:<24} {outcome}",
        e.position.to_string(),
        source(kafka, e),
        e.order_id().map_or("-".into(), |id| id.to_string()),
        e.reason,
    )
}

/// How many were sent (or would be, in a dry run) and skipped.
pub fn replay_footer(entries: &[Entry], outcomes: &[Outcome], dry_run: bool) -> String {
    let skipped = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Skipped(_)))
        .count();
    let going = outcomes.len() - skipped;
    let mut out = if dry_run {
        format!("{going} would be sent, {skipped} skipped (dry run: nothing sent)\n")
    } else {
        format!("{going} sent, {skipped} skipped\n")
    };
    // An order answered failed (invalid) is placed by its replay: say so once.
    let answered = entries.iter().zip(outcomes).any(|(e, o)| {
        matches!(o, Outcome::Sent | Outcome::WouldSend)
            && e.stage == "dispatch"
            && ["unknown_provider_account", "invalid_product"].contains(&e.reason.as_str())
    });
    if answered {
        out.push_str(
            "note: these orders were answered failed (invalid); each is placed once its replay \
             reaches the dispatch stage with its account and product now known, and its state \
             moves on from failed (docs/dlq.md)\n",
        );
    }
    out
}

/// The entry's source, its topic without this environment's prefix.
fn source(kafka: &KafkaConfig, e: &Entry) -> String {
    match &e.source {
        None => "-".into(),
        Some(s) => {
            let mut s = s.clone();
            if let Some(short) = s.topic.strip_prefix(&kafka.topic_prefix) {
                s.topic = short.to_owned();
            }
            s.to_string()
        }
    }
}

fn prefix_note(kafka: &KafkaConfig) -> String {
    if kafka.topic_prefix.is_empty() {
        "no topic prefix".into()
    } else {
        format!("topic prefix {:?}", kafka.topic_prefix)
    }
}

fn filter_note(f: &Filter) -> String {
    let mut parts = Vec::new();
    if !f.reasons.is_empty() {
        let reasons: Vec<&str> = f.reasons.iter().map(|r| r.as_str()).collect();
        parts.push(format!("reason {}", reasons.join(" or ")));
    }
    if let Some(t) = &f.source_topic {
        parts.push(format!("source topic {t}"));
    }
    if let Some(at) = f.since {
        parts.push(format!(
            "since {}",
            at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ));
    }
    if let Some(at) = f.until {
        parts.push(format!(
            "until {}",
            at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ));
    }
    if let Some(id) = f.order_id {
        parts.push(format!("order {id}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" matching {}", parts.join(", "))
    }
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 entry".into()
    } else {
        format!("{n} entries")
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// Bytes as text: UTF-8 shown as it is (control characters as spaces, so nothing forges a
/// line), anything else scrubbed.
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
        Err(_) => scrub(&String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::dlq::read::{Position, Source};

    fn entry(payload: &[u8]) -> Entry {
        Entry {
            position: Position {
                partition: 0,
                offset: 3,
            },
            reason: "invalid_field".into(),
            detail: "a detail".into(),
            stage: "dispatch".into(),
            source: Some(Source {
                topic: "env.orders.created".into(),
                partition: Some(0),
                offset: Some(12),
            }),
            at: None,
            sqlstate: None,
            cut: None,
            key: Some(b"k-1".to_vec()),
            payload: Some(payload.to_vec()),
            headers: vec![
                ("traceparent".into(), Some(b"00-ab".to_vec())),
                ("x-api-token".into(), Some(b"tok-SECRET1".to_vec())),
            ],
        }
    }

    #[test]
    fn show_masks_secret_named_fields_at_any_depth_and_headers() {
        let payload = br#"{"order_id":"x","pin":"ABCD-1234-EFGH-5678","product":{"kupur":"50"},
            "user":{"Password":"hunter2-SECRET2","extra":[{"sifre":"SECRET3"},{"api_key":7}]},
            "credentials":{"kod":"SECRET4"}}"#;
        let kafka = KafkaConfig::for_tests("b:9092", "env.");
        let text = show(&kafka, &entry(payload));
        for secret in [
            "ABCD-1234",
            "SECRET1",
            "SECRET2",
            "SECRET3",
            "SECRET4",
            "\"api_key\": 7",
        ] {
            assert!(!text.contains(secret), "{secret} shown:\n{text}");
        }
        assert!(text.contains("\"kupur\": \"50\""), "{text}");
        assert!(text.contains("traceparent=00-ab"), "{text}");
        assert!(text.contains("source        orders.created 0/12"), "{text}");
    }

    #[test]
    fn a_payload_that_is_not_json_is_scrubbed() {
        let kafka = KafkaConfig::for_tests("b:9092", "");
        let text = show(&kafka, &entry(b"{\"pin\": \"1234567890123456\" broken"));
        assert!(!text.contains("1234567890123456"), "{text}");
        assert!(text.contains("not JSON"), "{text}");
    }

    #[test]
    fn the_list_counts_per_reason() {
        let kafka = KafkaConfig::for_tests("b:9092", "env.");
        let mut second = entry(b"{}");
        second.reason = "unknown_provider_account".into();
        let entries = [entry(b"{}"), second.clone(), second];
        let text = list(&kafka, &Filter::default(), &entries);
        assert!(text.contains("invalid_field                  1"), "{text}");
        assert!(text.contains("unknown_provider_account       2"), "{text}");
        assert!(text.contains("total                          3"), "{text}");
    }
}
