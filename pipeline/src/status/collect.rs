//! The status page's data: a [`Snapshot`] gathered from PostgreSQL and Kafka by a
//! [`Collector`], and [`Latest`], the one loop that collects for every viewer.
//!
//! Each source is asked on its own and may fail on its own: the page then shows the other
//! panels and says which source did not answer ([`Part::Unavailable`]), in a sentence
//! that names no secret. The loop collects one snapshot at a time, waits
//! `collect_every` between two, and stops collecting when no one has asked for 30 s, so
//! a page left open, or many of them, asks the database a few small questions every few
//! seconds and no more. The DLQ is read whole to count its reasons, so it is read at most
//! every 30 s (`DLQ_EVERY`) and its counts say when they were read.

use super::parts::{AccountView, DlqCounts, StuckOrder, StuckOrders};
use crate::db::account_status;
use crate::db::find::{self, StuckScan};
use crate::db::overview::{self, Finished, TierChains};
use crate::kafka::dlq::read as dlq;
use crate::kafka::lag::GroupLag;
use crate::kafka::KafkaConfig;
use crate::poll::DepthConfig;
use crate::shutdown::Shutdown;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How long one database question may take before its panel says so.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Collection stops when no one has asked for this long.
const IDLE_AFTER: Duration = Duration::from_secs(30);
/// How long a viewer waits for a fresh snapshot when the loop was idle.
const FIRST_WAIT: Duration = Duration::from_secs(20);
/// Least time between two reads of the DLQ, and the longest one read may take.
const DLQ_EVERY: Duration = Duration::from_secs(30);
const DLQ_WITHIN: Duration = Duration::from_secs(20);
/// Most stuck orders listed.
const STUCK_LIMIT: usize = 20;

/// One source's answer: its value, or why it has none.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part<T> {
    Ok(T),
    Unavailable(String),
}

impl<T> Part<T> {
    pub fn ok(&self) -> Option<&T> {
        match self {
            Part::Ok(v) => Some(v),
            Part::Unavailable(_) => None,
        }
    }
}

/// Checks waiting in one of the poll stage's topics: the poll group's lag there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TierLag {
    /// `first` (`orders.dispatched`) or the tier's label (`30s`, `1m`, ...).
    pub tier: String,
    /// The topic's full name, prefix included.
    pub topic: String,
    pub waiting: i64,
}

/// What the page shows, as read at `taken_at`.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    /// How long collecting it took.
    pub took_ms: u64,
    /// Which environment: the topic prefix and the poll stage's consumer group.
    pub topic_prefix: String,
    pub poll_group: String,
    /// Orders that reached a final state in the last 1, 5 and 15 minutes.
    pub finished: Part<Vec<Finished>>,
    /// Orders whose placement is not settled yet.
    pub being_placed: Part<i64>,
    /// Retry depth from Kafka: checks waiting per tier topic.
    pub tier_lag: Part<Vec<TierLag>>,
    /// Retry depth from PostgreSQL: open check chains per tier.
    pub tier_chains: Part<Vec<TierChains>>,
    /// Orders whose next step is overdue by more than the stuck rule allows.
    pub stuck: Part<StuckOrders>,
    /// Entries in `orders.dlq` per reason.
    pub dead_letters: Part<DlqCounts>,
    /// The provider accounts as each stage process sees them.
    pub accounts: Part<Vec<AccountView>>,
    #[serde(skip)]
    taken: Option<Instant>,
}

impl Snapshot {
    /// A snapshot whose every source answered nothing yet, for tests.
    #[cfg(test)]
    pub(crate) fn empty(taken_at: DateTime<Utc>) -> Snapshot {
        Snapshot {
            taken_at,
            took_ms: 0,
            topic_prefix: String::new(),
            poll_group: "orderflow.poll".into(),
            finished: Part::Ok(Vec::new()),
            being_placed: Part::Ok(0),
            tier_lag: Part::Ok(Vec::new()),
            tier_chains: Part::Ok(Vec::new()),
            stuck: Part::Ok(StuckOrders {
                orders: Vec::new(),
                more: false,
            }),
            dead_letters: Part::Ok(DlqCounts {
                per_reason: Default::default(),
                read_at: taken_at,
            }),
            accounts: Part::Ok(Vec::new()),
            taken: None,
        }
    }
}

/// Gathers snapshots. Holds only handles to read with: the pool, a Kafka client that
/// reads the poll group's committed offsets without joining it, and the Kafka settings
/// the DLQ is read with (no group either).
pub struct Collector {
    pool: PgPool,
    lag: GroupLag,
    kafka: KafkaConfig,
    topics: Vec<(String, String)>,
    poll_group: String,
    scan: StuckScan,
    /// The last DLQ counts and when they were asked for.
    dead_letters: Mutex<Option<(Instant, Part<DlqCounts>)>>,
}

impl Collector {
    pub fn new(
        pool: PgPool,
        lag: GroupLag,
        kafka: &KafkaConfig,
        depth: &DepthConfig,
        scan: StuckScan,
    ) -> Self {
        Collector {
            pool,
            lag,
            kafka: kafka.clone(),
            topics: depth.topics(kafka).unwrap_or_default(),
            poll_group: depth.group(kafka),
            scan,
            dead_letters: Mutex::new(None),
        }
    }

    /// One snapshot; every source is asked at once.
    pub async fn collect(&self) -> Snapshot {
        let start = Instant::now();
        let taken_at = Utc::now();
        let (finished, being_placed, tier_chains, tier_lag, stuck, dead_letters, accounts) = tokio::join!(
            query(overview::finished_recently(&self.pool)),
            query(overview::being_placed(&self.pool)),
            query(overview::open_chains_per_tier(&self.pool)),
            self.tier_lag(),
            self.stuck(),
            self.dead_letters(),
            self.accounts(taken_at),
        );
        Snapshot {
            taken_at,
            took_ms: start.elapsed().as_millis() as u64,
            topic_prefix: self.kafka.topic_prefix.clone(),
            poll_group: self.poll_group.clone(),
            finished,
            being_placed,
            tier_lag,
            tier_chains,
            stuck,
            dead_letters,
            accounts,
            taken: Some(start),
        }
    }

    async fn tier_lag(&self) -> Part<Vec<TierLag>> {
        // The lag reader's own calls each wait at most the Kafka connect timeout, and the
        // loop waits for it rather than start another beside it.
        match self.lag.sample_async().await {
            Some(lag) => Part::Ok(
                lag.into_iter()
                    .zip(&self.topics)
                    .map(|((tier, waiting), (_, topic))| TierLag {
                        tier,
                        topic: topic.clone(),
                        waiting,
                    })
                    .collect(),
            ),
            None => Part::Unavailable("the Kafka cluster did not answer".into()),
        }
    }

    async fn stuck(&self) -> Part<StuckOrders> {
        let limit = STUCK_LIMIT as i64 + 1;
        match query(find::stuck(&self.pool, &self.scan, limit)).await {
            Part::Ok(rows) => {
                let mut orders: Vec<StuckOrder> = rows.iter().filter_map(StuckOrder::of).collect();
                let more = orders.len() > STUCK_LIMIT;
                orders.truncate(STUCK_LIMIT);
                Part::Ok(StuckOrders { orders, more })
            }
            Part::Unavailable(why) => Part::Unavailable(why),
        }
    }

    /// The DLQ's counts per reason, read again only when the last read is `DLQ_EVERY` old.
    async fn dead_letters(&self) -> Part<DlqCounts> {
        if let Some((at, part)) = &*self.dead_letters.lock().expect("not poisoned") {
            if at.elapsed() < DLQ_EVERY {
                return part.clone();
            }
        }
        let read_at = Utc::now();
        let part =
            match dlq::counts_per_reason(&self.kafka, &dlq::Filter::default(), DLQ_WITHIN).await {
                Ok(per_reason) => Part::Ok(DlqCounts {
                    per_reason,
                    read_at,
                }),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the DLQ failed");
                    Part::Unavailable(format!(
                        "the DLQ could not be read ({})",
                        crate::secret::scrub(&e.to_string())
                    ))
                }
            };
        *self.dead_letters.lock().expect("not poisoned") = Some((Instant::now(), part.clone()));
        part
    }

    async fn accounts(&self, now: DateTime<Utc>) -> Part<Vec<AccountView>> {
        match query(account_status::read(&self.pool)).await {
            Part::Ok(rows) => Part::Ok(rows.iter().map(|r| AccountView::of(r, now)).collect()),
            Part::Unavailable(why) => Part::Unavailable(why),
        }
    }
}

/// A database question with a time limit; a failure becomes one sentence without secrets.
async fn query<T>(question: impl Future<Output = Result<T, sqlx::Error>>) -> Part<T> {
    match tokio::time::timeout(QUERY_TIMEOUT, question).await {
        Ok(Ok(value)) => Part::Ok(value),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "a status page query failed");
            Part::Unavailable(format!(
                "the database did not answer ({})",
                crate::secret::scrub(&e.to_string())
            ))
        }
        Err(_) => Part::Unavailable(format!(
            "the database did not answer within {} s",
            QUERY_TIMEOUT.as_secs()
        )),
    }
}

/// The latest snapshot, kept fresh by one background loop while someone looks.
#[derive(Clone)]
pub struct Latest {
    snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    wanted: Arc<Notify>,
    last_asked: Arc<Mutex<Option<Instant>>>,
}

impl Latest {
    /// Starts the loop; it ends with `shutdown`.
    pub fn start(collector: Collector, every: Duration, mut shutdown: Shutdown) -> Latest {
        let (tx, snapshot) = watch::channel(None);
        let latest = Latest {
            snapshot,
            wanted: Arc::new(Notify::new()),
            last_asked: Arc::new(Mutex::new(None)),
        };
        let me = latest.clone();
        tokio::spawn(async move {
            loop {
                while !me.asked_within(IDLE_AFTER) {
                    tokio::select! {
                        _ = me.wanted.notified() => {}
                        _ = shutdown.wait() => return,
                    }
                }
                let snapshot = tokio::select! {
                    s = collector.collect() => s,
                    _ = shutdown.wait() => return,
                };
                tx.send_replace(Some(Arc::new(snapshot)));
                if shutdown.sleep(every).await.is_err() {
                    return;
                }
            }
        });
        latest
    }

    fn asked_within(&self, within: Duration) -> bool {
        self.last_asked
            .lock()
            .expect("not poisoned")
            .is_some_and(|at| at.elapsed() < within)
    }

    /// The latest snapshot. After a quiet spell (the loop idle, the snapshot old) it waits
    /// for a fresh one, up to 20 s; `None` only when none could be collected by then.
    pub async fn get(&self) -> Option<Arc<Snapshot>> {
        let was_idle = !self.asked_within(IDLE_AFTER);
        *self.last_asked.lock().expect("not poisoned") = Some(Instant::now());
        self.wanted.notify_one();
        let mut rx = self.snapshot.clone();
        let current = rx.borrow_and_update().clone();
        let fresh = current
            .as_ref()
            .and_then(|s| s.taken)
            .is_some_and(|at| at.elapsed() < IDLE_AFTER);
        if current.is_some() && (fresh || !was_idle) {
            return current;
        }
        match tokio::time::timeout(FIRST_WAIT, rx.changed()).await {
            Ok(Ok(())) => rx.borrow().clone(),
            _ => current,
        }
    }
}
