//! The cluster run's chaos (issue 19): under load, on three brokers whose topics have three
//! replicas and min.insync.replicas 2, one failover after the other, each measured:
//!
//! 1. `kill -9` of the node that leads the most partitions of orders.created and
//!    orders.state, then the node started again (leaders elected elsewhere, group
//!    coordinators on it move);
//! 2. a rolling restart: each node stopped (SIGTERM, controlled shutdown) and started in
//!    turn, the next only once every partition has its three in-sync replicas again;
//! 3. one node frozen (SIGSTOP) until its partitions fell out of sync (the leaders shrank
//!    their ISR without it), kept away a little longer, then let go (SIGCONT) to catch up.
//!
//! Per event: how long the node was away, how long until every partition was in sync
//! again, and the **stall**: the longest time no order became final in PostgreSQL from the
//! event's start until the cluster was whole again, while orders kept arriving: should the
//! load be out before the events are, 4 more valid orders a second are sent, each in a task
//! of its own, so a send held up by the failover does not hold up the next.

use crate::bed::Bed;
use crate::load::{self, Load, Published};
use crate::settings::Clock;
use orderflow::kafka::topics::name;
use orderflow::kafka::{Context, KafkaConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// One failover, measured.
pub struct Event {
    pub name: String,
    /// Seconds the node was away (down, or frozen).
    pub away_s: f64,
    /// Seconds from the event's start until every partition had its three in-sync replicas.
    pub whole_s: f64,
    /// The longest time without an order becoming final, from the event's start until the
    /// cluster was whole again.
    pub stall_s: f64,
    /// Orders that became final meanwhile.
    pub finals: i64,
    /// What else was seen (leaders moved, partitions out of sync).
    pub detail: String,
}

/// What the failovers did, for the figures.
pub struct FailedOver {
    pub published: Published,
    pub events: Vec<Event>,
}

/// Final orders in PostgreSQL over time, sampled every 200 ms.
type Samples = Arc<Mutex<Vec<(Instant, i64)>>>;

/// The failover phase's state.
struct Failover<'a> {
    bed: &'a Bed,
    clock: &'a Clock,
    load: &'a mut Load,
    publisher: &'a JoinHandle<Published>,
    producer: rdkafka::producer::FutureProducer<Context>,
    samples: Samples,
    /// Valid orders sent after the load was out, each in a task of its own.
    top_ups: Vec<JoinHandle<()>>,
}

/// Runs the three kinds of failover in turn while the load goes in, then waits for the
/// publisher.
pub async fn run(
    bed: &Bed,
    clock: &Clock,
    load: &mut Load,
    publisher: JoinHandle<Published>,
) -> FailedOver {
    let samples: Samples = Arc::default();
    let sampler = tokio::spawn(sample_finals(bed.pool.clone(), Arc::clone(&samples)));
    let mut f = Failover {
        bed,
        clock,
        load,
        publisher: &publisher,
        producer: bed.kafka.producer().unwrap(),
        samples,
        top_ups: Vec::new(),
    };
    // Orders flowing before the first event, so its stall is measured against a moving
    // pipeline.
    f.keep_busy_for(Duration::from_secs(5)).await;
    let mut events = vec![f.kill_the_busiest_leader().await];
    for node in 1..=3 {
        events.push(f.restart(node).await);
    }
    events.push(f.freeze_until_out_of_sync(2).await);
    sampler.abort();
    let top_ups = std::mem::take(&mut f.top_ups);
    let mut published = publisher.await.unwrap();
    published.valid += top_ups.len();
    for sent in top_ups {
        sent.await.unwrap();
    }
    clock.say("failovers over");
    FailedOver { published, events }
}

impl Failover<'_> {
    /// Event 1: kill -9 of the node leading the most partitions of orders.created and
    /// orders.state, then started again.
    async fn kill_the_busiest_leader(&mut self) -> Event {
        let topics = [
            self.bed.kafka.topic(name::ORDERS_CREATED),
            self.bed.kafka.topic(name::ORDERS_STATE),
        ];
        let before = leaders(&self.bed.kafka, &topics).await;
        let (&node, &led) = before.iter().max_by_key(|(_, n)| **n).unwrap();
        let name = format!("kill -9 of node {node}, leader of {led} of the 6 partitions of orders.created and orders.state");
        self.clock.say(&name);
        let start = Instant::now();
        self.broker(format!("kill-node {node}")).await;
        // Away long enough for the controller to fence it and elect new leaders.
        self.keep_busy_for(Duration::from_secs(10)).await;
        let after = leaders(&self.bed.kafka, &topics).await;
        self.broker(format!("start-node {node}")).await;
        let away_s = start.elapsed().as_secs_f64();
        let detail = format!("leaders while it was away: {after:?} (node: partitions led)");
        self.until_whole(name, start, away_s, detail).await
    }

    /// Event 2 (three times): node `node` stopped with SIGTERM and started again.
    async fn restart(&mut self, node: i32) -> Event {
        let name = format!("rolling restart: node {node} stopped and started");
        self.clock.say(&name);
        let start = Instant::now();
        self.broker(format!("stop-node {node}")).await;
        self.broker(format!("start-node {node}")).await;
        let away_s = start.elapsed().as_secs_f64();
        self.until_whole(name, start, away_s, String::new()).await
    }

    /// Event 3: node `node` frozen until the leaders dropped it from their ISR, 5 s more,
    /// then let go to catch up.
    async fn freeze_until_out_of_sync(&mut self, node: i32) -> Event {
        let name = format!("node {node} frozen (SIGSTOP) until its replicas fell out of sync");
        self.clock.say(&name);
        let pid = {
            let broker = Arc::clone(&self.bed.broker);
            tokio::task::spawn_blocking(move || broker.pid(node))
                .await
                .unwrap()
        };
        let start = Instant::now();
        signal(pid, "-STOP");
        let mut out_of_sync = None;
        while start.elapsed() < Duration::from_secs(90) {
            let behind = out_of_sync_replicas(&self.bed.kafka, node).await;
            if behind > 0 {
                out_of_sync = Some((start.elapsed().as_secs_f64(), behind));
                break;
            }
            self.keep_busy_for(Duration::from_millis(500)).await;
        }
        self.keep_busy_for(Duration::from_secs(5)).await;
        signal(pid, "-CONT");
        let away_s = start.elapsed().as_secs_f64();
        let detail = match out_of_sync {
            Some((after, n)) => format!("{n} of its replicas out of the ISR after {after:.1} s"),
            None => "its replicas never fell out of the ISR within 90 s".into(),
        };
        assert!(out_of_sync.is_some(), "node {node}: {detail}");
        self.until_whole(name, start, away_s, detail).await
    }

    /// Waits until every partition has all its replicas in sync, then measures the event.
    async fn until_whole(
        &mut self,
        name: String,
        start: Instant,
        away_s: f64,
        detail: String,
    ) -> Event {
        let limit = Instant::now() + Duration::from_secs(180);
        while under_replicated(&self.bed.kafka).await != Some(0) {
            assert!(
                Instant::now() < limit,
                "{name}: the cluster never got whole again"
            );
            self.keep_busy_for(Duration::from_millis(500)).await;
        }
        let end = Instant::now();
        let whole_s = (end - start).as_secs_f64();
        // The stall may end after the cluster is whole: look a little further.
        self.keep_busy_for(Duration::from_secs(3)).await;
        let (stall_s, finals) = stall(&self.samples.lock().unwrap(), start, end);
        self.clock.say(&format!(
            "{name}: away {away_s:.1} s, whole after {whole_s:.1} s, longest stall {stall_s:.1} s"
        ));
        Event {
            name,
            away_s,
            whole_s,
            stall_s,
            finals,
            detail,
        }
    }

    /// A cluster script action, off the runtime.
    async fn broker(&self, action: String) {
        let broker = Arc::clone(&self.bed.broker);
        tokio::task::spawn_blocking(move || broker.script(&action))
            .await
            .unwrap();
    }

    /// Waits `duration`; once the load is out, sends 4 valid orders a second meanwhile
    /// (without waiting for the broker to take them), so that orders keep arriving and a
    /// time without a final order is the pipeline's stall, not a pause in the load.
    async fn keep_busy_for(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        loop {
            if self.publisher.is_finished() {
                let sent = load::top_up_in_background(
                    &self.producer,
                    &self.bed.kafka,
                    &mut self.load.valid,
                );
                self.top_ups.push(sent);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250).min(left)).await;
        }
    }
}

/// The longest time between two samples with more final orders, over the samples from
/// `start` to `end` (plus the first increase after `end`); and the orders final meanwhile.
fn stall(samples: &[(Instant, i64)], start: Instant, end: Instant) -> (f64, i64) {
    let window: Vec<&(Instant, i64)> = samples.iter().filter(|(t, _)| *t >= start).collect();
    let Some(&&first) = window.first() else {
        return (0.0, 0);
    };
    let (mut last_change, mut last_count) = (start, first.1);
    let mut longest = Duration::ZERO;
    let mut finals_at_end = first.1;
    let mut moved_after_end = false;
    let mut last_seen = start;
    for &(t, count) in window {
        last_seen = t;
        if t <= end {
            finals_at_end = count;
        }
        if count > last_count {
            longest = longest.max(t - last_change);
            last_change = t;
            last_count = count;
            if t > end {
                moved_after_end = true;
                break;
            }
        }
    }
    // Still no order final at the last sample: the stall lasts at least until then.
    if !moved_after_end {
        longest = longest.max(last_seen - last_change);
    }
    (longest.as_secs_f64(), finals_at_end - first.1)
}

async fn sample_finals(pool: sqlx::PgPool, samples: Samples) {
    loop {
        let n: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE state IN ('completed', 'failed')",
        )
        .fetch_one(&pool)
        .await;
        if let Ok(n) = n {
            samples.lock().unwrap().push((Instant::now(), n));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal(pid: i32, which: &str) {
    let sent = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {which} {pid}");
}

/// The cluster's metadata (every topic), asked of any node that answers within 3 s.
async fn metadata(kafka: &KafkaConfig) -> Option<rdkafka::metadata::Metadata> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer<Context> = kafka
            .client_config()
            .create_with_context(Context::default())
            .ok()?;
        probe.fetch_metadata(None, Duration::from_secs(3)).ok()
    })
    .await
    .unwrap()
}

/// Per node, how many partitions of `topics` it leads.
async fn leaders(kafka: &KafkaConfig, topics: &[String]) -> BTreeMap<i32, usize> {
    for _ in 0..20 {
        if let Some(m) = metadata(kafka).await {
            let mut led = BTreeMap::new();
            for t in m
                .topics()
                .iter()
                .filter(|t| topics.iter().any(|n| n == t.name()))
            {
                for p in t.partitions() {
                    *led.entry(p.leader()).or_insert(0) += 1;
                }
            }
            if !led.is_empty() {
                return led;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("no metadata from the cluster");
}

/// Partitions (of every topic, the internal ones included) with fewer in-sync replicas
/// than replicas; `None` when no node answered.
async fn under_replicated(kafka: &KafkaConfig) -> Option<usize> {
    let m = metadata(kafka).await?;
    Some(
        m.topics()
            .iter()
            .flat_map(|t| t.partitions())
            .filter(|p| p.isr().len() < p.replicas().len())
            .count(),
    )
}

/// Replicas on `node` that are not in their partition's ISR.
async fn out_of_sync_replicas(kafka: &KafkaConfig, node: i32) -> usize {
    let Some(m) = metadata(kafka).await else {
        return 0;
    };
    m.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .filter(|p| p.replicas().contains(&node) && !p.isr().contains(&node))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_is_the_longest_time_without_a_new_final_order() {
        let t0 = Instant::now();
        let at = |ms: u64, n: i64| (t0 + Duration::from_millis(ms), n);
        let samples = [
            at(0, 10),
            at(200, 11),
            at(400, 11),
            at(3400, 11),
            at(3600, 15),
            at(3800, 16),
        ];
        let (longest, finals) = stall(&samples, t0, t0 + Duration::from_millis(3800));
        assert!((longest - 3.4).abs() < 1e-9, "{longest}");
        assert_eq!(finals, 6);
        // Nothing final from the start to the last sample: all of it is a stall.
        let none = [at(0, 10), at(200, 10), at(5000, 10)];
        let (longest, finals) = stall(&none, t0, t0 + Duration::from_millis(4000));
        assert!((longest - 5.0).abs() < 1e-9, "{longest}");
        assert_eq!(finals, 0);
    }
}
