//! `orderflow dlq list|show|replay`: the dead-letter queue for people (docs/dlq.md).
//!
//! `list` and `show` only read the DLQ topic ([`crate::kafka::dlq::read`]); `replay` also
//! records what it sent in the database ([`crate::kafka::dlq::replay`]). Arguments are
//! taken as text and checked here, so a bad one is answered with one sentence. The text is
//! written by `render.rs`, which masks secret-named fields (G5).

mod render;

use super::CliError;
use crate::core::event::{InvalidKind, UnknownReason};
use crate::core::schedule::parse_duration;
use crate::db::DbConfig;
use crate::kafka::dlq::read::{self, BadPosition, Filter, Position, ReadError};
use crate::kafka::dlq::replay::{self, Options, ReplayError};
use crate::kafka::KafkaConfig;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List DLQ entries (position, time, reason, stage, source, order) and count them per
    /// reason.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        kafka: KafkaConfig,
    },
    /// Show one entry: its reason, where it came from, its headers and its payload, with
    /// every secret-named field masked.
    Show {
        /// The entry's position, PARTITION/OFFSET, as `dlq list` prints it.
        position: String,
        /// How long reading the entry may take, e.g. 30s or 2m.
        #[arg(long = "scan-timeout", default_value = "2m")]
        scan_timeout: String,
        #[command(flatten)]
        kafka: KafkaConfig,
    },
    /// Send entries back to the topic and partition they came from, with their key and
    /// headers and an orderflow.replay.of header; entries replayed before are skipped
    /// unless --again. An order answered failed (invalid) is placed when its replay
    /// reaches the dispatch stage (docs/dlq.md).
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Records sent per second, at most.
        #[arg(long = "rate", default_value = "50")]
        rate: String,
        /// Print what would be sent; send and record nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// Send entries that were replayed before too.
        #[arg(long)]
        again: bool,
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        db: DbConfig,
    },
}

/// Which entries a command takes; every condition given must hold.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct FilterArgs {
    /// Only entries with this reason, e.g. unknown_provider_account (repeat the flag or
    /// separate by commas).
    #[arg(long = "reason", value_delimiter = ',')]
    pub reasons: Vec<String>,
    /// Only entries that came from this topic, named without the prefix, e.g. orders.created.
    #[arg(long = "source-topic")]
    pub source_topic: Option<String>,
    /// Only entries dead-lettered at or after this time: RFC 3339
    /// (2026-12-17T09:00:00Z) or an age (30m, 2h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only entries dead-lettered before this time: RFC 3339 or an age.
    #[arg(long)]
    pub until: Option<String>,
    /// Only entries of this order.
    #[arg(long = "order-id")]
    pub order_id: Option<String>,
    /// How long reading the DLQ may take, e.g. 30s or 2m.
    #[arg(long = "scan-timeout", default_value = "2m")]
    pub scan_timeout: String,
}

/// What `orderflow dlq` fails with: a bad argument, or what reading or replaying met.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("--reason: {0}")]
    Reason(#[from] UnknownReason),
    #[error("{flag} takes an RFC 3339 time (2026-12-17T09:00:00Z) or an age like 30m or 2h; got {value:?}")]
    Time { flag: &'static str, value: String },
    #[error("the time window is empty: --since {} is not before --until {}", .since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), .until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]
    EmptyWindow {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    #[error("--order-id takes an order id (a UUID); got {0:?}")]
    OrderId(String),
    #[error("--rate takes a positive number of records per second; got {0:?}")]
    Rate(String),
    #[error("--scan-timeout takes a duration like 30s or 2m; got {0:?}")]
    ScanTimeout(String),
    #[error(transparent)]
    Position(#[from] BadPosition),
    #[error("the DLQ has no entry at {0}")]
    NoEntry(Position),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

pub async fn run(command: DlqCommand) -> Result<ExitCode, CliError> {
    match command {
        DlqCommand::List { filter, kafka } => list(filter, kafka).await,
        DlqCommand::Show {
            position,
            scan_timeout,
            kafka,
        } => show(&position, &scan_timeout, kafka).await,
        DlqCommand::Replay {
            filter,
            rate,
            dry_run,
            again,
            kafka,
            db,
        } => {
            let options = Options {
                per_second: parse_rate(&rate)?,
                dry_run,
                again,
            };
            replay_entries(filter, options, kafka, db).await
        }
    }
}

async fn list(args: FilterArgs, kafka: KafkaConfig) -> Result<ExitCode, CliError> {
    let (filter, within) = args.parse(&kafka, Utc::now())?;
    let entries = read::entries(&kafka, &filter, within)
        .await
        .map_err(DlqError::from)?;
    print!("{}", render::list(&kafka, &filter, &entries));
    Ok(ExitCode::SUCCESS)
}

async fn show(position: &str, timeout: &str, kafka: KafkaConfig) -> Result<ExitCode, CliError> {
    let position: Position = position.parse().map_err(DlqError::from)?;
    let within = parse_scan_timeout(timeout)?;
    let entry = read::one(&kafka, position, within)
        .await
        .map_err(DlqError::from)?
        .ok_or(DlqError::NoEntry(position))?;
    print!("{}", render::show(&kafka, &entry));
    Ok(ExitCode::SUCCESS)
}

async fn replay_entries(
    args: FilterArgs,
    options: Options,
    kafka: KafkaConfig,
    db: DbConfig,
) -> Result<ExitCode, CliError> {
    let (filter, within) = args.parse(&kafka, Utc::now())?;
    let pool = db.connect().await?;
    let entries = read::entries(&kafka, &filter, within)
        .await
        .map_err(DlqError::from)?;
    print!("{}", render::replay_header(&kafka, &entries, options));
    let outcomes = replay::replay(&kafka, &pool, &entries, options, |entry, outcome| {
        println!("{}", render::replay_line(&kafka, entry, outcome))
    })
    .await
    .map_err(DlqError::from)?;
    print!(
        "{}",
        render::replay_footer(&entries, &outcomes, options.dry_run)
    );
    Ok(ExitCode::SUCCESS)
}

impl FilterArgs {
    /// The filter these arguments ask for, times relative to `now`, and the scan's bound.
    pub fn parse(
        &self,
        kafka: &KafkaConfig,
        now: DateTime<Utc>,
    ) -> Result<(Filter, Duration), DlqError> {
        let reasons = self
            .reasons
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
            .map(str::parse::<InvalidKind>)
            .collect::<Result<Vec<_>, _>>()?;
        let since = time("--since", self.since.as_deref(), now)?;
        let until = time("--until", self.until.as_deref(), now)?;
        if let (Some(since), Some(until)) = (since, until) {
            if since >= until {
                return Err(DlqError::EmptyWindow { since, until });
            }
        }
        let order_id = self
            .order_id
            .as_deref()
            .map(|id| id.trim().parse().map_err(|_| DlqError::OrderId(id.into())))
            .transpose()?;
        let source_topic = self.source_topic.as_deref().map(|t| {
            if !kafka.topic_prefix.is_empty() && t.starts_with(&kafka.topic_prefix) {
                t.to_owned()
            } else {
                kafka.topic(t)
            }
        });
        let filter = Filter {
            reasons,
            source_topic,
            since,
            until,
            order_id,
        };
        Ok((filter, parse_scan_timeout(&self.scan_timeout)?))
    }
}

/// An RFC 3339 time, or an age (`30m`: that long before `now`).
fn time(
    flag: &'static str,
    value: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, DlqError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let bad = || DlqError::Time {
        flag,
        value: value.to_owned(),
    };
    if let Ok(at) = DateTime::parse_from_rfc3339(value.trim()) {
        return Ok(Some(at.with_timezone(&Utc)));
    }
    let age = parse_duration(value).map_err(|_| bad())?;
    let age = chrono::Duration::from_std(age).map_err(|_| bad())?;
    now.checked_sub_signed(age).map(Some).ok_or_else(bad)
}

fn parse_rate(value: &str) -> Result<f64, DlqError> {
    match value.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(DlqError::Rate(value.to_owned())),
    }
}

fn parse_scan_timeout(value: &str) -> Result<Duration, DlqError> {
    match parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(DlqError::ScanTimeout(value.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> FilterArgs {
        FilterArgs {
            scan_timeout: "2m".into(),
            ..FilterArgs::default()
        }
    }

    fn kafka() -> KafkaConfig {
        KafkaConfig::for_tests("127.0.0.1:9092", "env.")
    }

    #[test]
    fn filters_read_their_arguments() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let id = uuid::Uuid::new_v4();
        let a = FilterArgs {
            reasons: vec!["unknown_provider_account".into(), "invalid_field".into()],
            source_topic: Some("orders.created".into()),
            since: Some("2h".into()),
            until: Some("2027-01-15T08:00:00Z".into()),
            order_id: Some(id.to_string()),
            ..args()
        };
        let (f, within) = a.parse(&kafka(), now).unwrap();
        assert_eq!(
            f.reasons,
            [
                InvalidKind::UnknownProviderAccount,
                InvalidKind::InvalidField
            ]
        );
        assert_eq!(f.source_topic.as_deref(), Some("env.orders.created"));
        assert_eq!(f.since, Some(now - chrono::Duration::hours(2)));
        assert_eq!(f.until.unwrap().to_rfc3339(), "2027-01-15T08:00:00+00:00");
        assert_eq!(f.order_id, Some(id));
        assert_eq!(within, Duration::from_secs(120));
        // A topic named with its prefix is taken as it is.
        let prefixed = FilterArgs {
            source_topic: Some("env.orders.state".into()),
            ..args()
        };
        let (f, _) = prefixed.parse(&kafka(), now).unwrap();
        assert_eq!(f.source_topic.as_deref(), Some("env.orders.state"));
    }

    #[test]
    fn bad_arguments_are_one_sentence_each() {
        let now = Utc::now();
        let bad = |a: FilterArgs| a.parse(&kafka(), now).unwrap_err().to_string();
        let reason = bad(FilterArgs {
            reasons: vec!["unknown-account".into()],
            ..args()
        });
        assert!(
            reason.starts_with("--reason: \"unknown-account\" is not a DLQ reason"),
            "{reason}"
        );
        let since = bad(FilterArgs {
            since: Some("yesterday".into()),
            ..args()
        });
        assert!(
            since.starts_with("--since takes an RFC 3339 time"),
            "{since}"
        );
        let window = bad(FilterArgs {
            since: Some("1h".into()),
            until: Some("2h".into()),
            ..args()
        });
        assert!(window.starts_with("the time window is empty"), "{window}");
        let id = bad(FilterArgs {
            order_id: Some("42".into()),
            ..args()
        });
        assert!(id.contains("a UUID"), "{id}");
        let timeout = bad(FilterArgs {
            scan_timeout: "0s".into(),
            ..args()
        });
        assert!(timeout.starts_with("--scan-timeout"), "{timeout}");
        for rate in ["0", "-1", "fast", "NaN", "inf"] {
            assert!(parse_rate(rate).is_err(), "{rate}");
        }
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        for text in [reason, since, window, id, timeout] {
            assert!(!text.contains('\n'), "{text}");
        }
    }
}
