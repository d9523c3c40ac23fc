//! One order's journey for people (`orderflow order show`): what the shop sees in `orders`,
//! how placement went in `dispatch_claims`, and where its status checks are in
//! `poll_chains`. The PIN stays masked unless the caller opens it with the key (G5).

use crate::pin::{PinKeys, SealedPin};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::fmt::Write;
use uuid::Uuid;

/// Everything the tables know about one order; each part is absent when its stage has not
/// seen the order (yet).
#[derive(Clone, Debug, Default, PartialEq, sqlx::FromRow)]
pub struct Journey {
    pub order_id: Uuid,
    // orders (the shop's view)
    pub tenant_id: Option<String>,
    pub state: Option<String>,
    pub status: Option<String>,
    pub external_status: Option<String>,
    pub failure_reason: Option<String>,
    pub last_error: Option<String>,
    pub pin_encrypted: Option<Vec<u8>>,
    pub attempts: Option<i32>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub version: Option<i64>,
    pub updated_at: Option<DateTime<Utc>>,
    // dispatch_claims
    pub provider_account: Option<String>,
    pub provider_reference: Option<String>,
    pub placement: Option<String>,
    pub place_calls: Option<i32>,
    pub deadline: Option<DateTime<Utc>>,
    // poll_chains
    pub chain_seq: Option<i64>,
    pub chain_attempts: Option<i32>,
    pub chain_next_check_at: Option<DateTime<Utc>>,
    pub tier: Option<String>,
    pub requeued: Option<i32>,
    // What holds an unfinished order up: the placement's or the checks' failing attempts.
    pub claim_error: Option<String>,
    pub claim_failing_since: Option<DateTime<Utc>>,
    pub chain_error: Option<String>,
    pub chain_failing_since: Option<DateTime<Utc>>,
}

/// The order's journey, or `None` if no table knows it.
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<Journey>, sqlx::Error> {
    let journey: Journey = sqlx::query_as(
        "SELECT k.id AS order_id,
                o.tenant_id, o.state, o.status, o.external_status, o.failure_reason,
                o.last_error, o.pin_encrypted, o.attempts, o.next_check_at, o.version,
                o.updated_at,
                COALESCE(d.provider_account, o.provider_account) AS provider_account,
                COALESCE(d.provider_reference, o.provider_reference) AS provider_reference,
                d.phase AS placement, d.place_calls,
                COALESCE(o.deadline, d.deadline) AS deadline,
                c.seq AS chain_seq, c.attempts AS chain_attempts,
                c.next_check_at AS chain_next_check_at, c.tier, c.requeued,
                d.last_error AS claim_error,
                CASE WHEN d.phase IN ('new', 'placing') THEN d.failing_since END
                    AS claim_failing_since,
                c.last_error AS chain_error,
                CASE WHEN c.final_state IS NULL THEN c.failing_since END AS chain_failing_since
           FROM (SELECT $1::uuid AS id) k
           LEFT JOIN orders o ON o.order_id = k.id
           LEFT JOIN dispatch_claims d ON d.order_id = k.id
           LEFT JOIN poll_chains c ON c.order_id = k.id",
    )
    .bind(order_id)
    .fetch_one(pool)
    .await?;
    let known =
        journey.state.is_some() || journey.placement.is_some() || journey.chain_seq.is_some();
    Ok(known.then_some(journey))
}

/// Why the PIN could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    #[error("cannot reveal the PIN: no PIN key is configured (ORDERFLOW_PIN_KEYS or ORDERFLOW_PIN_KEYS_FILE)")]
    NoKey,
    #[error("cannot reveal the PIN: {0}")]
    Pin(#[from] crate::pin::PinError),
}

/// The journey as text, one fact per line. The PIN is shown only when `reveal` holds the
/// keys to open it.
pub fn render(
    j: &Journey,
    now: DateTime<Utc>,
    reveal: Option<&PinKeys>,
) -> Result<String, RevealError> {
    let mut out = String::new();
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<16}{value}");
    };
    line("order", j.order_id.to_string());
    line("tenant", or_dash(j.tenant_id.clone()));
    line(
        "state",
        match (&j.state, &j.status, &j.external_status) {
            (Some(state), Some(status), Some(external)) => {
                format!("{state} (shop: {status} / {external})")
            }
            _ => "- (not in orders yet: the sink has not written it)".into(),
        },
    );
    if let Some(reason) = &j.failure_reason {
        line("failure", reason.clone());
    }
    line("provider", or_dash(j.provider_account.clone()));
    line("reference", or_dash(j.provider_reference.clone()));
    line(
        "placement",
        match (&j.placement, j.place_calls) {
            (Some(phase), Some(calls)) => format!("{phase} ({calls} placement calls)"),
            _ => "-".into(),
        },
    );
    let attempts = j.attempts.max(j.chain_attempts);
    line(
        "attempts",
        attempts.map_or("-".into(), |a| format!("{a} status checks answered")),
    );
    let done = matches!(j.state.as_deref(), Some("completed" | "failed"));
    if !done {
        let next = j.chain_next_check_at.or(j.next_check_at);
        line(
            "next check",
            match next {
                Some(at) => format!("{} ({})", at.to_rfc3339(), relative(at - now)),
                None => "-".into(),
            },
        );
        line("tier", or_dash(j.tier.clone()));
    }
    line(
        "deadline",
        match j.deadline {
            Some(at) if done => at.to_rfc3339(),
            Some(at) if at <= now => format!("{} (passed)", at.to_rfc3339()),
            Some(at) => format!(
                "{} ({} left)",
                at.to_rfc3339(),
                relative(at - now).trim_start_matches("in ")
            ),
            None => "-".into(),
        },
    );
    if let Some(n) = j.requeued.filter(|n| *n > 0) {
        line(
            "reconciled",
            format!("{n} times re-enqueued by the reconciler"),
        );
    }
    line("last error", or_dash(j.last_error.clone()));
    // A stuck order names what holds it up, and since when: the placement's failing
    // attempts while it is not placed, else the checks'.
    let held = [
        (&j.claim_error, j.claim_failing_since),
        (&j.chain_error, j.chain_failing_since),
    ]
    .into_iter()
    .find_map(|(error, since)| Some((error.clone()?, since?)));
    if let (false, Some((error, since))) = (done, held) {
        line(
            "held up by",
            format!(
                "{error} (since {}, {})",
                since.to_rfc3339(),
                relative(since - now)
            ),
        );
    }
    let pin = match (&j.pin_encrypted, reveal) {
        (None, _) => "-".into(),
        (Some(bytes), keys) => {
            let sealed = SealedPin::parse(&String::from_utf8_lossy(bytes))?;
            match keys {
                None => format!(
                    "******** (sealed with key {}; --reveal shows it)",
                    sealed.key_id()
                ),
                Some(keys) => keys.open(j.order_id, &sealed)?.expose().to_owned(),
            }
        }
    };
    line("pin", pin);
    if let Some(at) = j.updated_at {
        line("updated", at.to_rfc3339());
    }
    Ok(out)
}

/// "in 2m 5s" or "4s ago".
fn relative(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    let text = |s: i64| match s {
        s if s >= 3600 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    };
    if secs >= 0 {
        format!("in {}", text(secs))
    } else {
        format!("{} ago", text(-secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn completed(keys: &PinKeys) -> Journey {
        let id = Uuid::new_v4();
        Journey {
            order_id: id,
            tenant_id: Some("shop-1".into()),
            state: Some("completed".into()),
            status: Some("approved".into()),
            external_status: Some("done".into()),
            pin_encrypted: Some(
                keys.seal(id, &Secret::new("ABCD-1234-EFGH"))
                    .as_str()
                    .as_bytes()
                    .to_vec(),
            ),
            attempts: Some(2),
            provider_reference: Some("100000042".into()),
            placement: Some("placed".into()),
            place_calls: Some(1),
            ..Journey::default()
        }
    }

    #[test]
    fn the_pin_is_masked_unless_revealed_with_the_key() {
        let keys = PinKeys::parse(&PinKeys::generate_key_line("k1")).unwrap();
        let j = completed(&keys);
        let masked = render(&j, Utc::now(), None).unwrap();
        assert!(!masked.contains("ABCD-1234-EFGH"), "{masked}");
        assert!(masked.contains("sealed with key k1"), "{masked}");
        assert!(
            masked.contains("completed (shop: approved / done)"),
            "{masked}"
        );
        let shown = render(&j, Utc::now(), Some(&keys)).unwrap();
        assert!(shown.contains("ABCD-1234-EFGH"), "{shown}");
        let other = PinKeys::parse(&PinKeys::generate_key_line("k1")).unwrap();
        assert!(render(&j, Utc::now(), Some(&other)).is_err());
    }

    #[test]
    fn a_stuck_order_names_what_holds_it_up_and_since_when() {
        let now = Utc::now();
        let j = Journey {
            order_id: Uuid::new_v4(),
            placement: Some("new".into()),
            place_calls: Some(0),
            claim_error: Some("account znet-main has a problem: 8|Bağlantı Hatası".into()),
            claim_failing_since: Some(now - chrono::Duration::seconds(190)),
            ..Journey::default()
        };
        let text = render(&j, now, None).unwrap();
        assert!(
            text.contains("held up by      account znet-main has a problem: 8|Bağlantı Hatası"),
            "{text}"
        );
        assert!(text.contains("3m 10s ago)"), "{text}");
        let done = Journey {
            state: Some("completed".into()),
            status: Some("approved".into()),
            external_status: Some("done".into()),
            ..j
        };
        assert!(!render(&done, now, None).unwrap().contains("held up by"));
    }

    #[test]
    fn a_pending_order_shows_its_next_check_and_time_left() {
        let now = Utc::now();
        let j = Journey {
            order_id: Uuid::new_v4(),
            state: Some("processing".into()),
            status: Some("pending".into()),
            external_status: Some("processing".into()),
            chain_next_check_at: Some(now + chrono::Duration::seconds(125)),
            tier: Some("2m".into()),
            deadline: Some(now + chrono::Duration::hours(3)),
            ..Journey::default()
        };
        let text = render(&j, now, None).unwrap();
        assert!(text.contains("(in 2m 5s)"), "{text}");
        assert!(text.contains("tier            2m"), "{text}");
        assert!(text.contains("(3h 0m left)"), "{text}");
    }
}
