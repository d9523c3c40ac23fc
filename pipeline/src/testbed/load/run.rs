//! [`run`]: publishes the load at its rate ([`Publisher`], each order timed from its
//! intended send time) and follows every order on `orders.state`, `orders.dlq` and, in row
//! mode, PostgreSQL ([`Tracker`]) until each is answered or the wait ends.

use super::outcomes::watch_from_now;
use super::progress::Progress;
use super::rows::{watch_rows, FinalRow};
use super::{
    intended_offset, make_event, since_intended, Answer, Journey, LoadConfig, LoadError,
    LoadReport, Observer, Snapshot, Until,
};
use crate::core::event::OrderStateEvent;
use crate::core::lifecycle::OrderState;
use crate::core::seeded::Seeded;
use crate::kafka::lag::GroupLag;
use crate::kafka::topics::name;
use crate::kafka::{Context, KafkaConfig};
use crate::shutdown::Shutdown;
use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// Orders handed to the producer per turn of the loop, so that the outcome topics are
/// read while a large backlog is being sent.
const SEND_BATCH: usize = 1_000;

/// Publishes the load and follows it until every event is answered or the wait ends.
/// With `rows`, an order is final once its row in PostgreSQL is (see the module's notes).
pub async fn run(
    kafka: &KafkaConfig,
    config: &LoadConfig,
    observer: &mut dyn Observer,
    rows: Option<PgPool>,
    mut shutdown: Shutdown,
) -> Result<LoadReport, LoadError> {
    check_shares(config)?;
    kafka.check_reachable()?;
    let lag = config.depth.lag(kafka)?;
    let watcher = watch_from_now(kafka).await?;
    let mut publisher = Publisher::new(kafka, config)?;
    let state_topic = kafka.topic(name::ORDERS_STATE);
    let (depth_rx, depth_task) = sample_depth(lag);
    let (candidate_tx, candidate_rx) = mpsc::unbounded_channel();
    let (row_tx, mut row_rx) = mpsc::unbounded_channel();
    let mut tracker = Tracker::new(config.until, rows.is_some());
    let row_task = rows.map(|pool| watch_rows(pool, candidate_rx, row_tx));
    let mut progress_tick = tokio::time::interval(Duration::from_secs(1));
    let mut wait_until: Option<tokio::time::Instant> = None;
    let progress = Progress::new();

    loop {
        if publisher.done() && tracker.answered == tracker.journeys.len() {
            break;
        }
        let waiting = async {
            match wait_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let next_send = publisher.next_send(tracker.start);
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = waiting => break,
            _ = tokio::time::sleep_until(next_send.unwrap_or_else(tokio::time::Instant::now)), if next_send.is_some() => {
                publisher.send_batch(&mut tracker)?;
            }
            Some(sent) = publisher.sends.next() => {
                match sent {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(e.into()),
                    Err(_) => return Err(KafkaError::Canceled.into()),
                }
                tracker.acked += 1;
                if publisher.done() {
                    wait_until = Some(tokio::time::Instant::now() + Duration::from_secs(config.wait_secs));
                }
            }
            Some(row) = row_rx.recv() => tracker.on_row(row),
            received = watcher.recv() => match received {
                Ok(message) => tracker.on_outcome(&message, &state_topic, &candidate_tx),
                Err(e) => tracing::warn!(error = %e, "watching the outcome topics failed"),
            },
            _ = progress_tick.tick() => {
                tracker.take_snapshot(&depth_rx);
                progress.show(&tracker.counts, tracker.open(), false);
                observer.observe(&tracker.counts);
                tracker.series.push(tracker.counts.clone());
            }
        }
    }
    // The last answers may come after the last tick: one more snapshot closes the series.
    tracker.take_snapshot(&depth_rx);
    observer.observe(&tracker.counts);
    tracker.series.push(tracker.counts.clone());
    progress.show(&tracker.counts, tracker.open(), true);
    progress.done();
    depth_task.abort();
    drop(candidate_tx);
    let row_lookups = match row_task {
        Some(task) => task.await.unwrap_or(0),
        None => 0,
    };
    Ok(tracker.report(row_lookups))
}

/// Each share flag is between 0 and 1.
fn check_shares(config: &LoadConfig) -> Result<(), LoadError> {
    for (flag, share) in [
        ("reject-share", config.reject_share),
        ("invalid-share", config.invalid_share),
    ] {
        if !(0.0..=1.0).contains(&share) {
            return Err(LoadError::Share(flag));
        }
    }
    Ok(())
}

/// The depth per tier, read off the loop: a few dozen broker round trips a second.
fn sample_depth(
    lag: GroupLag,
) -> (
    watch::Receiver<Vec<(String, i64)>>,
    tokio::task::JoinHandle<()>,
) {
    let (depth_tx, depth_rx) = watch::channel(Vec::new());
    let depth_task = tokio::spawn(async move {
        loop {
            if let Some(depth) = lag.sample_async().await {
                if depth_tx.send(depth).is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
    });
    (depth_rx, depth_task)
}

/// The generator's side: the orders still to send, at their intended times.
struct Publisher<'a> {
    config: &'a LoadConfig,
    producer: FutureProducer<Context>,
    created: String,
    mix: Seeded,
    next_publish: usize,
    /// An order the producer refused (its queue full), retried with its first attempt's
    /// time.
    refused: Option<(Uuid, Vec<u8>, Instant)>,
    retry_at: tokio::time::Instant,
    sends: FuturesUnordered<DeliveryFuture>,
}

impl<'a> Publisher<'a> {
    fn new(kafka: &KafkaConfig, config: &'a LoadConfig) -> Result<Self, LoadError> {
        Ok(Publisher {
            config,
            producer: kafka.producer_lingering(super::SHOP_LINGER_MS, Context::default())?,
            created: kafka.topic(name::ORDERS_CREATED),
            mix: Seeded::new(0x5EED),
            next_publish: 0,
            refused: None,
            retry_at: tokio::time::Instant::now(),
            sends: FuturesUnordered::new(),
        })
    }

    /// Every order handed over and acknowledged.
    fn done(&self) -> bool {
        self.next_publish == self.config.orders && self.refused.is_none() && self.sends.is_empty()
    }

    /// When the generator next has an order to hand over.
    fn next_send(&self, start: Instant) -> Option<tokio::time::Instant> {
        if self.refused.is_some() {
            Some(self.retry_at)
        } else if self.next_publish < self.config.orders {
            Some(match intended_offset(self.config.rate, self.next_publish) {
                Some(offset) => tokio::time::Instant::from_std(start + offset),
                None => tokio::time::Instant::now(),
            })
        } else {
            None
        }
    }

    /// The next order due (the refused one first), with its intended time.
    fn next_due(&mut self, start: Instant) -> Option<(Uuid, Vec<u8>, Instant)> {
        if let Some(refused) = self.refused.take() {
            return Some(refused);
        }
        if self.next_publish == self.config.orders {
            return None;
        }
        let intended = match intended_offset(self.config.rate, self.next_publish) {
            Some(offset) => start + offset,
            None => Instant::now(),
        };
        if intended > Instant::now() {
            return None;
        }
        let (id, bytes) = make_event(&mut self.mix, self.config, self.next_publish);
        self.next_publish += 1;
        Some((id, bytes, intended))
    }

    /// Hands up to [`SEND_BATCH`] due orders to the producer; a full queue ends the batch
    /// and the order is retried shortly.
    fn send_batch(&mut self, tracker: &mut Tracker) -> Result<(), LoadError> {
        for _ in 0..SEND_BATCH {
            let Some((id, bytes, intended)) = self.next_due(tracker.start) else {
                break;
            };
            let key = id.to_string();
            let handed = self
                .producer
                .send_result(FutureRecord::to(&self.created).key(&key).payload(&bytes))
                .map_err(|(e, _)| e);
            match handed {
                Ok(delivery) => {
                    tracker.journeys.insert(
                        id,
                        Journey {
                            intended,
                            handed: intended.elapsed(),
                            dispatched: None,
                            answer: None,
                            row: None,
                        },
                    );
                    self.sends.push(delivery);
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    self.refused = Some((id, bytes, intended));
                    self.retry_at = tokio::time::Instant::now() + Duration::from_millis(2);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracker.counts.published = tracker.journeys.len();
        Ok(())
    }
}

/// The follower's side: every published order's journey and the run's counts.
struct Tracker {
    until: Until,
    row_mode: bool,
    /// The monotonic clock times the run; the wall clock, read at the same moment, maps a
    /// row's `updated_at` (PostgreSQL's clock, this machine's) onto it.
    start: Instant,
    start_wall: DateTime<Utc>,
    journeys: HashMap<Uuid, Journey>,
    acked: usize,
    counts: Snapshot,
    answered: usize,
    answer_secs: Vec<f64>,
    last_answer: Duration,
    series: Vec<Snapshot>,
}

impl Tracker {
    fn new(until: Until, row_mode: bool) -> Self {
        Tracker {
            until,
            row_mode,
            start: Instant::now(),
            start_wall: Utc::now(),
            journeys: HashMap::new(),
            acked: 0,
            counts: Snapshot::default(),
            answered: 0,
            answer_secs: Vec::new(),
            last_answer: Duration::ZERO,
            series: Vec::new(),
        }
    }

    /// Orders published and not answered yet.
    fn open(&self) -> usize {
        self.journeys.len() - self.answered
    }

    fn take_snapshot(&mut self, depth: &watch::Receiver<Vec<(String, i64)>>) {
        self.counts.at = self.start.elapsed().as_secs_f64();
        self.counts.waiting = depth.borrow().clone();
    }

    /// Counts an order answered at `at` (since the start) if this event answered it.
    fn count_answer(&mut self, was_answered: bool, now_answered: bool, at: Duration) {
        if !was_answered && now_answered {
            self.answered += 1;
            self.answer_secs.push(at.as_secs_f64());
            self.last_answer = self.last_answer.max(at);
        }
    }

    /// An order's row found final in PostgreSQL (row mode).
    fn on_row(&mut self, row: FinalRow) {
        let (until, row_mode) = (self.until, self.row_mode);
        let Some(journey) = self.journeys.get_mut(&row.order_id) else {
            return;
        };
        if journey.row.is_some() {
            return;
        }
        let was_answered = journey.answered(until, row_mode);
        // Offsets from the start: the row's write on the wall clock, the intended time.
        let done = (row.updated_at - self.start_wall)
            .to_std()
            .unwrap_or(Duration::ZERO);
        journey.row = Some(since_intended(journey.intended - self.start, done));
        let now_answered = journey.answered(until, row_mode);
        if row.completed {
            self.counts.completed += 1;
        } else {
            self.counts.failed += 1;
        }
        self.count_answer(was_answered, now_answered, done);
    }

    /// An event read from `orders.state` or `orders.dlq`.
    fn on_outcome(
        &mut self,
        message: &BorrowedMessage<'_>,
        state_topic: &str,
        candidates: &mpsc::UnboundedSender<Uuid>,
    ) {
        let (until, row_mode) = (self.until, self.row_mode);
        let Some(id) = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.parse::<Uuid>().ok())
        else {
            return;
        };
        // Events of orders this run did not publish are someone else's.
        let Some(journey) = self.journeys.get_mut(&id) else {
            return;
        };
        let was_answered = journey.answered(until, row_mode);
        let since = journey.intended.elapsed();
        let counts = &mut self.counts;
        if message.topic() == state_topic {
            let state = message
                .payload()
                .and_then(|p| serde_json::from_slice::<OrderStateEvent>(p).ok())
                .map(|s| s.state);
            match state {
                Some(OrderState::Dispatched) if journey.dispatched.is_none() => {
                    journey.dispatched = Some(since);
                    counts.dispatched += 1;
                }
                Some(state @ (OrderState::Completed | OrderState::Failed))
                    if journey.answer.is_none() =>
                {
                    let answer = if state == OrderState::Completed {
                        Answer::Completed
                    } else {
                        Answer::Failed
                    };
                    journey.answer = Some((answer, since));
                    counts.final_events += 1;
                    if row_mode {
                        // Its row is due: the row watcher looks for it from now on.
                        let _ = candidates.send(id);
                    } else {
                        match answer {
                            Answer::Completed => counts.completed += 1,
                            _ => counts.failed += 1,
                        }
                    }
                }
                _ => {}
            }
        } else if journey.answer.is_none() {
            journey.answer = Some((Answer::DeadLettered, since));
            counts.dead_lettered += 1;
        }
        let now_answered = journey.answered(until, row_mode);
        let at = self.start.elapsed();
        self.count_answer(was_answered, now_answered, at);
    }

    /// The report: every journey's latencies, sorted, and its answer (or missing).
    fn report(self, row_lookups: usize) -> LoadReport {
        let mut report = LoadReport {
            published: self.acked,
            elapsed: self.start.elapsed(),
            last_answer: self.last_answer,
            series: self.series,
            answer_secs: self.answer_secs,
            rows: self.row_mode,
            row_lookups,
            ..LoadReport::default()
        };
        for journey in self.journeys.values() {
            add_journey(&mut report, journey, self.row_mode, self.until);
            if let Some(d) = journey.dispatched {
                let intended = journey.intended.saturating_duration_since(self.start);
                report
                    .dispatch_by_intended
                    .push((intended.as_secs_f64(), d));
            }
        }
        report.latencies.sort();
        report.dispatch_latencies = report
            .dispatch_by_intended
            .iter()
            .map(|&(_, d)| d)
            .collect();
        report.dispatch_latencies.sort();
        report.final_latencies.sort();
        report.final_event_latencies.sort();
        report.handed_latencies.sort();
        report
    }
}

/// One journey into the report's latencies and answers.
fn add_journey(report: &mut LoadReport, journey: &Journey, row_mode: bool, until: Until) {
    report.handed_latencies.push(journey.handed);
    if let Some((answer, d)) = journey.answer {
        if answer != Answer::DeadLettered {
            report.final_event_latencies.push(d);
            if !row_mode {
                report.final_latencies.push(d);
            }
        }
    }
    if let Some(d) = journey.row {
        report.final_latencies.push(d);
    }
    let answer = match (row_mode, journey.answer, journey.row) {
        (true, Some((Answer::DeadLettered, d)), _) => Some((Answer::DeadLettered, d)),
        (true, Some((answer, _)), Some(d)) => Some((answer, d)),
        (true, _, _) => None,
        (false, answer, _) => answer,
    };
    match (answer, journey.dispatched) {
        (Some((answer, d)), _) => {
            *report
                .answered
                .entry(answer.as_str().to_owned())
                .or_default() += 1;
            report.latencies.push(d);
        }
        (None, Some(d)) if until == Until::Dispatched => {
            *report.answered.entry("dispatched".to_owned()).or_default() += 1;
            report.latencies.push(d);
        }
        _ => report.missing += 1,
    }
}
