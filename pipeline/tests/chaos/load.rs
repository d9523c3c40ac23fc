//! Phase 2, the load: the valid orders (every 20th sent twice, the broken account's among
//! the first with a deadline inside the chaos) and a round of hostile events per 80 orders,
//! published to orders.created at the run's rate while the chaos goes on.

use crate::common::pipeline::order;
use crate::hostile::{hostile_round, Hostile};
use crate::settings::{Clock, Size, BROKEN_ACCOUNT, BROKEN_DEADLINE, BROKEN_ORDERS};
use chrono::Utc;
use orderflow::core::event::OrderCreated;
use orderflow::kafka::topics::name;
use orderflow::kafka::KafkaConfig;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// What the run sends to orders.created and checks against.
pub struct Load {
    /// The valid orders, the chaos phase's top-ups included once it is over.
    pub valid: Vec<OrderCreated>,
    /// The broken account's orders.
    pub broken: HashSet<Uuid>,
    /// The events that must end in the DLQ, the conflicting copies included once sent.
    pub hostile: Vec<Hostile>,
    /// Rounds of hostile events (one per 80 orders): as many originals get conflicting
    /// copies.
    pub rounds: usize,
}

impl Load {
    /// Plans the load and starts publishing it; the task returns what it published.
    pub fn publish(
        kafka: &KafkaConfig,
        size: &Size,
        clock: &Clock,
    ) -> (Load, JoinHandle<Published>) {
        let orders_n = size.orders;
        let broken_deadline = Utc::now() + chrono::Duration::from_std(BROKEN_DEADLINE).unwrap();
        let valid: Vec<OrderCreated> = (0..orders_n)
            .map(|i| {
                let mut o = order(["25", "50", "100"][i % 3]);
                o.user_extra = format!("oyuncu#{i}");
                if i % 4 == 1 && i / 4 < BROKEN_ORDERS {
                    o.provider_account = BROKEN_ACCOUNT.into();
                    o.deadline = Some(broken_deadline);
                }
                o
            })
            .collect();
        let broken: HashSet<uuid::Uuid> = valid
            .iter()
            .filter(|o| o.provider_account == BROKEN_ACCOUNT)
            .map(|o| o.order_id)
            .collect();
        let rounds = orders_n.div_ceil(80).max(1);
        let hostile: Vec<Hostile> = (0..rounds).flat_map(hostile_round).collect();
        let items = interleave(&valid, &hostile);
        let rate = size.rate;
        let publisher = {
            let kafka = kafka.clone();
            tokio::spawn(async move { publish_all(&kafka, items, rate).await })
        };
        clock.say(&format!(
            "publishing {orders_n} valid orders at {rate}/s with {} hostile events",
            hostile.len()
        ));
        let load = Load {
            valid,
            broken,
            hostile,
            rounds,
        };
        (load, publisher)
    }
}

/// The valid orders in order, every 20th twice, a hostile event after every 5th while any
/// is left, the rest at the end.
fn interleave(valid: &[OrderCreated], hostile: &[Hostile]) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    let mut pending_hostile = hostile.iter().cloned();
    for (i, o) in valid.iter().enumerate() {
        items.push(Item::Valid(o.clone()));
        if i % 20 == 10 {
            items.push(Item::Resend(o.clone()));
        }
        if i % 5 == 2 {
            if let Some(h) = pending_hostile.next() {
                items.push(Item::Hostile(h));
            }
        }
    }
    items.extend(pending_hostile.map(Item::Hostile));
    items
}

/// Sends a few more valid orders (the chaos phase's top-ups) and adds them to `valid`.
pub async fn top_up(
    producer: &rdkafka::producer::FutureProducer<orderflow::kafka::Context>,
    kafka: &KafkaConfig,
    valid: &mut Vec<OrderCreated>,
    count: usize,
) {
    let topic = kafka.topic(name::ORDERS_CREATED);
    for _ in 0..count {
        let mut o = order(["25", "50", "100"][valid.len() % 3]);
        o.user_extra = format!("oyuncu#{}", valid.len());
        send(
            producer,
            &topic,
            Some(&o.order_id.to_string()),
            &o.encode(),
            &Mutex::new(0),
        )
        .await;
        valid.push(o);
    }
}

/// One more valid order, added to `valid` and sent in a task of its own (the caller goes
/// on while the broker is slow to take it: a frozen leader holds a send for seconds).
pub fn top_up_in_background(
    producer: &rdkafka::producer::FutureProducer<orderflow::kafka::Context>,
    kafka: &KafkaConfig,
    valid: &mut Vec<OrderCreated>,
) -> JoinHandle<()> {
    let mut o = order(["25", "50", "100"][valid.len() % 3]);
    o.user_extra = format!("oyuncu#{}", valid.len());
    let (producer, topic) = (producer.clone(), kafka.topic(name::ORDERS_CREATED));
    let (key, payload) = (o.order_id.to_string(), o.encode());
    valid.push(o);
    tokio::spawn(async move { send(&producer, &topic, Some(&key), &payload, &Mutex::new(0)).await })
}

#[derive(Default)]
pub struct Published {
    pub valid: usize,
    pub exact_resends: usize,
    pub hostile: usize,
    /// Sends the broker refused or timed out, retried.
    pub retries: usize,
}

/// Sends one record, again and again until the broker has it (within 5 minutes).
pub async fn send(
    producer: &rdkafka::producer::FutureProducer<orderflow::kafka::Context>,
    topic: &str,
    key: Option<&str>,
    payload: &[u8],
    retries: &Mutex<usize>,
) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        match producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => return,
            Err((e, _)) => {
                assert!(
                    Instant::now() < deadline,
                    "publishing failed for 5 min: {e}"
                );
                *retries.lock().unwrap() += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

enum Item {
    Valid(OrderCreated),
    Resend(OrderCreated),
    Hostile(Hostile),
}

/// Publishes `items` at `rate` per second, up to 256 in flight.
async fn publish_all(kafka: &KafkaConfig, items: Vec<Item>, rate: f64) -> Published {
    use futures::StreamExt;
    let producer = kafka.producer().unwrap();
    let topic = kafka.topic(name::ORDERS_CREATED);
    let retries = Mutex::new(0);
    let start = tokio::time::Instant::now();
    let mut published = Published::default();
    for item in &items {
        match item {
            Item::Valid(_) => published.valid += 1,
            Item::Resend(_) => published.exact_resends += 1,
            Item::Hostile(_) => published.hostile += 1,
        }
    }
    futures::stream::iter(items.into_iter().enumerate())
        .map(|(i, item)| {
            let (producer, topic, retries) = (&producer, &topic, &retries);
            async move {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                match &item {
                    Item::Valid(o) | Item::Resend(o) => {
                        send(
                            producer,
                            topic,
                            Some(&o.order_id.to_string()),
                            &o.encode(),
                            retries,
                        )
                        .await
                    }
                    Item::Hostile(h) => {
                        send(producer, topic, h.key.as_deref(), &h.payload, retries).await
                    }
                }
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<()>>()
        .await;
    published.retries = *retries.lock().unwrap();
    published
}
