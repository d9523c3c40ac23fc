//! `orderflow order show`: prints an order's journey (`db::journey`) for people, one fact
//! per line, and for an order that does not move, what holds it up and since when. The
//! order is named by its id, its provider reference, or the customer's phone number (found
//! by its keyed digest, [`crate::lookup`]). The PIN stays masked unless `--reveal` opens it
//! with the key (G5). [`render`] is also what `order submit --wait` prints.

use crate::cli::CliError;
use crate::db::find;
use crate::db::journey::{self, Journey};
use crate::db::DbConfig;
use crate::lookup::LookupKeysArgs;
use crate::pin::{PinKeys, SealedPin};
use chrono::{DateTime, Utc};
use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `order show`: one order by id, or the orders of a provider reference or a phone number.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "reference", "phone"])))]
pub struct ShowArgs {
    /// The order id.
    id: Option<uuid::Uuid>,
    /// Find the order by its provider reference (what the provider knows it by).
    #[arg(long)]
    reference: Option<String>,
    /// Find the orders of a customer's phone number (the first user field); any spelling
    /// of the number works, its last ten digits are compared. Needs the lookup keys.
    #[arg(long)]
    phone: Option<String>,
    /// Show the PIN in clear (needs the PIN keys).
    #[arg(long)]
    reveal: bool,
    /// A file with the PIN keys; or set ORDERFLOW_PIN_KEYS.
    #[arg(long = "pin-keys-file", env = "ORDERFLOW_PIN_KEYS_FILE")]
    pin_keys_file: Option<PathBuf>,
    #[command(flatten)]
    lookup: LookupKeysArgs,
    #[command(flatten)]
    db: DbConfig,
}

/// The most orders `--phone` prints, newest first.
const MAX_BY_PHONE: i64 = 20;

pub async fn run(args: ShowArgs) -> Result<ExitCode, CliError> {
    let keys = if args.reveal {
        let env = std::env::var("ORDERFLOW_PIN_KEYS").ok();
        let keys = PinKeys::from_env_or_file(env.as_deref(), args.pin_keys_file.as_deref())?;
        Some(keys.ok_or(RevealError::NoKey)?)
    } else {
        None
    };
    // The phone's digests before connecting: without keys there is nothing to look for.
    let digests = match &args.phone {
        Some(phone) => Some(phone_digests(&args.lookup, phone)?),
        None => None,
    };
    let pool = args.db.connect().await?;
    let ids = match (args.id, &args.reference, digests) {
        (Some(id), _, _) => vec![id],
        (None, Some(reference), _) => find::by_reference(&pool, reference)
            .await?
            .into_iter()
            .collect(),
        (None, None, Some(digests)) => find::by_user_digest(&pool, &digests, MAX_BY_PHONE).await?,
        (None, None, None) => unreachable!("clap requires one of id, --reference, --phone"),
    };
    let now = Utc::now();
    let mut journeys = Vec::new();
    for id in &ids {
        if let Some(found) = journey::get(&pool, *id).await? {
            journeys.push(found);
        }
    }
    if journeys.is_empty() {
        return Err(match (args.id, &args.reference) {
            (Some(id), _) => CliError::NoOrder(id),
            (None, Some(_)) => CliError::NoMatch("provider reference"),
            (None, None) => CliError::NoMatch("phone number"),
        });
    }
    let texts: Result<Vec<String>, RevealError> = journeys
        .iter()
        .map(|j| render(j, now, keys.as_ref()))
        .collect();
    let mut text = texts?.join("\n");
    if journeys.len() > 1 {
        text.insert_str(0, &format!("{} orders, newest first\n", journeys.len()));
    }
    super::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The digests `--phone` looks for: one per lookup key, so orders digested under a key
/// that was rotated out of first place are still found.
fn phone_digests(args: &LookupKeysArgs, phone: &str) -> Result<Vec<String>, CliError> {
    let keys = args.keys()?.ok_or(CliError::NoLookupKeys)?;
    let digests = keys.digests(phone);
    if digests.is_empty() {
        return Err(CliError::NotAPhoneNumber);
    }
    Ok(digests)
}

/// Why the PIN could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    #[error("cannot reveal the PIN: no PIN key is configured (ORDERFLOW_PIN_KEYS or ORDERFLOW_PIN_KEYS_FILE)")]
    NoKey,
    #[error("cannot reveal the PIN: {0}")]
    Pin(#[from] crate::pin::PinError),
}

/// The text being written: one `label  value` line per fact.
#[derive(Default)]
struct Lines(String);

impl Lines {
    fn line(&mut self, label: &str, value: String) {
        let _ = writeln!(self.0, "{label:<16}{value}");
    }
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// The journey as text, one fact per line. The PIN is shown only when `reveal` holds the
/// keys to open it.
pub fn render(
    j: &Journey,
    now: DateTime<Utc>,
    reveal: Option<&PinKeys>,
) -> Result<String, RevealError> {
    let mut out = Lines::default();
    let done = matches!(j.state.as_deref(), Some("completed" | "failed"));
    shop_and_placement(&mut out, j);
    checks_and_deadline(&mut out, j, now, done);
    out.line("last error", or_dash(j.last_error.clone()));
    held_up(&mut out, j, now, done);
    out.line("pin", pin(j, reveal)?);
    if let Some(at) = j.updated_at {
        out.line("updated", at.to_rfc3339());
    }
    Ok(out.0)
}

/// What the shop sees, and how placement went.
fn shop_and_placement(out: &mut Lines, j: &Journey) {
    out.line("order", j.order_id.to_string());
    out.line("tenant", or_dash(j.tenant_id.clone()));
    out.line(
        "state",
        match (&j.state, &j.status, &j.external_status) {
            (Some(state), Some(status), Some(external)) => {
                format!("{state} (shop: {status} / {external})")
            }
            _ => "- (not in orders yet: the sink has not written it)".into(),
        },
    );
    if let Some(reason) = &j.failure_reason {
        out.line("failure", reason.clone());
    }
    out.line("provider", or_dash(j.provider_account.clone()));
    out.line("reference", or_dash(j.provider_reference.clone()));
    out.line(
        "placement",
        match (&j.placement, j.place_calls) {
            (Some(phase), Some(calls)) => format!("{phase} ({calls} placement calls)"),
            _ => "-".into(),
        },
    );
}

/// Status checks so far, the next one (while not final), the deadline and the reconciler.
fn checks_and_deadline(out: &mut Lines, j: &Journey, now: DateTime<Utc>, done: bool) {
    let attempts = j.attempts.max(j.chain_attempts);
    out.line(
        "attempts",
        attempts.map_or("-".into(), |a| format!("{a} status checks answered")),
    );
    if !done {
        let next = j.chain_next_check_at.or(j.next_check_at);
        out.line(
            "next check",
            match next {
                Some(at) => format!("{} ({})", at.to_rfc3339(), relative(at - now)),
                None => "-".into(),
            },
        );
        out.line("tier", or_dash(j.tier.clone()));
    }
    out.line(
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
        out.line(
            "reconciled",
            format!("{n} times re-enqueued by the reconciler"),
        );
    }
}

/// A stuck order names what holds it up, and since when: the placement's failing attempts
/// while it is not placed, else the checks'.
fn held_up(out: &mut Lines, j: &Journey, now: DateTime<Utc>, done: bool) {
    let held = [
        (&j.claim_error, j.claim_failing_since),
        (&j.chain_error, j.chain_failing_since),
    ]
    .into_iter()
    .find_map(|(error, since)| Some((error.clone()?, since?)));
    if let (false, Some((error, since))) = (done, held) {
        out.line(
            "held up by",
            format!(
                "{error} (since {}, {})",
                since.to_rfc3339(),
                relative(since - now)
            ),
        );
    }
}

/// The PIN masked, or opened with `reveal`'s keys.
fn pin(j: &Journey, reveal: Option<&PinKeys>) -> Result<String, RevealError> {
    Ok(match (&j.pin_encrypted, reveal) {
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
    })
}

/// "in 2m 5s" or "4s ago".
pub(super) fn relative(d: chrono::Duration) -> String {
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
    use crate::db::journey::Journey;
    use crate::secret::Secret;
    use uuid::Uuid;

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
