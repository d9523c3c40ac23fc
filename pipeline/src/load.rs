//! `orderflow load`: publishes a realistic stream of orders and follows each to the point
//! where the pipeline has answered it, with a live progress line and a summary.
//!
//! It plays the shop: orders of a few tenants and denominations at a steady rate, a share
//! the provider will reject and a share of broken events. An order counts as answered once
//! `orders.state` has its final state (or its dispatched state, with `--until dispatched`),
//! or `orders.dlq` has its event; what is never answered is reported as missing (G2) and
//! makes the command fail. The summary's
//! throughput and latency (publish to answer) are measured here, not estimated.

use crate::core::event::{OrderCreated, OrderStateEvent, SCHEMA_VERSION};
use crate::core::lifecycle::OrderState;
use crate::core::seeded::Seeded;
use crate::kafka::topics::name;
use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use crate::shutdown::Shutdown;
use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Clone, Debug, clap::Args)]
pub struct LoadConfig {
    /// Orders to publish.
    #[arg(long, default_value_t = 500)]
    pub orders: usize,
    /// Orders published per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Provider account the orders name.
    #[arg(long, default_value = "znet-demo")]
    pub account: String,
    /// Share of orders for a denomination the provider does not sell (they end rejected).
    #[arg(long, default_value_t = 0.03)]
    pub reject_share: f64,
    /// Share of events that are broken on purpose (they end in orders.dlq).
    #[arg(long, default_value_t = 0.02)]
    pub invalid_share: f64,
    /// Give up waiting for answers after this many seconds past the last publish.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
    /// What counts as an answer: a final state (completed or failed), or already the
    /// dispatched state (when no poll stage runs).
    #[arg(long, value_enum, default_value_t = Until::Final)]
    pub until: Until,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    Dispatched,
    Final,
}

impl Until {
    fn reached(self, answer: Answer) -> bool {
        self == Until::Dispatched || answer != Answer::Dispatched
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("the load generator's Kafka client failed ({0})")]
    Kafka(#[from] KafkaError),
    #[error("--{0} must be between 0 and 1")]
    Share(&'static str),
    #[error("--rate must be positive")]
    Rate,
}

/// How one published event was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    Dispatched,
    Completed,
    Failed,
    DeadLettered,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Dispatched => "dispatched",
            Answer::Completed => "completed",
            Answer::Failed => "failed",
            Answer::DeadLettered => "dead-lettered",
        }
    }
}

/// What the run measured.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub published: usize,
    pub answered: BTreeMap<String, usize>,
    pub missing: usize,
    pub elapsed: Duration,
    /// Publish-to-answer latencies, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        Some(self.latencies[rank])
    }
}

/// One event to publish: its key and bytes.
fn make_event(mix: &mut Seeded, config: &LoadConfig, i: usize) -> (Uuid, Vec<u8>) {
    let order_id = Uuid::new_v4();
    let roll = mix.fraction();
    if roll < config.invalid_share {
        let broken = match i % 3 {
            0 => b"{\"schema_version\":1,\"order_id\":".to_vec(),
            1 => format!(
                "{{\"schema_version\":1,\"order_id\":\"{order_id}\",\"tenant_id\":\"shop-1\"}}"
            )
            .into_bytes(),
            _ => format!("{{\"schema_version\":1,\"order_id\":\"not-a-uuid-{i}\"}}").into_bytes(),
        };
        return (order_id, broken);
    }
    let kupur = if roll < config.invalid_share + config.reject_share {
        "999"
    } else {
        ["25", "50", "100"][i % 3]
    };
    let order = OrderCreated {
        schema_version: SCHEMA_VERSION,
        order_id,
        tenant_id: format!("shop-{}", 1 + i % 3),
        provider_account: config.account.clone(),
        product: BTreeMap::from([
            ("oyun".into(), "412".into()),
            ("kupur".into(), kupur.into()),
        ]),
        user_identifier: format!("555{:07}", i),
        user_extra: format!("oyuncu#{i}"),
        created_at: Utc::now(),
        deadline: None,
    };
    (order_id, order.encode())
}

/// Publishes the load and follows it until every event is answered or the wait ends.
pub async fn run(
    kafka: &KafkaConfig,
    config: &LoadConfig,
    mut shutdown: Shutdown,
) -> Result<LoadReport, LoadError> {
    for (flag, share) in [
        ("reject-share", config.reject_share),
        ("invalid-share", config.invalid_share),
    ] {
        if !(0.0..=1.0).contains(&share) {
            return Err(LoadError::Share(flag));
        }
    }
    if config.rate.is_nan() || config.rate <= 0.0 {
        return Err(LoadError::Rate);
    }
    kafka.check_reachable()?;
    let watcher = watch_from_now(kafka).await?;
    let producer = kafka.producer()?;
    let created = kafka.topic(name::ORDERS_CREATED);
    let state_topic = kafka.topic(name::ORDERS_STATE);

    let start = Instant::now();
    let mut published: HashMap<Uuid, Instant> = HashMap::new();
    let mut answers: HashMap<Uuid, (Answer, Duration)> = HashMap::new();
    let mut sends = FuturesUnordered::new();
    let mut mix = Seeded::new(0x5EED);
    let mut next_publish = 0usize;
    let interval = Duration::from_secs_f64(1.0 / config.rate);
    let mut publish_tick = tokio::time::interval(interval);
    publish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut progress_tick = tokio::time::interval(Duration::from_secs(1));
    let mut wait_until: Option<tokio::time::Instant> = None;
    let progress = Progress::new();

    loop {
        let done = answers
            .values()
            .filter(|(a, _)| config.until.reached(*a))
            .count();
        if next_publish == config.orders && sends.is_empty() && published.len() == done {
            break;
        }
        let waiting = async {
            match wait_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = waiting => break,
            _ = publish_tick.tick(), if next_publish < config.orders => {
                let (id, bytes) = make_event(&mut mix, config, next_publish);
                next_publish += 1;
                let producer = producer.clone();
                let topic = created.clone();
                sends.push(async move {
                    let key = id.to_string();
                    let record = FutureRecord::to(&topic).key(&key).payload(&bytes);
                    let sent = producer.send(record, Timeout::After(Duration::from_secs(30))).await;
                    (id, Instant::now(), sent.map(|_| ()).map_err(|(e, _)| e))
                });
            }
            Some((id, at, sent)) = sends.next() => {
                sent?;
                published.insert(id, at);
                if next_publish == config.orders && sends.is_empty() {
                    wait_until = Some(tokio::time::Instant::now() + Duration::from_secs(config.wait_secs));
                }
            }
            received = watcher.recv() => {
                let message = match received {
                    Ok(m) => m,
                    Err(e) => { tracing::warn!(error = %e, "watching the outcome topics failed"); continue; }
                };
                let Some(id) = message.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| k.parse::<Uuid>().ok()) else { continue };
                let answer = if message.topic() == state_topic {
                    match message.payload().and_then(|p| serde_json::from_slice::<OrderStateEvent>(p).ok()).map(|s| s.state) {
                        Some(OrderState::Completed) => Answer::Completed,
                        Some(OrderState::Failed) => Answer::Failed,
                        Some(OrderState::Dispatched) => Answer::Dispatched,
                        _ => continue,
                    }
                } else {
                    Answer::DeadLettered
                };
                // The answer may overtake the publish acknowledgement.
                let at = published.get(&id).copied();
                let latency = at.map(|t| t.elapsed()).unwrap_or_default();
                let entry = answers.entry(id).or_insert((answer, latency));
                if answer > entry.0 { *entry = (answer, latency); }
            }
            _ = progress_tick.tick() => progress.show(start, next_publish, config.until, &answers),
        }
    }
    progress.done();

    let mut report = LoadReport {
        published: published.len(),
        elapsed: start.elapsed(),
        ..LoadReport::default()
    };
    for (id, (answer, latency)) in &answers {
        if published.contains_key(id) && config.until.reached(*answer) {
            *report
                .answered
                .entry(answer.as_str().to_owned())
                .or_default() += 1;
            report.latencies.push(*latency);
        }
    }
    report.missing = published
        .keys()
        .filter(|id| {
            !answers
                .get(id)
                .is_some_and(|(a, _)| config.until.reached(*a))
        })
        .count();
    report.latencies.sort();
    Ok(report)
}

/// A consumer positioned at the current end of orders.state and orders.dlq, so it sees
/// only what this run causes.
async fn watch_from_now(kafka: &KafkaConfig) -> Result<StreamConsumer<Context>, LoadError> {
    let consumer: StreamConsumer<Context> = kafka
        .client_config()
        .set("group.id", format!("orderflow.load.{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create_with_context(Context)
        .map_err(KafkaSetupError::Client)?;
    // Right after `topics apply` a partition may not have a leader yet: ask again a while.
    let mut attempts = 0;
    let tpl = loop {
        match end_offsets(kafka, &consumer) {
            Ok(tpl) => break tpl,
            Err(e) if attempts < 20 => {
                tracing::debug!(error = %e, "end offsets not available yet");
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The current end of every partition of orders.state and orders.dlq.
fn end_offsets(
    kafka: &KafkaConfig,
    consumer: &StreamConsumer<Context>,
) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for topic in [
        kafka.topic(name::ORDERS_STATE),
        kafka.topic(name::ORDERS_DLQ),
    ] {
        let metadata = consumer.fetch_metadata(Some(&topic), kafka.connect_timeout())?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) =
                    consumer.fetch_watermarks(&topic, p.id(), kafka.connect_timeout())?;
                tpl.add_partition_offset(&topic, p.id(), Offset::Offset(high))?;
            }
        }
    }
    Ok(tpl)
}

/// The live progress line: rewritten in place on a terminal, a line every 5 s otherwise.
struct Progress {
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(
        &self,
        start: Instant,
        published: usize,
        until: Until,
        answers: &HashMap<Uuid, (Answer, Duration)>,
    ) {
        let secs = start.elapsed().as_secs();
        if !self.tty && secs % 5 != 0 {
            return;
        }
        let count = |a: Answer| answers.values().filter(|(x, _)| *x == a).count();
        let line = format!(
            "[{secs:>4}s] published {published} | dispatched {} | completed {} | failed {} | dead-lettered {} | waiting {}",
            count(Answer::Dispatched),
            count(Answer::Completed),
            count(Answer::Failed),
            count(Answer::DeadLettered),
            published.saturating_sub(answers.values().filter(|(a, _)| until.reached(*a)).count()),
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(invalid: f64, reject: f64) -> LoadConfig {
        LoadConfig {
            orders: 1000,
            rate: 1.0,
            account: "a".into(),
            reject_share: reject,
            invalid_share: invalid,
            wait_secs: 1,
            until: Until::Final,
        }
    }

    #[test]
    fn the_mix_follows_the_shares() {
        let c = config(0.1, 0.2);
        let mut mix = Seeded::new(7);
        let (mut invalid, mut rejected) = (0, 0);
        for i in 0..1000 {
            let (_, bytes) = make_event(&mut mix, &c, i);
            match OrderCreated::decode(&bytes, 1 << 20) {
                Err(_) => invalid += 1,
                Ok(o) if o.product["kupur"] == "999" => rejected += 1,
                Ok(_) => {}
            }
        }
        assert!((70..130).contains(&invalid), "{invalid}");
        assert!((150..250).contains(&rejected), "{rejected}");
    }

    #[test]
    fn percentiles_pick_from_the_sorted_latencies() {
        let report = LoadReport {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..LoadReport::default()
        };
        assert_eq!(report.percentile(50.0), Some(Duration::from_millis(51)));
        assert_eq!(report.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(LoadReport::default().percentile(50.0), None);
    }
}
