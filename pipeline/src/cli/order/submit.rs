//! `orderflow order submit`: publishes one `orders.created` event by hand, from flags or a
//! JSON file, after the dispatch stage's own checks ([`crate::dispatch::validate_event`]:
//! the same decoding, limits and, when the accounts file is at hand, account and product),
//! keyed by its order id as a shop publishes it. With `--wait` it follows the order in the
//! database until it is final and prints its journey as `order show` does.
//!
//! Exit codes (also in `--help`): 0 published, or with `--wait` completed; 1 an error (one
//! sentence: the event is invalid, the broker or database cannot be reached); 2 bad
//! arguments; 3 the order ended `failed`; 4 `--timeout` passed before it was final.

use super::parse_age;
use crate::cli::CliError;
use crate::core::event::{InvalidEvent, OrderCreated, DEFAULT_MAX_EVENT_BYTES, SCHEMA_VERSION};
use crate::db::journey::{self, Journey};
use crate::db::DbConfig;
use crate::kafka::topics::name;
use crate::kafka::{headers, KafkaConfig};
use crate::provider::accounts::Accounts;
use chrono::{DateTime, Utc};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The order ended `failed`.
pub const EXIT_FAILED: u8 = 3;
/// `--timeout` passed before the order was final.
pub const EXIT_TIMED_OUT: u8 = 4;

/// The event's fields, given one by one instead of `--file`.
const FIELDS: [&str; 7] = [
    "order_id",
    "tenant",
    "account",
    "product",
    "user_identifier",
    "user_extra",
    "deadline",
];

#[derive(clap::Args)]
pub struct SubmitArgs {
    /// A JSON file with the whole event, as a shop would publish it (`-`: standard input);
    /// published byte for byte once valid.
    #[arg(long, value_name = "PATH", conflicts_with_all = FIELDS)]
    file: Option<PathBuf>,
    /// The order id (default: a new random one).
    #[arg(long)]
    order_id: Option<Uuid>,
    /// The tenant (shop) the order is for.
    #[arg(long, required_unless_present = "file")]
    tenant: Option<String>,
    /// The provider account that places the order.
    #[arg(long, required_unless_present = "file")]
    account: Option<String>,
    /// A product parameter; repeat it (znet: --product oyun=412 --product kupur=100).
    #[arg(long = "product", value_name = "KEY=VALUE", value_parser = product_pair)]
    product: Vec<(String, String)>,
    /// The first user field (znet: the customer's phone, musteri_tel).
    #[arg(long, default_value = "")]
    user_identifier: String,
    /// The second user field (znet: the player info, oyuncu_bilgi).
    #[arg(long, default_value = "")]
    user_extra: String,
    /// The order's deadline, RFC 3339 (default: the dispatch stage's, 24 h).
    #[arg(long, value_name = "TIME")]
    deadline: Option<DateTime<Utc>>,
    /// Follow the order until it is final, then print its journey (needs the database).
    #[arg(long)]
    wait: bool,
    /// How long --wait follows the order before giving up (exit code 4).
    #[arg(long, default_value = "5m", value_parser = parse_age)]
    timeout: Duration,
    /// Largest event accepted, in bytes, as the dispatch stage's.
    #[arg(long = "max-event-bytes", env = "ORDERFLOW_MAX_EVENT_BYTES", default_value_t = DEFAULT_MAX_EVENT_BYTES)]
    max_event_bytes: usize,
    /// The provider accounts file: when set, the account and product are checked as the
    /// dispatch stage checks them before anything is published.
    #[arg(long = "provider-accounts", env = "ORDERFLOW_PROVIDER_ACCOUNTS")]
    accounts_file: Option<PathBuf>,
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(flatten)]
    db: DbConfig,
}

/// Why an order was not published.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot read the order file {path} ({source})")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the order is not valid ({}): {}", .0.kind, .0.detail)]
    Invalid(InvalidEvent),
    #[error("publishing the order to {topic} failed ({reason})")]
    Publish { topic: String, reason: String },
}

fn product_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

impl SubmitArgs {
    /// The event's bytes: the file as it is, or the flags' event encoded.
    fn payload(&self) -> Result<Vec<u8>, SubmitError> {
        if let Some(path) = &self.file {
            let read = |source| SubmitError::Read {
                path: path.display().to_string(),
                source,
            };
            if path.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::stdin().read_to_end(&mut bytes).map_err(read)?;
                return Ok(bytes);
            }
            return std::fs::read(path).map_err(read);
        }
        let order = OrderCreated {
            schema_version: SCHEMA_VERSION,
            order_id: self.order_id.unwrap_or_else(Uuid::new_v4),
            tenant_id: self.tenant.clone().unwrap_or_default(),
            provider_account: self.account.clone().unwrap_or_default(),
            product: self.product.iter().cloned().collect::<BTreeMap<_, _>>(),
            user_identifier: self.user_identifier.clone(),
            user_extra: self.user_extra.clone(),
            created_at: Utc::now(),
            deadline: self.deadline,
        };
        Ok(order.encode())
    }
}

pub async fn run(args: SubmitArgs) -> Result<ExitCode, CliError> {
    let payload = args.payload()?;
    let accounts = match &args.accounts_file {
        Some(path) => Some(Accounts::load(path, crate::znet::connect)?),
        None => None,
    };
    let order = crate::dispatch::validate_event(&payload, args.max_event_bytes, accounts.as_ref())
        .map_err(SubmitError::Invalid)?;
    // The database first: a --wait that cannot follow the order should not publish it.
    let pool = if args.wait {
        Some(args.db.connect().await?)
    } else {
        None
    };
    let (partition, offset) = publish(&args.kafka, &order, &payload).await?;
    println!(
        "order {} published to {} (partition {partition}, offset {offset})",
        order.order_id,
        args.kafka.topic(name::ORDERS_CREATED)
    );
    let Some(pool) = pool else {
        return Ok(ExitCode::SUCCESS);
    };
    let (journey, done) = follow(&pool, order.order_id, args.timeout).await?;
    if let Some(j) = &journey {
        println!();
        print!("{}", super::render(j, Utc::now(), None)?);
    }
    let state = journey.as_ref().and_then(state_of);
    Ok(match (done, state) {
        (true, Some("completed")) => ExitCode::SUCCESS,
        (true, _) => ExitCode::from(EXIT_FAILED),
        (false, state) => {
            eprintln!(
                "error: order {} is not final after {} (state: {})",
                order.order_id,
                crate::core::schedule::label(args.timeout),
                state.unwrap_or("not received yet")
            );
            ExitCode::from(EXIT_TIMED_OUT)
        }
    })
}

/// Publishes the event keyed by its order id, as a shop does; where it landed.
async fn publish(
    kafka: &KafkaConfig,
    order: &OrderCreated,
    payload: &[u8],
) -> Result<(i32, i64), CliError> {
    let topic = kafka.topic(name::ORDERS_CREATED);
    kafka.check_topics_off_runtime(vec![topic.clone()]).await?;
    let producer = kafka.producer()?;
    let key = order.order_id.to_string();
    let version = SCHEMA_VERSION.to_string();
    let record =
        FutureRecord::to(&topic)
            .key(&key)
            .payload(payload)
            .headers(crate::telemetry::inject(headers::build([
                (headers::EVENT, name::ORDERS_CREATED),
                (headers::SCHEMA_VERSION, version.as_str()),
            ])));
    let wait = Timeout::After(kafka.connect_timeout() * 3);
    match producer.send(record, wait).await {
        Ok(delivered) => Ok((delivered.partition, delivered.offset)),
        Err((e, _)) => Err(SubmitError::Publish {
            topic,
            reason: e.to_string(),
        }
        .into()),
    }
}

/// The order's lifecycle state: its row in `orders`, or before the sink wrote it, what its
/// claim implies (as `order list` shows it).
fn state_of(j: &Journey) -> Option<&str> {
    j.state.as_deref().or(match j.placement.as_deref()? {
        "new" | "placing" => Some("received"),
        "placed" => Some("dispatched"),
        _ => Some("failed"),
    })
}

/// Whether a journey is final.
fn is_final(j: &Journey) -> bool {
    matches!(j.state.as_deref(), Some("completed" | "failed"))
}

/// Reads the order's journey every half second until it is final or `timeout` passed,
/// telling each new state on stderr; the last journey read, and whether it is final.
async fn follow(
    pool: &PgPool,
    order_id: Uuid,
    timeout: Duration,
) -> Result<(Option<Journey>, bool), CliError> {
    let start = Instant::now();
    let mut told: Option<String> = None;
    loop {
        let journey = journey::get(pool, order_id).await?;
        if let Some(j) = &journey {
            let now = state_of(j).map(str::to_owned);
            if now.is_some() && now != told {
                let elapsed = start.elapsed().as_secs_f64();
                eprintln!("{elapsed:>6.1}s  {}", now.as_deref().unwrap_or_default());
                told = now;
            }
            if is_final(j) {
                return Ok((journey, true));
            }
        }
        if start.elapsed() >= timeout {
            return Ok((journey, false));
        }
        tokio::time::sleep(Duration::from_millis(500).min(timeout)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SubmitArgs,
    }

    fn parse(args: &[&str]) -> Result<SubmitArgs, clap::Error> {
        let argv = std::iter::once("submit").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn flags_make_the_event_the_stage_decodes() {
        let args = parse(&[
            "--tenant",
            "shop-1",
            "--account",
            "znet-main",
            "--product",
            "oyun=412",
            "--product",
            "kupur=100",
            "--user-identifier",
            "5551234567",
        ])
        .unwrap();
        let payload = args.payload().unwrap();
        let order = crate::dispatch::validate_event(&payload, 16 * 1024, None).unwrap();
        assert_eq!(order.tenant_id, "shop-1");
        assert_eq!(order.product["kupur"], "100");
        assert!(!order.order_id.is_nil());
    }

    #[test]
    fn the_stages_checks_refuse_a_bad_order_in_one_sentence() {
        let args = parse(&["--tenant", " ", "--account", "znet-main"]).unwrap();
        let why =
            crate::dispatch::validate_event(&args.payload().unwrap(), 16 * 1024, None).unwrap_err();
        let text = SubmitError::Invalid(why).to_string();
        assert_eq!(
            text,
            "the order is not valid (invalid_field): tenant_id must not be blank"
        );
    }

    #[test]
    fn flags_and_a_file_do_not_mix_and_a_product_needs_an_equals_sign() {
        assert!(parse(&["--file", "x.json", "--tenant", "shop-1"]).is_err());
        assert!(parse(&["--tenant", "t", "--account", "a", "--product", "oyun"]).is_err());
        assert!(parse(&["--account", "a"]).is_err(), "--tenant is required");
        assert!(parse(&["--file", "x.json"]).is_ok());
    }
}
